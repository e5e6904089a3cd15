//! Checks of a whole configuration, each error naming the key to fix.

use super::{BookingBackend, ConfigError, SignalingConfig};

const ALGORITHMS: [&str; 4] = ["RS256", "RS384", "ES256", "ES384"];

pub(super) fn validate(cfg: &SignalingConfig) -> Result<(), ConfigError> {
    let id = &cfg.identity;
    if !cfg.dev.enabled {
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
    if cfg.booking.backend == BookingBackend::Fhir {
        let f = &cfg.booking.fhir;
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
    let p = &cfg.policy;
    if p.invite_ttl_min == 0 || p.invite_ttl_min > 30 {
        return invalid("policy.invite_ttl_min", "1 to 30 minutes");
    }
    if p.lead_min > 24 * 60 || p.grace_min > 24 * 60 {
        return invalid("policy.lead_min", "lead and grace are at most a day");
    }
    if p.recheck_interval_s == 0 {
        return invalid("policy.recheck_interval_s", "at least 1 second");
    }
    if let Some(c) = cfg
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
    let r = &cfg.redis;
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
        if cfg.sfu.nodes.is_empty() && !cfg.dev.enabled {
            return invalid(
                "sfu.nodes",
                "at least one SFU node (or set redis.url: nodes register themselves)",
            );
        }
    } else {
        if !cfg.sfu.nodes.is_empty() {
            return invalid(
                "sfu.nodes",
                "leave it empty with redis.url: SFU nodes register themselves in Redis",
            );
        }
        if cfg.sfu.credential.len() < 16 {
            return invalid(
                "sfu.credential",
                "at least 16 characters (the registered nodes' service credential)",
            );
        }
    }
    if cfg.drain.deadline_s == 0 {
        return invalid("drain.deadline_s", "at least 1 second");
    }
    for n in &cfg.sfu.nodes {
        if n.credential.len() < 16 {
            return invalid("sfu.nodes.credential", "at least 16 characters");
        }
    }
    if cfg.limits.messages_per_second == 0 || cfg.limits.message_burst == 0 {
        return invalid("limits.messages_per_second", "must be positive");
    }
    if cfg.http.max_message_bytes < 16 * 1024 {
        return invalid(
            "http.max_message_bytes",
            "at least 16384 (an SDP needs room)",
        );
    }
    http_limits(cfg)?;
    if let Err((key, problem)) = cfg.ice_servers.validate() {
        return invalid(key, &problem);
    }
    crate::webhooks::config::validate(&cfg.webhooks)?;
    crate::fhir::writeback::validate(cfg)?;
    audit(cfg)
}

fn invalid(key: &'static str, problem: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key,
        problem: problem.to_owned(),
    })
}

/// What an outsider can hold: connections, their header time, the per-address cap and the
/// byte budget of a WebSocket.
fn http_limits(cfg: &SignalingConfig) -> Result<(), ConfigError> {
    let h = &cfg.http;
    if !(100..=120_000).contains(&h.header_read_timeout_ms) {
        return invalid("http.header_read_timeout_ms", "100 to 120000 milliseconds");
    }
    if h.max_connections < 16 {
        return invalid("http.max_connections", "at least 16");
    }
    if let Some(p) = h
        .trusted_proxies
        .iter()
        .find(|p| crate::connections::IpPrefix::parse(p).is_none())
    {
        return invalid(
            "http.trusted_proxies",
            &format!("{p:?} is not an IP address or CIDR prefix"),
        );
    }
    let l = &cfg.limits;
    if l.max_unjoined_per_address == 0 {
        return invalid("limits.max_unjoined_per_address", "at least 1");
    }
    if l.bytes_per_second == 0 {
        return invalid("limits.bytes_per_second", "must be positive");
    }
    if (l.byte_burst as usize) < h.max_message_bytes {
        return invalid(
            "limits.byte_burst",
            "at least http.max_message_bytes (the largest message must fit)",
        );
    }
    Ok(())
}

fn audit(cfg: &SignalingConfig) -> Result<(), ConfigError> {
    let a = &cfg.audit;
    if a.key_file.as_os_str().is_empty() && !cfg.dev.enabled {
        return invalid(
            "audit.key_file",
            "required: a file of at least 32 secret bytes (e.g. `openssl rand -hex 32`), \
             the key of the audit log's MAC chain",
        );
    }
    if a.checkpoint_path() == a.path {
        return invalid("audit.checkpoint_path", "must differ from audit.path");
    }
    if !(1..=3600).contains(&a.refusal_summary_interval_s) {
        return invalid("audit.refusal_summary_interval_s", "1 to 3600 seconds");
    }
    Ok(())
}
