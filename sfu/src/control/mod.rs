//! The SFU node's internal control API: HTTP+JSON on its own port, every `/v1` call
//! authenticated with the service credential from config. Signaling drives it; the client
//! library drives it directly in tests.

pub mod http;

// The API's types and its client are the protocol crate's: signaling speaks it too.
pub use metaclinic_protocol::control::{api, client};
