//! Creating Spillway's schema at the start (the statements of [`cluster::statements`], on one
//! server or `ON CLUSTER`) and checking the tables that were already there: columns, engine and
//! sorting key as `system.columns` and `system.tables` of the server Spillway talks to list
//! them. On a cluster the local tables are checked on that server, and the table readers query
//! must be Spillway's `Distributed` table.

use clickhouse::Client;

use super::client::{Result, SinkError};
use super::writer::error_code;
use crate::config::{ClickHouseSettings, ClusterSettings};
use crate::rows::cluster::{self, Statement, DDL_TIMEOUT_SECS};
use crate::rows::schema::{fix_statement, Generation, TABLES};

/// TIMEOUT_EXCEEDED: an `ON CLUSTER` statement not finished on every host in
/// `distributed_ddl_task_timeout`.
const DDL_TIMEOUT_CODE: u32 = 159;

/// Runs one statement of the schema; whether it finished everywhere. An `ON CLUSTER` one waits
/// up to `wait` seconds for the hosts (`distributed_ddl_task_timeout`); when some did not answer
/// in time (a host down), it stays in the cluster's queue, which that host runs when it is back:
/// logged, and the start goes on.
pub(super) async fn run(client: &Client, url: &str, st: &Statement, wait: u64) -> Result<bool> {
    let mut q = client.query(&st.sql);
    if st.on_cluster {
        q = q.with_setting("distributed_ddl_task_timeout", wait.to_string());
    }
    match q.execute().await {
        Err(clickhouse::error::Error::BadResponse(msg))
            if st.on_cluster && error_code(&msg) == Some(DDL_TIMEOUT_CODE) =>
        {
            let what = st.table.as_deref().unwrap_or("the database");
            tracing::warn!(%url, table = what, error = %msg, "an ON CLUSTER statement did not finish on every host in {wait} s; those hosts run it when they are back");
            Ok(false)
        }
        Err(source) => Err(SinkError::Client {
            url: url.to_string(),
            action: format!("creating {}", st.table.as_deref().unwrap_or("the database")),
            source,
        }),
        Ok(()) => Ok(true),
    }
}

/// What the schema is made for.
#[derive(Clone, Copy)]
pub(super) struct Schema<'a> {
    /// The database.
    pub database: &'a str,
    /// The server's generation.
    pub generation: Generation,
    /// `clickhouse.retention_days`.
    pub retention_days: Option<u32>,
    /// `clickhouse.cluster`.
    pub cluster: Option<&'a ClusterSettings>,
}

