//! sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET.
//! Does nothing when not started by systemd with Type=notify.

use std::os::unix::net::UnixDatagram;

/// Send a state string such as "READY=1" or "STOPPING=1". Errors are ignored
/// on purpose: notification is advisory and must never stop the proxy.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name) {
            let _ = sock.send_to_addr(state.as_bytes(), &addr);
        }
    } else {
        let _ = sock.send_to(state.as_bytes(), &path);
    }
}
