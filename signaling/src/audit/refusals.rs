//! Refusals of clients that have not proved who they are, summarised so that a flood of them
//! cannot flood the audit log or its syncs.
//!
//! Every refusal is audited, but not each as its own record: per client address, caller,
//! action and reason, the first refusal of an interval is written at once (with everything
//! known about it), and the others of the interval are counted and written together at its
//! end as one record with a `count`. A flood from one address costs two records per interval
//! and reason. The table holds a bounded number of keys; refusals beyond it are counted under
//! one key per action and reason, without an address, so many addresses cannot grow it.

use std::collections::HashMap;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use prometheus::IntCounterVec;

use super::{AuditError, AuditEvent, AuditLog};

/// Keys the table holds in one interval.
const MAX_KEYS: usize = 4096;

/// What refusals are counted together by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    client_ip: Option<String>,
    fhir_user: Option<String>,
    action: String,
    reason: Option<String>,
}

impl Key {
    fn of(event: &AuditEvent) -> Key {
        Key {
            client_ip: event.client_ip.clone(),
            fhir_user: event.fhir_user.clone(),
            action: event.action.clone(),
            reason: event.reason.clone(),
        }
    }
}

/// The summariser: one per service, flushed by [`Refusals::run`].
pub struct Refusals {
    log: AuditLog,
    interval: Duration,
    counted: IntCounterVec,
    max_keys: usize,
    /// Keys written this interval, with the refusals counted since.
    table: Mutex<HashMap<Key, u64>>,
}

impl Refusals {
    pub fn new(log: AuditLog, interval: Duration, counted: IntCounterVec) -> Refusals {
        Refusals {
            log,
            interval,
            counted,
            max_keys: MAX_KEYS,
            table: Mutex::default(),
        }
    }

    /// Audit a refusal (its `outcome` is "deny"): written now if it is the first of its key
    /// in this interval, counted into the interval's summary otherwise. Only a write can
    /// fail.
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        let key = Key::of(&event);
        let first = {
            // A std lock: one map operation, never held across an await.
            let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = table.get_mut(&key) {
                *count += 1;
                false
            } else if table.len() < self.max_keys {
                table.insert(key, 0);
                true
            } else {
                let others = Key {
                    client_ip: None,
                    fhir_user: None,
                    ..key
                };
                *table.entry(others).or_insert(0) += 1;
                false
            }
        };
        if first {
            self.log.record(event).await.map(|_| ())
        } else {
            let reason = event.reason.as_deref().unwrap_or("");
            self.counted.with_label_values(&[reason]).inc();
            Ok(())
        }
    }

    /// Write the interval's counts, one record per key, and start a new interval.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let table = std::mem::take(&mut *self.table.lock().unwrap_or_else(|p| p.into_inner()));
        for (key, count) in table {
            if count == 0 {
                continue;
            }
            let summary = AuditEvent {
                client_ip: key.client_ip,
                fhir_user: key.fhir_user,
                action: key.action,
                outcome: "deny".into(),
                reason: key.reason,
                count: Some(count),
                ..AuditEvent::default()
            };
            self.log.record(summary).await?;
        }
        Ok(())
    }

    /// Flush every interval for as long as the service runs.
    pub async fn run(me: Weak<Refusals>) {
        let Some(interval) = me.upgrade().map(|r| r.interval) else {
            return;
        };
        loop {
            tokio::time::sleep(interval).await;
            let Some(refusals) = me.upgrade() else { return };
            if let Err(e) = refusals.flush().await {
                tracing::warn!("writing the summary of refusals: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{open_log, records};

    fn refusal(ip: &str, reason: &str) -> AuditEvent {
        AuditEvent {
            client_ip: Some(ip.into()),
            action: "join".into(),
            outcome: "deny".into(),
            reason: Some(reason.into()),
            ..AuditEvent::default()
        }
    }

    fn counter() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("t", "t"), &["reason"]).unwrap()
    }

    #[tokio::test]
    async fn a_flood_is_one_record_and_a_count_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path) = open_log(&dir);
        let refusals = Refusals::new(log, Duration::from_secs(60), counter());
        for _ in 0..1000 {
            refusals
                .record(refusal("192.0.2.1", "join_first"))
                .await
                .unwrap();
        }
        refusals
            .record(refusal("192.0.2.1", "join_timeout"))
            .await
            .unwrap();
        refusals
            .record(refusal("192.0.2.2", "join_first"))
            .await
            .unwrap();
        assert_eq!(records(&path).len(), 3, "the first of each key, at once");
        refusals.flush().await.unwrap();
        let all = records(&path);
        assert_eq!(all.len(), 4);
        assert_eq!(all[3]["count"], 999);
        assert_eq!(all[3]["reason"], "join_first");
        assert_eq!(all[3]["client_ip"], "192.0.2.1");
        // The next interval starts afresh: its first refusal is written at once again.
        refusals
            .record(refusal("192.0.2.1", "join_first"))
            .await
            .unwrap();
        assert_eq!(records(&path).len(), 5);
        assert!(records(&path)[4].get("count").is_none());
    }

    #[tokio::test]
    async fn many_addresses_cannot_grow_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path) = open_log(&dir);
        let mut refusals = Refusals::new(log, Duration::from_secs(60), counter());
        refusals.max_keys = 16;
        let flood = 16 + 500;
        for i in 0..flood {
            let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            refusals.record(refusal(&ip, "join_first")).await.unwrap();
        }
        assert!(refusals.table.lock().unwrap().len() <= 16 + 1);
        refusals.flush().await.unwrap();
        let all = records(&path);
        assert_eq!(all.len(), 16 + 1);
        let last = all.last().unwrap();
        assert_eq!(last["count"], 500);
        assert!(last.get("client_ip").is_none());
    }
}
