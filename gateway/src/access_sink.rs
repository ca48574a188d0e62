//! Where access log lines go: each call's line is formatted on the thread
//! that ends the call, into a buffer that thread reuses, appended to a
//! shared batch under a short lock, and written by one writer thread in
//! batches — one `write` for many lines instead of one per line, and no
//! call ever waits for stdout. The writer collects for up to
//! [`FLUSH_INTERVAL`] (or [`FLUSH_BYTES`]) before it writes, as Envoy's
//! file access log does (1 s there), so a call costs no system call and no
//! thread wake-up, even one call at a time.
//!
//! # Why not a `tracing` event per line
//! The line used to be an `info!` event formatted by the kit's `fmt` layer:
//! field visitors, a fresh timestamp format, the span context, and a `write`
//! on stdout's lock per call, on the worker thread in the middle of the
//! call. That was about a quarter of the gateway's CPU per call. The line
//! still honours the log filter (`RUST_LOG`, e.g.
//! `mesh_gateway::access=off`) as the event did, and follows the process's
//! log format: the kit's human line (`<time>  INFO mesh_gateway::access:
//! call service=..`) or, when the subscriber formats JSON, the same object
//! the JSON formatter writes (`"fields"` with `"message":"call"`).
//!
//! # Bounds and shutdown
//! A stdout that stops taking bytes (a stuck log collector) must not stop
//! the gateway nor grow it without bound: past [`MAX_PENDING_BYTES`]
//! waiting, lines are dropped and counted, and the count is logged as a
//! warning once writing resumes. [`AccessLogSink::close`] (also on drop)
//! writes everything pending before it returns; a line that arrives after
//! that is written at once, so no call that ended is lost.

use std::cell::RefCell;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The target the lines are filtered and labelled by, as the event was.
pub(crate) const ACCESS_TARGET: &str = "mesh_gateway::access";
/// Bytes waiting for the writer beyond which new lines are dropped: about
/// 30,000 lines, a few seconds of a busy gateway.
const MAX_PENDING_BYTES: usize = 8 * 1024 * 1024;
/// How long the writer lets lines gather before writing them: short enough
/// for someone tailing the log, long enough that a write carries hundreds.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Pending bytes at which the writer writes without waiting out the interval.
const FLUSH_BYTES: usize = 64 * 1024;

/// How lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LineFormat {
    /// As the kit's human (compact) log lines.
    Human,
    /// As the kit's JSON log lines.
    Json,
}

impl LineFormat {
    /// The format of the process's log subscriber: JSON when its `fmt`
    /// layer formats fields as JSON (found through `Dispatch::downcast_ref`,
    /// which a `fmt` layer answers for its field formatter), else human.
    pub(crate) fn of_current_subscriber() -> Self {
        let is_json =
            tracing::dispatcher::get_default(tracing::Dispatch::is::<tracing_subscriber::fmt::format::JsonFields>);
        if is_json { Self::Json } else { Self::Human }
    }
}

/// What one call's line says. Borrowed from the call's record, so building
/// it allocates nothing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AccessLine<'a> {
    pub(crate) service: &'a str,
    pub(crate) method: &'a str,
    pub(crate) grpc_status: u16,
    pub(crate) duration_us: u64,
    pub(crate) request_bytes: u64,
    pub(crate) response_bytes: u64,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) correlation_id: &'a str,
    pub(crate) caller: &'a str,
}

/// The sink of one gateway's access log; see the module docs.
pub(crate) struct AccessLogSink {
    format: LineFormat,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AccessLogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogSink").field("format", &self.format).finish_non_exhaustive()
    }
}

/// What the calls and the writer thread share.
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer: for the first line while it idles, at
    /// [`FLUSH_BYTES`] while it collects, and on close. Signalled only when
    /// it waits for exactly that, since each signal is a system call.
    wake_writer: Condvar,
    /// Held while bytes are written, by the writer thread or, after close, by a late line.
    output: Mutex<Box<dyn Write + Send>>,
    max_pending_bytes: usize,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Lines dropped since the last warning because `bytes` was full.
    dropped: u64,
    is_closed: bool,
    writer: WriterState,
}

