//! One allocation (RFC 8656 §5): the relay socket a client holds, its permissions and
//! channels, its byte budget, and where relayed data for the client goes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::bridge::RelayBridge;
use super::quota::Bucket;

/// RFC 8656 §9: a permission lasts 300 s, a channel binding 600 s, unless refreshed.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);

/// How the client reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// The client side of an allocation's 5-tuple: transport, connection (0 for UDP), address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub transport: Transport,
    pub conn: u64,
    pub addr: SocketAddr,
}

/// Where messages for a client go: the server's UDP socket, or the writer of its stream.
#[derive(Clone)]
pub enum ClientSink {
    Udp(Arc<UdpSocket>),
    Stream(mpsc::Sender<Vec<u8>>),
}

impl ClientSink {
    /// Send without waiting; false when the socket or the stream's queue is full (the
    /// message is dropped, as a congested network would).
    pub fn send(&self, to: SocketAddr, data: Vec<u8>) -> bool {
        match self {
            ClientSink::Udp(s) => s.try_send_to(&data, to).is_ok(),
            ClientSink::Stream(tx) => tx.try_send(data).is_ok(),
        }
    }
}

/// A relay address registered with the bridge; dropping it deregisters the address.
pub struct BridgeSlot {
    bridge: Arc<RelayBridge>,
    relay: SocketAddr,
}

impl BridgeSlot {
    pub fn new(bridge: Arc<RelayBridge>, relay: SocketAddr) -> BridgeSlot {
        BridgeSlot { bridge, relay }
    }
}

impl Drop for BridgeSlot {
    fn drop(&mut self) {
        self.bridge.deregister(self.relay);
    }
}

pub struct Allocation {
    pub username: String,
    /// Whom the credential names (quotas are counted per reference).
    pub reference: String,
    /// The long-term key (MD5 of username:realm:password) every later request is checked
    /// and answered with.
    pub key: Vec<u8>,
    /// A pre-call probe: it may allocate, never relay.
    pub precall: bool,
    pub relay: Arc<UdpSocket>,
    /// The relay socket's own address: the peer address media threads know the flow by.
    pub relay_local: SocketAddr,
    /// Its registration with the media threads' bridge, ended with the allocation.
    pub _bridge_slot: Option<BridgeSlot>,
    /// The relayed address as told to the client (the node's announced IP, the relay port).
    pub relayed: SocketAddr,
    pub expires: Instant,
    pub permissions: HashMap<IpAddr, Instant>,
    /// Channel number to peer (announced address), and back.
    pub channels: HashMap<u16, (SocketAddr, Instant)>,
    pub channel_of: HashMap<SocketAddr, u16>,
    pub budget: Bucket,
    pub sink: ClientSink,
    /// Dropping the allocation drops this: its relay reader stops.
    pub _stop: oneshot::Sender<()>,
}

impl Allocation {
    pub fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|&t| t > now)
    }

    /// Bind `number` to `peer` (or refresh the binding). False when either is bound to
    /// something else (RFC 8656 §12.2).
    pub fn bind_channel(&mut self, number: u16, peer: SocketAddr, now: Instant) -> bool {
        match (self.channels.get(&number), self.channel_of.get(&peer)) {
            (Some((p, _)), _) if *p != peer => return false,
            (_, Some(n)) if *n != number => return false,
            _ => {}
        }
        self.channels.insert(number, (peer, now + CHANNEL_LIFETIME));
        self.channel_of.insert(peer, number);
        self.permissions
            .insert(peer.ip(), now + PERMISSION_LIFETIME);
        true
    }

    /// The peer a live channel is bound to.
    pub fn channel_peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.channels
            .get(&number)
            .filter(|(_, t)| *t > now)
            .map(|(p, _)| *p)
    }

    /// Forget expired permissions and channels.
    pub fn expire(&mut self, now: Instant) {
        self.permissions.retain(|_, t| *t > now);
        let gone: Vec<u16> = self
            .channels
            .iter()
            .filter(|(_, (_, t))| *t <= now)
            .map(|(n, _)| *n)
            .collect();
        for n in gone {
            if let Some((peer, _)) = self.channels.remove(&n) {
                self.channel_of.remove(&peer);
            }
        }
    }
}
