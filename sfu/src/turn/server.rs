//! The TURN server's state and its answer to each message (RFC 8656): Allocate, Refresh,
//! CreatePermission, ChannelBind, Send indications and ChannelData from clients, and data
//! from peers. The transports (`transport`) own the sockets and hand messages in here.
//!
//! Peers are only ever this node's own media sockets ([`MediaAddrs`]): a permission or a
//! channel to anything else is refused (403) and counted, so the server is no open relay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rtc::stun::attributes::*;
use rtc::stun::error_code::*;
use rtc::stun::fingerprint::FINGERPRINT;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::*;
use rtc::stun::textattrs::TextAttribute;
use rtc::stun::xoraddr::XorMappedAddress;
use rtc::turn::crypto::RTCCrypto;
use rtc::turn::proto::PROTO_UDP;
use rtc::turn::proto::chandata::ChannelData;
use rtc::turn::proto::channum::ChannelNumber;
use rtc::turn::proto::data::Data;
use rtc::turn::proto::lifetime::{DEFAULT_LIFETIME, Lifetime};
use rtc::turn::proto::relayaddr::RelayedAddress;
use rtc::turn::proto::reqtrans::RequestedTransport;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use super::allocation::{Allocation, BridgeSlot, ClientKey, ClientSink, PERMISSION_LIFETIME};
use super::bridge::RelayBridge;
use super::credential::{self, CredentialError, NonceCheck, Nonces};
use super::metrics::{Refusal, TurnMetrics};
use super::quota::{Bucket, SourceRate};
use super::{MediaAddrs, PlacedParticipants, TurnConfig};

pub use super::PRECALL_PREFIX;
/// A pre-call probe's allocation lives at most this long.
const PRECALL_LIFETIME: Duration = Duration::from_secs(60);

/// A new allocation's relay socket, for the transport layer to read from.
pub struct NewRelay {
    pub key: ClientKey,
    pub socket: Arc<UdpSocket>,
    /// What media threads hand this allocation directly (with a bridge).
    pub from_media: Option<tokio::sync::mpsc::Receiver<super::bridge::ToClient>>,
    pub stop: oneshot::Receiver<()>,
}

pub struct TurnCore {
    realm: String,
    secret: Vec<u8>,
    max_per_user: usize,
    max_total: usize,
    bandwidth_bps: f64,
    max_lifetime: Duration,
    nonces: Nonces,
    crypto: Arc<dyn rtc::turn::crypto::RTCCryptoProvider>,
    allocations: HashMap<ClientKey, Allocation>,
    per_user: HashMap<String, usize>,
    unauthenticated: SourceRate,
    media: MediaAddrs,
    placed: Arc<PlacedParticipants>,
    /// Hands relayed datagrams to the media threads and back (None: over the sockets).
    bridge: Option<Arc<RelayBridge>>,
    pub metrics: TurnMetrics,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

type Setters = Vec<Box<dyn Setter>>;

impl TurnCore {
    pub fn new(
        config: &TurnConfig,
        secret: String,
        media: MediaAddrs,
        placed: Arc<PlacedParticipants>,
        bridge: Option<Arc<RelayBridge>>,
        metrics: TurnMetrics,
    ) -> anyhow::Result<TurnCore> {
        Ok(TurnCore {
            realm: config.realm.clone(),
            secret: secret.into_bytes(),
            max_per_user: config.max_allocations_per_user,
            max_total: config.max_allocations,
            bandwidth_bps: config.max_bandwidth_bps as f64,
            max_lifetime: Duration::from_secs(config.max_lifetime_s),
            nonces: Nonces::new(),
            crypto: rtc::turn::crypto::default_provider()
                .map_err(|e| anyhow::anyhow!("TURN crypto provider: {e}"))?,
            allocations: HashMap::new(),
            per_user: HashMap::new(),
            unauthenticated: SourceRate::new(config.unauthenticated_per_second),
            media,
            placed,
            bridge,
            metrics,
        })
    }

