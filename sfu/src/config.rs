//! Configuration of an SFU node: one serde tree, read from TOML, every key overridable from
//! the environment (`METACLINIC_SFU__RTC__UDP_PORT=40000`), unknown keys refused, validated
//! before anything starts. `config/sfu.toml` documents every key.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Environment variables with this prefix override the file; `__` separates levels.
pub const ENV_PREFIX: &str = "METACLINIC_SFU__";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct SfuConfig {
    pub node: NodeConfig,
    pub rtc: RtcConfig,
    pub control: ControlConfig,
    pub rooms: RoomsConfig,
    /// The spatial audio mixer of shared rooms.
    pub spatial: crate::spatial::SpatialConfig,
    pub drain: DrainConfig,
    /// The node registry signaling places rooms from (several nodes).
    pub redis: RedisConfig,
    /// The embedded TURN server.
    pub turn: crate::turn::TurnConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's name in events, metrics and (later) the node registry.
    pub id: String,
    /// The address clients send media to: the node's public IP.
    pub announced_ip: IpAddr,
    /// How signaling reaches this node's control API, as registered in Redis. Empty: http://
    /// <announced_ip>:<control.listen port>.
    pub control_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RtcConfig {
    /// Local address the media sockets bind to.
    pub bind_ip: IpAddr,
    /// First UDP port; media thread `i` listens on `udp_port + i`.
    pub udp_port: u16,
    /// Media threads (one room lives on one thread). 0 means one per CPU core.
    pub media_threads: usize,
    /// A session whose ICE has not connected after this long is closed.
    pub connect_timeout_s: u64,
    /// A connected session that sends nothing (not even consent checks) for this long is
    /// closed.
    pub idle_timeout_s: u64,
    /// Kernel receive and send buffer asked for each media socket, in bytes. The kernel caps
    /// it at net.core.rmem_max / wmem_max; raise those on SFU hosts.
    pub socket_buffer_bytes: usize,
    /// ICE-TCP (passive) port for clients whose network blocks UDP; 0 turns it off.
    pub tcp_port: u16,
    /// Keyframe requests from a publication's subscribers are coalesced into at most one
    /// upstream per this many milliseconds (a burst of new subscribers costs one keyframe).
    pub keyframe_request_interval_ms: u64,
    /// The forwarding fast path: after DTLS the SFU writes and protects the RTP it sends
    /// itself instead of passing each packet through the WebRTC library's pipeline.
    pub fast_path: bool,
    /// Datagrams to one destination leave in one segmented message where the kernel and the
    /// network card allow (Linux UDP GSO); turned off by itself where the path refuses it.
    pub udp_gso: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Where the internal control API listens. Keep it off the public network.
    pub listen: SocketAddr,
    /// The service credential callers present as `Authorization: Bearer <credential>`.
    /// At least 16 characters. Prefer setting it from the environment.
    pub credential: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// Most participants in one consultation room.
    pub max_participants: usize,
    /// Most rooms on this node.
    pub max_rooms: usize,
    /// A media thread busier than this share of its wall time, in percent, takes no new
    /// rooms or participants (`overloaded`; a shared room answers `room_full`).
    pub max_thread_busy_pct: u8,
}

/// What the node does on SIGTERM: no new rooms, existing rooms run to their end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Seconds after SIGTERM the node waits for its rooms to end before it exits anyway.
    pub deadline_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// redis://host:port/db; empty: no registry (signaling lists this node itself).
    pub url: String,
    /// Prefix of every key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Milliseconds between heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Milliseconds a heartbeat stays valid: a node silent this long is dead.
    pub node_ttl_ms: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: "sfu-1".into(),
            announced_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            control_url: String::new(),
        }
    }
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig { deadline_s: 3500 }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            key_prefix: "metaclinic:".into(),
            heartbeat_interval_ms: 1000,
            node_ttl_ms: 3000,
        }
    }
}

impl Default for RtcConfig {
    fn default() -> Self {
        RtcConfig {
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            udp_port: 40000,
            media_threads: 0,
            connect_timeout_s: 30,
            idle_timeout_s: 30,
            socket_buffer_bytes: 4 << 20,
            keyframe_request_interval_ms: 500,
            tcp_port: 40000,
            fast_path: true,
            udp_gso: true,
        }
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            listen: "127.0.0.1:7001".parse().expect("literal address"),
            credential: String::new(),
        }
    }
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            max_participants: 16,
            max_rooms: 5000,
            max_thread_busy_pct: 80,
        }
    }
}

