//! The accept loop of every listener (the main and admin ones, `ossvend
//! local`'s two), with what `axum::serve` lacks, so that idle or slow clients
//! cannot starve real ones:
//!
//! - a header deadline (`server.header_read_timeout`): a new connection, or a
//!   kept-alive one from the first byte of its next request, must deliver a
//!   complete request header in time;
//! - an idle deadline (`server.idle_timeout`): a connection with no request in
//!   flight and none arriving is closed;
//! - a cap (`server.max_connections`, lowered to fit the open-file limit) over
//!   all listeners: a connection accepted at the cap is served once the
//!   oldest connection with no request in flight (idle, or still sending its
//!   header) is closed to make room. Nothing more is accepted meanwhile, so at
//!   most one socket per listener is open beyond the cap and `accept` does not
//!   run out of file descriptors. When every connection has a request in flight, the new
//!   one waits until one frees, and later ones in the listen backlog.
//!
//! Why not hyper's `header_read_timeout`: its clock starts whenever hyper
//! waits for a request head, after every response too, so it would also close
//! kept-alive connections after the header deadline; and hyper-util's protocol
//! sniffing (HTTP/1.1 or h2c) reads before hyper's clock runs, so a connection
//! that never sends a byte would stay open for ever. HTTP/2 has no idle
//! timeout at all. So a small watchdog per connection does both, from what it
//! sees: reads on the socket, requests handed to the service, response bodies
//! finished.
//!
//! Timed-out and evicted connections are dropped (closed) outright: none of
//! them has a request in flight. With HTTP/2 (h2c), a connection with no
//! stream open is idle, and any frame it then sends starts the header deadline.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tower::ServiceExt as _;
use tracing::{debug, error, info, warn};

use crate::config::ServerConfig;

/// The connection settings in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl ConnectionLimits {
    /// `[server]`'s settings, the cap lowered to fit this process's open-file
    /// limit; logged.
    pub fn from_config(server: &ServerConfig) -> ConnectionLimits {
        let fd_limit = open_file_limit();
        let limits = ConnectionLimits {
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            max_connections: fit_to_fd_limit(server.max_connections, fd_limit),
        };
        info!(
            header_read_timeout = ?limits.header_read_timeout,
            idle_timeout = ?limits.idle_timeout,
            max_connections = limits.max_connections,
            open_file_limit = fd_limit.map_or_else(|| "unlimited".to_string(), |n| n.to_string()),
            "connection limits"
        );
        // Lowering the default is routine (1024 open files allow 768); lowering a chosen value is worth a warning.
        if limits.max_connections < server.max_connections
            && server.max_connections != ServerConfig::default().max_connections
        {
            warn!(
                configured = server.max_connections,
                max_connections = limits.max_connections,
                "server.max_connections lowered to fit the open-file limit (raise `ulimit -n` / LimitNOFILE for more)"
            );
        }
        limits
    }
}

/// The most connections that fit in `fd_limit` (the soft `RLIMIT_NOFILE`;
/// `None`: unlimited) beside the process's other files — log and audit files,
/// connections to STS and the JWKS issuer, `ossvend local`'s object files —
/// which keep a quarter of it, at least 64.
pub fn fit_to_fd_limit(configured: usize, fd_limit: Option<u64>) -> usize {
    let Some(limit) = fd_limit else {
        return configured;
    };
    let reserve = (limit / 4).max(64);
    let room = usize::try_from(limit.saturating_sub(reserve)).unwrap_or(usize::MAX);
    configured.min(room).max(1)
}

/// The soft limit on open files, `None` when unlimited or unknown.
fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The connections of every listener of this process: one budget, since file
/// descriptors are per process.
pub struct Connections {
    limits: ConnectionLimits,
    /// By accept order: the first is the oldest.
    open: Mutex<BTreeMap<u64, Arc<Tracker>>>,
    next_id: AtomicU64,
    /// Notified when a connection is gone (its socket closed).
    freed: Notify,
}