    /// A message from a client: STUN or ChannelData. Returns the answer to send back, if
    /// any, and a relay socket to start reading from, if an allocation was made.
    pub fn from_client(
        &mut self,
        now: Instant,
        key: ClientKey,
        sink: &ClientSink,
        data: &[u8],
    ) -> (Option<Vec<u8>>, Option<NewRelay>) {
        if ChannelData::is_channel_data(data) {
            self.channel_data(now, &key, data);
            return (None, None);
        }
        let mut m = Message::new();
        if !is_stun_message(data) || m.unmarshal_binary(data).is_err() {
            self.metrics.refuse(Refusal::Malformed);
            return (None, None);
        }
        let class = m.typ.class;
        if class == CLASS_INDICATION {
            if m.typ.method == METHOD_SEND {
                self.send_indication(now, &key, &m);
            }
            return (None, None);
        }
        if class != CLASS_REQUEST {
            return (None, None);
        }
        if m.typ.method == METHOD_BINDING {
            // Unauthenticated, so within the source's unauthenticated rate.
            if !self.unauthenticated.allow(key.addr.ip(), now) {
                self.metrics.refuse(Refusal::RateLimited);
                return (None, None);
            }
            let reply = encode(&m, CLASS_SUCCESS_RESPONSE, mapped(key.addr), None);
            return (Some(reply), None);
        }
        let (username, ikey) = match self.authenticate(now, &key, &mut m) {
            Ok(ok) => ok,
            Err(reply) => return (reply, None),
        };
        let mut relay = None;
        let result = match m.typ.method {
            METHOD_ALLOCATE => self
                .allocate(now, key, sink, &m, &username, &ikey)
                .map(|(s, r)| {
                    relay = Some(r);
                    s
                }),
            METHOD_REFRESH => self.refresh(now, &key, &m, &username),
            METHOD_CREATE_PERMISSION => self.create_permission(now, &key, &m, &username),
            METHOD_CHANNEL_BIND => self.channel_bind(now, &key, &m, &username),
            _ => Err((CODE_BAD_REQUEST, Refusal::Malformed)),
        };
        let signed = Some((ikey.as_slice(), self.crypto.crypto()));
        let reply = match result {
            Ok(setters) => encode(&m, CLASS_SUCCESS_RESPONSE, setters, signed),
            Err((code, why)) => {
                self.metrics.refuse(why);
                encode(&m, CLASS_ERROR_RESPONSE, vec![Box::new(code)], signed)
            }
        };
        (Some(reply), relay)
    }

