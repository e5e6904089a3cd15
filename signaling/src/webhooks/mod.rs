//! Webhooks, and the pipeline the FHIR write-back shares with them: the hospital's systems
//! hear about every consultation.
//!
//! ```text
//! audit log ──(each record, once durable)──▶ source ──▶ outbox ──▶ worker per endpoint ──▶ POST, signed
//!                                            │ lifecycle:          └──▶ FHIR worker ──▶ batch Bundle
//!                                            │ events, drafts
//! ```
//! - One observation point: the audit log. Every lifecycle change of a consultation is
//!   audited before it is acknowledged, so the pipeline reads committed records
//!   ([`crate::audit::AuditLog::observe`]) and never needs a hook of its own in the
//!   consultation code. A cursor (the last record handled) is stored with the outbox; after
//!   a crash the records after it are read back from the file, and since events and their
//!   ids are a pure function of the records ([`lifecycle`]), nothing is lost or invented.
//! - [`event`]: what receivers get; [`signing`]: how they verify it; [`outbox`]: where it
//!   waits (a file, or Redis with replicas); [`delivery`]: the workers, [`backoff`] between
//!   their attempts; [`metrics`]: delivered, retried, dropped per endpoint and reason.
//! - At least once: an event leaves the outbox when its receiver answered 2xx, when it is
//!   older than `webhooks.max_age_s`, or when the full outbox drops its oldest.

pub mod backoff;
pub mod config;
pub mod delivery;
pub mod event;
pub mod lifecycle;
pub mod metrics;
pub mod outbox;
pub mod signing;
mod source;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tokio::sync::Notify;

pub use config::{Endpoint, WebhooksSection};
pub use event::{EventKind, WebhookEvent};

use crate::booking::SmartAuth;
use crate::config::SignalingConfig;
use crate::fhir::writeback::{CONSULTATION_SYSTEM, Writeback};
use crate::state::Deps;
use outbox::{Item, Outbox};

/// The outbox destination of the FHIR write-back (no endpoint may take this name).
pub const FHIR_DESTINATION: &str = "fhir";

/// The running pipeline (when webhooks or the write-back are configured).
pub struct Pipeline {
    pub outbox: Outbox,
    endpoints: Vec<(Endpoint, Arc<delivery::Target>)>,
    pub writeback: Option<Arc<Writeback>>,
    pub metrics: metrics::DeliveryMetrics,
    /// Wakes the workers when items arrive.
    wake: Arc<Notify>,
    http: reqwest::Client,
    timeout: Duration,
    max_age: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    /// Where in this replica's audit log the pipeline is (a named value of the outbox).
    cursor_key: String,
}

