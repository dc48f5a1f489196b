//! Request bodies: capped while they stream in, spooled to a temp file or kept in memory.

use super::*;

/// Why a [`Capped`] body ended early.
#[derive(Debug, Clone, Copy)]
pub(super) enum Cut {
    TooLarge,
    Unreadable,
}

impl Cut {
    pub(super) fn error(self) -> OssError {
        match self {
            Cut::TooLarge => OssError::new("EntityTooLarge"),
            Cut::Unreadable => OssError::msg("InvalidArgument", "The request body could not be read."),
        }
    }
}

/// A request body as a stream of chunks, cut off beyond `max_object_bytes`
/// (EntityTooLarge), so that no body is ever held or stored whole by accident.
pub(super) struct Capped {
    pub(super) inner: axum::body::BodyDataStream,
    pub(super) total: u64,
    pub(super) cap: u64,
    pub(super) cut: Option<Cut>,
    /// Bytes handed out since the stream last answered `Pending`.
    pub(super) burst: usize,
}

/// multer buffers every chunk that is ready before it parses, and over loopback
/// a fast client keeps the socket ready: its buffer would grow at the client's
/// pace, not the disk's. After this many bytes the stream yields once, so the
/// parser (and the spool's bounded queue) sets the pace.
pub(super) const BURST_BYTES: usize = 256 * 1024;

impl Stream for Capped {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.cut.is_some() {
            return Poll::Ready(None);
        }
        if self.burst >= BURST_BYTES {
            self.burst = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let cut = match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
            None => return Poll::Ready(None),
            Some(Ok(data)) => {
                self.burst += data.len();
                self.total += data.len() as u64;
                if self.total <= self.cap {
                    return Poll::Ready(Some(Ok(data)));
                }
                Cut::TooLarge
            }
            Some(Err(_)) => Cut::Unreadable,
        };
        self.cut = Some(cut);
        Poll::Ready(Some(Err(std::io::Error::other(format!("{cut:?}")))))
    }
}

impl Capped {
    pub(super) fn new(body: Body, cap: u64) -> Self {
        Capped {
            inner: body.into_data_stream(),
            total: 0,
            cap,
            cut: None,
            burst: 0,
        }
    }

    pub(super) async fn next_chunk(&mut self) -> Option<Result<Bytes, OssError>> {
        let next = poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await?;
        Some(next.map_err(|_| self.cut.unwrap_or(Cut::Unreadable).error()))
    }

    /// Reads and drops the rest: the error a read-it-all-first reader meets first
    /// (too large, unreadable) wins over what the parser found.
    pub(super) async fn drain(&mut self) -> Result<(), OssError> {
        while let Some(chunk) = self.next_chunk().await {
            chunk?;
        }
        self.cut.map_or(Ok(()), |c| Err(c.error()))
    }

    pub(super) async fn into_memory(mut self) -> Result<Bytes, OssError> {
        let mut buf = Vec::new();
        while let Some(chunk) = self.next_chunk().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(Bytes::from(buf))
    }
}

/// A body being written to `tmp/` by a blocking task, chunk by chunk (hashed on
/// the way); a bounded queue, so a fast client never piles chunks up in memory.
/// Dropped unfinished, the temp file is deleted.
pub(super) struct SpoolTask {
    pub(super) tx: tokio::sync::mpsc::Sender<Bytes>,
    pub(super) task: tokio::task::JoinHandle<std::io::Result<Spooled>>,
}

impl SpoolTask {
    pub(super) fn start(data_dir: PathBuf) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let task = tokio::task::spawn_blocking(move || {
            let mut spool = store::Spool::create(&data_dir)?;
            while let Some(chunk) = rx.blocking_recv() {
                spool.write(&chunk)?;
            }
            spool.finish()
        });
        SpoolTask { tx, task }
    }

    /// False once the writer has failed (`finish` says why).
    pub(super) async fn write(&self, data: Bytes) -> bool {
        self.tx.send(data).await.is_ok()
    }

    pub(super) async fn finish(self) -> Result<Spooled, OssError> {
        drop(self.tx);
        let failed = || OssError::msg("InternalError", "The request body could not be stored.");
        match self.task.await {
            Ok(Ok(spooled)) => Ok(spooled),
            Ok(Err(e)) => {
                tracing::warn!(target: "ossvend::local::oss", error = %e, "could not spool a request body");
                Err(failed())
            }
            Err(_) => Err(failed()),
        }
    }
}

/// Reads the body up to `max_object_bytes` (EntityTooLarge beyond, as soon as
/// the length is known). PUT bodies are spooled to disk, forms left to stream,
/// others kept in memory.
pub(super) async fn read_body(
    state: &LocalState,
    parts: &axum::http::request::Parts,
    body: Body,
    is_form: bool,
) -> Result<BodyData, OssError> {
    let cap = state.max_object_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap) {
        return Err(OssError::new("EntityTooLarge"));
    }
    let mut body = Capped::new(body, cap);
    if parts.method == Method::POST && is_form {
        return Ok(BodyData::Unread(body));
    }
    if parts.method != Method::PUT {
        return body.into_memory().await.map(BodyData::Memory);
    }
    let spool = SpoolTask::start(state.data_dir.clone());
    let mut outcome = Ok(());
    while let Some(chunk) = body.next_chunk().await {
        match chunk {
            Ok(data) => {
                if !spool.write(data).await {
                    break; // the writer failed: `finish` reports it
                }
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    let written = spool.finish().await;
    outcome?;
    written.map(BodyData::Spooled)
}
