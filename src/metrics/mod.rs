//! Metrics: every name Spillway exports, in this one module (all `spillway_*`, base units,
//! `_total` on counters, bounded labels), and their descriptions. The endpoints that serve them
//! are in [`http`], the Redis `INFO` poller in [`redis_info`], the process figures in
//! [`process`].

pub(crate) mod http;
pub(crate) mod process;
pub(crate) mod redis_info;

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub(crate) use http::{bind, serve, Check};

/// Keyspace notifications received, by pipeline and event.
pub(crate) const EVENTS_RECEIVED: &str = "spillway_events_received_total";
/// Notifications lost before Spillway read them (subscriber buffer overrun), by pipeline.
pub(crate) const EVENTS_LOST: &str = "spillway_events_lost_total";
/// Values read from Redis and turned into rows, by pipeline and how (`event`, `scan`).
pub(crate) const VALUES_CAPTURED: &str = "spillway_values_captured_total";
/// Write notifications received, by pipeline and what became of them (the loss account).
pub(crate) const WRITES: &str = "spillway_writes_total";
/// Write notifications received and not yet resolved (queued or being read), by pipeline.
pub(crate) const WRITES_PENDING: &str = "spillway_writes_pending";
/// Keys a rescan read, by pipeline.
pub(crate) const RESCAN_KEYS: &str = "spillway_rescan_keys_total";
/// `del` notifications of keys found alive on another node of a Redis Cluster (a slot
/// migration moved them), not recorded as deletions, by pipeline.
pub(crate) const KEYS_MIGRATED: &str = "spillway_keys_migrated_total";
/// Primaries of a Redis Cluster a keyspace pipeline is subscribed to, by pipeline.
pub(crate) const CLUSTER_NODES: &str = "spillway_cluster_nodes";
/// Changes of a Redis Cluster's primaries or slots a keyspace pipeline followed, by pipeline
/// and what changed (`added`, `removed`, `slots`).
pub(crate) const CLUSTER_CHANGES: &str = "spillway_cluster_changes_total";
/// Keys a rescan found with a value already archived (not inserted again), by pipeline.
/// The replication source: the offset of the stream read, by pipeline.
pub(crate) const REPLICATION_OFFSET: &str = "spillway_replication_offset_bytes";
/// The replication source: the offset whose rows ClickHouse committed, by pipeline.
pub(crate) const REPLICATION_COMMITTED: &str = "spillway_replication_committed_offset_bytes";
/// The replication source: resyncs, by pipeline and kind (full, partial).
pub(crate) const REPLICATION_SYNCS: &str = "spillway_replication_syncs_total";
/// The replication source: bytes of the stream never seen (beyond the primary's backlog).
pub(crate) const REPLICATION_GAP: &str = "spillway_replication_gap_bytes_total";
/// The replication source: commands that changed a matching key without carrying its value.
pub(crate) const REPLICATION_UNARCHIVABLE: &str = "spillway_replication_unarchivable_total";
pub(crate) const RESCAN_KNOWN: &str = "spillway_rescan_known_total";
/// Values gone when read (expired, evicted or deleted first), by pipeline and reason.
pub(crate) const VALUES_GONE: &str = "spillway_values_gone_total";
/// Values that could not be decoded, by pipeline and reason.
pub(crate) const DEAD_LETTERS: &str = "spillway_dead_letters_total";
/// Rows committed to ClickHouse, by table.
pub(crate) const ROWS_WRITTEN: &str = "spillway_rows_written_total";
/// INSERT statements, by table and outcome.
pub(crate) const INSERT_BATCHES: &str = "spillway_insert_batches_total";
/// Batches flushed, by what ended them (`rows`, `bytes`, `delay`, `drain`).
pub(crate) const FLUSHES: &str = "spillway_flushes_total";
/// Failed batch commits that were retried.
pub(crate) const INSERT_RETRIES: &str = "spillway_insert_retries_total";
/// 1 while inserts are blocked by an error retrying cannot fix, by reason (the error's kind).
pub(crate) const CLICKHOUSE_BLOCKED: &str = "spillway_clickhouse_blocked";
/// Failed batch commits, by kind (`transient`, or the permanent kind).
pub(crate) const CLICKHOUSE_ERRORS: &str = "spillway_clickhouse_errors_total";
/// Tables or databases Spillway created again after they were dropped, by object.
pub(crate) const CLICKHOUSE_RECREATED: &str = "spillway_clickhouse_recreated_total";
/// INSERT latency, by table and outcome.
pub(crate) const INSERT_DURATION: &str = "spillway_insert_duration_seconds";
/// Rows waiting in the channel.
pub(crate) const CHANNEL_DEPTH: &str = "spillway_channel_depth";
/// Capacity of the channel.
pub(crate) const CHANNEL_CAPACITY: &str = "spillway_channel_capacity";
/// Bytes (RowBinary) of the rows waiting in the channel.
pub(crate) const CHANNEL_BYTES: &str = "spillway_channel_bytes";
/// The channel's byte budget.
pub(crate) const CHANNEL_CAPACITY_BYTES: &str = "spillway_channel_capacity_bytes";
/// Time of the last committed batch.
pub(crate) const LAST_FLUSH: &str = "spillway_last_flush_timestamp_seconds";
/// Round trips reading values back, by pipeline.
pub(crate) const READ_DURATION: &str = "spillway_redis_read_duration_seconds";
/// Stream entries read, by pipeline and event.
pub(crate) const STREAM_ENTRIES: &str = "spillway_stream_entries_total";
/// Stream entries acknowledged (XACK) after commit, by pipeline.
pub(crate) const STREAM_ACKED: &str = "spillway_stream_acked_total";
/// Stream entries claimed from other consumers (XAUTOCLAIM), by pipeline.
pub(crate) const STREAM_CLAIMED: &str = "spillway_stream_claimed_total";
/// Consumer groups created again because the stream or the group was gone, by pipeline.
pub(crate) const STREAM_GROUP_RECREATED: &str = "spillway_stream_group_recreated_total";
/// 1 while a stream pipeline is stalled (work waits, no progress for `stall_after_secs`).
pub(crate) const PIPELINE_STALLED: &str = "spillway_pipeline_stalled";
/// Consumer-group lag (entries not yet delivered), by pipeline.
pub(crate) const STREAM_LAG: &str = "spillway_stream_lag_entries";
/// Entries delivered but not acknowledged, by pipeline.
pub(crate) const STREAM_PENDING: &str = "spillway_stream_pending_entries";
/// Idle time of the oldest pending entry, by pipeline.
pub(crate) const STREAM_OLDEST_PENDING: &str = "spillway_stream_oldest_pending_seconds";
/// Execution logs moved to ClickHouse, by pipeline.
pub(crate) const LOGS_MOVED: &str = "spillway_logs_moved_total";
/// Closes whose execution log was not in Redis, by pipeline.
pub(crate) const LOGS_MISSING: &str = "spillway_logs_missing_total";
/// Closes whose log this process had moved already (pub/sub before stream), by pipeline.
pub(crate) const LOGS_ALREADY_MOVED: &str = "spillway_logs_already_moved_total";
/// Log keys removed (or given their grace expiry) after commit, by pipeline.
pub(crate) const LOG_KEYS_REMOVED: &str = "spillway_log_keys_removed_total";
/// Logs written again by the platform after Spillway took them (the new key stays in Redis for
/// the next close), by pipeline.
pub(crate) const LOGS_WRITTEN_AFTER_TAKE: &str = "spillway_logs_written_after_take_total";
/// Logs found staged at start by an earlier run and archived, by pipeline.
pub(crate) const LOGS_RECOVERED: &str = "spillway_logs_recovered_total";
/// Logs over `log_max_entries` or `log_max_bytes`, by pipeline and action (`kept`, `dead_letter`).
pub(crate) const LOGS_OVER_LIMIT: &str = "spillway_logs_over_limit_total";
/// Entries past the limits (a STRING counts one), by pipeline and action.
pub(crate) const LOG_ENTRIES_OVER_LIMIT: &str = "spillway_log_entries_over_limit_total";
/// Log entries whose own `trade_id` named another trade than their key (kept in `extra`), by
/// pipeline.
pub(crate) const LOG_FOREIGN_TRADE_IDS: &str = "spillway_log_foreign_trade_ids_total";
/// Acknowledgement commands Redis refused (counted, not retried), by pipeline.
pub(crate) const ACK_REFUSED: &str = "spillway_ack_refused_total";
/// Close messages received on the pub/sub channel, by pipeline.
pub(crate) const PUBSUB_CLOSES: &str = "spillway_pubsub_closes_total";
/// Close messages dropped (subscriber lagging or queue full), by pipeline.
pub(crate) const PUBSUB_CLOSES_DROPPED: &str = "spillway_pubsub_closes_dropped_total";
/// Subscriber connections of a keyspace pipeline given up and reconnected (each a gap closed by
/// a rescan), by pipeline and reason (`connection_lost`, `ping_timeout`).
pub(crate) const SUBSCRIBER_RECONNECTS: &str = "spillway_subscriber_reconnects_total";
/// Time from a Redis event (as Spillway received it) to the commit of its row, by table.
pub(crate) const EVENT_TO_COMMIT: &str = "spillway_event_to_commit_seconds";
/// Smallest remaining TTL among alert values read but not yet committed (+Inf: none).
pub(crate) const EXPIRY_RISK: &str = "spillway_uncommitted_min_ttl_seconds";
/// Build information.
pub(crate) const BUILD_INFO: &str = "spillway_build_info";

