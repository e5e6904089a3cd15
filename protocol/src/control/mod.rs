//! The SFU node's internal control API: HTTP+JSON on its own port, every `/v1` call
//! authenticated with the service credential. The server is the SFU's (`sfu::control::http`);
//! the types and the client are here, for signaling, the load tool and the tests.

pub mod api;
pub mod client;