    /// Check a request's long-term credential. Err holds the answer (None: dropped).
    fn authenticate(
        &mut self,
        now: Instant,
        key: &ClientKey,
        m: &mut Message,
    ) -> Result<(String, Vec<u8>), Option<Vec<u8>>> {
        let now_s = unix_now();
        let text = |m: &Message, attr| TextAttribute::get_from_as(m, attr).map(|t| t.text);
        let refuse = |this: &mut Self, m: &Message, code, why: Refusal| -> Option<Vec<u8>> {
            this.metrics.refuse(why);
            if !this.unauthenticated.allow(key.addr.ip(), now) {
                this.metrics.refuse(Refusal::RateLimited);
                return None;
            }
            let nonce = this.nonces.issue(key.addr, now_s);
            let setters: Setters = vec![
                Box::new(code),
                Box::new(TextAttribute::new(ATTR_REALM, this.realm.clone())),
                Box::new(TextAttribute::new(ATTR_NONCE, nonce)),
            ];
            Some(encode(m, CLASS_ERROR_RESPONSE, setters, None))
        };
        if !m.contains(ATTR_MESSAGE_INTEGRITY) || !m.contains(ATTR_USERNAME) {
            return Err(refuse(self, m, CODE_UNAUTHORIZED, Refusal::Unauthenticated));
        }
        let (Ok(username), Ok(realm), Ok(nonce)) = (
            text(m, ATTR_USERNAME),
            text(m, ATTR_REALM),
            text(m, ATTR_NONCE),
        ) else {
            return Err(refuse(self, m, CODE_BAD_REQUEST, Refusal::Malformed));
        };
        match self.nonces.check(&nonce, key.addr, now_s) {
            NonceCheck::Fresh => {}
            NonceCheck::Stale => {
                return Err(refuse(self, m, CODE_STALE_NONCE, Refusal::StaleNonce));
            }
            NonceCheck::Foreign => {
                return Err(refuse(self, m, CODE_UNAUTHORIZED, Refusal::BadNonce));
            }
        }
        if realm != self.realm {
            return Err(refuse(
                self,
                m,
                CODE_UNAUTHORIZED,
                Refusal::MalformedUsername,
            ));
        }
        let parsed = match credential::parse_username(&username, now_s) {
            Ok(p) => p,
            Err(CredentialError::Expired) => {
                return Err(refuse(
                    self,
                    m,
                    CODE_UNAUTHORIZED,
                    Refusal::ExpiredCredential,
                ));
            }
            Err(CredentialError::Malformed) => {
                return Err(refuse(
                    self,
                    m,
                    CODE_UNAUTHORIZED,
                    Refusal::MalformedUsername,
                ));
            }
        };
        let password = credential::password(&self.secret, &username);
        let crypto = self.crypto.crypto();
        let Ok(ikey) = MessageIntegrity::long_term_integrity_key(
            username.clone(),
            self.realm.clone(),
            password,
            crypto,
        ) else {
            return Err(None);
        };
        if MessageIntegrity::check(m, &ikey, crypto).is_err() {
            return Err(refuse(self, m, CODE_UNAUTHORIZED, Refusal::BadIntegrity));
        }
        let reference = parsed.reference;
        if !reference.starts_with(PRECALL_PREFIX) && !self.placed.contains(reference) {
            self.metrics.refuse(Refusal::NotPlaced);
            if !self.unauthenticated.allow(key.addr.ip(), now) {
                self.metrics.refuse(Refusal::RateLimited);
                return Err(None);
            }
            let reply = encode(
                m,
                CLASS_ERROR_RESPONSE,
                vec![Box::new(CODE_FORBIDDEN)],
                None,
            );
            return Err(Some(reply));
        }
        Ok((username, ikey))
    }

