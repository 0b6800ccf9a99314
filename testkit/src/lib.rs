//! Test harness: starts REAL redis-server, clickhouse-server (Debian 18.16) and the spillway
//! binary on free loopback ports, and stops them on Drop. No mocks.
//!
//! Every child is spawned from one long-lived helper thread under
//! `setpriv --pdeathsig SIGKILL`, so the kernel kills it if the test process dies without
//! running Drop (SIGKILL, abort, `process::exit`).

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub mod chcluster;
pub mod cluster_load;
pub mod faults;
pub mod load;
pub mod netns;
pub mod observe;
pub mod procstat;
pub mod rcluster;
pub mod rewrite;
pub mod tls;
pub mod trades;
pub mod zookeeper;

/// A port free on 127.0.0.1 for a server to listen on, below the kernel's ephemeral range: a
/// port of that range (what binding port 0 gives) can be taken, between this call and the
/// server's bind, by any outgoing connection of the machine (ClickHouse failed to start with
/// "Address already in use" that way). Never the same port twice in one test process.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_low: u16 = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.clamp(12_000, 32768));
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(given.len());
        let port = low + (h.finish() % u64::from(high - low)) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// The repository's root (where `pipelines/`, `dashboards/` and `scripts/` are).
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the repository")
        .to_path_buf()
}

/// The `spillway` binary under test: `SPILLWAY_BIN` when set (another build, e.g. the commit
/// before a change, to benchmark two builds one after the other), else the one cargo built beside
/// the running test or bench (`target/<profile>/spillway`, next to its `deps/`).
pub fn spillway_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SPILLWAY_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("spillway");
    assert!(
        bin.exists(),
        "{} is missing: build it (cargo test and cargo bench do)",
        bin.display()
    );
    bin
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `program args..` wrapped in `setpriv --pdeathsig SIGKILL` (same pid: setpriv execs).
/// The spawn happens on a helper thread that lives as long as the process, because the
/// parent-death signal fires when the *thread* that forked the child exits.
fn spawn(program: &str, args: &[String], configure: impl FnOnce(&mut Command)) -> Child {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let use_setpriv = Path::new("/usr/bin/setpriv").exists();
    let mut cmd = if use_setpriv {
        let mut c = Command::new("/usr/bin/setpriv");
        c.args(["--pdeathsig", "SIGKILL", "--", program]);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).stdin(Stdio::null());
    configure(&mut cmd);
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn harness thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    sender.send((cmd, reply_tx)).expect("spawner gone");
    let result = reply_rx.recv().expect("spawner gone");
    result.unwrap_or_else(|e| panic!("failed to start {program}: {e}"))
}

/// A child process that is stopped on Drop (SIGTERM, then SIGKILL after 10 s).
struct Proc(Mutex<Option<Child>>);

