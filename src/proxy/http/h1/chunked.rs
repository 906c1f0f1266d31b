//! A streaming, validating scanner for the chunked transfer coding
//! (RFC 9112 section 7.1).
//!
//! It never copies: fed any slice of the body, it says how many bytes at the
//! front belong to the message and whether they are chunk data or framing,
//! so the proxy can forward a chunked body verbatim (the framing it checked
//! is exactly the framing the next hop reads) or pass only the data on
//! (de-chunking for an HTTP/1.0 client). Strict: CRLF line ends only,
//! 1..=16 hex digits, extensions that follow the grammar, trailer fields
//! with valid names, bounded line lengths.

/// Longest chunk-size line or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Longest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size,
    /// After the digits: optional whitespace before ';' or CR.
    SizeWs,
    /// After ';': whitespace before an extension name.
    ExtNameStart,
    ExtName,
    /// After an extension name: whitespace, then '=', ';' or CR.
    ExtNameWs,
    /// After '=': whitespace before the value.
    ExtValueStart,
    ExtToken,
    ExtQuoted,
    ExtQuotedEscape,
    /// After a value: whitespace, then ';' or CR.
    ExtValueWs,
    /// Got CR of the size line, need LF.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// After data: need CR then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field name.
    TrailerName,
    /// Inside a trailer field value.
    TrailerValue,
    /// Got CR at the end of a trailer line.
    TrailerLf,
    /// Got CR of the final empty line.
    EndLf,
    Done,
}

/// The chunked body ended badly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

/// What the front of the fed slice is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Bytes at the front of the input this step covers.
    pub len: usize,
    /// They are chunk data (else framing: sizes, extensions, CRLFs, trailers).
    pub data: bool,
}

#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    size: u64,
    digits: u8,
    line: usize,
    trailers: usize,
    /// Total chunk data seen, for body size limits.
    pub data_total: u64,
}

impl Default for Chunked {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunked {
    pub fn new() -> Self {
        Chunked {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailers: 0,
            data_total: 0,
        }
    }

