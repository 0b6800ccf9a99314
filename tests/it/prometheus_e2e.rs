//! End to end with a REAL Prometheus (Debian's `prometheus` package): it scrapes the real
//! spillway binary every second, with the scrape config dashboards/README.md documents (job `spillway`,
//! `honor_labels: true`) and the alert rules loaded, while Spillway runs both pipelines (alerts
//! on RLS, trade close on RTRS) and alerts, a dead letter, a ClickHouse outage, trade closes
//! (one without its log), a pub/sub flood while RLS is paused, expiries, evictions on RSS and
//! RLS above 80% of maxmemory happen. Then every dashboard panel's query and every rule
//! expression is evaluated through `/api/v1/query`: each must return data, except the alerts
//! listed in [`QUIET`], whose conditions cannot hold in a short test; for those, the series
//! their expression reads must exist, and witnesses show their inputs moved.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::observe::{config_with, fill, metric_value, names_in, pipelines, Prometheus};
use common::trades::{self, LogForm, Trade, GROUP, STREAM};
use common::{eventually, load, ClickHouseServer, RedisServer, Spillway};

const WAIT: Duration = Duration::from_secs(60);

/// Trades closed on the stream with their logs in RLS (a sixth close has no log).
const TRADES: u64 = 5;
/// Pub/sub closes published while RLS is paused: more than the subscriber's buffer (4096) and
/// the close queue (count 500 x 20) hold together, so some are dropped.
const FLOOD: u64 = 15_000;
/// How long RLS refuses scripts: longer than the 5 s between polls of the group's figures, so
/// the close stuck in Spillway's log read is seen pending.
const PAUSE: Duration = Duration::from_millis(6500);

/// Alerts whose condition does not hold in this test, with queries of the series they read.
const QUIET: [(&str, &[&str]); 8] = [
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
    // The condition held during the ClickHouse outage (checked then), but `for: 1m` outlasts
    // it, and once the batch committed nothing waits (+Inf). The gauge was below 60.
    (
        "ExpiryRisk",
        &["min_over_time(spillway_uncommitted_min_ttl_seconds[5m]) < 60"],
    ),
    // A p99 above 10 s for 5 min takes minutes; the close held up by the RLS pause took more
    // than 5 s from its read to its commit.
    (
        "ArchiveLatencyHigh",
        &[
            "spillway_event_to_commit_seconds_bucket{table=\"trades\",le=\"+Inf\"} \
           - ignoring (le) spillway_event_to_commit_seconds_bucket{table=\"trades\",le=\"5\"} > 0",
        ],
    ),
    // An entry pending for 5 min, or a lag above 1000 for 5 min, takes minutes; a close was
    // seen pending while RLS was paused.
    (
        "StreamBacklog",
        &[
            "max_over_time(spillway_stream_pending_entries{pipeline=\"trades\"}[5m]) > 0",
            "max_over_time(spillway_stream_oldest_pending_seconds{pipeline=\"trades\"}[5m]) > 0",
        ],
    ),
    // Stalled takes stall_after_secs (120 s) of waiting; the gauge is there and reads 0
    // (tests/it/trades/stall.rs shows it at 1).
    (
        "PipelineStalled",
        &["spillway_pipeline_stalled{pipeline=\"trades\"} == 0"],
    ),
    // The stream is never lost here (tests/it/trades/restart.rs loses it); the counter is there.
    (
        "StreamGroupRecreated",
        &["spillway_stream_group_recreated_total{pipeline=\"trades\"} == 0"],
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

fn expr_of<'a>(rules: &'a [(String, String)], name: &str) -> &'a str {
    let rule = rules.iter().find(|(n, _)| n == name);
    &rule.unwrap_or_else(|| panic!("{name} not in the rules")).1
}

/// Entries delivered to the group and not acknowledged (XPENDING summary).
fn pending(rtrs: &RedisServer) -> u64 {
    let out = rtrs.cli(&["XPENDING", STREAM, GROUP]);
    out.lines()
        .next()
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap()
}

/// Keys `trade_execution:*` in RLS.
fn log_keys(rls: &RedisServer) -> u64 {
    let script = "return #redis.call('KEYS', ARGV[1])";
    let out = rls.cli(&["EVAL", script, "0", "trade_execution:*"]);
    out.trim().parse().unwrap()
}

