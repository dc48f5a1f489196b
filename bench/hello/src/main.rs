//! Bare axum "hello" server: the ceiling ossvend is compared with in bench/run.
//! `bench-hello [ADDR]` (default 127.0.0.1:0); prints `hello listening on http://ADDR`.
//!
//! `GET /hello` answers `hello`; `GET /bytes/{n}` answers n bytes (at most 64 KiB)
//! of JSON-typed filler, to separate the cost of a response's size from the cost
//! of the work behind it.

use axum::{Router, body::Bytes, extract::Path, http::header, response::IntoResponse, routing::get};

static FILLER: [u8; 65536] = [b'x'; 65536];

async fn bytes(Path(n): Path<usize>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from_static(&FILLER[..n.min(FILLER.len())]),
    )
}

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".into());
    // Like ossvend: tokio's multi-thread runtime, one worker per usable CPU.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let app = Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route("/bytes/{n}", get(bytes));
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        println!(
            "hello listening on http://{}",
            listener.local_addr().expect("addr")
        );
        axum::serve(listener, app).await.expect("serve");
    });
}
