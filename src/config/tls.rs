//! TLS to ClickHouse: the `[clickhouse]` fields `ca_file`, `client_cert_file` and
//! `client_key_file`, checked at start (each file read and parsed as PEM, errors naming the field
//! and the fix) and turned into the rustls configuration the sink's HTTPS client uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::{invalid, Result};

/// TLS settings of the ClickHouse connection, used with `https://` URLs only.
#[derive(Debug, Clone, Default)]
pub struct ClickHouseTls {
    /// PEM file of the CA certificates that may sign ClickHouse's certificate; `None`: the
    /// system's roots (the platform store, or `SSL_CERT_FILE`).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and its private key (PEM), for a server that requires one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// The field names, for messages.
const CA: &str = "clickhouse.ca_file";
const CERT: &str = "clickhouse.client_cert_file";
const KEY: &str = "clickhouse.client_key_file";

impl ClickHouseTls {
    /// The settings from the file's fields (paths relative to `base`, the config file's
    /// directory); `https` tells whether `clickhouse.url` is an `https://` URL. Every file is
    /// read and parsed now, so a mistake stops Spillway before it connects anywhere.
    pub(crate) fn from_fields(
        https: bool,
        base: &Path,
        ca_file: Option<PathBuf>,
        client_cert_file: Option<PathBuf>,
        client_key_file: Option<PathBuf>,
    ) -> Result<Self> {
        let client_cert = match (client_cert_file, client_key_file) {
            (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    CERT,
                    format!("set without {KEY}"),
                    format!("set {KEY} to the certificate's private key (PEM), or remove {CERT}"),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    KEY,
                    format!("set without {CERT}"),
                    format!("set {CERT} to the client certificate (PEM), or remove {KEY}"),
                ))
            }
        };
        let tls = ClickHouseTls {
            ca_file: ca_file.map(|f| base.join(f)),
            client_cert,
        };
        let set = [
            (CA, tls.ca_file.is_some()),
            (CERT, tls.client_cert.is_some()),
        ];
        if let Some((field, _)) = set.iter().find(|(_, s)| *s).filter(|_| !https) {
            return Err(invalid(
                field,
                "is set but clickhouse.url is an http:// URL: nothing would be encrypted".into(),
                format!("use ClickHouse's https_port with an https:// URL, or remove {field}"),
            ));
        }
        if https {
            tls.client_config()?;
        }
        Ok(tls)
    }

    /// The rustls configuration: the CA file's certificates (or the system's roots) and the
    /// client certificate, if any.
    pub(crate) fn client_config(&self) -> Result<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(CA, format!("no TLS version available: {e}"), "report a bug"))?
            .with_root_certificates(self.roots()?);
        match &self.client_cert {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = certificates(CERT, cert, "the client certificate")?;
                let text = std::fs::read(key).map_err(|e| {
                    invalid(
                        KEY,
                        format!("cannot read {}: {e}", key.display()),
                        "give the path of a PEM file holding the client certificate's key",
                    )
                })?;
                let key = PrivateKeyDer::from_pem_slice(&text).map_err(|_| {
                    invalid(
                        KEY,
                        format!("{} holds no PEM private key", key.display()),
                        "give the client certificate's key in PEM form (-----BEGIN PRIVATE KEY-----)",
                    )
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| match e {
                        rustls::Error::InconsistentKeys(_) => invalid(
                            KEY,
                            format!("does not go with {CERT}: {e}"),
                            format!("give the private key of the certificate in {CERT}"),
                        ),
                        _ => invalid(
                            CERT,
                            format!("{} is not usable: {e}", cert.display()),
                            "give an X.509 v3 certificate (openssl x509 -req ... -extfile \
                             with extendedKeyUsage=clientAuth) in PEM form",
                        ),
                    })
            }
        }
    }

    fn roots(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        let Some(ca) = &self.ca_file else {
            // Unreadable entries of the platform store are skipped, as every TLS client does.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            return Ok(roots);
        };
        for cert in certificates(
            CA,
            ca,
            "the certificate of the CA that signed ClickHouse's certificate",
        )? {
            roots.add(cert).map_err(|e| {
                invalid(
                    CA,
                    format!("{} holds a certificate that is not a CA: {e}", ca.display()),
                    "give the certificate of the CA that signed ClickHouse's certificate",
                )
            })?;
        }
        Ok(roots)
    }
}

