//! Smoke test of the test harness itself: real Redis and ClickHouse start, answer, stop and
//! come back on the same ports.

use common::{ClickHouseServer, RedisServer};

#[tokio::test]
async fn servers_start_answer_and_restart() {
    let mut redis = RedisServer::start();
    let flags = redis.cli(&["CONFIG", "GET", "notify-keyspace-events"]);
    for flag in ['E', 'x', '$', 'e', 'g'] {
        assert!(flags.contains(flag), "flag {flag} missing from {flags:?}");
    }
    assert_eq!(redis.cli(&["SET", "k", "v", "EX", "60"]), "OK");

    let mut ch = ClickHouseServer::start();
    let version = ch.query("SELECT version()").await;
    let want = if common::modern_clickhouse() {
        "26."
    } else {
        "18."
    };
    assert!(version.starts_with(want), "unexpected version {version:?}");
    ch.query("CREATE DATABASE x").await;
    assert_eq!(ch.count("SELECT 1").await, 1);
    ch.query("CREATE TABLE x.t (n UInt64) ENGINE = MergeTree ORDER BY n")
        .await;
    ch.query("INSERT INTO x.t VALUES (1), (2), (3)").await;

    let (redis_port, http_port) = (redis.port, ch.http_port);
    redis.stop();
    ch.stop();
    assert!(std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_err());
    assert!(std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err());

    redis.restart();
    ch.start_again();
    assert_eq!(redis.port, redis_port);
    assert_eq!(redis.cli(&["PING"]), "PONG");
    assert_eq!(
        redis.cli(&["EXISTS", "k"]),
        "0",
        "redis must not persist data"
    );
    assert_eq!(ch.http_port, http_port);
    assert_eq!(
        ch.count("SELECT count() FROM x.t").await,
        3,
        "ClickHouse keeps its data"
    );

    let without = RedisServer::start_with(&["--notify-keyspace-events", ""]);
    assert_eq!(
        without.cli(&["CONFIG", "GET", "notify-keyspace-events"]),
        "notify-keyspace-events"
    );
}