/// What the writer thread is doing, so a call signals it only when needed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum WriterState {
    /// Waiting for a first line, without a timeout.
    Idle,
    /// Letting lines gather for [`FLUSH_INTERVAL`].
    Collecting,
    /// Writing a batch; it looks at the pending lines again when done.
    #[default]
    Writing,
}

thread_local! {
    /// The line being formatted on this thread; its capacity is reused.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    /// The formatted `YYYY-MM-DDTHH:MM:SS` of the second last seen on this thread.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl AccessLogSink ===

impl AccessLogSink {
    /// A sink writing to stdout, where the kit's log lines go, in the
    /// current subscriber's format.
    pub(crate) fn stdout() -> Arc<Self> {
        Self::new(Box::new(std::io::stdout()), LineFormat::of_current_subscriber(), MAX_PENDING_BYTES)
    }

    /// A sink writing `format` lines to `output`, dropping lines while more
    /// than `max_pending_bytes` wait.
    pub(crate) fn new(output: Box<dyn Write + Send>, format: LineFormat, max_pending_bytes: usize) -> Arc<Self> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake_writer: Condvar::new(),
            output: Mutex::new(output),
            max_pending_bytes,
        });
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_batches(&writer_shared))
            .map_err(|error| tracing::warn!(%error, "cannot start the access log writer; lines are written inline"))
            .ok();
        if writer.is_none() {
            lock(&shared.pending).is_closed = true;
        }
        Arc::new(Self { format, shared, writer: Mutex::new(writer) })
    }

    /// Whether the log filter lets access lines through (`RUST_LOG`), as it
    /// decided for the `info` event the line used to be. Cheap: the filter's
    /// answer for this call site is cached.
    pub(crate) fn is_enabled() -> bool {
        tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO)
    }

    /// Adds one call's line. Never waits for the output while the writer runs.
    pub(crate) fn record(&self, line: &AccessLine<'_>) {
        LINE.with_borrow_mut(|buffer| {
            buffer.clear();
            format_line(buffer, self.format, SystemTime::now(), line);
            let mut pending = lock(&self.shared.pending);
            if pending.is_closed {
                drop(pending);
                // The writer has finished; this late line goes out now rather than never.
                let mut output = lock(&self.shared.output);
                let _ = output.write_all(buffer).and_then(|()| output.flush());
                return;
            }
            if pending.bytes.len() + buffer.len() > self.shared.max_pending_bytes {
                pending.dropped += 1;
                return;
            }
            let before = pending.bytes.len();
            pending.bytes.extend_from_slice(buffer);
            let wakes_writer = match pending.writer {
                WriterState::Idle => before == 0,
                WriterState::Collecting => before < FLUSH_BYTES && pending.bytes.len() >= FLUSH_BYTES,
                WriterState::Writing => false,
            };
            drop(pending);
            if wakes_writer {
                self.shared.wake_writer.notify_one();
            }
        });
    }

    /// Writes every pending line, stops the writer thread, and returns once
    /// both are done; lines recorded later are written at once.
    pub(crate) fn close(&self) {
        lock(&self.shared.pending).is_closed = true;
        self.shared.wake_writer.notify_one();
        if let Some(writer) = lock(&self.writer).take() {
            let _ = writer.join();
        }
    }
}

