//! Values of every size under load: 1 KB, 1 MB and 64 MB alerts written at once, with
//! `keyspace.max_value_bytes` between the two larger sizes and a small channel byte budget.
//! Spillway's peak memory stays under its bound, every value under the limit is archived
//! byte-exact, every value over it is a `too_large` dead letter of exactly its first
//! `max_value_bytes` bytes, and the two add up to the values written.

use std::sync::Arc;
use std::time::Duration;

use common::faults::{metric, proc_status_kb};
use common::load::RawSetter;
use common::{config_toml, eventually, free_port, ClickHouseServer, RedisServer, Spillway};

/// `keyspace.max_value_bytes` of the test: between 1 MB and 64 MB.
const LIMIT: usize = 2 << 20;

/// Spillway's peak resident memory must stay under this, MB (docs/reference.md: the memory
/// bound at these settings).
const PEAK_MB: u64 = 150;

/// A text value of `len` bytes for key number `i`: letters only, so it is archived as a text
/// alert, and different from every other key's.
fn text(i: usize, len: usize) -> Vec<u8> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'a' + (x % 26) as u8
        })
        .collect()
}

/// Writes `items` (`SET ... EX 3600`) in pipelined round trips of `chunk`.
async fn write(url: String, items: Arc<Vec<(String, Vec<u8>)>>, chunk: usize) {
    let mut c = RawSetter::connect(&url).await;
    for batch in items.chunks(chunk) {
        c.set_batch(batch, 3600).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_1kb_1mb_64mb_are_archived_or_dead_letters_within_the_memory_bound() {
    let redis = RedisServer::start();
    let ch = ClickHouseServer::start();
    let toml = format!(
        "{}\n[batch]\nmax_delay_ms = 200\nchannel_bytes = {}\n\n[keyspace]\nmax_value_bytes = {LIMIT}\n",
        config_toml(&redis, &ch, "big", free_port()),
        8 << 20
    );
    let sp = Spillway::start(&toml);
    sp.wait_ready(Duration::from_secs(60)).await;
    let pid = sp.pid().expect("spillway pid");

    let sizes = [(1_000, 400), (1_000_000, 40), (64 << 20, 4)];
    let mut groups = Vec::new();
    let mut n = 0;
    for (size, count) in sizes {
        let items: Vec<(String, Vec<u8>)> = (n..n + count)
            .map(|i| (format!("alert:v{size}-{i}"), text(i, size)))
            .collect();
        n += count;
        groups.push((size, Arc::new(items)));
    }
    // All three sizes at once, from three connections.
    let writers: Vec<_> = groups
        .iter()
        .map(|(size, items)| {
            let chunk = if *size < 10_000 { 20 } else { 1 };
            tokio::spawn(write(redis.url(), items.clone(), chunk))
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let n = n as u64;

    let archived = "SELECT count() FROM big.alerts FINAL";
    let dead = "SELECT count() FROM big.dead_letters FINAL WHERE reason = 'too_large'";
    let big = groups[2].1.len() as u64;
    eventually(
        Duration::from_secs(120),
        "every value accounted for",
        || async { ch.count(archived).await + ch.count(dead).await >= n },
    )
    .await;
    let peak_mb = proc_status_kb(pid, "VmHWM") / 1024;
    println!("spillway peak RSS: {peak_mb} MB");
    assert!(peak_mb > 0 && peak_mb < PEAK_MB, "peak RSS {peak_mb} MB");

    // Under the limit: archived, byte-exact (the content hash and length of every value).
    assert_eq!(ch.count(archived).await, n - big);
    let rows = ch
        .query("SELECT key, content_hash, length(message) FROM big.alerts FINAL FORMAT TSV")
        .await;
    let want: std::collections::HashMap<&str, &Vec<u8>> = groups
        .iter()
        .flat_map(|(_, items)| items.iter().map(|(k, v)| (k.as_str(), v)))
        .collect();
    let mut checked = 0;
    for line in rows.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let value = want[f[0]];
        assert!(value.len() < LIMIT, "{} archived", f[0]);
        assert_eq!(
            f[1],
            spillway::rows::content_hash(value).to_string(),
            "{}",
            f[0]
        );
        assert_eq!(f[2], value.len().to_string(), "{}", f[0]);
        checked += 1;
    }
    assert_eq!(checked, n - big);

    // Over it: dead letters of exactly the first LIMIT bytes, with the real size in the error.
    assert_eq!(ch.count(dead).await, big);
    let rows = ch
        .query(
            "SELECT key, length(raw), hex(raw), error FROM big.dead_letters FINAL \
             WHERE reason = 'too_large' FORMAT TSV",
        )
        .await;
    for line in rows.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let value = want[f[0]];
        assert_eq!(f[1], LIMIT.to_string(), "{}", f[0]);
        let head: String = value[..LIMIT].iter().map(|b| format!("{b:02X}")).collect();
        assert!(f[2] == head, "{}: raw is not the value's first bytes", f[0]);
        assert!(
            f[3].contains(&value.len().to_string()) && f[3].contains(&LIMIT.to_string()),
            "{}",
            f[3]
        );
    }
    assert_eq!(ch.count("SELECT count() FROM big.dead_letters").await, big);

    // Every key has its `written` event, linked to its row (alert or dead letter).
    let linked = "SELECT count() FROM big.alert_events FINAL WHERE event = 'written' AND \
                  content_hash IN (SELECT content_hash FROM big.alerts UNION ALL \
                  SELECT content_hash FROM big.dead_letters)";
    eventually(Duration::from_secs(30), "written events", || async {
        ch.count(linked).await >= n
    })
    .await;
    assert_eq!(ch.count(linked).await, n);

    // The same account in the metrics: nothing gone, lost or unaccounted.
    let m = sp.metrics().await;
    let alerts = [("pipeline", "alerts")];
    let captured = metric(&m, "spillway_values_captured_total", &alerts);
    let too_large = metric(
        &m,
        "spillway_dead_letters_total",
        &[("pipeline", "alerts"), ("reason", "too_large")],
    );
    let set = metric(
        &m,
        "spillway_events_received_total",
        &[("pipeline", "alerts"), ("event", "set")],
    );
    let gone = metric(&m, "spillway_values_gone_total", &alerts);
    let lost = metric(&m, "spillway_events_lost_total", &alerts);
    assert_eq!((set, captured, too_large), (n, n - big, big), "{m}");
    assert_eq!((gone, lost), (0, 0), "{m}");
    // The write account (received = the outcomes): each value archived or a dead letter.
    let outcome = |o: &str| {
        metric(
            &m,
            "spillway_writes_total",
            &[("pipeline", "alerts"), ("outcome", o)],
        )
    };
    let (archived_n, dead_n) = (outcome("archived"), outcome("dead_letter"));
    assert_eq!((archived_n, dead_n), (n - big, big), "{m}");
    assert_eq!(metric(&m, "spillway_writes_total", &alerts), n, "{m}");
    assert_eq!(metric(&m, "spillway_dead_letters_total", &[]), big, "{m}");
    assert!(m.contains("spillway_channel_bytes "), "{m}");
}
