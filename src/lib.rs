//! ossvend: vends short-lived, least-privilege upload rights for Alibaba Cloud OSS.
//!
//! See `design.md` for how the modules fit: `config` → `identity` → `sts`
//! (client + cache) → `policy` → `sign` → `grants` → `routes`.

pub mod auth;
pub mod config;
pub mod error;
pub mod grants;
pub mod identity;
pub mod policy;
pub mod routes;
pub mod server;
pub mod sign;
pub mod signcli;
pub mod sts;
pub mod telemetry;

pub use routes::app;