    fn allocate(
        &mut self,
        now: Instant,
        key: ClientKey,
        sink: &ClientSink,
        m: &Message,
        username: &str,
        ikey: &[u8],
    ) -> Result<(Setters, NewRelay), (ErrorCode, Refusal)> {
        if self.allocations.contains_key(&key) {
            return Err((CODE_ALLOC_MISMATCH, Refusal::AllocationMismatch));
        }
        let mut transport = RequestedTransport::default();
        if transport.get_from(m).is_err() {
            return Err((CODE_BAD_REQUEST, Refusal::Malformed));
        }
        if transport.protocol != PROTO_UDP {
            return Err((CODE_UNSUPPORTED_TRANS_PROTO, Refusal::UnsupportedTransport));
        }
        let reference = username.split_once(':').map_or("", |(_, r)| r).to_owned();
        if self.per_user.get(&reference).copied().unwrap_or(0) >= self.max_per_user {
            return Err((CODE_ALLOC_QUOTA_REACHED, Refusal::UserQuota));
        }
        if self.allocations.len() >= self.max_total {
            return Err((CODE_INSUFFICIENT_CAPACITY, Refusal::NodeQuota));
        }
        let socket = std::net::UdpSocket::bind(SocketAddr::new(self.media.relay_ip(), 0))
            .and_then(|s| {
                s.set_nonblocking(true)?;
                UdpSocket::from_std(s)
            })
            .map_err(|e| {
                tracing::warn!("cannot open a TURN relay socket: {e}");
                (CODE_INSUFFICIENT_CAPACITY, Refusal::NodeQuota)
            })?;
        let port = socket
            .local_addr()
            .map_err(|_| (CODE_SERVER_ERROR, Refusal::NodeQuota))?;
        let relayed = SocketAddr::new(self.media.announced_ip(), port.port());
        let precall = reference.starts_with(PRECALL_PREFIX);
        let lifetime = self.lifetime(m, precall);
        let socket = Arc::new(socket);
        let (stop_tx, stop_rx) = oneshot::channel();
        // A pre-call probe never relays: nothing to hand over.
        let bridged = self
            .bridge
            .as_ref()
            .filter(|_| !precall)
            .map(|b| (b.register(port), BridgeSlot::new(b.clone(), port)));
        let (from_media, bridge_slot) = bridged.unzip();
        let rate = self.bandwidth_bps / 8.0;
        *self.per_user.entry(reference.clone()).or_default() += 1;
        self.allocations.insert(
            key,
            Allocation {
                username: username.to_owned(),
                reference,
                key: ikey.to_vec(),
                precall,
                relay: socket.clone(),
                relay_local: port,
                _bridge_slot: bridge_slot,
                relayed,
                expires: now + lifetime,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                channel_of: HashMap::new(),
                budget: Bucket::new(rate, rate, now),
                sink: sink.clone(),
                _stop: stop_tx,
            },
        );
        self.metrics.allocations.set(self.allocations.len() as i64);
        self.metrics
            .allocations_made
            .with_label_values(&[key.transport.label()])
            .inc();
        let mut setters = mapped(key.addr);
        setters.push(Box::new(RelayedAddress {
            ip: relayed.ip(),
            port: relayed.port(),
        }));
        setters.push(Box::new(Lifetime(lifetime)));
        let relay = NewRelay {
            key,
            socket,
            from_media,
            stop: stop_rx,
        };
        Ok((setters, relay))
    }

    /// The lifetime asked for (LIFETIME), else the default, within our maximum.
    fn lifetime(&self, m: &Message, precall: bool) -> Duration {
        let mut asked = Lifetime::default();
        let asked = match asked.get_from(m) {
            Ok(()) => asked.0,
            Err(_) => DEFAULT_LIFETIME,
        };
        let max = if precall {
            PRECALL_LIFETIME
        } else {
            self.max_lifetime
        };
        asked.min(max)
    }

    /// The caller's allocation, if the credential is the one it was made with (441).
    fn own(
        &mut self,
        key: &ClientKey,
        username: &str,
    ) -> Result<&mut Allocation, (ErrorCode, Refusal)> {
        match self.allocations.get_mut(key) {
            None => Err((CODE_ALLOC_MISMATCH, Refusal::NoAllocation)),
            Some(a) if a.username != username => {
                Err((CODE_WRONG_CREDENTIALS, Refusal::WrongCredentials))
            }
            Some(a) => Ok(a),
        }
    }

    fn refresh(
        &mut self,
        now: Instant,
        key: &ClientKey,
        m: &Message,
        username: &str,
    ) -> Result<Setters, (ErrorCode, Refusal)> {
        let precall = self.own(key, username)?.precall;
        let lifetime = self.lifetime(m, precall);
        if lifetime.is_zero() {
            self.remove(key);
        } else {
            self.own(key, username)?.expires = now + lifetime;
        }
        Ok(vec![Box::new(Lifetime(lifetime))])
    }

