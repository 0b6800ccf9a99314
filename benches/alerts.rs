//! End-to-end alerts benchmark: a fast producer writes N MessagePack alerts with `SET ... EX`
//! into a real redis-server; the clock stops when all N are committed in a real
//! clickhouse-server (none missing). The same writes are timed against Redis alone (with
//! keyspace notifications on and nobody listening), twice before and twice after the rest: the
//! median of the four is the ceiling Spillway is compared with. Spillway runs twice, each time
//! against a fresh Redis and ClickHouse: with the default settings, then with
//! `keyspace.read_ttl = true`; then the replication source (`source = "replication"`, one
//! redis-server only), in the same sitting.
//!
//! Run: `cargo bench --bench alerts` (env BENCH_ALERTS=N, default 1000000). With
//! `BENCH_REDIS_CLUSTER=P`, Spillway's runs write into a Redis Cluster of P primaries (no
//! replicas) instead of one redis-server; the ceiling stays one redis-server.
//! `BENCH_REPLICATION=0` leaves out the replication source's run.

use std::time::{Duration, Instant};

use spillway_testkit::procstat::{
    context_switches, cpu_seconds, load_average, machine, metric_sum, peak_rss_kb, pid_listening,
    CpuMeter,
};
use spillway_testkit::rcluster::Rls;
use spillway_testkit::{config_toml, free_port, load, ClickHouseServer, RedisServer, Spillway};

fn main() {
    spillway_testkit::procstat::bench_main("alerts", "BENCH_ALERTS", 1_000_000, run);
}

async fn run(n: u64) {
    let (chunk, parallel) = (1000, 4);
    // The ceiling: the same writes into a fresh Redis with notifications on, nobody archiving;
    // timed twice before and twice after the rest (these machines drift by a third within
    // minutes).
    let ceiling_items = std::sync::Arc::new(load::alerts("c", n));
    let mut ceilings = Vec::new();
    for _ in 0..2 {
        ceilings.push(ceiling(&ceiling_items, chunk, parallel).await);
    }
    let load = load_average();
    // Spillway with the default settings, then with `keyspace.read_ttl = true`, each against
    // a fresh Redis and ClickHouse.
    let default = archive(n, chunk, parallel, Variant::Keyspace { read_ttl: false }).await;
    let with_ttl = archive(n, chunk, parallel, Variant::Keyspace { read_ttl: true }).await;
    // Not on a cluster (the replication source follows one server), nor for a build without
    // the source (`BENCH_REPLICATION=0`, e.g. an older build through SPILLWAY_BIN).
    let replication = if std::env::var_os("BENCH_REDIS_CLUSTER").is_some()
        || std::env::var("BENCH_REPLICATION").is_ok_and(|v| v == "0")
    {
        None
    } else {
        Some(archive(n, chunk, parallel, Variant::Replication).await)
    };
    for _ in 0..2 {
        ceilings.push(ceiling(&ceiling_items, chunk, parallel).await);
    }
    let mut rates: Vec<f64> = ceilings.iter().map(|c| c.0).collect();
    rates.sort_by(f64::total_cmp);
    let ceiling = (rates[1] + rates[2]) / 2.0;
    let list = |f: fn(&(f64, f64)) -> String| {
        let v: Vec<String> = ceilings.iter().map(f).collect();
        v.join(" / ")
    };

    println!();
    println!(
        "machine: {} (1-min load average at start: {load:.2})",
        machine()
    );
    println!("alerts: {n} MessagePack alerts, SET ... EX 3600, {parallel} connections x {chunk} pipelined");
    println!("| measure | keyspace source, default settings | keyspace, `read_ttl = true` | replication source |");
    println!("|---|---|---|---|");
    let third = |i: usize| {
        replication
            .as_ref()
            .map(|r| r.rows[i].1.clone())
            .unwrap_or_else(|| "(one server only)".into())
    };
    for (i, ((label, a), (_, b))) in default.rows.iter().zip(&with_ttl.rows).enumerate() {
        println!("| {label} | {a} | {b} | {} |", third(i));
    }
    println!(
        "| end to end / Redis-alone ceiling (median of the four below) | {:.2} | {:.2} | {} |",
        default.rate / ceiling,
        with_ttl.rate / ceiling,
        replication
            .as_ref()
            .map(|r| format!("{:.2}", r.rate / ceiling))
            .unwrap_or_default()
    );
    println!(
        "| Redis alone (notifications on), SET/s: two before, two after the rest | {} ||",
        list(|c| format!("{:.0}", c.0))
    );
    println!(
        "| Redis alone, redis-server CPU per SET, us (same runs) | {} ||",
        list(|c| format!("{:.1}", c.1))
    );
}

