//! Spillway's end-to-end tests, one test binary (each file below used to be a binary of its own,
//! and every binary linked the whole crate). Every test starts real servers (redis-server,
//! clickhouse-server, promtool, chdb's ClickHouse) and the real `spillway` binary through the
//! harness in `testkit/`, on free loopback ports, and stops them afterwards.

extern crate spillway_testkit as common;

mod acl;
mod alerts;
mod archive;
mod clickhouse_cluster;
mod clickhouse_errors;
mod cluster_alerts;
mod cluster_trades;
mod faults;
mod harness;
mod large_values;
mod logging;
mod modern_clickhouse;
mod netfault;
mod observability;
mod prometheus_e2e;
mod queries;
mod rdb;
mod replication;
mod schema_check;
mod secrets;
mod simulate;
mod tls_clickhouse;
mod trades;
