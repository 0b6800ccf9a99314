//! The command line: `spillway run`, `check-config`, `schema` and `simulate`; logging (text,
//! coloured only on a terminal, or one JSON object per line) and the panic hook (a panic in any
//! thread or task is logged and ends the process with [`PANIC_EXIT_CODE`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{FileConfig, Settings};

/// `--version`: the crate's version and the git revision it was built from (`build.rs`; "unknown"
/// outside a git checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("SPILLWAY_GIT_REVISION"),
    ")"
);

/// Drains short-lived Redis logs into ClickHouse before Redis expires or evicts them.
#[derive(Debug, Parser)]
#[command(name = "spillway", version = VERSION, about)]
pub struct Cli {
    /// Log lines as text (coloured only when stderr is a terminal) or one JSON object per line.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "SPILLWAY_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colour escapes only when stderr is a terminal.
    Text,
    /// One JSON object per line (timestamp, level, fields, target), for log shippers.
    Json,
}

/// The exit status after a panic (EX_SOFTWARE in sysexits.h): a supervisor sees a failure and
/// restarts the process.
pub const PANIC_EXIT_CODE: i32 = 70;

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar until SIGTERM or Ctrl-C.
    Run(ConfigArgs),
    /// Validate the configuration and the pipeline definitions, print them, and exit.
    CheckConfig(ConfigArgs),
    /// Print the CREATE statements Spillway runs for a ClickHouse version, to review or apply by hand.
    Schema {
        /// The server's version as `SELECT version()` prints it, e.g. 18.16.1 or 24.8.4.13.
        #[arg(long, default_value = "24.8")]
        clickhouse_version: String,
        /// The database.
        #[arg(long, default_value = "spillway")]
        database: String,
        /// Days rows are kept (`clickhouse.retention_days`); none when absent.
        #[arg(long)]
        retention_days: Option<u32>,
        /// The statements for a cluster of this name (`clickhouse.cluster`): replicated local
        /// tables and Distributed ones, `ON CLUSTER`; one server when absent.
        #[arg(long)]
        cluster: Option<String>,
        /// `clickhouse.zookeeper_path` (with --cluster).
        #[arg(long)]
        zookeeper_path: Option<String>,
        /// `clickhouse.replica_name` (with --cluster).
        #[arg(long)]
        replica_name: Option<String>,
    },
    /// Play the trading platform: write alerts and trades into RLS and RTRS at a given rate.
    Simulate(crate::simulate::SimulateArgs),
}

