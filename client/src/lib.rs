//! The Rust client for Herald.
//!
//! The producer, consumer and admin API arrive with the client crate; today this crate only
//! reserves its place in the workspace so that the layout is stable.
