//! The integration tests: ONE test binary (`cargo test --test it`), one module per
//! area (`cargo test --test it auth::` runs one area). Route behaviour runs
//! in-process against the real router ([`support::TestApp`]); the areas that need a
//! process (the CLI, signals and reload, logs, sockets, containers, real clients,
//! the browser) start the real binary ([`support::Server`]). `tests/vectors.rs`
//! (harness = false) stays its own binary.

mod support;

mod auth;
mod browser;
mod callbacks;
mod clients;
mod config;
mod connections;
mod deploy;
mod fake_sts;
mod fleet;
mod identity;
mod local;
mod openapi;
mod ops;
mod s3_compat;
mod server;
mod sign_cli;
mod sts_outage;
mod upload;
mod upload_sessions;
