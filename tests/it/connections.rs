//! Idle and slow connections (issue 13): the real binary closes a connection
//! that sends nothing, a header that trickles in, and a keep-alive connection
//! left idle, each after its configured time; and with a low open-file limit,
//! hundreds of idle sockets cannot keep `/healthz` from answering.
//!
//! Raw sockets, because what matters is what happens on the wire. Every wait is
//! bounded and generous; lower bounds only check that nothing is closed early.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// The shared test config with `[server]` connection settings (durations as TOML strings).
fn config_with(settings: &str) -> String {
    // /healthz never calls STS; nothing listens on this port.
    config("http://127.0.0.1:9").replace("[server]\n", &format!("[server]\n{settings}\n"))
}

fn addr_of(base: &str) -> SocketAddr {
    base.trim_start_matches("http://").parse().unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    s
}

/// Waits up to `limit` for the peer to close `s` (EOF or reset), discarding
/// anything it sends; how long that took, or `None` if it is still open.
fn wait_closed(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// Reads one HTTP/1.1 response with a `Content-Length` body; its status line and body.
fn read_response(s: &mut TcpStream, limit: Duration) -> (String, String) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            start.elapsed() < limit,
            "no complete response within {limit:?}: {got:?}"
        );
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("a content-length");
            if got.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).to_string();
                return (head.lines().next().unwrap_or("").to_string(), body);
            }
        }
        match s.read(&mut buf) {
            Ok(0) => panic!("closed before a complete response: {got:?}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read error before a complete response: {e}"),
        }
    }
}

/// One `GET path` on a new connection; the status line and body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = connect(addr);
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    read_response(&mut s, Duration::from_secs(15))
}

#[test]
fn a_connection_that_sends_nothing_is_closed_after_the_header_read_timeout() {
    let _turn = serial_blocking();
    let server = Server::start(config_with(
        "header_read_timeout = \"1s\"\nidle_timeout = \"30s\"",
    ));
    let mut s = connect(addr_of(&server.base));
    let closed = wait_closed(&mut s, Duration::from_secs(15));
    let took = closed.expect("a silent connection still open after 15 s (header_read_timeout = 1s)");
    eprintln!("silent connection closed after {took:?}");
    // Never before the header timeout (counted from the accept, which follows our connect).
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
}

#[test]
fn a_header_sent_a_byte_at_a_time_is_cut_off() {
    let _turn = serial_blocking();
    let server = Server::start(config_with(
        "header_read_timeout = \"2s\"\nidle_timeout = \"30s\"",
    ));
    let mut s = connect(addr_of(&server.base));
    let start = Instant::now();
    s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    // A header byte every 200 ms, for at most 15 s: activity must not extend the deadline.
    let mut sent = 0usize;
    let mut closed = None;
    for i in 0..75 {
        if s.write_all(&[b"X-Slow: 1\r\n"[i % 11]]).is_err() {
            closed = Some(start.elapsed());
            break;
        }
        sent += 1;
        if let Some(_d) = wait_closed(&mut s, Duration::from_millis(200)) {
            closed = Some(start.elapsed());
            break;
        }
    }
    let took = closed.unwrap_or_else(|| {
        panic!("a header trickling in ({sent} bytes, one per 200 ms) still open after 15 s (header_read_timeout = 2s)")
    });
    eprintln!("slow header cut off after {took:?}, {sent} bytes sent");
    assert!(took >= Duration::from_millis(1900), "cut off after {took:?}");
    assert!(sent >= 5, "kept sending ({sent} bytes) until cut off");
}

#[test]
fn a_keep_alive_connection_is_kept_between_requests_then_closed_after_the_idle_timeout() {
    let _turn = serial_blocking();
    let server = Server::start(config_with("header_read_timeout = \"1s\"\nidle_timeout = \"4s\""));
    let mut s = connect(addr_of(&server.base));
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let (status, _) = read_response(&mut s, Duration::from_secs(15));
    assert!(status.contains(" 200 "), "{status}");
    // Longer than header_read_timeout: waiting between requests is idle time, not header time.
    std::thread::sleep(Duration::from_millis(1500));
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let (status, _) = read_response(&mut s, Duration::from_secs(15));
    assert!(
        status.contains(" 200 "),
        "second request on the kept connection: {status}"
    );
    let closed = wait_closed(&mut s, Duration::from_secs(20));
    let took = closed.expect("an idle keep-alive connection still open after 20 s (idle_timeout = 4s)");
    eprintln!("idle keep-alive connection closed {took:?} after its second response");
    assert!(
        took >= Duration::from_secs(2),
        "closed after {took:?}, before idle_timeout"
    );
}

