//! The Herald broker.
//!
//! - [`storage`] — the partitioned, memory-mapped, append-only log (no async, no gRPC).

pub mod storage;