pub use metaclinic_protocol::config::{ConfigError, from_toml_text, layered};

impl SfuConfig {
    /// Defaults, then the file (if any), then the environment; validated.
    pub fn load(path: Option<&Path>) -> Result<SfuConfig, ConfigError> {
        let cfg = Self::extract(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Like `load`, without validating (for callers that fill in more first).
    pub fn extract(path: Option<&Path>) -> Result<SfuConfig, ConfigError> {
        layered(path, ENV_PREFIX)
    }

    /// Parse TOML text alone (no environment), validated. For tests and tools.
    pub fn from_toml(text: &str) -> Result<SfuConfig, ConfigError> {
        let cfg: SfuConfig = from_toml_text(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: &str| {
            Err(ConfigError::Invalid {
                key,
                problem: problem.to_owned(),
            })
        };
        if !(50..=5000).contains(&self.rtc.keyframe_request_interval_ms) {
            return invalid(
                "rtc.keyframe_request_interval_ms",
                "50 to 5000 milliseconds",
            );
        }
        if self.node.id.is_empty() || self.node.id.len() > 64 {
            return invalid("node.id", "must be 1 to 64 characters");
        }
        if self.node.announced_ip.is_unspecified() {
            return invalid(
                "node.announced_ip",
                "must be an address clients can reach, not 0.0.0.0 or ::",
            );
        }
        if self.rtc.udp_port == 0 {
            return invalid(
                "rtc.udp_port",
                "must be a fixed port (clients are told it), not 0",
            );
        }
        if self.rtc.udp_port as usize + self.media_threads() > 65536 {
            return invalid(
                "rtc.udp_port",
                "udp_port + media_threads runs past port 65535",
            );
        }
        if self.rtc.media_threads > 256 {
            return invalid("rtc.media_threads", "at most 256");
        }
        if self.rtc.connect_timeout_s == 0 || self.rtc.idle_timeout_s == 0 {
            return invalid(
                "rtc.connect_timeout_s",
                "timeouts must be at least 1 second",
            );
        }
        if self.control.credential.len() < 16 {
            return invalid(
                "control.credential",
                "must be at least 16 characters (set METACLINIC_SFU__CONTROL__CREDENTIAL)",
            );
        }
        if self.rooms.max_participants < 2 {
            return invalid("rooms.max_participants", "must be at least 2");
        }
        if let Err(e) = self.spatial.validate() {
            return Err(ConfigError::Invalid {
                key: "spatial",
                problem: e.to_string(),
            });
        }
        if let Err((key, problem)) = self.turn.validate() {
            return Err(ConfigError::Invalid { key, problem });
        }
        if !(1..=100).contains(&self.rooms.max_thread_busy_pct) {
            return invalid("rooms.max_thread_busy_pct", "must be from 1 to 100");
        }
        if self.rooms.max_rooms == 0 {
            return invalid("rooms.max_rooms", "must be at least 1");
        }
        let url = &self.node.control_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return invalid("node.control_url", "an http:// or https:// URL, or empty");
        }
        if self.drain.deadline_s == 0 {
            return invalid("drain.deadline_s", "at least 1 second");
        }
        let r = &self.redis;
        let redis_url_ok =
            r.url.is_empty() || r.url.starts_with("redis://") || r.url.starts_with("rediss://");
        if !redis_url_ok {
            return invalid("redis.url", "a redis:// or rediss:// URL, or empty");
        }
        if r.key_prefix.is_empty() || r.key_prefix.len() > 64 {
            return invalid("redis.key_prefix", "1 to 64 characters");
        }
        if r.heartbeat_interval_ms < 100 {
            return invalid("redis.heartbeat_interval_ms", "at least 100 milliseconds");
        }
        if r.node_ttl_ms < 2 * r.heartbeat_interval_ms {
            return invalid(
                "redis.node_ttl_ms",
                "at least twice redis.heartbeat_interval_ms (one lost heartbeat is no death)",
            );
        }
        Ok(())
    }

    /// The control URL signaling should use for this node.
    pub fn control_url(&self) -> String {
        if self.node.control_url.is_empty() {
            let ip = self.node.announced_ip;
            let host = if ip.is_ipv6() {
                format!("[{ip}]")
            } else {
                ip.to_string()
            };
            format!("http://{host}:{}", self.control.listen.port())
        } else {
            self.node.control_url.trim_end_matches('/').to_owned()
        }
    }

    pub fn drain_deadline(&self) -> Duration {
        Duration::from_secs(self.drain.deadline_s)
    }

    /// Media threads to start: the configured number, or one per core.
    pub fn media_threads(&self) -> usize {
        if self.rtc.media_threads > 0 {
            self.rtc.media_threads
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }

    /// The spatial mixer's workers: as configured, else one per core the media threads
    /// leave (at least one). More would only take turns with the media threads.
    pub fn mixer_threads(&self) -> usize {
        match self.spatial.mixer_threads {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .saturating_sub(self.media_threads())
                .max(1),
            n => n,
        }
    }

    /// `rooms.max_thread_busy_pct` as a share (0 to 1).
    pub fn max_thread_busy(&self) -> f64 {
        f64::from(self.rooms.max_thread_busy_pct) / 100.0
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.rtc.connect_timeout_s)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.rtc.idle_timeout_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRED: &str = "[control]\ncredential = \"0123456789abcdef\"\n";

    #[test]
    fn defaults_plus_a_credential_are_valid() {
        let cfg = SfuConfig::from_toml(CRED).unwrap();
        assert_eq!(cfg.rtc.udp_port, 40000);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = SfuConfig::from_toml(&format!("{CRED}[rtc]\nudp_prot = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("udp_prot"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = SfuConfig::from_toml(&format!("{CRED}[node]\nannounced_ip = \"0.0.0.0\"\n"))
            .unwrap_err();
        assert!(err.to_string().starts_with("node.announced_ip:"), "{err}");
        let err = SfuConfig::from_toml("[control]\ncredential = \"short\"\n").unwrap_err();
        assert!(err.to_string().starts_with("control.credential:"), "{err}");
        let err = SfuConfig::from_toml(&format!("{CRED}[rtc]\nudp_port = \"x\"\n")).unwrap_err();
        assert!(err.to_string().contains("udp_port"), "{err}");
    }

    #[test]
    fn registry_and_drain_values_name_their_key() {
        for (toml, key) in [
            ("[redis]\nurl = \"http://x\"\n", "redis.url:"),
            (
                "[redis]\nheartbeat_interval_ms = 1000\nnode_ttl_ms = 1500\n",
                "redis.node_ttl_ms:",
            ),
            ("[drain]\ndeadline_s = 0\n", "drain.deadline_s:"),
            (
                "[node]\ncontrol_url = \"10.0.0.5:7001\"\n",
                "node.control_url:",
            ),
        ] {
            let err = SfuConfig::from_toml(&format!("{CRED}{toml}")).unwrap_err();
            assert!(err.to_string().starts_with(key), "{toml}: {err}");
        }
        // The control URL the node registers defaults to its announced address.
        let cfg = SfuConfig::from_toml(
            "[node]\nannounced_ip = \"10.0.0.5\"\n\
             [control]\nlisten = \"0.0.0.0:7002\"\ncredential = \"0123456789abcdef\"\n",
        )
        .unwrap();
        assert_eq!(cfg.control_url(), "http://10.0.0.5:7002");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's own error type, in a test
    fn the_environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("sfu.toml", &format!("{CRED}[rtc]\nudp_port = 41000\n"))?;
            jail.set_env("METACLINIC_SFU__RTC__UDP_PORT", "42000");
            let cfg = SfuConfig::load(Some(Path::new("sfu.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(cfg.rtc.udp_port, 42000);
            Ok(())
        });
    }
}

#[cfg(test)]
mod sample_tests {
    use super::*;

    /// The sample in config/ parses, and documents every key the configuration has.
    #[test]
    fn the_sample_config_parses_and_documents_every_key() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/sfu.toml");
        let text = std::fs::read_to_string(path).unwrap();
        SfuConfig::from_toml(&text).unwrap();
        let defaults = toml::Value::try_from(SfuConfig::default()).unwrap();
        let sample: toml::Table = toml::from_str(&text).unwrap();
        for (section, keys) in defaults.as_table().unwrap() {
            for key in keys.as_table().unwrap().keys() {
                assert!(
                    sample.get(section).and_then(|s| s.get(key)).is_some(),
                    "config/sfu.toml lacks {section}.{key}"
                );
                let documented = text
                    .lines()
                    .skip_while(|l| l.trim() != format!("[{section}]"))
                    .take_while(|l| !l.starts_with(&format!("{key} =")))
                    .last()
                    .is_some_and(|l| l.trim_start().starts_with('#'));
                assert!(
                    documented,
                    "config/sfu.toml: {section}.{key} has no comment above it"
                );
            }
        }
    }
}
