//! Deciding when a head that arrives in pieces is worth a full parse.

/// When to run the full parse on a head that arrives in pieces. httparse
/// parses from the start every time; parsing after every segment of a head
/// sent a byte at a time would cost O(n²). Instead the new bytes alone are
/// scanned for a possible end of head, and a full parse runs on the first
/// bytes, when the end may be there, or when the buffer doubled since the
/// last parse (so errors and limits are still found early): O(n) per head.
#[derive(Debug, Default)]
pub struct HeadScan {
    /// Buffer length at the last full parse.
    parsed: usize,
    /// How far the end-of-head search got.
    scanned: usize,
}

impl HeadScan {
    /// Whether `data` (the whole buffered head so far) should be parsed now.
    pub fn should_parse(&mut self, data: &[u8]) -> bool {
        let from = self.scanned.saturating_sub(2).min(data.len());
        self.scanned = data.len();
        if self.parsed == 0 || data.len() >= 2 * self.parsed {
            return true;
        }
        // "\r\n\r\n" or "\n\n" ends a head; both hold "\n" then "\n" with at
        // most a "\r" between.
        data[from..].windows(2).any(|w| w == b"\n\n")
            || data[from..].windows(3).any(|w| w == b"\n\r\n")
    }

    /// A full parse ran on `len` bytes and found the head incomplete.
    pub fn parsed(&mut self, len: usize) {
        self.parsed = len.max(1);
    }
}
