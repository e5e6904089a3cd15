//! The workers that empty the outbox: one per webhook endpoint, one for the FHIR write-back.
//! Each claims what is due, sends it, and marks it done, or due again after a backoff, or
//! given up when it is older than `max_age_s`.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::warn;

use super::outbox::Item;
use super::signing::{self, SigningKey};
use super::{Pipeline, backoff};
use crate::fhir::writeback::EntryOutcome;

/// How often a worker looks for due items when nothing woke it.
const POLL: Duration = Duration::from_millis(250);
/// Items one webhook worker claims at a time (sent one after the other).
const WEBHOOK_CLAIM: usize = 16;

/// One failure per endpoint and minute reaches the log.
static FAILURES: crate::logs::Limiter = crate::logs::Limiter::new(Duration::from_secs(60));

/// A webhook endpoint as its worker needs it.
pub struct Target {
    pub name: String,
    pub url: String,
    pub key: SigningKey,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Deliver `target`'s items for as long as the pipeline exists.
pub async fn run_endpoint(pipeline: Weak<Pipeline>, target: Arc<Target>) {
    loop {
        let Some(p) = pipeline.upgrade() else { return };
        let lease = p.timeout.as_millis() as i64 * WEBHOOK_CLAIM as i64 + 5_000;
        let items = match p
            .outbox
            .claim(&target.name, now_ms(), WEBHOOK_CLAIM, lease)
            .await
        {
            Ok(items) => items,
            Err(e) => {
                log_failure(&target.name, &format!("reading the outbox: {e}"));
                Vec::new()
            }
        };
        if items.is_empty() {
            let woken = p.wake.clone();
            drop(p);
            tokio::select! {
                () = woken.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
            continue;
        }
        for item in items {
            let outcome = post(&p, &target, &item).await;
            settle(&p, &target.name, item, outcome).await;
        }
    }
}

/// Send one event; `Ok` if the receiver took it, else why not (a metric label).
async fn post(p: &Pipeline, target: &Target, item: &Item) -> Result<(), String> {
    let event_id = item
        .id
        .split_once('|')
        .map_or(item.id.as_str(), |(_, id)| id);
    let body = item.body.as_bytes();
    let mut request = p
        .http
        .post(&target.url)
        .header("content-type", "application/json")
        .body(item.body.clone());
    for (name, value) in
        signing::headers(&target.key, event_id, chrono::Utc::now().timestamp(), body)
    {
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) if r.status().is_server_error() => Err("http_5xx".into()),
        Ok(_) => Err("http_4xx".into()),
        Err(e) if e.is_timeout() => Err("timeout".into()),
        Err(_) => Err("network".into()),
    }
}

/// Record what became of `item`.
async fn settle(p: &Pipeline, dest: &str, mut item: Item, outcome: Result<(), String>) {
    let stored = match outcome {
        Ok(()) => {
            p.metrics.delivered.with_label_values(&[dest]).inc();
            p.outbox.done(&item).await
        }
        Err(reason) => {
            let now = now_ms();
            item.attempts += 1;
            if now - item.created_ms > p.max_age.as_millis() as i64 {
                p.metrics
                    .dropped
                    .with_label_values(&[dest, "expired"])
                    .inc();
                log_failure(
                    dest,
                    &format!("gave up on an event after {} attempts", item.attempts),
                );
                p.outbox.done(&item).await
            } else {
                p.metrics.retried.with_label_values(&[dest, &reason]).inc();
                log_failure(dest, &format!("delivery failed ({reason}); retrying"));
                let delay = backoff::random_delay(item.attempts, p.retry_initial, p.retry_max);
                item.due_ms = now + delay.as_millis() as i64;
                p.outbox.retry(&item).await
            }
        }
    };
    if let Err(e) = stored {
        // The lease runs out and the item comes back: at least once, still.
        log_failure(dest, &format!("updating the outbox: {e}"));
    }
}

fn log_failure(dest: &str, what: &str) {
    if let Some(suppressed) = FAILURES.check(dest, Instant::now()) {
        warn!(endpoint = %dest, suppressed, "webhooks: {what}");
    }
}

/// Write the FHIR items for as long as the pipeline exists.
pub async fn run_fhir(pipeline: Weak<Pipeline>) {
    let dest = super::FHIR_DESTINATION;
    loop {
        let Some(p) = pipeline.upgrade() else { return };
        let Some(writeback) = p.writeback.clone() else {
            return;
        };
        let batch = writeback.config.batch_size;
        let lease = p.timeout.as_millis() as i64 * 2 + 5_000;
        let items = match p.outbox.claim(dest, now_ms(), batch, lease).await {
            Ok(items) => items,
            Err(e) => {
                log_failure(dest, &format!("reading the outbox: {e}"));
                Vec::new()
            }
        };
        if items.is_empty() {
            let woken = p.wake.clone();
            drop(p);
            tokio::select! {
                () = woken.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
            continue;
        }
        let outcomes = writeback.send(&items).await;
        for (item, outcome) in items.into_iter().zip(outcomes) {
            match outcome {
                EntryOutcome::Stored(location) => {
                    if let Some(l) = location {
                        p.encounter_written(&item, &l).await;
                    }
                    settle(&p, dest, item, Ok(())).await;
                }
                EntryOutcome::Rejected(status) => {
                    p.metrics
                        .dropped
                        .with_label_values(&[dest, "rejected"])
                        .inc();
                    log_failure(
                        dest,
                        &format!("the FHIR server refused an entry ({status})"),
                    );
                    if let Err(e) = p.outbox.done(&item).await {
                        log_failure(dest, &format!("updating the outbox: {e}"));
                    }
                }
                EntryOutcome::Retry(reason) => settle(&p, dest, item, Err(reason)).await,
            }
        }
    }
}
