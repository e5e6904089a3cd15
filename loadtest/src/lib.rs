//! MetaClinic's client library and load tool.
//!
//! The library runs real WebRTC participants on the same sans-I/O stack as the SFU, many per
//! thread ([`driver`]): each publishes a real Opus tone and synthetic but decodable VP8
//! ([`media`]), and measures what it receives ([`participant`]). [`signaling_client`] joins
//! through signaling as users do, speaking only the public session protocol: every load
//! scenario ([`load`]) and [`join`] (one participant from a terminal) use it. [`control`]
//! speaks the SFU node's internal control API with the service credential, and
//! [`sfu_client`] joins rooms through it: only [`forward`] (the forwarding benchmark, which
//! measures the SFU without signaling in the way) and tests of that API do.

/// The SFU control API client (it lives with the API's types, in the protocol crate).
pub use metaclinic_protocol::control::client as control;
pub mod driver;
pub mod forward;
pub mod forward_relay;
pub mod ice_tcp;
pub mod janus;
pub mod join;
pub mod load;
pub mod local;
pub mod media;
pub mod netem;
pub mod participant;
pub mod relay;
pub mod room_events;
pub mod sfu_client;
pub mod signaling_client;

pub use control::SfuControl;
pub use driver::ClientDriver;
pub use netem::LinkSpec;
pub use participant::{ParticipantSpec, ParticipantStats, VideoSpec, VitalsSpec};
pub use sfu_client::SfuParticipant;
pub use signaling_client::{Phase, SignalingParticipant};