    fn create_permission(
        &mut self,
        now: Instant,
        key: &ClientKey,
        m: &Message,
        username: &str,
    ) -> Result<Setters, (ErrorCode, Refusal)> {
        let peers = peer_addresses(m);
        let media = self.media.clone();
        let a = self.own(key, username)?;
        if a.precall {
            return Err((CODE_FORBIDDEN, Refusal::PrecallRelay));
        }
        if peers.is_empty() {
            return Err((CODE_BAD_REQUEST, Refusal::Malformed));
        }
        if peers.iter().any(|p| !media.allows_ip(p.ip())) {
            return Err((CODE_FORBIDDEN, Refusal::PeerForbidden));
        }
        for p in peers {
            a.permissions.insert(p.ip(), now + PERMISSION_LIFETIME);
        }
        Ok(Vec::new())
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        key: &ClientKey,
        m: &Message,
        username: &str,
    ) -> Result<Setters, (ErrorCode, Refusal)> {
        let mut number = ChannelNumber::default();
        let peer = peer_addresses(m).first().copied();
        let media = self.media.clone();
        let a = self.own(key, username)?;
        if a.precall {
            return Err((CODE_FORBIDDEN, Refusal::PrecallRelay));
        }
        let (Ok(()), Some(peer)) = (number.get_from(m), peer) else {
            return Err((CODE_BAD_REQUEST, Refusal::Malformed));
        };
        if !number.valid() {
            return Err((CODE_BAD_REQUEST, Refusal::BadChannel));
        }
        if media.local_for(peer).is_none() {
            return Err((CODE_FORBIDDEN, Refusal::PeerForbidden));
        }
        if !a.bind_channel(number.0, peer, now) {
            return Err((CODE_BAD_REQUEST, Refusal::BadChannel));
        }
        Ok(Vec::new())
    }

    fn send_indication(&mut self, now: Instant, key: &ClientKey, m: &Message) {
        let mut data = Data::default();
        let peer = peer_addresses(m).first().copied();
        let (Ok(()), Some(peer)) = (data.get_from(m), peer) else {
            self.metrics.refuse(Refusal::Malformed);
            return;
        };
        self.relay_to_peer(now, key, peer, &data.0);
    }

    fn channel_data(&mut self, now: Instant, key: &ClientKey, raw: &[u8]) {
        let mut cd = ChannelData {
            raw: raw.to_vec(),
            ..Default::default()
        };
        if cd.decode().is_err() {
            self.metrics.refuse(Refusal::Malformed);
            return;
        }
        let Some(peer) = self
            .allocations
            .get(key)
            .and_then(|a| a.channel_peer(cd.number.0, now))
        else {
            self.metrics.refuse(Refusal::NoAllocation);
            return;
        };
        self.relay_to_peer(now, key, peer, &cd.data);
    }

    /// Relay `data` from the client to `peer` (an announced media address), if allowed.
    fn relay_to_peer(&mut self, now: Instant, key: &ClientKey, peer: SocketAddr, data: &[u8]) {
        let why = match (self.allocations.get_mut(key), self.media.local_for(peer)) {
            (None, _) => Some(Refusal::NoAllocation),
            (_, None) => Some(Refusal::PeerForbidden),
            (Some(a), Some(_)) if !a.permitted(peer.ip(), now) => Some(Refusal::NoPermission),
            (Some(a), Some(local)) => {
                if !a.budget.take(data.len() as f64, now) {
                    self.metrics.refuse(Refusal::Bandwidth);
                    return;
                }
                // Straight to the media thread, as from the relay address; without a
                // bridge, the relay socket sends to the media socket over the loopback.
                let handed = self
                    .bridge
                    .as_ref()
                    .is_some_and(|b| b.to_media(local, a.relay_local, data));
                if !handed {
                    let _ = a.relay.try_send_to(data, local);
                }
                None
            }
        };
        match why {
            Some(why) => self.metrics.refuse(why),
            None => self.metrics.to_peer.count(data.len()),
        }
    }

