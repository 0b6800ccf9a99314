//! `clickhouse.cluster`, `clickhouse.zookeeper_path` and `clickhouse.replica_name`: writing to a
//! ClickHouse cluster (replicated local tables created `ON CLUSTER`, a `Distributed` table in
//! front under the name readers query). Off unless `cluster` is set.

use super::{invalid, Result};

/// The ZooKeeper (or ClickHouse Keeper) path of a replicated table by default: `{shard}` and
/// `{replica}` are the servers' own macros; `{database}` and `{table}` Spillway fills in.
pub(crate) const DEFAULT_ZOOKEEPER_PATH: &str = "/clickhouse/tables/{shard}/{database}/{table}";
/// The replica name by default: the servers' `{replica}` macro.
pub(crate) const DEFAULT_REPLICA_NAME: &str = "{replica}";

/// A ClickHouse cluster to write to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// The cluster's name under `<remote_servers>`.
    pub name: String,
    /// ZooKeeper path of each replicated table (macros `{shard}`, `{database}`, `{table}`).
    pub zookeeper_path: String,
    /// Replica name of each replicated table (a macro of the servers, `{replica}` by default).
    pub replica_name: String,
}

/// Validates the three fields: `None` when `cluster` is not set (then the other two must not
/// be either: they would be silently ignored).
pub(crate) fn validate(
    cluster: Option<String>,
    zookeeper_path: Option<String>,
    replica_name: Option<String>,
) -> Result<Option<ClusterSettings>> {
    let Some(name) = cluster else {
        for (field, set) in [
            ("clickhouse.zookeeper_path", zookeeper_path.is_some()),
            ("clickhouse.replica_name", replica_name.is_some()),
        ] {
            if set {
                return Err(invalid(
                    field,
                    "is set but clickhouse.cluster is not, so it would be ignored".into(),
                    "set clickhouse.cluster to the cluster's name under <remote_servers>, or remove the line",
                ));
            }
        }
        return Ok(None);
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(invalid(
            "clickhouse.cluster",
            format!("`{name}` is not a cluster name"),
            "give the name of the cluster under <remote_servers> in the servers' config (letters, digits, _ - .)",
        ));
    }
    let zookeeper_path = zookeeper_path.unwrap_or_else(|| DEFAULT_ZOOKEEPER_PATH.into());
    let path_problem = if !zookeeper_path.starts_with('/') {
        Some("does not start with /")
    } else if !zookeeper_path.contains("{shard}") {
        Some("has no {shard}: every shard would replicate every other, and rows would show once per shard")
    } else if !zookeeper_path.contains("{table}") {
        Some("has no {table}: the tables would share one path, and the second would not be created")
    } else if zookeeper_path.contains(['\'', '\\']) {
        Some("contains a quote or a backslash")
    } else {
        None
    };
    if let Some(problem) = path_problem {
        return Err(invalid(
            "clickhouse.zookeeper_path",
            format!("`{zookeeper_path}` {problem}"),
            format!("use a path with {{shard}} and {{table}}, e.g. the default {DEFAULT_ZOOKEEPER_PATH}"),
        ));
    }
    let replica_name = replica_name.unwrap_or_else(|| DEFAULT_REPLICA_NAME.into());
    if replica_name.is_empty() || replica_name.contains(['\'', '\\']) {
        return Err(invalid(
            "clickhouse.replica_name",
            format!("`{replica_name}` is empty or contains a quote or a backslash"),
            "use a macro every server defines differently under <macros>, e.g. the default {replica}",
        ));
    }
    Ok(Some(ClusterSettings {
        name,
        zookeeper_path,
        replica_name,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(c: Option<&str>, p: Option<&str>, r: Option<&str>) -> String {
        validate(c.map(Into::into), p.map(Into::into), r.map(Into::into))
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn defaults_and_refusals_name_the_field_and_the_fix() {
        assert_eq!(validate(None, None, None).unwrap(), None);
        let c = validate(Some("prod".into()), None, None).unwrap().unwrap();
        assert_eq!(c.zookeeper_path, DEFAULT_ZOOKEEPER_PATH);
        assert_eq!(c.replica_name, "{replica}");
        for (e, field, fix) in [
            (
                err(None, Some("/x"), None),
                "clickhouse.zookeeper_path",
                "set clickhouse.cluster",
            ),
            (
                err(None, None, Some("r")),
                "clickhouse.replica_name",
                "set clickhouse.cluster",
            ),
            (
                err(Some("a b"), None, None),
                "clickhouse.cluster",
                "<remote_servers>",
            ),
            (
                err(Some("c"), Some("/t/{table}"), None),
                "clickhouse.zookeeper_path",
                "{shard}",
            ),
            (
                err(Some("c"), Some("/t/{shard}"), None),
                "clickhouse.zookeeper_path",
                "{table}",
            ),
            (
                err(Some("c"), Some("t/{shard}/{table}"), None),
                "clickhouse.zookeeper_path",
                "start with /",
            ),
            (
                err(Some("c"), None, Some("")),
                "clickhouse.replica_name",
                "<macros>",
            ),
        ] {
            assert!(e.contains(field) && e.contains(fix), "{e}");
        }
    }
}
