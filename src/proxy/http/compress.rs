//! Response compression on the way to the client: whether a response is
//! compressed (its status, type, size, existing coding, `no-transform`,
//! and the client's Accept-Encoding), and the streaming relay that
//! decodes the backend's framing, compresses what each read brings, and
//! sends it on as one chunk at once (a sync flush per read: nothing waits
//! for more input, so streamed responses stay streamed, and memory is the
//! encoder's window plus one read).

use std::{io::Write, time::Duration};

use super::h1::{
    body::{timed_write, BodyError, Pace},
    chunked::Chunked,
    codec::{self, Framing, Response},
};
use crate::{
    config::{Coding, CompressConfig},
    io::{rbuf::RBuf, stream::Stream},
};

/// What to do with one response.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Choice {
    /// Compress with this.
    pub coding: Option<Coding>,
    /// The response could be compressed for another client: `Vary:
    /// Accept-Encoding` goes on, compressed or not.
    pub vary: bool,
    /// A strong ETag goes out weak: the body is compressed, or would be
    /// (a HEAD or 304 for a client that wants a coding).
    pub weak_etag: bool,
}

/// Whether the Accept-Encoding values accept `c` (an explicit `q=0`
/// refuses it; `*` stands for codings not named).
fn accepts<'a>(values: impl Iterator<Item = &'a [u8]> + Clone, c: Coding) -> bool {
    let mut star = None;
    for v in values {
        for item in v.split(|&b| b == b',') {
            let mut parts = item.split(|&b| b == b';');
            let name = parts.next().unwrap_or_default().trim_ascii();
            let q_zero = parts.any(|p| {
                let p = p.trim_ascii();
                p.len() >= 2
                    && p[..2].eq_ignore_ascii_case(b"q=")
                    && p[2..].iter().all(|&b| b == b'0' || b == b'.')
            });
            if name.eq_ignore_ascii_case(c.token().as_bytes()) {
                return !q_zero;
            }
            if name == b"*" {
                star = Some(!q_zero);
            }
        }
    }
    star.unwrap_or(false)
}

/// How a response stands toward compression, whatever the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// Never compressed: sent as it is, no `Vary`.
    No,
    /// No body to compress, but it describes one that would be (a HEAD,
    /// or a 304 for it): it gets `Vary` and the weak ETag the compressed
    /// body would have had, so caches see one representation.
    Like,
    /// The body is compressed for a client that wants it.
    Body,
}

/// Whether the response's media type is one `cfg` lists.
fn listed(cfg: &CompressConfig, ct: &[u8]) -> bool {
    let media = ct
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    cfg.types.iter().any(|t| match t.strip_suffix("/*") {
        Some(major) => {
            media.len() > major.len()
                && media[..major.len()].eq_ignore_ascii_case(major.as_bytes())
                && media[major.len()] == b'/'
        }
        None => media.eq_ignore_ascii_case(t.as_bytes()),
    })
}

/// The response's fit. `weak_inm`: the request's If-None-Match held a
/// weak tag (a client that may hold a body compressed here, whose ETag
/// was made weak), which is what a 304 without a Content-Type is judged
/// by.
fn fit(cfg: &CompressConfig, resp: &Response, buf: &[u8], is_head: bool, weak_inm: bool) -> Fit {
    let has = |name: &'static [u8]| codec::values(&resp.headers, buf, name);
    if has(b"content-encoding").any(|v| !v.trim_ascii().eq_ignore_ascii_case(b"identity")) {
        return Fit::No;
    }
    let no_transform = has(b"cache-control").any(|v| {
        v.split(|&b| b == b',')
            .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-transform"))
    });
    if no_transform {
        return Fit::No;
    }
    let s = resp.status;
    let typed = has(b"content-type").next().map(|ct| listed(cfg, ct));
    if s == 304 {
        return match typed {
            Some(true) => Fit::Like,
            None if weak_inm => Fit::Like,
            _ => Fit::No,
        };
    }
    if !(200..300).contains(&s) || s == 204 || s == 206 || typed != Some(true) {
        return Fit::No;
    }
    if resp.content_length.is_some_and(|n| n < cfg.min_length) {
        return Fit::No;
    }
    if is_head {
        return Fit::Like;
    }
    // The body must be read as framed: a length, or chunked as the only
    // transfer coding (`gzip, chunked` would need the gzip undone first).
    let codings: usize = resp
        .te
        .iter()
        .map(|v| v.get(buf).split(|&b| b == b',').count())
        .sum();
    match resp.framing {
        Framing::Length(_) => Fit::Body,
        Framing::Chunked if codings == 1 => Fit::Body,
        Framing::UntilClose if codings == 0 => Fit::Body,
        _ => Fit::No,
    }
}

