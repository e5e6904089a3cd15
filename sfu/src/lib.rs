//! MetaClinic's selective forwarding unit.
//!
//! Layout, from the wire inwards:
//! - [`control`]: the internal HTTP+JSON API signaling drives (and its wire types).
//! - [`node`]: the node's media threads and which room lives on which ([`placement`]:
//!   the choice, and when the node is too busy for more).
//! - [`shard`]: a media thread: a sans-I/O `ShardCore` (the demultiplexer, timers, the rooms
//!   placed on it) inside a thin driver that owns one UDP port's batched I/O, ICE-TCP and
//!   the TURN bridge. No locks or thread hops on the packet path.
//! - [`room`], [`session`]: who is in a room, what they publish and receive; the room fans
//!   each packet out.
//! - [`forward`]: per-subscriber rewriting decisions (SSRC, sequence numbers, timestamps,
//!   simulcast layer switches); [`allocator`]: which layers fit a subscriber's bandwidth.
//! - [`webrtc`]: the only module that knows the WebRTC library (webrtc-rs `rtc`, sans-I/O).
//! - [`srtp`]: the forwarding fast path's own SRTP, in place and without allocation.
//! - [`turn`]: the embedded TURN server (UDP, TCP, TLS) that relays only to this node.
//! - [`vitals`]: the patient's device readings on a consultation's data channel.
//! - [`media`], [`events`], [`ids`]: our own vocabulary, free of library types.
//! - [`config`], [`metrics`], [`error`], [`registry`]: the operator's side (the registry:
//!   heartbeats to Redis when several nodes serve one deployment).
//!
//! Error policy: bad input is an error or a counted drop, never a panic; a panic inside the
//! WebRTC stack closes only the session it happened in.

pub mod allocator;
pub mod config;
pub mod control;
pub mod error;
pub mod forward;
pub mod media;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod registry;
pub mod room;
pub mod session;
pub mod shard;
pub mod spatial;
pub mod speaker;
pub mod srtp;
pub mod turn;
pub mod webrtc;

// The vocabulary shared with signaling lives in the protocol crate (no WebRTC, audio or
// sockets there); these names keep the SFU's own paths.
pub use metaclinic_protocol::{events, ids, vitals};

pub use config::SfuConfig;
pub use node::Node;

/// Run a node. When `shutdown` resolves (SIGTERM) the node drains: it takes no new rooms,
/// keeps its rooms running until they end or `drain.deadline_s` passes, then stops. The
/// control API stays up meanwhile (signaling still drives the rooms that run on).
pub async fn run(
    config: SfuConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.control.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen for the control API on {}: {e}",
                config.control.listen
            )
        })?;
    let node = Node::start(config.clone())?;
    tracing::info!(addr = %listener.local_addr()?, "control API listening");
    if config.control.listen.ip().is_unspecified() {
        // Plain HTTP with a bearer credential: on every interface of a host-network pod it
        // is readable by anyone on the node network.
        tracing::warn!(
            addr = %config.control.listen,
            "the control API listens on all interfaces without TLS; bind control.listen to the node's own address and keep the port firewalled to signaling"
        );
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let api = tokio::spawn(control::http::serve(
        listener,
        node.clone(),
        stopped(stop_rx.clone()),
    ));
    let registry = if config.redis.url.is_empty() {
        None
    } else {
        let reg = registry::Registration::new(node.clone(), &config)
            .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
        let interval = std::time::Duration::from_millis(config.redis.heartbeat_interval_ms);
        tracing::info!(control_url = %config.control_url(), "registering in the node registry");
        Some(tokio::spawn(reg.run(interval, stopped(stop_rx.clone()))))
    };

    shutdown.await;
    node.start_draining();
    let deadline = tokio::time::Instant::now() + config.drain_deadline();
    let mut last_logged = usize::MAX;
    loop {
        let rooms = node.room_count();
        if rooms == 0 {
            tracing::info!("drained: no rooms left");
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(rooms, "drain deadline passed; closing the remaining rooms");
            break;
        }
        if rooms != last_logged {
            tracing::info!(rooms, "draining: waiting for rooms to end");
            last_logged = rooms;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let _ = stop_tx.send(true);
    if let Some(reg) = registry
        && let Ok(mut reg) = reg.await
    {
        // Leave the registry at once rather than at the record's TTL.
        reg.deregister().await;
    }
    let _ = api.await;
    let n = node.clone();
    tokio::task::spawn_blocking(move || n.shutdown()).await?;
    Ok(())
}
