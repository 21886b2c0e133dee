//! The Herald broker.
//!
//! - [`storage`] — the partitioned, memory-mapped, append-only log (no async, no gRPC).
//! - [`topic`], [`partition`], [`registry`] — topics and their partitions, on disk and live.
//! - [`group`] — consumer groups as a pure state machine; [`groups`] — its driver (fetch
//!   loop, timers, dead letters, delivery to streams, persistence).
//! - [`server`] — the gRPC service, the metrics endpoint, start and graceful shutdown: the
//!   only place that knows tonic and the proto types.
//! - [`auth`] — bearer tokens, client-certificate principals and ACL rules.
//! - [`config`] — configuration with defaults, TOML, env and flags.
//! - [`clock`] — the wall clock in milliseconds, for every layer.
//! - [`meta_file`] — the checksummed form of `topic.toml` and `group.toml`.
//! - [`otel`] — W3C `traceparent` on records, and OTLP export of publish and deliver spans.
//! - [`cluster`] — cluster mode: the metadata group on openraft and the peer transport;
//!   unused by a single node.

pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod error;
pub mod group;
pub mod groups;
pub mod meta_file;
pub mod otel;
pub mod partition;
pub mod producer_ids;
pub mod registry;
pub mod server;
pub mod storage;
pub mod task_writer;
pub mod topic;
