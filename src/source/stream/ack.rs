//! Acknowledgement of committed stream entries: remove the moved logs from RLS, then XACK; and
//! the consumer group's figures (lag, pending, oldest pending) as gauges.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::StreamSource;
use crate::metrics as m;

/// What to do once a batch of entries is committed.
pub(super) struct AckWork {
    /// Entry ids to XACK.
    pub ids: Vec<String>,
    /// Log keys with what was archived of them: `("list", entries)` or `("string", bytes)`.
    pub logs: Vec<(String, &'static str, usize)>,
}

/// Removes archived logs: a list loses exactly the archived entries (it is deleted when nothing
/// was appended since); a string is deleted if its length is unchanged. Returns {removed, changed}.
const REMOVE_LOGS: &str = r#"
local removed, changed = 0, 0
local grace = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local kind, n = ARGV[2 * i], tonumber(ARGV[2 * i + 1])
  local now = -1
  if kind == 'list' then now = redis.call('LLEN', key) else now = redis.call('STRLEN', key) end
  if now == n then
    if grace > 0 then redis.call('EXPIRE', key, grace) else redis.call('DEL', key) end
    removed = removed + 1
  elseif now > 0 then
    if kind == 'list' and n > 0 then redis.call('LTRIM', key, n, -1) end
    changed = changed + 1
  end
end
return { removed, changed }
"#;

/// Runs acknowledgements in order: remove the logs from RLS, then XACK. Retries until done;
/// ends when every sender (the source and the pending acknowledgements) is gone.
pub(super) async fn acknowledge(
    mut rx: mpsc::UnboundedReceiver<AckWork>,
    ctl: Client,
    logs: Client,
    def: StreamSource,
    inflight: Arc<Mutex<HashSet<String>>>,
    name: String,
) {
    let remove = Script::from_lua(REMOVE_LOGS);
    let grace = if def.after_commit == super::config::AfterCommit::Expire {
        def.expire_grace_secs.max(1)
    } else {
        0
    };
    while let Some(work) = rx.recv().await {
        let mut backoff = Duration::from_millis(100);
        loop {
            match ack_once(&work, &ctl, &logs, &def, &remove, grace).await {
                Ok((removed, changed)) => {
                    metrics::counter!(m::LOG_KEYS_REMOVED, "pipeline" => name.clone())
                        .increment(removed);
                    metrics::counter!(m::LOGS_CHANGED, "pipeline" => name.clone())
                        .increment(changed);
                    metrics::counter!(m::STREAM_ACKED, "pipeline" => name.clone())
                        .increment(work.ids.len() as u64);
                    break;
                }
                Err(e) => {
                    tracing::warn!(pipeline = %name, error = %e, retry_in = ?backoff, "acknowledging failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        let mut set = inflight.lock().unwrap_or_else(|e| e.into_inner());
        for id in &work.ids {
            set.remove(id);
        }
    }
}

async fn ack_once(
    work: &AckWork,
    ctl: &Client,
    logs: &Client,
    def: &StreamSource,
    remove: &Script,
    grace: u64,
) -> std::result::Result<(u64, u64), Error> {
    let mut counts = (0, 0);
    if !work.logs.is_empty() {
        let keys: Vec<String> = work.logs.iter().map(|(k, _, _)| k.clone()).collect();
        let mut args: Vec<String> = vec![grace.to_string()];
        for (_, kind, n) in &work.logs {
            args.push(kind.to_string());
            args.push(n.to_string());
        }
        let (removed, changed): (u64, u64) = remove.evalsha_with_reload(logs, keys, args).await?;
        counts = (removed, changed);
    }
    if !work.ids.is_empty() {
        let _: u64 = ctl
            .xack(def.stream.as_str(), def.group.as_str(), work.ids.clone())
            .await?;
    }
    Ok(counts)
}

/// Every 5 s: the group's lag and pending entries (XINFO GROUPS) and the oldest pending entry's
/// idle time (XPENDING), as gauges; and the pipeline's stall state from the same figures.
pub(super) async fn watch_group(
    ctl: Client,
    def: StreamSource,
    name: String,
    cancel: CancellationToken,
    stall: Arc<super::stall::Stall>,
) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let info = ctl.xinfo_groups::<Value, _>(def.stream.as_str()).await;
        if let Ok(v) = &info {
            if let Some((lag, pending)) = super::entries::group_figures(v, &def.group) {
                metrics::gauge!(m::STREAM_LAG, "pipeline" => name.clone()).set(lag as f64);
                metrics::gauge!(m::STREAM_PENDING, "pipeline" => name.clone()).set(pending as f64);
            }
        }
        // The stall state; figures of a stream or group that is gone are unknown (the reader
        // creates the group again).
        stall.observe(
            info.ok()
                .and_then(|v| super::stall::Figures::of(&v, &def.group)),
        );
        let oldest: std::result::Result<Value, Error> = ctl
            .xpending(def.stream.as_str(), def.group.as_str(), ("-", "+", 1))
            .await;
        let idle_ms = oldest
            .ok()
            .and_then(|v| super::entries::oldest_idle_ms(&v))
            .unwrap_or(0);
        metrics::gauge!(m::STREAM_OLDEST_PENDING, "pipeline" => name.clone())
            .set(idle_ms as f64 / 1000.0);
    }
}
