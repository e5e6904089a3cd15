//! From audit records to outbox items. Records arrive in `seq` order from the audit writer;
//! those written before this task listened (or after the last cursor of a process that
//! died) are read back from the file first. For each batch of records: the items go into the
//! outbox, then the drafts they changed and the cursor are stored together, so a crash
//! between the two repeats the batch (same ids, nothing new) and never skips it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{info, warn};

use super::lifecycle::{self, Draft};
use super::outbox::Item;
use super::{FHIR_DESTINATION, Pipeline};
use crate::audit::Committed;
use crate::fhir::{audit_event, encounter, writeback};
use crate::state::Deps;

/// Records handled per outbox write.
const BATCH: usize = 256;
/// A draft untouched this long belongs to a consultation that will not end here.
const STALE: chrono::Duration = chrono::Duration::hours(24);

pub(super) fn draft_key(appointment: &str) -> String {
    format!("draft:{appointment}")
}

/// The drafts of the appointments seen so far (None: no consultation running).
type Drafts = HashMap<String, Option<Draft>>;

pub(super) async fn run(
    pipeline: Weak<Pipeline>,
    deps: Weak<Deps>,
    audit_path: PathBuf,
    mut live: UnboundedReceiver<Committed>,
) {
    let Some(p) = pipeline.upgrade() else { return };
    // The store may be unreachable at first (Redis starting): wait for it.
    let cursor = loop {
        match p.outbox.meta_get(&p.cursor_key).await {
            Ok(c) => break c.and_then(|c| c.parse::<u64>().ok()),
            Err(e) => {
                warn!("webhooks: reading the cursor: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    drop(p);
    let mut drafts = Drafts::new();
    let backlog = read_after(audit_path, cursor).await;
    let mut pending = None;
    let mut done = match cursor {
        // The very first run: the history is not replayed to receivers configured today;
        // what happened since this process listened is.
        None => {
            let last = backlog.last().map_or(0, |r| r.seq);
            pending = live.try_recv().ok();
            let done = pending.as_ref().map_or(last, |r| last.min(r.seq - 1));
            let Some(p) = pipeline.upgrade() else { return };
            store_cursor(&p, done).await;
            done
        }
        // What the last run did not finish.
        Some(c) => {
            let mut done = c;
            for chunk in backlog.chunks(BATCH) {
                let Some(p) = pipeline.upgrade() else { return };
                done = handle(&p, &deps, &mut drafts, chunk).await;
            }
            if !backlog.is_empty() {
                info!(
                    records = backlog.len(),
                    "webhooks: caught up with the audit log"
                );
            }
            done
        }
    };
    drop(backlog);
    loop {
        let first = match pending.take() {
            Some(r) => r,
            None => match live.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match live.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        batch.retain(|r| r.seq > done);
        if batch.is_empty() {
            continue;
        }
        let Some(p) = pipeline.upgrade() else { return };
        done = handle(&p, &deps, &mut drafts, &batch).await;
    }
}

/// The records of the file after `cursor` (all of them when there is none: the caller only
/// wants the last `seq` then).
async fn read_after(path: PathBuf, cursor: Option<u64>) -> Vec<Committed> {
    let read = tokio::task::spawn_blocking(move || -> Result<Vec<Committed>, String> {
        let mut out = Vec::new();
        let records = crate::audit::read_records(&path).map_err(|e| e.to_string())?;
        for r in records {
            let r = r?;
            match cursor {
                Some(c) if r.seq <= c => {}
                Some(_) => out.push(r),
                // First run: only the last record matters (its seq).
                None => {
                    out.clear();
                    out.push(r);
                }
            }
        }
        Ok(out)
    })
    .await;
    match read {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            warn!("webhooks: reading the audit log back: {e}");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

/// Turn `records` into outbox items, store them, then the drafts and the cursor. Returns
/// the last `seq` handled.
async fn handle(
    p: &Arc<Pipeline>,
    deps: &Weak<Deps>,
    drafts: &mut Drafts,
    records: &[Committed],
) -> u64 {
    let mut items = Vec::new();
    let mut changed: Vec<String> = Vec::new();
    for r in records {
        let appointment = lifecycle::appointment_id(r).map(str::to_owned);
        let mut consultation = None;
        if let Some(a) = &appointment {
            let draft = load_draft(p, drafts, a, &r.time).await;
            let applied = lifecycle::apply(r, draft);
            consultation = draft
                .as_ref()
                .map(|d| d.consultation.clone())
                .or_else(|| applied.ended.as_ref().map(|(d, _)| d.consultation.clone()));
            if !changed.contains(a) {
                changed.push(a.clone());
            }
            let mut events = applied.events;
            enrich(deps, a, &mut events).await;
            items.extend(p.webhook_items(&events, millis(&r.time)));
            if let (Some(w), Some((d, ended_at))) = (&p.writeback, &applied.ended)
                && w.config.encounters
            {
                let enc = encounter::encounter(d, ended_at);
                let entry = writeback::encounter_entry(&enc, &d.consultation);
                let key = format!("Encounter.{}", d.consultation);
                let created = millis(ended_at);
                items.push(Item::new(
                    FHIR_DESTINATION,
                    &key,
                    entry.to_string(),
                    created,
                ));
            }
        }
        if let Some(w) = &p.writeback
            && w.config.audit_events
        {
            let event = audit_event::audit_event(r, consultation.as_deref());
            let entry = writeback::audit_event_entry(&event);
            let key = format!("AuditEvent.{}", audit_event::resource_id(r));
            items.push(Item::new(
                FHIR_DESTINATION,
                &key,
                entry.to_string(),
                millis(&r.time),
            ));
        }
    }
    let last = records.last().map_or(0, |r| r.seq);
    // The cursor moves only once the items are stored: while the store fails, wait.
    let dropped = loop {
        match p.outbox.put(items.clone()).await {
            Ok(dropped) => break dropped,
            Err(e) => {
                p.metrics
                    .retried
                    .with_label_values(&["all", "outbox"])
                    .inc();
                warn!("webhooks: storing events in the outbox: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    for item in dropped {
        p.metrics
            .dropped
            .with_label_values(&[item.dest.as_str(), "outbox_full"])
            .inc();
    }
    p.wake.notify_waiters();
    let mut values: Vec<(String, Option<String>)> = changed
        .iter()
        .map(|a| {
            let text = drafts
                .get(a)
                .and_then(|d| d.as_ref())
                .and_then(|d| serde_json::to_string(d).ok());
            (draft_key(a), text)
        })
        .collect();
    values.push((p.cursor_key.clone(), Some(last.to_string())));
    if let Err(e) = p.outbox.meta_put(values).await {
        warn!("webhooks: storing the cursor: {e}");
    }
    last
}

async fn store_cursor(p: &Pipeline, seq: u64) {
    if let Err(e) = p
        .outbox
        .meta_put(vec![(p.cursor_key.clone(), Some(seq.to_string()))])
        .await
    {
        warn!("webhooks: storing the cursor: {e}");
    }
}

/// The appointment's draft: known here, or stored (by this process before a restart, or by
/// another replica), unless stale.
async fn load_draft<'a>(
    p: &Pipeline,
    drafts: &'a mut Drafts,
    appointment: &str,
    now: &str,
) -> &'a mut Option<Draft> {
    if !drafts.contains_key(appointment) {
        let stored = p
            .outbox
            .meta_get(&draft_key(appointment))
            .await
            .ok()
            .flatten()
            .and_then(|t| serde_json::from_str::<Draft>(&t).ok());
        drafts.insert(appointment.to_owned(), stored);
    }
    let draft = drafts.entry(appointment.to_owned()).or_default();
    let stale = draft
        .as_ref()
        .is_some_and(|d| millis(now) - millis(&d.updated_at) > STALE.num_milliseconds());
    if stale {
        *draft = None;
    }
    draft
}

/// What the record does not say but the running consultation knows: an extension's new end.
async fn enrich(deps: &Weak<Deps>, appointment: &str, events: &mut [super::WebhookEvent]) {
    if !events
        .iter()
        .any(|e| e.event == super::EventKind::AppointmentExtended)
    {
        return;
    }
    let Some(d) = deps.upgrade() else { return };
    let Some(c) = d.hub.get(appointment).await else {
        return;
    };
    let ends_at = c
        .closes_at()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for e in events
        .iter_mut()
        .filter(|e| e.event == super::EventKind::AppointmentExtended)
    {
        e.ends_at = Some(ends_at.clone());
    }
}

fn millis(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.timestamp_millis())
        .unwrap_or_else(|_| chrono::Utc::now().timestamp_millis())
}
