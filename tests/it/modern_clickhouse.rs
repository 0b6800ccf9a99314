//! The modern schema on a current ClickHouse: the tests run the Debian ClickHouse 18.16, where
//! Spillway's time columns are `Int64` and its labels `String`; production runs 24.x and later,
//! where they are `DateTime64(3)` and `LowCardinality(String)` with the same RowBinary bytes.
//!
//! This test archives varied alerts through the real stack on 18.16, exports the stored rows as
//! RowBinary (the bytes the clickhouse crate sent, since on 18.16 every column is Int64, UInt64
//! or String), and hands them with `spillway schema --clickhouse-version 26.9` to
//! `tests/chdb_check.py`, which creates the tables in chdb (an embedded ClickHouse 26.x),
//! inserts those bytes and reads them back. The values must be identical, byte for byte.
//!
//! Needs `python3` with chdb: `python3 -m pip install chdb-core` (scripts/test.sh does it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{config_toml, eventually, free_port, http_client, load, ClickHouseServer};
use common::{RedisServer, Spillway};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const DB: &str = "tmodern";
const TABLES: [&str; 3] = ["alerts", "alert_events", "dead_letters"];
/// A plain-text alert with everything TabSeparated escapes, a quote and multi-byte UTF-8.
const TEXT: &str = "Trade execution failed:\tO'Brien \\ \"EURUSD\"\r\nretry 2 — 5 € ✓";
const JSON: &str = r#"{"alert_id":"J-1","severity":"warning","message":"old producer é","venue":"LMAX","ts_ms":1700000000999}"#;
/// Never valid MessagePack: a map of 5 entries that ends after its first key.
const CORRUPT: &[u8] = b"\x85\x01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_ddl_accepts_the_bytes_spillway_writes() {
    let started = Instant::now();
    require_chdb();
    let (redis, ch, mut sp) = stack().await;
    write_alerts(&redis, &ch).await;
    // Stop writing, and merge, so that both exports below see the same rows.
    assert!(sp.terminate().success(), "log:\n{}", sp.log());
    for t in TABLES {
        ch.query(&format!("OPTIMIZE TABLE {DB}.{t} FINAL")).await;
    }

    let dir = tempfile::Builder::new()
        .prefix("modern-ch-")
        .tempdir()
        .expect("tempdir");
    let mut legacy = Vec::new();
    for t in TABLES {
        legacy.push(export(&ch, t, dir.path()).await);
    }
    let chdb_started = Instant::now();
    let summary = run_chdb_check(dir.path(), &legacy);
    eprintln!(
        "chdb {} (ClickHouse {}): checked in {:?}",
        summary["chdb_version"],
        summary["version"],
        chdb_started.elapsed()
    );
    let version = summary["version"].as_str().unwrap_or_default();
    let major: u32 = version.split('.').next().unwrap_or("").parse().unwrap_or(0);
    assert!(
        major >= 24,
        "chdb runs ClickHouse {version}, not a current one"
    );

    for l in &legacy {
        compare(l, &summary["tables"][l.table], &dir.path().join("out"));
    }
    let alerts_final = summary["alerts_final"].as_u64();
    assert_eq!(alerts_final, Some(52), "alerts FINAL on chdb");
    eprintln!("modern_clickhouse took {:?}", started.elapsed());
}

/// Fails (never skips) when python3 cannot import chdb, with the command that installs it.
fn require_chdb() {
    // In an empty directory: python3 -c imports from its cwd, where any `chdb` folder would do.
    let empty = tempfile::tempdir().expect("tempdir");
    let out = Command::new("python3")
        .args(["-c", "import chdb.session"])
        .current_dir(empty.path())
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "python3 cannot import chdb (an embedded ClickHouse 26.x this test needs): run \
             `python3 -m pip install chdb-core` (scripts/test.sh does it)\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "cannot run python3 ({e}): install python3, then `python3 -m pip install chdb-core`"
        ),
    }
}

/// A redis, a clickhouse 18.16 and a running spillway writing into database `DB`.
async fn stack() -> (RedisServer, ClickHouseServer, Spillway) {
    let redis = RedisServer::start();
    // The legacy server's rows are what this test compares the modern DDL with.
    let ch = ClickHouseServer::start_legacy();
    let toml = format!(
        "{}\n[batch]\nmax_delay_ms = 200\n",
        config_toml(&redis, &ch, DB, free_port())
    );
    let sp = Spillway::start(&toml);
    sp.wait_ready(WAIT).await;
    (redis, ch, sp)
}

