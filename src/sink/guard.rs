//! What the writer knows of ClickHouse that a ping cannot tell: an insert error that retrying
//! cannot fix ([`permanent`](super::permanent)). While one blocks the inserts, `/readyz` fails
//! with its reason and fix, `spillway_clickhouse_blocked{reason}` is 1, the rows wait in the
//! writer (never dropped) and are retried every [`BLOCKED_RETRY`], so that the operator's fix is
//! picked up without a restart; the log says it once per change, not per retry.
//!
//! A dropped table or database is created again when `clickhouse.recreate_tables` allows it
//! (one [`BLOCKED_RETRY`] after it was found gone, so that an operator's own `CREATE` in a
//! migration goes first), with the statements of the start, for the server's version. The rows
//! archived before the drop went with the table: once inserts go through again (the table
//! created by Spillway or by hand), the keyspace sources are told to forget what they archived
//! and to rescan, so that every alert value still alive in Redis is archived again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::client::{Result, Sink, SinkError};
use super::permanent::{Blocked, Context, Kind};
use crate::config::ClickHouseSettings;
use crate::config::ClusterSettings;
use crate::metrics as m;
use crate::rows::schema::Generation;

/// How often inserts blocked by a permanent error are tried again.
pub(crate) const BLOCKED_RETRY: Duration = Duration::from_secs(5);

/// The reason inserts are blocked, if they are: what the `/readyz` check reads.
#[derive(Clone, Default)]
pub(crate) struct Health(Arc<Mutex<Option<String>>>);

impl Health {
    /// The reason `/readyz` shows, while inserts are blocked.
    pub(crate) fn blocked(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, reason: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }
}

/// The writer's handling of permanent errors: state, metrics, log, repair.
pub(crate) struct Guard {
    health: Health,
    database: String,
    user: String,
    recreate: bool,
    retention_days: Option<u32>,
    /// The cluster, if the tables are created on one.
    cluster: Option<ClusterSettings>,
    /// What blocks the inserts now.
    current: Mutex<Option<Blocked>>,
    /// Bumped when inserts go through again after a table or the database was gone: the
    /// keyspace sources rescan.
    recreated: watch::Sender<u64>,
}

impl Guard {
    /// A guard for the configured ClickHouse; every `spillway_clickhouse_blocked` series at 0.
    pub(crate) fn new(s: &ClickHouseSettings) -> Guard {
        for kind in Kind::ALL {
            metrics::gauge!(m::CLICKHOUSE_BLOCKED, "reason" => kind.label()).set(0.0);
        }
        Guard {
            health: Health::default(),
            database: s.database.clone(),
            user: s.user.clone(),
            recreate: s.recreate_tables,
            retention_days: s.retention_days,
            cluster: s.cluster.clone(),
            current: Mutex::new(None),
            recreated: watch::channel(0).0,
        }
    }

    /// The state the `/readyz` check reads.
    pub(crate) fn health(&self) -> Health {
        self.health.clone()
    }

    /// Changes whenever inserts go through again after a table or the database was gone.
    pub(crate) fn recreations(&self) -> watch::Receiver<u64> {
        self.recreated.subscribe()
    }

    fn context(&self) -> Context<'_> {
        Context {
            database: &self.database,
            user: &self.user,
            recreate: self.recreate,
        }
    }

    /// Counts a failed commit; for a permanent error, blocks (logging at ERROR when the
    /// reason changed) and returns it.
    pub(crate) fn failed(&self, e: &SinkError) -> Option<Blocked> {
        let blocked = match e {
            SinkError::Insert { source, table, .. } => Blocked::of(source, table),
            _ => None,
        };
        let kind = blocked.as_ref().map_or("transient", |b| b.kind.label());
        metrics::counter!(m::CLICKHOUSE_ERRORS, "kind" => kind).increment(1);
        let b = blocked?;
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref() != Some(&b) {
            let reason = b.reason(&self.context());
            tracing::error!(error = %e, "inserts blocked: {reason}");
            if let Some(old) = current.as_ref() {
                metrics::gauge!(m::CLICKHOUSE_BLOCKED, "reason" => old.kind.label()).set(0.0);
            }
            metrics::gauge!(m::CLICKHOUSE_BLOCKED, "reason" => b.kind.label()).set(1.0);
            self.health.set(Some(reason));
            *current = Some(b.clone());
        }
        Some(b)
    }

    /// After a commit: unblocks, logging it once. When a table or the database had been
    /// found gone (created again since, by Spillway or by hand), the keyspace sources rescan.
    pub(crate) fn committed(&self) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = current.take() {
            tracing::info!(was = %old.reason(&self.context()), "inserts go through again");
            metrics::gauge!(m::CLICKHOUSE_BLOCKED, "reason" => old.kind.label()).set(0.0);
            self.health.set(None);
            if old.kind.repairable() {
                self.recreated.send_modify(|n| *n += 1);
            }
        }
    }

    /// Creates what `b` found gone, when it is a dropped table or database and recreating is
    /// allowed: the database (`IF NOT EXISTS`) and every table (`IF NOT EXISTS`), with the DDL
    /// of the start for the server's version. Then the keyspace sources rescan.
    pub(crate) async fn repair(&self, sink: &Sink, b: &Blocked) -> Result<()> {
        if !(self.recreate && b.kind.repairable()) {
            return Ok(());
        }
        let admin = sink.admin();
        let err = |action: String| {
            let url = sink.url().to_string();
            move |source| SinkError::Client {
                url,
                action,
                source,
            }
        };
        let version: String = admin
            .query("SELECT version()")
            .fetch_one()
            .await
            .map_err(err("asking its version".into()))?;
        let generation = Generation::from_version(&version);
        let schema = super::ddl::Schema {
            database: &self.database,
            generation,
            retention_days: self.retention_days,
            cluster: self.cluster.as_ref(),
        };
        for name in super::ddl::create(&admin, sink.url(), schema, true).await? {
            let (object, name) = match name.as_str() {
                "" => ("database", self.database.clone()),
                table => ("table", format!("{}.{table}", self.database)),
            };
            tracing::warn!(name = %name, "{object} created again");
            metrics::counter!(m::CLICKHOUSE_RECREATED, "object" => object).increment(1);
        }
        Ok(())
    }
}
