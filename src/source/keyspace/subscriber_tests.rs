//! Tests of the subscriber: pongs skipped, and the PING deadline on an in-memory pipe in paused
//! time (the test plays Redis on the other end).

use super::*;
use tokio::io::DuplexStream;

const CFG: Liveness = Liveness {
    ping_after: Duration::from_secs(5),
    timeout: Duration::from_secs(15),
};
const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
const PONG: &[u8] = b"*2\r\n$4\r\npong\r\n$0\r\n\r\n";

fn channels() -> Channels {
    ["set", "expired"]
        .iter()
        .map(|e| (format!("__keyevent@0__:{e}"), Arc::from(*e)))
        .collect()
}

fn message(event: &str, key: &str) -> Vec<u8> {
    let channel = format!("__keyevent@0__:{event}");
    format!(
        "*3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n${}\r\n{key}\r\n",
        channel.len(),
        key.len()
    )
    .into_bytes()
}

/// A subscription on one end of an in-memory pipe; the test plays Redis on the other.
fn subscription(ours: DuplexStream) -> Subscription {
    Subscription {
        stream: Box::new(ours),
        buf: BytesMut::new(),
        channels: channels(),
        watch: Watch::new(CFG, Instant::now()),
    }
}

async fn keys(sub: &mut Subscription) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    sub.next_batch(|n| out.push(format!("{} {}", n.operation, n.key.as_str_lossy())))
        .await?;
    Ok(out)
}

#[test]
fn a_pong_is_skipped_not_taken_for_a_notification() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&message("set", "alert:1"));
    buf.extend_from_slice(PONG);
    buf.extend_from_slice(&message("expired", "alert:2"));
    // The answer to `PING x` too, and a pong cut short: it waits for its last bytes.
    buf.extend_from_slice(b"*2\r\n$4\r\npong\r\n$1\r\nx\r\n");
    buf.extend_from_slice(&PONG[..PONG.len() - 1]);
    let mut got = Vec::new();
    drain(&mut buf, &channels(), |n| {
        got.push((n.operation.to_string(), n.key.as_str_lossy().to_string()))
    })
    .unwrap();
    assert_eq!(
        got,
        [
            ("set".to_string(), "alert:1".to_string()),
            ("expired".to_string(), "alert:2".to_string())
        ]
    );
    assert_eq!(&buf[..], &PONG[..PONG.len() - 1]);
    buf.extend_from_slice(b"\n");
    drain(&mut buf, &channels(), |_| {
        panic!("a pong is no notification")
    })
    .unwrap();
    assert!(buf.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_pinged_then_given_up_at_the_deadline() {
    let (ours, mut redis) = tokio::io::duplex(4096);
    let mut sub = subscription(ours);
    let started = Instant::now();
    let error = keys(&mut sub).await.unwrap_err();
    assert_eq!(reason(&error), "ping_timeout", "{error}");
    assert_eq!(started.elapsed(), CFG.ping_after + CFG.timeout);
    let mut sent = vec![0; 64];
    let n = redis.read(&mut sent).await.unwrap();
    assert_eq!(&sent[..n], PING, "exactly one PING");
}

#[tokio::test(start_paused = true)]
async fn anything_received_keeps_it_alive_and_a_late_answer_is_too_late() {
    let (ours, mut redis) = tokio::io::duplex(4096);
    let mut sub = subscription(ours);
    let started = Instant::now();
    let peer = tokio::spawn(async move {
        let mut ping = vec![0; PING.len()];
        redis.read_exact(&mut ping).await.unwrap();
        assert_eq!(ping, PING);
        // Answered just inside the deadline.
        tokio::time::sleep(CFG.timeout - Duration::from_millis(1)).await;
        redis.write_all(PONG).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        redis.write_all(&message("set", "alert:1")).await.unwrap();
        // The next PING, answered a millisecond after its deadline.
        redis.read_exact(&mut ping).await.unwrap();
        tokio::time::sleep(CFG.timeout + Duration::from_millis(1)).await;
        let _ = redis.write_all(PONG).await;
        redis
    });
    let elapsed = |s: Instant| s.elapsed().as_millis();
    assert_eq!(keys(&mut sub).await.unwrap(), Vec::<String>::new());
    assert_eq!(elapsed(started), 19_999, "the pong came");
    assert_eq!(keys(&mut sub).await.unwrap(), ["set alert:1"]);
    assert_eq!(elapsed(started), 22_999, "the notification came");
    let error = keys(&mut sub).await.unwrap_err();
    assert_eq!(reason(&error), "ping_timeout", "{error}");
    assert_eq!(
        elapsed(started),
        22_999 + 20_000,
        "given up at the deadline"
    );
    drop(sub);
    peer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn bytes_waiting_past_the_deadline_are_life_not_a_timeout() {
    // As after a SIGSTOP or starvation longer than the deadline: the pong arrived in time
    // but is read only after the deadline. Many times: an unbiased choice would be a coin.
    for _ in 0..32 {
        let (ours, mut redis) = tokio::io::duplex(4096);
        let mut sub = subscription(ours);
        sub.watch.pinged(Instant::now());
        redis.write_all(PONG).await.unwrap();
        tokio::time::advance(CFG.timeout * 2).await;
        assert_eq!(keys(&mut sub).await.unwrap(), Vec::<String>::new());
    }
}

#[tokio::test(start_paused = true)]
async fn a_closed_connection_is_lost_not_timed_out() {
    let (ours, redis) = tokio::io::duplex(4096);
    let mut sub = subscription(ours);
    drop(redis);
    let error = keys(&mut sub).await.unwrap_err();
    assert_eq!(reason(&error), "connection_lost", "{error}");
    let (ours, mut redis) = tokio::io::duplex(4096);
    let mut sub = subscription(ours);
    redis.write_all(b"!garbage\r\n").await.unwrap();
    let error = keys(&mut sub).await.unwrap_err();
    assert_eq!(reason(&error), "connection_lost", "{error}");
}
