//! TURN as the services share it: the REST-style credentials (`credential`), what a node
//! advertises of its TURN server, and the pre-call references.

use serde::{Deserialize, Serialize};

pub mod credential;

/// Credential references that may allocate without being placed, and never relay: the
/// web client's pre-call check proves it can reach the server this way.
pub const PRECALL_PREFIX: &str = "precall/";

/// What signaling needs to hand clients this node's TURN server: ports and names, no
/// secret. Carried in `SessionOpened` and `NodeInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnAdvert {
    /// The node's announced IP (turn: URLs).
    pub host: String,
    /// The name in the certificate (turns: URLs).
    pub tls_host: String,
    pub udp_port: u16,
    pub tcp_port: u16,
    pub tls_port: u16,
}

impl TurnAdvert {
    /// The URLs in the order clients should prefer them (RFC 7065 syntax).
    pub fn urls(&self) -> Vec<String> {
        let mut urls = Vec::new();
        if self.udp_port != 0 {
            urls.push(format!(
                "turn:{}:{}?transport=udp",
                self.host, self.udp_port
            ));
        }
        if self.tcp_port != 0 {
            urls.push(format!(
                "turn:{}:{}?transport=tcp",
                self.host, self.tcp_port
            ));
        }
        if self.tls_port != 0 {
            urls.push(format!(
                "turns:{}:{}?transport=tcp",
                self.tls_host, self.tls_port
            ));
        }
        urls
    }
}