/// `ossvend serve` under `ulimit -n 256`, with an admin listener.
fn start_with_fd_limit(config: String, limit: u32) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let inner = ossvend_command(dir.path(), &config, &["serve"], &[]);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
        .arg(inner.get_program())
        .args(inner.get_args())
        .env_clear();
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    Server::spawn_listening(&mut cmd, dir, "ossvend listening on http://")
        .unwrap_or_else(|logs| panic!("ossvend did not start; logs:\n{logs}"))
}

/// Opens `n` connections that send nothing (bounded connect time each).
fn idle_sockets(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .collect()
}

#[test]
fn three_hundred_idle_sockets_under_ulimit_256_do_not_starve_healthz_or_the_admin_listener() {
    let _turn = serial_blocking();
    // Long timeouts: only the connection cap can save /healthz here.
    let cfg = config_with("header_read_timeout = \"60s\"\nidle_timeout = \"60s\"")
        + "\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let server = start_with_fd_limit(cfg, 256);
    let main = addr_of(&server.base);
    let admin = addr_of(&server.admin_base());

    let held_main = idle_sockets(main, 300);
    let (status, body) = get(main, "/healthz");
    assert!(
        status.contains(" 200 "),
        "/healthz with 300 idle sockets: {status} {body}"
    );
    let (status, _) = get(admin, "/metrics");
    assert!(
        status.contains(" 200 "),
        "admin /metrics with 300 idle sockets on main: {status}"
    );

    let held_admin = idle_sockets(admin, 300);
    let (status, metrics) = get(admin, "/metrics");
    assert!(
        status.contains(" 200 "),
        "admin /metrics with 300 idle sockets on it: {status}"
    );
    let (status, _) = get(main, "/healthz");
    assert!(
        status.contains(" 200 "),
        "/healthz with 600 idle sockets: {status}"
    );

    let evicted = metrics
        .lines()
        .find(|l| l.starts_with("ossvend_connections_closed_total{reason=\"evicted\"}"))
        .unwrap_or_else(|| panic!("no eviction counted:\n{metrics}"));
    eprintln!("{evicted}");
    let logs = server.logs.text();
    assert!(!logs.contains("Too many open files"), "{logs}");
    drop((held_main, held_admin));
}

#[test]
fn local_mode_closes_silent_connections_on_both_listeners() {
    let _turn = serial_blocking();
    let text = std::fs::read_to_string(repo_root().join("config/ossvend.local.toml"))
        .unwrap()
        .replace(
            "[server]\n",
            "[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"30s\"\n",
        );
    let local = LocalServer::start(Some(&text), &[]);
    for base in [local.server.base.clone(), local.oss.clone()] {
        let mut s = connect(addr_of(&base));
        let took = wait_closed(&mut s, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("{base}: a silent connection still open after 15 s"));
        eprintln!("{base}: silent connection closed after {took:?}");
        assert!(
            took >= Duration::from_millis(900),
            "{base}: closed after {took:?}"
        );
    }
}

#[tokio::test]
async fn a_reload_that_changes_connection_settings_asks_for_a_restart() {
    let _turn = serial().await;
    let settings = "header_read_timeout = \"10s\"\nidle_timeout = \"75s\"";
    let server = Server::start(config_with(settings));
    server.rewrite_config(&config_with(&settings.replace("75s", "30s")));
    server.signal("HUP");
    assert!(
        server
            .logs
            .wait_for(
                "server.idle_timeout changed; it takes effect only after a restart",
                Duration::from_secs(15)
            )
            .await,
        "{}",
        server.logs.text()
    );
}
