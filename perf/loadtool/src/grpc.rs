//! A gRPC unary backend for perf/grpc.sh: HTTP/2 cleartext (prior knowledge) on several ports;
//! every request's body (one length-prefixed gRPC message) is echoed back as the response
//! message, followed by trailers `grpc-status: 0`. Any path is served, so it stands for any
//! unary method. The h2 crate on tokio: the same implementation ringlb uses, in a different
//! runtime, so the backend is cheap next to the proxies it is measured behind.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

use crate::{net, Args};

pub async fn run(a: &Args) -> Result<i32, String> {
    let addrs = net::parse_addrs(a.req("listen")?)?;
    let calls = Arc::new(AtomicU64::new(0));
    for addr in &addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("bind {addr}: {e}"))?;
        let calls = calls.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let _ = s.set_nodelay(true);
                tokio::spawn(serve(s, calls.clone()));
            }
        });
    }
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    println!("grpc listening={}", list.join(","));
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    println!("grpc stats calls={}", calls.load(Relaxed));
    Ok(0)
}

async fn serve(s: TcpStream, calls: Arc<AtomicU64>) {
    let mut conn = match h2::server::Builder::new()
        .max_concurrent_streams(1024)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake::<_, Bytes>(s)
        .await
    {
        Ok(c) => c,
        Err(_) => return,
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let calls = calls.clone();
        tokio::spawn(async move {
            let mut body = req.into_body();
            let mut msg = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                msg.extend_from_slice(&chunk);
            }
            let resp = http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .body(())
                .unwrap_or_default();
            let Ok(mut send) = respond.send_response(resp, false) else {
                return;
            };
            let _ = send.send_data(Bytes::from(msg), false);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let _ = send.send_trailers(trailers);
            calls.fetch_add(1, Relaxed);
        });
    }
}
