//! The HTTP listener: an accept loop over hyper's HTTP/1 connections (what `axum::serve`
//! does, plus what an outsider must not be able to hold):
//!
//! - a cap on open connections (a semaphore; at the cap the loop stops accepting and
//!   clients wait in the kernel's queue), sized below the process's open-file limit so the
//!   service keeps descriptors for its own files and dependencies;
//! - a header read timeout: a client that does not finish its request headers in time is
//!   cut off, and the same timer closes a keep-alive connection that stays idle between
//!   requests (hyper starts it whenever it waits for a request's head);
//! - a bounded read buffer per connection.
//!
//! A connection's permit lives as long as its socket: an upgraded WebSocket keeps counting
//! until it closes. On shutdown the loop stops accepting and asks every connection to finish
//! its request in progress and close.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::memory::Trimmer;
use crate::metrics::Metrics;

/// Largest read buffer of a connection: request heads (a bearer token of up to 16 KiB
/// included) fit; hyper's default would let a slow client grow it to 400 KiB.
const MAX_BUF: usize = 64 * 1024;

/// One accept error (out of descriptors, usually) per this interval reaches the log.
static ACCEPT_ERRORS: crate::logs::Limiter = crate::logs::Limiter::new(Duration::from_secs(10));

/// What bounds the listener.
#[derive(Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// `configured`, lowered to three quarters of the open-file limit: the other quarter keeps
/// the audit log, the booking system, the SFU nodes and Redis reachable under a flood.
pub fn connection_cap(configured: usize) -> usize {
    match open_file_limit() {
        Some(limit) if limit / 4 * 3 < configured => {
            let cap = (limit / 4 * 3).max(16);
            warn!(
                configured,
                open_file_limit = limit,
                used = cap,
                "http.max_connections lowered below the open-file limit"
            );
            cap
        }
        _ => configured,
    }
}

fn open_file_limit() -> Option<usize> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit struct that we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            return usize::try_from(limit.rlim_cur).ok();
        }
    }
    None
}

/// Serve `app` on `listener` until `stop` resolves; then stop accepting, ask connections to
/// close once their request in progress is answered, and return when they have.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Metrics,
    trimmer: Arc<Trimmer>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stopping, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        if permits.available_permits() == 0 {
            metrics.http_connection_waits.inc();
        }
        let permit = tokio::select! {
            _ = &mut stop => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    if let Some(suppressed) = ACCEPT_ERRORS.check("accept", Instant::now()) {
                        warn!(suppressed, "accepting a connection: {e}");
                    }
                    // Out of descriptors, most likely: give closing connections time to
                    // free some instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let stream = Counted::new(stream, permit, metrics.clone(), trimmer.clone());
        let conn = connection(stream, peer, app.clone(), limits.clone(), stop_rx.clone());
        connections.spawn(conn);
    }
    let _ = stopping.send(true);
    while connections.join_next().await.is_some() {}
}

/// Serve one connection; when `stopping` turns true, finish the request in progress and
/// close (an upgraded WebSocket has left hyper already and is ended by the drain).
async fn connection(
    stream: Counted,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
) {
    let router = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        hyper::service::Service::call(&router, req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUF);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        // Set once, from false to true.
        _ = stopping.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Header timeouts, resets, garbage: the client's doing, not worth a warning.
        debug!(%peer, "HTTP connection: {e}");
    }
}

/// A client's socket with its place under the connection cap: both go when it is dropped.
struct Counted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    metrics: Metrics,
    trimmer: Arc<Trimmer>,
}

impl Counted {
    fn new(
        stream: TcpStream,
        permit: OwnedSemaphorePermit,
        metrics: Metrics,
        trimmer: Arc<Trimmer>,
    ) -> Counted {
        metrics.http_connections.inc();
        Counted {
            stream,
            _permit: permit,
            metrics,
            trimmer,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.metrics.http_connections.dec();
        self.trimmer.note_closed();
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
