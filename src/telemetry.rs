//! Logging: `tracing` to stderr, text or JSON, filtered by `RUST_LOG`
//! (default `info`). Nothing logs a secret: credentials types redact in `Debug`
//! and log lines carry AccessKey id prefixes only.
//!
//! Lines are written by a background thread (tracing-appender) through a
//! buffer that is flushed whenever the queue runs empty: under load one
//! `write(2)` carries many lines instead of one each, and a slow log sink never
//! blocks a request while the queue has room. The queue is not lossy — when it
//! is full, logging waits — because audit lines must not be dropped.

use std::fmt::{self, Write as _};
use std::io::BufWriter;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Installs the subscriber. Keep the guard until the process ends: dropping it
/// writes out what is still queued. `None` if a subscriber was already set.
#[must_use = "dropping the guard stops the log writer"]
pub fn init(format: LogFormat) -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        // The queue is allocated up front (the default, 128,000 lines, is ~4 MiB);
        // 8,192 lines is a few seconds of a busy server's lines.
        .buffered_lines_limit(8192)
        .thread_name("ossvend-log")
        // The worker flushes this buffer each time it has emptied its queue.
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_timer(Timestamp);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(false)
            .fmt_fields(PlainFields)
            .event_format(PlainLine { timer: Timestamp })
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    installed.ok().map(|()| guard)
}

/// The text format's line: the bytes tracing-subscriber's default (`Full`)
/// format writes without colours — `time  LEVEL span{fields}: target: fields` —
/// in a dozen plain writes. The default spends one `write!` per part, each
/// through its ANSI styling even when styling is off; for a log line per
/// request that was a tenth of a cached credential's cost.
pub struct PlainLine<T> {
    pub timer: T,
}

impl<S, N, T> FormatEvent<S, N> for PlainLine<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        // Records from the `log` crate carry their real target and level as fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if self.timer.format_time(&mut w).is_err() {
            w.write_str("<unknown time>")?;
        }
        w.write_str(match *meta.level() {
            Level::TRACE => " TRACE ",
            Level::DEBUG => " DEBUG ",
            Level::INFO => "  INFO ",
            Level::WARN => "  WARN ",
            Level::ERROR => " ERROR ",
        })?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                w.write_str(span.metadata().name())?;
                seen = true;
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    w.write_char('{')?;
                    w.write_str(fields)?;
                    w.write_char('}')?;
                }
                w.write_char(':')?;
            }
            if seen {
                w.write_char(' ')?;
            }
        }
        w.write_str(meta.target())?;
        w.write_str(": ")?;
        ctx.format_fields(w.by_ref(), event)?;
        w.write_char('\n')
    }
}

/// The text format's fields, spelled as tracing-subscriber's default spells
/// them without colours (`name="value"`, numbers bare, the message first and
/// unquoted), but without going through its styling and `Debug` machinery for
/// every plain string: an audit line has a dozen fields, and that machinery
/// was a third of the CPU a cached credential costs. Strings that need
/// escaping still get `Debug`'s escaping, so the output is the same.
pub struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = PlainVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct PlainVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// Writes the separator and the field's name; `false` if the field is skipped.
    fn start(&mut self, field: &Field) -> bool {
        let name = field.name();
        // `log` crate records carry their metadata as fields the formatter already shows.
        if self.result.is_err() || name.starts_with("log.") {
            return false;
        }
        if !std::mem::take(&mut self.first) {
            self.result = self.writer.write_char(' ');
        }
        if name != "message" {
            let name = name.strip_prefix("r#").unwrap_or(name);
            self.result = self.result.and_then(|()| {
                self.writer.write_str(name)?;
                self.writer.write_char('=')
            });
        }
        true
    }
}

