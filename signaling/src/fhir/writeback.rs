//! FHIR write-back: each finished consultation as an `Encounter` ([`super::encounter`]) and
//! every audit record as an `AuditEvent` ([`super::audit_event`]), POSTed in batch Bundles to
//! the booking system's FHIR base through the SMART Backend Services client we read
//! appointments with. The items wait in the webhooks' outbox (crate::webhooks) and are
//! retried the same way; an entry the server refuses as invalid (4xx) is dropped and counted.
//!
//! The Encounter is created with `ifNoneExist` on its identifier, so a retried batch does not
//! create it twice; where it was created (its server id) is kept in the outbox's store under
//! the appointment, for whoever refers to it later ([`crate::webhooks::Pipeline::encounter_reference`]).

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::warn;

use crate::booking::SmartAuth;
use crate::config::{BookingBackend, ConfigError};
use crate::webhooks::outbox::Item;

/// The system of the consultation identifiers (the Encounter's identifier; also in every
/// webhook event as `consultation`).
pub const CONSULTATION_SYSTEM: &str = "urn:metaclinic:consultation";

/// Largest response read from the FHIR server.
const MAX_RESPONSE_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FhirWritebackSection {
    /// Write to the booking system's FHIR server (booking.backend = "fhir").
    pub enabled: bool,
    /// An Encounter per finished consultation.
    pub encounters: bool,
    /// Every audit record as an AuditEvent.
    pub audit_events: bool,
    /// Every vitals reading as an Observation (see `fhir::observation`).
    pub observations: bool,
    /// Most entries in one batch Bundle.
    pub batch_size: usize,
}

impl Default for FhirWritebackSection {
    fn default() -> Self {
        FhirWritebackSection {
            enabled: false,
            encounters: true,
            audit_events: true,
            observations: true,
            batch_size: 50,
        }
    }
}

fn invalid(key: &'static str, problem: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key,
        problem: problem.to_owned(),
    })
}

/// Check `[fhir_writeback]` against the booking system it writes to.
pub fn validate(cfg: &crate::config::SignalingConfig) -> Result<(), ConfigError> {
    let w = &cfg.fhir_writeback;
    if !w.enabled {
        return Ok(());
    }
    if cfg.booking.backend != BookingBackend::Fhir {
        return invalid(
            "fhir_writeback.enabled",
            "needs booking.backend = \"fhir\" (its server and SMART client are written to)",
        );
    }
    if !(1..=500).contains(&w.batch_size) {
        return invalid("fhir_writeback.batch_size", "1 to 500");
    }
    let scope = &cfg.booking.fhir.scope;
    for (wanted, resource) in [
        (w.encounters, "Encounter"),
        (w.audit_events, "AuditEvent"),
        (w.observations, "Observation"),
    ] {
        let granted = scope
            .split_whitespace()
            .any(|s| s.starts_with(&format!("system/{resource}.")) || s.starts_with("system/*."));
        if wanted && !granted {
            return invalid(
                "booking.fhir.scope",
                &format!(
                    "the write-back needs a scope to create {resource}s (system/{resource}.write, or .c / .cruds in SMART v2)"
                ),
            );
        }
    }
    Ok(())
}

/// The bundle entry that creates `encounter` once.
pub fn encounter_entry(encounter: &Value, consultation: &str) -> Value {
    json!({
        "resource": encounter,
        "request": {
            "method": "POST",
            "url": "Encounter",
            "ifNoneExist": format!("identifier={CONSULTATION_SYSTEM}%7C{consultation}"),
        }
    })
}

pub fn audit_event_entry(event: &Value) -> Value {
    json!({ "resource": event, "request": { "method": "POST", "url": "AuditEvent" } })
}

/// What the server said of one entry.
#[derive(Debug, PartialEq)]
pub enum EntryOutcome {
    /// Created (or found): where.
    Stored(Option<String>),
    /// Refused as invalid: trying again would not help.
    Rejected(u16),
    /// Worth another try (a 5xx, 429, 408, or no answer).
    Retry(String),
}

/// The writer: one batch request at a time.
pub struct Writeback {
    http: reqwest::Client,
    base_url: String,
    auth: Arc<SmartAuth>,
    pub config: FhirWritebackSection,
}

