//! ClickHouse over TLS: a real clickhouse-server (18.16) serving `https_port` with certificates
//! made by openssl in the test. Alerts are archived over https:// verified against the CA; a
//! wrong CA, a name the certificate does not list, or a missing client certificate where the
//! server requires one stops Spillway at once with a message naming the setting to check.

use std::time::{Duration, Instant};

use common::tls::{ClientAuth, TestCerts};
use common::{config_toml, eventually, free_port, ClickHouseServer, RedisServer, Spillway};

const WAIT: Duration = Duration::from_secs(60);

/// The alerts config against `ch`'s HTTPS port, with `tls` lines added to `[clickhouse]`.
fn https_config(redis: &RedisServer, ch: &ClickHouseServer, db: &str, tls: &str) -> String {
    config_toml(redis, ch, db, free_port()).replace(
        &format!("url = \"{}\"\n", ch.url()),
        &format!("url = \"{}\"\n{tls}", ch.https_url()),
    )
}

/// `ca_file = "..."` (and the client certificate, when `client`) of `certs`.
fn files(certs: &TestCerts, ca: &str, client: bool) -> String {
    let mut lines = format!("ca_file = \"{}\"\n", certs.path(ca).display());
    if client {
        let (c, k) = (certs.path("client.pem"), certs.path("client.key"));
        lines += &format!(
            "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            c.display(),
            k.display()
        );
    }
    lines
}

/// Starts Spillway, which must stop within 15 s with a non-zero status; returns its log.
async fn refused(toml: &str) -> String {
    let started = Instant::now();
    let sp = Spillway::start(toml);
    eventually(Duration::from_secs(15), "spillway exits", || {
        let done = sp.exit_status().is_some();
        async move { done }
    })
    .await;
    let status = sp.exit_status().expect("exited");
    assert!(!status.success(), "{status}; log:\n{}", sp.log());
    assert!(started.elapsed() < Duration::from_secs(15));
    sp.log()
}

/// Writes an alert and waits until ClickHouse holds it.
async fn archives_an_alert(redis: &RedisServer, ch: &ClickHouseServer, db: &str) {
    redis.cli(&["SET", "alert:tls1", "archived over https", "EX", "3600"]);
    let sql =
        format!("SELECT count() FROM {db}.alerts FINAL WHERE message = 'archived over https'");
    eventually(WAIT, &sql, || async { ch.count(&sql).await == 1 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_archived_over_https_verified_against_the_ca() {
    let certs = TestCerts::make();
    let (redis, ch) = (
        RedisServer::start(),
        ClickHouseServer::start_tls(&certs, ClientAuth::None),
    );
    let toml = https_config(&redis, &ch, "thttps", &files(&certs, "ca.pem", false));
    let sp = Spillway::start(&toml);
    sp.wait_ready(WAIT).await;
    assert!(
        sp.log().contains(&format!("url={}/", ch.https_url())),
        "{}",
        sp.log()
    );
    archives_an_alert(&redis, &ch, "thttps").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_stops_the_start_naming_the_setting() {
    let certs = TestCerts::make();
    let (redis, ch) = (
        RedisServer::start(),
        ClickHouseServer::start_tls(&certs, ClientAuth::None),
    );
    // A CA that did not sign the server's certificate.
    let log = refused(&https_config(
        &redis,
        &ch,
        "tca",
        &files(&certs, "other-ca.pem", false),
    ))
    .await;
    for said in [
        "the certificate of ClickHouse was not trusted",
        "UnknownIssuer",
        "fix: set clickhouse.ca_file",
    ] {
        assert!(log.contains(said), "{said:?} not in:\n{log}");
    }
    assert!(!log.contains("network error"), "{log}");
    // No ca_file: the system's roots do not know the test CA either.
    let log = refused(&https_config(&redis, &ch, "tca", "")).await;
    assert!(
        log.contains("not trusted") && log.contains("clickhouse.ca_file is not set"),
        "{log}"
    );
    // The right CA, but a host the certificate does not list (0.0.0.0 reaches 127.0.0.1).
    let other_name = https_config(&redis, &ch, "tca", &files(&certs, "ca.pem", false))
        .replace("https://localhost:", "https://0.0.0.0:");
    let log = refused(&other_name).await;
    assert!(
        log.contains("not trusted: it does not name the host of clickhouse.url"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_requiring_client_certificates_gets_ours() {
    let certs = TestCerts::make();
    let (redis, ch) = (
        RedisServer::start(),
        ClickHouseServer::start_tls(&certs, ClientAuth::Required),
    );
    let without = https_config(&redis, &ch, "tmtls", &files(&certs, "ca.pem", false));
    let log = refused(&without).await;
    for said in [
        "ClickHouse refused the TLS connection",
        "requires a client certificate and none is configured",
        "fix: set clickhouse.client_cert_file and clickhouse.client_key_file",
    ] {
        assert!(log.contains(said), "{said:?} not in:\n{log}");
    }
    let with = https_config(&redis, &ch, "tmtls", &files(&certs, "ca.pem", true));
    let sp = Spillway::start(&with);
    sp.wait_ready(WAIT).await;
    archives_an_alert(&redis, &ch, "tmtls").await;
}