/// The route's coding the request's Accept-Encoding values accept first
/// (decided with the request, whose fields are gone by the response).
pub(super) fn wanted<'a>(
    cfg: &CompressConfig,
    accept: impl Iterator<Item = &'a [u8]> + Clone,
) -> Option<Coding> {
    cfg.codings
        .iter()
        .copied()
        .find(|&c| accepts(accept.clone(), c))
}

/// The choice for one response to a request that `wanted` a coding;
/// `chunked_ok`: the client reads chunked bodies (HTTP/1.1); `weak_inm`:
/// see [`fit`]. Beyond [`MAX_ENCODERS`] at once on this worker the body
/// goes out as it is.
pub(super) fn choose(
    cfg: &CompressConfig,
    wanted: Option<Coding>,
    chunked_ok: bool,
    resp: &Response,
    buf: &[u8],
    is_head: bool,
    weak_inm: bool,
) -> (Choice, Option<Encoder>) {
    match fit(cfg, resp, buf, is_head, weak_inm) {
        Fit::No => (Choice::default(), None),
        Fit::Like => (
            Choice {
                coding: None,
                vary: true,
                weak_etag: wanted.is_some() && chunked_ok,
            },
            None,
        ),
        Fit::Body => {
            let enc = wanted.filter(|_| chunked_ok).and_then(Encoder::new);
            let coding = enc.as_ref().map(Encoder::coding);
            (
                Choice {
                    coding,
                    vary: true,
                    weak_etag: coding.is_some(),
                },
                enc,
            )
        }
    }
}

/// Responses compressed at once per worker, at most: each holds an
/// encoder's window and tables (measured: about 0.37 MiB for gzip level 5
/// and 1.1 MiB for brotli quality 4 with a 256 KiB window, after 300 KB
/// of input), so this bounds the
/// memory compression can take whatever the load (brotli's worst case,
/// about 140 MiB per worker).
pub(super) const MAX_ENCODERS: usize = 128;