impl Writeback {
    pub fn new(
        base_url: &str,
        auth: Arc<SmartAuth>,
        config: FhirWritebackSection,
        timeout: Duration,
    ) -> anyhow::Result<Writeback> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Writeback {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            auth,
            config,
        })
    }

    /// POST the items' entries as one batch Bundle; one outcome per item, in order.
    pub async fn send(&self, items: &[Item]) -> Vec<EntryOutcome> {
        let entries: Vec<Value> = items
            .iter()
            .map(|i| serde_json::from_str(&i.body).unwrap_or(Value::Null))
            .collect();
        let bundle = json!({ "resourceType": "Bundle", "type": "batch", "entry": entries });
        let all = |why: String| {
            items
                .iter()
                .map(|_| EntryOutcome::Retry(why.clone()))
                .collect()
        };
        let mut refreshed = false;
        loop {
            let token = match self.auth.token().await {
                Ok(t) => t,
                Err(e) => return all(format!("token: {e}")),
            };
            let resp = self
                .http
                .post(&self.base_url)
                .bearer_auth(token)
                .header("content-type", "application/fhir+json")
                .header("accept", "application/fhir+json")
                .json(&bundle)
                .send()
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) if e.is_timeout() => return all("timeout".into()),
                Err(_) => return all("network".into()),
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                // A token revoked early: a new one, once.
                refreshed = true;
                self.auth.invalidate().await;
                continue;
            }
            if !status.is_success() {
                return all(reason(status.as_u16()));
            }
            let body = match read_limited(resp).await {
                Some(b) => b,
                None => return all("response".into()),
            };
            return outcomes(&body, items.len());
        }
    }
}

fn reason(status: u16) -> String {
    if status >= 500 {
        "http_5xx".into()
    } else {
        "http_4xx".into()
    }
}

async fn read_limited(mut resp: reqwest::Response) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_RESPONSE_BYTES {
            return None;
        }
    }
    Some(body)
}

/// Read a batch-response: each entry's `response.status` ("201 Created") and `location`.
pub fn outcomes(body: &[u8], expected: usize) -> Vec<EntryOutcome> {
    let parsed: Option<Vec<Value>> = serde_json::from_slice::<Value>(body)
        .ok()
        .filter(|b| b["resourceType"] == "Bundle")
        .and_then(|b| b["entry"].as_array().cloned());
    let Some(entries) = parsed.filter(|e| e.len() == expected) else {
        warn!("the FHIR server's batch-response does not match the batch; sending again");
        return (0..expected)
            .map(|_| EntryOutcome::Retry("response".into()))
            .collect();
    };
    entries
        .iter()
        .map(|e| {
            let r = &e["response"];
            let code: u16 = r["status"]
                .as_str()
                .and_then(|s| s.split_whitespace().next())
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            match code {
                200..=299 => EntryOutcome::Stored(r["location"].as_str().map(str::to_owned)),
                408 | 429 => EntryOutcome::Retry("http_4xx".into()),
                400..=499 => EntryOutcome::Rejected(code),
                0 => EntryOutcome::Retry("response".into()),
                _ => EntryOutcome::Retry(reason(code)),
            }
        })
        .collect()
}

/// `Encounter/123` of a location such as `https://x/fhir/Encounter/123/_history/1`.
pub fn encounter_reference(location: &str) -> Option<String> {
    let parts: Vec<&str> = location.split('/').collect();
    let at = parts.iter().rposition(|p| *p == "Encounter")?;
    let id = parts.get(at + 1)?;
    crate::booking::is_fhir_id(id).then(|| format!("Encounter/{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_response_says_what_became_of_each_entry() {
        let body = json!({
            "resourceType": "Bundle", "type": "batch-response",
            "entry": [
                { "response": { "status": "201 Created", "location": "Encounter/77/_history/1" } },
                { "response": { "status": "200 OK" } },
                { "response": { "status": "422 Unprocessable Entity" } },
                { "response": { "status": "503" } },
                { "response": { "status": "429 Too Many Requests" } },
            ]
        });
        let out = outcomes(body.to_string().as_bytes(), 5);
        assert_eq!(
            out,
            [
                EntryOutcome::Stored(Some("Encounter/77/_history/1".into())),
                EntryOutcome::Stored(None),
                EntryOutcome::Rejected(422),
                EntryOutcome::Retry("http_5xx".into()),
                EntryOutcome::Retry("http_4xx".into()),
            ]
        );
        // A response of another length is not trusted entry by entry.
        assert!(
            outcomes(body.to_string().as_bytes(), 4)
                .iter()
                .all(|o| matches!(o, EntryOutcome::Retry(_)))
        );
        assert!(matches!(outcomes(b"junk", 1)[0], EntryOutcome::Retry(_)));
    }

    #[test]
    fn encounter_locations_become_references() {
        assert_eq!(
            encounter_reference("https://fhir.example/R4/Encounter/abc-1/_history/2").as_deref(),
            Some("Encounter/abc-1")
        );
        assert_eq!(
            encounter_reference("Encounter/9").as_deref(),
            Some("Encounter/9")
        );
        assert_eq!(encounter_reference("Patient/9"), None);
        assert_eq!(encounter_reference("Encounter/bad id!"), None);
    }

    #[test]
    fn the_encounter_is_created_once_by_its_identifier() {
        let e = encounter_entry(&json!({"resourceType": "Encounter"}), "appt-1.2026");
        assert_eq!(
            e["request"]["ifNoneExist"],
            "identifier=urn:metaclinic:consultation%7Cappt-1.2026"
        );
        assert_eq!(e["request"]["method"], "POST");
    }
}
