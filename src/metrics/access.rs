//! The access log: workers format a line and hand it to a writer thread
//! through a bounded channel, so a slow disk never blocks a worker (when
//! 65,536 lines are queued, new ones are dropped and counted). The writer
//! flushes at least every 100 ms and reopens the file when asked (SIGUSR1,
//! for logrotate).

use std::{
    fmt::Write as _,
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError},
        Arc,
    },
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::config::{AccessLogConfig, LogFormat};

const QUEUE: usize = 64 * 1024;
/// Bytes the queue may hold, whatever the line count: a slow disk behind a
/// burst of long lines must not grow memory without bound.
const QUEUE_BYTES: usize = 16 << 20;
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A worker's handle on the access log.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: SyncSender<String>,
    dropped: Arc<AtomicU64>,
    /// Bytes queued and not yet written.
    queued: Arc<AtomicUsize>,
    pub format: LogFormat,
}

/// Start the writer thread.
///
/// # Errors
/// The file cannot be opened, or the thread cannot start.
pub fn start(
    cfg: &AccessLogConfig,
    reopen: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
) -> io::Result<AccessLog> {
    let path = cfg.path.clone();
    let mut out = open(path.as_ref())?;
    let (tx, rx) = sync_channel::<String>(QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    let q = Arc::clone(&queued);
    thread::Builder::new()
        .name("ringlb-access".into())
        .spawn(move || writer(rx, &mut out, path, reopen, &q))?;
    Ok(AccessLog {
        tx,
        dropped,
        queued,
        format: cfg.format,
    })
}

enum Out {
    Stdout(BufWriter<io::Stdout>),
    File(BufWriter<File>),
}

impl Out {
    fn w(&mut self) -> &mut dyn Write {
        match self {
            Out::Stdout(w) => w,
            Out::File(w) => w,
        }
    }
}

fn open(path: Option<&PathBuf>) -> io::Result<Out> {
    match path {
        None => Ok(Out::Stdout(BufWriter::new(io::stdout()))),
        Some(p) => Ok(Out::File(BufWriter::with_capacity(
            64 * 1024,
            OpenOptions::new().create(true).append(true).open(p)?,
        ))),
    }
}

fn writer(
    rx: Receiver<String>,
    out: &mut Out,
    path: Option<PathBuf>,
    reopen: Arc<AtomicBool>,
    queued: &AtomicUsize,
) {
    loop {
        match rx.recv_timeout(FLUSH_EVERY) {
            Ok(line) => {
                let _ = out.w().write_all(line.as_bytes());
                queued.fetch_sub(line.len(), Relaxed);
                // Drain what is queued before flushing.
                while let Ok(line) = rx.try_recv() {
                    let _ = out.w().write_all(line.as_bytes());
                    queued.fetch_sub(line.len(), Relaxed);
                }
                let _ = out.w().flush();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let _ = out.w().flush();
                return;
            }
        }
        if reopen.swap(false, Relaxed) {
            let _ = out.w().flush();
            match open(path.as_ref()) {
                Ok(o) => {
                    *out = o;
                    tracing::info!("access log reopened");
                }
                Err(e) => {
                    tracing::error!("cannot reopen the access log: {e}; keeping the old file")
                }
            }
        }
    }
}

impl AccessLog {
    /// Queue a line (ending in '\n'); never blocks. Dropped (and counted)
    /// when the queue holds `QUEUE` lines or `QUEUE_BYTES` bytes.
    pub fn send(&self, line: String) {
        let len = line.len();
        if self.queued.fetch_add(len, Relaxed) + len > QUEUE_BYTES {
            self.queued.fetch_sub(len, Relaxed);
            self.dropped.fetch_add(1, Relaxed);
            return;
        }
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(len, Relaxed);
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// One HTTP exchange, as logged.
pub struct HttpEntry<'a> {
    pub listener: &'a str,
    pub client: SocketAddr,
    pub method: &'a str,
    pub path: &'a str,
    /// "HTTP/1.1", "HTTP/1.0", "HTTP/2.0".
    pub protocol: &'a str,
    pub status: u16,
    pub bytes_sent: u64,
    pub referer: &'a str,
    pub user_agent: &'a str,
    pub request_id: &'a str,
    pub backend: Option<SocketAddr>,
    pub duration: Duration,
    /// TLS listeners: the server name the client asked for.
    pub sni: Option<&'a str>,
    /// TLS listeners: the version agreed ("1.2", "1.3").
    pub tls: Option<&'a str>,
    /// TLS listeners: the verified client certificate's subject (json only).
    pub client_cert: Option<&'a str>,
}

/// One TCP connection, as logged.
pub struct TcpEntry<'a> {
    pub listener: &'a str,
    pub client: SocketAddr,
    pub backend: Option<SocketAddr>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub end: &'a str,
    /// The server name the client asked for (TLS termination or an SNI
    /// router's passthrough).
    pub sni: Option<&'a str>,
    /// TLS termination: the version agreed.
    pub tls: Option<&'a str>,
}

/// One UDP flow, as logged.
pub struct UdpEntry<'a> {
    pub listener: &'a str,
    pub client: SocketAddr,
    pub backend: SocketAddr,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    /// idle, done (every expected response came), refused, error.
    pub end: &'a str,
}

