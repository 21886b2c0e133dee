//! The cap on client connections served at once (`max_connections`).
//!
//! Why. Each connection may hold up to the HTTP/2 connection window of received data and
//! its streams' responses, so the number of connections bounds what clients can make the
//! broker buffer. At the cap the broker stops accepting: further connections wait in the
//! kernel's listen backlog (their TCP connect succeeds, their HTTP/2 handshake waits) until
//! a served connection closes, rather than being refused.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Accepts from `incoming` only while fewer than `max` accepted connections are open.
pub fn limit<S>(
    incoming: S,
    max: usize,
) -> impl Stream<Item = Result<CountedConnection, std::io::Error>> + Send
where
    S: Stream<Item = Result<TcpStream, std::io::Error>> + Send + Unpin,
{
    let slots = Arc::new(Semaphore::new(max));
    futures::stream::unfold((incoming, slots), |(mut incoming, slots)| async move {
        // Never closed, so `acquire_owned` only fails if it were.
        let slot = slots.clone().acquire_owned().await.ok()?;
        let accepted = incoming.next().await?;
        let connection = accepted.map(|io| CountedConnection { io, _slot: slot });
        Some((connection, (incoming, slots)))
    })
}

/// A served connection; its slot is given back when the connection is dropped (closed).
pub struct CountedConnection {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Connected for CountedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for CountedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