/// Which source Spillway archives with.
#[derive(Clone, Copy)]
enum Variant {
    /// Keyspace notifications and read-back, with `keyspace.read_ttl` as given.
    Keyspace { read_ttl: bool },
    /// The replication stream.
    Replication,
}

/// What one run of Spillway measured: its end-to-end rate and the table's rows.
struct Archive {
    rate: f64,
    rows: Vec<(String, String)>,
}

/// Runs Spillway (default settings, with the source of `variant`) against a fresh Redis and
/// ClickHouse: N alerts at full speed until all are committed, then half that rate for 10 s
/// for the latency.
async fn archive(n: u64, chunk: usize, parallel: usize, variant: Variant) -> Archive {
    let rls = match variant {
        Variant::Keyspace { .. } => Rls::start(),
        Variant::Replication => Rls::One(RedisServer::start()),
    };
    let redis = rls.nodes()[0];
    let ch = ClickHouseServer::start();
    // The default batch settings (max delay 1 s).
    let mut toml = config_toml(redis, &ch, "bench", free_port()).replace(&redis.url(), &rls.url());
    let pipelines = spillway_testkit::observe::pipelines(&["alerts"]);
    match variant {
        Variant::Keyspace { read_ttl } => {
            toml.push_str(&format!("\n[keyspace]\nread_ttl = {read_ttl}\n"));
        }
        Variant::Replication => {
            let file = pipelines.path().join("alerts.toml");
            let def = std::fs::read_to_string(&file).expect("alerts.toml");
            let def = def.replace("source = \"keyspace\"", "source = \"replication\"");
            std::fs::write(&file, def).expect("alerts.toml");
            toml = format!("pipelines_dir = \"{}\"\n{toml}", pipelines.path().display());
        }
    }
    let sp = Spillway::start(&toml);
    sp.wait_ready(Duration::from_secs(60)).await;
    let pid = sp.pid().expect("spillway pid");
    let items = load::alerts("b", n);
    // Who spends the two cores: spillway, Redis, ClickHouse, this producer, all.
    let mut servers: Vec<(&'static str, u16)> = rls
        .nodes()
        .iter()
        .map(|r| ("redis-server", r.port))
        .collect();
    servers.push(("clickhouse-server", ch.http_port));
    let meter = CpuMeter::start_for(pid, &servers);
    let switches0 = context_switches(pid);
    let t = Instant::now();
    load::set_all(&rls.url(), items, 3600, chunk, parallel).await;
    let written_in = t.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    committed(&ch, n, deadline).await;
    let committed_in = t.elapsed();
    let (cpu, all) = meter.read();
    let switches = context_switches(pid) - switches0;
    let peak_rss_mb = peak_rss_kb(pid) as f64 / 1024.0;

    let final_count = ch.count("SELECT count() FROM bench.alerts FINAL").await;
    let dead = ch.count("SELECT count() FROM bench.dead_letters").await;
    let metrics = sp.metrics().await;
    let lost = |reason: &str| {
        metric_sum(
            &metrics,
            &format!("spillway_events_lost_total{{pipeline=\"alerts\",reason=\"{reason}\"}}"),
        ) as u64
    };
    let rescued = metric_sum(
        &metrics,
        "spillway_values_captured_total{pipeline=\"alerts\",via=\"scan\"}",
    );
    assert_eq!(final_count, n, "alerts missing");
    assert_eq!(dead, 0, "dead letters");

    let rate = n as f64 / committed_in.as_secs_f64();
    let mut rows = Vec::new();
    let mut row = |label: &str, value: String| rows.push((label.to_string(), value));
    row(
        "producer with Spillway running, SET/s",
        format!("{:.0}", n as f64 / written_in.as_secs_f64()),
    );
    row(
        "end to end, alerts/s (written until committed, none missing)",
        format!("{rate:.0}"),
    );
    let span = committed_in.as_secs_f64();
    for (who, c) in &cpu {
        row(
            &format!("{who} CPU, cores (average until committed); per alert, us"),
            format!("{:.2}; {:.1}", c / span, c * 1e6 / n as f64),
        );
    }
    row(
        "whole machine CPU, cores busy (of 2)",
        format!("{:.2}", all / span),
    );
    row(
        "Spillway context switches per 1000 alerts",
        format!("{:.0}", switches as f64 * 1000.0 / n as f64),
    );
    // Where Redis spends its one core: the writes (with their notifications) and the reads.
    let stats: Vec<String> = rls
        .nodes()
        .iter()
        .map(|r| r.cli(&["INFO", "commandstats"]))
        .collect();
    let usec = |cmd: &str| -> f64 {
        stats
            .iter()
            .flat_map(|s| s.lines())
            .filter_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:")))
            .filter_map(|l| l.split(',').find_map(|f| f.strip_prefix("usec=")))
            .filter_map(|v| v.parse::<f64>().ok())
            .sum()
    };
    row(
        "Redis time per alert, us: SET with notifications / read-back (MGET, and the PTTL script if read_ttl)",
        format!(
            "{:.1} / {:.1}",
            usec("set") / n as f64,
            (usec("evalsha") + usec("eval") + usec("mget") + usec("get") + usec("pttl"))
                / n as f64
        ),
    );
    row(
        "Spillway peak resident memory, MB",
        format!("{peak_rss_mb:.0}"),
    );
    row(
        "notifications lost (queue full); values recovered by rescan",
        format!("{}; {}", lost("buffer_overrun"), rescued as u64),
    );
    let reads = metric_sum(&metrics, "spillway_redis_read_duration_seconds_count");
    let read_s = metric_sum(&metrics, "spillway_redis_read_duration_seconds_sum");
    let inserts = metric_sum(&metrics, "spillway_insert_duration_seconds_count");
    let insert_s = metric_sum(&metrics, "spillway_insert_duration_seconds_sum");
    row("Redis reads: count, busy s", format!("{reads} {read_s:.2}"));
    row(
        "ClickHouse inserts: count, busy s",
        format!("{inserts} {insert_s:.2}"),
    );
    row(
        "time to write / to commit, s",
        format!(
            "{:.2} / {:.2}",
            written_in.as_secs_f64(),
            committed_in.as_secs_f64()
        ),
    );

    // Latency at half the measured rate: a paced producer for 10 s; the event-to-commit
    // histogram's buckets before and after give the quantiles of exactly those alerts.
    let half = (rate / 2.0) as u64;
    let paced = load::alerts("h", half * 10);
    let before = buckets(&sp.metrics().await);
    load::set_paced(&rls.url(), &paced, 3600, half).await;
    let want = n + paced.len() as u64;
    committed(&ch, want, deadline + Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = buckets(&sp.metrics().await);
    let delta: Vec<(f64, f64)> = after
        .iter()
        .zip(&before)
        .map(|((le, a), (_, b))| (*le, a - b))
        .collect();
    row(
        "at half rate (10 s): alerts/s; event-to-commit p50 / p99, s (max batch delay 1 s, the default)",
        format!(
            "{half}; {:.3} / {:.3}",
            quantile(&delta, 0.5),
            quantile(&delta, 0.99)
        ),
    );
    Archive { rate, rows }
}

/// Waits until `n` distinct alerts are committed (a value captured twice, by event and by
/// rescan, counts once). Polls the plain row count, which ClickHouse answers from its parts'
/// metadata, and only then `count() FINAL`, which reads and merges the sort keys: polled every
/// 50 ms from the start it would take a share of the cores the run is measuring.
async fn committed(ch: &ClickHouseServer, n: u64, deadline: Instant) {
    loop {
        if ch.count("SELECT count() FROM bench.alerts").await >= n
            && ch.count("SELECT count() FROM bench.alerts FINAL").await >= n
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not all {n} alerts committed in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SET/s of the same writes into a fresh Redis alone, notifications on, nobody listening, and
/// Redis's CPU per SET, us.
async fn ceiling(
    items: &std::sync::Arc<Vec<(String, Vec<u8>)>>,
    chunk: usize,
    parallel: usize,
) -> (f64, f64) {
    let redis = RedisServer::start();
    let pid = pid_listening(redis.port).expect("redis pid");
    let n = items.len() as f64;
    let cpu0 = cpu_seconds(pid);
    let t = Instant::now();
    load::set_all(&redis.url(), items.clone(), 3600, chunk, parallel).await;
    let rate = n / t.elapsed().as_secs_f64();
    (rate, (cpu_seconds(pid) - cpu0) * 1e6 / n)
}

/// The cumulative buckets (le, count) of the alerts' event-to-commit histogram.
fn buckets(metrics: &str) -> Vec<(f64, f64)> {
    let prefix = "spillway_event_to_commit_seconds_bucket{table=\"alerts\",le=\"";
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.parse().ok()?))
        })
        .collect()
}

/// The q-quantile of cumulative buckets, interpolated within a bucket as Prometheus does.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    let target = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= target && count > prev.1 {
            if le.is_infinite() {
                return prev.0;
            }
            return prev.0 + (le - prev.0) * (target - prev.1) / (count - prev.1);
        }
        prev = (le, count);
    }
    f64::NAN
}