/// Delay after an accept error other than a refused/reset connection (out of
/// file descriptors, memory...): doubles up to the maximum, so that a
/// persistent error is neither a busy loop nor a flood of log lines.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At the cap with every connection busy, how often to look again (a
/// connection turning idle is not notified).
const FULL_RECHECK: Duration = Duration::from_millis(50);

impl Connections {
    pub fn new(limits: ConnectionLimits) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            open: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            freed: Notify::new(),
        })
    }

    /// How many connections are open, all listeners together.
    pub fn open_count(&self) -> usize {
        self.open_map().len()
    }

    /// Serves `service` on `listener` until `shutdown` completes, then stops
    /// accepting and waits for the connections to finish their in-flight
    /// requests. Each request carries its peer address as [`ConnectInfo`].
    pub async fn serve<S>(
        self: &Arc<Self>,
        listener: TcpListener,
        service: S,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()>
    where
        S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        // Connections watch `shutdown` through this channel: it closes when the signal came.
        let (signal_tx, signal_rx) = watch::channel(());
        tokio::spawn(async move {
            shutdown.await;
            drop(signal_rx);
        });
        // Each connection holds a receiver; the loop waits for all of them to go.
        let (close_tx, close_rx) = watch::channel(());
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = signal_tx.closed() => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    // At the cap, this one waits (its socket the only one beyond it) until room is made.
                    tokio::select! {
                        _ = self.room() => {}
                        _ = signal_tx.closed() => break,
                    }
                    self.spawn_connection(stream, peer, service.clone(), &signal_tx, &close_rx);
                }
                // The client gave up before we accepted: nothing to do.
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    error!(retry_in = ?backoff, "accept error: {e}");
                    // Likely out of file descriptors: free one, if a connection can spare it.
                    self.evict_one();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = signal_tx.closed() => break,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
        drop(listener);
        drop(close_rx);
        close_tx.closed().await;
        Ok(())
    }

    fn open_map(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Tracker>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once there is room for one more connection, evicting the
    /// oldest one without a request in flight if needed.
    async fn room(&self) {
        let mut said_full = false;
        loop {
            let freed = self.freed.notified();
            let mut freed = pin!(freed);
            freed.as_mut().enable();
            match self.make_room() {
                Room::Free => return,
                // An evicted connection is closing; its slot frees shortly.
                Room::Pending => {}
                Room::Full => {
                    if !said_full {
                        warn!(
                            max_connections = self.limits.max_connections,
                            "server.max_connections reached and every connection has a request in flight; \
                             new connections wait until one frees"
                        );
                        said_full = true;
                    }
                }
            }
            let _ = tokio::time::timeout(FULL_RECHECK, freed).await;
        }
    }

    fn make_room(&self) -> Room {
        let open = self.open_map();
        if open.len() < self.limits.max_connections {
            return Room::Free;
        }
        if open.values().any(|t| t.state().evicted) {
            return Room::Pending;
        }
        if open.values().any(|t| t.evict()) {
            Room::Pending
        } else {
            Room::Full
        }
    }

    /// Evicts the oldest connection without a request in flight, if any.
    fn evict_one(&self) {
        let open = self.open_map();
        if !open.values().any(|t| t.state().evicted) {
            let _ = open.values().any(|t| t.evict());
        }
    }

    fn register(self: &Arc<Self>) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tracker = Arc::new(Tracker::new());
        let mut open = self.open_map();
        open.insert(id, tracker.clone());
        crate::prom::connections_open(open.len());
        Registered {
            connections: self.clone(),
            id,
            tracker,
        }
    }

    fn spawn_connection<S>(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        service: S,
        signal_tx: &watch::Sender<()>,
        close_rx: &watch::Receiver<()>,
    ) where
        S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let registered = self.register();
        let limits = self.limits;
        let signal_tx = signal_tx.clone();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, service, &registered, limits, &signal_tx).await;
            // serve_connection dropped the socket on return: only now does the slot count as free.
            drop(registered);
            drop(close_rx);
        });
    }
}