impl Pipeline {
    /// The pipeline the configuration asks for, or `None`. Secrets are read and the outbox
    /// opened here, so that a bad one stops the start with the key named.
    pub fn build(
        config: &SignalingConfig,
        redis: Option<redis::aio::ConnectionManager>,
        smart: Option<Arc<SmartAuth>>,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Option<Arc<Pipeline>>> {
        let w = &config.webhooks;
        let fhir = &config.fhir_writeback;
        if w.endpoints.is_empty() && !fhir.enabled {
            return Ok(None);
        }
        let timeout = Duration::from_millis(w.timeout_ms);
        let max_age = Duration::from_secs(w.max_age_s);
        let mut endpoints = Vec::new();
        for e in &w.endpoints {
            let key = e
                .load_secret()
                .map_err(|p| anyhow::anyhow!("webhooks.endpoints.secret_file: {}: {p}", e.name))?;
            let target = delivery::Target {
                name: e.name.clone(),
                url: e.url.clone(),
                key,
            };
            endpoints.push((e.clone(), Arc::new(target)));
        }
        let audit_name = config
            .audit
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "audit".into());
        let outbox = match redis {
            Some(conn) => Outbox::Redis(Arc::new(outbox::redis::RedisOutbox::new(
                conn,
                &config.redis.key_prefix,
                w.outbox_max_items,
                // Kept a day past the last attempt anyone would make.
                max_age + Duration::from_secs(24 * 3600),
                Duration::from_millis(config.redis.timeout_ms),
            ))),
            None => {
                let file = outbox::file::FileOutbox::open(&w.outbox_path, w.outbox_max_items)
                    .with_context(|| {
                        format!("webhooks.outbox_path: {}", w.outbox_path.display())
                    })?;
                Outbox::File(Arc::new(std::sync::Mutex::new(file)))
            }
        };
        let writeback = if fhir.enabled {
            let auth = smart.context("fhir_writeback.enabled needs booking.backend = \"fhir\"")?;
            Some(Arc::new(Writeback::new(
                &config.booking.fhir.base_url,
                auth,
                fhir.clone(),
                timeout,
            )?))
        } else {
            None
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(timeout)
            // A receiver that redirects is misconfigured; the signed event stays with it.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the webhooks' HTTP client")?;
        Ok(Some(Arc::new(Pipeline {
            outbox,
            endpoints,
            writeback,
            metrics: metrics::DeliveryMetrics::new(registry),
            wake: Arc::new(Notify::new()),
            http,
            timeout,
            max_age,
            retry_initial: Duration::from_millis(w.retry_initial_ms),
            retry_max: Duration::from_millis(w.retry_max_ms),
            cursor_key: format!("cursor:{audit_name}"),
        })))
    }

    /// Start reading the audit log and delivering, for as long as the service runs.
    pub fn start(self: &Arc<Self>, deps: &Arc<Deps>) {
        let Some(committed) = deps.audit.observe() else {
            tracing::warn!("the audit log already has an observer; webhooks are off");
            return;
        };
        tokio::spawn(source::run(
            Arc::downgrade(self),
            Arc::downgrade(deps),
            deps.audit.path().to_path_buf(),
            committed,
        ));
        for (_, target) in &self.endpoints {
            tokio::spawn(delivery::run_endpoint(
                Arc::downgrade(self),
                Arc::clone(target),
            ));
        }
        if self.writeback.is_some() {
            tokio::spawn(delivery::run_fhir(Arc::downgrade(self)));
        }
    }

    /// The outbox items of `events` for the endpoints that want them.
    fn webhook_items(&self, events: &[WebhookEvent], created_ms: i64) -> Vec<Item> {
        let mut items = Vec::new();
        for ev in events {
            let Ok(body) = serde_json::to_string(ev) else {
                continue;
            };
            for (cfg, target) in &self.endpoints {
                if cfg.wants(ev.event) {
                    items.push(Item::new(&target.name, &ev.id, body.clone(), created_ms));
                }
            }
        }
        items
    }

    /// How a resource refers to the Encounter of the appointment's consultation: by its
    /// identifier while the consultation runs, by its server id once it was written. For
    /// Observations made during a consultation (vitals).
    pub async fn encounter_reference(&self, appointment_id: &str) -> Option<Value> {
        let draft = self
            .outbox
            .meta_get(&source::draft_key(appointment_id))
            .await
            .ok()
            .flatten()
            .and_then(|t| serde_json::from_str::<lifecycle::Draft>(&t).ok());
        if let Some(d) = draft {
            return Some(crate::fhir::encounter::reference_by_identifier(
                &d.consultation,
            ));
        }
        let written = self
            .outbox
            .meta_get(&format!("encounter:{appointment_id}"))
            .await
            .ok()
            .flatten()?;
        serde_json::from_str(&written).ok()
    }

    /// A vitals reading of `patient` in the appointment's running consultation: an
    /// Observation to write back (when configured). Nothing of it is logged.
    pub async fn record_vital(
        &self,
        appointment_id: &str,
        patient: &str,
        reading: &metaclinic_protocol::vitals::Reading,
    ) {
        let wanted = self
            .writeback
            .as_ref()
            .is_some_and(|w| w.config.observations);
        if !wanted || !patient.starts_with("Patient/") {
            return;
        }
        let Some(encounter) = self.encounter_reference(appointment_id).await else {
            // No consultation on record (the pipeline has not seen its start yet).
            self.metrics
                .dropped
                .with_label_values(&[FHIR_DESTINATION, "no_encounter"])
                .inc();
            return;
        };
        let obs = crate::fhir::observation::observation(reading, patient, &encounter);
        let entry = crate::fhir::observation::observation_entry(&obs);
        let key = format!(
            "Observation.{}",
            obs["identifier"][0]["value"].as_str().unwrap_or_default()
        );
        let created = chrono::Utc::now().timestamp_millis();
        let item = Item::new(FHIR_DESTINATION, &key, entry.to_string(), created);
        match self.outbox.put(vec![item]).await {
            Ok(_) => self.wake.notify_waiters(),
            Err(e) => {
                tracing::warn!("queueing an Observation: {e}");
                self.metrics
                    .dropped
                    .with_label_values(&[FHIR_DESTINATION, "outbox_unavailable"])
                    .inc();
            }
        }
    }

    /// The FHIR server stored the item's resource at `location`: if it is an Encounter,
    /// keep its reference under the appointment.
    async fn encounter_written(&self, item: &Item, location: &str) {
        let Some(consultation) = item.id.strip_prefix("fhir|Encounter.") else {
            return;
        };
        let Some(reference) = crate::fhir::writeback::encounter_reference(location) else {
            return;
        };
        let Some((appointment, _)) = consultation.rsplit_once('.') else {
            return;
        };
        let value = json!({
            "reference": reference,
            "type": "Encounter",
            "identifier": { "system": CONSULTATION_SYSTEM, "value": consultation },
        });
        let key = format!("encounter:{appointment}");
        if let Err(e) = self
            .outbox
            .meta_put(vec![(key, Some(value.to_string()))])
            .await
        {
            tracing::warn!("keeping the Encounter's reference: {e}");
        }
    }
}
