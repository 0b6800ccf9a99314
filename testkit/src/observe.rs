//! Observability helpers: a REAL `prometheus` server (Debian package) scraping a Spillway,
//! its HTTP query API, and readers of `/metrics` text and Redis `INFO` fields.

use std::fs;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::{
    free_port, http_client, load, log_file, spawn, tail, tempdir, ClickHouseServer, Proc,
    RedisServer,
};

/// The value of the sample `series` (name with its labels, exactly as rendered) in `/metrics` text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The field `name` of an `INFO` reply, as a number.
pub fn info_field(info: &str, name: &str) -> Option<f64> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// A prometheus server scraping one Spillway every second as job `spillway` with
/// `honor_labels: true` (the scrape config dashboards/README.md documents), and loading `rules`.
pub struct Prometheus {
    /// The HTTP port (`/api/v1/query`).
    pub port: u16,
    /// Stops the server when the test ends.
    _proc: Proc,
    dir: TempDir,
}

impl Prometheus {
    /// Writes the config, starts prometheus with its TSDB in a tempdir, waits for `/-/ready`.
    pub fn start(spillway_metrics_port: u16, rules: &Path) -> Self {
        let dir = tempdir("prometheus-");
        let port = free_port();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: spillway\n    honor_labels: true\n\
             \x20   static_configs:\n      - targets: ['127.0.0.1:{spillway_metrics_port}']\n",
            rules.display()
        );
        let config_path = dir.path().join("prometheus.yml");
        fs::write(&config_path, config).expect("write prometheus.yml");
        let log = dir.path().join("prometheus.log");
        let args = [
            format!("--config.file={}", config_path.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ];
        let child = spawn("prometheus", &args, |c| {
            c.current_dir(dir.path())
                .stdout(log_file(&log))
                .stderr(log_file(&log));
        });
        let proc = Proc(Mutex::new(Some(child)));
        let ready = || {
            super::tcp_roundtrip(port, b"GET /-/ready HTTP/1.0\r\n\r\n")
                .is_some_and(|r| r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"))
        };
        proc.wait_for("prometheus", Duration::from_secs(30), ready, || {
            tail(&log, 30)
        });
        Prometheus {
            port,
            _proc: proc,
            dir,
        }
    }

    /// Evaluates `expr` now through `/api/v1/query`; panics unless Prometheus answers `success`.
    /// Returns the result vector.
    pub async fn query(&self, expr: &str) -> Vec<Value> {
        let base = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let url = url::Url::parse_with_params(&base, [("query", expr)]).expect("URL");
        let resp = http_client(Duration::from_secs(10))
            .get(url.as_str())
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url} {expr}: {e}"));
        let body: Value = serde_json::from_str(&resp.text().await.expect("body")).expect("JSON");
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The rules as Prometheus loaded them (`/api/v1/rules`).
    pub async fn rules(&self) -> Value {
        let url = format!("http://127.0.0.1:{}/api/v1/rules", self.port);
        let resp = http_client(Duration::from_secs(10)).get(&url).send().await;
        let text = resp.expect("GET rules").text().await.expect("body");
        serde_json::from_str(&text).expect("JSON")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        tail(&self.dir.path().join("prometheus.log"), 50)
    }
}

/// A pipelines dir holding only the alerts pipeline (so the test needs only RLS).
pub fn alerts_only_pipelines() -> tempfile::TempDir {
    pipelines(&["alerts"])
}

/// A pipelines dir holding copies of the named `pipelines/{name}.toml`.
pub fn pipelines(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        let file = format!("{name}.toml");
        std::fs::copy(
            super::repo_dir().join("pipelines").join(&file),
            dir.path().join(&file),
        )
        .unwrap();
    }
    dir
}

/// Config: RLS and RSS on the given servers, the four other instances on ports nobody listens on.
pub fn config(rls: &RedisServer, rss: &RedisServer, ch: &ClickHouseServer, db: &str) -> String {
    config_with(&[("rls", rls), ("rss", rss)], ch, db)
}

/// Config: the named instances (`rls`, `rtrs`, ...) on the given servers, the others of the six
/// on ports nobody listens on; metrics on a free port, 200 ms batches, INFO polled every second.
pub fn config_with(servers: &[(&str, &RedisServer)], ch: &ClickHouseServer, db: &str) -> String {
    let mut toml = String::new();
    for name in ["rts", "ris", "rtss", "rtrs", "rss", "rls"] {
        let url = match servers.iter().find(|(n, _)| *n == name) {
            Some((_, server)) => server.url(),
            None => format!("redis://127.0.0.1:{}", free_port()),
        };
        toml += &format!("[redis.{name}]\nurl = \"{url}\"\n");
    }
    toml + &format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n\
         [metrics]\naddr = \"127.0.0.1:{}\"\n[batch]\nmax_delay_ms = 200\n\
         [observe]\ninterval_secs = 1\n",
        ch.url(),
        free_port()
    )
}

/// Writes `n` values of `size` bytes under `prefix:*` (not a pipeline's keys), expiring in 1 h.
pub async fn fill(redis: &RedisServer, prefix: &str, n: u64, size: usize) {
    let items: Vec<_> = (0..n)
        .map(|i| (format!("{prefix}:{i}"), vec![b'x'; size]))
        .collect();
    load::set_all(&redis.url(), items, 3600, 100, 1).await;
}

/// The `spillway_*` metric names an expression uses (histogram suffixes stripped).
pub fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in expr.split("spillway_").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let name = name.strip_suffix("_bucket").unwrap_or(&name).to_string();
        out.push(format!("spillway_{name}"));
    }
    out
}