/// The value of the trades pipeline's counter `name` in `/metrics` (0 while it does not exist).
fn trades_metric(metrics: &str, name: &str) -> f64 {
    metric_value(metrics, &format!("{name}{{pipeline=\"trades\"}}")).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_evaluates_every_panel_and_rule() {
    let rls =
        RedisServer::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru"]);
    let rss = RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"]);
    let rtrs = RedisServer::start();
    let mut ch = ClickHouseServer::start();
    let pipelines = pipelines(&["alerts", "trades"]);
    let servers = [("rls", &rls), ("rss", &rss), ("rtrs", &rtrs)];
    let toml = format!(
        "pipelines_dir = \"{}\"\n{}[keyspace]\nsubscriber_buffer = 1\nread_ttl = true\n",
        pipelines.path().display(),
        config_with(&servers, &ch, "tprom")
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
    let rules = rule_queries(&prom).await;
    assert_eq!(rules.len(), 15, "{rules:?}");

    // An undecodable value (Latin-1 text: a dead letter), committed: the writer is idle.
    let latin1 = vec![(String::from("alert:bad"), b"f\xfcr".to_vec())];
    load::set_all(&rls.url(), latin1, 3600, 1, 1).await;
    eventually(WAIT, "the dead letter committed", || async {
        ch.count("SELECT count() FROM tprom.dead_letters FINAL")
            .await
            == 1
    })
    .await;

    // ClickHouse down for at least 3 s: inserts fail and are retried. The alert written
    // meanwhile (50 s to live) waits in the retried batch: ExpiryRisk's condition holds.
    ch.stop();
    let outage = Instant::now();
    rls.cli(&[
        "SET",
        "alert:during-outage",
        "kept until ClickHouse is back",
        "EX",
        "50",
    ]);
    let expiry_risk = expr_of(&rules, "ExpiryRisk");
    eventually(WAIT, "ExpiryRisk's condition during the outage", || async {
        !prom.query(expiry_risk).await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(outage.elapsed())).await;
    ch.start_again();
    eventually(WAIT, "the outage alert archived", || async {
        ch.count("SELECT count() FROM tprom.alerts FINAL WHERE key = 'alert:during-outage'")
            .await
            == 1
    })
    .await;

    // Trade closes: the logs of TRADES trades (tests/common/trades.rs) and of FLOOD more of one
    // entry each in RLS. While RLS refuses scripts (CLIENT PAUSE WRITE), the TRADES closes and
    // one close without a log are XADDed: Spillway reads the first (its blocking XREADGROUP
    // returns at once) and waits in its log read, so that close stays pending and the others
    // are not delivered. Then FLOOD closes are published on pub/sub: the subscriber's buffer
    // and the close queue fill, and the excess is dropped.
    let planned = trades::plan("e2e", TRADES);
    let flood: Vec<Trade> = (0..FLOOD)
        .map(|i| Trade {
            i,
            id: format!("flood-{i}"),
            entries: 1,
            form: LogForm::List,
        })
        .collect();
    trades::write_logs(&rls.url(), &planned, 1000, 1).await;
    trades::write_logs(&rls.url(), &flood, 1000, 2).await;
    assert_eq!(log_keys(&rls), TRADES + FLOOD);
    let paused = Instant::now();
    rls.cli(&["CLIENT", "PAUSE", &PAUSE.as_millis().to_string(), "WRITE"]);
    let mut closes = planned.clone();
    // Its log is never written.
    closes.push(Trade {
        i: TRADES,
        id: "e2e-nolog".into(),
        entries: 1,
        form: LogForm::List,
    });
    trades::close_all(&rtrs.url(), &closes, 1000, 1).await;
    eventually(WAIT, "a stream close read and pending", || async {
        pending(&rtrs) > 0
    })
    .await;
    trades::publish_closes(&rtrs.url(), &flood).await;
    assert!(
        paused.elapsed() < PAUSE,
        "RLS resumed before the flood was published ({:?})",
        paused.elapsed()
    );
    // Every pub/sub close was either queued (then handled: its log moved) or dropped (counted
    // whether the queue was full or the subscriber lagged).
    let settled = |m: &str| {
        let c = |name| trades_metric(m, name);
        let dropped = c("spillway_pubsub_closes_dropped_total");
        c("spillway_stream_acked_total") == closes.len() as f64
            && c("spillway_logs_missing_total") == 1.0
            && dropped > 0.0
            && c("spillway_logs_moved_total") == (TRADES + FLOOD) as f64 - dropped
            && c("spillway_log_keys_removed_total") == c("spillway_logs_moved_total")
    };
    eventually(
        WAIT,
        "the trade closes handled and their logs removed",
        || async { settled(&sp.metrics().await) },
    )
    .await;
    let m = sp.metrics().await;
    let moved = trades_metric(&m, "spillway_logs_moved_total") as u64;
    assert!(moved > TRADES, "the pub/sub closes moved logs too: {m}");
    // RLS keeps exactly the logs whose pub/sub close was dropped; every close handled is a
    // trade row, the one without a log marked so.
    assert_eq!(log_keys(&rls), TRADES + FLOOD - moved);
    let trades = ch.count("SELECT count() FROM tprom.trades FINAL").await;
    assert_eq!(trades, moved + 1);
    let nolog = "SELECT log_state FROM tprom.trades FINAL WHERE trade_id = 'e2e-nolog'";
    assert_eq!(ch.query(nolog).await.trim(), "missing");

    // A burst of alerts expiring after 2 s (a subscriber buffer of 1 loses notifications),
    // evictions on RSS, RLS at about 85% of its maxmemory.
    load::set_all(&rls.url(), load::alerts("e2e", 5000), 2, 500, 2).await;
    fill(&rss, "session", 4000, 1024).await;
    fill(&rls, "blob", 54, 1 << 20).await;

    let mut queries = dashboard_queries();
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

    // The quiet alerts: their expressions evaluate, the series they read exist (a histogram
    // as its buckets), and the witnesses hold.
    for (name, witnesses) in QUIET {
        let expr = expr_of(&rules, name);
        prom.query(expr).await;
        for w in witnesses {
            assert!(!prom.query(w).await.is_empty(), "{name}: no data for {w}");
        }
        for n in names_in(expr) {
            let series = format!("{{__name__=~\"{n}|{n}_bucket\"}}");
            assert!(
                !prom.query(&series).await.is_empty(),
                "{name}: no series {n}"
            );
        }
    }
}
