//! ClickHouse errors that retrying cannot fix, on a real clickhouse-server while Spillway runs
//! under an alert load: a dropped table is created again (or, with `recreate_tables = false`,
//! waits for the operator's fix), a refused user blocks the inserts; each time `/readyz` fails
//! with the reason, `spillway_clickhouse_blocked` says it, the rows wait and nothing is lost, and
//! no password shows anywhere.

use std::time::{Duration, Instant};

use common::observe::metric_value;
use common::{eventually, free_port, load, ClickHouseServer, RedisServer, Spillway};

/// `GET /readyz`: status and body (0 and empty when it does not answer).
async fn readyz(sp: &Spillway) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}/readyz", sp.metrics_port);
    match common::http_client(Duration::from_secs(5))
        .get(url)
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// Polls `/readyz` until `status` comes with a body containing `said`; returns the body.
async fn until_ready_is(sp: &Spillway, status: u16, said: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = readyz(sp).await;
        if code == status && body.contains(said) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered {status} with {said:?}; last {code}: {body}\nlog:\n{}",
            sp.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `db.alerts` holds exactly `n` distinct keys under FINAL, one row each.
async fn archived(ch: &ClickHouseServer, db: &str, n: u64) {
    let sql = format!("SELECT count() * 1000000 + uniqExact(key) FROM {db}.alerts FINAL");
    eventually(
        Duration::from_secs(90),
        &format!("{n} alerts in {db}"),
        || {
            let sql = sql.clone();
            async move {
                let exists = ch.count(&format!("EXISTS TABLE {db}.alerts")).await;
                exists == 1 && ch.count(&sql).await == n * 1_000_000 + n
            }
        },
    )
    .await;
}

/// The value of `series` in the metrics (0 when absent).
async fn metric(sp: &Spillway, series: &str) -> f64 {
    metric_value(&sp.metrics().await, series).unwrap_or(0.0)
}

/// How many times the log says the inserts were blocked (once per change of reason).
fn blocked_lines(sp: &Spillway) -> usize {
    sp.log().matches("inserts blocked").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_under_load_is_created_again_and_nothing_is_lost() {
    let (rls, ch) = (RedisServer::start(), ClickHouseServer::start());
    let sp = Spillway::start(&common::config_toml(&rls, &ch, "tcherr_a", free_port()));
    sp.wait_ready(Duration::from_secs(60)).await;
    // 800 alerts at 100 a second: the drop falls in the middle of the load.
    let (url, items) = (rls.url(), load::alerts("a", 800));
    let writer = tokio::spawn(async move { load::set_paced(&url, &items, 3600, 100).await });
    eventually(Duration::from_secs(30), "first alerts archived", || async {
        ch.count("SELECT count() FROM tcherr_a.alerts").await >= 100
    })
    .await;
    ch.query("DROP TABLE tcherr_a.alerts").await;
    until_ready_is(
        &sp,
        503,
        "clickhouse: table tcherr_a.alerts is gone (Code 60): Spillway recreates it",
    )
    .await;
    until_ready_is(&sp, 200, "clickhouse ok").await;
    writer.await.expect("load");
    // The rows archived before the drop went with the table: the rescan after it archives
    // every alert still alive in Redis again.
    archived(&ch, "tcherr_a", 800).await;
    let recreated = r#"spillway_clickhouse_recreated_total{object="table"}"#;
    assert_eq!(metric(&sp, recreated).await, 1.0);
    let errors = r#"spillway_clickhouse_errors_total{kind="unknown_table"}"#;
    assert!(metric(&sp, errors).await >= 1.0);
    let blocked = r#"spillway_clickhouse_blocked{reason="unknown_table"}"#;
    assert_eq!(metric(&sp, blocked).await, 0.0);
    assert_eq!(blocked_lines(&sp), 1, "{}", sp.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_recreation_a_dropped_table_waits_for_the_operator() {
    let (rls, ch) = (RedisServer::start(), ClickHouseServer::start());
    let toml = common::config_toml(&rls, &ch, "tcherr_b", free_port()).replace(
        "database = \"tcherr_b\"\n",
        "database = \"tcherr_b\"\nrecreate_tables = false\n",
    );
    let sp = Spillway::start(&toml);
    sp.wait_ready(Duration::from_secs(60)).await;
    let create = ch
        .query("SHOW CREATE TABLE tcherr_b.alerts FORMAT TSVRaw")
        .await;
    load::set_all(&rls.url(), load::alerts("b1", 100), 3600, 100, 1).await;
    archived(&ch, "tcherr_b", 100).await;
    ch.query("DROP TABLE tcherr_b.alerts").await;
    load::set_all(&rls.url(), load::alerts("b2", 100), 3600, 100, 1).await;
    let body = until_ready_is(&sp, 503, "table tcherr_b.alerts is gone (Code 60)").await;
    assert!(
        body.contains("set clickhouse.recreate_tables = true"),
        "{body}"
    );
    let blocked = r#"spillway_clickhouse_blocked{reason="unknown_table"}"#;
    assert_eq!(metric(&sp, blocked).await, 1.0);
    // Several blocked retries later, still blocked, and the table is not created.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(readyz(&sp).await.0, 503);
    assert_eq!(ch.count("EXISTS TABLE tcherr_b.alerts").await, 0);
    assert_eq!(metric(&sp, blocked).await, 1.0);
    // The operator creates it: the waiting rows go through, and the rescan archives the values
    // archived before the drop again.
    ch.query(&create).await;
    until_ready_is(&sp, 200, "clickhouse ok").await;
    archived(&ch, "tcherr_b", 200).await;
    assert_eq!(metric(&sp, blocked).await, 0.0);
    let recreated = r#"spillway_clickhouse_recreated_total{object="table"}"#;
    assert_eq!(metric(&sp, recreated).await, 0.0);
    assert_eq!(blocked_lines(&sp), 1, "{}", sp.log());
}

pub(crate) const PASSWORD: &str = "s3cretSpillPW";
const CHANGED: &str = "chang3dSpillPW";

/// users.xml for 18.16: `default` without a password (the test's own queries) and `spill` with
/// `password`, or no `spill` at all.
fn users(password: Option<&str>) -> String {
    let spill = password.map_or(String::new(), |p| {
        format!(
            "<spill><password>{p}</password><networks><ip>::/0</ip></networks>\
             <profile>default</profile><quota>default</quota></spill>"
        )
    });
    format!(
        r#"<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>::/0</ip></networks>
    <profile>default</profile><quota>default</quota></default>{spill}</users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
  </interval></default></quotas>
</yandex>
"#
    )
}

/// Writes users.xml and waits until ClickHouse answers `spill` with `password` as `works`.
pub(crate) async fn set_users(ch: &ClickHouseServer, password: Option<&str>, works: bool) {
    ch.write_users(&users(password));
    let url = format!("{}/?user=spill&password={PASSWORD}", ch.url());
    eventually(Duration::from_secs(30), "users.xml reloaded", || {
        let url = url.clone();
        async move {
            let r = common::http_client(Duration::from_secs(5))
                .post(url)
                .body("SELECT 1")
                .send()
                .await;
            r.is_ok_and(|r| r.status().is_success() == works)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_user_blocks_with_the_reason_and_no_password() {
    if common::modern_clickhouse() {
        eprintln!("skipped: the modern test server has no users.xml to change");
        return;
    }
    let (rls, ch) = (RedisServer::start(), ClickHouseServer::start());
    set_users(&ch, Some(PASSWORD), true).await;
    let toml = common::config_toml(&rls, &ch, "tcherr_c", free_port())
        .replace("[clickhouse]\n", "[clickhouse]\nuser = \"spill\"\n");
    let sp = Spillway::start_with_env(&toml, &[("SPILLWAY_CLICKHOUSE_PASSWORD", PASSWORD)]);
    sp.wait_ready(Duration::from_secs(60)).await;
    load::set_all(&rls.url(), load::alerts("c1", 100), 3600, 100, 1).await;
    archived(&ch, "tcherr_c", 100).await;
    let mut seen = Vec::new();
    // The password changed on the server: 18.16 answers 193 (wrong password).
    set_users(&ch, Some(CHANGED), false).await;
    load::set_all(&rls.url(), load::alerts("c2", 100), 3600, 100, 1).await;
    let said = "clickhouse: authentication failed for user spill (Code 193)";
    seen.push(until_ready_is(&sp, 503, said).await);
    assert!(seen[0].contains("clickhouse.password"), "{}", seen[0]);
    let blocked = r#"spillway_clickhouse_blocked{reason="auth"}"#;
    assert_eq!(metric(&sp, blocked).await, 1.0);
    // The user removed: 192 (unknown user), the same kind, logged once more for the new code.
    set_users(&ch, None, false).await;
    let said = "clickhouse: authentication failed for user spill (Code 192)";
    seen.push(until_ready_is(&sp, 503, said).await);
    // The user back with Spillway's password: the rows waiting go through.
    set_users(&ch, Some(PASSWORD), true).await;
    seen.push(until_ready_is(&sp, 200, "clickhouse ok").await);
    archived(&ch, "tcherr_c", 200).await;
    assert_eq!(metric(&sp, blocked).await, 0.0);
    assert_eq!(blocked_lines(&sp), 2, "{}", sp.log());
    seen.push(sp.metrics().await);
    seen.push(sp.log());
    for text in &seen {
        assert!(
            !text.contains(PASSWORD) && !text.contains(CHANGED),
            "a password shows in:\n{text}"
        );
    }
}
