//! The effective configuration as TOML, for `spillway check-config`: every setting as Spillway
//! will run with it (file, environment overrides and defaults merged), in the file's own format,
//! so an operator can read it and feed it back to `spillway run --config`. Secrets are never
//! printed: a password in a URL becomes [`REDACTED`], the ClickHouse password is left out and
//! said to be set.

use toml::{Table, Value};

use super::Settings;

/// What stands for a password in a printed URL.
pub(crate) const REDACTED: &str = "REDACTED";

impl Settings {
    /// The effective configuration as TOML (see the module's description).
    pub(crate) fn to_toml(&self) -> String {
        let mut root = Table::new();
        let names: Vec<Value> = self
            .pipelines
            .iter()
            .map(|p| Value::from(p.name.as_str()))
            .collect();
        if let Some(dir) = &self.pipelines_dir {
            root.insert("pipelines_dir".into(), dir.display().to_string().into());
        }
        root.insert("pipelines".into(), Value::Array(names));
        root.insert(
            "shutdown_timeout_secs".into(),
            secs(self.shutdown_timeout.as_secs()),
        );
        let mut redis = Table::new();
        for (name, url) in &self.redis {
            let mut t = Table::new();
            let file = self.secret_files.redis.iter().find(|(n, _)| n == name);
            match file {
                // The password came from its file: the URL without it, and the file.
                Some((_, file)) => {
                    t.insert("url".into(), without_password(url).into());
                    t.insert("password_file".into(), file.display().to_string().into());
                }
                None => {
                    t.insert("url".into(), redact(url).into());
                }
            }
            redis.insert(name.clone(), Value::Table(t));
        }
        root.insert("redis".into(), Value::Table(redis));
        let ch = &self.clickhouse;
        let mut clickhouse = Table::new();
        clickhouse.insert("url".into(), redact(&ch.url).into());
        clickhouse.insert("user".into(), ch.user.as_str().into());
        if let Some(file) = &ch.password_file {
            clickhouse.insert("password_file".into(), file.display().to_string().into());
        }
        clickhouse.insert("database".into(), ch.database.as_str().into());
        clickhouse.insert("recreate_tables".into(), ch.recreate_tables.into());
        clickhouse.insert(
            "insert_timeout_secs".into(),
            secs(ch.insert_timeout.as_secs()),
        );
        let compression = if ch.compression { "lz4" } else { "none" };
        clickhouse.insert("compression".into(), compression.into());
        if let Some(days) = ch.retention_days {
            clickhouse.insert("retention_days".into(), secs(u64::from(days)));
        }
        if let Some(ca) = &ch.tls.ca_file {
            clickhouse.insert("ca_file".into(), ca.display().to_string().into());
        }
        if let Some((cert, key)) = &ch.tls.client_cert {
            let (cert, key) = (cert.display().to_string(), key.display().to_string());
            clickhouse.insert("client_cert_file".into(), cert.into());
            clickhouse.insert("client_key_file".into(), key.into());
        }
        if let Some(c) = &ch.cluster {
            clickhouse.insert("cluster".into(), c.name.as_str().into());
            clickhouse.insert("zookeeper_path".into(), c.zookeeper_path.as_str().into());
            clickhouse.insert("replica_name".into(), c.replica_name.as_str().into());
        }
        root.insert("clickhouse".into(), Value::Table(clickhouse));
        let mut metrics = Table::new();
        metrics.insert("addr".into(), self.metrics_addr.to_string().into());
        root.insert("metrics".into(), Value::Table(metrics));
        let b = &self.batch;
        let mut batch = Table::new();
        batch.insert("channel_capacity".into(), count(b.channel_capacity.get()));
        batch.insert("max_rows".into(), count(b.max_rows.get()));
        batch.insert("max_bytes".into(), count(b.max_bytes.get()));
        batch.insert("max_delay_ms".into(), secs(b.max_delay.as_millis() as u64));
        batch.insert("channel_bytes".into(), count(b.channel_bytes.get()));
        root.insert("batch".into(), Value::Table(batch));
        let k = &self.keyspace;
        let mut keyspace = Table::new();
        keyspace.insert(
            "configure_notifications".into(),
            k.configure_notifications.into(),
        );
        keyspace.insert("subscriber_buffer".into(), count(k.subscriber_buffer.get()));
        keyspace.insert("read_batch".into(), count(k.read_batch.get()));
        keyspace.insert("readers".into(), count(k.readers.get()));
        keyspace.insert("read_ttl".into(), k.read_ttl.into());
        keyspace.insert("remember_values".into(), count(k.remember_values));
        keyspace.insert(
            "subscriber_ping_secs".into(),
            secs(k.subscriber_ping.as_secs()),
        );
        keyspace.insert(
            "subscriber_timeout_secs".into(),
            secs(k.subscriber_timeout.as_secs()),
        );
        keyspace.insert("max_value_bytes".into(), count(k.max_value_bytes.get()));
        keyspace.insert("read_batch_bytes".into(), count(k.read_batch_bytes.get()));
        root.insert("keyspace".into(), Value::Table(keyspace));
        let mut observe = Table::new();
        observe.insert(
            "interval_secs".into(),
            secs(self.observe.interval.as_secs()),
        );
        root.insert("observe".into(), Value::Table(observe));
        let password = if ch.password_file.is_some() {
            "# [clickhouse] password: read from password_file"
        } else if ch.password.is_empty() {
            "# [clickhouse] password: none"
        } else {
            "# [clickhouse] password: set (not shown; give it again with SPILLWAY_CLICKHOUSE_PASSWORD or in the file)"
        };
        let from_file = |name: &String| self.secret_files.redis.iter().any(|(n, _)| n == name);
        let any_url_password = has_password(&ch.url)
            || self
                .redis
                .iter()
                .any(|(n, u)| !from_file(n) && has_password(u));
        let redacted = if any_url_password {
            format!("\n# URL passwords are shown as {REDACTED}: put the real ones back (or set SPILLWAY_*_URL) to run with this file")
        } else {
            String::new()
        };
        let body = toml::to_string(&Value::Table(root)).unwrap_or_default();
        format!("# The effective configuration of spillway (file, SPILLWAY_* overrides, defaults).\n{password}{redacted}\n\n{body}")
    }
}