impl Proc {
    /// The process id, while it runs.
    fn pid(&self) -> Option<u32> {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|c| c.id())
    }

    /// The exit status if the process has exited, without waiting.
    fn exited(&self) -> Option<ExitStatus> {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL (zero grace: SIGKILL only). Returns the status and whether it was killed.
    fn stop(&mut self, grace: Duration) -> Option<(ExitStatus, bool)> {
        let mut child = self.0.get_mut().unwrap_or_else(|e| e.into_inner()).take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some((status, false));
        }
        if !grace.is_zero() {
            let pid = child.id().to_string();
            let mut kill = Command::new("kill");
            let _ = kill.args(["-TERM", &pid]).stderr(Stdio::null()).status();
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some((status, false));
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        Some((child.wait().expect("wait for killed child"), true))
    }

    /// Waits until `ready()`; panics with `diag()` if the process exits or `timeout` passes.
    fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn() -> bool,
        diag: impl Fn() -> String,
    ) {
        let deadline = Instant::now() + timeout;
        while !ready() {
            if let Some(status) = self.exited() {
                panic!("{what} exited ({status}) before it was ready:\n{}", diag());
            }
            assert!(
                Instant::now() < deadline,
                "{what} not ready in {timeout:?}:\n{}",
                diag()
            );
            thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// Returns the last `n` lines of a file (or a note that it cannot be read).
fn tail(path: &Path, n: usize) -> String {
    match fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// A fresh temporary directory named `PREFIX...` (removed on drop).
fn tempdir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create tempdir")
}

/// Opens (appending) a log file usable as a child's stdout/stderr.
fn log_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log file")
}

/// Sends `request` over TCP and returns everything the peer sent until it closed.
fn tcp_roundtrip(port: u16, request: &[u8]) -> Option<String> {
    tcp_roundtrip_to("127.0.0.1", port, request)
}

/// [`tcp_roundtrip`] to `host`.
fn tcp_roundtrip_to(host: &str, port: u16, request: &[u8]) -> Option<String> {
    let mut s = TcpStream::connect((host, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(request).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// An HTTP client whose requests carry `Connection: close` and that keeps no idle connections.
/// A pooled keep-alive connection would stay open while a sync `stop()`/`terminate()` blocks a
/// current-thread runtime, and servers wait for it during graceful shutdown.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::CONNECTION,
        reqwest::header::HeaderValue::from_static("close"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(0)
        .timeout(timeout)
        .build()
        .expect("reqwest client")
}

/// A redis-server child process on a free loopback port, with its own working dir.
pub struct RedisServer {
    pub port: u16,
    /// The address it is reached at (127.0.0.1 unless started in a network namespace).
    host: String,
    /// What its command line starts with (e.g. `ip netns exec NS`), before `redis-server`.
    prefix: Vec<String>,
    args: Vec<String>,
    proc: Proc,
    dir: TempDir,
}

impl RedisServer {
    /// Starts redis-server with no persistence and `notify-keyspace-events Ex$eg`.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like `start`, with `extra_args` appended (later arguments override earlier ones).
    pub fn start_with(extra_args: &[&str]) -> Self {
        Self::start_at(&[], "127.0.0.1", extra_args)
    }

    /// Like `start_with`, with the command line prefixed by `prefix` (e.g.
    /// `["ip", "netns", "exec", NS]`, which execs redis-server, same pid), listening on `host`
    /// as well as 127.0.0.1 and reached at `host`; protected mode off, for clients not on its
    /// loopback.
    pub fn start_at(prefix: &[&str], host: &str, extra_args: &[&str]) -> Self {
        let port = free_port();
        // Relative paths: the working dir is the tempdir. '$' is passed literally (no shell).
        let fixed = format!(
            "--port {port} --bind 127.0.0.1 --dir . --logfile redis.log --daemonize no \
             --appendonly no --notify-keyspace-events Ex$eg --save"
        );
        let mut args: Vec<String> = fixed.split(' ').map(String::from).collect();
        args.push(String::new()); // --save ""
        if host != "127.0.0.1" {
            let bind = format!("{host} 127.0.0.1");
            args.extend([
                "--bind".into(),
                bind,
                "--protected-mode".into(),
                "no".into(),
            ]);
        }
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let (proc, dir) = (Proc(Mutex::new(None)), tempdir("redis-"));
        let mut server = RedisServer {
            port,
            host: host.to_string(),
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
            args,
            proc,
            dir,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let log = self.dir.path().join("redis.log");
        let mut command = self.prefix.clone();
        command.push("redis-server".into());
        command.extend(self.args.iter().cloned());
        let (program, args) = command.split_first().expect("a program");
        let child = spawn(program, args, |c| {
            c.current_dir(self.dir.path())
                .stdout(log_file(&log))
                .stderr(log_file(&log));
        });
        self.proc = Proc(Mutex::new(Some(child)));
        let ready = || {
            tcp_roundtrip_to(&self.host, self.port, b"PING\r\nQUIT\r\n")
                .is_some_and(|r| r.starts_with("+PONG"))
        };
        self.proc
            .wait_for("redis-server", Duration::from_secs(10), ready, || {
                tail(&log, 30)
            });
    }

    /// `redis://HOST:PORT` (HOST 127.0.0.1 unless started elsewhere)
    pub fn url(&self) -> String {
        format!("redis://{}:{}", self.host, self.port)
    }

    /// `HOST:PORT`, as a cluster announces it.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Like [`RedisServer::cli`], `None` when redis-cli fails or Redis answers an error.
    pub fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", &self.host, "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !stdout.starts_with("ERR") && !stdout.starts_with("CLUSTERDOWN"))
            .then_some(stdout)
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        self.proc.stop(Duration::ZERO);
    }

    /// Runs `redis-cli -h HOST -p PORT args..` and returns its trimmed stdout; panics if it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", &self.host, "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli");
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "redis-cli {args:?} failed ({}): {stdout} {stderr}",
            out.status
        );
        stdout
    }

    /// Stops the server (SIGTERM, SIGKILL after 10 s). Data is lost (no persistence).
    pub fn stop(&mut self) {
        self.proc.stop(Duration::from_secs(10));
    }

    /// Stops the server if running and starts it again on the same port with the same args.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

/// users.xml for ClickHouse 18.16: user `default`, no password, any address, no quota limits.
const CLICKHOUSE_USERS: &str = r#"<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>::/0</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
  </interval></default></quotas>
</yandex>
"#;

/// The ports of an 18.16 server, free on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct LegacyPorts {
    /// HTTP interface.
    pub http: u16,
    /// Native protocol (what `Distributed` tables and `<remote_servers>` use).
    pub tcp: u16,
    /// Where replicas fetch parts from each other.
    pub interserver: u16,
}

impl LegacyPorts {
    /// Three free ports.
    pub fn free() -> LegacyPorts {
        LegacyPorts {
            http: free_port(),
            tcp: free_port(),
            interserver: free_port(),
        }
    }
}

/// A clickhouse-server (18.16) child process with config, data and logs in a tempdir.
pub struct ClickHouseServer {
    pub http_port: u16,
    /// The native port (0 for the modern server, which serves HTTP only).
    pub tcp_port: u16,
    /// The HTTPS port (0 unless started with [`ClickHouseServer::start_tls`]).
    pub https_port: u16,
    proc: Proc,
    dir: TempDir,
    modern: bool,
}

/// Which ClickHouse the tests start: `SPILLWAY_TEST_CLICKHOUSE=modern` runs the current
/// ClickHouse that PyPI's chdb-core embeds (26.x, its clickhouse-local serving ClickHouse's own
/// HTTP interface), anything else Debian's clickhouse-server (18.16).
pub fn modern_clickhouse() -> bool {
    std::env::var("SPILLWAY_TEST_CLICKHOUSE").is_ok_and(|v| v == "modern")
}

/// A time column in epoch milliseconds, whichever ClickHouse runs: on 18.16 Spillway's time
/// columns are `Int64` milliseconds already, on current servers `DateTime64(3)`.
pub fn ms(column: &str) -> String {
    if modern_clickhouse() {
        format!("toUnixTimestamp64Milli({column})")
    } else {
        column.to_string()
    }
}

/// Serves ClickHouse's HTTP interface from chdb's clickhouse-local, in the working directory's
/// `config.xml`, until a line is written to `stop.fifo` or SIGTERM.
const CHDB_SERVER: &str = r#"
import os
from chdb import _chdb
fifo = os.path.join(os.getcwd(), "stop.fifo")
_chdb.query("SYSTEM START LISTEN HTTP; SELECT count() FROM file('" + fifo + "', 'LineAsString')", "TabSeparated")
"#;

impl ClickHouseServer {
    /// Starts the server the tests run against (see [`modern_clickhouse`]).
    pub fn start() -> Self {
        if modern_clickhouse() {
            Self::start_modern()
        } else {
            Self::start_legacy()
        }
    }

    /// Starts a current ClickHouse (chdb-core's clickhouse-local serving HTTP; waits for /ping).
    pub fn start_modern() -> Self {
        let dir = tempdir("clickhouse-");
        let http_port = free_port();
        let d = dir.path().display();
        let config = format!(
            "<clickhouse><listen_host>127.0.0.1</listen_host><http_port>{http_port}</http_port>\
             <path>{d}/data/</path><timezone>UTC</timezone></clickhouse>\n"
        );
        fs::write(dir.path().join("config.xml"), config).expect("write config.xml");
        let fifo = dir.path().join("stop.fifo");
        let made = Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("run mkfifo");
        assert!(made.success(), "mkfifo {}", fifo.display());
        let mut server = ClickHouseServer {
            http_port,
            tcp_port: 0,
            https_port: 0,
            proc: Proc(Mutex::new(None)),
            dir,
            modern: true,
        };
        server.launch();
        server
    }

    /// Writes a minimal `<yandex>` config + users.xml and starts clickhouse-server (waits for /ping).
    pub fn start_legacy() -> Self {
        Self::start_legacy_with("", 0)
    }

    /// [`ClickHouseServer::start_legacy`] with `extra` lines in the config (an `https_port`
    /// listened on, else 0).
    fn start_legacy_with(extra: &str, https_port: u16) -> Self {
        let mut server = Self::start_legacy_at(LegacyPorts::free(), extra);
        server.https_port = https_port;
        server
    }

    /// [`ClickHouseServer::start_legacy`] on `ports` chosen beforehand (a cluster's config names
    /// every server's), with `extra` XML inside `<yandex>`.
    pub fn start_legacy_at(ports: LegacyPorts, extra: &str) -> Self {
        let dir = tempdir("clickhouse-");
        let (http_port, tcp_port, interserver) = (ports.http, ports.tcp, ports.interserver);
        let d = dir.path().display();
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog>
    <console>0</console></logger>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <interserver_http_port>{interserver}</interserver_http_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
{extra}</yandex>
"#
        );
        fs::write(dir.path().join("users.xml"), CLICKHOUSE_USERS).expect("write users.xml");
        fs::write(dir.path().join("config.xml"), config).expect("write config.xml");
        let proc = Proc(Mutex::new(None));
        let mut server = ClickHouseServer {
            http_port,
            tcp_port,
            https_port: 0,
            proc,
            dir,
            modern: false,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let (dir, out) = (self.dir.path(), self.dir.path().join("stdout.log"));
        let (program, args) = if self.modern {
            ("python3", vec!["-c".to_string(), CHDB_SERVER.to_string()])
        } else {
            let config = format!("--config-file={}/config.xml", dir.display());
            ("clickhouse-server", vec![config])
        };
        let child = spawn(program, &args, |c| {
            c.current_dir(dir)
                .stdout(log_file(&out))
                .stderr(log_file(&out));
        });
        self.proc = Proc(Mutex::new(Some(child)));
        let ping = b"GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        let ready = || {
            tcp_roundtrip(self.http_port, ping)
                .is_some_and(|r| r.starts_with("HTTP/1.") && r.ends_with("Ok.\n"))
        };
        let diag = || {
            let (err, out) = (tail(&dir.join("error.log"), 40), tail(&out, 20));
            format!("error.log tail:\n{err}\nstdout/stderr tail:\n{out}")
        };
        self.proc
            .wait_for("clickhouse-server", Duration::from_secs(60), ready, diag);
    }

    /// `http://127.0.0.1:HTTP_PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// POSTs `sql` to the HTTP interface and returns the body; panics with the body on non-200.
    pub async fn query(&self, sql: &str) -> String {
        let resp = http_client(Duration::from_secs(60))
            .post(format!("{}/", self.url()))
            .body(sql.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("ClickHouse request failed for `{sql}`: {e}"));
        let status = resp.status();
        let body = resp.text().await.expect("ClickHouse response body");
        assert!(
            status.is_success(),
            "ClickHouse returned {status} for `{sql}`: {body}"
        );
        body
    }

    /// Runs `sql` (which must return a single number) and parses the trimmed result.
    pub async fn count(&self, sql: &str) -> u64 {
        let body = self.query(sql).await;
        let parsed = body.trim().parse();
        parsed.unwrap_or_else(|e| panic!("`{sql}` returned {body:?}, not a number: {e}"))
    }

    /// Replaces the users.xml of an 18.16 server (which reloads it within about 2 s): users,
    /// passwords and profiles changed while it runs. The server notices a change by the file's
    /// modification time, in whole seconds: each write moves it at least 2 s past the last one.
    pub fn write_users(&self, users_xml: &str) {
        assert!(!self.modern, "the modern test server has no users.xml");
        let path = self.dir.path().join("users.xml");
        let before = fs::metadata(&path).and_then(|m| m.modified()).ok();
        fs::write(&path, users_xml).expect("write users.xml");
        let now = std::time::SystemTime::now();
        let later = before.map_or(now, |b| (b + Duration::from_secs(2)).max(now));
        let file = fs::File::options()
            .write(true)
            .open(&path)
            .expect("open users.xml");
        file.set_modified(later)
            .expect("set the mtime of users.xml");
    }

    /// Stops the server (SIGTERM, SIGKILL after 10 s); data stays in the tempdir.
    pub fn stop(&mut self) {
        self.proc.stop(Duration::from_secs(10));
    }

    /// SIGKILLs the server (no shutdown); data stays in the tempdir.
    pub fn kill(&mut self) {
        self.proc.stop(Duration::ZERO);
    }

    /// The last lines of its error log, for a failing test's message.
    pub fn error_log(&self) -> String {
        tail(&self.dir.path().join("error.log"), 40)
    }

    /// Starts the server again with the same ports and data dir (stops it first if running).
    pub fn start_again(&mut self) {
        self.stop();
        self.launch();
    }
}