/// Runs the statements of the schema; the tables that were missing on the server Spillway talks
/// to (the database as an empty name). `repair`: on one server only the statements of what is
/// missing; on a cluster every one (`IF NOT EXISTS`, `ON CLUSTER`), since what is missing may be
/// a local table on another shard. Once one timed out (a host down), the others wait for
/// the hosts 1 s only (each would wait the whole [`DDL_TIMEOUT_SECS`] for the same host), then
/// until the server Spillway talks to has run it.
pub(super) async fn create(
    client: &Client,
    url: &str,
    schema: Schema<'_>,
    repair: bool,
) -> Result<Vec<String>> {
    let (db, generation) = (schema.database, schema.generation);
    let mut wait = DDL_TIMEOUT_SECS;
    let mut created = Vec::new();
    for st in cluster::statements(db, generation, schema.retention_days, schema.cluster) {
        let name = st.table.clone().unwrap_or_default();
        let missing = !exists(client, url, db, &name).await?;
        if repair && !missing && !st.on_cluster {
            continue;
        }
        if !run(client, url, &st, wait).await? {
            wait = 1;
            let deadline =
                std::time::Instant::now() + std::time::Duration::from_secs(DDL_TIMEOUT_SECS);
            while !exists(client, url, db, &name).await? && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        if missing {
            created.push(name);
        }
    }
    Ok(created)
}

/// Whether table `name` (empty: the database) exists on the server Spillway talks to.
pub(super) async fn exists(client: &Client, url: &str, db: &str, name: &str) -> Result<bool> {
    let (sql, what) = if name.is_empty() {
        (
            "SELECT count() FROM system.databases WHERE name = ? AND ? = ''",
            "the database",
        )
    } else {
        (
            "SELECT count() FROM system.tables WHERE database = ? AND name = ?",
            name,
        )
    };
    let n: u64 = client
        .query(sql)
        .bind(db)
        .bind(name)
        .fetch_one()
        .await
        .map_err(|source| SinkError::Client {
            url: url.to_string(),
            action: format!("looking for {what}"),
            source,
        })?;
    Ok(n > 0)
}

/// Creates what is missing and checks every table; the first table that is not what Spillway
/// writes stops the start with its differences and the statement that fixes them.
pub(super) async fn create_and_check(
    client: &Client,
    url: &str,
    s: &ClickHouseSettings,
    generation: Generation,
) -> Result<()> {
    let db = &s.database;
    if let Some(c) = &s.cluster {
        preflight(client, url, c).await?;
    }
    let schema = Schema {
        database: db,
        generation,
        retention_days: s.retention_days,
        cluster: s.cluster.as_ref(),
    };
    create(client, url, schema, false).await?;
    for t in TABLES {
        let Some(c) = &s.cluster else {
            let (columns, engine, key) = describe(client, url, db, t.name).await?;
            let differences = t.differences(generation, &columns, &engine, &key);
            check(db, t.name, "", differences)?;
            continue;
        };
        let local = cluster::local_name(t);
        let (columns, engine, key) = describe(client, url, db, &local).await?;
        let differences = cluster::local_differences(t, generation, &columns, &engine, &key);
        check(db, &local, &cluster::on_cluster(c), differences)?;
        let (columns, engine, _) = describe(client, url, db, t.name).await?;
        let differences = cluster::distributed_differences(t, generation, c, db, &columns, &engine);
        check(db, t.name, &cluster::on_cluster(c), differences)?;
    }
    Ok(())
}

/// Before the first `ON CLUSTER` statement: the server knows the cluster, and has a ZooKeeper
/// (or Keeper) session, waited for up to [`DDL_TIMEOUT_SECS`] (a server just started opens it
/// after it answers; 18.16 crashes on an `ON CLUSTER` statement without one).
async fn preflight(client: &Client, url: &str, c: &ClusterSettings) -> Result<()> {
    let unsupported = |what: String| SinkError::Unsupported(format!("{url}: {what}"));
    let known: u64 = client
        .query("SELECT count() FROM system.clusters WHERE cluster = ?")
        .bind(&c.name)
        .fetch_one()
        .await
        .map_err(|e| unsupported(format!("reading system.clusters: {e}")))?;
    if known == 0 {
        return Err(unsupported(format!(
            "clickhouse.cluster is `{}`, a cluster the server does not have; fix: give the name of a cluster under <remote_servers> in the servers' config (SELECT DISTINCT cluster FROM system.clusters lists them)",
            c.name
        )));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(DDL_TIMEOUT_SECS);
    loop {
        let session = client
            .query("SELECT count() FROM system.zookeeper WHERE path = '/'")
            .fetch_one::<u64>()
            .await;
        match session {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(unsupported(format!(
                    "no ZooKeeper or Keeper session, which replicated tables and ON CLUSTER need ({e}); fix: configure <zookeeper> on every server of the cluster and check that it is up"
                )))
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

/// The schema error of table `name`, when it differs.
fn check(
    db: &str,
    name: &str,
    on_cluster: &str,
    differences: Vec<crate::rows::schema::Difference>,
) -> Result<()> {
    if differences.is_empty() {
        return Ok(());
    }
    Err(SinkError::Schema {
        fix: fix_statement(db, name, on_cluster, &differences),
        database: db.to_string(),
        table: name.to_string(),
        differences,
    })
}

/// A table's columns (name, type), `engine_full` and sorting key.
async fn describe(
    client: &Client,
    url: &str,
    db: &str,
    name: &str,
) -> Result<(Vec<(String, String)>, String, String)> {
    let err = |action: String| {
        let url = url.to_string();
        move |source| SinkError::Client {
            url,
            action,
            source,
        }
    };
    let columns: Vec<String> = client
        .query(
            "SELECT concat(name, '\t', type) FROM system.columns WHERE database = ? AND table = ?",
        )
        .bind(db)
        .bind(name)
        .fetch_all()
        .await
        .map_err(err(format!("reading the columns of {name}")))?;
    let columns = columns
        .iter()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, ty)| (n.to_string(), ty.to_string()))
        .collect();
    let table: String = client
        .query("SELECT concat(engine_full, '\t', sorting_key) FROM system.tables WHERE database = ? AND name = ?")
        .bind(db)
        .bind(name)
        .fetch_one()
        .await
        .map_err(err(format!("reading the engine of {name}")))?;
    let (engine, key) = table.split_once('\t').unwrap_or((&table, ""));
    Ok((columns, engine.to_string(), key.to_string()))
}
