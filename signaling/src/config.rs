//! Configuration of the signaling service: one serde tree, TOML plus environment
//! (`METACLINIC_SIGNALING__HTTP__LISTEN=...`), unknown keys refused, validated at start with
//! errors that name the key. `config/signaling.toml` documents every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const ENV_PREFIX: &str = "METACLINIC_SIGNALING__";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SignalingConfig {
    pub http: HttpConfig,
    pub identity: IdentitySection,
    pub booking: BookingSection,
    pub policy: PolicySection,
    pub rooms: RoomsSection,
    pub sfu: SfuSection,
    pub audit: AuditSection,
    pub limits: LimitsSection,
    pub drain: DrainSection,
    pub redis: RedisSection,
    pub dev: DevSection,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The public listener (HTTP and WebSocket; TLS is terminated by the ingress or proxy).
    pub listen: SocketAddr,
    /// How clients reach this service, for the links dev mode prints.
    pub public_url: String,
    /// Largest WebSocket message accepted, in bytes.
    pub max_message_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySection {
    /// The identity provider's issuer (`iss`), exactly.
    pub issuer: String,
    /// This service's audience (`aud`).
    pub audience: String,
    /// Where the issuer's JWKS is; or set `discovery_url` instead.
    pub jwks_url: Option<String>,
    /// The issuer's OIDC discovery document (its `jwks_uri` is used).
    pub discovery_url: Option<String>,
    /// Accepted signature algorithms: any of RS256, RS384, ES256, ES384.
    pub algorithms: Vec<String>,
    /// Clock leeway for exp/nbf, seconds (at most 60).
    pub leeway_s: u64,
    /// The FHIR base URL absolute `fhirUser` claims must sit under.
    pub fhir_base: String,
    /// Least seconds between two JWKS fetches caused by an unknown `kid`.
    pub jwks_refresh_min_interval_s: u64,
    /// Timeout of a JWKS or discovery request, milliseconds.
    pub http_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BookingBackend {
    /// The hospital's FHIR R4 server.
    Fhir,
    /// FHIR Appointment JSON files in a folder (development and demos).
    Files,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BookingSection {
    pub backend: BookingBackend,
    pub fhir: FhirBookingConfig,
    pub files: FilesBookingConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FhirBookingConfig {
    /// FHIR R4 base URL, e.g. https://fhir.hospital.example/R4
    pub base_url: String,
    /// OAuth 2.0 token endpoint (SMART Backend Services).
    pub token_url: String,
    /// Our client id at the hospital's authorization server.
    pub client_id: String,
    /// PEM private key (PKCS#8) signing our client assertion.
    pub private_key_file: PathBuf,
    /// The `kid` of that key in the JWKS the hospital registered for us.
    pub key_id: String,
    /// RS384 or ES384 (SMART Backend Services).
    pub algorithm: String,
    /// Scopes requested.
    pub scope: String,
    /// Timeout of one request, milliseconds.
    pub timeout_ms: u64,
    /// Retries of a failed read (with backoff) before booking_unavailable.
    pub retries: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilesBookingConfig {
    /// Folder of FHIR Appointment (and PractitionerRole) JSON files; watched for changes.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// Minutes before the appointment's start that joining opens.
    pub lead_min: u64,
    /// Minutes after its end that the call may run on.
    pub grace_min: u64,
    /// Interpreters enter without waiting in the lobby.
    pub interpreters_direct: bool,
    /// Minutes before the hard stop that participants are warned.
    pub warn_before_end_min: u64,
    /// Most minutes a host may extend a consultation by, in total.
    pub max_extension_min: u64,
    /// Seconds between re-reads of a running consultation's appointment (a cancellation ends it).
    pub recheck_interval_s: u64,
    /// Seconds an admitted participant who lost the connection may rejoin without the lobby.
    pub reconnect_grace_s: u64,
    /// Minutes an interpreter invite stays valid (at most 30).
    pub invite_ttl_min: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsSection {
    /// Appointments whose `appointmentType` or `serviceType` carries one of these codings
    /// open a shared room (spatial audio, avatars): `"system|code"`, or `"code"` in any system.
    pub shared_codes: Vec<String>,
}

/// The coding system of the default shared-room code, for booking systems without a code of
/// their own for group sessions.
pub const ROOM_KIND_SYSTEM: &str = "urn:metaclinic:room-kind";

impl Default for RoomsSection {
    fn default() -> Self {
        RoomsSection {
            shared_codes: vec![format!("{ROOM_KIND_SYSTEM}|shared")],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SfuNode {
    pub id: String,
    /// The node's internal control API, e.g. http://10.0.0.5:7001
    pub url: String,
    /// Its service credential.
    pub credential: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SfuSection {
    /// The SFU nodes rooms are placed on (without Redis; with it, nodes register themselves).
    pub nodes: Vec<SfuNode>,
    /// The service credential of the nodes found in the registry (with redis.url).
    pub credential: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DrainSection {
    /// Seconds after SIGTERM the process waits for its WebSockets to go before it exits.
    pub deadline_s: u64,
    /// Milliseconds clients are told to wait before they reconnect (to another replica).
    pub reconnect_after_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    /// redis://host:port/db; empty: one process, state in memory.
    pub url: String,
    /// Prefix of every key and channel (shared with the SFU nodes' registry).
    pub key_prefix: String,
    /// Timeout of one Redis command, milliseconds.
    pub timeout_ms: u64,
    /// Milliseconds between reads of the node registry (dead nodes are found this often).
    pub registry_poll_ms: u64,
    /// This replica's id among the signaling replicas; empty: the host name and a random
    /// suffix.
    pub replica_id: String,
}

impl Default for DrainSection {
    fn default() -> Self {
        DrainSection {
            deadline_s: 30,
            reconnect_after_ms: 1000,
        }
    }
}

impl Default for RedisSection {
    fn default() -> Self {
        RedisSection {
            url: String::new(),
            key_prefix: "metaclinic:".into(),
            timeout_ms: 1000,
            registry_poll_ms: 1000,
            replica_id: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// The append-only audit log (JSON Lines, hash-chained).
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Sustained WebSocket messages per second per client.
    pub messages_per_second: u32,
    /// Burst of messages allowed above the sustained rate.
    pub message_burst: u32,
    /// Seconds a new WebSocket has to send its join.
    pub join_timeout_s: u64,
    /// Most WebSocket sessions at once.
    pub max_sessions: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DevSection {
    /// Development mode: a local token issuer with demo identities. Never in production.
    pub enabled: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".parse().expect("literal address"),
            public_url: "http://127.0.0.1:8080".into(),
            max_message_bytes: 64 * 1024,
        }
    }
}

impl Default for IdentitySection {
    fn default() -> Self {
        IdentitySection {
            issuer: String::new(),
            audience: "metaclinic".into(),
            jwks_url: None,
            discovery_url: None,
            algorithms: vec!["RS256".into(), "ES256".into()],
            leeway_s: 30,
            fhir_base: String::new(),
            jwks_refresh_min_interval_s: 30,
            http_timeout_ms: 3000,
        }
    }
}

impl Default for BookingSection {
    fn default() -> Self {
        BookingSection {
            backend: BookingBackend::Fhir,
            fhir: FhirBookingConfig::default(),
            files: FilesBookingConfig::default(),
        }
    }
}

impl Default for FhirBookingConfig {
    fn default() -> Self {
        FhirBookingConfig {
            base_url: String::new(),
            token_url: String::new(),
            client_id: String::new(),
            private_key_file: PathBuf::new(),
            key_id: String::new(),
            algorithm: "ES384".into(),
            scope: "system/Appointment.read system/PractitionerRole.read".into(),
            timeout_ms: 3000,
            retries: 2,
        }
    }
}

impl Default for FilesBookingConfig {
    fn default() -> Self {
        FilesBookingConfig {
            dir: PathBuf::from("config/appointments"),
        }
    }
}

impl Default for PolicySection {
    fn default() -> Self {
        PolicySection {
            lead_min: 15,
            grace_min: 15,
            interpreters_direct: false,
            warn_before_end_min: 5,
            max_extension_min: 30,
            recheck_interval_s: 60,
            reconnect_grace_s: 120,
            invite_ttl_min: 30,
        }
    }
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            path: PathBuf::from("audit/audit.jsonl"),
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            messages_per_second: 20,
            message_burst: 40,
            join_timeout_s: 10,
            max_sessions: 10_000,
        }
    }
}

/// Loading errors are the SFU's: one way of loading serves every process kind.
pub use metaclinic_sfu::config::ConfigError;

const ALGORITHMS: [&str; 4] = ["RS256", "RS384", "ES256", "ES384"];

impl SignalingConfig {
    /// Defaults, then the file, then the environment; validated.
    pub fn load(path: Option<&Path>) -> Result<SignalingConfig, ConfigError> {
        let cfg = Self::extract(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Like `load`, without validating (for callers that fill in more first).
    pub fn extract(path: Option<&Path>) -> Result<SignalingConfig, ConfigError> {
        metaclinic_sfu::config::layered(path, ENV_PREFIX)
    }

    pub fn from_toml(text: &str) -> Result<SignalingConfig, ConfigError> {
        let cfg: SignalingConfig = metaclinic_sfu::config::from_toml_text(text)?;
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
        let id = &self.identity;
        if !self.dev.enabled {
            if id.issuer.is_empty() {
                return invalid("identity.issuer", "required (the identity provider's iss)");
            }
            if id.jwks_url.is_none() && id.discovery_url.is_none() {
                return invalid("identity.jwks_url", "set jwks_url or discovery_url");
            }
            if id.fhir_base.is_empty() {
                return invalid(
                    "identity.fhir_base",
                    "required (the FHIR base fhirUser claims sit under)",
                );
            }
        }
        if id.algorithms.is_empty() {
            return invalid(
                "identity.algorithms",
                "at least one of RS256, RS384, ES256, ES384",
            );
        }
        if let Some(a) = id
            .algorithms
            .iter()
            .find(|a| !ALGORITHMS.contains(&a.as_str()))
        {
            return invalid(
                "identity.algorithms",
                &format!("{a} is not allowed (RS256, RS384, ES256, ES384)"),
            );
        }
        if id.leeway_s > 60 {
            return invalid("identity.leeway_s", "at most 60 seconds");
        }
        if id.audience.is_empty() {
            return invalid("identity.audience", "required");
        }
        if self.booking.backend == BookingBackend::Fhir {
            let f = &self.booking.fhir;
            for (key, value) in [
                ("booking.fhir.base_url", &f.base_url),
                ("booking.fhir.token_url", &f.token_url),
                ("booking.fhir.client_id", &f.client_id),
                ("booking.fhir.key_id", &f.key_id),
            ] {
                if value.is_empty() {
                    return invalid(key, "required with booking.backend = \"fhir\"");
                }
            }
            if f.private_key_file.as_os_str().is_empty() {
                return invalid(
                    "booking.fhir.private_key_file",
                    "required with booking.backend = \"fhir\"",
                );
            }
            if f.algorithm != "RS384" && f.algorithm != "ES384" {
                return invalid(
                    "booking.fhir.algorithm",
                    "RS384 or ES384 (SMART Backend Services)",
                );
            }
            if f.retries > 5 {
                return invalid("booking.fhir.retries", "at most 5");
            }
        }
        let p = &self.policy;
        if p.invite_ttl_min == 0 || p.invite_ttl_min > 30 {
            return invalid("policy.invite_ttl_min", "1 to 30 minutes");
        }
        if p.lead_min > 24 * 60 || p.grace_min > 24 * 60 {
            return invalid("policy.lead_min", "lead and grace are at most a day");
        }
        if p.recheck_interval_s == 0 {
            return invalid("policy.recheck_interval_s", "at least 1 second");
        }
        if let Some(c) = self
            .rooms
            .shared_codes
            .iter()
            .find(|c| !crate::rooms::is_code_pattern(c))
        {
            return invalid(
                "rooms.shared_codes",
                &format!("{c:?} is not \"system|code\" or \"code\""),
            );
        }
        let r = &self.redis;
        let redis_url_ok =
            r.url.is_empty() || r.url.starts_with("redis://") || r.url.starts_with("rediss://");
        if !redis_url_ok {
            return invalid("redis.url", "a redis:// or rediss:// URL, or empty");
        }
        let id_ok = r.replica_id.len() <= 64
            && r.replica_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !id_ok {
            return invalid(
                "redis.replica_id",
                "at most 64 letters, digits, '.', '_' or '-'",
            );
        }
        if r.key_prefix.is_empty() || r.key_prefix.len() > 64 {
            return invalid("redis.key_prefix", "1 to 64 characters");
        }
        if r.timeout_ms == 0 || r.registry_poll_ms < 100 {
            return invalid(
                "redis.registry_poll_ms",
                "at least 100 milliseconds (and redis.timeout_ms at least 1)",
            );
        }
        if r.url.is_empty() {
            if self.sfu.nodes.is_empty() && !self.dev.enabled {
                return invalid(
                    "sfu.nodes",
                    "at least one SFU node (or set redis.url: nodes register themselves)",
                );
            }
        } else {
            if !self.sfu.nodes.is_empty() {
                return invalid(
                    "sfu.nodes",
                    "leave it empty with redis.url: SFU nodes register themselves in Redis",
                );
            }
            if self.sfu.credential.len() < 16 {
                return invalid(
                    "sfu.credential",
                    "at least 16 characters (the registered nodes' service credential)",
                );
            }
        }
        if self.drain.deadline_s == 0 {
            return invalid("drain.deadline_s", "at least 1 second");
        }
        for n in &self.sfu.nodes {
            if n.credential.len() < 16 {
                return invalid("sfu.nodes.credential", "at least 16 characters");
            }
        }
        if self.limits.messages_per_second == 0 || self.limits.message_burst == 0 {
            return invalid("limits.messages_per_second", "must be positive");
        }
        if self.http.max_message_bytes < 16 * 1024 {
            return invalid(
                "http.max_message_bytes",
                "at least 16384 (an SDP needs room)",
            );
        }
        Ok(())
    }

    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.identity.leeway_s)
    }
}

#[cfg(test)]
mod sample_tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../config/signaling.toml");
    const DEV: &str = include_str!("../../config/dev.toml");

    /// Every leaf key of `table`, as (section path, key).
    fn leaves(table: &toml::Table, section: &str, out: &mut Vec<(String, String)>) {
        for (key, value) in table {
            match value {
                toml::Value::Table(t) => {
                    let path = if section.is_empty() {
                        key.clone()
                    } else {
                        format!("{section}.{key}")
                    };
                    leaves(t, &path, out);
                }
                _ => out.push((section.to_owned(), key.clone())),
            }
        }
    }

    #[test]
    fn the_sample_config_parses_and_documents_every_key() {
        SignalingConfig::from_toml(SAMPLE).unwrap();
        let defaults = toml::Table::try_from(SignalingConfig::default()).unwrap();
        let sample: toml::Table = toml::from_str(SAMPLE).unwrap();
        let mut keys = Vec::new();
        leaves(&defaults, "", &mut keys);
        assert!(keys.len() > 30, "{keys:?}");
        for (section, key) in keys {
            let present = section
                .split('.')
                .try_fold(&sample, |t, s| t.get(s)?.as_table())
                .and_then(|t| t.get(&key));
            assert!(
                present.is_some(),
                "config/signaling.toml lacks {section}.{key}"
            );
            let documented = SAMPLE
                .lines()
                .skip_while(|l| l.trim() != format!("[{section}]"))
                .take_while(|l| !l.starts_with(&format!("{key} =")))
                .last()
                .is_some_and(|l| l.trim_start().starts_with('#'));
            assert!(
                documented,
                "config/signaling.toml: {section}.{key} has no comment above it"
            );
        }
    }

    #[test]
    fn redis_mode_wants_a_credential_and_no_static_nodes() {
        let mut cfg = SignalingConfig::from_toml(SAMPLE).unwrap();
        cfg.redis.url = "redis://127.0.0.1:6379/0".into();
        let key = |cfg: &SignalingConfig| match cfg.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(key(&cfg), "sfu.nodes");
        cfg.sfu.nodes.clear();
        assert_eq!(key(&cfg), "sfu.credential");
        cfg.sfu.credential = "x".repeat(16);
        cfg.validate().unwrap();
        cfg.redis.url = "http://127.0.0.1:6379".into();
        assert_eq!(key(&cfg), "redis.url");
        cfg.redis.url.clear();
        assert_eq!(key(&cfg), "sfu.nodes");
    }

    #[test]
    fn the_dev_sample_is_valid_once_dev_mode_fills_in_its_part() {
        let mut cfg: SignalingConfig = metaclinic_sfu::config::from_toml_text(DEV).unwrap();
        // What `metaclinic dev` sets itself.
        cfg.dev.enabled = true;
        cfg.booking.backend = BookingBackend::Files;
        cfg.sfu.nodes = vec![SfuNode {
            id: "dev".into(),
            url: "http://127.0.0.1:7001".into(),
            credential: "x".repeat(16),
        }];
        cfg.validate().unwrap();
        assert!(
            cfg.http.listen.ip().is_loopback(),
            "dev mode must not listen beyond this machine"
        );
        // Without dev mode the same file is refused: it names no identity provider.
        cfg.dev.enabled = false;
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::Invalid {
                key: "identity.issuer",
                ..
            })
        ));
    }
}
