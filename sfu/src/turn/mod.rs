//! The embedded TURN server (RFC 8656): the default way through for clients whose network
//! blocks UDP, or everything but TCP 443. Each SFU node runs one, over UDP (3478), TCP and
//! TLS (443 in production), with long-term credentials in the TURN REST style checked
//! against a shared secret (no user database; see [`credential`]).
//!
//! It relays only to this node's own media sockets ([`MediaAddrs`]): a permission, channel
//! or send to any other address is refused and counted, so it can never serve as an open
//! relay. Quotas: allocations per participant reference and on the node, bytes per second
//! per allocation; before authentication, requests per source and TCP/TLS connection slots
//! with handshake deadlines. Every refusal is counted with its reason (`metrics`).
//!
//! Who may allocate: a credential names a participant reference (signaling uses the
//! participant id it opens the SFU session with). The server accepts only references of
//! participants currently placed on this node ([`PlacedParticipants`], kept by `Node` as
//! sessions open and close), plus `precall/...` probes that may allocate but never relay.
//! It cannot tell which ICE session a relayed flow belongs to (that is ICE's business, and
//! ICE's own credentials protect each session), so a placed participant's credential used
//! from another client's browser is not detectable here; its allocation still reaches only
//! this node's media ports.
//!
//! Relayed media reaches the media threads directly ([`bridge`]): a client's datagram is
//! queued for the media thread that owns the peer port, as if it had arrived from the
//! allocation's relay address, and what a media thread sends to that address is queued back
//! to the allocation; no second trip through the kernel's UDP stack. Each allocation still
//! binds a relay socket (its address names the flow), which carries media only when the
//! node runs without the bridge.
//!
//! Layout: [`config`], [`credential`], [`allocation`] (one client's state), [`server`] (the
//! answer to each message), [`transport`] (sockets and tasks), [`tls`] (the certificate,
//! reloaded), [`quota`], [`metrics`].

pub mod allocation;
pub mod bridge;
pub mod config;
pub mod metrics;
pub mod quota;
pub mod server;
pub mod tls;
pub mod transport;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

pub use config::TurnConfig;

use crate::config::SfuConfig;
use crate::ids::{ParticipantId, RoomId};

/// This node's media sockets: the addresses clients are told (announced) and where the
/// relay actually sends (local: loopback when the sockets bind every interface).
#[derive(Debug, Clone)]
pub struct MediaAddrs {
    pairs: Vec<(SocketAddr, SocketAddr)>,
}

impl MediaAddrs {
    pub fn from_config(config: &SfuConfig) -> MediaAddrs {
        let announced = config.node.announced_ip;
        let local = match config.rtc.bind_ip {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let pairs = (0..config.media_threads())
            .map(|i| {
                let port = config.rtc.udp_port + i as u16;
                (
                    SocketAddr::new(announced, port),
                    SocketAddr::new(local, port),
                )
            })
            .collect();
        MediaAddrs { pairs }
    }

    pub fn announced_ip(&self) -> IpAddr {
        self.pairs[0].0.ip()
    }

    /// Where relay sockets bind: beside the media sockets' local address.
    pub fn relay_ip(&self) -> IpAddr {
        self.pairs[0].1.ip()
    }

    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.pairs.iter().any(|(a, _)| a.ip() == ip)
    }

    pub fn local_for(&self, announced: SocketAddr) -> Option<SocketAddr> {
        self.pairs
            .iter()
            .find(|(a, _)| *a == announced)
            .map(|(_, l)| *l)
    }

    pub fn announced_for(&self, local: SocketAddr) -> Option<SocketAddr> {
        self.pairs
            .iter()
            .find(|(_, l)| *l == local)
            .map(|(a, _)| *a)
    }
}

/// Participants with a session on this node, by reference (participant id), and the
/// rooms they are in.
#[derive(Default)]
pub struct PlacedParticipants {
    placed: Mutex<HashMap<String, HashSet<RoomId>>>,
}

