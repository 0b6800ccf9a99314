//! Spillway: a sidecar that drains short-lived Redis logs (alerts, trade execution logs) into
//! ClickHouse before Redis expires or evicts them.
//!
//! The flow: [`source`]s read Redis and push [`rows::Record`]s into one bounded channel; the
//! [`sink`] batches them and commits them to ClickHouse; [`metrics`] exports what happened.
//! [`app::run`] wires it together; [`cli`] is the command line.

pub(crate) mod app;
pub(crate) mod channel;
pub mod cli;
pub(crate) mod config;
pub mod decode;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod metrics;
pub(crate) mod pipeline;
/// The RDB parser of the replication source, public for the integration tests and the fuzz
/// target only: not an API, it changes with the source.
#[doc(hidden)]
pub mod rdb {
    pub use crate::source::replication::rdb::{
        parse_dump, Entry, Parser, RdbError, RdbErrorKind, Value,
    };
}
pub mod rows;
pub(crate) mod simulate;
pub(crate) mod sink;
pub(crate) mod source;
