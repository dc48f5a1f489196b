//! ossvend: vends short-lived, least-privilege upload rights for Alibaba Cloud OSS.
//!
//! docs/architecture.md says how the modules fit: their layers (every `crate::` edge points
//! down, checked by `scripts/check-layers`) and the one-way path of a request. docs/signing.md is
//! the reference for the wire formats the signers, the STS client and the identity sources implement.

// `ApiError` is large and only travels on the error path, where boxing it would
// buy nothing measurable.
#![allow(clippy::result_large_err)]

pub mod audit;
pub mod auth;
pub mod callbacks;
pub mod check;
pub mod config;
pub mod connections;
pub mod credentials;
pub mod error;
pub mod formats;
pub mod grants;
pub mod identity;
#[cfg(feature = "local")]
pub mod local;
pub mod oss;
pub mod policy;
pub mod prom;
#[cfg(test)]
mod proptests;
pub mod ratelimit;
pub mod reload;
pub mod routes;
pub mod server;
pub mod shared;
pub mod sign;
pub mod signcli;
pub mod state;
pub mod sts;
pub mod telemetry;
pub mod tls;
pub mod webhooks;

pub use routes::app;
