//! Who a caller is and what it may do, in the broker's terms and without tonic:
//! [`token`] (bearer tokens, kept only as SHA-256 hashes, and the `authorization`
//! metadata they ride in), [`identity`] (the principal a verified client certificate
//! names) and [`acl`] (rules per principal on topics, groups and the cluster, and the
//! decision they make). `server::auth` applies them to requests.

pub mod acl;
pub mod identity;
pub mod token;

pub use acl::{Acl, Effect, Operation, PatternKind, Resource, ResourceKind, Rule};
pub use token::{TokenEntry, Tokens};