    /// A datagram on an allocation's relay socket from `from` (a local media address).
    pub fn from_peer(&mut self, now: Instant, key: &ClientKey, from: SocketAddr, data: &[u8]) {
        let Some(peer) = self.media.announced_for(from) else {
            self.metrics.refuse(Refusal::PeerForbidden);
            return;
        };
        let Some(a) = self.allocations.get_mut(key) else {
            return;
        };
        if !a.permitted(peer.ip(), now) {
            self.metrics.refuse(Refusal::NoPermission);
            return;
        }
        if !a.budget.take(data.len() as f64, now) {
            self.metrics.refuse(Refusal::Bandwidth);
            return;
        }
        let framed = match a.channel_of.get(&peer) {
            Some(&n) => {
                let mut cd = ChannelData {
                    data: data.to_vec(),
                    number: ChannelNumber(n),
                    raw: Vec::with_capacity(data.len() + 8),
                };
                cd.encode();
                cd.raw
            }
            None => {
                let mut m = Message::new();
                m.typ = MessageType::new(METHOD_DATA, CLASS_INDICATION);
                let _ = m.new_transaction_id();
                m.write_header();
                let xor = XorMappedAddress {
                    ip: peer.ip(),
                    port: peer.port(),
                };
                let _ = xor.add_to_as(&mut m, ATTR_XOR_PEER_ADDRESS);
                let _ = Data(data.to_vec()).add_to(&mut m);
                m.raw
            }
        };
        if a.sink.send(key.addr, framed) {
            self.metrics.to_client.count(data.len());
        } else {
            self.metrics.refuse(Refusal::ClientBacklog);
        }
    }

    /// A client's connection closed: its allocation goes with it (RFC 8656 §3.1).
    pub fn remove(&mut self, key: &ClientKey) {
        if let Some(a) = self.allocations.remove(key) {
            if let Some(n) = self.per_user.get_mut(&a.reference) {
                *n -= 1;
                if *n == 0 {
                    self.per_user.remove(&a.reference);
                }
            }
            self.metrics.allocations.set(self.allocations.len() as i64);
        }
    }

    /// End expired allocations, permissions and channels.
    pub fn expire(&mut self, now: Instant) {
        let gone: Vec<ClientKey> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            self.remove(&k);
        }
        for a in self.allocations.values_mut() {
            a.expire(now);
        }
    }

    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }
}

/// XOR-MAPPED-ADDRESS: the client's address as we see it.
fn mapped(addr: SocketAddr) -> Setters {
    vec![Box::new(XorMappedAddress {
        ip: addr.ip(),
        port: addr.port(),
    })]
}

/// Every XOR-PEER-ADDRESS of a message (CreatePermission may carry several).
fn peer_addresses(m: &Message) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for attr in m
        .attributes
        .0
        .iter()
        .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
    {
        let one = Message {
            transaction_id: m.transaction_id,
            attributes: Attributes(vec![attr.clone()]),
            ..Default::default()
        };
        let mut a = XorMappedAddress::default();
        if a.get_from_as(&one, ATTR_XOR_PEER_ADDRESS).is_ok() && out.len() < 16 {
            out.push(SocketAddr::new(a.ip, a.port));
        }
    }
    out
}

/// A response to `req`: its method and transaction, `class`, the attributes, then
/// MESSAGE-INTEGRITY with `key` (when the request authenticated) and FINGERPRINT.
fn encode(
    req: &Message,
    class: MessageClass,
    setters: Setters,
    key: Option<(&[u8], &dyn RTCCrypto)>,
) -> Vec<u8> {
    let mut m = Message::new();
    m.typ = MessageType::new(req.typ.method, class);
    m.transaction_id = req.transaction_id;
    m.write_header();
    for s in &setters {
        let _ = s.add_to(&mut m);
    }
    if let Some((key, crypto)) = key {
        let mi = MessageIntegrity::new_raw_integrity_with_provider(key.to_vec(), crypto);
        let _ = mi.add_to(&mut m);
    }
    let _ = FINGERPRINT.add_to(&mut m);
    m.raw
}
