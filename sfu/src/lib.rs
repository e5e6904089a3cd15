//! MetaClinic's selective forwarding unit.
//!
//! Layout, from the wire inwards:
//! - [`control`]: the internal HTTP+JSON API signaling drives (and its wire types).
//! - [`node`]: the node's media threads and which room lives on which.
//! - [`shard`]: a media thread: one UDP port, batched I/O, the demultiplexer, timers, and
//!   the rooms placed on it. No locks or thread hops on the packet path.
//! - [`room`], [`session`]: who is in a room, what they publish and receive.
//! - [`forward`]: per-subscriber rewriting decisions (SSRC, sequence numbers, timestamps,
//!   simulcast layer switches); [`allocator`]: which layers fit a subscriber's bandwidth.
//! - [`webrtc`]: the only module that knows the WebRTC library (webrtc-rs `rtc`, sans-I/O).
//! - [`media`], [`events`], [`ids`]: our own vocabulary, free of library types.
//! - [`config`], [`metrics`], [`error`]: the operator's side.
//!
//! Error policy: bad input is an error or a counted drop, never a panic; a panic inside the
//! WebRTC stack closes only the session it happened in.

pub mod allocator;
pub mod config;
pub mod control;
pub mod error;
pub mod events;
pub mod forward;
pub mod ids;
pub mod media;
pub mod metrics;
pub mod node;
pub mod room;
pub mod session;
pub mod shard;
pub mod spatial;
pub mod speaker;
pub mod webrtc;

pub use config::SfuConfig;
pub use node::Node;

/// Run a node until `shutdown` resolves: media threads plus the control API.
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
    let node = Node::start(config)?;
    tracing::info!(addr = %listener.local_addr()?, "control API listening");
    control::http::serve(listener, node.clone(), shutdown).await;
    let n = node.clone();
    tokio::task::spawn_blocking(move || n.shutdown()).await?;
    Ok(())
}
