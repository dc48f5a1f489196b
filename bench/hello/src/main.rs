//! Bare axum "hello" server: the ceiling ossvend is compared with in bench/run.
//! `bench-hello [ADDR]` (default 127.0.0.1:0); prints `hello listening on http://ADDR`.
//!
//! `GET /hello` answers `hello`; `GET /bytes/{n}` answers n bytes (at most 64 KiB)
//! of JSON-typed filler, to separate the cost of a response's size from the cost
//! of the work behind it. With `--log`, `GET /logged` answers `hello` after
//! writing one log line shaped like ossvend's audit line, with ossvend's logging.

use axum::{Router, body::Bytes, extract::Path, http::header, response::IntoResponse, routing::get};

static FILLER: [u8; 65536] = [b'x'; 65536];

async fn bytes(Path(n): Path<usize>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from_static(&FILLER[..n.min(FILLER.len())]),
    )
}

/// One line shaped like ossvend's audit line for a cached credential (same
/// fields, same lengths), through ossvend's own log pipeline.
async fn logged() -> &'static str {
    tracing::info!(
        target: "ossvend::audit",
        kind = "credentials", grant = "browser-upload", subject = "bench-client", auth = "api_key",
        client_ip = "127.0.0.1", session_name = "ossvend", access_key_id = "STS.NbR7…",
        expiration = "2026-11-24T05:41:52Z", cache = "hit", key = "uploads/",
        policy_sha256 = "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945",
        "issued {}", "credentials"
    );
    "hello"
}

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".into());
    // `--log`: ossvend's logging (text, RUST_LOG, background writer) and a
    // `/logged` route that writes one audit-shaped line per request.
    let _log = if std::env::args().any(|a| a == "--log") {
        ossvend::telemetry::init(ossvend::config::LogFormat::Text)
    } else {
        None
    };
    // Like ossvend: tokio's multi-thread runtime, one worker per usable CPU.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let app = Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route("/logged", get(logged))
            .route("/bytes/{n}", get(bytes));
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        println!(
            "hello listening on http://{}",
            listener.local_addr().expect("addr")
        );
        axum::serve(listener, app).await.expect("serve");
    });
}
