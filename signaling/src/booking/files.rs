//! Appointments from a folder of FHIR JSON files (Appointment and PractitionerRole
//! resources, one per file), for development and demos. The folder is watched: editing a
//! file (say, cancelling an appointment) takes effect at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

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
        let (reload_dir, reload_store) = (dir.clone(), store.clone());
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_err() {
                    return;
                }
                match load(&reload_dir) {
                    Ok(fresh) => *reload_store.write().unwrap_or_else(|p| p.into_inner()) = fresh,
                    Err(e) => warn!("reloading appointments: {e}"),
                }
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
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
