//! The command line: `spillway run`, `check-config`, `schema` and `simulate`.

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
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run(args) => args.load().and_then(run),
        Command::CheckConfig(args) => args.load().map(|s| println!("{}", s.to_toml())),
        Command::Schema {
            clickhouse_version,
            database,
            retention_days,
        } => {
            use std::io::Write as _;
            let generation = crate::rows::schema::Generation::from_version(&clickhouse_version);
            let mut out = format!("CREATE DATABASE IF NOT EXISTS {database};\n\n");
            for t in crate::rows::schema::TABLES {
                let sql = t.create_sql(&database, generation, retention_days);
                out.push_str(&format!("{sql};\n\n"));
            }
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::stdout().write_all(out.as_bytes());
            Ok(())
        }
        Command::Simulate(args) => crate::simulate::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spillway: {}", report(&e));
            ExitCode::FAILURE
        }
    }
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
