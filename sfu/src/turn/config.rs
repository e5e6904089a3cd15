//! The `[turn]` section of an SFU node's configuration: the embedded TURN server's ports,
//! certificate, realm, shared secret and quotas.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    /// Run the embedded TURN server (the default way through for clients whose network
    /// blocks UDP or every port but 443).
    pub enabled: bool,
    /// Local address the TURN ports bind to (the media sockets keep `rtc.bind_ip`).
    pub bind_ip: std::net::IpAddr,
    /// TURN over UDP; 0 turns this transport off.
    pub udp_port: u16,
    /// TURN over plain TCP; 0 turns this transport off.
    pub tcp_port: u16,
    /// TURN over TLS (`turns:`), 443 in production; 0 turns this transport off.
    pub tls_port: u16,
    /// The TLS port clients are told, when something in front maps it to `tls_port` (443
    /// redirected to an unprivileged port on the node); 0: `tls_port` itself.
    pub tls_public_port: u16,
    /// PEM certificate chain and private key for TLS; re-read when the files change.
    pub tls_cert_path: PathBuf,
    pub tls_key_path: PathBuf,
    /// The host name clients use in `turns:` URLs (the certificate's name); `{node}` stands
    /// for `node.id`. Empty: the node's announced IP.
    pub tls_host: String,
    /// The long-term credential realm.
    pub realm: String,
    /// The secret credentials are derived from (shared with signaling's `ice_servers`).
    pub shared_secret: String,
    /// Or a file holding it (a mounted Secret); used when `shared_secret` is empty.
    pub shared_secret_file: PathBuf,
    /// Most allocations one participant reference may hold at once.
    pub max_allocations_per_user: usize,
    /// Most allocations on this node.
    pub max_allocations: usize,
    /// Relayed bytes per second one allocation may carry, both ways together.
    pub max_bandwidth_bps: u64,
    /// Unauthenticated requests (and refused ones) one source IP may send per second.
    pub unauthenticated_per_second: u32,
    /// TCP and TLS connections open at once, and per client IP.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// A TLS handshake, and the first request on a new connection, must finish within this.
    pub handshake_timeout_ms: u64,
    /// Longest allocation lifetime granted, seconds (a client refreshes before it ends).
    pub max_lifetime_s: u64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            enabled: true,
            bind_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            udp_port: 3478,
            tcp_port: 3478,
            tls_port: 443,
            tls_public_port: 0,
            tls_cert_path: PathBuf::new(),
            tls_key_path: PathBuf::new(),
            tls_host: String::new(),
            realm: "metaclinic".into(),
            shared_secret: String::new(),
            shared_secret_file: PathBuf::new(),
            max_allocations_per_user: 4,
            max_allocations: 2000,
            max_bandwidth_bps: 4_000_000,
            unauthenticated_per_second: 20,
            max_connections: 4000,
            max_connections_per_ip: 16,
            handshake_timeout_ms: 5000,
            max_lifetime_s: 3600,
        }
    }
}

impl TurnConfig {
    /// Every problem names its key. Reads `shared_secret_file` when given.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let bad = |k, p: &str| Err((k, p.to_owned()));
        let secret = match self.secret() {
            Ok(s) => s,
            Err(e) => return bad("turn.shared_secret_file", &e),
        };
        if !self.enabled || secret.is_empty() {
            return Ok(()); // off (see `active`)
        }
        if secret.len() < 16 {
            return bad("turn.shared_secret", "at least 16 characters");
        }
        if self.udp_port == 0 && self.tcp_port == 0 && self.tls_port == 0 {
            return bad(
                "turn.udp_port",
                "every transport is off; set enabled = false",
            );
        }
        let no_cert =
            self.tls_cert_path.as_os_str().is_empty() || self.tls_key_path.as_os_str().is_empty();
        if self.tls_port != 0 && no_cert {
            return bad(
                "turn.tls_cert_path",
                "TLS needs tls_cert_path and tls_key_path (or tls_port = 0)",
            );
        }
        if self.tcp_port != 0 && self.tcp_port == self.tls_port {
            return bad("turn.tcp_port", "must differ from tls_port");
        }
        if self.realm.is_empty() || self.realm.len() > 127 || !self.realm.is_ascii() {
            return bad("turn.realm", "1 to 127 ASCII characters");
        }
        if self.max_allocations == 0 || self.max_allocations_per_user == 0 {
            return bad("turn.max_allocations", "at least 1 (and per user too)");
        }
        if self.max_bandwidth_bps < 64_000 {
            return bad(
                "turn.max_bandwidth_bps",
                "at least 64000 (one audio stream)",
            );
        }
        if self.unauthenticated_per_second == 0 {
            return bad("turn.unauthenticated_per_second", "at least 1");
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return bad("turn.max_connections", "at least 1 (and per IP too)");
        }
        if !(100..=60_000).contains(&self.handshake_timeout_ms) {
            return bad("turn.handshake_timeout_ms", "100 to 60000 milliseconds");
        }
        if !(60..=86_400).contains(&self.max_lifetime_s) {
            return bad("turn.max_lifetime_s", "60 to 86400 seconds");
        }
        Ok(())
    }

    /// Whether the server runs: enabled and given a shared secret (without one no client
    /// could be handed a credential, so the node starts without TURN and says so).
    pub fn active(&self) -> bool {
        self.enabled && self.secret().is_ok_and(|s| !s.is_empty())
    }

    /// The shared secret: `shared_secret`, else the file's content (trimmed).
    pub fn secret(&self) -> Result<String, String> {
        if !self.shared_secret.is_empty() || self.shared_secret_file.as_os_str().is_empty() {
            return Ok(self.shared_secret.clone());
        }
        read_secret(&self.shared_secret_file)
    }
}

fn read_secret(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}
