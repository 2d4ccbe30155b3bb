//! Limits every HTTP server of Bootfleet applies to its connections, so a
//! boot network's misbehaving or hostile clients cannot hold them open:
//! a cap on open connections (beyond it a new one gets `503` and is
//! closed), a deadline for a request's headers, and an idle timeout that
//! closes a connection on which nothing moved in either direction.
//!
//! Why an idle timer of our own: hyper applies none of these unless given
//! a timer, its header timeout covers HTTP/1 only, and a connection that
//! never sends a byte stays in the auto builder's protocol detection, which
//! has no deadline at all.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connection limits of one HTTP listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// A request's headers must arrive within this (HTTP/1).
    pub header_timeout: Duration,
    /// A connection on which nothing is read or written for this long is
    /// closed (covers idle keep-alive, HTTP/2, and clients that never send).
    pub idle_timeout: Duration,
    /// Open connections at most; beyond, new ones get `503` and are closed.
    pub max_connections: usize,
}

impl HttpLimits {
    /// Defaults for a service's public HTTP port (the image streamer).
    pub const PUBLIC: Self = Self {
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 10_000,
    };
    /// Defaults for the admin endpoint (health probes and metrics scrapes).
    pub const ADMIN: Self = Self {
        header_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        max_connections: 256,
    };
}

/// A hyper connection builder that enforces the header timeout.
pub fn builder(limits: HttpLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// The open connections of one listener, counted against its cap.
#[derive(Clone, Debug)]
pub struct ConnectionSlots {
    slots: Arc<Semaphore>,
    limits: HttpLimits,
}

/// What [`ConnectionSlots::admit`] decided for a new connection.
#[derive(Debug)]
pub enum Admission {
    /// Serve it: keep the slot until the connection ends, and its stream
    /// tracks activity for the idle timeout.
    Admitted(OwnedSemaphorePermit, TrackedStream),
    /// Over the cap: it was told so and closed.
    Refused,
}

impl ConnectionSlots {
    /// Slots for `limits.max_connections` connections.
    pub fn new(limits: HttpLimits) -> Self {
        Self { slots: Arc::new(Semaphore::new(limits.max_connections)), limits }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.limits.max_connections - self.slots.available_permits()
    }

    /// Takes a slot for `stream`, or answers `503` and closes it (in the
    /// background: a slow peer cannot stall the accept loop).
    pub fn admit(&self, stream: TcpStream) -> Admission {
        match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => Admission::Admitted(permit, TrackedStream::new(stream)),
            Err(_) => {
                tokio::spawn(refuse(stream));
                Admission::Refused
            }
        }
    }

    /// Drives `connection` until it ends or its stream has been idle for
    /// the idle timeout (then it is dropped, closing the socket). Returns
    /// whether the connection ended by itself.
    pub async fn serve<F>(&self, activity: Activity, connection: F) -> bool
    where
        F: Future,
    {
        let mut connection = std::pin::pin!(connection);
        loop {
            let idle = activity.idle_for();
            if idle >= self.limits.idle_timeout {
                return false;
            }
            tokio::select! {
                _ = &mut connection => return true,
                () = tokio::time::sleep(self.limits.idle_timeout - idle) => {}
            }
        }
    }
}

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n\
Content-Type: text/plain\r\nContent-Length: 41\r\n\r\ntoo many open connections; retry shortly\n";

async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(REFUSAL)).await;
    let _ = stream.shutdown().await;
}

/// When a connection last moved a byte, readable from the connection task.
#[derive(Clone, Debug)]
pub struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self { start: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Time since the last byte moved (or since the connection opened).
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A TCP stream that records when bytes move through it.
#[derive(Debug)]
pub struct TrackedStream {
    inner: TcpStream,
    activity: Activity,
}

impl TrackedStream {
    fn new(inner: TcpStream) -> Self {
        Self { inner, activity: Activity::new() }
    }

    /// The activity record, for [`ConnectionSlots::serve`].
    pub fn activity(&self) -> Activity {
        self.activity.clone()
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        (listener.accept().await.unwrap().0, client)
    }

    #[tokio::test]
    async fn over_the_cap_a_connection_is_told_and_closed() {
        let limits = HttpLimits { max_connections: 1, ..HttpLimits::ADMIN };
        let slots = ConnectionSlots::new(limits);
        let (first, _c1) = pair().await;
        let Admission::Admitted(_permit, _) = slots.admit(first) else { panic!("first refused") };
        assert_eq!(slots.open(), 1);
        let (second, mut c2) = pair().await;
        assert!(matches!(slots.admit(second), Admission::Refused));
        let mut answer = String::new();
        c2.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 503") && answer.ends_with("retry shortly\n"), "{answer}");
    }

    #[tokio::test]
    async fn an_idle_connection_is_dropped_and_a_busy_one_is_not() {
        let limits = HttpLimits { idle_timeout: Duration::from_millis(200), ..HttpLimits::ADMIN };
        let slots = ConnectionSlots::new(limits);
        let (server, _client) = pair().await;
        let Admission::Admitted(_permit, stream) = slots.admit(server) else { panic!("refused") };
        let ended = slots.serve(stream.activity(), std::future::pending::<()>()).await;
        assert!(!ended, "an idle connection is cut");

        let (server, mut client) = pair().await;
        let Admission::Admitted(_permit, mut stream) = slots.admit(server) else { panic!("refused") };
        let activity = stream.activity();
        // Bytes every 50 ms for 600 ms keep it alive past three idle timeouts.
        let busy = async move {
            let mut buf = [0u8; 1];
            for _ in 0..12 {
                client.write_all(b"x").await.unwrap();
                stream.read_exact(&mut buf).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        assert!(slots.serve(activity, busy).await, "a busy connection runs to its end");
    }
}
