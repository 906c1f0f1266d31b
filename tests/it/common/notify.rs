//! sd_notify from the service manager's side: a NOTIFY_SOCKET the test
//! binds, and a bounded wait for a state line.

use std::{os::unix::net::UnixDatagram, path::PathBuf, time::Duration};

use super::TempDir;

/// A unix datagram socket for NOTIFY_SOCKET in a temp dir.
pub fn notify_socket(dir: &TempDir) -> (UnixDatagram, PathBuf) {
    let p = dir.path("notify.sock");
    let s = UnixDatagram::bind(&p).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (s, p)
}

/// Datagrams until one has the line `want` (up to `limit`); all received so
/// far, and whether `want` came.
pub fn recv_until(sock: &UnixDatagram, want: &str, limit: Duration, got: &mut Vec<String>) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let hit = msg.lines().any(|l| l == want);
            got.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}