/// 1 when the last `INFO` of the instance succeeded, else 0.
pub(crate) const REDIS_UP: &str = "spillway_redis_up";
/// `used_memory` of the instance, in bytes.
pub(crate) const REDIS_MEMORY_USED: &str = "spillway_redis_memory_used_bytes";
/// `maxmemory` of the instance, in bytes (0: no limit).
pub(crate) const REDIS_MEMORY_MAX: &str = "spillway_redis_memory_max_bytes";
/// `maxmemory_policy` of the instance as a label; the value is 1.
pub(crate) const REDIS_POLICY: &str = "spillway_redis_maxmemory_policy_info";
/// `evicted_keys` of the instance (since its start).
pub(crate) const REDIS_EVICTED: &str = "spillway_redis_evicted_keys_total";
/// `expired_keys` of the instance (since its start).
pub(crate) const REDIS_EXPIRED: &str = "spillway_redis_expired_keys_total";
/// `mem_fragmentation_ratio` of the instance.
pub(crate) const REDIS_FRAGMENTATION: &str = "spillway_redis_mem_fragmentation_ratio";
/// `connected_clients` of the instance.
pub(crate) const REDIS_CLIENTS: &str = "spillway_redis_connected_clients";
/// Resident memory of the Spillway process, in bytes.
pub(crate) const PROCESS_RESIDENT: &str = "spillway_process_resident_memory_bytes";
/// CPU time (user + system) of the Spillway process, in seconds.
pub(crate) const PROCESS_CPU: &str = "spillway_process_cpu_seconds_total";
/// Unix time the Spillway process started observing, in seconds.
pub(crate) const PROCESS_START: &str = "spillway_process_start_time_seconds";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once and describes every metric. Later calls return the same handle.
pub(crate) fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75,
                        1.0, 1.25, 1.5, 2.0, 2.5, 5.0, 10.0, 30.0,
                    ],
                )
                .and_then(|b| b.install_recorder())
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "metrics recorder not installed");
                    PrometheusBuilder::new().build_recorder().handle()
                });
            describe();
            process::start();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        EVENTS_RECEIVED,
        "Keyspace notifications received, by pipeline and event."
    );
    describe_counter!(
        EVENTS_LOST,
        "Keyspace notifications lost before Spillway read them, by reason: buffer_overrun (its queue, keyspace.subscriber_buffer, was full), shutdown (still queued when the graceful drain's time ran out); for the replication source, backlog_exceeded (one per stretch of the stream the primary no longer held at a resync). A subscriber Redis cut off counts in spillway_subscriber_reconnects_total."
    );
    describe_counter!(
        VALUES_CAPTURED,
        "Values read from Redis and turned into rows, by pipeline and how (event, scan; snapshot, replication for the replication source)."
    );
    describe_counter!(
        WRITES,
        "Write notifications received, by pipeline and outcome: archived, already_archived, rewritten_before_read, gone_before_read, dead_letter, lost_buffer_overrun, lost_shutdown, unarchivable (replication source: a command changed the value without carrying it). Their sum plus spillway_writes_pending equals the write events of spillway_events_received_total."
    );
    describe_gauge!(
        WRITES_PENDING,
        "Write notifications received and not yet resolved (queued or being read), by pipeline."
    );
    describe_counter!(RESCAN_KEYS, "Keys a rescan read, by pipeline.");
    describe_gauge!(
        REPLICATION_OFFSET,
        "Replication source: the offset of the replication stream read so far, by pipeline."
    );
    describe_gauge!(
        REPLICATION_COMMITTED,
        "Replication source: the offset of the replication stream whose rows ClickHouse committed (what Spillway acknowledges to Redis), by pipeline."
    );
    describe_counter!(
        REPLICATION_SYNCS,
        "Replication source: synchronisations with the primary, by pipeline and kind: full (a snapshot, then the stream) or partial (the stream resumed from Spillway's offset)."
    );
    describe_counter!(
        REPLICATION_GAP,
        "Replication source: bytes of the replication stream that were never read because the primary's backlog no longer held them (a full resync followed; see spillway_events_lost_total{reason=\"backlog_exceeded\"}), by pipeline."
    );
    describe_counter!(
        REPLICATION_UNARCHIVABLE,
        "Replication source: commands that changed a matching key without carrying its new value (APPEND, INCR, RENAME into the pattern, ...), by pipeline and command."
    );
    describe_counter!(
        KEYS_MIGRATED,
        "Deletions of keys found alive on another Redis Cluster node (moved by a slot migration, not deleted), by pipeline."
    );
    describe_gauge!(
        CLUSTER_NODES,
        "Redis Cluster primaries a keyspace pipeline is subscribed to, by pipeline."
    );
    describe_counter!(
        CLUSTER_CHANGES,
        "Redis Cluster topology changes a keyspace pipeline followed, by pipeline and kind (added, removed, slots)."
    );
    describe_counter!(
        RESCAN_KNOWN,
        "Keys a rescan found holding a value already archived by this process (not inserted again), by pipeline."
    );
    describe_counter!(VALUES_GONE, "Values gone when Spillway read them (expired, evicted or deleted first), by pipeline and reason.");
    describe_counter!(
        DEAD_LETTERS,
        "Values that could not be decoded and went to dead_letters, by pipeline and reason."
    );
    describe_counter!(ROWS_WRITTEN, "Rows committed to ClickHouse, by table.");
    describe_counter!(
        INSERT_BATCHES,
        "INSERT statements sent to ClickHouse, by table and outcome."
    );
    describe_counter!(
        FLUSHES,
        "Batches flushed to ClickHouse, by what ended them (rows, bytes, delay, drain)."
    );
    describe_counter!(
        INSERT_RETRIES,
        "Batch commits that failed and were retried."
    );
    describe_gauge!(
        CLICKHOUSE_BLOCKED,
        "1 while inserts fail with an error retrying cannot fix, by reason: auth, unknown_table, unknown_database, readonly, access_denied, schema; /readyz then fails with the reason and the fix. Rows wait and are retried every 5 s. Else 0."
    );
    describe_counter!(
        CLICKHOUSE_ERRORS,
        "Batch commits that failed, by kind: transient (retried with backoff) or the permanent kind (auth, unknown_table, unknown_database, readonly, access_denied, schema)."
    );
    describe_counter!(
        CLICKHOUSE_RECREATED,
        "Tables and databases Spillway created again after they were dropped (clickhouse.recreate_tables), by object (table, database)."
    );
    describe_histogram!(
        INSERT_DURATION,
        Unit::Seconds,
        "Latency of one INSERT, by table and outcome."
    );
    describe_histogram!(
        READ_DURATION,
        Unit::Seconds,
        "Latency of one pipelined read of values from Redis, by pipeline."
    );
    describe_gauge!(
        CHANNEL_DEPTH,
        "Rows waiting in the channel between readers and the writer."
    );
    describe_gauge!(
        CHANNEL_CAPACITY,
        "Capacity of the channel between readers and the writer, in rows."
    );
    describe_gauge!(
        CHANNEL_BYTES,
        Unit::Bytes,
        "Bytes (RowBinary) of the rows waiting in the channel between readers and the writer."
    );
    describe_gauge!(
        CHANNEL_CAPACITY_BYTES,
        Unit::Bytes,
        "Byte budget of the channel between readers and the writer (batch.channel_bytes)."
    );
    describe_gauge!(
        LAST_FLUSH,
        Unit::Seconds,
        "Unix time of the last batch committed to ClickHouse."
    );
    describe_counter!(
        STREAM_ENTRIES,
        "Stream entries read, by pipeline and event."
    );
    describe_counter!(
        STREAM_ACKED,
        "Stream entries acknowledged (XACK) after ClickHouse committed their rows."
    );
    describe_counter!(
        STREAM_CLAIMED,
        "Stream entries claimed from consumers that stopped (XAUTOCLAIM)."
    );
    describe_counter!(
        STREAM_GROUP_RECREATED,
        "Consumer groups created again (XGROUP CREATE ... MKSTREAM at start_id) because the stream or the group was gone: Redis restarted empty or the stream was deleted. Entries of the old stream not yet read were lost with it."
    );
    describe_gauge!(
        PIPELINE_STALLED,
        "1 while a stream pipeline is stalled: entries wait (lag + pending > 0) or reads fail, and none was acknowledged for stall_after_secs; /readyz then fails with the reason. Else 0."
    );
    describe_gauge!(
        STREAM_LAG,
        "Consumer-group lag: entries of the stream not yet delivered to the group."
    );
    describe_gauge!(
        STREAM_PENDING,
        "Stream entries delivered to the group but not acknowledged."
    );
    describe_gauge!(
        STREAM_OLDEST_PENDING,
        Unit::Seconds,
        "Idle time of the oldest pending stream entry."
    );
    describe_counter!(LOGS_MOVED, "Execution logs moved from Redis to ClickHouse.");
    describe_counter!(
        LOGS_ALREADY_MOVED,
        "Trade closes whose execution log this process had moved already (a pub/sub close before the stream's); not a missing log."
    );
    describe_counter!(
        LOGS_MISSING,
        "Trade closes whose execution log was not in Redis."
    );
    describe_counter!(
        LOG_KEYS_REMOVED,
        "Staging keys of execution logs released after commit (deleted, expired, or parked over the limits)."
    );
    describe_counter!(
        LOGS_WRITTEN_AFTER_TAKE,
        "Execution logs the platform wrote again after Spillway took them; the new key stays in Redis for the next close."
    );
    describe_counter!(
        LOGS_RECOVERED,
        "Execution logs found staged at start (left by an earlier run) and archived."
    );
    describe_counter!(
        LOGS_OVER_LIMIT,
        "Execution logs over log_max_entries or log_max_bytes, by what was done with the rest (kept in Redis or dead-lettered)."
    );
    describe_counter!(
        LOG_ENTRIES_OVER_LIMIT,
        "Execution log entries past the limits (a STRING log counts one), by what was done with them."
    );
    describe_counter!(
        LOG_FOREIGN_TRADE_IDS,
        "Execution log entries whose own trade_id named another trade than their key; the field is kept in extra."
    );
    describe_counter!(
        ACK_REFUSED,
        "Acknowledgement commands Redis refused; counted and not retried."
    );
    describe_counter!(
        PUBSUB_CLOSES,
        "Trade close messages received on the pub/sub channel."
    );
    describe_counter!(
        PUBSUB_CLOSES_DROPPED,
        "Trade close messages dropped (at-most-once channel): the stream still moves those logs."
    );
    describe_counter!(SUBSCRIBER_RECONNECTS, "Keyspace subscriber connections given up and reconnected, by reason: connection_lost (closed, reset or unreadable), ping_timeout (a PING unanswered within keyspace.subscriber_timeout_secs: a half-open connection). The notifications of the disconnected time are recovered by a rescan.");
    describe_histogram!(
        EVENT_TO_COMMIT,
        Unit::Seconds,
        "Time from a Redis event, as Spillway received it, to the ClickHouse commit of its row, by table."
    );
    describe_gauge!(
        EXPIRY_RISK,
        Unit::Seconds,
        "Smallest remaining TTL among alert values read but not yet committed; +Inf when none is waiting."
    );
    describe_gauge!(
        REDIS_UP,
        "1 when the last INFO of the Redis instance succeeded, else 0."
    );
    describe_gauge!(
        REDIS_MEMORY_USED,
        Unit::Bytes,
        "used_memory of the Redis instance."
    );
    describe_gauge!(
        REDIS_MEMORY_MAX,
        Unit::Bytes,
        "maxmemory of the Redis instance (0: no limit)."
    );
    describe_gauge!(
        REDIS_POLICY,
        "maxmemory-policy of the Redis instance, as the policy label; the value is 1."
    );
    describe_counter!(
        REDIS_EVICTED,
        "Keys the Redis instance evicted since it started (its evicted_keys)."
    );
    describe_counter!(
        REDIS_EXPIRED,
        "Keys the Redis instance expired since it started (its expired_keys)."
    );
    describe_gauge!(
        REDIS_FRAGMENTATION,
        "mem_fragmentation_ratio of the Redis instance (resident / used memory)."
    );
    describe_gauge!(REDIS_CLIENTS, "Clients connected to the Redis instance.");
    describe_gauge!(BUILD_INFO, "Spillway build information; the value is 1.");
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}
