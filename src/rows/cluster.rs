//! The statements that create Spillway's schema, on one server or on a ClickHouse cluster, and
//! the checks of existing tables that only a cluster needs.
//!
//! On a cluster (`clickhouse.cluster`) each table of [`TABLES`] becomes two, both created
//! `ON CLUSTER`: `{table}_local`, a `ReplicatedReplacingMergeTree` with the same columns,
//! version and `ORDER BY` as on one server, and `{table}`, a `Distributed` table in front of it
//! under the name readers query and Spillway inserts into. The sharding key is a hash of some of
//! the identity's columns ([`Table::shard_by`]): copies of one row always land on the same shard,
//! where `FINAL` merges them. The SQL is the same for 18.16 with ZooKeeper and for current
//! servers with ClickHouse Keeper; only the column types differ, as on one server.

use super::schema::{engine_args, Difference, Generation, Replicated, Table, TABLES};
use crate::config::ClusterSettings;

/// The suffix of the replicated local tables: `alerts_local` behind `alerts`.
pub(crate) const LOCAL_SUFFIX: &str = "_local";

/// Seconds an `ON CLUSTER` statement waits for every host (`distributed_ddl_task_timeout`; the
/// servers' default is 180). With a host down the start waits this long, then goes on: the host
/// runs the statement from the queue when it is back.
pub(crate) const DDL_TIMEOUT_SECS: u64 = 10;

/// One statement that creates part of the schema.
#[derive(Debug)]
pub(crate) struct Statement {
    /// The table it creates (`None`: the database).
    pub table: Option<String>,
    /// The SQL.
    pub sql: String,
    /// Whether it runs `ON CLUSTER` (then it needs `distributed_ddl_task_timeout`).
    pub on_cluster: bool,
}

/// Every statement of the schema, in the order they run: the database, then each table (on a
/// cluster, its local table before its `Distributed` table).
pub(crate) fn statements(
    database: &str,
    generation: Generation,
    retention_days: Option<u32>,
    cluster: Option<&ClusterSettings>,
) -> Vec<Statement> {
    let Some(c) = cluster else {
        let mut out = vec![Statement {
            table: None,
            sql: format!("CREATE DATABASE IF NOT EXISTS {database}"),
            on_cluster: false,
        }];
        out.extend(TABLES.iter().map(|t| Statement {
            table: Some(t.name.to_string()),
            sql: t.create_sql(database, generation, retention_days),
            on_cluster: false,
        }));
        return out;
    };
    let mut out = vec![Statement {
        table: None,
        sql: format!("CREATE DATABASE IF NOT EXISTS {database}{}", on_cluster(c)),
        on_cluster: true,
    }];
    for t in TABLES {
        let local = local_name(t);
        let path = zookeeper_path(c, database, &local);
        let replicated = Replicated {
            table: &local,
            cluster: &c.name,
            path: &path,
            replica: &c.replica_name,
        };
        out.push(Statement {
            sql: t.create_sql_in(database, generation, retention_days, Some(&replicated)),
            table: Some(local),
            on_cluster: true,
        });
        out.push(Statement {
            table: Some(t.name.to_string()),
            sql: format!(
                "CREATE TABLE IF NOT EXISTS {database}.{}{} (\n{}\n) ENGINE = {}",
                t.name,
                on_cluster(c),
                t.columns_sql(generation),
                distributed_engine(c, database, t)
            ),
            on_cluster: true,
        });
    }
    out
}

/// ` ON CLUSTER `name``.
pub(crate) fn on_cluster(c: &ClusterSettings) -> String {
    format!(" ON CLUSTER `{}`", c.name)
}

/// The local table behind `t`.
pub(crate) fn local_name(t: &Table) -> String {
    format!("{}{LOCAL_SUFFIX}", t.name)
}

/// The ZooKeeper path of `local`: `{database}` and `{table}` filled in here (18.16 knows
/// neither macro), `{shard}` left to the servers.
fn zookeeper_path(c: &ClusterSettings, database: &str, local: &str) -> String {
    c.zookeeper_path
        .replace("{database}", database)
        .replace("{table}", local)
}

/// `Distributed('cluster', 'db', 'alerts_local', cityHash64(key))`.
fn distributed_engine(c: &ClusterSettings, database: &str, t: &Table) -> String {
    format!(
        "Distributed('{}', '{database}', '{}', cityHash64({}))",
        c.name,
        local_name(t),
        t.shard_by
    )
}

/// An engine as written, for comparison: without blanks and quotes (servers print the
/// arguments of `Distributed` with or without them).
fn plain(engine: &str) -> String {
    engine
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '\'' | '`' | '"'))
        .collect()
}

/// How an existing local table differs from what Spillway writes on a cluster: as on one server
/// ([`Table::differences`]), and it must be replicated.
pub(crate) fn local_differences(
    t: &Table,
    generation: Generation,
    columns: &[(String, String)],
    engine: &str,
    sorting_key: &str,
) -> Vec<Difference> {
    let mut out = t.differences(generation, columns, engine, sorting_key);
    let (name, _) = engine_args(engine);
    if name.ends_with("ReplacingMergeTree") && !name.starts_with("Replicated") {
        out.insert(0, Difference::NotReplicated(name.to_string()));
    }
    out
}

