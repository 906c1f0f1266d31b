//! The fuzz targets' invariants on stable, in CI: for each target in
//! tests/fuzz/, the same checks (tests/fuzz/checks.rs, shared by
//! `include!`) over every seed in tests/fuzz/seeds/<target>/, then over up to
//! 20,000 deterministic mutations of them (a fixed-seed xorshift: flips,
//! inserts, deletes, duplicates, splices, protocol tokens), stopping early
//! after about 2 seconds per target. The real fuzzing is
//! `cargo +nightly fuzz run --fuzz-dir tests/fuzz <target>` (README,
//! Development). No server is started here.

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

#[allow(dead_code)]
mod checks {
    include!("../fuzz/checks.rs");
}

const MUTATIONS: usize = 20_000;
const BUDGET: Duration = Duration::from_secs(2);

/// Bytes worth inserting: the grammar's delimiters and fields.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b": ",
    b" ",
    b"\t",
    b",",
    b";",
    b"=",
    b"\"",
    b"\\",
    b"0",
    b"ffffffff",
    b"Host: a\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: close, upgrade\r\n",
    b"HTTP/1.1",
    b"HTTP/1.0 200 OK\r\n",
    b"http://",
    b"/../",
    b"%2e",
    b"0\r\n\r\n",
    b"PROXY TCP4 ",
    b"PROXY UNKNOWN",
    b"\r\n\r\n\x00\r\nQUIT\n",
    b"\x21\x11\x00\x0c",
    b"\x00",
    b"\xff",
];

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut XorShift, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if at < v.len() => v[at] ^= 1 << rng.below(8),
            1 if at < v.len() => v[at] = rng.next() as u8,
            2 => v.insert(at, rng.next() as u8),
            3 if at < v.len() => {
                let end = (at + 1 + rng.below(8)).min(v.len());
                v.drain(at..end);
            }
            4 if at < v.len() => {
                // Duplicate a short range in place.
                let end = (at + 1 + rng.below(16)).min(v.len());
                let piece = v[at..end].to_vec();
                v.splice(at..at, piece);
            }
            5 => {
                // Our prefix, another seed's suffix.
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
            _ => {
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
        }
    }
    v
}

/// Known finding 1 (`cargo fuzz run proxy_protocol`): the v1 reader waits
/// for an LF, but ppp cuts a v1 line at its first CR, so a buffer with an
/// LF and no CR yet is judged early and the answer depends on how the
/// header was split into reads. Checked tolerantly with the seeds and
/// strictly by the test below (fixed in src/proxy/proxy_protocol.rs: a v1 line
/// must end in CRLF at its first CR or LF).
const PROXY_V1_LF_BEFORE_CR: &[&str] = &[
    // Found, minimized (43 bytes): a TCP4 line ending in " \n"; its first 37
    // bytes alone are accepted as a header, the whole (a CR follows) is refused.
    "50524f58592054435034203139322e302e322e3720302e302e352e312035353535203820 0a \
     474520480d0a",
    // Found, minimized (16 bytes): "PROXY UNKNOWN \nw"; its first 15 bytes
    // alone are accepted as a header, the whole is incomplete.
    "50524f585920554e4b4e4f574e20 0a 77",
    // Found (86 bytes; minimizing turns it into one of the above): an UNKNOWN
    // line with an LF, then non-ASCII bytes, before its CRLF; accepted whole
    // (40 bytes), while its first 34 bytes, cut inside a UTF-8 sequence,
    // are refused.
    "50524f585920554e4b4e4f574e20393050524f585920544300002500ecb0b40a00ecb0b40a790d0a\
     37302e302e302e3120363237203230303138202e703620202020ffff1000200000400043000d0a0d0a\
     00253a0d77",
    // By hand: "PROXY TCP4 192.0.2.7 10.0.0.1 5555 80 \n" alone is accepted.
    "50524f58592054435034203139322e302e322e372031302e302e302e31203535353520383020 0a",
    // By hand: "PROXY UNKNOWN \n\u{e9}\r\n" (UTF-8) is a 19-byte header, but
    // its first 15 bytes alone are accepted as a 15-byte one and its first
    // 16 (cut inside the "\u{e9}") are refused.
    "50524f585920554e4b4e4f574e20 0a c3a9 0d0a",
];

fn unhex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// Regression inputs the fuzzer found, per target.
fn regressions(target: &str) -> Vec<Vec<u8>> {
    match target {
        "proxy_protocol" => PROXY_V1_LF_BEFORE_CR.iter().map(|h| unhex(h)).collect(),
        _ => Vec::new(),
    }
}

/// Run `check`; on a panic, name the input (hex) before passing it on.
fn check_one(check: fn(&[u8]), input: &[u8], what: &str) {
    if let Err(e) = std::panic::catch_unwind(|| check(input)) {
        let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
        eprintln!("{what} failed; input (hex): {hex}");
        std::panic::resume_unwind(e);
    }
}

fn run(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/seeds")
        .join(target);
    let mut names: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let seeds: Vec<Vec<u8>> = names.iter().map(|p| fs::read(p).unwrap()).collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    for (name, seed) in names.iter().zip(&seeds) {
        check_one(check, seed, &format!("{target}: seed {}", name.display()));
    }
    for (i, input) in regressions(target).iter().enumerate() {
        check_one(check, input, &format!("{target}: regression {i}"));
    }
    let started = Instant::now();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut done = 0;
    while done < MUTATIONS && started.elapsed() < BUDGET {
        let input = mutate(&mut rng, &seeds);
        check_one(check, &input, &format!("{target}: mutation {done}"));
        done += 1;
    }
    eprintln!(
        "{target}: {} seeds, {done} mutations in {:?}",
        seeds.len(),
        started.elapsed()
    );
}

#[test]
fn request() {
    run("request", checks::check_request);
}

#[test]
fn chunked() {
    run("chunked", checks::check_chunked);
}

#[test]
fn response() {
    run("response", checks::check_response);
}

#[test]
fn proxy_protocol() {
    run("proxy_protocol", checks::check_proxy_protocol);
}

#[test]
fn known_proxy_v1_lf_before_cr() {
    let failed: Vec<usize> = (0..PROXY_V1_LF_BEFORE_CR.len())
        .filter(|&i| {
            let input = unhex(PROXY_V1_LF_BEFORE_CR[i]);
            std::panic::catch_unwind(|| checks::check_proxy_protocol_strict(&input)).is_err()
        })
        .collect();
    assert!(failed.is_empty(), "known finding 1: inputs {failed:?} fail");
}