thread_local! {
    static ENCODERS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One of the worker's [`MAX_ENCODERS`] places, given back on drop.
struct Slot(());

impl Slot {
    fn take() -> Option<Slot> {
        ENCODERS.with(|n| {
            let used = n.get();
            (used < MAX_ENCODERS).then(|| {
                n.set(used + 1);
                Slot(())
            })
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        ENCODERS.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// A streaming compressor writing into its own buffer.
pub(super) struct Encoder {
    inner: Inner,
    _slot: Slot,
}

enum Inner {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
}

/// Levels for compressing on the fly (nginx's gzip default is 1, its
/// brotli module's 6; these trade a little ratio for CPU per byte).
const GZIP_LEVEL: u32 = 5;
const BROTLI_QUALITY: u32 = 4;
/// Brotli window: 2^18 = 256 KiB, the memory bound per response.
const BROTLI_LGWIN: u32 = 18;

impl Encoder {
    /// An encoder for `c`, or `None` when the worker has [`MAX_ENCODERS`]
    /// at work.
    pub(super) fn new(c: Coding) -> Option<Encoder> {
        let slot = Slot::take()?;
        let inner = match c {
            Coding::Gzip => Inner::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Coding::Br => Inner::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                BROTLI_QUALITY,
                BROTLI_LGWIN,
            ))),
        };
        Some(Encoder { inner, _slot: slot })
    }

    pub(super) fn coding(&self) -> Coding {
        match self.inner {
            Inner::Gzip(_) => Coding::Gzip,
            Inner::Br(_) => Coding::Br,
        }
    }

    /// Compress `data`, flush, and take what came out.
    fn feed(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match &mut self.inner {
            Inner::Gzip(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
            Inner::Br(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
        }
    }

    /// The end of the stream.
    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self.inner {
            Inner::Gzip(e) => e.finish(),
            Inner::Br(e) => Ok(e.into_inner()),
        }
    }
}

/// Send `out` as one chunk (after `head`, which is then emptied); returns
/// the bytes written.
async fn chunk(
    dst: &Stream,
    head: &mut &[u8],
    out: &[u8],
    timeout: Duration,
) -> Result<u64, BodyError> {
    if out.is_empty() {
        return Ok(0);
    }
    let mut framed = Vec::with_capacity(out.len() + 12);
    framed.extend_from_slice(format!("{:x}\r\n", out.len()).as_bytes());
    framed.extend_from_slice(out);
    framed.extend_from_slice(b"\r\n");
    timed_write(dst, head, &framed, timeout)
        .await
        .map_err(BodyError::Dest)?;
    *head = &[];
    Ok(framed.len() as u64)
}

/// Relay one response body from `src` (bytes already read in `sbuf`),
/// decoding its `framing`, to `dst` compressed and chunked, `head` first.
/// Returns the bytes written after the head.
///
/// # Errors
/// The backend failed or sent a bad chunked body, the client failed, or
/// the body came slower than `pace` allows.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward(
    src: &Stream,
    sbuf: &mut RBuf,
    dst: &Stream,
    framing: Framing,
    mut enc: Encoder,
    timeout: Duration,
    head: &[u8],
    pace: &Pace,
) -> Result<u64, BodyError> {
    let compress_err = |e: std::io::Error| BodyError::Dest(e);
    let mut head = head;
    let mut sent = 0u64;
    let mut read = 0u64;
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut scan = Chunked::new();
    loop {
        let done = match framing {
            Framing::None => true,
            Framing::Length(_) => left == 0,
            Framing::Chunked => scan.is_done(),
            Framing::UntilClose => false,
        };
        if done {
            break;
        }
        if sbuf.is_empty() {
            match sbuf.fill(src, timeout).await {
                Ok(0) if framing == Framing::UntilClose => break,
                Ok(0) => return Err(BodyError::Source(std::io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) => return Err(BodyError::Source(e)),
            }
            pace.check(read)?;
        }
        let data = sbuf.data();
        let mut out = Vec::new();
        let used = match framing {
            Framing::Chunked => {
                let mut at = 0;
                while at < data.len() && !scan.is_done() {
                    let step = scan.step(&data[at..]).map_err(|e| BodyError::Chunk(e.0))?;
                    if step.data && step.len > 0 {
                        out.extend(enc.feed(&data[at..at + step.len]).map_err(compress_err)?);
                    }
                    at += step.len;
                    if step.len == 0 {
                        break;
                    }
                }
                at
            }
            _ => {
                let take = (data.len() as u64).min(left) as usize;
                out = enc.feed(&data[..take]).map_err(compress_err)?;
                if let Framing::Length(_) = framing {
                    left -= take as u64;
                }
                take
            }
        };
        sbuf.consume(used);
        read += used as u64;
        sent += chunk(dst, &mut head, &out, timeout).await?;
    }
    let last = enc.finish().map_err(compress_err)?;
    sent += chunk(dst, &mut head, &last, timeout).await?;
    timed_write(dst, head, b"0\r\n\r\n", timeout)
        .await
        .map_err(BodyError::Dest)?;
    Ok(sent + 5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_lists_and_weights() {
        let a = |v: &str, c| accepts([v.as_bytes()].into_iter(), c);
        assert!(a("gzip, deflate, br", Coding::Br));
        assert!(a("GZIP", Coding::Gzip));
        assert!(!a("gzip;q=0", Coding::Gzip));
        assert!(!a("gzip;q=0.0, br", Coding::Gzip));
        assert!(a("gzip;q=0.5", Coding::Gzip));
        assert!(a("*", Coding::Br));
        assert!(!a("*;q=0, gzip", Coding::Br));
        assert!(!a("br;q=0, *", Coding::Br));
        assert!(!a("identity", Coding::Gzip));
    }

    #[test]
    fn a_worker_runs_at_most_max_encoders_at_once() {
        let mut held: Vec<Encoder> = (0..MAX_ENCODERS)
            .map(|_| Encoder::new(Coding::Gzip).unwrap())
            .collect();
        assert!(Encoder::new(Coding::Br).is_none(), "the cap holds");
        held.pop();
        let e = Encoder::new(Coding::Br).expect("a place was given back");
        drop(held);
        drop(e);
        assert!(std::thread::spawn(|| Encoder::new(Coding::Gzip).is_some())
            .join()
            .unwrap());
    }

    #[test]
    fn framing_and_codings_decide_the_fit() {
        let cfg = CompressConfig {
            codings: vec![Coding::Gzip],
            types: vec!["text/*".into()],
            min_length: 10,
        };
        let parse = |raw: &str, head: bool| {
            let mut r = Response::default();
            assert!(codec::parse_response(raw.as_bytes(), 8192, head, &mut r).unwrap());
            r
        };
        let f = |raw: &str, head: bool, weak: bool| {
            fit(&cfg, &parse(raw, head), raw.as_bytes(), head, weak)
        };
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n";
        assert_eq!(
            f(&format!("{ok}Content-Length: 100\r\n\r\n"), false, false),
            Fit::Body
        );
        assert_eq!(
            f(
                &format!("{ok}Transfer-Encoding: chunked\r\n\r\n"),
                false,
                false
            ),
            Fit::Body
        );
        assert_eq!(
            f(
                &format!("{ok}Transfer-Encoding: gzip, chunked\r\n\r\n"),
                false,
                false
            ),
            Fit::No,
            "a transfer coding besides chunked"
        );
        assert_eq!(
            f(
                &format!("{ok}Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"),
                false,
                false
            ),
            Fit::No
        );
        assert_eq!(
            f(&format!("{ok}Content-Length: 5\r\n\r\n"), false, false),
            Fit::No,
            "small"
        );
        assert_eq!(
            f(&format!("{ok}Content-Length: 100\r\n\r\n"), true, false),
            Fit::Like,
            "HEAD"
        );
        assert_eq!(
            f(
                &format!("{ok}Content-Length: 100\r\nContent-Encoding: identity\r\n\r\n"),
                false,
                false
            ),
            Fit::Body
        );
        assert_eq!(
            f(
                &format!("{ok}Content-Length: 100\r\nContent-Encoding: br\r\n\r\n"),
                false,
                false
            ),
            Fit::No
        );
        let nm = "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n";
        assert_eq!(f(nm, false, true), Fit::Like, "304 to a weak If-None-Match");
        assert_eq!(f(nm, false, false), Fit::No);
        assert_eq!(
            f(
                "HTTP/1.1 304 Not Modified\r\nContent-Type: image/png\r\n\r\n",
                false,
                true
            ),
            Fit::No
        );
    }

    #[test]
    fn flushed_pieces_decode_to_the_input() {
        use std::io::Read;
        let text = b"hello hello hello hello, compressed world\n".repeat(100);
        for c in [Coding::Gzip, Coding::Br] {
            let mut e = Encoder::new(c).unwrap();
            let mut all = Vec::new();
            for part in text.chunks(333) {
                let out = e.feed(part).unwrap();
                assert!(!out.is_empty(), "a flush emits what it has");
                all.extend(out);
            }
            all.extend(e.finish().unwrap());
            let mut back = Vec::new();
            match c {
                Coding::Gzip => {
                    flate2::read::GzDecoder::new(&all[..])
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Coding::Br => {
                    brotli::Decompressor::new(&all[..], 4096)
                        .read_to_end(&mut back)
                        .unwrap();
                }
            }
            assert_eq!(back, text);
            assert!(all.len() < text.len() / 4, "{c:?}: {} bytes", all.len());
        }
    }
}
