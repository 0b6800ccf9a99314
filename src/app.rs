//! Wiring: connects ClickHouse and the sources (failing fast at start), runs them with the writer
//! and the metrics endpoint, and drains in order on shutdown: stop reading, close the channel,
//! flush and commit, exit.

use std::sync::Arc;

use anyhow::Context as _;
use fred::prelude::ClientLike as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::metrics::{self as m, Check};
use crate::pipeline::Source;
use crate::sink::{run_writer, Guard, Sink};
use crate::source::keyspace::AnyKeyspace;
use crate::source::replication::Replication;
use crate::source::stream::Stream;
use crate::source::Endpoint;

/// Runs until SIGTERM or Ctrl-C, then drains within `shutdown_timeout`. A second signal exits at once.
pub(crate) async fn run_until_signal(settings: Settings) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let signals = cancel.clone();
    tokio::spawn(async move {
        wait_signal().await;
        tracing::info!("signal received: draining (a second signal exits at once)");
        signals.cancel();
        wait_signal().await;
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    });
    let timeout = settings.shutdown_timeout;
    let drained = cancel.clone();
    let run = run(settings, cancel);
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => r,
        _ = async { drained.cancelled().await; tokio::time::sleep(timeout).await } => {
            anyhow::bail!("graceful shutdown did not finish within {timeout:?}; rows not yet committed are recovered by the next rescan")
        }
    }
}

/// The endpoint of a configured instance.
fn endpoint(settings: &Settings, instance: &str) -> anyhow::Result<Endpoint> {
    let url = settings
        .redis
        .iter()
        .find(|(n, _)| n == instance)
        .map(|(_, u)| u.clone())
        .with_context(|| format!("no URL for Redis instance {instance}"))?;
    Ok(Endpoint {
        instance: instance.to_string(),
        url,
    })
}

/// A readiness check that PINGs through `client`.
fn ping(name: String, client: fred::prelude::Client) -> (String, Check) {
    (
        name,
        Arc::new(move || {
            let c = client.clone();
            Box::pin(async move {
                c.ping::<String>(None)
                    .await
                    .map(|_| ())
                    .map_err(|_| "unreachable".to_string())
            })
        }),
    )
}

/// Resolves at SIGTERM or Ctrl-C.
pub(crate) async fn wait_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Runs Spillway until `cancel`, then drains. Errors at start (unreachable servers, missing
/// notification flags, bad tables) are returned before anything runs.
pub(crate) async fn run(settings: Settings, cancel: CancellationToken) -> anyhow::Result<()> {
    let handle = m::install();
    let sink = Sink::connect(&settings.clickhouse)
        .await
        .context("starting the ClickHouse sink")?;
    let guard = Guard::new(&settings.clickhouse);
    let capacity = settings.batch.channel_capacity.get();
    let bytes = settings.batch.channel_bytes.get();
    metrics::gauge!(m::CHANNEL_CAPACITY).set(capacity as f64);
    metrics::gauge!(m::CHANNEL_CAPACITY_BYTES).set(bytes as f64);
    let (tx, rx) = crate::channel::channel(capacity, bytes);

    let mut keyspaces = Vec::new();
    let mut streams = Vec::new();
    let mut replications = Vec::new();
    let mut checks: Vec<(String, Check)> = Vec::new();
    for p in &settings.pipelines {
        let starting = || format!("starting pipeline {}", p.name);
        match &p.source {
            Source::Keyspace(def) => {
                let endpoint = endpoint(&settings, &def.instance)?;
                let mut source = AnyKeyspace::connect(
                    &p.name,
                    def.clone(),
                    endpoint,
                    &settings.keyspace,
                    tx.clone(),
                )
                .await
                .with_context(starting)?;
                checks.push(ping(
                    format!("redis {} ({})", def.instance, p.name),
                    source.reader(),
                ));
                source.rescan_on(guard.recreations());
                keyspaces.push(source);
            }
            Source::Replication(def) => {
                let endpoint = endpoint(&settings, &def.instance)?;
                let source = Replication::connect(
                    &p.name,
                    def.clone(),
                    endpoint,
                    &settings.keyspace,
                    tx.clone(),
                    sink.client(),
                )
                .await
                .with_context(starting)?;
                let up = source.up();
                checks.push((
                    format!("redis {} ({})", def.instance, p.name),
                    Arc::new(move || {
                        let up = up.load(std::sync::atomic::Ordering::Relaxed);
                        Box::pin(async move {
                            up.then_some(())
                                .ok_or_else(|| "replication link down".to_string())
                        })
                    }),
                ));
                replications.push(source);
            }
            Source::Stream(def) => {
                let (on, logs) = (
                    endpoint(&settings, &def.instance)?,
                    endpoint(&settings, &def.log_instance)?,
                );
                let mut def = def.clone();
                if def.consumer.is_empty() {
                    def.consumer = crate::source::stream::config::default_consumer(
                        settings.metrics_addr.port(),
                    );
                }
                let source = Stream::connect(&p.name, def.clone(), on, logs, tx.clone())
                    .await
                    .with_context(starting)?;
                let [stream_client, log_client] = source.clients();
                checks.push(ping(
                    format!("redis {} ({})", def.instance, p.name),
                    stream_client,
                ));
                checks.push(ping(
                    format!("redis {} ({})", def.log_instance, p.name),
                    log_client,
                ));
                let stall = source.stall();
                checks.push((
                    format!("pipeline {}", p.name),
                    Arc::new(move || {
                        let verdict = stall.publish();
                        Box::pin(async move { verdict })
                    }),
                ));
                streams.push(source);
            }
        }
    }
    drop(tx);
    let ping_sink = sink.clone();
    let health = guard.health();
    checks.push((
        "clickhouse".into(),
        Arc::new(move || {
            let (s, blocked) = (ping_sink.clone(), health.blocked());
            Box::pin(async move {
                // An insert error retrying cannot fix says more than a ping.
                if let Some(reason) = blocked {
                    Err(reason)
                } else if s.ping().await {
                    Ok(())
                } else {
                    Err("unreachable".to_string())
                }
            })
        }),
    ));

    let info_refused = crate::metrics::redis_info::Refused::default();
    checks.push((
        "redis INFO".into(),
        crate::metrics::redis_info::readiness(info_refused.clone()),
    ));

    let listener = m::bind(settings.metrics_addr).await?;
    tracing::info!(addr = %settings.metrics_addr, "serving /metrics, /healthz, /readyz");
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(m::serve(listener, handle, checks, http_stop.clone()));

    let readers = TaskTracker::new();
    let ackers = TaskTracker::new();
    for s in keyspaces {
        // Half the shutdown's time to read back what is queued, half to commit it.
        readers.spawn(s.run(cancel.clone(), settings.shutdown_timeout / 2));
    }
    for s in replications {
        readers.spawn(s.run(cancel.clone()));
    }
    for s in streams {
        let (cancel, ackers) = (cancel.clone(), ackers.clone());
        readers.spawn(async move { s.run(cancel, &ackers).await });
    }
    readers.close();
    let writer = tokio::spawn(run_writer(rx, sink, settings.batch, guard));
    crate::metrics::redis_info::spawn(&settings, cancel.clone(), info_refused);
    tracing::info!(pipelines = settings.pipelines.len(), "spillway running");

    readers.wait().await;
    tracing::info!("readers stopped; flushing what was read");
    writer.await.context("writer task")?;
    ackers.close();
    ackers.wait().await;
    http_stop.cancel();
    let _ = http.await;
    tracing::info!("drained; bye");
    Ok(())
}
