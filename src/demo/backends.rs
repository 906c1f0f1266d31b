//! The demo's built-in backends, plain threads on loopback: echo servers
//! that greet with their name, and HTTP/1.1 servers that answer every
//! request with a line of JSON naming themselves and what they got.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
};

use crate::Error;

/// The backends' addresses, by upstream.
pub struct Started {
    pub echo: Vec<SocketAddr>,
    pub api: Vec<SocketAddr>,
    pub stat: Vec<SocketAddr>,
}

/// Bind and start every backend.
///
/// # Errors
/// A backend cannot bind or its thread cannot start.
pub fn start() -> Result<Started, Error> {
    Ok(Started {
        echo: vec![spawn("backend-1", echo)?, spawn("backend-2", echo)?],
        api: vec![spawn("api-1", http)?, spawn("api-2", http)?],
        stat: vec![spawn("static-1", http)?],
    })
}

fn spawn(name: &'static str, serve: fn(TcpStream, &str)) -> Result<SocketAddr, Error> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Startup(format!("demo backend cannot bind: {e}")))?;
    let addr = l
        .local_addr()
        .map_err(|e| Error::Startup(format!("demo backend: {e}")))?;
    thread::Builder::new()
        .name(format!("demo-{name}"))
        .spawn(move || {
            for conn in l.incoming() {
                let Ok(s) = conn else { continue };
                let _ = thread::Builder::new().spawn(move || serve(s, name));
            }
        })
        .map_err(|e| Error::Startup(format!("demo backend thread: {e}")))?;
    Ok(addr)
}

fn echo(mut s: TcpStream, name: &str) {
    if s.write_all(format!("hello from {name}\n").as_bytes())
        .is_err()
    {
        return;
    }
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// JSON string contents: quotes, backslashes and control bytes escaped.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Keep-alive HTTP/1.1: each request (a body, if any, is read and
/// dropped) gets `{"backend": NAME, "method": ..., "path": ...}`.
fn http(mut s: TcpStream, name: &str) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let (head_len, method, path, body_len) = match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let body_len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| {
                        std::str::from_utf8(h.value)
                            .ok()?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    })
                    .unwrap_or(0);
                (
                    n,
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                    body_len,
                )
            }
            Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            }
            // Malformed or too large: a demo backend just hangs up.
            _ => return,
        };
        // The body: read past it, through the fixed buffer (what came with
        // the head first); whatever follows is the next request.
        let Some(end) = head_len.checked_add(body_len) else {
            return;
        };
        if buf.len() >= end {
            buf.drain(..end);
        } else {
            let mut left = end - buf.len();
            buf.clear();
            while left > 0 {
                match s.read(&mut chunk[..left.min(4096)]) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left -= n,
                }
            }
        }
        let body = format!(
            "{{\"backend\":\"{}\",\"method\":\"{}\",\"path\":\"{}\"}}\n",
            json_str(name),
            json_str(&method),
            json_str(&path)
        );
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}