/// Longest path, User-Agent or Referer kept in a log line: bounds the
/// memory a stalled writer's queue can hold.
const MAX_FIELD: usize = 2048;

fn cut(s: &str) -> &str {
    if s.len() <= MAX_FIELD {
        return s;
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub fn http_line(f: LogFormat, e: &HttpEntry<'_>) -> String {
    let mut o = String::with_capacity(256);
    let e = &HttpEntry {
        path: cut(e.path),
        user_agent: cut(e.user_agent),
        referer: cut(e.referer),
        method: cut(e.method),
        ..*e
    };
    let now = SystemTime::now();
    match f {
        LogFormat::Json => {
            let _ = writeln!(
                o,
                "{{\"time\":\"{}\",\"listener\":{},\"client\":\"{}\",\"method\":{},\"path\":{},\"status\":{},\"bytes_sent\":{},\"request_id\":{},\"backend\":{},\"duration_ms\":{:.3},\"user_agent\":{},\"sni\":{},\"tls\":{},\"client_cert\":{}}}",
                iso8601(now),
                json_str(e.listener),
                e.client,
                json_str(e.method),
                json_str(e.path),
                e.status,
                e.bytes_sent,
                json_str(e.request_id),
                e.backend.map_or_else(|| "null".to_string(), |b| format!("\"{b}\"")),
                e.duration.as_secs_f64() * 1000.0,
                json_str(e.user_agent),
                opt_json(e.sni),
                opt_json(e.tls),
                opt_json(e.client_cert),
            );
        }
        LogFormat::Combined => {
            let _ = writeln!(
                o,
                "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" {} {} {:.3} {} {}",
                e.client.ip(),
                clf_time(now),
                clean(e.method),
                clean(e.path),
                e.protocol,
                e.status,
                e.bytes_sent,
                dash(&clean(e.referer)),
                dash(&clean(e.user_agent)),
                dash(e.request_id),
                e.backend.map_or_else(|| "-".to_string(), |b| b.to_string()),
                e.duration.as_secs_f64(),
                dash(&clean(e.sni.unwrap_or(""))),
                dash(e.tls.unwrap_or("")),
            );
        }
    }
    o
}

/// A JSON string, or null.
fn opt_json(v: Option<&str>) -> String {
    v.map_or_else(|| "null".to_string(), json_str)
}

pub fn tcp_line(f: LogFormat, e: &TcpEntry<'_>) -> String {
    let mut o = String::with_capacity(192);
    let now = SystemTime::now();
    match f {
        LogFormat::Json => {
            let _ = writeln!(
                o,
                "{{\"time\":\"{}\",\"listener\":{},\"client\":\"{}\",\"backend\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{:.3},\"end\":\"{}\",\"sni\":{},\"tls\":{}}}",
                iso8601(now),
                json_str(e.listener),
                e.client,
                e.backend.map_or_else(|| "null".to_string(), |b| format!("\"{b}\"")),
                e.bytes_in,
                e.bytes_out,
                e.duration.as_secs_f64() * 1000.0,
                e.end,
                opt_json(e.sni),
                opt_json(e.tls),
            );
        }
        LogFormat::Combined => {
            let _ = writeln!(
                o,
                "{} - - [{}] \"TCP {}\" - {} \"-\" \"-\" - {} {:.3} {} {}",
                e.client.ip(),
                clf_time(now),
                clean(e.listener),
                e.bytes_out,
                e.backend.map_or_else(|| "-".to_string(), |b| b.to_string()),
                e.duration.as_secs_f64(),
                dash(&clean(e.sni.unwrap_or(""))),
                dash(e.tls.unwrap_or("")),
            );
        }
    }
    o
}

/// One line for a UDP flow (at its end).
pub fn udp_line(f: LogFormat, e: &UdpEntry<'_>) -> String {
    let mut o = String::with_capacity(192);
    let now = SystemTime::now();
    match f {
        LogFormat::Json => {
            let _ = writeln!(
                o,
                "{{\"time\":\"{}\",\"listener\":{},\"client\":\"{}\",\"backend\":\"{}\",\"datagrams_in\":{},\"datagrams_out\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{:.3},\"end\":\"{}\"}}",
                iso8601(now),
                json_str(e.listener),
                e.client,
                e.backend,
                e.datagrams_in,
                e.datagrams_out,
                e.bytes_in,
                e.bytes_out,
                e.duration.as_secs_f64() * 1000.0,
                e.end,
            );
        }
        LogFormat::Combined => {
            let _ = writeln!(
                o,
                "{} - - [{}] \"UDP {}\" - {} \"-\" \"-\" - {} {:.3} {} {}",
                e.client.ip(),
                clf_time(now),
                clean(e.listener),
                e.bytes_out,
                e.backend,
                e.duration.as_secs_f64(),
                e.datagrams_in,
                e.datagrams_out,
            );
        }
    }
    o
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// For the combined format: no quotes or control bytes inside a field.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c == '"' || c.is_control() { '_' } else { c })
        .collect()
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn split(t: SystemTime) -> (i64, u32, u32, u64, u64, u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil((secs / 86_400) as i64);
    let rem = secs % 86_400;
    (
        y,
        m,
        day,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis(),
    )
}

/// `2026-11-22T02:40:00.123Z`
pub fn iso8601(t: SystemTime) -> String {
    let (y, m, d, hh, mm, ss, ms) = split(t);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{ms:03}Z")
}

/// `22/Nov/2026:02:40:00 +0000`
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d, hh, mm, ss, _) = split(t);
    let mon = MONTHS[(m.clamp(1, 12) - 1) as usize];
    format!("{d:02}/{mon}/{y:04}:{hh:02}:{mm:02}:{ss:02} +0000")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        // No writer: nothing leaves the queue.
        let (tx, _rx) = sync_channel::<String>(QUEUE);
        let log = AccessLog {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            queued: Arc::new(AtomicUsize::new(0)),
            format: LogFormat::Json,
        };
        let line = "x".repeat(64 * 1024);
        let fit = QUEUE_BYTES / line.len();
        for _ in 0..fit + 10 {
            log.send(line.clone());
        }
        assert_eq!(log.dropped.load(Relaxed), 10, "{fit} lines of 64 KiB fit");
        assert!(log.queued.load(Relaxed) <= QUEUE_BYTES);
    }

    use super::*;

    #[test]
    fn dates() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_305_600_123); // 2026-11-22T00:00:00.123Z
        assert_eq!(iso8601(t), "2026-11-22T00:00:00.123Z");
        assert_eq!(clf_time(t), "22/Nov/2026:00:00:00 +0000");
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(iso8601(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_str("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    #[test]
    fn lines() {
        let e = HttpEntry {
            listener: "web",
            client: "10.0.0.1:5555".parse().unwrap(),
            method: "GET",
            path: "/a\"b",
            protocol: "HTTP/1.1",
            status: 200,
            bytes_sent: 12,
            referer: "",
            user_agent: "curl/8",
            request_id: "abc",
            backend: None,
            duration: Duration::from_millis(1500),
            sni: None,
            tls: None,
            client_cert: None,
        };
        let c = http_line(LogFormat::Combined, &e);
        assert!(c.starts_with("10.0.0.1 - - ["), "{c}");
        assert!(
            c.ends_with("] \"GET /a_b HTTP/1.1\" 200 12 \"-\" \"curl/8\" abc - 1.500 - -\n"),
            "{c}"
        );
        let j = http_line(LogFormat::Json, &e);
        assert!(j.contains("\"path\":\"/a\\\"b\""), "{j}");
        assert!(j.contains("\"backend\":null"), "{j}");
        assert!(j.contains("\"sni\":null,\"tls\":null"), "{j}");
        let tls = HttpEntry {
            sni: Some("a.test"),
            tls: Some("1.3"),
            ..e
        };
        assert!(http_line(LogFormat::Combined, &tls).ends_with(" 1.500 a.test 1.3\n"));
        assert!(http_line(LogFormat::Json, &tls).contains("\"sni\":\"a.test\",\"tls\":\"1.3\""));
    }
}
