//! The writing side: the [`batcher`] cuts the records of the bounded channel into [`batch`]es;
//! the [`writer`] commits each to ClickHouse through the [`client`], in order, retrying until it
//! is committed, then runs its acknowledgements. At most two batches are held (one committing,
//! the next collected or waiting for it); then the channel fills and the sources wait. Errors
//! that retrying cannot fix are told apart ([`permanent`]) and handled by the [`guard`].

pub(crate) mod batch;
pub(crate) mod batcher;
pub(crate) mod client;
#[cfg(test)]
mod cluster_tests;
mod ddl;
pub(crate) mod guard;
pub(crate) mod permanent;
mod tls;
pub(crate) mod writer;

pub(crate) use client::Sink;
pub(crate) use guard::Guard;
pub(crate) use writer::run_writer;
