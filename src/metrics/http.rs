//! The HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (alive) and `/readyz` (every
//! dependency answers and no stream pipeline is stalled).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

/// A readiness check: resolves to Ok when a dependency answers (or a pipeline moves), else to
/// the reason, shown in the `/readyz` body.
pub(crate) type Check = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send>> + Send + Sync,
>;

#[derive(Clone)]
struct AppState {
    handle: PrometheusHandle,
    checks: Arc<Vec<(String, Check)>>,
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `cancel`.
///
/// The recorder keeps every histogram sample (one per committed row) until it is folded into
/// the buckets, which a scrape does; without scrapes (no Prometheus yet, or it is down) they
/// would pile up by megabytes a second, so a task folds them every [`UPKEEP_EVERY`] too.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    checks: Vec<(String, Check)>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let upkeep = {
        let (handle, cancel) = (handle.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            while cancel.run_until_cancelled(every.tick()).await.is_some() {
                handle.run_upkeep();
            }
        })
    };
    let _stop_upkeep = tokio_util::task::AbortOnDropHandle::new(upkeep);
    let state = AppState {
        handle,
        checks: Arc::new(checks),
    };
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}

/// Binds the metrics address, naming it in the error.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on metrics.addr {addr}: {e}; fix: free the port or set SPILLWAY_METRICS_ADDR"))
    })
}

async fn render(
    State(s): State<AppState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    s.handle.run_upkeep();
    let mut body = s.handle.render();
    super::process::render_process(&mut body);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
}

async fn ready(State(s): State<AppState>) -> (StatusCode, String) {
    let mut body = String::new();
    let mut ok = true;
    for (name, check) in s.checks.iter() {
        let verdict = tokio::time::timeout(Duration::from_secs(2), check())
            .await
            .unwrap_or_else(|_| Err("unreachable (no answer in 2 s)".into()));
        ok &= verdict.is_ok();
        body.push_str(&format!(
            "{name} {}\n",
            verdict.err().as_deref().unwrap_or("ok")
        ));
    }
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body,
    )
}
