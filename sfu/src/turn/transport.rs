//! The TURN server's sockets: the UDP port, TCP and TLS listeners (each connection one task
//! reading framed messages, one writing), a reader per allocation's relay socket, and the
//! timer that expires allocations and reloads the certificate. All on the TURN thread's
//! runtime; every wait before a client has authenticated is bounded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::shared::turn_framing::TurnStreamDecoder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};

use super::allocation::{ClientKey, ClientSink, Transport};
use super::metrics::Refusal;
use super::quota::{ConnSlot, ConnSlots};
use super::server::{NewRelay, TurnCore};
use super::tls::{Certificates, RELOAD_CHECK};

/// The largest message a stream may carry: relayed datagrams are under 1500 bytes; STUN
/// requests far smaller.
const MAX_STREAM_MESSAGE: usize = 4096;
/// Messages queued for a stream client before more are dropped (a reader that stalls).
const STREAM_QUEUE: usize = 512;
/// A connection silent this long is closed (clients refresh every few minutes and send
/// consent checks every few seconds).
const IDLE_TIMEOUT: Duration = Duration::from_secs(660);

pub struct Shared {
    pub core: Mutex<TurnCore>,
    pub slots: ConnSlots,
    pub handshake: Duration,
    next_conn: AtomicU64,
}

impl Shared {
    pub fn new(core: TurnCore, slots: ConnSlots, handshake: Duration) -> Shared {
        Shared {
            core: Mutex::new(core),
            slots,
            handshake,
            next_conn: AtomicU64::new(1),
        }
    }

    fn core(&self) -> std::sync::MutexGuard<'_, TurnCore> {
        // Each operation on the core is one short call; a panic inside one leaves the
        // tables consistent enough to go on.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handle(self: &Arc<Self>, key: ClientKey, sink: &ClientSink, data: &[u8]) {
        let (reply, relay) = self.core().from_client(Instant::now(), key, sink, data);
        if let Some(reply) = reply {
            sink.send(key.addr, reply);
        }
        if let Some(relay) = relay {
            tokio::spawn(read_relay(self.clone(), relay));
        }
    }
}

/// Until stopped: messages on the UDP port.
pub async fn serve_udp(
    shared: Arc<Shared>,
    socket: Arc<UdpSocket>,
    mut stop: watch::Receiver<bool>,
) {
    let sink = ClientSink::Udp(socket.clone());
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let key = ClientKey { transport: Transport::Udp, conn: 0, addr: from };
                shared.handle(key, &sink, &buf[..n]);
            }
        }
    }
}

/// Until stopped: TCP (or, with certificates, TLS) connections.
pub async fn serve_stream(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<Arc<Certificates>>,
    stop: watch::Receiver<bool>,
) {
    let mut stopped = stop.clone();
    loop {
        let accepted = tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            a = listener.accept() => a,
        };
        let Ok((stream, peer)) = accepted else {
            // Out of descriptors, say: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(slot) = shared.slots.take(peer.ip()) else {
            shared.core().metrics.refuse(Refusal::ConnectionLimit);
            continue; // dropped: closes at once
        };
        let _ = stream.set_nodelay(true);
        let (shared, tls, stop) = (shared.clone(), tls.clone(), stop.clone());
        tokio::spawn(async move {
            let metrics = shared.core().metrics.clone();
            metrics.connections.inc();
            match tls {
                None => connection(shared, stream, Transport::Tcp, peer, slot, stop).await,
                Some(certs) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(certs.current());
                    match tokio::time::timeout(shared.handshake, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            connection(shared, tls, Transport::Tls, peer, slot, stop).await
                        }
                        Ok(Err(_)) => metrics.refuse(Refusal::TlsHandshake),
                        Err(_) => metrics.refuse(Refusal::HandshakeTimeout),
                    }
                }
            }
            metrics.connections.dec();
        });
    }
}

/// One client's stream: messages in (the first within the handshake deadline), answers
/// and relayed data out; its allocation ends with it.
async fn connection<S: AsyncRead + AsyncWrite + Send + 'static>(
    shared: Arc<Shared>,
    stream: S,
    transport: Transport,
    addr: SocketAddr,
    _slot: ConnSlot,
    mut stop: watch::Receiver<bool>,
) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
    let write = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if writer.write_all(&msg).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    let key = ClientKey {
        transport,
        conn: shared.next_conn.fetch_add(1, Ordering::Relaxed),
        addr,
    };
    let sink = ClientSink::Stream(tx);
    let mut decoder = TurnStreamDecoder::new();
    let mut buf = vec![0u8; 8192];
    let mut deadline = shared.handshake;
    let mut first = true;
    'conn: loop {
        let read = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = tokio::time::timeout(deadline, reader.read(&mut buf)) => r,
        };
        let n = match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => {
                if first {
                    shared.core().metrics.refuse(Refusal::HandshakeTimeout);
                }
                break;
            }
        };
        decoder.extend_from_slice(&buf[..n]);
        loop {
            match decoder.next_message() {
                Ok(Some(msg)) => {
                    if first {
                        first = false;
                        deadline = IDLE_TIMEOUT;
                    }
                    shared.handle(key, &sink, &msg);
                }
                Ok(None) if decoder.buffered_len() > MAX_STREAM_MESSAGE => {
                    shared.core().metrics.refuse(Refusal::FrameTooLarge);
                    break 'conn;
                }
                Ok(None) => break,
                Err(_) => {
                    shared.core().metrics.refuse(Refusal::Malformed);
                    break 'conn;
                }
            }
        }
    }
    shared.core().remove(&key);
    drop(sink);
    let _ = write.await;
}

/// Datagrams from the node's media sockets to an allocation, until the allocation ends.
async fn read_relay(shared: Arc<Shared>, relay: NewRelay) {
    let NewRelay {
        key,
        socket,
        from_media,
        mut stop,
    } = relay;
    let mut buf = vec![0u8; 2048];
    // Without a bridge, a queue that never yields: only the socket carries media.
    let (_never, idle) = tokio::sync::mpsc::channel(1);
    let mut from_media = from_media.unwrap_or(idle);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            handed = from_media.recv() => match handed {
                Some((from, data)) => shared.core().from_peer(Instant::now(), &key, from, &data),
                // The bridge let the address go: the allocation has ended.
                None => return,
            },
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    shared.core().from_peer(Instant::now(), &key, from, &buf[..n]);
                }
            }
        }
    }
}

/// Every second: expire allocations, permissions and channels; every few, look at the
/// certificate files.
pub async fn housekeeping(
    shared: Arc<Shared>,
    certs: Option<Arc<Certificates>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_reload = Instant::now();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        shared.core().expire(Instant::now());
        if let Some(c) = &certs
            && last_reload.elapsed() >= RELOAD_CHECK
        {
            last_reload = Instant::now();
            // Reading two small files: brief enough for this thread.
            c.reload_if_changed();
        }
    }
}
