//! Secrets never show: `check-config` prints the effective configuration as TOML with every
//! password replaced, and a run that fails at start (ClickHouse refuses the user) names what
//! failed without the password; its log is grepped too.

use std::process::Command;

use common::{free_port, ClickHouseServer, RedisServer};

const REDIS_SECRET: &str = "s3cretRedisPW";
const CH_SECRET: &str = "s3cretClickHousePW";

fn spillway(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(args)
        .current_dir(common::repo_dir())
        .envs(env.iter().copied())
        .output()
        .expect("run spillway");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_config_prints_toml_without_secrets_that_reads_back() {
    let rls = format!("redis://spill:{REDIS_SECRET}@127.0.0.1:6384");
    let env = [
        ("SPILLWAY_RLS_URL", rls.as_str()),
        ("SPILLWAY_CLICKHOUSE_PASSWORD", CH_SECRET),
    ];
    let (ok, text) = spillway(&["check-config"], &env);
    assert!(ok, "{text}");
    assert!(
        !text.contains(REDIS_SECRET) && !text.contains(CH_SECRET),
        "{text}"
    );
    assert!(
        text.contains("redis://spill:REDACTED@127.0.0.1:6384"),
        "{text}"
    );
    // What it printed is a configuration `spillway run --config` accepts.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("effective.toml");
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("pipelines"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, body).unwrap();
    let (ok, again) = spillway(&["check-config", "--config", file.to_str().unwrap()], &[]);
    assert!(ok, "{again}");
    assert!(
        again.contains("redis://spill:REDACTED@127.0.0.1:6384"),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_names_the_cause_not_the_password() {
    let redis = RedisServer::start();
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "requirepass", REDIS_SECRET]),
        "OK"
    );
    // 1. ClickHouse nowhere, with a password in its URL and in its own variable.
    let url = format!("redis://:{REDIS_SECRET}@127.0.0.1:{}", redis.port);
    let ch = format!("http://default:{CH_SECRET}@127.0.0.1:{}", free_port());
    let env = [
        ("SPILLWAY_RLS_URL", url.as_str()),
        ("SPILLWAY_CLICKHOUSE_URL", ch.as_str()),
        ("SPILLWAY_CLICKHOUSE_PASSWORD", CH_SECRET),
        ("SPILLWAY_METRICS_ADDR", "127.0.0.1:0"),
        ("RUST_LOG", "debug"),
    ];
    let (ok, text) = spillway(&["run"], &env);
    assert!(!ok, "spillway started without ClickHouse: {text}");
    assert!(text.contains("ClickHouse"), "{text}");
    assert!(
        !text.contains(REDIS_SECRET) && !text.contains(CH_SECRET),
        "{text}"
    );
    // 2. ClickHouse up, Redis refusing the password given.
    let server = ClickHouseServer::start();
    let wrong = "wr0ngRedisPW";
    let url = format!("redis://:{wrong}@127.0.0.1:{}", redis.port);
    let env = [
        ("SPILLWAY_RLS_URL", url.as_str()),
        ("SPILLWAY_CLICKHOUSE_URL", &server.url()),
        ("SPILLWAY_CLICKHOUSE_DATABASE", "tsecrets"),
        ("SPILLWAY_METRICS_ADDR", "127.0.0.1:0"),
        ("RUST_LOG", "debug"),
    ];
    let (ok, text) = spillway(&["run"], &env);
    assert!(!ok, "spillway started with a wrong Redis password: {text}");
    assert!(text.contains("Redis rls"), "{text}");
    assert!(
        !text.contains(wrong) && !text.contains(REDIS_SECRET),
        "{text}"
    );
}

/// `password_file` in the config file, for a Redis instance and for ClickHouse: Spillway reads
/// the passwords from the files, runs with them, and no output shows them; `check-config`
/// prints the files, not the passwords.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_files_in_the_config_file_are_used_and_never_shown() {
    use crate::clickhouse_errors::{set_users, PASSWORD as CH_FILE_SECRET};
    // Spillway's user has the password; the default user (the test's producer) may not
    // SUBSCRIBE, so a Spillway that did not use the password would not start.
    let redis = RedisServer::start();
    let spill = format!(">{REDIS_SECRET}");
    let acl = ["ACL", "SETUSER", "spill", "on", &spill, "~*", "&*", "+@all"];
    assert_eq!(redis.cli(&acl), "OK");
    assert_eq!(
        redis.cli(&["ACL", "SETUSER", "default", "-subscribe"]),
        "OK"
    );
    let ch = ClickHouseServer::start();
    // The modern test server has no users.xml: its `default` user keeps no password there.
    let ch_password = if common::modern_clickhouse() {
        ""
    } else {
        set_users(&ch, Some(CH_FILE_SECRET), true).await;
        CH_FILE_SECRET
    };
    let dir = tempfile::tempdir().unwrap();
    let (rls_file, ch_file) = (dir.path().join("rls.pw"), dir.path().join("ch.pw"));
    std::fs::write(&rls_file, format!("{REDIS_SECRET}\n")).unwrap();
    std::fs::write(&ch_file, format!("{ch_password}\n")).unwrap();
    let user = if ch_password.is_empty() {
        "default"
    } else {
        "spill"
    };
    let toml = common::config_toml(&redis, &ch, "tsecfile", free_port())
        .replace(
            "[clickhouse]\n",
            &format!(
                "[clickhouse]\nuser = \"{user}\"\npassword_file = \"{}\"\n",
                ch_file.display()
            ),
        )
        .replace(
            &redis.url(),
            &format!("redis://spill@127.0.0.1:{}", redis.port),
        )
        .replace(
            "\n\n[clickhouse]",
            &format!(
                "\npassword_file = \"{}\"\n\n[clickhouse]",
                rls_file.display()
            ),
        );
    let mut sp = common::Spillway::start_with_env(&toml, &[("RUST_LOG", "debug")]);
    sp.wait_ready(std::time::Duration::from_secs(60)).await;
    common::load::set_all(&redis.url(), common::load::alerts("pf", 100), 3600, 100, 1).await;
    let sql = "SELECT count() FROM tsecfile.alerts FINAL";
    common::eventually(
        std::time::Duration::from_secs(60),
        "100 alerts archived",
        || async { ch.count(sql).await == 100 },
    )
    .await;
    let file = dir.path().join("spillway.toml");
    std::fs::write(&file, &toml).unwrap();
    let (ok, printed) = spillway(&["check-config", "--config", file.to_str().unwrap()], &[]);
    assert!(ok, "{printed}");
    assert!(
        printed.contains(&format!("password_file = \"{}\"", rls_file.display()))
            && printed.contains(&format!("password_file = \"{}\"", ch_file.display())),
        "{printed}"
    );
    assert!(sp.terminate().success());
    let log = sp.log();
    for text in [&printed, &log] {
        assert!(!text.contains(REDIS_SECRET), "{text}");
        assert!(
            ch_password.is_empty() || !text.contains(ch_password),
            "{text}"
        );
    }
}
