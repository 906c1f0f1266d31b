//! ringlb's own responses: short JSON errors that carry the request id.

use std::io::Write;

use super::codec::HttpError;

/// The status of a refused request head.
pub fn status_of(e: HttpError) -> u16 {
    match e {
        HttpError::Bad(_) => 400,
        HttpError::UriTooLong => 414,
        HttpError::HeadersTooLarge => 431,
        HttpError::MethodNotAllowed => 405,
        HttpError::NotImplemented => 501,
    }
}

fn words(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("Bad Request", "bad request"),
        403 => ("Forbidden", "forbidden"),
        404 => ("Not Found", "not found"),
        405 => ("Method Not Allowed", "method not allowed"),
        408 => ("Request Timeout", "request timeout"),
        413 => ("Content Too Large", "content too large"),
        414 => ("URI Too Long", "uri too long"),
        429 => ("Too Many Requests", "too many requests"),
        431 => (
            "Request Header Fields Too Large",
            "request header fields too large",
        ),
        501 => ("Not Implemented", "not implemented"),
        502 => ("Bad Gateway", "bad gateway"),
        503 => ("Service Unavailable", "service unavailable"),
        504 => ("Gateway Timeout", "gateway timeout"),
        _ => ("Error", "error"),
    }
}

/// The JSON body of an error answer (HTTP/2 sends it in a DATA frame).
pub fn error_body(status: u16, request_id: &str) -> String {
    let (_, word) = words(status);
    format!("{{\"status\":{status},\"error\":\"{word}\",\"request_id\":\"{request_id}\"}}\n")
}

/// Append a complete error response to `out`. `close`: add `Connection: close`.
/// `request_id` is `[A-Za-z0-9._:-]` only (checked or generated), so it
/// needs no JSON escaping.
pub fn error(out: &mut Vec<u8>, status: u16, request_id: &str, close: bool) {
    error_with(out, status, request_id, close, None);
}

/// [`error`] with a `Retry-After: SECONDS` field.
pub fn error_with(
    out: &mut Vec<u8>,
    status: u16,
    request_id: &str,
    close: bool,
    retry_after: Option<u64>,
) {
    let (reason, word) = words(status);
    let body_len =
        r#"{"status":,"error":"","request_id":""}"#.len() + 3 + word.len() + request_id.len() + 1;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\nX-Request-Id: {request_id}\r\n",
    );
    if let Some(s) = retry_after {
        let _ = write!(out, "Retry-After: {s}\r\n");
    }
    let _ = write!(
        out,
        "{}\r\n{{\"status\":{status},\"error\":\"{word}\",\"request_id\":\"{request_id}\"}}\n",
        if close { "Connection: close\r\n" } else { "" },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_length_matches() {
        for status in [400, 404, 405, 408, 413, 414, 429, 431, 501, 502, 503, 504] {
            let mut out = Vec::new();
            error(&mut out, status, "abc123", true);
            let text = String::from_utf8(out).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, body.len(), "{text}");
            assert!(body.starts_with(&format!("{{\"status\":{status},\"error\":\"")));
            assert!(body.ends_with("\"request_id\":\"abc123\"}\n"));
            assert!(head.contains("Connection: close"));
        }
    }
}
