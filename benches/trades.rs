//! End-to-end trade-close benchmark: the execution logs of N trades are written into a real RLS
//! redis-server first (RPUSH per step, ~23 entries per trade), then all N trades are closed on
//! the `trade_results` stream of a real RTRS redis-server. The clock runs from the first close
//! until every execution row and every trade row is committed in a real clickhouse-server
//! (`count() FINAL`, none missing, every log `moved`); acknowledgement (log keys removed, XACK)
//! is timed too.
//!
//! Run: `cargo bench --bench trades` (env BENCH_TRADES=N, default 50000). With
//! `BENCH_REDIS_CLUSTER=P`, RLS is a Redis Cluster of P primaries (no replicas).

use std::time::{Duration, Instant};

use spillway_testkit::procstat::{load_average, machine, metric_sum, peak_rss_kb, CpuMeter};
use spillway_testkit::rcluster::Rls;
use spillway_testkit::trades::{self, GROUP, STREAM};
use spillway_testkit::{ClickHouseServer, RedisServer, Spillway};

fn main() {
    spillway_testkit::procstat::bench_main("trades", "BENCH_TRADES", 50_000, run);
}

async fn run(n: u64) {
    let rls = Rls::start();
    let rtrs = RedisServer::start_with(&["--notify-keyspace-events", ""]);
    let ch = ClickHouseServer::start();
    // The default batch settings, as in the alerts bench (with max_delay_ms = 500 instead:
    // 36-44 inserts instead of 26, more of ClickHouse's CPU, no more rows per second).
    // BENCH_BATCH: lines of the `[batch]` table to try other settings (e.g. `max_bytes = 8388608`).
    let batch = std::env::var("BENCH_BATCH").unwrap_or_default();
    let first = rls.nodes()[0];
    let toml = trades::config_toml(first, &rtrs, &ch, "bench", &batch.replace(';', "\n"))
        .replace(&first.url(), &rls.url());
    let sp = Spillway::start(&toml);
    sp.wait_ready(Duration::from_secs(60)).await;
    let pid = sp.pid().expect("spillway pid");

    let plan = trades::plan("b", n);
    let total = trades::total_entries(&plan);
    let t = Instant::now();
    trades::write_logs(&rls.url(), &plan, 1000, 4).await;
    let logs_in = t.elapsed();

    let load = load_average();
    // Who spends the two cores: spillway, the two Redis, ClickHouse, this producer, all.
    let mut servers: Vec<(&'static str, u16)> = rls
        .nodes()
        .iter()
        .map(|r| ("RLS redis-server", r.port))
        .collect();
    servers.extend([
        ("RTRS redis-server", rtrs.port),
        ("clickhouse-server", ch.http_port),
    ]);
    let meter = CpuMeter::start_for(pid, &servers);
    let t = Instant::now();
    trades::close_all(&rtrs.url(), &plan, 1000, 2).await;
    let closed_in = t.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    // Cheap polling on spillway's own counters (committed rows), then exact checks below.
    let rows = |m: &str, table: &str| {
        metric_sum(
            m,
            &format!("spillway_rows_written_total{{table=\"{table}\"}}"),
        ) as u64
    };
    let committed_in = loop {
        let m = sp.metrics().await;
        if rows(&m, "trade_executions") >= total && rows(&m, "trades") >= n {
            break t.elapsed();
        }
        assert!(Instant::now() < deadline, "not committed in 600 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let acked = format!("spillway_stream_acked_total{{pipeline=\"trades\"}} {n}");
    while !sp.metrics().await.contains(&acked) {
        assert!(Instant::now() < deadline, "not acknowledged in 600 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acked_in = t.elapsed();
    let (cpu, all) = meter.read();
    let peak_rss_mb = peak_rss_kb(pid) as f64 / 1024.0;

    let count = |sql: &'static str| ch.count(sql);
    let final_rows = count("SELECT count() FROM bench.trade_executions FINAL").await;
    let uniq = count("SELECT uniqExact(trade_id, seq) FROM bench.trade_executions").await;
    let moved = count("SELECT count() FROM bench.trades FINAL WHERE log_state = 'moved'").await;
    let dead = count("SELECT count() FROM bench.dead_letters").await;
    assert_eq!((final_rows, uniq), (total, total), "execution rows");
    assert_eq!(moved, n, "trades committed with their logs moved");
    assert_eq!(dead, 0, "dead letters");
    assert_eq!(rls.dbsize(), 0, "log keys left in RLS");
    let pending = rtrs.cli(&["XPENDING", STREAM, GROUP]);
    assert_eq!(pending.lines().next(), Some("0"), "pending entries");

    let m = sp.metrics().await;
    let secs = committed_in.as_secs_f64();
    println!();
    println!(
        "machine: {} (1-min load average at start: {load:.2})",
        machine()
    );
    println!(
        "trades: {n} trades, {total} execution entries ({:.1} per trade; 80% LIST, 10% STRING \
         array, 10% STRING map), logs written first, then the closes",
        total as f64 / n as f64
    );
    println!("| measure | value |");
    println!("|---|---|");
    let rate = |x: u64, d: Duration| x as f64 / d.as_secs_f64();
    println!(
        "| producer: log entries written into RLS, /s | {:.0} |",
        rate(total, logs_in)
    );
    println!(
        "| producer: closes added (XADD), /s | {:.0} |",
        rate(n, closed_in)
    );
    println!(
        "| **end to end, trades/s** (first close until committed) | **{:.0}** |",
        n as f64 / secs
    );
    println!(
        "| **end to end, execution rows/s** | **{:.0}** |",
        total as f64 / secs
    );
    println!(
        "| end to end incl. acknowledgement (keys removed, XACK), trades/s | {:.0} |",
        rate(n, acked_in)
    );
    let span = acked_in.as_secs_f64();
    for (who, c) in &cpu {
        println!(
            "| {who} CPU, cores (average until acknowledged) | {:.2} |",
            c / span
        );
    }
    println!(
        "| whole machine CPU, cores busy (of 2) | {:.2} |",
        all / span
    );
    println!("| Spillway peak resident memory, MB | {peak_rss_mb:.0} |");
    let inserts = metric_sum(&m, "spillway_insert_duration_seconds_count");
    let insert_s = metric_sum(&m, "spillway_insert_duration_seconds_sum");
    println!("| ClickHouse inserts: count, busy s | {inserts} {insert_s:.2} |");
    // What Spillway asked of RLS (every node), per trade: calls and Redis time by command.
    let mut by_cmd: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for node in rls.nodes() {
        for line in node.cli(&["INFO", "commandstats"]).lines() {
            let Some((name, rest)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let field = |f: &str| {
                rest.split(',')
                    .find_map(|x| x.strip_prefix(f))
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            let e = by_cmd.entry(name.to_string()).or_default();
            e.0 += field("calls=");
            e.1 += field("usec=");
        }
    }
    let per: Vec<String> = by_cmd
        .iter()
        .filter(|(c, _)| !matches!(c.as_str(), "rpush" | "set" | "info" | "ping" | "cluster"))
        .map(|(c, (calls, usec))| {
            format!("{c} {:.2} ({:.1} us)", calls / n as f64, usec / n as f64)
        })
        .collect();
    println!(
        "| RLS commands per trade: calls (Redis time) | {} |",
        per.join(", ")
    );
    println!(
        "| time to close / commit / acknowledge, s | {:.2} / {:.2} / {:.2} |",
        closed_in.as_secs_f64(),
        secs,
        acked_in.as_secs_f64()
    );
}
