//! The consumer group gone: an RTRS restarted empty (it runs without persistence) or a stream
//! deleted by an operator takes the group with it, and every XREADGROUP, XAUTOCLAIM and
//! XPENDING then fails with `NOGROUP` (a read blocked at that moment ends with `UNBLOCKED`).
//! The group is created again at the pipeline's `start_id`, with `MKSTREAM`, and reading goes
//! on. XACK of a group that is gone answers 0 and needs nothing.

use fred::prelude::*;

use super::config::StreamSource;
use crate::metrics as m;

/// Whether `e` says the stream or its consumer group is gone.
pub(super) fn is_gone(e: &Error) -> bool {
    let d = e.details();
    d.starts_with("NOGROUP") || d.starts_with("UNBLOCKED")
}

/// `XGROUP CREATE <stream> <group> <start_id> MKSTREAM`: true when this call created the
/// group, false when it was there already (BUSYGROUP).
pub(super) async fn create(ctl: &Client, def: &StreamSource) -> Result<bool, Error> {
    let created: Result<(), Error> = ctl
        .xgroup_create(
            def.stream.as_str(),
            def.group.as_str(),
            def.start_id.as_str(),
            true,
        )
        .await;
    match created {
        Ok(()) => Ok(true),
        Err(e) if e.details().starts_with("BUSYGROUP") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates the group again after it was found gone. True when this call created it (counted and
/// logged once at WARN); false when it was there already (another consumer recreated it first).
pub(super) async fn recreate(
    ctl: &Client,
    def: &StreamSource,
    pipeline: &str,
) -> Result<bool, Error> {
    match create(ctl, def).await {
        Ok(true) => {
            metrics::counter!(m::STREAM_GROUP_RECREATED, "pipeline" => pipeline.to_string())
                .increment(1);
            tracing::warn!(
                pipeline,
                stream = %def.stream,
                group = %def.group,
                start_id = %def.start_id,
                "the stream or its consumer group was gone (Redis restarted empty, or the stream \
                 was deleted): consumer group created again; entries of the old stream not read \
                 yet were lost with it"
            );
            Ok(true)
        }
        other => other,
    }
}