/// Serves one connection until it ends, the watchdog closes it, or (after a
/// shutdown signal) its in-flight requests are done.
async fn serve_connection<S>(
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    registered: &Registered,
    limits: ConnectionLimits,
    signal_tx: &watch::Sender<()>,
) where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let tracker = registered.tracker.clone();
    let io = TokioIo::new(TrackedIo {
        inner: stream,
        tracker: tracker.clone(),
    });
    let for_requests = tracker.clone();
    let hyper_service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let in_flight = InFlight::start(for_requests.clone());
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        let call = service.clone().oneshot(req);
        async move {
            let response = call.await?;
            // In flight until the response body is sent (or dropped).
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(InFlightBody {
                    body,
                    _in_flight: in_flight,
                })
            }))
        }
    });
    let mut builder = Builder::new(TokioExecutor::new());
    // Off: the watchdog keeps the header deadline (see the module docs).
    builder.http1().header_read_timeout(None);
    let mut conn = pin!(builder.serve_connection_with_upgrades(io, hyper_service));
    let mut watchdog = pin!(tracker.watch(&registered.connections, limits));
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = signal_tx.closed(), if !draining => {
                // Idle connections close now; in-flight requests finish first.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            reason = &mut watchdog => {
                debug!(%peer, reason = reason.label(), "closing connection: {}", reason.describe());
                crate::prom::connection_closed(reason.label());
                return;
            }
        }
    }
}

enum Room {
    Free,
    Pending,
    Full,
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// A connection's slot in [`Connections`]; freed on drop.
struct Registered {
    connections: Arc<Connections>,
    id: u64,
    tracker: Arc<Tracker>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut open = self.connections.open_map();
        open.remove(&self.id);
        crate::prom::connections_open(open.len());
        drop(open);
        self.connections.freed.notify_waiters();
    }
}

/// Why the watchdog closed a connection (the `reason` label of
/// `ossvend_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    HeaderTimeout,
    Idle,
    Evicted,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::Idle => "idle",
            CloseReason::Evicted => "evicted",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            CloseReason::HeaderTimeout => "no complete request header within server.header_read_timeout",
            CloseReason::Idle => "idle for server.idle_timeout",
            CloseReason::Evicted => {
                "server.max_connections reached; the oldest connection without a request in flight makes room"
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request header, since the connection's start or the
    /// first byte of the request.
    Header { since: Instant },
    /// Kept alive with nothing in flight, since the last response ended.
    Idle { since: Instant },
    /// Requests in flight (several with HTTP/2).
    Busy { requests: usize },
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Told to make room; honoured unless a request started meanwhile.
    evicted: bool,
}

/// What the watchdog knows about one connection.
struct Tracker {
    state: Mutex<State>,
    /// Set while idle: the next bytes read start a request's header.
    idle: AtomicBool,
    /// Wakes the watchdog when the deadline may have changed.
    wake: Notify,
}