    /// The final CRLF has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scan the front of `input`. Returns an empty step only when `input`
    /// is empty or the body is done.
    ///
    /// # Errors
    /// The bytes are not a valid chunked body.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        if self.state == State::Data {
            let n = (self.size.min(input.len() as u64)) as usize;
            self.size -= n as u64;
            self.data_total += n as u64;
            if self.size == 0 {
                self.state = State::DataCr;
            }
            return Ok(Step { len: n, data: true });
        }
        let mut i = 0;
        while i < input.len() && self.state != State::Data && self.state != State::Done {
            self.byte(input[i])?;
            i += 1;
        }
        Ok(Step {
            len: i,
            data: false,
        })
    }

    fn line_byte(&mut self) -> Result<(), ChunkError> {
        self.line += 1;
        if self.line > MAX_LINE {
            return Err(ChunkError("chunk line too long"));
        }
        Ok(())
    }

    fn byte(&mut self, b: u8) -> Result<(), ChunkError> {
        use State::*;
        match self.state {
            Size => {
                self.line_byte()?;
                if let Some(d) = hex(b) {
                    self.size = (self.size << 4) | u64::from(d);
                    self.digits = self.digits.saturating_add(1);
                    // Chunks under 4 GiB only: a backend that keeps 32 bits of
                    // the size must read the same length we do.
                    if self.size > u64::from(u32::MAX) || self.digits > 16 {
                        return Err(ChunkError("chunk size too large"));
                    }
                } else if self.digits == 0 {
                    return Err(ChunkError("chunk size is not hex"));
                } else {
                    self.state = SizeWs;
                    return self.byte(b);
                }
            }
            SizeWs | ExtNameWs | ExtValueWs => {
                self.line_byte()?;
                match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = ExtNameStart,
                    b'\r' => self.state = SizeLf,
                    b'=' if self.state == ExtNameWs => self.state = ExtValueStart,
                    _ => return Err(ChunkError("bad chunk extension")),
                }
            }
            ExtNameStart => {
                self.line_byte()?;
                match b {
                    b' ' | b'\t' => {}
                    b if is_tchar(b) => self.state = ExtName,
                    _ => return Err(ChunkError("bad chunk extension name")),
                }
            }
            ExtName => {
                self.line_byte()?;
                if !is_tchar(b) {
                    self.state = ExtNameWs;
                    return self.byte_again(b);
                }
            }
            ExtValueStart => {
                self.line_byte()?;
                match b {
                    b' ' | b'\t' => {}
                    b'"' => self.state = ExtQuoted,
                    b if is_tchar(b) => self.state = ExtToken,
                    _ => return Err(ChunkError("bad chunk extension value")),
                }
            }
            ExtToken => {
                self.line_byte()?;
                if !is_tchar(b) {
                    self.state = ExtValueWs;
                    return self.byte_again(b);
                }
            }
            ExtQuoted => {
                self.line_byte()?;
                match b {
                    b'"' => self.state = ExtValueWs,
                    b'\\' => self.state = ExtQuotedEscape,
                    b'\t' | b' '..=b'~' | 0x80..=0xff => {}
                    _ => return Err(ChunkError("bad quoted chunk extension")),
                }
            }
            ExtQuotedEscape => {
                self.line_byte()?;
                match b {
                    b'\t' | b' '..=b'~' | 0x80..=0xff => self.state = ExtQuoted,
                    _ => return Err(ChunkError("bad quoted chunk extension")),
                }
            }
            SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError("chunk size line must end in CRLF"));
                }
                self.line = 0;
                self.digits = 0;
                if self.size == 0 {
                    self.state = TrailerStart;
                } else {
                    self.state = Data;
                }
            }
            Data => unreachable!("data is consumed by step()"),
            DataCr => {
                if b != b'\r' {
                    return Err(ChunkError("chunk data not followed by CRLF"));
                }
                self.state = DataLf;
            }
            DataLf => {
                if b != b'\n' {
                    return Err(ChunkError("chunk data not followed by CRLF"));
                }
                self.state = Size;
            }
            TrailerStart => {
                self.trailer_byte()?;
                match b {
                    b'\r' => self.state = EndLf,
                    b if is_tchar(b) => self.state = TrailerName,
                    _ => return Err(ChunkError("bad trailer field")),
                }
            }
            TrailerName => {
                self.trailer_byte()?;
                match b {
                    b':' => self.state = TrailerValue,
                    b if is_tchar(b) => {}
                    _ => return Err(ChunkError("bad trailer field name")),
                }
            }
            TrailerValue => {
                self.trailer_byte()?;
                match b {
                    b'\r' => self.state = TrailerLf,
                    b'\t' | b' '..=b'~' | 0x80..=0xff => {}
                    _ => return Err(ChunkError("bad trailer field value")),
                }
            }
            TrailerLf => {
                if b != b'\n' {
                    return Err(ChunkError("trailer line must end in CRLF"));
                }
                self.line = 0;
                self.state = TrailerStart;
            }
            EndLf => {
                if b != b'\n' {
                    return Err(ChunkError("chunked body must end in CRLF"));
                }
                self.state = Done;
            }
            Done => {}
        }
        Ok(())
    }

    /// Re-dispatch a byte in the new state without counting it twice.
    fn byte_again(&mut self, b: u8) -> Result<(), ChunkError> {
        self.line -= 1;
        self.byte(b)
    }

    fn trailer_byte(&mut self) -> Result<(), ChunkError> {
        self.line_byte()?;
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(ChunkError("trailer section too large"));
        }
        Ok(())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_tchar(b: u8) -> bool {
    super::codec::is_tchar(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `body` in pieces of `piece` bytes; return the data and the bytes consumed.
    fn run(body: &[u8], piece: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut c = Chunked::new();
        let mut data = Vec::new();
        let mut at = 0;
        while at < body.len() && !c.is_done() {
            let end = (at + piece).min(body.len());
            let mut slice = &body[at..end];
            while !slice.is_empty() && !c.is_done() {
                let s = c.step(slice)?;
                if s.data {
                    data.extend_from_slice(&slice[..s.len]);
                }
                slice = &slice[s.len..];
                at += s.len;
            }
        }
        if !c.is_done() {
            return Err(ChunkError("incomplete"));
        }
        Ok((data, at))
    }

    #[test]
    fn valid_bodies_in_any_split() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"0\r\n\r\n", b""),
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (
                b"5;a=b;c\r\nhello\r\n6 ; x = \"q\\\"t\"\r\n world\r\n0\r\n\r\n",
                b"hello world",
            ),
            (
                b"A\r\n0123456789\r\n0\r\nX-Sum: 1\r\nY: two words\r\n\r\n",
                b"0123456789",
            ),
            (b"00000003\r\nabc\r\n000\r\n\r\n", b"abc"),
        ];
        for (body, want) in cases {
            for piece in [1, 2, 3, 7, 1000] {
                let (data, used) = run(body, piece).unwrap_or_else(|e| panic!("{body:?}: {e:?}"));
                assert_eq!(&data[..], *want);
                assert_eq!(used, body.len());
            }
        }
    }

    #[test]
    fn stops_exactly_at_the_end() {
        let mut body = b"3\r\nabc\r\n0\r\n\r\n".to_vec();
        let len = body.len();
        body.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut c = Chunked::new();
        let mut at = 0;
        while !c.is_done() {
            at += c.step(&body[at..]).unwrap().len;
        }
        assert_eq!(at, len);
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let bad: &[&[u8]] = &[
            b"\r\n",                        // no size
            b"x\r\n",                       // not hex
            b"-1\r\n",                      // sign
            b"0x5\r\nhello\r\n0\r\n\r\n",   // 0x prefix
            b"5\nhello\r\n0\r\n\r\n",       // bare LF
            b"5\r\nhelloX\r\n",             // data longer than size
            b"5\r\nhello\n0\r\n\r\n",       // missing CR after data
            b"5;\r\nhello\r\n",             // empty extension name
            b"5;a=\r\nhello\r\n",           // empty extension value
            b"5;a b\r\n",                   // junk after name
            b"5;a=\"x\r\n",                 // unterminated quote
            b"5 6\r\n",                     // two sizes
            b"11111111111111111\r\n",       // 17 hex digits
            b"0\r\nbad trailer\r\n\r\n",    // space in trailer name
            b"0\r\nX: a\rb\r\n\r\n",        // bare CR in trailer
            b"0\r\n\n",                     // bare LF at the end
            b"5\r\nhel\0o\r\n0\r\n\r\nx\0", // NUL only matters in framing: data may hold anything...
        ];
        for body in &bad[..bad.len() - 1] {
            assert!(run(body, 1).is_err(), "accepted {body:?}");
            assert!(run(body, 1000).is_err(), "accepted {body:?}");
        }
        // ...chunk data is opaque bytes.
        assert!(run(b"5\r\nhel\0o\r\n0\r\n\r\n", 1).is_ok());
    }

    #[test]
    fn counts_data() {
        let mut c = Chunked::new();
        let body = b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n";
        let mut at = 0;
        while !c.is_done() {
            at += c.step(&body[at..]).unwrap().len;
        }
        assert_eq!(c.data_total, 8);
    }
}
