//! A participant's TURN relay, for relay-only ICE (`iceTransportPolicy: "relay"`): an
//! allocation on a TURN server over UDP, TCP or TLS (rtc-turn's sans-I/O client; TURN's
//! own framing on streams), whose relayed address becomes the participant's only candidate.
//! Everything the peer sends goes through the allocation, everything the allocation
//! receives goes to the peer.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use metaclinic_signaling::protocol::IceServer;
use rtc::sansio::Protocol;
use rtc::shared::turn_framing::TurnStreamDecoder;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc::turn::client::{Client, ClientConfig, Event};

/// Packets held per peer while its permission is being created (ICE retransmits anyway).
const PENDING_PER_PEER: usize = 32;
/// Bytes queued towards a stream server before more are dropped.
const MAX_QUEUED: usize = 1 << 20;

/// How the client reaches the TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayTransport {
    Udp,
    Tcp,
    Tls,
}

impl std::str::FromStr for RelayTransport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "udp" => Ok(RelayTransport::Udp),
            "tcp" => Ok(RelayTransport::Tcp),
            "tls" => Ok(RelayTransport::Tls),
            _ => Err(format!("{s}: udp, tcp or tls")),
        }
    }
}

/// Which TURN server to allocate on, and how.
#[derive(Debug, Clone)]
pub struct RelaySpec {
    pub server: SocketAddr,
    pub transport: RelayTransport,
    /// The name the server's certificate must carry (the `turns:` URL's host).
    pub tls_name: String,
    /// CA certificates (PEM) to trust for TLS; None: the system's roots.
    pub tls_ca_pem: Option<Vec<u8>>,
    pub username: String,
    pub password: String,
}

/// A TURN URL's parts (RFC 7065): `turn[s]:host[:port][?transport=udp|tcp]`.
pub fn parse_url(url: &str) -> Option<(RelayTransport, String, u16)> {
    let (tls, rest) = match url.split_once(':')? {
        ("turn", rest) => (false, rest),
        ("turns", rest) => (true, rest),
        _ => return None,
    };
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    let tcp = query == "transport=tcp";
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
            (h.to_owned(), p.parse().ok()?)
        }
        _ => (hostport.to_owned(), if tls { 5349 } else { 3478 }),
    };
    let transport = match (tls, tcp) {
        (true, _) => RelayTransport::Tls,
        (false, true) => RelayTransport::Tcp,
        (false, false) => RelayTransport::Udp,
    };
    Some((transport, host.trim_matches(['[', ']']).to_owned(), port))
}

impl RelaySpec {
    /// The first server among `servers` reachable over `transport`, with its credential.
    pub fn from_ice_servers(
        servers: &[IceServer],
        transport: RelayTransport,
        tls_ca_pem: Option<Vec<u8>>,
    ) -> Option<RelaySpec> {
        for s in servers {
            let (Some(username), Some(password)) = (&s.username, &s.credential) else {
                continue;
            };
            for url in &s.urls {
                let Some((t, host, port)) = parse_url(url) else {
                    continue;
                };
                if t != transport {
                    continue;
                }
                let Some(server) = (host.as_str(), port).to_socket_addrs().ok()?.next() else {
                    continue;
                };
                return Some(RelaySpec {
                    server,
                    transport,
                    tls_name: host,
                    tls_ca_pem: tls_ca_pem.clone(),
                    username: username.clone(),
                    password: password.clone(),
                });
            }
        }
        None
    }
}

/// A stream to the server: TCP, or TLS over it.
struct StreamWire {
    tcp: mio::net::TcpStream,
    tls: Option<rustls::ClientConnection>,
    decoder: TurnStreamDecoder,
    out: Vec<u8>,
}

enum Wire {
    Udp(mio::net::UdpSocket),
    Stream(Box<StreamWire>),
}

pub struct TurnRelay {
    client: Client,
    wire: Wire,
    server: SocketAddr,
    local: SocketAddr,
    /// The allocation's relayed address: the participant's candidate.
    pub relayed: Option<SocketAddr>,
    failed: Option<String>,
    /// Peers asked for, and what waits for their permission (None: granted).
    peers: HashMap<SocketAddr, Option<Vec<BytesMut>>>,
    received: VecDeque<(SocketAddr, BytesMut)>,
}

