//! Appointments from a folder of FHIR JSON files (Appointment and PractitionerRole
//! resources, one per file), for development and demos. The folder is watched: editing a
//! file (say, cancelling an appointment) takes effect at once.
//!
//! Changes are reloaded by one thread, not in the watcher's callback: a burst of events is
//! one reload, and a reload that fails (the folder gone, the process out of descriptors) is
//! retried with a growing delay instead of on every event, its error logged once per
//! interval with the count of the others.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use notify::{RecursiveMode, Watcher};
use tracing::{info, warn};

use super::{BookingError, BookingSystem};
use crate::fhir::{Appointment, PractitionerRole, parse_appointment, parse_practitioner_role};

#[derive(Default)]
struct Store {
    appointments: HashMap<String, Appointment>,
    roles: HashMap<String, PractitionerRole>,
}

pub struct FileBooking {
    dir: PathBuf,
    store: Arc<RwLock<Store>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

/// Files larger than this are not appointments; skip them.
const MAX_FILE_BYTES: u64 = 1 << 20;

fn load(dir: &Path) -> std::io::Result<Store> {
    let mut store = Store::default();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        if std::fs::metadata(&path)
            .map(|m| m.len() > MAX_FILE_BYTES)
            .unwrap_or(true)
        {
            warn!(file = %path.display(), "skipped: unreadable or too large");
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        if let Ok(a) = parse_appointment(&bytes) {
            if let Some(id) = a.id.clone() {
                store.appointments.insert(id, a);
            }
        } else if let Ok(r) = parse_practitioner_role(&bytes) {
            if let Some(id) = r.id.clone() {
                store.roles.insert(id, r);
            }
        } else {
            warn!(file = %path.display(), "skipped: not a FHIR Appointment or PractitionerRole");
        }
    }
    Ok(store)
}

impl FileBooking {
    /// Load `dir` and watch it for changes.
    pub fn open(dir: impl Into<PathBuf>) -> anyhow::Result<FileBooking> {
        let dir = dir.into();
        let store = Arc::new(RwLock::new(load(&dir).map_err(|e| {
            anyhow::anyhow!("cannot read appointments from {}: {e}", dir.display())
        })?));
        {
            let s = store.read().unwrap_or_else(|p| p.into_inner());
            info!(dir = %dir.display(), appointments = s.appointments.len(), roles = s.roles.len(), "booking from files");
        }
        // One pending change is enough: the reload reads the whole folder.
        let (changed, changes) = mpsc::sync_channel::<()>(1);
        let mut watcher =
            notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
                // An error event may mean missed changes: reload all the same.
                let _ = changed.try_send(());
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        let (reload_dir, reload_store) = (dir.clone(), store.clone());
        std::thread::Builder::new()
            .name("booking-reload".into())
            .spawn(move || reload_on_changes(&reload_dir, &reload_store, &changes))?;
        Ok(FileBooking {
            dir,
            store,
            _watcher: Some(watcher),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every appointment id in the folder (dev mode lists them).
    pub fn appointment_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .store
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .appointments
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }
}

/// Events of one edit arrive within this; they are one reload.
const SETTLE: Duration = Duration::from_millis(50);
/// The first retry after a failed reload, doubled on each failure up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// A failing reload's error reaches the log once per this interval.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Reload the folder on every change until the watcher is gone (the sender dropped).
fn reload_on_changes(dir: &Path, store: &RwLock<Store>, changes: &mpsc::Receiver<()>) {
    let mut reloads = Reloads::new();
    let mut retry: Option<Duration> = None;
    loop {
        match retry {
            None => {
                if changes.recv().is_err() {
                    return;
                }
            }
            // Failing: changes do not hurry the retry.
            Some(delay) => {
                let until = Instant::now() + delay;
                while let Some(left) = until.checked_duration_since(Instant::now()) {
                    if let Err(mpsc::RecvTimeoutError::Disconnected) = changes.recv_timeout(left) {
                        return;
                    }
                }
            }
        }
        std::thread::sleep(SETTLE);
        while changes.try_recv().is_ok() {}
        retry = reloads.outcome(load(dir), Instant::now(), |fresh| {
            *store.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        });
    }
}

/// What follows a reload: its store applied, or a retry after a growing delay and a warning
/// at most once per [`LOG_EVERY`].
struct Reloads {
    next_retry: Duration,
    log: crate::logs::Limiter,
    /// Warnings written (for tests).
    warned: u64,
}

impl Reloads {
    fn new() -> Reloads {
        Reloads {
            next_retry: FIRST_RETRY,
            log: crate::logs::Limiter::new(LOG_EVERY),
            warned: 0,
        }
    }

    /// Apply a successful reload; for a failed one, say when to retry.
    fn outcome(
        &mut self,
        result: std::io::Result<Store>,
        now: Instant,
        apply: impl FnOnce(Store),
    ) -> Option<Duration> {
        match result {
            Ok(fresh) => {
                if self.next_retry > FIRST_RETRY {
                    info!("reloading appointments works again");
                }
                self.next_retry = FIRST_RETRY;
                apply(fresh);
                None
            }
            Err(e) => {
                let retry = self.next_retry;
                self.next_retry = (retry * 2).min(MAX_RETRY);
                if let Some(suppressed) = self.log.check("reload", now) {
                    self.warned += 1;
                    warn!(suppressed, ?retry, "reloading appointments: {e}");
                }
                Some(retry)
            }
        }
    }
}

impl BookingSystem for FileBooking {
    fn appointment<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Appointment, BookingError>> {
        let found = self
            .store
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .appointments
            .get(id)
            .cloned();
        Box::pin(async move { found.ok_or(BookingError::NotFound) })
    }

    fn practitioner_role<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<PractitionerRole, BookingError>> {
        let found = self
            .store
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .roles
            .get(id)
            .cloned();
        Box::pin(async move { found.ok_or(BookingError::NotFound) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_reload_backs_off_and_is_logged_once_per_interval() {
        let mut reloads = Reloads::new();
        let t0 = Instant::now();
        let mut now = t0;
        let mut delays = Vec::new();
        // Ten minutes of a folder that cannot be read (say, out of descriptors), with
        // changes arriving all the time: retries only as the delays allow.
        while now < t0 + Duration::from_secs(600) {
            let failed = Err(std::io::Error::other("Too many open files"));
            let delay = reloads.outcome(failed, now, |_| panic!("nothing to apply"));
            let delay = delay.expect("a retry");
            delays.push(delay);
            now += delay;
        }
        assert_eq!(
            delays[..4],
            [500, 1000, 2000, 4000].map(Duration::from_millis)
        );
        assert!(delays.iter().all(|d| *d <= MAX_RETRY));
        assert!(delays.len() < 40, "{} reloads in ten minutes", delays.len());
        // One warning a minute, not one per failure.
        assert!(
            (10..=11).contains(&reloads.warned),
            "{} warnings",
            reloads.warned
        );

        // Once it works, the next failure starts from the first delay again.
        let mut applied = false;
        assert_eq!(
            reloads.outcome(Ok(Store::default()), now, |_| applied = true),
            None
        );
        assert!(applied);
        let failed = Err(std::io::Error::other("gone"));
        assert_eq!(reloads.outcome(failed, now, |_| ()), Some(FIRST_RETRY));
    }

    #[test]
    fn an_edited_file_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let booking = FileBooking::open(dir.path()).unwrap();
        assert!(booking.appointment_ids().is_empty());
        let appointment =
            include_str!("../../../tests/fixtures/fhir/appointment-telehealth-interpreter.json");
        std::fs::write(dir.path().join("a-1.json"), appointment).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while booking.appointment_ids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(booking.appointment_ids(), ["tele-interp-1"]);
    }
}
