//! Spillway: a sidecar that drains short-lived Redis logs (alerts, trade execution logs) into
//! ClickHouse before Redis expires or evicts them.
//!
//! The flow: [`source`]s read Redis and push [`rows::Record`]s into one bounded channel; the
//! [`sink`] batches them and commits them to ClickHouse; [`metrics`] exports what happened.
//! [`app::run`] wires it together; [`cli`] is the command line.

pub mod app;
pub mod cli;
pub mod config;
pub mod decode;
pub mod metrics;
pub mod pipeline;
pub mod rows;
pub mod simulate;
pub mod sink;
pub mod source;
