//! What a periodic rescan costs at N live alert keys: N MessagePack alerts are written and
//! archived through their notifications, then the pipeline's first periodic rescan (60 s after
//! the start) is measured from its start until its inserts are committed: rows it inserted
//! again, CPU seconds of Spillway, Redis and ClickHouse (also above each one's idle rate,
//! measured over the 10 s before), and its duration.
//!
//! Run: `cargo bench --bench rescan` (env BENCH_RESCAN=N, default 1000000). A/B against another
//! build: SPILLWAY_BIN=<its binary> (the pipeline file names only fields every build knows;
//! BENCH_RESCAN_PACE=k adds `rescan_keys_per_sec = k`).

use std::time::{Duration, Instant};

use spillway_testkit::observe::pipelines;
use spillway_testkit::procstat::{machine, metric_sum, peak_rss_kb, CpuMeter};
use spillway_testkit::{config_toml, free_port, load, ClickHouseServer, RedisServer, Spillway};

/// The periodic rescan's interval: longer than writing and archiving N alerts takes, and than
/// a rescan of a million keys at the default pace (50 s), so that one rescan is measured alone.
const INTERVAL_SECS: u64 = 60;

fn main() {
    spillway_testkit::procstat::bench_main("rescan", "BENCH_RESCAN", 1_000_000, run);
}

/// How many "rescan done" lines the log has.
fn rescans_done(sp: &Spillway) -> usize {
    sp.log().matches("rescan done").count()
}

async fn run(n: u64) {
    let redis = RedisServer::start();
    let ch = ClickHouseServer::start();
    let dir = pipelines(&["alerts"]);
    let file = dir.path().join("alerts.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    // Only the fields every build knows, so that an older binary reads the same file.
    let mut pipeline: String = text
        .lines()
        .filter(|l| !l.starts_with("rescan_keys_per_sec"))
        .map(|l| format!("{l}\n"))
        .collect();
    pipeline = pipeline.replace(
        "rescan_interval_secs = 300",
        &format!("rescan_interval_secs = {INTERVAL_SECS}"),
    );
    if let Ok(pace) = std::env::var("BENCH_RESCAN_PACE") {
        pipeline.push_str(&format!("rescan_keys_per_sec = {pace}\n"));
    }
    std::fs::write(&file, pipeline).unwrap();
    let toml = format!(
        "pipelines_dir = \"{}\"\n{}",
        dir.path().display(),
        config_toml(&redis, &ch, "bench", free_port())
    );
    let sp = Spillway::start(&toml);
    sp.wait_ready(Duration::from_secs(60)).await;
    let started = Instant::now();
    let pid = sp.pid().expect("spillway pid");
    load::set_all(&redis.url(), load::alerts("r", n), 3600, 1000, 4).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while ch.count("SELECT count() FROM bench.alerts").await < n {
        assert!(Instant::now() < deadline, "alerts not archived in time");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let archived_in = started.elapsed();
    assert!(
        archived_in < Duration::from_secs(INTERVAL_SECS - 5),
        "archiving took {archived_in:?}: too close to the rescan to measure it alone"
    );
    let done_before = rescans_done(&sp);
    // Rows sent, not rows in the table: merges fold duplicates away meanwhile.
    let alerts_written = |m: &str| metric_sum(m, "spillway_rows_written_total{table=\"alerts\"}");
    let written_before = alerts_written(&sp.metrics().await);
    let servers = [
        ("redis-server", redis.port),
        ("clickhouse-server", ch.http_port),
    ];
    // Each process's CPU while idle (ClickHouse merging what was just inserted, Redis's own
    // timers), over the 10 s before the rescan: subtracted from what the rescan's window shows.
    let idle_from = started + Duration::from_secs(INTERVAL_SECS - 12);
    tokio::time::sleep_until(idle_from.into()).await;
    let idle_meter = CpuMeter::start_for(pid, &servers);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (idle, _) = idle_meter.read();
    // The rescan starts INTERVAL_SECS after the start: measure from a second before.
    let due = started + Duration::from_secs(INTERVAL_SECS - 1);
    tokio::time::sleep_until(due.into()).await;
    let window = Instant::now();
    let meter = CpuMeter::start_for(pid, &servers);
    // The rescan starts at INTERVAL_SECS; wait for its end, then for ClickHouse to be quiet.
    let deadline = Instant::now() + Duration::from_secs(INTERVAL_SECS + 600);
    while rescans_done(&sp) == done_before {
        assert!(Instant::now() < deadline, "no periodic rescan");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rescan_line = sp
        .log()
        .lines()
        .rfind(|l| l.contains("rescan done"))
        .unwrap_or_default()
        .to_string();
    // Until the rows it inserted are committed: no new row for 3 s (at most a minute).
    let mut written = alerts_written(&sp.metrics().await);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = alerts_written(&sp.metrics().await);
        if now == written {
            break;
        }
        written = now;
    }
    let (cpu, _) = meter.read();
    let window = window.elapsed().as_secs_f64();
    let final_rows = ch.count("SELECT count() FROM bench.alerts FINAL").await;
    assert_eq!(final_rows, n, "alerts FINAL");
    let took = rescan_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("took="))
        .unwrap_or("?");

    println!();
    println!("machine: {}", machine());
    println!(
        "rescan of {n} live alert keys, archived by their notifications in {:.1} s first",
        archived_in.as_secs_f64()
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| rows inserted again by the rescan (spillway_rows_written_total) | {} |",
        written - written_before
    );
    println!("| rescan duration (its log line) | {took} |");
    println!("| window measured (rescan and its inserts), s | {window:.1} |");
    for ((who, c), (_, i)) in cpu.iter().zip(&idle) {
        if !who.starts_with("producer") {
            let above = c - i / 10.0 * window;
            println!("| {who} CPU in the window, s; above its idle rate | {c:.2}; {above:.2} |");
        }
    }
    println!(
        "| Spillway peak resident memory, MB | {:.0} |",
        peak_rss_kb(pid) as f64 / 1024.0
    );
}