impl Tracker {
    fn new() -> Tracker {
        Tracker {
            state: Mutex::new(State {
                phase: Phase::Header {
                    since: Instant::now(),
                },
                evicted: false,
            }),
            idle: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection for closing if no request is in flight.
    fn evict(&self) -> bool {
        let mut s = self.state();
        if matches!(s.phase, Phase::Busy { .. }) || s.evicted {
            return false;
        }
        s.evicted = true;
        drop(s);
        self.wake.notify_one();
        true
    }

    /// Bytes arrived: if the connection was idle, a request has started.
    fn bytes_read(&self) {
        // A plain load first: this runs on every read.
        if self.idle.load(Ordering::Relaxed) && self.idle.swap(false, Ordering::Relaxed) {
            let mut s = self.state();
            if let Phase::Idle { .. } = s.phase {
                s.phase = Phase::Header {
                    since: Instant::now(),
                };
            }
            drop(s);
            self.wake.notify_one();
        }
    }

    fn request_started(&self) {
        let mut s = self.state();
        s.phase = match s.phase {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            _ => Phase::Busy { requests: 1 },
        };
        self.idle.store(false, Ordering::Relaxed);
    }

    fn request_ended(&self) {
        let mut s = self.state();
        match s.phase {
            Phase::Busy { requests } if requests > 1 => {
                s.phase = Phase::Busy {
                    requests: requests - 1,
                };
            }
            _ => {
                s.phase = Phase::Idle {
                    since: Instant::now(),
                };
                self.idle.store(true, Ordering::Relaxed);
                drop(s);
                self.wake.notify_one();
            }
        }
    }

    /// Completes when the connection is to be closed: a deadline passed, or it
    /// was evicted while no request was in flight.
    async fn watch(&self, connections: &Connections, limits: ConnectionLimits) -> CloseReason {
        loop {
            let woken = self.wake.notified();
            let deadline = {
                let mut s = self.state();
                match s.phase {
                    Phase::Busy { .. } => {
                        if s.evicted {
                            // A request started first: it is kept; the acceptor looks for another.
                            s.evicted = false;
                            connections.freed.notify_waiters();
                        }
                        None
                    }
                    _ if s.evicted => return CloseReason::Evicted,
                    Phase::Header { since } => {
                        Some((since + limits.header_read_timeout, CloseReason::HeaderTimeout))
                    }
                    Phase::Idle { since } => Some((since + limits.idle_timeout, CloseReason::Idle)),
                }
            };
            match deadline {
                None => woken.await,
                Some((at, reason)) => {
                    if Instant::now() >= at {
                        return reason;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = woken => {}
                    }
                }
            }
        }
    }
}

/// One request in flight on a connection, from the service call until its
/// response body is finished or dropped.
struct InFlight(Arc<Tracker>);

impl InFlight {
    fn start(tracker: Arc<Tracker>) -> InFlight {
        tracker.request_started();
        InFlight(tracker)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A response body that keeps its request in flight while it is being sent.
struct InFlightBody {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for InFlightBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, telling the tracker when bytes arrive.
struct TrackedIo {
    inner: TcpStream,
    tracker: Arc<Tracker>,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.tracker.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use axum::Router;
    use axum::extract::State;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::{Semaphore, oneshot};

    use super::*;

    #[test]
    fn the_cap_leaves_a_quarter_of_the_open_file_limit_to_other_files() {
        assert_eq!(fit_to_fd_limit(4096, None), 4096);
        assert_eq!(fit_to_fd_limit(4096, Some(256)), 192);
        assert_eq!(fit_to_fd_limit(4096, Some(1024)), 768);
        assert_eq!(fit_to_fd_limit(4096, Some(1 << 20)), 4096);
        assert_eq!(fit_to_fd_limit(100, Some(1024)), 100);
        // At least 64 files stay free; never a cap of zero.
        assert_eq!(fit_to_fd_limit(4096, Some(100)), 36);
        assert_eq!(fit_to_fd_limit(4096, Some(10)), 1);
    }

    /// `/slow` waits for a permit of the gate; `/peer` answers with the client's address.
    struct App {
        gate: Arc<Semaphore>,
        entered: Arc<AtomicUsize>,
    }

    fn router(app: &App) -> Router {
        let (gate, entered) = (app.gate.clone(), app.entered.clone());
        Router::new()
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route(
                "/slow",
                get(
                    move |State((gate, entered)): State<(Arc<Semaphore>, Arc<AtomicUsize>)>| async move {
                        entered.fetch_add(1, Ordering::SeqCst);
                        let _permit = gate.acquire().await;
                        "done"
                    },
                ),
            )
            .with_state((gate, entered))
    }

    struct Running {
        addr: SocketAddr,
        connections: Arc<Connections>,
        app: App,
        stop: Option<oneshot::Sender<()>>,
        served: tokio::task::JoinHandle<io::Result<()>>,
    }

    async fn start(max_connections: usize) -> Running {
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            max_connections,
        };
        let connections = Connections::new(limits);
        let app = App {
            gate: Arc::new(Semaphore::new(0)),
            entered: Arc::new(AtomicUsize::new(0)),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let c = connections.clone();
        let service = router(&app);
        let served = tokio::spawn(async move {
            c.serve(listener, service, async {
                let _ = stopped.await;
            })
            .await
        });
        Running {
            addr,
            connections,
            app,
            stop: Some(stop),
            served,
        }
    }

    /// Polls `cond` every 10 ms for up to 10 s.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..1000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// Reads until the peer closes (or 10 s pass); what it sent, and whether it closed.
    async fn read_to_close(s: &mut TcpStream) -> (String, bool) {
        let mut out = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .is_ok();
        (String::from_utf8_lossy(&out).to_string(), closed)
    }

    async fn send(addr: SocketAddr, path: &str, close: bool) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let connection = if close { "close" } else { "keep-alive" };
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: {connection}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        s
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_idle_connection_makes_room_and_busy_ones_are_kept() {
        let r = start(2).await;
        // The oldest connection is busy: a request in flight.
        let mut busy = send(r.addr, "/slow", true).await;
        until("the slow request", || r.app.entered.load(Ordering::SeqCst) == 1).await;
        // Then one that sends nothing.
        let mut idle = TcpStream::connect(r.addr).await.unwrap();
        until("two open connections", || r.connections.open_count() == 2).await;

        // A third: the idle one is closed for it, not the busy one.
        let mut third = send(r.addr, "/peer", true).await;
        let (answer, closed) = read_to_close(&mut third).await;
        assert!(closed && answer.starts_with("HTTP/1.1 200"), "{answer}");
        // ConnectInfo reaches the handlers: the peer is the third connection itself.
        assert!(
            answer.ends_with(&third.local_addr().unwrap().to_string()),
            "{answer}"
        );
        let (sent, closed) = read_to_close(&mut idle).await;
        assert!(
            closed && sent.is_empty(),
            "the idle connection was closed without a response: {sent:?}"
        );

        r.app.gate.add_permits(1);
        let (answer, _) = read_to_close(&mut busy).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"),
            "{answer}"
        );
        until("no open connection", || r.connections.open_count() == 0).await;
    }

    #[tokio::test]
    async fn at_the_cap_with_every_connection_busy_a_new_one_waits_for_a_free_slot() {
        let r = start(1).await;
        let mut busy = send(r.addr, "/slow", true).await;
        until("the slow request", || r.app.entered.load(Ordering::SeqCst) == 1).await;
        let mut waiting = send(r.addr, "/peer", true).await;
        let mut buf = [0u8; 64];
        // Not served while the only slot is busy (and never by evicting the busy connection).
        let early = tokio::time::timeout(Duration::from_millis(300), waiting.read(&mut buf)).await;
        assert!(early.is_err(), "answered at the cap: {early:?}");
        assert_eq!(r.connections.open_count(), 1);

        r.app.gate.add_permits(1);
        let (answer, _) = read_to_close(&mut busy).await;
        assert!(answer.ends_with("done"), "{answer}");
        let (answer, closed) = read_to_close(&mut waiting).await;
        assert!(
            closed && answer.starts_with("HTTP/1.1 200"),
            "served once the slot freed: {answer}"
        );
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_lets_in_flight_requests_finish() {
        let mut r = start(100).await;
        let mut busy = send(r.addr, "/slow", true).await;
        until("the slow request", || r.app.entered.load(Ordering::SeqCst) == 1).await;
        // A kept-alive connection after its response.
        let mut kept = send(r.addr, "/peer", false).await;
        let mut buf = [0u8; 1024];
        let n = kept.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

        r.stop.take().unwrap().send(()).unwrap();
        let (rest, closed) = read_to_close(&mut kept).await;
        assert!(
            closed && !rest.contains("HTTP/1.1"),
            "the idle connection closes on shutdown: {rest:?}"
        );
        assert!(!r.served.is_finished(), "serve waits for the in-flight request");

        r.app.gate.add_permits(1);
        let (answer, _) = read_to_close(&mut busy).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"),
            "{answer}"
        );
        tokio::time::timeout(Duration::from_secs(10), r.served)
            .await
            .expect("serve returns once the last request is done")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn http2_prior_knowledge_is_still_served() {
        let r = start(100).await;
        crate::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let response = client
            .get(format!("http://{}/peer", r.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), 200);
    }
}