/// 50 MessagePack alerts, a text alert (then deleted), a JSON alert with an unknown field and a
/// corrupt value; waits until all of them, and their events, are in ClickHouse.
async fn write_alerts(redis: &RedisServer, ch: &ClickHouseServer) {
    load::set_all(&redis.url(), load::alerts("m", 50), 3600, 50, 1).await;
    let c = load::client(&redis.url()).await;
    use fred::prelude::*;
    for (k, v) in [
        ("alert:text", TEXT.as_bytes()),
        ("alert:json", JSON.as_bytes()),
        ("alert:corrupt", CORRUPT),
    ] {
        let () = c
            .set(k, v, Some(Expiration::EX(3600)), None, false)
            .await
            .expect("SET");
    }
    wait_count(ch, "SELECT count() FROM tmodern.alerts FINAL", 52).await;
    wait_count(ch, "SELECT count() FROM tmodern.dead_letters FINAL", 1).await;
    let written = "SELECT count() FROM tmodern.alert_events FINAL WHERE event = 'written'";
    wait_count(ch, written, 53).await;
    let removed: i64 = c.del("alert:text").await.expect("DEL");
    assert_eq!(removed, 1);
    let deleted = "SELECT count() FROM tmodern.alert_events FINAL WHERE event = 'deleted'";
    wait_count(ch, deleted, 1).await;
    let text = "SELECT count() FROM tmodern.alerts FINAL WHERE key = 'alert:text' AND format = 'text' AND message = '";
    let text = format!("{text}{}'", TEXT.replace('\\', "\\\\").replace('\'', "\\'"));
    assert_eq!(ch.count(&text).await, 1, "{text}");
    c.quit().await.ok();
}

async fn wait_count(ch: &ClickHouseServer, sql: &str, want: u64) {
    eventually(WAIT, &format!("{sql} = {want}"), || async {
        ch.count(sql).await >= want
    })
    .await;
    assert_eq!(ch.count(sql).await, want, "{sql}");
}

/// One table as stored by ClickHouse 18.16.
struct Legacy {
    table: &'static str,
    /// `(name, type)` in table order.
    columns: Vec<(String, String)>,
    sorting_key: String,
    rowbinary: PathBuf,
    rowbinary_len: usize,
    /// Every row as TabSeparated, ordered by the sorting key then every column.
    tsv: Vec<u8>,
    count: u64,
    count_final: u64,
}

/// Exports `table` from 18.16: its rows as RowBinary into DIR/TABLE.rowbinary, and as TSV.
async fn export(ch: &ClickHouseServer, table: &'static str, dir: &Path) -> Legacy {
    let text = |b: Vec<u8>| String::from_utf8(b).expect("UTF-8");
    let describe = text(fetch(ch, &format!("DESCRIBE TABLE {DB}.{table} FORMAT TSV")).await);
    let columns: Vec<(String, String)> = describe
        .lines()
        .map(|l| {
            let mut f = l.split('\t');
            let (name, ty) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
            (name.to_string(), ty.to_string())
        })
        .collect();
    for (name, ty) in &columns {
        // Only these types are stored as the very bytes the clickhouse crate sent.
        assert!(
            ["Int64", "UInt64", "String"].contains(&ty.as_str()),
            "{table}.{name} is {ty} on 18.16"
        );
    }
    let sql = format!(
        "SELECT sorting_key FROM system.tables WHERE database = '{DB}' AND name = '{table}' FORMAT TSV"
    );
    let sorting_key = text(fetch(ch, &sql).await).trim().to_string();
    assert!(!sorting_key.is_empty(), "{table} has no sorting key");

    let bytes = fetch(ch, &format!("SELECT * FROM {DB}.{table} FORMAT RowBinary")).await;
    let rowbinary = dir.join(format!("{table}.rowbinary"));
    std::fs::write(&rowbinary, &bytes).expect("write RowBinary");
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    let sql = format!(
        "SELECT * FROM {DB}.{table} ORDER BY {sorting_key}, {} FORMAT TabSeparated",
        names.join(", ")
    );
    let tsv = fetch(ch, &sql).await;
    let count = ch.count(&format!("SELECT count() FROM {DB}.{table}")).await;
    let count_final = ch
        .count(&format!("SELECT count() FROM {DB}.{table} FINAL"))
        .await;
    Legacy {
        table,
        columns,
        sorting_key,
        rowbinary,
        rowbinary_len: bytes.len(),
        tsv,
        count,
        count_final,
    }
}

