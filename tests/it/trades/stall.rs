//! A stalled pipeline tells the truth: with ClickHouse stopped while closes wait, `/readyz`
//! answers 503 naming the trades pipeline as stalled and `spillway_pipeline_stalled` reads 1,
//! not before `stall_after_secs` and within it plus one poll of the group (5 s); when
//! ClickHouse is back both recover. `/healthz` answers 200 throughout.

use std::time::{Duration, Instant};

use common::trades;
use common::{eventually, http_client};

use super::stack::{report, Stack, WAIT};

const STALL_AFTER: u64 = 4;
const STALLED: &str = "spillway_pipeline_stalled{pipeline=\"trades\"}";

/// Status and body of `GET path` on spillway's metrics port.
async fn get(s: &Stack, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}{path}", s.sp.metrics_port);
    let r = http_client(Duration::from_secs(5))
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (r.status().as_u16(), r.text().await.expect("body"))
}

/// The `/readyz` line of the trades pipeline.
fn pipeline_line(body: &str) -> &str {
    body.lines()
        .find(|l| l.starts_with("pipeline trades "))
        .unwrap_or_else(|| panic!("no pipeline line in /readyz: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_outage_stalls_the_pipeline_in_readyz_and_metrics_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(common::repo_dir().join("pipelines/trades.toml"))
        .expect("pipelines/trades.toml");
    let def = shipped.replace(
        "stall_after_secs = 120",
        &format!("stall_after_secs = {STALL_AFTER}"),
    );
    assert_ne!(
        def, shipped,
        "pipelines/trades.toml sets stall_after_secs = 120"
    );
    std::fs::write(dir.path().join("trades.toml"), def).unwrap();
    let top = format!("pipelines_dir = \"{}\"\n", dir.path().display());
    let mut s = Stack::start_config("tstall", &top, "").await;

    let first = trades::plan("st1", 100);
    trades::play(&s.rls.url(), &s.rtrs.url(), &first, 100, Duration::ZERO).await;
    s.settled(&first, 0, 0).await;
    let (status, body) = get(&s, "/readyz").await;
    assert_eq!((status, pipeline_line(&body)), (200, "pipeline trades ok"));
    assert_eq!(s.metric(STALLED).await, 0);

    // ClickHouse stops; closes keep coming and wait in the stream.
    s.ch.stop();
    let second = trades::plan("st2", 200);
    let waiting = Instant::now();
    trades::play(&s.rls.url(), &s.rtrs.url(), &second, 100, Duration::ZERO).await;
    let (status, body) = get(&s, "/readyz").await;
    assert_eq!(status, 503, "ClickHouse is down: {body}");
    assert!(body.contains("clickhouse unreachable"), "{body}");
    assert_eq!(
        pipeline_line(&body),
        "pipeline trades ok",
        "not stalled yet"
    );

    let body = loop {
        let (_, body) = get(&s, "/readyz").await;
        let line = pipeline_line(&body);
        if line.starts_with("pipeline trades stalled: no entry acknowledged for") {
            break body;
        }
        assert!(waiting.elapsed() < WAIT, "not stalled in {WAIT:?}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = waiting.elapsed();
    println!(
        "stalled after {:.1} s (stall_after_secs = {STALL_AFTER}):\n{body}",
        took.as_secs_f64()
    );
    assert!(
        took >= Duration::from_secs(STALL_AFTER)
            && took <= Duration::from_secs(STALL_AFTER + 5 + 2),
        "declared stalled after {took:?}"
    );
    assert_eq!(get(&s, "/readyz").await.0, 503);
    assert_eq!(s.metric(STALLED).await, 1, "{STALLED}");
    assert_eq!(get(&s, "/healthz").await, (200, "ok\n".to_string()));

    // ClickHouse is back: the closes move, and the pipeline is ready and not stalled again.
    s.ch.start_again();
    let back = Instant::now();
    eventually(WAIT, "/readyz 200 again", || async {
        get(&s, "/readyz").await.0 == 200
    })
    .await;
    println!(
        "ready again {:.1} s after ClickHouse started",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(s.metric(STALLED).await, 0, "{STALLED}");
    let f = s.settled(&second, trades::total_entries(&first), 0).await;
    report("stall", &second, &f, back.elapsed());
    assert_eq!(f.trades, 300);
    assert_eq!(get(&s, "/healthz").await, (200, "ok\n".to_string()));
    let (status, body) = get(&s, "/readyz").await;
    assert_eq!((status, pipeline_line(&body)), (200, "pipeline trades ok"));
}
