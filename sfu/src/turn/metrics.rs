//! The TURN server's metrics, in the node's registry (`metaclinic_sfu_turn_*`).

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Why a TURN request, indication, connection or relayed packet was refused or dropped:
/// each is a `reason` label of `metaclinic_sfu_turn_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not STUN or ChannelData, a STUN message that does not parse, or a missing attribute.
    Malformed,
    /// Over the per-source rate of unauthenticated (or failed) requests: dropped unanswered.
    RateLimited,
    /// A request without credentials (answered with a 401 challenge).
    Unauthenticated,
    /// A nonce this server did not issue to this client.
    BadNonce,
    /// An old nonce (438: the client retries with the new one).
    StaleNonce,
    /// A username that is not `expiry:reference`, or a realm that is not ours.
    MalformedUsername,
    ExpiredCredential,
    /// MESSAGE-INTEGRITY does not verify: a wrong password (HMAC) for the username.
    BadIntegrity,
    /// The credential names no participant placed on this node.
    NotPlaced,
    /// A request on an allocation with another user's credential (441).
    WrongCredentials,
    /// A permission, channel or send to an address that is not one of this node's media
    /// addresses: the server is no open relay.
    PeerForbidden,
    /// Data to or from a peer without a permission.
    NoPermission,
    /// A pre-call probe credential asked to relay (it may only allocate).
    PrecallRelay,
    /// Allocations per user, on the node; relayed bytes per allocation.
    UserQuota,
    NodeQuota,
    Bandwidth,
    /// A request that needs an allocation without one, or an Allocate on an existing one.
    NoAllocation,
    AllocationMismatch,
    /// REQUESTED-TRANSPORT other than UDP.
    UnsupportedTransport,
    /// A channel number out of range or bound to another peer.
    BadChannel,
    /// TCP/TLS: over the connection limit (per IP or in total).
    ConnectionLimit,
    /// TCP/TLS: no handshake or first request before the deadline.
    HandshakeTimeout,
    /// TLS: the handshake failed.
    TlsHandshake,
    /// A stream frame larger than any relayed datagram.
    FrameTooLarge,
    /// The client's stream could not take more (a slow reader): dropped.
    ClientBacklog,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::RateLimited => "rate_limited",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::BadNonce => "bad_nonce",
            Refusal::StaleNonce => "stale_nonce",
            Refusal::MalformedUsername => "malformed_username",
            Refusal::ExpiredCredential => "expired_credential",
            Refusal::BadIntegrity => "bad_integrity",
            Refusal::NotPlaced => "not_placed",
            Refusal::WrongCredentials => "wrong_credentials",
            Refusal::PeerForbidden => "peer_forbidden",
            Refusal::NoPermission => "no_permission",
            Refusal::PrecallRelay => "precall_relay",
            Refusal::UserQuota => "user_quota",
            Refusal::NodeQuota => "node_quota",
            Refusal::Bandwidth => "bandwidth",
            Refusal::NoAllocation => "no_allocation",
            Refusal::AllocationMismatch => "allocation_mismatch",
            Refusal::UnsupportedTransport => "unsupported_transport",
            Refusal::BadChannel => "bad_channel",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::TlsHandshake => "tls_handshake",
            Refusal::FrameTooLarge => "frame_too_large",
            Refusal::ClientBacklog => "client_backlog",
        }
    }
}

#[derive(Clone)]
pub struct TurnMetrics {
    /// Allocations open now.
    pub allocations: IntGauge,
    /// Allocations made, by the transport the client used (udp, tcp, tls).
    pub allocations_made: IntCounterVec,
    pub refused: IntCounterVec,
    /// Relayed payload bytes and packets, by direction (to_peer: client to the node's media
    /// socket; to_client).
    pub relayed_bytes: IntCounterVec,
    pub relayed_packets: IntCounterVec,
    /// TCP and TLS connections open now.
    pub connections: IntGauge,
    /// The relayed counters of each direction, resolved once (the packet path looks no
    /// label up).
    pub to_peer: Relayed,
    pub to_client: Relayed,
}

#[derive(Clone)]
pub struct Relayed {
    packets: IntCounter,
    bytes: IntCounter,
}

impl Relayed {
    pub fn count(&self, bytes: usize) {
        self.packets.inc();
        self.bytes.inc_by(bytes as u64);
    }
}

impl TurnMetrics {
    pub fn register(registry: &Registry) -> TurnMetrics {
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let relayed_bytes = counter(
            "metaclinic_sfu_turn_relayed_bytes_total",
            "Payload bytes relayed by the TURN server, by direction",
            &["direction"],
        );
        let relayed_packets = counter(
            "metaclinic_sfu_turn_relayed_packets_total",
            "Packets relayed by the TURN server, by direction",
            &["direction"],
        );
        let relayed = |direction: &str| Relayed {
            packets: relayed_packets.with_label_values(&[direction]),
            bytes: relayed_bytes.with_label_values(&[direction]),
        };
        TurnMetrics {
            to_peer: relayed("to_peer"),
            to_client: relayed("to_client"),
            relayed_bytes: relayed_bytes.clone(),
            relayed_packets: relayed_packets.clone(),
            allocations: gauge(
                "metaclinic_sfu_turn_allocations",
                "TURN allocations open on this node",
            ),
            allocations_made: counter(
                "metaclinic_sfu_turn_allocations_total",
                "TURN allocations made, by the client's transport",
                &["transport"],
            ),
            refused: counter(
                "metaclinic_sfu_turn_refused_total",
                "TURN requests, connections and relayed packets refused or dropped, by reason",
                &["reason"],
            ),
            connections: gauge(
                "metaclinic_sfu_turn_connections",
                "TURN TCP and TLS connections open",
            ),
        }
    }

    pub fn refuse(&self, why: Refusal) {
        self.refused.with_label_values(&[why.label()]).inc();
    }
}
