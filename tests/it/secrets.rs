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