/// Characters `str`'s `Debug` leaves as they are: printable ASCII but `"` and
/// `\`, and the `…` that ends every logged AccessKey id prefix.
fn needs_no_escaping(s: &str) -> bool {
    let plain = |c: char| (c.is_ascii_graphic() || c == ' ') && c != '"' && c != '\\';
    // Bytes first (the common, all-ASCII case), without an early exit so that
    // the loop vectorises; chars only when that fails.
    s.bytes().fold(true, |ok, b| {
        ok & (b' '..=b'~').contains(&b) & (b != b'"') & (b != b'\\')
    }) || s.chars().all(|c| plain(c) || c == '…')
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.start(field) {
            return;
        }
        let w = &mut self.writer;
        self.result = if field.name() == "message" {
            write_message(w, value)
        } else if needs_no_escaping(value) {
            w.write_char('"')
                .and_then(|()| w.write_str(value))
                .and_then(|()| w.write_char('"'))
        } else {
            write!(w, "{value:?}")
        };
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if !self.start(field) {
            return;
        }
        let text = value.to_string();
        self.result = write_message(&mut self.writer, &text);
        let mut source = value.source();
        if source.is_some() {
            let name = field.name();
            self.result = self
                .result
                .and_then(|()| write!(self.writer, " {name}.sources=["));
            let mut sep = "";
            while let Some(s) = source {
                let text = s.to_string();
                self.result = self.result.and_then(|()| {
                    self.writer.write_str(sep)?;
                    write_message(&mut self.writer, &text)
                });
                sep = ", ";
                source = s.source();
            }
            self.result = self.result.and_then(|()| self.writer.write_char(']'));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.start(field) {
            return;
        }
        self.result = if field.name() == "message" {
            write!(NoControl(&mut self.writer), "{value:?}")
        } else {
            write!(self.writer, "{value:?}")
        };
    }
}

/// Free text (messages, errors) as is, but no terminal control sequence
/// reaches the log: control characters are written escaped.
fn write_message(w: &mut Writer<'_>, text: &str) -> fmt::Result {
    NoControl(w).write_str(text)
}

