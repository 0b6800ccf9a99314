//! End to end with a REAL Prometheus (Debian's `prometheus` package): it scrapes the real
//! spillway binary every second, with the scrape config the README documents (job `spillway`,
//! `honor_labels: true`) and the alert rules loaded, while alerts, a dead letter, expiries,
//! evictions on RSS, RLS above 80% of maxmemory and a ClickHouse outage happen. Then every
//! dashboard panel's query and every rule expression is evaluated through `/api/v1/query`:
//! each must return data, except the alerts listed in [`QUIET`], whose conditions cannot hold
//! in a short test; for those, the series their expression reads must exist.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::observe::{alerts_only_pipelines, config, fill, names_in, Prometheus};
use common::{eventually, load, ClickHouseServer, RedisServer, Spillway};

const WAIT: Duration = Duration::from_secs(60);

/// Alerts whose condition does not hold in this test, with queries of the series they read.
const QUIET: [(&str, &[&str]); 3] = [
    // Spillway is up: the scrape health exists.
    ("SpillwayDown", &["up{job=\"spillway\"} == 1"]),
    // Batches commit every 200 ms here; a 60 s lag would make the test last minutes.
    (
        "ArchiveLagging",
        &[
            "time() - spillway_last_flush_timestamp_seconds",
            "sum(rate(spillway_events_received_total[5m])) > 0",
        ],
    ),
    // The channel (50000 rows) never fills under this load.
    (
        "ChannelNearFull",
        &["spillway_channel_depth / spillway_channel_capacity"],
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every query of the dashboard, with Grafana's `$__rate_interval` set to 20 s (20 scrapes).
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("dashboards/spillway.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "20s");
            out.push((format!("panel {}", p["title"]), expr));
        }
    }
    out
}

/// Every alert of the rules file with its expression, as Prometheus loaded it.
async fn rule_queries(prom: &Prometheus) -> Vec<(String, String)> {
    let rules = prom.rules().await;
    let mut out = Vec::new();
    for g in rules["data"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            assert_eq!(r["health"], "ok", "{r}");
            out.push((
                r["name"].as_str().unwrap().to_string(),
                r["query"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_evaluates_every_panel_and_rule() {
    let rls =
        RedisServer::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru"]);
    let rss = RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"]);
    let mut ch = ClickHouseServer::start();
    let pipelines = alerts_only_pipelines();
    let toml = format!(
        "pipelines_dir = \"{}\"\n{}[keyspace]\nsubscriber_buffer = 1\n",
        pipelines.path().display(),
        config(&rls, &rss, &ch, "tprom")
    );
    let sp = Spillway::start(&toml);
    sp.wait_ready(WAIT).await;
    let prom = Prometheus::start(sp.metrics_port, &root().join("dashboards/alerts.rules.yml"));
    // Prometheus has seen the Redis counters at their start values before anything happens.
    eventually(WAIT, "prometheus scraped spillway and RSS", || async {
        !prom
            .query("spillway_redis_evicted_keys_total{instance=\"rss\"}")
            .await
            .is_empty()
            && !prom.query("up{job=\"spillway\"} == 1").await.is_empty()
    })
    .await;

    // An undecodable value (Latin-1 text: a dead letter), then a burst of alerts expiring after
    // 2 s (a subscriber buffer of 1 loses notifications), evictions on RSS, RLS at about 85% of
    // its maxmemory.
    let latin1 = vec![(String::from("alert:bad"), b"f\xfcr".to_vec())];
    load::set_all(&rls.url(), latin1, 3600, 1, 1).await;
    eventually(WAIT, "the dead letter counted", || async {
        sp.metrics().await.contains("spillway_dead_letters_total{")
    })
    .await;
    load::set_all(&rls.url(), load::alerts("e2e", 5000), 2, 500, 2).await;
    fill(&rss, "session", 4000, 1024).await;
    fill(&rls, "blob", 54, 1 << 20).await;
    // ClickHouse down for 3 s: inserts fail and are retried.
    ch.stop();
    rls.cli(&[
        "SET",
        "alert:during-outage",
        "kept until ClickHouse is back",
        "EX",
        "3600",
    ]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    ch.start_again();
    eventually(WAIT, "the outage alert archived", || async {
        ch.count("SELECT count() FROM tprom.alerts FINAL WHERE key = 'alert:during-outage'")
            .await
            == 1
    })
    .await;

    let mut queries = dashboard_queries();
    let rules = rule_queries(&prom).await;
    assert_eq!(rules.len(), 9, "{rules:?}");
    for (name, expr) in &rules {
        if !QUIET.iter().any(|(q, _)| q == name) {
            queries.push((format!("rule {name}"), expr.clone()));
        }
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let mut empty = Vec::new();
        for (what, expr) in &queries {
            if prom.query(expr).await.is_empty() {
                empty.push(format!("{what}: {expr}"));
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no data for:\n{}\nspillway /metrics:\n{}\nprometheus log:\n{}",
            empty.join("\n"),
            sp.metrics().await,
            prom.log()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The quiet alerts: their expressions evaluate, and the series they read exist.
    for (name, witnesses) in QUIET {
        let (_, expr) = rules
            .iter()
            .find(|(n, _)| n == name)
            .expect("quiet alert in rules");
        prom.query(expr).await;
        for w in witnesses {
            assert!(!prom.query(w).await.is_empty(), "{name}: no data for {w}");
        }
        for n in names_in(expr) {
            assert!(!prom.query(&n).await.is_empty(), "{name}: no series {n}");
        }
    }
}