/// Where the configuration comes from.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// TOML config file; without it the contract's defaults are used (Redis on 127.0.0.1:6379-6384,
    /// ClickHouse at http://127.0.0.1:8123). SPILLWAY_* variables override it.
    #[arg(long, short, env = "SPILLWAY_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ConfigArgs {
    /// Loads, overrides from the environment and validates.
    pub fn load(&self) -> anyhow::Result<Settings> {
        let (file, base) = match &self.config {
            Some(path) => {
                let base = path.parent().map(PathBuf::from).unwrap_or_default();
                (FileConfig::from_file(path)?, base)
            }
            None => (FileConfig::default(), PathBuf::from(".")),
        };
        let mut file = file;
        file.apply_env(|k| std::env::var(k).ok())?;
        Ok(file.validate(&base)?)
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    std::panic::set_hook(Box::new(panic_hook));
    let result = match cli.command {
        Command::Run(args) => args.load().and_then(run),
        Command::CheckConfig(args) => args.load().map(|s| println!("{}", s.to_toml())),
        Command::Schema {
            clickhouse_version,
            database,
            retention_days,
            cluster,
            zookeeper_path,
            replica_name,
        } => crate::config::validate_cluster(cluster, zookeeper_path, replica_name)
            .map_err(anyhow::Error::from)
            .map(|cluster| {
                use std::io::Write as _;
                let generation = crate::rows::schema::Generation::from_version(&clickhouse_version);
                let statements = crate::rows::cluster::statements(
                    &database,
                    generation,
                    retention_days,
                    cluster.as_ref(),
                );
                let out: String = statements
                    .iter()
                    .map(|s| format!("{};\n\n", s.sql))
                    .collect();
                // A closed pipe (`| head`) is not an error worth a panic.
                let _ = std::io::stdout().write_all(out.as_bytes());
            }),
        Command::Simulate(args) => crate::simulate::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match cli.log_format {
                LogFormat::Text => eprintln!("spillway: {}", report(&e)),
                LogFormat::Json => tracing::error!(error = %report(&e), "exiting"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr in `format`, at the level `RUST_LOG` says (info by default). Text carries
/// colour escapes only when stderr is a terminal, so a log file or a pipe gets plain lines.
fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            use std::io::IsTerminal as _;
            builder.with_ansi(std::io::stderr().is_terminal()).init();
        }
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// The panic hook: a panic anywhere (a tokio task's included, which would otherwise surface only
/// when, and if, something awaits its handle) is logged through `tracing`, with its location,
/// thread and a backtrace when `RUST_BACKTRACE` asks for one, then ends the process with
/// [`PANIC_EXIT_CODE`]. A half-dead sidecar that looks alive loses data; a restarted one does
/// not (what was read and not committed is read again).
fn panic_hook(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    let location = info.location().map(|l| l.to_string()).unwrap_or_default();
    let thread = std::thread::current();
    let backtrace = std::backtrace::Backtrace::capture();
    let backtrace = match backtrace.status() {
        std::backtrace::BacktraceStatus::Captured => Some(backtrace.to_string()),
        _ => None,
    };
    tracing::error!(
        panic = message,
        location = %location,
        thread = thread.name().unwrap_or("unnamed"),
        backtrace = backtrace.as_deref(),
        "panic: exiting with status {PANIC_EXIT_CODE}"
    );
    std::process::exit(PANIC_EXIT_CODE);
}

/// The error and its causes, joined with `: `, leaving out a cause whose text an outer message
/// already carries (Spillway's errors name their source in their own message).
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn run(settings: Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(crate::app::run_until_signal(settings))
}

#[cfg(test)]
mod report_tests {
    #[test]
    fn a_cause_already_in_its_message_is_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("Redis rls: subscribing: {source}")]
        struct Outer {
            source: std::io::Error,
        }
        let io = std::io::Error::other("connection refused");
        let e = anyhow::Error::new(Outer { source: io }).context("starting pipeline alerts");
        assert_eq!(
            super::report(&e),
            "starting pipeline alerts: Redis rls: subscribing: connection refused"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::report(&plain), "outer: inner");
    }
}

#[cfg(test)]
mod panic_tests {
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// Set when this test runs itself as the child that panics.
    const CHILD: &str = "SPILLWAY_TEST_PANIC_HOOK_CHILD";
    const NAME: &str = "cli::panic_tests::a_panic_in_a_task_is_logged_and_ends_the_process";

    /// Runs this test binary again, filtered to this test, as a child that installs the logging
    /// and the hook `main` installs, then panics in a tokio task and sleeps: with the hook the
    /// child ends at once with [`super::PANIC_EXIT_CODE`] after logging the panic (without it,
    /// the runtime would swallow the panic and the child would pass after its sleep).
    #[test]
    fn a_panic_in_a_task_is_logged_and_ends_the_process() {
        if std::env::var_os(CHILD).is_some() {
            super::init_logging(super::LogFormat::Json);
            std::panic::set_hook(Box::new(super::panic_hook));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            // Settings holding secrets, as a panic message might show them.
            let settings = crate::config::FileConfig::from_toml(
                "[redis.rls]\nurl = \"redis://u:r3disPanicPW@127.0.0.1:6384\"\n\
                 [clickhouse]\npassword = \"chPanicPW\"",
            )
            .unwrap()
            .validate(std::path::Path::new("."))
            .unwrap();
            runtime.block_on(async move {
                let _task = tokio::spawn(async move {
                    eprintln!("settings in the panic: {settings:?}");
                    panic!("boom in a task")
                });
                tokio::time::sleep(Duration::from_secs(20)).await;
            });
            return;
        }
        let start = Instant::now();
        let out = Command::new(std::env::current_exe().unwrap())
            .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env_remove("RUST_LOG")
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(super::PANIC_EXIT_CODE), "{stderr}");
        assert!(
            stderr.contains("settings in the panic: Settings"),
            "{stderr}"
        );
        assert!(
            !stderr.contains("PanicPW"),
            "a secret in the panic's output: {stderr}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the child slept on"
        );
        let logged: Vec<serde_json::Value> = stderr
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let panic = logged
            .iter()
            .find(|l| l["fields"]["panic"] == "boom in a task")
            .unwrap_or_else(|| panic!("no panic logged: {stderr}"));
        assert_eq!(panic["level"], "ERROR");
        let location = panic["fields"]["location"].as_str().unwrap();
        assert!(location.starts_with("src/cli.rs:"), "{location}");
        assert!(panic["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("exiting with status 70"));
    }
}
