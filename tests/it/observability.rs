//! Observability on real servers: Redis memory figures polled by the real spillway binary agree
//! with `INFO` read directly, an unreachable instance is `up 0` without stopping Spillway,
//! `/metrics` passes `promtool check metrics`, and the dashboard and alert rules are valid
//! (`promtool check rules`, `promtool test rules`) and use only metric names Spillway exports.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::observe::{alerts_only_pipelines, config, fill, info_field, metric_value, names_in};
use common::{eventually, ClickHouseServer, RedisServer, Spillway};

const WAIT: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn promtool(args: &[&str], stdin: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new("promtool");
    cmd.args(args).current_dir(root());
    if let Some(f) = stdin {
        cmd.stdin(std::fs::File::open(f).unwrap());
    }
    let out = cmd
        .output()
        .expect("promtool (Debian package prometheus) must be installed");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_memory_agrees_with_info_and_unreachable_is_down() {
    let rls =
        RedisServer::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru"]);
    let rss = RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"]);
    let ch = ClickHouseServer::start();
    let pipelines = alerts_only_pipelines();
    let toml = format!(
        "pipelines_dir = \"{}\"\n{}",
        pipelines.path().display(),
        config(&rls, &rss, &ch, "tobserve")
    );
    let sp = Spillway::start(&toml);
    // Ready although four configured instances are unreachable: /readyz checks pipeline instances only.
    sp.wait_ready(WAIT).await;

    fill(&rls, "blob", 20, 1 << 20).await; // 20 MiB: used_memory is far from its idle value
    fill(&rss, "session", 4000, 1024).await; // 4 MB into 2 MB: RSS evicts
    for i in 0..50 {
        rls.cli(&["SET", &format!("short:{i}"), "v", "PX", "1"]);
    }
    let expired = || info_field(&rls.cli(&["INFO", "stats"]), "expired_keys").unwrap();
    eventually(WAIT, "50 keys expired in RLS", || async {
        expired() == 50.0
    })
    .await;

    let evicted = info_field(&rss.cli(&["INFO", "stats"]), "evicted_keys").unwrap();
    assert!(evicted > 0.0, "RSS must have evicted");
    let want = [
        (
            r#"spillway_redis_evicted_keys_total{instance="rss"}"#,
            evicted,
        ),
        (r#"spillway_redis_expired_keys_total{instance="rls"}"#, 50.0),
        (
            r#"spillway_redis_memory_max_bytes{instance="rls"}"#,
            67_108_864.0,
        ),
        (
            r#"spillway_redis_memory_max_bytes{instance="rss"}"#,
            2_097_152.0,
        ),
        (
            r#"spillway_redis_maxmemory_policy_info{instance="rls",policy="volatile-lru"}"#,
            1.0,
        ),
        (
            r#"spillway_redis_maxmemory_policy_info{instance="rss",policy="allkeys-lru"}"#,
            1.0,
        ),
        (r#"spillway_redis_up{instance="rls"}"#, 1.0),
        (r#"spillway_redis_up{instance="rss"}"#, 1.0),
        (r#"spillway_redis_up{instance="rts"}"#, 0.0),
        (r#"spillway_redis_up{instance="ris"}"#, 0.0),
        (r#"spillway_redis_up{instance="rtss"}"#, 0.0),
        (r#"spillway_redis_up{instance="rtrs"}"#, 0.0),
    ];
    eventually(WAIT, "exact figures of INFO in /metrics", || async {
        let m = sp.metrics().await;
        want.iter().all(|(s, v)| metric_value(&m, s) == Some(*v))
    })
    .await;

    // used_memory moves (Spillway's own reads allocate); it must agree within 5%.
    let m = sp.metrics().await;
    let direct = info_field(&rls.cli(&["INFO", "memory"]), "used_memory").unwrap();
    let polled = metric_value(&m, r#"spillway_redis_memory_used_bytes{instance="rls"}"#).unwrap();
    assert!(direct > 20e6, "{direct}");
    assert!(
        (polled - direct).abs() / direct < 0.05,
        "polled {polled}, INFO {direct}"
    );
    let clients = info_field(&rls.cli(&["INFO", "clients"]), "connected_clients").unwrap();
    let polled = metric_value(&m, r#"spillway_redis_connected_clients{instance="rls"}"#).unwrap();
    assert!(
        polled >= 2.0 && (polled - clients).abs() <= 1.0,
        "{polled} vs {clients}"
    );
    let frag = metric_value(
        &m,
        r#"spillway_redis_mem_fragmentation_ratio{instance="rss"}"#,
    );
    assert!(frag.is_some_and(|f| f > 0.0), "{m}");
    // No memory figures are invented for an instance never reached.
    assert!(
        !m.contains(r#"spillway_redis_memory_used_bytes{instance="rts"}"#),
        "{m}"
    );
    // Spillway's own process.
    let rss_bytes = metric_value(&m, "spillway_process_resident_memory_bytes").unwrap();
    assert!(rss_bytes > 1e6 && rss_bytes < 4e9, "{rss_bytes}");
    assert!(metric_value(&m, "spillway_process_cpu_seconds_total").is_some_and(|c| c > 0.0));
    assert!(metric_value(&m, "spillway_process_start_time_seconds").is_some_and(|t| t > 1.7e9));

    // Still serving its pipeline: an alert is archived.
    rls.cli(&["SET", "alert:obs", "archived while rts is down", "EX", "60"]);
    eventually(WAIT, "alert archived", || async {
        ch.count("SELECT count() FROM tobserve.alerts FINAL").await == 1
    })
    .await;
    assert!(sp.exit_status().is_none());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, sp.metrics().await).unwrap();
    let (ok, out) = promtool(&["check", "metrics"], Some(&file));
    assert!(ok && out.is_empty(), "promtool check metrics: {out}");
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let (ok, out) = promtool(&["check", "rules", "dashboards/alerts.rules.yml"], None);
    assert!(ok && out.contains("SUCCESS: 15 rules found"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "dashboards/alerts.rules.test.yml"], None);
    assert!(ok && out.contains("SUCCESS"), "{out}");
    // Every alert of the rules file has unit tests.
    let rules = std::fs::read_to_string(root().join("dashboards/alerts.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(root().join("dashboards/alerts.rules.test.yml")).unwrap();
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name} untested"
        );
    }
}

/// Every `spillway_*` name Spillway defines: all are constants of `src/metrics/mod.rs`.
fn exported_names() -> Vec<String> {
    let mut names = Vec::new();
    for file in ["src/metrics/mod.rs"] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        for part in text.split("\"spillway_").skip(1) {
            names.push(format!("spillway_{}", part.split('"').next().unwrap()));
        }
    }
    names
}

#[test]
fn dashboard_is_importable_and_uses_exported_names_only() {
    let text = std::fs::read_to_string(root().join("dashboards/spillway.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 39);
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["name"] == "datasource"
        && v["type"] == "datasource"
        && v["query"] == "prometheus"));
    let known = exported_names();
    let rows: Vec<&str> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in [
        "Throughput",
        "Lag",
        "Redis memory",
        "Evictions and expiries",
        "Dead letters and errors",
        "Trade close",
    ] {
        assert!(rows.contains(&want), "row {want} missing: {rows:?}");
    }
    // A valid layout: unique ids, every panel within the 24 columns, no two panels overlapping.
    let panels = d["panels"].as_array().unwrap();
    let mut ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids are not unique");
    let rect = |p: &serde_json::Value| {
        let g = &p["gridPos"];
        let n = |k: &str| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{}: gridPos.{k}", p["title"]))
        };
        (n("x"), n("y"), n("w"), n("h"))
    };
    for (i, a) in panels.iter().enumerate() {
        let (x, y, w, h) = rect(a);
        assert!(
            w > 0 && h > 0 && x + w <= 24,
            "{}: {:?}",
            a["title"],
            rect(a)
        );
        for b in &panels[i + 1..] {
            let (bx, by, bw, bh) = rect(b);
            let apart = x + w <= bx || bx + bw <= x || y + h <= by || by + bh <= y;
            assert!(apart, "{} overlaps {}", a["title"], b["title"]);
        }
    }
    let mut exprs = 0;
    for p in d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
    {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            exprs += 1;
            for name in names_in(expr) {
                assert!(known.contains(&name), "{name} in `{expr}` is not exported");
            }
        }
    }
    assert!(exprs >= 20, "{exprs}");
    let rules = std::fs::read_to_string(root().join("dashboards/alerts.rules.yml")).unwrap();
    for name in names_in(&rules) {
        assert!(known.contains(&name), "{name} in the rules is not exported");
    }
}