/// The spillway binary under test, run as `spillway run --config FILE`.
pub struct Spillway {
    pub metrics_port: u16,
    proc: Proc,
    log_path: PathBuf,
    /// Holds the config and the log until the test ends.
    _dir: TempDir,
}

impl Spillway {
    /// Writes `config_toml` to a tempdir and starts spillway with cwd = crate root; the metrics
    /// port is read from `[metrics] addr`. Output goes to a log file (see `log()`).
    pub fn start(config_toml: &str) -> Self {
        Self::start_with_env(config_toml, &[])
    }

    /// Like `start`, with environment variables `env` set for the process.
    pub fn start_with_env(config_toml: &str, env: &[(&str, &str)]) -> Self {
        let value: toml::Value = toml::from_str(config_toml).expect("config_toml is not TOML");
        let metrics_port: u16 = value
            .get("metrics")
            .and_then(|m| m.get("addr")?.as_str()?.rsplit(':').next()?.parse().ok())
            .expect("config_toml needs [metrics] addr = \"127.0.0.1:PORT\"");
        let dir = tempdir("spillway-");
        let config_path = dir.path().join("spillway.toml");
        fs::write(&config_path, config_toml).expect("write config");
        let log_path = dir.path().join("spillway.log");
        let args = [
            "run".into(),
            "--config".into(),
            config_path.display().to_string(),
        ];
        // SPILLWAY_BIN runs another build (e.g. the commit before a change), so that two builds
        // can be benchmarked one after the other on the same machine.
        let bin = spillway_bin().display().to_string();
        let child = spawn(&bin, &args, |c| {
            c.current_dir(repo_dir());
            c.stdout(log_file(&log_path)).stderr(log_file(&log_path));
            if std::env::var_os("RUST_LOG").is_none() {
                c.env("RUST_LOG", "info");
            }
            c.envs(env.iter().copied());
        });
        let proc = Proc(Mutex::new(Some(child)));
        Spillway {
            metrics_port,
            proc,
            log_path,
            _dir: dir,
        }
    }

