//! What MetaClinic's services say to each other, and nothing else: signaling and the SFU
//! both depend on this crate, never on each other (LiveKit keeps its wire types apart the
//! same way). No WebRTC, audio or media sockets here.
//!
//! - [`control`]: the SFU node's internal control API (its types and an HTTP client).
//! - [`events`]: what a room tells signaling (joins, tracks, quality, vitals).
//! - [`ids`], [`media`], [`room`]: the vocabulary both sides name things with.
//! - [`registry`]: the node registry's schema in Redis.
//! - [`turn`]: TURN REST credentials and what a node advertises of its TURN server.
//! - [`vitals`]: the vitals data channel's reading format.
//! - [`config`]: how every process reads its configuration.

pub mod config;
pub mod control;
pub mod events;
pub mod ids;
pub mod media;
pub mod registry;
pub mod room;
pub mod turn;
pub mod vitals;