fn tls_config(ca: Option<&[u8]>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(pem) => {
            for c in CertificateDer::pem_slice_iter(pem) {
                roots.add(c?)?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

impl StreamWire {
    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            Some(c) => {
                c.writer().write_all(data)?;
            }
            None if self.out.len() < MAX_QUEUED => self.out.extend_from_slice(data),
            None => {}
        }
        self.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(c) = &mut self.tls {
            while c.wants_write() {
                match c.write_tls(&mut self.tcp) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        }
        while !self.out.is_empty() {
            match self.tcp.write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Read what the socket has; whole TURN messages out.
    fn read(&mut self, messages: &mut Vec<Vec<u8>>) -> io::Result<()> {
        let mut buf = [0u8; 16384];
        loop {
            let n = match &mut self.tls {
                Some(c) => match c.read_tls(&mut self.tcp) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => {
                        c.process_new_packets().map_err(io::Error::other)?;
                        let mut got = 0;
                        loop {
                            match c.reader().read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    self.decoder.extend_from_slice(&buf[..n]);
                                    got += n;
                                }
                                Err(_) => break,
                            }
                        }
                        got.max(1)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                },
                None => match self.tcp.read(&mut buf) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => {
                        self.decoder.extend_from_slice(&buf[..n]);
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                },
            };
            let _ = n;
        }
        while let Some(m) = self.decoder.next_message().map_err(io::Error::other)? {
            messages.push(m);
        }
        // The handshake may want to answer what was read.
        self.flush()
    }
}

impl TurnRelay {
    /// Connect and allocate (blocking, within `timeout`): the relayed address is known
    /// when this returns.
    pub fn allocate(
        spec: &RelaySpec,
        bind_ip: IpAddr,
        timeout: Duration,
    ) -> anyhow::Result<TurnRelay> {
        let (wire, local, protocol) = match spec.transport {
            RelayTransport::Udp => {
                let s = std::net::UdpSocket::bind(SocketAddr::new(bind_ip, 0))?;
                s.set_nonblocking(true)?;
                let local = s.local_addr()?;
                (
                    Wire::Udp(mio::net::UdpSocket::from_std(s)),
                    local,
                    TransportProtocol::UDP,
                )
            }
            RelayTransport::Tcp | RelayTransport::Tls => {
                let tcp = std::net::TcpStream::connect_timeout(&spec.server, timeout)
                    .map_err(|e| anyhow::anyhow!("TURN server {}: {e}", spec.server))?;
                tcp.set_nodelay(true)?;
                tcp.set_nonblocking(true)?;
                let local = tcp.local_addr()?;
                let tls = match spec.transport {
                    RelayTransport::Tls => {
                        let name = rustls::pki_types::ServerName::try_from(spec.tls_name.clone())?;
                        let config = tls_config(spec.tls_ca_pem.as_deref())?;
                        Some(rustls::ClientConnection::new(config, name)?)
                    }
                    _ => None,
                };
                let wire = StreamWire {
                    tcp: mio::net::TcpStream::from_std(tcp),
                    tls,
                    decoder: TurnStreamDecoder::new(),
                    out: Vec::new(),
                };
                (Wire::Stream(Box::new(wire)), local, TransportProtocol::TCP)
            }
        };
        let config = ClientConfig {
            turn_serv_addr: spec.server.to_string(),
            local_addr: local,
            transport_protocol: protocol,
            username: spec.username.clone(),
            password: spec.password.clone(),
            ..Default::default()
        };
        let crypto = rtc::crypto::default_provider().map_err(|e| anyhow::anyhow!("{e}"))?;
        let client = Client::new(config, crypto).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut relay = TurnRelay {
            client,
            wire,
            server: spec.server,
            local,
            relayed: None,
            failed: None,
            peers: HashMap::new(),
            received: VecDeque::new(),
        };
        let start = Instant::now();
        relay
            .client
            .allocate(start)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        relay.flush_client();
        while relay.relayed.is_none() {
            if let Some(e) = &relay.failed {
                anyhow::bail!("TURN allocation on {} refused: {e}", spec.server);
            }
            if start.elapsed() > timeout {
                anyhow::bail!(
                    "TURN allocation on {}: no answer within {timeout:?}",
                    spec.server
                );
            }
            std::thread::sleep(Duration::from_millis(2));
            let now = Instant::now();
            relay.read(now)?;
            relay.handle_timeout(now);
        }
        Ok(relay)
    }

    /// Register the socket for readiness (a stream also for writability).
    pub fn register(&mut self, registry: &mio::Registry, token: mio::Token) -> io::Result<()> {
        use mio::Interest;
        match &mut self.wire {
            Wire::Udp(s) => registry.register(s, token, Interest::READABLE),
            Wire::Stream(w) => {
                registry.register(&mut w.tcp, token, Interest::READABLE | Interest::WRITABLE)
            }
        }
    }

    pub fn deregister(&mut self, registry: &mio::Registry) {
        let _ = match &mut self.wire {
            Wire::Udp(s) => registry.deregister(s),
            Wire::Stream(w) => registry.deregister(&mut w.tcp),
        };
    }

    /// Send `data` to `peer` through the allocation (asking for a permission first).
    pub fn send(&mut self, now: Instant, peer: SocketAddr, data: BytesMut) {
        let Some(relayed) = self.relayed else { return };
        match self.peers.get_mut(&peer) {
            Some(None) => {
                if let Ok(mut r) = self.client.relay(relayed) {
                    let _ = r.send_to(now, &data, peer);
                }
            }
            Some(Some(waiting)) => {
                if waiting.len() < PENDING_PER_PEER {
                    waiting.push(data);
                }
            }
            None => {
                self.peers.insert(peer, Some(vec![data]));
                if let Ok(mut r) = self.client.relay(relayed) {
                    let _ = r.create_permission(now, peer);
                }
            }
        }
        self.flush_client();
    }

    /// Take in what the socket holds.
    pub fn read(&mut self, now: Instant) -> io::Result<()> {
        let mut messages = Vec::new();
        match &mut self.wire {
            Wire::Udp(s) => {
                let mut buf = [0u8; 2048];
                while let Ok((n, from)) = s.recv_from(&mut buf) {
                    if from == self.server {
                        messages.push(buf[..n].to_vec());
                    }
                }
            }
            Wire::Stream(w) => w.read(&mut messages)?,
        }
        for m in messages {
            let _ = self.client.handle_read(TaggedBytesMut {
                now,
                transport: TransportContext {
                    local_addr: self.local,
                    peer_addr: self.server,
                    ecn: None,
                    transport_protocol: match self.wire {
                        Wire::Udp(_) => TransportProtocol::UDP,
                        Wire::Stream(_) => TransportProtocol::TCP,
                    },
                },
                message: BytesMut::from(&m[..]),
            });
        }
        self.events(now);
        self.flush_client();
        Ok(())
    }

    fn events(&mut self, now: Instant) {
        while let Some(ev) = self.client.poll_event() {
            match ev {
                Event::AllocateResponse(_, relayed) => self.relayed = Some(relayed),
                Event::AllocateError(_, e) => self.failed = Some(e.to_string()),
                Event::CreatePermissionResponse(_, peer) => {
                    let waiting = self.peers.insert(peer, None).flatten().unwrap_or_default();
                    if let (Some(relayed), false) = (self.relayed, waiting.is_empty())
                        && let Ok(mut r) = self.client.relay(relayed)
                    {
                        for d in waiting {
                            let _ = r.send_to(now, &d, peer);
                        }
                    }
                }
                Event::CreatePermissionError(_, e) => {
                    tracing::debug!("TURN permission refused: {e}");
                }
                Event::DataIndicationOrChannelData(_, from, data) => {
                    self.received.push_back((from, data));
                }
                _ => {}
            }
        }
    }

    /// A datagram the allocation received, and from whom.
    pub fn pop_received(&mut self) -> Option<(SocketAddr, BytesMut)> {
        self.received.pop_front()
    }

    pub fn next_timeout(&mut self) -> Option<Instant> {
        self.client.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = self.client.handle_timeout(now);
        self.events(now);
        self.flush_client();
    }

    /// Give the allocation back (Refresh with lifetime 0).
    pub fn close(&mut self, now: Instant) {
        if let Some(relayed) = self.relayed
            && let Ok(mut r) = self.client.relay(relayed)
        {
            let _ = r.close(now);
        }
        self.flush_client();
    }

    /// Put the client's messages on the wire; a stream also flushes what waited.
    pub fn flush_client(&mut self) {
        while let Some(t) = self.client.poll_write() {
            match &mut self.wire {
                Wire::Udp(s) => {
                    let _ = s.send_to(&t.message, t.transport.peer_addr);
                }
                Wire::Stream(w) => {
                    let _ = w.send(&t.message);
                }
            }
        }
        if let Wire::Stream(w) = &mut self.wire {
            let _ = w.flush();
        }
    }
}