impl PlacedParticipants {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<RoomId>>> {
        self.placed.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, room: &RoomId, participant: &ParticipantId) {
        self.map()
            .entry(participant.as_str().to_owned())
            .or_default()
            .insert(room.clone());
    }

    pub fn remove(&self, room: &RoomId, participant: &ParticipantId) {
        let mut m = self.map();
        if let Some(rooms) = m.get_mut(participant.as_str()) {
            rooms.remove(room);
            if rooms.is_empty() {
                m.remove(participant.as_str());
            }
        }
    }

    pub fn remove_room(&self, room: &RoomId) {
        self.map().retain(|_, rooms| {
            rooms.remove(room);
            !rooms.is_empty()
        });
    }

    pub fn contains(&self, reference: &str) -> bool {
        self.map().contains_key(reference)
    }
}

pub use metaclinic_protocol::turn::{PRECALL_PREFIX, TurnAdvert, credential};

/// What this node's configuration advertises of its TURN server.
pub fn advert(config: &SfuConfig) -> TurnAdvert {
    let ip = config.node.announced_ip;
    let host = if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let t = &config.turn;
    TurnAdvert {
        // `{node}` names this node: one wildcard certificate, a DNS name per node.
        tls_host: if t.tls_host.is_empty() {
            host.clone()
        } else {
            t.tls_host.replace("{node}", &config.node.id)
        },
        host,
        udp_port: t.udp_port,
        tcp_port: t.tcp_port,
        tls_port: match (t.tls_port, t.tls_public_port) {
            (0, _) => 0,
            (p, 0) => p,
            (_, public) => public,
        },
    }
}

/// The running server: its own thread with a small runtime; stopped by `shutdown`.
pub struct TurnServer {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    pub advert: TurnAdvert,
}

fn bind_err(what: &str, addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!("cannot bind the TURN {what} port {addr}: {e}")
}

