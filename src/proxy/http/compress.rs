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

/// Whether the response is one `cfg` compresses, whatever the client.
fn eligible(cfg: &CompressConfig, resp: &Response, buf: &[u8], is_head: bool) -> bool {
    let s = resp.status;
    if is_head || !(200..300).contains(&s) || s == 204 || s == 206 {
        return false;
    }
    if resp.framing == Framing::None
        || (resp.framing == Framing::UntilClose && !resp.te.is_empty())
        || resp.content_length.is_some_and(|n| n < cfg.min_length)
    {
        return false;
    }
    let has = |name: &'static [u8]| codec::values(&resp.headers, buf, name);
    if has(b"content-encoding").any(|v| !v.trim_ascii().eq_ignore_ascii_case(b"identity")) {
        return false;
    }
    let no_transform = has(b"cache-control").any(|v| {
        v.split(|&b| b == b',')
            .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-transform"))
    });
    if no_transform {
        return false;
    }
    let Some(ct) = has(b"content-type").next() else {
        return false;
    };
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
/// `chunked_ok`: the client reads chunked bodies (HTTP/1.1).
pub(super) fn choose(
    cfg: &CompressConfig,
    wanted: Option<Coding>,
    chunked_ok: bool,
    resp: &Response,
    buf: &[u8],
    is_head: bool,
) -> Choice {
    if !eligible(cfg, resp, buf, is_head) {
        return Choice::default();
    }
    Choice {
        coding: wanted.filter(|_| chunked_ok),
        vary: true,
    }
}

/// A streaming compressor writing into its own buffer.
pub(super) enum Encoder {
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
    pub(super) fn new(c: Coding) -> Encoder {
        match c {
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Coding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                BROTLI_QUALITY,
                BROTLI_LGWIN,
            ))),
        }
    }

    pub(super) fn coding(&self) -> Coding {
        match self {
            Encoder::Gzip(_) => Coding::Gzip,
            Encoder::Br(_) => Coding::Br,
        }
    }

    /// Compress `data`, flush, and take what came out.
    fn feed(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
            Encoder::Br(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
        }
    }

    /// The end of the stream.
    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Br(e) => Ok(e.into_inner()),
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
    fn flushed_pieces_decode_to_the_input() {
        use std::io::Read;
        let text = b"hello hello hello hello, compressed world\n".repeat(100);
        for c in [Coding::Gzip, Coding::Br] {
            let mut e = Encoder::new(c);
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
