//! TLS for tests: certificates made with `openssl` (a CA, a server certificate for localhost and
//! 127.0.0.1, a client certificate, and a second CA that signed none of them), and a
//! clickhouse-server (18.16) serving HTTPS with them.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::{free_port, tempdir, ClickHouseServer};

/// Certificates made with `openssl` in a tempdir, all PEM:
/// `ca.pem` (the CA), `server.pem` + `server.key` (signed by it, subjectAltName
/// `DNS:localhost, IP:127.0.0.1`), `client.pem` + `client.key` (signed by it, for client
/// authentication), `other-ca.pem` (a CA that signed nothing here).
pub struct TestCerts {
    dir: TempDir,
}

impl TestCerts {
    /// Makes the certificates (valid two days); panics with openssl's output if it fails.
    pub fn make() -> Self {
        let certs = TestCerts {
            dir: tempdir("certs-"),
        };
        certs.ca("ca", "Spillway test CA");
        certs.ca("other-ca", "Some other CA");
        certs.leaf(
            "server",
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        certs.leaf("client", "spillway", "extendedKeyUsage=clientAuth\n");
        certs
    }

    /// The path of one of the files (`ca.pem`, `server.key`, ...).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn ca(&self, name: &str, cn: &str) {
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
        ]);
    }

    /// A key and a certificate signed by `ca`, with the X.509 v3 extensions `ext`.
    fn leaf(&self, name: &str, cn: &str, ext: &str) {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let ext_file = format!("{name}.ext");
        std::fs::write(self.path(&ext_file), ext).expect("write the extensions");
        self.openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext_file,
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl (apt-get install openssl)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    }
}

/// Whether a ClickHouse with TLS asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Any client may connect (`verificationMode` none).
    None,
    /// Only clients with a certificate signed by `ca.pem` (`verificationMode` strict with
    /// `caConfig`).
    Required,
}

impl ClickHouseServer {
    /// Starts clickhouse-server (18.16) with an `https_port` too, serving `certs`'s
    /// `server.pem`; plain HTTP stays on `http_port` for the test's own queries.
    pub fn start_tls(certs: &TestCerts, auth: ClientAuth) -> Self {
        let https_port = free_port();
        let (cert, key, ca) = (
            certs.path("server.pem"),
            certs.path("server.key"),
            certs.path("ca.pem"),
        );
        let verification = match auth {
            ClientAuth::None => "<verificationMode>none</verificationMode>".to_string(),
            ClientAuth::Required => format!(
                "<verificationMode>strict</verificationMode><caConfig>{}</caConfig>\
                 <loadDefaultCAFile>false</loadDefaultCAFile>",
                ca.display()
            ),
        };
        let extra = format!(
            "  <https_port>{https_port}</https_port>\n  <openSSL><server>\
             <certificateFile>{}</certificateFile><privateKeyFile>{}</privateKeyFile>\
             {verification}<cacheSessions>true</cacheSessions>\
             <disableProtocols>sslv2,sslv3</disableProtocols></server></openSSL>\n",
            cert.display(),
            key.display()
        );
        Self::start_legacy_with(&extra, https_port)
    }

    /// `https://localhost:HTTPS_PORT` (panics if the server was started without TLS).
    pub fn https_url(&self) -> String {
        assert!(self.https_port != 0, "start the server with start_tls");
        format!("https://localhost:{}", self.https_port)
    }
}