/// Every certificate of the PEM file `path` (at least one), for `field`.
fn certificates(field: &str, path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let text = std::fs::read(path).map_err(|e| {
        invalid(
            field,
            format!("cannot read {}: {e}", path.display()),
            format!("give the path of a PEM file holding {what}"),
        )
    })?;
    let certs: std::result::Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&text).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) | Err(_) => Err(invalid(
            field,
            format!("{} holds no PEM certificate", path.display()),
            format!(
                "give {what} in PEM form (-----BEGIN CERTIFICATE-----); from DER: \
                 openssl x509 -inform der -in FILE.der -out FILE.pem"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use spillway_testkit::tls::TestCerts;

    use super::super::FileConfig;

    /// The error of validating `[clickhouse]` with `lines`, paths relative to `certs`.
    fn error(certs: &TestCerts, url: &str, lines: &str) -> String {
        let text = format!("[clickhouse]\nurl = \"{url}\"\n{lines}");
        let e = FileConfig::from_toml(&text).unwrap().validate(certs.dir());
        e.expect_err("refused").to_string()
    }

    #[test]
    fn tls_files_are_checked_at_start_naming_the_field_and_the_fix() {
        let certs = TestCerts::make();
        let https = "https://localhost:8443";
        for (url, lines, field, said) in [
            (
                https,
                "ca_file = \"nope.pem\"",
                "clickhouse.ca_file",
                "cannot read",
            ),
            (
                https,
                "ca_file = \"ca.key\"",
                "clickhouse.ca_file",
                "holds no PEM certificate",
            ),
            (
                https,
                "client_cert_file = \"client.pem\"",
                "clickhouse.client_cert_file",
                "set without clickhouse.client_key_file",
            ),
            (
                https,
                "client_key_file = \"client.key\"",
                "clickhouse.client_key_file",
                "set without clickhouse.client_cert_file",
            ),
            (
                https,
                "client_cert_file = \"client.pem\"\nclient_key_file = \"client.pem\"",
                "clickhouse.client_key_file",
                "holds no PEM private key",
            ),
            (
                https,
                "client_cert_file = \"client.pem\"\nclient_key_file = \"server.key\"",
                "clickhouse.client_key_file",
                "does not go with clickhouse.client_cert_file",
            ),
            (
                "http://localhost:8123",
                "ca_file = \"ca.pem\"",
                "clickhouse.ca_file",
                "is set but clickhouse.url is an http:// URL",
            ),
        ] {
            let e = error(&certs, url, lines);
            assert!(
                e.contains(field) && e.contains(said) && e.contains("fix:"),
                "{lines}: {e}"
            );
        }
    }

    #[test]
    fn check_config_shows_the_tls_files_and_reads_them_back() {
        let certs = TestCerts::make();
        let text = "[clickhouse]\nurl = \"https://localhost:8443\"\nca_file = \"ca.pem\"\n\
                    client_cert_file = \"client.pem\"\nclient_key_file = \"client.key\"\n";
        let s = FileConfig::from_toml(text)
            .unwrap()
            .validate(certs.dir())
            .unwrap();
        let printed = s.to_toml();
        let ca = certs.path("ca.pem").display().to_string();
        assert!(
            printed.contains(&format!("ca_file = \"{ca}\"")),
            "{printed}"
        );
        let key = certs.path("client.key").display().to_string();
        assert!(
            printed.contains(&format!("client_key_file = \"{key}\"")),
            "{printed}"
        );
        let again = FileConfig::from_toml(&printed)
            .unwrap()
            .validate(certs.dir())
            .unwrap();
        assert_eq!(again.to_toml(), printed);
        assert!(again.clickhouse.tls.client_cert.is_some());
    }
}