/// `url` without its password.
fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => url.to_string(),
    }
}

/// `url` with its password (if any) replaced by [`REDACTED`].
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some(REDACTED));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

fn has_password(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| u.password().is_some())
}

fn secs(v: u64) -> Value {
    Value::Integer(i64::try_from(v).unwrap_or(i64::MAX))
}

fn count(v: usize) -> Value {
    Value::Integer(i64::try_from(v).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::super::FileConfig;
    use std::path::Path;

    #[test]
    fn printed_config_hides_secrets_and_reads_back_the_same() {
        let text = r#"
[redis.rls]
url = "redis://spill:s3cretPW@127.0.0.1:6384"

[clickhouse]
url = "http://127.0.0.1:8123"
user = "writer"
password = "chPassw0rd"
database = "audit"
cluster = "prod"
replica_name = "{host}"

[batch]
max_rows = 5000
channel_bytes = 1000000

[keyspace]
subscriber_ping_secs = 2
subscriber_timeout_secs = 7
max_value_bytes = 2097152
read_batch_bytes = 3000000
"#;
        let base = Path::new(env!("CARGO_MANIFEST_DIR"));
        let s = FileConfig::from_toml(text).unwrap().validate(base).unwrap();
        let printed = s.to_toml();
        assert!(!printed.contains("s3cretPW"), "{printed}");
        assert!(!printed.contains("chPassw0rd"), "{printed}");
        assert!(
            printed.contains("redis://spill:REDACTED@127.0.0.1:6384"),
            "{printed}"
        );
        assert!(printed.contains("password: set"), "{printed}");
        // Read back, it is the same configuration (the password aside).
        let again = FileConfig::from_toml(&printed)
            .unwrap()
            .validate(base)
            .unwrap();
        assert_eq!(again.to_toml(), printed.replace("password: set (not shown; give it again with SPILLWAY_CLICKHOUSE_PASSWORD or in the file)", "password: none"));
        assert_eq!(again.batch.max_rows.get(), 5000);
        for line in [
            "cluster = \"prod\"\n",
            "zookeeper_path = \"/clickhouse/tables/{shard}/{database}/{table}\"\n",
            "replica_name = \"{host}\"\n",
        ] {
            assert!(printed.contains(line), "{line} not in {printed}");
        }
        assert_eq!(again.clickhouse.cluster, s.clickhouse.cluster);
        assert!(printed.contains("subscriber_ping_secs = 2\n"), "{printed}");
        assert!(
            printed.contains("subscriber_timeout_secs = 7\n"),
            "{printed}"
        );
        assert_eq!(again.keyspace.subscriber_timeout.as_secs(), 7);
        assert_eq!(again.batch.channel_bytes.get(), 1_000_000);
        assert_eq!(again.keyspace.max_value_bytes.get(), 2 << 20);
        assert_eq!(again.keyspace.read_batch_bytes.get(), 3_000_000);
        assert_eq!(again.clickhouse.database, "audit");
    }

    #[test]
    fn password_files_are_read_never_printed_and_printed_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rls.pw"), "rlsFil3PW\n").unwrap();
        std::fs::write(dir.path().join("ch.pw"), "chFil3PW\r\n").unwrap();
        let text = r#"
[redis.rls]
url = "redis://spill@127.0.0.1:6384"
password_file = "rls.pw"

[redis.rtrs]
password_file = "rls.pw"

[clickhouse]
user = "writer"
password_file = "ch.pw"
"#;
        let s = FileConfig::from_toml(text)
            .unwrap()
            .validate(dir.path())
            .unwrap();
        let url = |s: &super::super::Settings, name: &str| {
            s.redis.iter().find(|(n, _)| n == name).unwrap().1.clone()
        };
        // Read relative to the config file, the newline trimmed, into the URL.
        assert_eq!(url(&s, "rls"), "redis://spill:rlsFil3PW@127.0.0.1:6384");
        assert_eq!(url(&s, "rtrs"), "redis://:rlsFil3PW@127.0.0.1:6382");
        assert_eq!(s.clickhouse.password, "chFil3PW");
        let printed = s.to_toml();
        assert!(!printed.contains("Fil3PW"), "{printed}");
        assert!(!printed.contains("REDACTED"), "{printed}");
        assert!(
            printed.contains("password: read from password_file"),
            "{printed}"
        );
        // Printed, it runs as it is: the same passwords from the same files.
        let again = FileConfig::from_toml(&printed)
            .unwrap()
            .validate(Path::new("/"))
            .unwrap();
        assert_eq!(url(&again, "rls"), url(&s, "rls"));
        assert_eq!(url(&again, "rtrs"), url(&s, "rtrs"));
        assert_eq!(again.clickhouse.password, "chFil3PW");
        assert_eq!(again.to_toml(), printed);
    }

    #[test]
    fn a_password_file_that_cannot_be_used_is_named_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cretPW").unwrap();
        let cases = [
            (
                "[clickhouse]\npassword_file = \"missing.pw\"",
                "clickhouse.password_file",
                "cannot read",
            ),
            (
                "[clickhouse]\npassword = \"inline\"\npassword_file = \"pw\"",
                "clickhouse.password_file",
                "password is set too",
            ),
            (
                "[redis.rls]\npassword_file = \"missing.pw\"",
                "redis.rls.password_file",
                "cannot read",
            ),
            (
                "[redis.rls]\nurl = \"redis://:other@127.0.0.1:6384\"\npassword_file = \"pw\"",
                "redis.rls.password_file",
                "carries a password too",
            ),
        ];
        for (text, field, problem) in cases {
            let e = FileConfig::from_toml(text)
                .unwrap()
                .validate(dir.path())
                .err()
                .unwrap_or_else(|| panic!("{text}: accepted"))
                .to_string();
            assert!(e.contains(field) && e.contains(problem), "{text}: {e}");
            assert!(!e.contains("s3cretPW") && !e.contains("other"), "{e}");
        }
        // The environment's password wins over the file's password_file.
        let mut c = FileConfig::from_toml(
            "[clickhouse]\npassword_file = \"missing.pw\"\n[redis.rls]\npassword_file = \"missing.pw\"",
        )
        .unwrap();
        c.apply_env(|k| match k {
            "SPILLWAY_CLICKHOUSE_PASSWORD" | "SPILLWAY_RLS_PASSWORD" => Some("fromEnv".into()),
            _ => None,
        })
        .unwrap();
        let s = c.validate(dir.path()).unwrap();
        assert_eq!(s.clickhouse.password, "fromEnv");
        assert!(s
            .redis
            .iter()
            .any(|(n, u)| n == "rls" && u.contains(":fromEnv@")));
        // A URL from the environment keeps the file's password_file.
        let mut c = FileConfig::from_toml("[redis.rls]\npassword_file = \"pw\"").unwrap();
        c.apply_env(|k| (k == "SPILLWAY_RLS_URL").then(|| "redis://10.0.0.9:7000".into()))
            .unwrap();
        let s = c.validate(dir.path()).unwrap();
        assert!(s
            .redis
            .iter()
            .any(|(n, u)| n == "rls" && u == "redis://:s3cretPW@10.0.0.9:7000"));
    }
}
