//! Creating Spillway's schema at the start (the statements of [`cluster::statements`], on one
//! server or `ON CLUSTER`) and checking the tables that were already there: columns, engine and
//! sorting key as `system.columns` and `system.tables` of the server Spillway talks to list
//! them. On a cluster the local tables are checked on that server, and the table readers query
//! must be Spillway's `Distributed` table.

use clickhouse::Client;

use super::client::{Result, SinkError};
use super::writer::error_code;
use crate::config::ClickHouseSettings;
use crate::rows::cluster::{self, Statement, DDL_TIMEOUT_SECS};
use crate::rows::schema::{fix_statement, Generation, TABLES};

/// TIMEOUT_EXCEEDED: an `ON CLUSTER` statement not finished on every host in
/// `distributed_ddl_task_timeout`.
const DDL_TIMEOUT_CODE: u32 = 159;

/// Runs one statement of the schema. An `ON CLUSTER` one waits [`DDL_TIMEOUT_SECS`] for the
/// hosts; when some did not answer in time (a host down), it stays in the cluster's queue, which
/// that host runs when it is back: logged, and the start goes on (the check that follows finds
/// what is missing on the server Spillway talks to).
pub(super) async fn run(client: &Client, url: &str, st: &Statement) -> Result<()> {
    let mut q = client.query(&st.sql);
    if st.on_cluster {
        q = q.with_setting("distributed_ddl_task_timeout", DDL_TIMEOUT_SECS.to_string());
    }
    match q.execute().await {
        Err(clickhouse::error::Error::BadResponse(msg))
            if st.on_cluster && error_code(&msg) == Some(DDL_TIMEOUT_CODE) =>
        {
            let what = st.table.as_deref().unwrap_or("the database");
            tracing::warn!(%url, table = what, error = %msg, "an ON CLUSTER statement did not finish on every host in {DDL_TIMEOUT_SECS} s; those hosts run it when they are back");
            Ok(())
        }
        Err(source) => Err(SinkError::Client {
            url: url.to_string(),
            action: format!("creating {}", st.table.as_deref().unwrap_or("the database")),
            source,
        }),
        Ok(()) => Ok(()),
    }
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
    for st in cluster::statements(db, generation, s.retention_days, s.cluster.as_ref()) {
        run(client, url, &st).await?;
    }
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