struct NoControl<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for NoControl<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if !text.chars().any(char::is_control) {
            return self.0.write_str(text);
        }
        for c in text.chars() {
            if c.is_control() {
                write!(self.0, "{}", c.escape_default())?;
            } else {
                self.0.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// tracing-subscriber's default timestamp (`2026-11-24T00:15:51.123456Z`), with
/// the part up to the second written once per second per thread: the default
/// timer formats every field of every line through `write!`.
struct Timestamp;

impl FormatTime for Timestamp {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        use std::cell::RefCell;
        thread_local! {
            static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
        }
        let now = chrono::Utc::now();
        let (secs, micros) = (now.timestamp(), now.timestamp_subsec_micros().min(999_999));
        SECOND.with_borrow_mut(|(second, text)| {
            if *second != secs {
                *text = crate::sign::format_iso8601_extended(now);
                text.pop(); // the `Z`
                *second = secs;
            }
            w.write_str(text)?;
            w.write_str(std::str::from_utf8(&micros_z(micros)).map_err(|_| fmt::Error)?)
        })
    }
}

/// `.uuuuuuZ`
fn micros_z(micros: u32) -> [u8; 8] {
    let mut frac = *b".000000Z";
    let mut v = micros;
    for d in frac[1..7].iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    frac
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing::{info, info_span, warn};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[derive(Debug)]
    struct Oops;
    impl std::fmt::Display for Oops {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("it broke")
        }
    }
    impl std::error::Error for Oops {}

    fn events() {
        let span = info_span!("request", request_id = %"4f1c-aa", n = 3);
        let _g = span.enter();
        info!(
            kind = "credentials",
            grant = "browser-upload",
            subject = "anonymous",
            access_key_id = "STS.NSNf…",
            "issued {}",
            "credentials"
        );
        info!(
            quoted = "say \"hi\" \\ there",
            unicode = "héllo wörld ✓",
            empty = "",
            "odd strings"
        );
        info!(
            tab = "a\tb",
            newline = "a\nb",
            ctrl = "\u{1b}[31mred",
            "control characters in values"
        );
        info!(n = 42u64, neg = -7i64, yes = true, ratio = 0.5f64, shown = %"display", debugged = ?("a", 1));
        warn!(
            error = &Oops as &(dyn std::error::Error + 'static),
            latency_ms = 3u64,
            "failed"
        );
        info!(r#type = "raw name", "raw identifiers");
    }

    /// What `events` writes through the subscriber `make` builds on a buffer.
    fn output<S>(make: impl FnOnce(Buf) -> S, events: fn()) -> String
    where
        S: tracing::Subscriber + Send + Sync + 'static,
    {
        let buf = Buf::default();
        tracing::subscriber::with_default(make(buf.clone()), events);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    /// Untimed, uncoloured lines with our field formatter (`plain`) or the default one.
    fn capture(plain: bool, events: fn()) -> String {
        let untimed = |b: Buf| {
            tracing_subscriber::fmt()
                .with_writer(b)
                .with_ansi(false)
                .without_time()
        };
        if plain {
            output(|b| untimed(b).fmt_fields(super::PlainFields).finish(), events)
        } else {
            output(|b| untimed(b).finish(), events)
        }
    }

    /// Same bytes as tracing-subscriber's own field formatting, for everything
    /// but control characters in free text.
    #[test]
    fn plain_fields_spell_fields_like_the_default_formatter() {
        let (ours, theirs) = (capture(true, events), capture(false, events));
        assert_eq!(ours.lines().count(), 6, "{ours}");
        for (a, b) in ours.lines().zip(theirs.lines()) {
            assert_eq!(a, b);
        }
        assert!(ours.contains(r#"request{request_id=4f1c-aa n=3}"#), "{ours}");
        assert!(
            ours.contains(r#"issued credentials kind="credentials" grant="browser-upload""#),
            "{ours}"
        );
    }

    struct FixedTime;
    impl tracing_subscriber::fmt::time::FormatTime for FixedTime {
        fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
            w.write_str("2026-11-24T00:15:51.123456Z")
        }
    }

    fn every_level_and_nesting() {
        tracing::error!(outside = "any span", "no span");
        events();
        let outer = tracing::error_span!("request", request_id = %"r-1");
        let _o = outer.enter();
        let inner = tracing::trace_span!("empty");
        let _i = inner.enter();
        let third = info_span!("grant", name = "avatars");
        let _t = third.enter();
        tracing::trace!(a = 1u64, "trace");
        tracing::debug!("debug");
        tracing::error!(target: "ossvend::audit", b = "x", "error");
    }

    fn capture_lines(ours: bool) -> String {
        let timed = |b: Buf| {
            tracing_subscriber::fmt()
                .with_writer(b)
                .with_ansi(false)
                .with_max_level(tracing::Level::TRACE)
                .with_timer(FixedTime)
                .fmt_fields(super::PlainFields)
        };
        if ours {
            let line = super::PlainLine { timer: FixedTime };
            output(|b| timed(b).event_format(line).finish(), every_level_and_nesting)
        } else {
            output(|b| timed(b).finish(), every_level_and_nesting)
        }
    }

    /// Same bytes as tracing-subscriber's default line format without colours.
    #[test]
    fn plain_lines_are_the_default_format() {
        let (ours, theirs) = (capture_lines(true), capture_lines(false));
        assert_eq!(ours.lines().count(), 10, "{ours}");
        assert_eq!(ours, theirs);
        assert!(
            ours.contains("2026-11-24T00:15:51.123456Z TRACE request{request_id=r-1}:empty:grant{name=\"avatars\"}: ossvend::telemetry::tests: trace a=1\n"),
            "{ours}"
        );
        assert!(
            ours.starts_with(
                "2026-11-24T00:15:51.123456Z ERROR ossvend::telemetry::tests: no span outside=\"any span\"\n"
            ),
            "{ours}"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds_like_the_default_timer() {
        use tracing_subscriber::fmt::time::FormatTime as _;
        assert_eq!(&super::micros_z(0), b".000000Z");
        assert_eq!(&super::micros_z(42), b".000042Z");
        assert_eq!(&super::micros_z(999_999), b".999999Z");
        for _ in 0..3 {
            let (mut ours, mut theirs) = (String::new(), String::new());
            super::Timestamp
                .format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut ours))
                .unwrap();
            tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut theirs))
                .unwrap();
            assert_eq!(ours.len(), theirs.len(), "{ours} {theirs}");
            let (a, b) = (
                chrono::DateTime::parse_from_rfc3339(&ours).unwrap(),
                chrono::DateTime::parse_from_rfc3339(&theirs).unwrap(),
            );
            assert!((b - a).num_milliseconds().abs() < 1000, "{ours} {theirs}");
            assert_eq!(ours.as_bytes()[19], b'.', "{ours}");
        }
    }

    #[test]
    fn control_characters_in_messages_are_escaped() {
        let out = capture(true, || info!("bell \u{7} and {}", "\u{1b}[2J"));
        assert!(out.contains(r"bell \u{7} and \u{1b}[2J"), "{out}");
        assert!(!out.contains('\u{1b}'), "{out}");
    }
}