/// The raw body of a query to 18.16 over HTTP (which may not be UTF-8).
async fn fetch(ch: &ClickHouseServer, sql: &str) -> Vec<u8> {
    let resp = http_client(Duration::from_secs(60))
        .post(format!("{}/", ch.url()))
        .body(sql.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("ClickHouse request failed for `{sql}`: {e}"));
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .expect("ClickHouse response body")
        .to_vec();
    assert!(
        status.is_success(),
        "ClickHouse returned {status} for `{sql}`: {}",
        String::from_utf8_lossy(&body)
    );
    body
}

/// Runs tests/chdb_check.py on the modern DDL and the exported rows; returns its JSON summary.
fn run_chdb_check(dir: &Path, legacy: &[Legacy]) -> Value {
    let schema = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["schema", "--clickhouse-version", "26.9", "--database"])
        .arg("spillway")
        .output()
        .expect("run spillway schema");
    assert!(
        schema.status.success(),
        "spillway schema: {}",
        show(&schema)
    );
    let ddl = dir.join("modern.sql");
    std::fs::write(&ddl, &schema.stdout).expect("write DDL");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chdb_check.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg("--ddl").arg(&ddl);
    for l in legacy {
        cmd.arg("--rows")
            .arg(format!("{}={}", l.table, l.rowbinary.display()));
    }
    cmd.arg("--session").arg(dir.join("chdb-session"));
    cmd.arg("--out").arg(dir.join("out")).current_dir(dir);
    let out = cmd.output().expect("run python3 tests/chdb_check.py");
    assert!(
        out.status.success(),
        "tests/chdb_check.py failed ({}):\n{}",
        out.status,
        show(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("chdb_check.py printed no JSON ({e}):\n{}", show(&out)))
}

fn show(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that chdb stored exactly what 18.16 stored, in the modern types.
fn compare(l: &Legacy, modern: &Value, out_dir: &Path) {
    let t = l.table;
    eprintln!(
        "{t}: {} rows, {} RowBinary bytes, {} TSV bytes on 18.16; chdb: {} rows, {} FINAL, {} \
         after a retry ({} FINAL), {} TSV bytes",
        l.count,
        l.rowbinary_len,
        l.tsv.len(),
        modern["count"],
        modern["count_final"],
        modern["count_after_retry"],
        modern["count_final_after_retry"],
        modern["tsv_bytes"]
    );
    assert!(l.count > 0 && l.rowbinary_len > 0, "{t}: nothing exported");
    assert_eq!(
        l.count, l.count_final,
        "{t}: duplicates left after OPTIMIZE"
    );
    let cols = modern["columns"].as_array().expect("columns");
    let names: Vec<&str> = cols.iter().filter_map(|c| c["name"].as_str()).collect();
    let legacy_names: Vec<&str> = l.columns.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, legacy_names, "{t}: columns differ");
    for ((name, old), c) in l.columns.iter().zip(cols) {
        let new = c["type"].as_str().unwrap_or_default();
        let allowed = match new {
            "DateTime64(3)" => "Int64",
            "LowCardinality(String)" => "String",
            _ => new,
        };
        assert_eq!(old, allowed, "{t}.{name}: {old} on 18.16, {new} on chdb");
    }
    assert_eq!(modern["sorting_key"], l.sorting_key.as_str(), "{t}");
    assert_eq!(modern["rows_written"], l.count, "{t}: rows inserted");
    assert_eq!(modern["count"], l.count, "{t}");
    assert_eq!(modern["count_final"], l.count_final, "{t}");
    // The modern DDL keeps a deduplication window: the identical retried insert is dropped,
    // not stored a second time until a merge (18.16 stores it twice; FINAL hides it).
    assert_eq!(
        modern["count_after_retry"], l.count,
        "{t}: the retry was stored"
    );
    assert_eq!(modern["count_final_after_retry"], l.count_final, "{t}");

    let tsv = std::fs::read(out_dir.join(format!("{t}.tsv"))).expect("read chdb TSV");
    if tsv != l.tsv {
        let (a, b) = (
            String::from_utf8_lossy(&l.tsv),
            String::from_utf8_lossy(&tsv),
        );
        let diff = a.lines().zip(b.lines()).find(|(x, y)| x != y);
        panic!(
            "{t}: rows read back from chdb differ ({} bytes on 18.16, {} on chdb); first \
             differing line:\n18.16: {:?}\nchdb:  {:?}",
            l.tsv.len(),
            tsv.len(),
            diff.map(|d| d.0),
            diff.map(|d| d.1)
        );
    }
}