impl Drop for AccessLogSink {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread: waits for a line, lets more gather, takes the whole
/// batch, writes it with one call, and starts again; on close, writes what
/// is left and returns.
fn write_batches(shared: &Shared) {
    let mut batch = Vec::with_capacity(FLUSH_BYTES);
    loop {
        let (dropped, is_closed) = {
            let mut pending = lock(&shared.pending);
            while pending.bytes.is_empty() && !pending.is_closed {
                pending.writer = WriterState::Idle;
                pending = shared.wake_writer.wait(pending).unwrap_or_else(PoisonError::into_inner);
            }
            if !pending.is_closed && pending.bytes.len() < FLUSH_BYTES {
                pending.writer = WriterState::Collecting;
                // An early or spurious wake-up only writes a smaller batch.
                pending =
                    shared.wake_writer.wait_timeout(pending, FLUSH_INTERVAL).unwrap_or_else(PoisonError::into_inner).0;
            }
            pending.writer = WriterState::Writing;
            // Swapped, not copied: the calls append to the batch this thread wrote last.
            batch.clear();
            std::mem::swap(&mut batch, &mut pending.bytes);
            (std::mem::take(&mut pending.dropped), pending.is_closed)
        };
        if !batch.is_empty() {
            let mut output = lock(&shared.output);
            if let Err(error) = output.write_all(&batch).and_then(|()| output.flush()) {
                drop(output);
                tracing::warn!(%error, "cannot write the access log");
            }
        }
        if dropped > 0 {
            tracing::warn!(dropped, "access log lines dropped: the log output did not keep up");
        }
        if is_closed && lock(&shared.pending).bytes.is_empty() {
            return;
        }
    }
}

// === formatting ===

/// Appends one line, ending in `\n`, in `format`.
fn format_line(buffer: &mut Vec<u8>, format: LineFormat, now: SystemTime, line: &AccessLine<'_>) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    match format {
        LineFormat::Human => {
            push_timestamp(buffer, since_epoch.as_secs(), since_epoch.subsec_micros());
            buffer.extend_from_slice(b"  INFO ");
            buffer.extend_from_slice(ACCESS_TARGET.as_bytes());
            buffer.extend_from_slice(b": call service=");
            push_quoted(buffer, line.service);
            buffer.extend_from_slice(b" method=");
            push_quoted(buffer, line.method);
            let _ = write!(
                buffer,
                " grpc_status={} duration_us={} request_bytes={} response_bytes={} peer=",
                line.grpc_status, line.duration_us, line.request_bytes, line.response_bytes
            );
            push_peer(buffer, line.peer);
            buffer.extend_from_slice(b" correlation_id=");
            push_quoted(buffer, line.correlation_id);
            buffer.extend_from_slice(b" caller=");
            push_quoted(buffer, line.caller);
        }
        LineFormat::Json => {
            buffer.extend_from_slice(b"{\"timestamp\":\"");
            push_timestamp(buffer, since_epoch.as_secs(), since_epoch.subsec_micros());
            buffer.extend_from_slice(b"\",\"level\":\"INFO\",\"fields\":{\"message\":\"call\",\"service\":");
            push_quoted(buffer, line.service);
            buffer.extend_from_slice(b",\"method\":");
            push_quoted(buffer, line.method);
            let _ = write!(
                buffer,
                ",\"grpc_status\":{},\"duration_us\":{},\"request_bytes\":{},\"response_bytes\":{},\"peer\":",
                line.grpc_status, line.duration_us, line.request_bytes, line.response_bytes
            );
            push_peer(buffer, line.peer);
            buffer.extend_from_slice(b",\"correlation_id\":");
            push_quoted(buffer, line.correlation_id);
            buffer.extend_from_slice(b",\"caller\":");
            push_quoted(buffer, line.caller);
            buffer.extend_from_slice(b"},\"target\":\"");
            buffer.extend_from_slice(ACCESS_TARGET.as_bytes());
            buffer.extend_from_slice(b"\"}");
        }
    }
    buffer.push(b'\n');
}

/// `"<peer>"`, or `""` when the peer is unknown.
fn push_peer(buffer: &mut Vec<u8>, peer: Option<SocketAddr>) {
    buffer.push(b'"');
    if let Some(peer) = peer {
        // A socket address has no character that needs escaping.
        let _ = write!(buffer, "{peer}");
    }
    buffer.push(b'"');
}

