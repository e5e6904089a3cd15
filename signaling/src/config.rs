//! Configuration of the signaling service: one serde tree, TOML plus environment
//! (`METACLINIC_SIGNALING__HTTP__LISTEN=...`), unknown keys refused, validated at start with
//! errors that name the key. `config/signaling.toml` documents every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const ENV_PREFIX: &str = "METACLINIC_SIGNALING__";

mod validate;

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
    /// STUN/TURN servers handed to clients (crate::ice).
    pub ice_servers: crate::ice::IceServersSection,
    /// Signed events to the hospital's systems (crate::webhooks).
    pub webhooks: crate::webhooks::WebhooksSection,
    /// Encounters and AuditEvents written to the booking system's FHIR server.
    pub fhir_writeback: crate::fhir::writeback::FhirWritebackSection,
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
    /// Milliseconds a connection has to send a request's headers; also how long an idle
    /// keep-alive connection is kept between requests.
    pub header_read_timeout_ms: u64,
    /// Most TCP connections at once (WebSockets included); more wait in the kernel's queue.
    /// Lowered to three quarters of the process's open-file limit when that is smaller.
    pub max_connections: usize,
    /// Proxies (addresses or CIDR prefixes) whose X-Forwarded-For names the client; empty:
    /// the peer address is the client.
    pub trusted_proxies: Vec<String>,
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
    /// Accept ES256/ES384 signatures in high-s form too (an identity provider that does not
    /// normalize its signatures).
    pub accept_high_s: bool,
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
    /// The append-only audit log (JSON Lines, chained with a keyed MAC).
    pub path: PathBuf,
    /// The MAC key: a file of at least 32 bytes (a mounted secret). Required outside dev mode.
    pub key_file: PathBuf,
    /// The signed checkpoint (record count and last MAC); empty: `<path>.checkpoint`.
    pub checkpoint_path: PathBuf,
    /// Seconds over which refusals of unauthenticated clients are summarised: the first per
    /// address and reason is written at once, the rest as one record with a count.
    pub refusal_summary_interval_s: u64,
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
    /// Most WebSockets one client address (an IPv6 /64) may hold before they have joined.
    pub max_unjoined_per_address: usize,
    /// Sustained bytes of WebSocket messages per second per client.
    pub bytes_per_second: u32,
    /// Burst of bytes allowed above the sustained rate (at least http.max_message_bytes).
    pub byte_burst: u32,
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
            header_read_timeout_ms: 10_000,
            max_connections: 15_000,
            trusted_proxies: Vec::new(),
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
            accept_high_s: false,
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
            key_file: PathBuf::new(),
            checkpoint_path: PathBuf::new(),
            refusal_summary_interval_s: 60,
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
            max_unjoined_per_address: 50,
            bytes_per_second: 64 * 1024,
            byte_burst: 256 * 1024,
        }
    }
}

/// Loading errors are the SFU's: one way of loading serves every process kind.
pub use metaclinic_protocol::config::ConfigError;

impl SignalingConfig {
    /// Defaults, then the file, then the environment; validated.
    pub fn load(path: Option<&Path>) -> Result<SignalingConfig, ConfigError> {
        let cfg = Self::extract(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Like `load`, without validating (for callers that fill in more first).
    pub fn extract(path: Option<&Path>) -> Result<SignalingConfig, ConfigError> {
        metaclinic_protocol::config::layered(path, ENV_PREFIX)
    }

    pub fn from_toml(text: &str) -> Result<SignalingConfig, ConfigError> {
        let cfg: SignalingConfig = metaclinic_protocol::config::from_toml_text(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Refuse a configuration that cannot work, naming the key ([`validate`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::validate(self)
    }

    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.identity.leeway_s)
    }
}

impl AuditSection {
    /// Where the checkpoint is kept: as configured, or beside the log.
    pub fn checkpoint_path(&self) -> PathBuf {
        if self.checkpoint_path.as_os_str().is_empty() {
            let mut p = self.path.clone().into_os_string();
            p.push(".checkpoint");
            PathBuf::from(p)
        } else {
            self.checkpoint_path.clone()
        }
    }
}

#[cfg(test)]
mod sample_tests;
