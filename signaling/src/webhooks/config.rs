//! `[webhooks]`: where events go, how they are signed, how long they are retried, and where
//! the outbox is kept. Checked at start, each error naming its key.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::event::EventKind;
use crate::config::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksSection {
    /// The receivers; none: no webhooks.
    pub endpoints: Vec<Endpoint>,
    /// The outbox file (without Redis): events not yet delivered survive a restart here.
    pub outbox_path: PathBuf,
    /// Most undelivered events kept (all endpoints and the FHIR write-back together); the
    /// oldest is dropped (and counted) to make room.
    pub outbox_max_items: usize,
    /// Delay before the first retry, milliseconds; doubled each attempt, with jitter.
    pub retry_initial_ms: u64,
    /// Longest delay between two attempts, milliseconds.
    pub retry_max_ms: u64,
    /// An event not delivered this many seconds after it happened is dropped (and counted).
    pub max_age_s: u64,
    /// Timeout of one delivery, milliseconds.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Endpoint {
    /// A short name for metrics and logs (letters, digits, '-', '_').
    pub name: String,
    /// Where events are POSTed (http:// or https://).
    pub url: String,
    /// The signing secret (at least 32 characters, or `whsec_` and base64 of at least 24
    /// bytes); or set `secret_file`.
    pub secret: String,
    /// A file holding the secret (a mounted secret).
    pub secret_file: PathBuf,
    /// Which events this endpoint receives; empty: all.
    pub events: Vec<String>,
}

impl Default for WebhooksSection {
    fn default() -> Self {
        WebhooksSection {
            endpoints: Vec::new(),
            outbox_path: PathBuf::from("webhooks/outbox.jsonl"),
            outbox_max_items: 10_000,
            retry_initial_ms: 1000,
            retry_max_ms: 300_000,
            max_age_s: 24 * 3600,
            timeout_ms: 5000,
        }
    }
}

fn invalid(key: &'static str, problem: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key,
        problem: problem.to_owned(),
    })
}

/// Check `[webhooks]` on its own.
pub fn validate(w: &WebhooksSection) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    for e in &w.endpoints {
        let name_ok = !e.name.is_empty()
            && e.name.len() <= 64
            && e.name != super::FHIR_DESTINATION
            && e.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !name_ok {
            return invalid(
                "webhooks.endpoints.name",
                "1 to 64 letters, digits, '-' or '_' (and not \"fhir\")",
            );
        }
        if !names.insert(e.name.as_str()) {
            return invalid("webhooks.endpoints.name", &format!("{:?} twice", e.name));
        }
        let url_ok = reqwest::Url::parse(&e.url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !url_ok {
            return invalid(
                "webhooks.endpoints.url",
                &format!("{}: an http:// or https:// URL", e.name),
            );
        }
        match (e.secret.is_empty(), e.secret_file.as_os_str().is_empty()) {
            (true, true) => {
                return invalid(
                    "webhooks.endpoints.secret",
                    &format!("{}: set secret or secret_file", e.name),
                );
            }
            (false, false) => {
                return invalid(
                    "webhooks.endpoints.secret",
                    &format!("{}: set secret or secret_file, not both", e.name),
                );
            }
            (false, true) => {
                if let Err(problem) = super::signing::SigningKey::parse(&e.secret) {
                    return invalid(
                        "webhooks.endpoints.secret",
                        &format!("{}: {problem}", e.name),
                    );
                }
            }
            (true, false) => {}
        }
        if let Some(unknown) = e.events.iter().find(|k| EventKind::parse(k).is_none()) {
            return invalid(
                "webhooks.endpoints.events",
                &format!(
                    "{}: {unknown:?} is not one of {}",
                    e.name,
                    EventKind::ALL.map(|k| k.name()).join(", ")
                ),
            );
        }
    }
    if !(16..=1_000_000).contains(&w.outbox_max_items) {
        return invalid("webhooks.outbox_max_items", "16 to 1000000");
    }
    if w.retry_initial_ms == 0 || w.retry_max_ms < w.retry_initial_ms {
        return invalid(
            "webhooks.retry_max_ms",
            "retry_initial_ms at least 1 and retry_max_ms at least retry_initial_ms",
        );
    }
    if !(60..=7 * 24 * 3600).contains(&w.max_age_s) {
        return invalid("webhooks.max_age_s", "60 seconds to 7 days");
    }
    if !(100..=60_000).contains(&w.timeout_ms) {
        return invalid("webhooks.timeout_ms", "100 to 60000 milliseconds");
    }
    Ok(())
}

impl Endpoint {
    /// Whether this endpoint wants `kind`.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.is_empty() || self.events.iter().any(|k| k == kind.name())
    }

    /// The signing secret, from the configuration or its file.
    pub fn load_secret(&self) -> Result<super::signing::SigningKey, String> {
        let text = if self.secret.is_empty() {
            std::fs::read_to_string(&self.secret_file)
                .map_err(|e| format!("cannot read {}: {e}", self.secret_file.display()))?
        } else {
            self.secret.clone()
        };
        super::signing::SigningKey::parse(text.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint {
            name: "records".into(),
            url: "https://hooks.example.org/metaclinic".into(),
            secret: "x".repeat(32),
            ..Endpoint::default()
        }
    }

    fn key_of(w: &WebhooksSection) -> &'static str {
        match validate(w) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn webhooks_config_names_the_key_at_fault() {
        let mut w = WebhooksSection {
            endpoints: vec![endpoint()],
            ..WebhooksSection::default()
        };
        validate(&w).unwrap();
        w.endpoints[0].url = "ftp://x".into();
        assert_eq!(key_of(&w), "webhooks.endpoints.url");
        w.endpoints[0] = endpoint();
        w.endpoints[0].secret = "short".into();
        assert_eq!(key_of(&w), "webhooks.endpoints.secret");
        w.endpoints[0].secret_file = "/run/secret".into();
        assert_eq!(key_of(&w), "webhooks.endpoints.secret");
        w.endpoints[0] = endpoint();
        w.endpoints[0].events = vec!["consultation.exploded".into()];
        assert_eq!(key_of(&w), "webhooks.endpoints.events");
        w.endpoints[0] = endpoint();
        w.endpoints.push(endpoint());
        assert_eq!(key_of(&w), "webhooks.endpoints.name");
        w.endpoints.pop();
        w.outbox_max_items = 1;
        assert_eq!(key_of(&w), "webhooks.outbox_max_items");
    }
}
