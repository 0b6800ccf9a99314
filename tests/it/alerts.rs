//! End to end: alerts written into a real redis-server are archived in a real clickhouse-server
//! by the real spillway binary.

use std::time::Duration;

use common::{config_toml, eventually, free_port, load, ClickHouseServer, RedisServer, Spillway};

const WAIT: Duration = Duration::from_secs(60);

/// A redis, a clickhouse and a running spillway writing into database `db`.
async fn stack(db: &str, extra: &str) -> (RedisServer, ClickHouseServer, Spillway) {
    let redis = RedisServer::start();
    let ch = ClickHouseServer::start();
    let toml = format!(
        "{}\n[batch]\nmax_delay_ms = 200\n{extra}",
        config_toml(&redis, &ch, db, free_port())
    );
    let sp = Spillway::start(&toml);
    sp.wait_ready(WAIT).await;
    (redis, ch, sp)
}

/// Waits until the process has exited (a start that must fail).
async fn exited(sp: &Spillway) -> std::process::ExitStatus {
    loop {
        if let Some(s) = sp.exit_status() {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_count(ch: &ClickHouseServer, sql: &str, want: u64) {
    eventually(WAIT, &format!("{sql} = {want}"), || async {
        ch.count(sql).await >= want
    })
    .await;
    assert_eq!(ch.count(sql).await, want, "{sql}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_msgpack_alerts_are_archived_then_expire() {
    // TTLs read too (`ttl_ms` is checked below).
    let (redis, ch, sp) = stack("t10k", "[keyspace]\nread_ttl = true\n").await;
    let n = 10_000;
    load::set_all(&redis.url(), load::alerts("r", n), 3, 500, 2).await;

    wait_count(&ch, "SELECT count() FROM t10k.alerts FINAL", n).await;
    // Every field of every row is what was written (see load::msgpack_alert).
    let sql = format!(
        "SELECT count() FROM t10k.alerts FINAL WHERE
               alert_id != concat('r-', substring(key, 9))
            OR {} != 1700000000000 + toInt64(substring(key, 9))
            OR severity != ['info','warning','critical'][toInt64(substring(key, 9)) % 3 + 1]
            OR symbol != ['EURUSD','XAUUSD','BTCUSD'][toInt64(substring(key, 9)) % 3 + 1]
            OR account_id != concat('acc-', toString(toInt64(substring(key, 9)) % 97))
            OR trade_id != concat('t-', substring(key, 9))
            OR kind != 'margin_call' OR format != 'msgpack' OR captured_by != 'event'
            OR extra != '{{\"margin_level\":42.5}}'
            OR ttl_ms <= 0 OR ttl_ms > 3000",
        common::ms("ts_ms")
    );
    let wrong = ch.count(&sql).await;
    assert_eq!(wrong, 0, "rows with wrong fields");
    wait_count(
        &ch,
        "SELECT count() FROM t10k.alert_events FINAL WHERE event = 'written'",
        n,
    )
    .await;
    // The keys expire after 3 s; Redis reports each expiry, and the content stays archived.
    wait_count(
        &ch,
        "SELECT count() FROM t10k.alert_events FINAL WHERE event = 'expired'",
        n,
    )
    .await;
    assert_eq!(redis.cli(&["DBSIZE"]), "0");
    assert_eq!(ch.count("SELECT count() FROM t10k.alerts FINAL").await, n);
    let m = sp.metrics().await;
    assert!(
        m.contains(&format!(
            "spillway_values_captured_total{{pipeline=\"alerts\",via=\"event\"}} {n}"
        )),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_json_and_rewrites() {
    let (redis, ch, _sp) = stack("tforms", "").await;
    // The seed's own example.
    redis.cli(&[
        "SET",
        "alert:trade_failed",
        "Trade execution failed",
        "EX",
        "3600",
    ]);
    wait_count(&ch, "SELECT count() FROM tforms.alerts FINAL WHERE key = 'alert:trade_failed' AND message = 'Trade execution failed' AND format = 'text' AND alert_id = 'trade_failed'", 1).await;

    redis.cli(&[
        "SET",
        "alert:j1",
        r#"{"alert_id":"J-1","severity":"warning","message":"old producer","venue":"LMAX"}"#,
        "EX",
        "3600",
    ]);
    wait_count(&ch, r#"SELECT count() FROM tforms.alerts FINAL WHERE key = 'alert:j1' AND alert_id = 'J-1' AND severity = 'warning' AND format = 'json' AND extra = '{"venue":"LMAX"}'"#, 1).await;

    // The same key written three times with three values: three rows, each write an event.
    for (i, v) in ["first", "second", "third"].iter().enumerate() {
        redis.cli(&["SET", "alert:again", v, "EX", "3600"]);
        wait_count(
            &ch,
            "SELECT count() FROM tforms.alerts FINAL WHERE key = 'alert:again'",
            i as u64 + 1,
        )
        .await;
    }
    assert_eq!(
        ch.query("SELECT arrayStringConcat(groupArray(message), ',') FROM (SELECT message FROM tforms.alerts FINAL WHERE key = 'alert:again' ORDER BY message)").await.trim(),
        "first,second,third"
    );
    wait_count(&ch, "SELECT count() FROM tforms.alert_events FINAL WHERE key = 'alert:again' AND event = 'written'", 3).await;

    // Deletion is a lifecycle event; the content stays.
    redis.cli(&["DEL", "alert:j1"]);
    wait_count(&ch, "SELECT count() FROM tforms.alert_events FINAL WHERE key = 'alert:j1' AND event = 'deleted'", 1).await;
    assert_eq!(
        ch.count("SELECT count() FROM tforms.alerts FINAL WHERE key = 'alert:j1'")
            .await,
        1
    );
    // Keys outside the pattern are ignored.
    redis.cli(&["SET", "session:1", "x"]);
    redis.cli(&["SET", "alert:last", "done"]);
    wait_count(
        &ch,
        "SELECT count() FROM tforms.alerts FINAL WHERE key = 'alert:last'",
        1,
    )
    .await;
    assert_eq!(
        ch.count("SELECT count() FROM tforms.alerts FINAL WHERE key NOT LIKE 'alert:%'")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_values_land_in_dead_letters_byte_exact() {
    let (redis, ch, sp) = stack("tdead", "").await;
    let full = load::msgpack_alert("d", 1);
    let truncated = full[..full.len() / 2].to_vec();
    let mut random: Vec<u8> = (0..64u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    random[0] = 0xc1; // never valid MessagePack, never valid UTF-8
    let invalid_utf8 = b"caf\xe9 \xff\xfe".to_vec();
    let c = load::client(&redis.url()).await;
    use fred::prelude::*;
    for (k, v) in [
        ("alert:trunc", &truncated),
        ("alert:random", &random),
        ("alert:latin1", &invalid_utf8),
    ] {
        let () = c
            .set(k, v.as_slice(), Some(Expiration::EX(3600)), None, false)
            .await
            .unwrap();
    }
    wait_count(&ch, "SELECT count() FROM tdead.dead_letters FINAL", 3).await;
    for (k, v, reason) in [
        ("alert:trunc", &truncated, "invalid_msgpack"),
        ("alert:random", &random, "invalid_utf8"),
        ("alert:latin1", &invalid_utf8, "invalid_utf8"),
    ] {
        let hex: String = v.iter().map(|b| format!("{b:02X}")).collect();
        let got = ch
            .query(&format!("SELECT hex(raw), reason, length(error) > 0, pipeline FROM tdead.dead_letters FINAL WHERE key = '{k}' FORMAT TSV"))
            .await;
        assert_eq!(got.trim(), format!("{hex}\t{reason}\t1\talerts"), "{k}");
    }
    // The pipeline keeps running.
    load::set_all(&redis.url(), load::alerts("after", 100), 3600, 100, 1).await;
    wait_count(&ch, "SELECT count() FROM tdead.alerts FINAL", 100).await;
    assert!(sp.exit_status().is_none());
    let m = sp.metrics().await;
    assert!(
        m.contains("spillway_dead_letters_total{pipeline=\"alerts\",reason=\"invalid_utf8\"} 2"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_replaced_by_another_type_before_its_read_is_a_dead_letter() {
    // The default read-back (MGET alone): the TTL columns say the TTL was not read (-3).
    another_type_or_gone_before_the_read("ttype", "", -3..=-3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ttl_reads_values_are_archived_with_their_ttl() {
    // The read-back is the PTTL script and MGET, pipelined: a key the script did not see gone
    // but MGET found without a string is told apart (gone or another type) by its TYPE.
    another_type_or_gone_before_the_read(
        "twithttl",
        "[keyspace]\nread_ttl = true\n",
        3_500_000..=3_600_000,
    )
    .await;
}

/// A string replaced by a list before Spillway can read it becomes a `read_refused` dead letter;
/// one deleted before its read is an event, not a dead letter; a plain value written with
/// `EX 3600` is archived with a `ttl_ms` in `ttl`.
async fn another_type_or_gone_before_the_read(
    db: &str,
    extra: &str,
    ttl: std::ops::RangeInclusive<i64>,
) {
    let (redis, ch, sp) = stack(db, extra).await;
    // Written as a string, then replaced by a list before Spillway can read it (one script:
    // atomic), so the read finds the key but no string; and a string written then deleted.
    let replace = "redis.call('SET', KEYS[1], 'v') redis.call('DEL', KEYS[1]) \
                   redis.call('RPUSH', KEYS[1], 'a') return 1";
    redis.cli(&["EVAL", replace, "1", "alert:listy"]);
    let delete = "redis.call('SET', KEYS[1], 'v') redis.call('DEL', KEYS[1]) return 1";
    redis.cli(&["EVAL", delete, "1", "alert:gone"]);
    redis.cli(&["SET", "alert:fine", "archived", "EX", "3600"]);
    wait_count(
        &ch,
        &format!(
            "SELECT count() FROM {db}.dead_letters WHERE key = 'alert:listy' \
             AND reason = 'read_refused' AND position(error, 'holds a list') > 0"
        ),
        1,
    )
    .await;
    wait_count(&ch, &format!("SELECT count() FROM {db}.alerts FINAL"), 1).await;
    // The deleted one is no dead letter (it is gone, and its deletion is an event).
    wait_count(
        &ch,
        &format!(
            "SELECT count() FROM {db}.alert_events FINAL WHERE key = 'alert:gone' AND event = 'deleted'"
        ),
        1,
    )
    .await;
    assert_eq!(
        ch.count(&format!("SELECT count() FROM {db}.dead_letters"))
            .await,
        1
    );
    for table in ["alerts", "alert_events"] {
        let sql = format!(
            "SELECT count() FROM {db}.{table} WHERE key = 'alert:fine' \
             AND ttl_ms BETWEEN {} AND {}",
            ttl.start(),
            ttl.end()
        );
        wait_count(&ch, &sql, 1).await;
    }
    drop(sp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_with_a_password_subscribes_and_a_wrong_password_fails_without_leaking_it() {
    let redis = RedisServer::start();
    redis.cli(&[
        "ACL",
        "SETUSER",
        "spill",
        "on",
        ">s3cret-pw",
        "~*",
        "&*",
        "+@all",
    ]);
    // The default user may not subscribe: a connection that skipped AUTH would be refused.
    redis.cli(&["ACL", "SETUSER", "default", "resetchannels"]);
    let ch = ClickHouseServer::start();
    let config = |password: &str| {
        config_toml(&redis, &ch, "tacl", free_port()).replace(
            &redis.url(),
            &format!("redis://spill:{password}@127.0.0.1:{}", redis.port),
        )
    };
    // Wrong password: the start fails, saying so, without the password.
    let sp = Spillway::start(&config("not-the-pw"));
    let status = exited(&sp).await;
    assert!(!status.success());
    let log = sp.log();
    assert!(
        log.contains("WRONGPASS") || log.contains("invalid username-password"),
        "{log}"
    );
    assert!(!log.contains("not-the-pw"), "the password leaked: {log}");
    // The right one: values are captured through the subscription (AUTH user password).
    let sp = Spillway::start(&config("s3cret-pw"));
    sp.wait_ready(WAIT).await;
    redis.cli(&["SET", "alert:acl", "through an ACL user", "EX", "3600"]);
    wait_count(
        &ch,
        "SELECT count() FROM tacl.alerts FINAL WHERE message = 'through an ACL user'",
        1,
    )
    .await;
    assert!(!sp.log().contains("s3cret-pw"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_is_read_and_subscribed_over_tls() {
    // A CA and a certificate for localhost, made with openssl; Spillway trusts the CA through
    // SSL_CERT_FILE (read by rustls-native-certs), as a deployment with its own CA would.
    let certs = common::tls::TestCerts::make();
    let path = |f: &str| certs.path(f).display().to_string();
    let tls_port = free_port().to_string();
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &path("server.pem"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.pem"),
        "--tls-auth-clients",
        "no",
    ]);
    let ch = ClickHouseServer::start();
    let toml = config_toml(&redis, &ch, "ttls", free_port())
        .replace(&redis.url(), &format!("rediss://localhost:{tls_port}"));
    let sp = Spillway::start_with_env(&toml, &[("SSL_CERT_FILE", &path("ca.pem"))]);
    sp.wait_ready(WAIT).await;
    redis.cli(&["SET", "alert:tls", "over TLS", "EX", "3600"]);
    wait_count(
        &ch,
        "SELECT count() FROM ttls.alerts FINAL WHERE message = 'over TLS'",
        1,
    )
    .await;
    // Spillway's clients (readers, subscriber) all came to the TLS port, none to the plain one.
    let clients = redis.cli(&["CLIENT", "LIST"]);
    let on = |port: &str| {
        let laddr = format!(" laddr=127.0.0.1:{port} ");
        clients
            .lines()
            .filter(|l| l.contains(&laddr) && !l.contains("cmd=client|list"))
            .count()
    };
    assert_eq!(on(&redis.port.to_string()), 0, "plain clients:\n{clients}");
    assert!(on(&tls_port) >= 2, "TLS clients:\n{clients}");
    assert!(
        clients.contains("flags=P"),
        "a subscriber among them:\n{clients}"
    );
    // The INFO poller reaches it over TLS too, and reports it up.
    let up = r#"spillway_redis_up{instance="rls"} 1"#;
    eventually(WAIT, up, || async {
        sp.metrics().await.lines().any(|l| l == up)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recaptures_without_duplicates() {
    let redis = RedisServer::start();
    let ch = ClickHouseServer::start();
    let toml = format!(
        "{}\n[batch]\nmax_delay_ms = 200\n",
        config_toml(&redis, &ch, "trestart", free_port())
    );
    let mut sp = Spillway::start(&toml);
    sp.wait_ready(WAIT).await;
    load::set_all(&redis.url(), load::alerts("x", 2000), 3600, 500, 1).await;
    redis.cli(&["SET", "alert:plain", "text survives restarts", "EX", "3600"]);
    wait_count(&ch, "SELECT count() FROM trestart.alerts FINAL", 2001).await;
    assert!(
        sp.terminate().success(),
        "SIGTERM must exit 0; log:\n{}",
        sp.log()
    );

    // The new process rescans every live key at start: the same values are captured again.
    let sp = Spillway::start(&toml);
    sp.wait_ready(WAIT).await;
    eventually(WAIT, "rescan captured every key", || async {
        sp.metrics()
            .await
            .contains("spillway_values_captured_total{pipeline=\"alerts\",via=\"scan\"} 2001")
    })
    .await;
    wait_count(
        &ch,
        "SELECT count() FROM trestart.alerts WHERE captured_by = 'scan'",
        2001,
    )
    .await;
    // Written twice, shown once.
    assert_eq!(ch.count("SELECT count() FROM trestart.alerts").await, 4002);
    assert_eq!(
        ch.count("SELECT count() FROM trestart.alerts FINAL").await,
        2001
    );
    assert_eq!(
        ch.count("SELECT uniqExact(key, content_hash) FROM trestart.alerts")
            .await,
        2001
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_notification_flags_fail_with_the_fix_or_are_set() {
    let redis = RedisServer::start_with(&["--notify-keyspace-events", "Ex"]);
    let ch = ClickHouseServer::start();
    let base = config_toml(&redis, &ch, "tflags", free_port());
    let mut sp = Spillway::start(&base);
    let status = exited(&sp).await;
    assert!(!status.success());
    let log = sp.log();
    let current = redis.cli(&["CONFIG", "GET", "notify-keyspace-events"]);
    let current = current.lines().nth(1).unwrap_or_default(); // Redis writes "Ex" as "xE"
    assert!(log.contains("missing: $ e g"), "{log}");
    let fix = format!(
        "redis-cli -h 127.0.0.1 -p {} CONFIG SET notify-keyspace-events '{current}$eg'",
        redis.port
    );
    assert!(log.contains(&fix), "{fix}\n{log}");
    sp.kill();

    let sp = Spillway::start(&format!(
        "{base}\n[keyspace]\nconfigure_notifications = true\n"
    ));
    sp.wait_ready(WAIT).await;
    let flags = redis.cli(&["CONFIG", "GET", "notify-keyspace-events"]);
    for f in ['E', 'x', '$', 'e', 'g'] {
        assert!(flags.lines().nth(1).unwrap_or("").contains(f), "{flags}");
    }
    redis.cli(&["SET", "alert:1", "now archived", "EX", "60"]);
    wait_count(&ch, "SELECT count() FROM tflags.alerts FINAL", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let (redis, ch, sp) = stack("tprom", "").await;
    load::set_all(&redis.url(), load::alerts("m", 50), 3600, 50, 1).await;
    redis.cli(&["SET", "alert:bad", "\u{1}"]);
    wait_count(&ch, "SELECT count() FROM tprom.alerts FINAL", 51).await;
    // Every committed row has its event-to-commit time observed (just after its commit).
    let sample = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("none")
            .to_string()
    };
    eventually(
        WAIT,
        "event-to-commit observed for every alert row",
        || async {
            let text = sp.metrics().await;
            sample(
                &text,
                "spillway_event_to_commit_seconds_count{table=\"alerts\"}",
            ) == "51"
                && sample(&text, "spillway_rows_written_total{table=\"alerts\"}") == "51"
        },
    )
    .await;
    let text = sp.metrics().await;
    for name in [
        "spillway_events_received_total",
        "spillway_rows_written_total",
        "spillway_insert_batches_total",
        "spillway_insert_duration_seconds_bucket",
        "spillway_event_to_commit_seconds_bucket{table=\"alerts\"",
        "spillway_event_to_commit_seconds_bucket{table=\"alert_events\"",
        "spillway_uncommitted_min_ttl_seconds",
        "spillway_channel_depth",
        "spillway_channel_capacity",
        "spillway_build_info",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(line.starts_with("spillway_"), "{line}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool (Debian package prometheus) must be installed");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}\n{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_clickhouse_refuses_go_to_dead_letters_and_the_rest_lands() {
    let (redis, ch, sp) = stack("trefuse", "").await;
    // A row check of the kind operators add on older servers: ClickHouse refuses any insert
    // holding an alert whose message is "poison pill" (code 395), whatever else it holds.
    ch.query("ALTER TABLE trefuse.alerts ADD COLUMN refused UInt8 MATERIALIZED throwIf(message = 'poison pill')")
        .await;
    let mut items = load::alerts("ok", 200);
    items.insert(100, ("alert:poison".into(), b"poison pill".to_vec()));
    load::set_all(&redis.url(), items, 3600, 201, 1).await;
    wait_count(&ch, "SELECT count() FROM trefuse.alerts FINAL", 200).await;
    wait_count(&ch, "SELECT count() FROM trefuse.dead_letters FINAL", 1).await;
    let dead = ch
        .query("SELECT pipeline, key, reason, position(raw, 'poison pill') > 0, position(error, 'Code: 395') > 0 FROM trefuse.dead_letters FINAL FORMAT TSV")
        .await;
    assert_eq!(
        dead.trim(),
        "clickhouse\talerts\trejected_by_clickhouse\t1\t1"
    );
    assert_eq!(
        ch.count("SELECT count() FROM trefuse.alerts WHERE key = 'alert:poison'")
            .await,
        0
    );
    // The other rows of the refused batch (its alert_events included) landed.
    wait_count(
        &ch,
        "SELECT count() FROM trefuse.alert_events FINAL WHERE event = 'written'",
        201,
    )
    .await;
    let m = sp.metrics().await;
    assert!(m.contains("spillway_dead_letters_total{pipeline=\"clickhouse\",reason=\"rejected_by_clickhouse\"} 1"), "{m}");
}
