//! MetaClinic's client library and load tool.
//!
//! The library runs real WebRTC participants on the same sans-I/O stack as the SFU, many per
//! thread ([`driver`]): each publishes a real Opus tone and synthetic but decodable VP8
//! ([`media`]), and measures what it receives ([`participant`]). [`control`] speaks the SFU's
//! control API; [`sfu_client`] joins rooms through it, [`signaling_client`] through
//! signaling as users do. The `loadtest` binary builds on these: [`forward`] (the forwarding
//! benchmark), [`join`] (one participant from a terminal) and [`load`] (the load scenarios).

/// The SFU control API client (it lives with the API it speaks).
pub use metaclinic_sfu::control::client as control;
pub mod driver;
pub mod forward;
pub mod forward_relay;
pub mod ice_tcp;
pub mod join;
pub mod load;
pub mod local;
pub mod media;
pub mod netem;
pub mod participant;
pub mod relay;
pub mod sfu_client;
pub mod signaling_client;

pub use control::SfuControl;
pub use driver::ClientDriver;
pub use netem::LinkSpec;
pub use participant::{ParticipantSpec, ParticipantStats, VideoSpec, VitalsSpec};
pub use sfu_client::SfuParticipant;
pub use signaling_client::{Phase, SignalingParticipant};
