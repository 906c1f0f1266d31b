//! The bridge between ringlb's [`Stream`] and the tokio I/O traits the
//! `h2` crate is written against: no tokio runtime, no second TLS stack.
//!
//! Reads and writes are the stream's own nonblocking calls (plain sockets
//! and rustls alike); when one would block, the wait is the stream's
//! readiness future (an io_uring PollAdd), boxed and kept until it fires.
//! No bytes are copied on the way and no buffer is handed to the kernel,
//! so dropping a connection never leaves a read in flight.
//!
//! monoio has no cooperative budget: `h2` polls its connection until the
//! socket says `Pending`, so a peer that keeps the socket full would keep
//! the worker inside one task. [`H2Io`] returns `Pending` (and wakes
//! itself) after [`READ_STREAK`] reads in a row, letting the worker's
//! other tasks run.

use std::{
    future::Future,
    io,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::stream::Stream;

/// Reads in a row before the task yields to the worker's others.
pub const READ_STREAK: u32 = 16;

type Wait = Pin<Box<dyn Future<Output = io::Result<()>>>>;

/// A [`Stream`] as a tokio `AsyncRead + AsyncWrite`.
pub struct H2Io {
    s: Rc<Stream>,
    /// Bytes read before the bridge took over (an h2c preface), replayed first.
    pre: Bytes,
    read_wait: Option<Wait>,
    write_wait: Option<Wait>,
    streak: u32,
}

impl H2Io {
    pub fn new(s: Stream, pre: Bytes) -> H2Io {
        H2Io {
            s: Rc::new(s),
            pre,
            read_wait: None,
            write_wait: None,
            streak: 0,
        }
    }

    /// The stream underneath (TLS facts, the fd).
    pub fn stream(&self) -> &Stream {
        &self.s
    }

    fn poll_wait(slot: &mut Option<Wait>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match slot {
            Some(w) => match w.as_mut().poll(cx) {
                Poll::Ready(r) => {
                    *slot = None;
                    Poll::Ready(r)
                }
                Poll::Pending => Poll::Pending,
            },
            None => Poll::Ready(Ok(())),
        }
    }

    fn arm_read(&mut self) {
        let s = Rc::clone(&self.s);
        self.read_wait = Some(Box::pin(async move { s.readable().await }));
    }

    fn arm_write(&mut self) {
        let s = Rc::clone(&self.s);
        self.write_wait = Some(Box::pin(async move { s.writable().await }));
    }

    /// Run `op` until it does not block, waiting for writability between.
    fn poll_writing<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&Stream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            if let Err(e) = std::task::ready!(Self::poll_wait(&mut self.write_wait, cx)) {
                return Poll::Ready(Err(e));
            }
            match op(&self.s) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.arm_write(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return Poll::Ready(r),
            }
        }
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        if this.streak >= READ_STREAK {
            this.streak = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        loop {
            if let Err(e) = std::task::ready!(Self::poll_wait(&mut this.read_wait, cx)) {
                return Poll::Ready(Err(e));
            }
            match this.s.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    this.streak += 1;
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    this.streak = 0;
                    this.arm_read();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_writing(cx, |s| s.try_write(buf, &[]))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // The stream writes two slices in one call; a partial write is
        // allowed, h2 sends the rest next.
        let mut it = bufs.iter().filter(|b| !b.is_empty());
        let a: &[u8] = it.next().map_or(&[], |b| b);
        let b: &[u8] = it.next().map_or(&[], |b| b);
        self.get_mut().poll_writing(cx, |s| s.try_write(a, b))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_writing(cx, Stream::try_flush)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_writing(cx, Stream::try_flush))?;
        // TLS: a close_notify first; then FIN. The peer may be gone already.
        let _ = this.s.shutdown_write();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn replays_the_preface_then_reads_and_writes_the_socket() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = l.local_addr().expect("addr");
            let peer = std::thread::spawn(move || {
                use std::io::{Read, Write};
                let (mut s, _) = l.accept().expect("accept");
                s.write_all(b"world").expect("write");
                let mut got = [0u8; 4];
                s.read_exact(&mut got).expect("read");
                got
            });
            let s = std::net::TcpStream::connect(addr).expect("connect");
            s.set_nonblocking(true).expect("nonblocking");
            let mut io = H2Io::new(
                Stream::from_std(s).expect("register"),
                Bytes::from_static(b"hello "),
            );
            let mut got = vec![0u8; 11];
            io.read_exact(&mut got).await.expect("read");
            assert_eq!(&got, b"hello world");
            io.write_all(b"ping").await.expect("write");
            io.flush().await.expect("flush");
            assert_eq!(&peer.join().expect("peer"), b"ping");
        });
    }
}