/// `value` in double quotes, escaped as JSON escapes it: every line stays
/// one line and one JSON value, whatever a caller put in its path or id.
fn push_quoted(buffer: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buffer.push(b'"');
    for &byte in value.as_bytes() {
        match byte {
            b'"' => buffer.extend_from_slice(b"\\\""),
            b'\\' => buffer.extend_from_slice(b"\\\\"),
            b'\n' => buffer.extend_from_slice(b"\\n"),
            b'\r' => buffer.extend_from_slice(b"\\r"),
            b'\t' => buffer.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f => {
                buffer.extend_from_slice(b"\\u00");
                buffer.push(HEX[usize::from(byte >> 4)]);
                buffer.push(HEX[usize::from(byte & 0xf)]);
            }
            _ => buffer.push(byte),
        }
    }
    buffer.push(b'"');
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds), as the kit's lines
/// print time. The date and time of day are formatted once per second per
/// thread.
fn push_timestamp(buffer: &mut Vec<u8>, unix_seconds: u64, micros: u32) {
    SECOND.with_borrow_mut(|(cached_second, text)| {
        if *cached_second != unix_seconds {
            *text = format_second(unix_seconds);
            *cached_second = unix_seconds;
        }
        buffer.extend_from_slice(text);
    });
    let _ = write!(buffer, ".{micros:06}Z");
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time, by the days-to-civil algorithm of
/// Howard Hinnant's `chrono`-compatible date library (proleptic Gregorian).
fn format_second(unix_seconds: u64) -> [u8; 19] {
    let days = unix_seconds / 86_400;
    let second_of_day = unix_seconds % 86_400;
    // Shift the epoch to 0000-03-01, so leap days fall at the end of each 400-year era's years.
    let days_since_0000_03_01 = days + 719_468;
    let era = days_since_0000_03_01 / 146_097;
    let day_of_era = days_since_0000_03_01 % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    let mut text = [0u8; 19];
    let mut cursor = &mut text[..];
    let _ = write!(
        cursor,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    );
    text
}

/// An output that tests of the sink and of the access-log layer read back.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl Captured {
    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// An output whose first write waits until the test lets it go, as a
    /// stuck log collector would.
    struct Gated {
        open: Option<mpsc::Receiver<()>>,
        captured: Captured,
    }

    impl Write for Gated {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Some(open) = self.open.take() {
                open.recv().unwrap();
            }
            self.captured.write(bytes)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(correlation_id: &str) -> AccessLine<'_> {
        AccessLine {
            service: "mesh.cache.v1.Cache",
            method: "Get",
            grpc_status: 0,
            duration_us: 153,
            request_bytes: 12,
            response_bytes: 45,
            peer: Some("127.0.0.1:40000".parse().unwrap()),
            correlation_id,
            caller: "ops",
        }
    }

    #[test]
    fn every_call_from_every_thread_gets_exactly_one_whole_line() {
        let captured = Captured::default();
        let sink = AccessLogSink::new(Box::new(captured.clone()), LineFormat::Json, MAX_PENDING_BYTES);
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let sink = &sink;
                scope.spawn(move || {
                    for call in 0..500 {
                        sink.record(&line(&format!("t{thread}-c{call}")));
                    }
                });
            }
        });
        sink.close();
        let lines = captured.lines();
        assert_eq!(lines.len(), 2000);
        let mut ids: Vec<String> = lines
            .iter()
            .map(|text| {
                let value: serde_json::Value = serde_json::from_str(text).expect("each line is one JSON object");
                assert_eq!(value["target"], ACCESS_TARGET);
                assert_eq!(value["fields"]["message"], "call");
                value["fields"]["correlation_id"].as_str().unwrap().to_owned()
            })
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 2000, "no line lost or repeated");
    }

    #[test]
    fn close_writes_every_pending_line_and_a_late_line_still_goes_out() {
        let (open, gate) = mpsc::channel();
        let captured = Captured::default();
        let output = Gated { open: Some(gate), captured: captured.clone() };
        let sink = AccessLogSink::new(Box::new(output), LineFormat::Human, MAX_PENDING_BYTES);
        for call in 0..100 {
            sink.record(&line(&format!("c{call}")));
        }
        open.send(()).unwrap();
        sink.close();
        assert_eq!(captured.lines().len(), 100, "written before close returned");
        sink.record(&line("late"));
        let lines = captured.lines();
        assert_eq!(lines.len(), 101);
        assert!(lines[100].contains(r#"correlation_id="late""#), "{}", lines[100]);
    }

    #[test]
    fn a_stuck_output_drops_lines_past_the_bound_instead_of_growing() {
        let (open, gate) = mpsc::channel();
        let captured = Captured::default();
        let output = Gated { open: Some(gate), captured: captured.clone() };
        let one_line_bytes = {
            let mut buffer = Vec::new();
            format_line(&mut buffer, LineFormat::Human, SystemTime::now(), &line("c0000"));
            buffer.len()
        };
        let sink = AccessLogSink::new(Box::new(output), LineFormat::Human, one_line_bytes * 10);
        // The writer may already hold the first batch (and wait in the gate); at most 10 more fit behind it.
        for call in 0..1000 {
            sink.record(&line(&format!("c{call:04}")));
        }
        open.send(()).unwrap();
        sink.close();
        let written = captured.lines().len();
        assert!((10..=20).contains(&written), "{written} lines written");
    }

    #[test]
    fn a_human_line_reads_like_the_kits_log_lines_and_escapes_what_a_caller_sent() {
        let mut buffer = Vec::new();
        let now = UNIX_EPOCH + std::time::Duration::from_micros(1_795_880_000_123_456);
        let mut hostile = line("id\"with\nnewline");
        hostile.method = "Get\\";
        format_line(&mut buffer, LineFormat::Human, now, &hostile);
        let text = String::from_utf8(buffer).unwrap();
        assert_eq!(
            text,
            "2026-11-28T15:33:20.123456Z  INFO mesh_gateway::access: call service=\"mesh.cache.v1.Cache\" \
             method=\"Get\\\\\" grpc_status=0 duration_us=153 request_bytes=12 response_bytes=45 \
             peer=\"127.0.0.1:40000\" correlation_id=\"id\\\"with\\nnewline\" caller=\"ops\"\n"
        );
    }

    #[test]
    fn a_json_line_is_the_object_the_json_formatter_writes() {
        let mut buffer = Vec::new();
        let mut anonymous = line("c\u{1}");
        anonymous.peer = None;
        anonymous.caller = "";
        format_line(&mut buffer, LineFormat::Json, UNIX_EPOCH, &anonymous);
        let value: serde_json::Value = serde_json::from_slice(&buffer).unwrap();
        assert_eq!(value["timestamp"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["fields"]["grpc_status"], 0);
        assert_eq!(value["fields"]["response_bytes"], 45);
        assert_eq!(value["fields"]["peer"], "");
        assert_eq!(value["fields"]["correlation_id"], "c\u{1}");
        assert_eq!(value["fields"]["caller"], "");
    }

    #[test]
    fn dates_are_civil_utc_dates() {
        let check = |unix_seconds: u64, expected: &str| {
            assert_eq!(std::str::from_utf8(&format_second(unix_seconds)).unwrap(), expected, "{unix_seconds}");
        };
        check(0, "1970-01-01T00:00:00");
        check(951_782_399, "2000-02-28T23:59:59");
        check(951_782_400, "2000-02-29T00:00:00");
        check(1_709_251_199, "2024-02-29T23:59:59");
        check(4_107_542_400, "2100-03-01T00:00:00");
        check(1_795_880_000, "2026-11-28T15:33:20");
    }
}