    /// The process's stdout+stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Body of `GET http://127.0.0.1:METRICS_PORT/metrics`.
    pub async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let resp = http_client(Duration::from_secs(10)).get(&url).send().await;
        let resp = resp.unwrap_or_else(|e| panic!("GET {url}: {e}\nlog:\n{}", self.log()));
        resp.text().await.expect("metrics body")
    }

    /// Polls `GET /readyz` until it answers 200; panics with the log on timeout or early exit.
    pub async fn wait_ready(&self, timeout: Duration) {
        let url = format!("http://127.0.0.1:{}/readyz", self.metrics_port);
        let client = http_client(Duration::from_secs(2));
        let deadline = Instant::now() + timeout;
        while !client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            let log = || self.log();
            if let Some(status) = self.exit_status() {
                panic!("spillway exited ({status}) before ready; log:\n{}", log());
            }
            assert!(
                Instant::now() < deadline,
                "spillway not ready in {timeout:?}; log:\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The exit status if the process has exited, without waiting.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.proc.exited()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Sends SIGTERM and waits up to 30 s for exit; panics with the log if it had to be killed.
    pub fn terminate(&mut self) -> ExitStatus {
        match self.proc.stop(Duration::from_secs(30)) {
            Some((status, false)) => status,
            Some((_, true)) => panic!("spillway ignored SIGTERM for 30 s; log:\n{}", self.log()),
            None => panic!("spillway was already stopped"),
        }
    }

    /// Sends SIGKILL and reaps the process (no-op if already stopped).
    pub fn kill(&mut self) {
        self.proc.stop(Duration::ZERO);
    }
}

impl Drop for Spillway {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!("--- spillway log (tail) ---\n{}", tail(&self.log_path, 200));
        }
    }
}

/// Polls the async condition `f` every 50 ms until it holds; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Minimal Spillway TOML config running the alerts pipeline against the given servers.
pub fn config_toml(
    redis: &RedisServer,
    ch: &ClickHouseServer,
    database: &str,
    metrics_port: u16,
) -> String {
    format!(
        "pipelines = [\"alerts\"]\n\n[redis.rls]\nurl = \"{}\"\n\n[clickhouse]\nurl = \"{}\"\ndatabase = \"{database}\"\n\n\
         [metrics]\naddr = \"127.0.0.1:{metrics_port}\"\n",
        redis.url(),
        ch.url()
    )
}