/// How the existing table readers query differs from Spillway's `Distributed` table: its
/// engine (cluster, database, local table and sharding key) and its columns.
pub(crate) fn distributed_differences(
    t: &Table,
    generation: Generation,
    c: &ClusterSettings,
    database: &str,
    columns: &[(String, String)],
    engine: &str,
) -> Vec<Difference> {
    let want = distributed_engine(c, database, t);
    let (name, args) = engine_args(engine);
    let found = format!("{name}({})", args.join(", "));
    let mut out = Vec::new();
    if plain(&found) != plain(&want) {
        let found = if name == "Distributed" {
            found
        } else {
            name.to_string()
        };
        out.push(Difference::Distributed(found, want));
    }
    out.extend(t.column_differences(generation, columns));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_REPLICA_NAME, DEFAULT_ZOOKEEPER_PATH};
    use crate::rows::schema::{fix_statement, table};

    fn prod() -> ClusterSettings {
        ClusterSettings {
            name: "prod".into(),
            zookeeper_path: DEFAULT_ZOOKEEPER_PATH.into(),
            replica_name: DEFAULT_REPLICA_NAME.into(),
        }
    }

    #[test]
    fn one_server_runs_the_database_and_each_table() {
        let s = statements("db", Generation::Legacy, None, None);
        assert_eq!(s.len(), 1 + TABLES.len());
        assert_eq!(s[0].sql, "CREATE DATABASE IF NOT EXISTS db");
        assert!(s
            .iter()
            .all(|s| !s.on_cluster && !s.sql.contains("CLUSTER")));
    }

    /// The cluster DDL, for an old and a current server: same shape, types by version.
    #[test]
    fn a_cluster_gets_replicated_local_tables_behind_distributed_ones() {
        for (generation, ts) in [
            (Generation::Legacy, "ts_ms Int64"),
            (Generation::Modern, "ts_ms DateTime64(3)"),
        ] {
            let s = statements("db", generation, None, Some(&prod()));
            assert_eq!(s.len(), 1 + 2 * TABLES.len());
            assert!(s.iter().all(|s| s.on_cluster));
            assert_eq!(
                s[0].sql,
                "CREATE DATABASE IF NOT EXISTS db ON CLUSTER `prod`"
            );
            let local = &s[1].sql;
            assert_eq!(s[1].table.as_deref(), Some("alerts_local"));
            assert!(
                local.starts_with("CREATE TABLE IF NOT EXISTS db.alerts_local ON CLUSTER `prod` (\n    key String,"),
                "{local}"
            );
            assert!(
                local.contains(&format!("    {ts},\n")) && local.ends_with(
                    ") ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/alerts_local', '{replica}', version)\nORDER BY (key, content_hash)"
                ),
                "{local}"
            );
            let dist = &s[2].sql;
            assert_eq!(s[2].table.as_deref(), Some("alerts"));
            assert!(
                dist.starts_with("CREATE TABLE IF NOT EXISTS db.alerts ON CLUSTER `prod` (\n")
                    && dist.ends_with(
                        ") ENGINE = Distributed('prod', 'db', 'alerts_local', cityHash64(key))"
                    ),
                "{dist}"
            );
            // Without a version column: the replica name is the last argument.
            let events = &s[3].sql;
            assert!(
                events.contains("ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/alert_events_local', '{replica}')\nPARTITION BY"),
                "{events}"
            );
            assert!(!events.contains("non_replicated_deduplication_window"));
        }
    }

    #[test]
    fn every_sharding_key_is_part_of_the_identity() {
        for t in TABLES {
            let identity: Vec<&str> = t.order_by.split(',').map(str::trim).collect();
            for col in t.shard_by.split(',').map(str::trim) {
                assert!(
                    identity.contains(&col),
                    "{}: {col} not in {}",
                    t.name,
                    t.order_by
                );
            }
        }
    }

    #[test]
    fn existing_cluster_tables_are_checked() {
        let (t, g, c) = (table("trades"), Generation::Legacy, prod());
        let cols: Vec<(String, String)> = t
            .columns
            .iter()
            .map(|(n, col)| (n.to_string(), g.render(*col).to_string()))
            .collect();
        let replicated = "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/trades_local', '{replica}', version) ORDER BY trade_id SETTINGS index_granularity = 8192";
        assert!(local_differences(t, g, &cols, replicated, "trade_id").is_empty());
        let plain_rmt = "ReplacingMergeTree(version) ORDER BY trade_id";
        let d = local_differences(t, g, &cols, plain_rmt, "trade_id");
        assert_eq!(d, [Difference::NotReplicated("ReplacingMergeTree".into())]);
        assert!(d[0]
            .to_string()
            .contains("not ReplicatedReplacingMergeTree"));
        let d = local_differences(
            t,
            g,
            &cols,
            "ReplicatedReplacingMergeTree('/p/{shard}/x', '{replica}') ORDER BY trade_id",
            "trade_id",
        );
        assert_eq!(d, [Difference::Version(String::new(), Some("version"))]);
        // The Distributed table as 18.16 and current servers print it.
        for engine in [
            "Distributed(prod, db, trades_local, cityHash64(trade_id))",
            "Distributed('prod', 'db', 'trades_local', cityHash64(trade_id))",
        ] {
            assert!(distributed_differences(t, g, &c, "db", &cols, engine).is_empty());
        }
        let d = distributed_differences(
            t,
            g,
            &c,
            "db",
            &cols,
            "Distributed(prod, db, trades_local, rand())",
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].to_string()
                .contains("must be sharded by their identity"),
            "{d:?}"
        );
        assert_eq!(
            fix_statement("db", "trades", &on_cluster(&c), &d),
            "DROP TABLE db.trades ON CLUSTER `prod`"
        );
        // A table with rows (the single-server one) is renamed aside, never dropped.
        let d = distributed_differences(t, g, &c, "db", &cols, plain_rmt);
        assert_eq!(
            fix_statement("db", "trades", &on_cluster(&c), &d),
            "RENAME TABLE db.trades TO db.trades_old ON CLUSTER `prod`"
        );
    }
}
