//! Spillway's logs as a log shipper reads them: with stderr in a file, text lines carry no
//! terminal colour escapes, and `--log-format json` (or `SPILLWAY_LOG_FORMAT=json`) writes one
//! JSON object per line, including the error that ends a failed start.

use std::process::Command;
use std::time::Duration;

use common::{config_toml, free_port, ClickHouseServer, RedisServer, Spillway};

const WAIT: Duration = Duration::from_secs(60);

/// Every line of `log` parsed as a JSON object; panics naming a line that is not one.
fn json_lines(log: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    log.lines()
        .filter(|l| !l.is_empty())
        .map(|l| match serde_json::from_str(l) {
            Ok(serde_json::Value::Object(o)) => o,
            _ => panic!("not a JSON object: {l:?}\nlog:\n{log}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_a_file_are_plain_text_or_json_lines() {
    let (redis, ch) = (RedisServer::start(), ClickHouseServer::start());

    let mut text = Spillway::start(&config_toml(&redis, &ch, "tlogtext", free_port()));
    text.wait_ready(WAIT).await;
    assert!(text.terminate().success());
    let log = text.log();
    assert!(log.contains("spillway running"), "{log}");
    assert!(!log.contains("\x1b["), "colour escapes in a file:\n{log:?}");

    let mut json = Spillway::start_with_env(
        &config_toml(&redis, &ch, "tlogjson", free_port()),
        &[("SPILLWAY_LOG_FORMAT", "json")],
    );
    json.wait_ready(WAIT).await;
    assert!(json.terminate().success());
    let log = json.log();
    assert!(!log.contains("\x1b["), "{log:?}");
    let lines = json_lines(&log);
    for l in &lines {
        assert!(
            l.contains_key("timestamp") && l.contains_key("level") && l.contains_key("fields"),
            "{l:?}"
        );
    }
    let said = |m: &str| lines.iter().any(|l| l["fields"]["message"] == m);
    assert!(said("spillway running") && said("drained; bye"), "{log}");
}

#[test]
fn a_failed_start_in_json_is_a_json_line_too() {
    let nothing = format!("http://127.0.0.1:{}", free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["--log-format", "json", "run"])
        .env("SPILLWAY_CLICKHOUSE_URL", &nothing)
        .env_remove("SPILLWAY_LOG_FORMAT")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines = json_lines(&stderr);
    let error = lines
        .iter()
        .find(|l| l["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no error logged: {stderr}"));
    let text = error["fields"]["error"].as_str().unwrap();
    assert!(text.contains("ClickHouse"), "{text}");

    // The same start in text: the error as one plain line, no escapes.
    let out = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("run")
        .env("SPILLWAY_CLICKHOUSE_URL", &nothing)
        .env_remove("SPILLWAY_LOG_FORMAT")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spillway: ") && !stderr.contains("\x1b["),
        "{stderr}"
    );
}
