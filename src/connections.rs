//! The bound on concurrent client connections (`LimitsConfig::connections_max`).
//!
//! An accept task takes a slot before each `accept`, so once every slot is held the
//! next clients wait in the kernel's listen backlog (and time out there, on their
//! side) instead of each costing the daemon a task, buffers and TLS state. Each
//! accepted stream carries its slot and returns it when the connection closes. The
//! task stops, closing the listener, as soon as the server stops taking connections.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Pause after a failed `accept` before the next one.
const ACCEPT_ERROR_PAUSE_MS: u64 = 10;

/// An accepted connection holding one of the listener's slots until it is dropped.
pub struct LimitedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

/// The accepted connections of `listener`, at most `connections_max` open at once,
/// with `TCP_NODELAY` set.
pub fn limited_incoming(
    listener: TcpListener,
    connections_max: usize,
) -> ReceiverStream<io::Result<LimitedStream>> {
    // Capacity 1: nothing is accepted ahead of the server asking for it.
    let (accepted, incoming) = mpsc::channel(1);
    let slots = Arc::new(Semaphore::new(connections_max));
    tokio::spawn(async move {
        loop {
            let slot = tokio::select! {
                () = accepted.closed() => return,
                slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            };
            let connection = tokio::select! {
                () = accepted.closed() => return,
                connection = listener.accept() => connection,
            };
            let connection = match connection {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    LimitedStream {
                        stream,
                        _slot: slot,
                    }
                }
                Err(error) => {
                    // Out of file descriptors, say: the error repeats at once, so
                    // pause rather than spin (the server only skips failed accepts).
                    tracing::warn!(%error, "accepting a connection failed");
                    drop(slot);
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                    continue;
                }
            };
            if accepted.send(Ok(connection)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(incoming)
}

impl Connected for LimitedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
