//! TLS for every outgoing client (STS, OSS, Redis, webhooks, callback keys):
//! rustls with the ring provider — no OpenSSL, no aws-lc (`scripts/test` checks
//! the dependency tree).

/// Installs ring as the process's rustls provider. Idempotent: the first
/// install wins and later calls change nothing, so every client builder calls it.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