impl TurnServer {
    /// Bind the ports (a taken port fails the node's start) and start the thread.
    pub fn start(
        config: &SfuConfig,
        placed: Arc<PlacedParticipants>,
        bridge: Option<Arc<bridge::RelayBridge>>,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<TurnServer> {
        let t = &config.turn;
        let secret = t.secret().map_err(|e| anyhow::anyhow!("turn: {e}"))?;
        let ip = t.bind_ip;
        let udp = match t.udp_port {
            0 => None,
            p => Some(
                std::net::UdpSocket::bind(SocketAddr::new(ip, p))
                    .map_err(|e| bind_err("UDP", SocketAddr::new(ip, p), e))?,
            ),
        };
        let tcp_listener =
            |port: u16, what: &str| -> anyhow::Result<Option<std::net::TcpListener>> {
                if port == 0 {
                    return Ok(None);
                }
                let addr = SocketAddr::new(ip, port);
                let l = std::net::TcpListener::bind(addr).map_err(|e| bind_err(what, addr, e))?;
                l.set_nonblocking(true)?;
                Ok(Some(l))
            };
        let tcp = tcp_listener(t.tcp_port, "TCP")?;
        let tls = tcp_listener(t.tls_port, "TLS")?;
        let certs = match t.tls_port {
            0 => None,
            _ => Some(Arc::new(tls::Certificates::new(
                &t.tls_cert_path,
                &t.tls_key_path,
            )?)),
        };
        let metrics = metrics::TurnMetrics::register(registry);
        let core = server::TurnCore::new(
            t,
            secret,
            MediaAddrs::from_config(config),
            placed,
            bridge,
            metrics,
        )?;
        let shared = Arc::new(transport::Shared::new(
            core,
            quota::ConnSlots::new(t.max_connections, t.max_connections_per_ip),
            Duration::from_millis(t.handshake_timeout_ms),
        ));
        if let Some(u) = &udp {
            u.set_nonblocking(true)?;
        }
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("turn".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut tasks = Vec::new();
                    if let Some(u) = udp.and_then(|u| tokio::net::UdpSocket::from_std(u).ok()) {
                        let s = shared.clone();
                        tasks.push(tokio::spawn(transport::serve_udp(
                            s,
                            Arc::new(u),
                            stopped.clone(),
                        )));
                    }
                    for (l, c) in [(tcp, None), (tls, certs.clone())] {
                        if let Some(l) = l.and_then(|l| tokio::net::TcpListener::from_std(l).ok()) {
                            let s = shared.clone();
                            tasks.push(tokio::spawn(transport::serve_stream(
                                s,
                                l,
                                c,
                                stopped.clone(),
                            )));
                        }
                    }
                    tasks.push(tokio::spawn(transport::housekeeping(
                        shared, certs, stopped,
                    )));
                    for t in tasks {
                        let _ = t.await;
                    }
                });
                // Dropping the runtime ends the connection and relay tasks left.
            })?;
        let advert = advert(config);
        tracing::info!(urls = ?advert.urls(), "TURN server started");
        Ok(TurnServer {
            stop,
            thread: Some(thread),
            advert,
        })
    }

    /// Stop accepting, close every connection and allocation, and join the thread.
    pub fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Result<SfuConfig, crate::config::ConfigError> {
        SfuConfig::from_toml(&format!(
            "[control]\ncredential = \"0123456789abcdef\"\n[rtc]\nmedia_threads = 2\n{toml}"
        ))
    }

    #[test]
    fn the_relay_reaches_only_the_media_ports_by_their_local_address() {
        let cfg = config("[node]\nannounced_ip = \"203.0.113.7\"\n").unwrap();
        let media = MediaAddrs::from_config(&cfg);
        let announced: SocketAddr = "203.0.113.7:40001".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(media.local_for(announced), Some(local));
        assert_eq!(media.announced_for(local), Some(announced));
        assert_eq!(media.local_for("203.0.113.7:40002".parse().unwrap()), None);
        assert_eq!(media.local_for("198.51.100.1:40000".parse().unwrap()), None);
        assert!(media.allows_ip("203.0.113.7".parse().unwrap()));
        assert!(!media.allows_ip("127.0.0.1".parse().unwrap()));
        assert_eq!(media.relay_ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn the_advert_lists_the_configured_transports() {
        let cfg = config(
            "[node]\nannounced_ip = \"203.0.113.7\"\n\
             [turn]\nshared_secret = \"0123456789abcdef\"\ntls_port = 0\ntcp_port = 3479\n",
        )
        .unwrap();
        assert!(cfg.turn.active());
        assert_eq!(
            advert(&cfg).urls(),
            [
                "turn:203.0.113.7:3478?transport=udp",
                "turn:203.0.113.7:3479?transport=tcp"
            ]
        );
    }

    #[test]
    fn turn_settings_are_validated_by_key() {
        // No secret: off, and valid (the node starts without TURN).
        let cfg = config("").unwrap();
        assert!(!cfg.turn.active());
        for (toml, key) in [
            ("shared_secret = \"short\"", "turn.shared_secret:"),
            (
                "shared_secret = \"0123456789abcdef\"",
                "turn.tls_cert_path:",
            ),
            (
                "shared_secret = \"0123456789abcdef\"\ntls_port = 0\nmax_bandwidth_bps = 1000",
                "turn.max_bandwidth_bps:",
            ),
            (
                "shared_secret_file = \"/nonexistent/secret\"",
                "turn.shared_secret_file:",
            ),
        ] {
            let err = config(&format!("[turn]\n{toml}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(key), "{toml}: {err}");
        }
    }

    #[test]
    fn placed_participants_leave_with_their_room() {
        let p = PlacedParticipants::default();
        let (r1, r2) = (RoomId::new("r1").unwrap(), RoomId::new("r2").unwrap());
        let a = ParticipantId::new("Patient/a").unwrap();
        p.add(&r1, &a);
        p.add(&r2, &a);
        p.remove_room(&r1);
        assert!(p.contains("Patient/a"));
        p.remove(&r2, &a);
        assert!(!p.contains("Patient/a"));
    }
}
