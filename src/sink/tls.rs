//! HTTPS to ClickHouse: the HTTP client the `clickhouse` crate sends through for `https://`
//! URLs (hyper with a rustls connector built from [`ClickHouseTls`]), and the explanation of a
//! failed TLS handshake in terms of the setting to check.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

use crate::config::ClickHouseTls;

/// TCP keepalive of the connections, as the `clickhouse` crate's own client.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// How long an idle connection is kept: below ClickHouse's keep-alive timeout (3 s on old
/// servers), as the `clickhouse` crate's own client.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A `clickhouse` client that speaks HTTPS only, verifying the server against `tls`'s CA (or
/// the system's roots) and presenting its client certificate, if any.
pub(super) fn client(tls: &ClickHouseTls) -> Result<clickhouse::Client, String> {
    let config = tls.client_config().map_err(|e| e.to_string())?;
    let mut http = HttpConnector::new();
    http.set_keepalive(Some(TCP_KEEPALIVE));
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let hyper = HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector);
    Ok(clickhouse::Client::with_http_client(hyper))
}

/// What went wrong in the TLS handshake behind `error`, with the setting to check, if the error
/// comes from TLS at all.
pub(super) fn explain(error: &clickhouse::error::Error, tls: &ClickHouseTls) -> Option<String> {
    let e = rustls_error(error)?;
    let ca = match &tls.ca_file {
        Some(f) => format!("the CA in clickhouse.ca_file ({})", f.display()),
        None => "no CA among the system's roots (clickhouse.ca_file is not set)".into(),
    };
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    Some(match e {
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
            "the certificate of ClickHouse was not trusted: it does not name the host of \
             clickhouse.url ({e}); fix: connect by a name or IP address the certificate lists \
             in its subjectAltName, or reissue the certificate with that name"
        ),
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
            "the certificate of ClickHouse was not trusted ({e}): {ca} did not sign it; fix: set \
             clickhouse.ca_file to the PEM certificate of the CA that signed ClickHouse's"
        ),
        E::InvalidCertificate(_) => format!(
            "the certificate of ClickHouse was not trusted ({e}); fix: renew ClickHouse's \
             certificate, or check clickhouse.ca_file"
        ),
        E::AlertReceived(A::CertificateRequired | A::HandshakeFailure | A::BadCertificate)
        | E::AlertReceived(A::UnknownCA | A::CertificateUnknown | A::AccessDenied) => {
            let sent = if tls.client_cert.is_some() {
                "the client certificate in clickhouse.client_cert_file was refused"
            } else {
                "it requires a client certificate and none is configured"
            };
            format!(
                "ClickHouse refused the TLS connection ({e}): {sent}; fix: set \
                 clickhouse.client_cert_file and clickhouse.client_key_file to a certificate \
                 signed by a CA the server trusts (its caConfig)"
            )
        }
        _ => format!(
            "the TLS handshake with ClickHouse failed ({e}); fix: check that clickhouse.url \
             names ClickHouse's https_port, and clickhouse.ca_file"
        ),
    })
}

/// The rustls error somewhere in `error`'s chain of sources. A rustls error travels inside an
/// `io::Error` (sometimes one inside another), whose `source()` skips its payload: the walk goes
/// into each `io::Error`'s payload instead.
fn rustls_error(error: &clickhouse::error::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        next = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|i| i as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}
