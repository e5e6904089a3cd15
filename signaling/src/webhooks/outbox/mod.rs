//! What is still to be delivered, kept where a restart does not lose it: an append-only file
//! ([`file`]) when the process is alone, Redis ([`redis`]) when replicas share state (any of
//! them delivers, and a replica that dies leaves its items to the others).
//!
//! An item is one event for one destination (a webhook endpoint, or the FHIR write-back).
//! Delivery is at least once: an item leaves the outbox only when its destination took it
//! ([`Outbox::done`]), when it is too old, or when the outbox is full: then the oldest item
//! makes room, and the caller counts it. Beside the items the store keeps small named values
//! ([`Outbox::meta_get`]): where in the audit log the pipeline is, the running consultations'
//! drafts, the Encounters written.

pub mod file;
pub mod redis;

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// One event for one destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// `<dest>|<event or resource id>`: putting the same id twice keeps one item.
    pub id: String,
    /// The endpoint's name, or [`super::FHIR_DESTINATION`].
    pub dest: String,
    /// What is sent (JSON).
    pub body: String,
    /// When the event happened, Unix milliseconds (items older than max_age are dropped).
    pub created_ms: i64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not before this, Unix milliseconds.
    pub due_ms: i64,
}

impl Item {
    pub fn new(dest: &str, key: &str, body: String, created_ms: i64) -> Item {
        Item {
            id: format!("{dest}|{key}"),
            dest: dest.to_owned(),
            body,
            created_ms,
            attempts: 0,
            due_ms: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox file: {0}")]
    Io(#[from] std::io::Error),
    #[error("outbox in Redis: {0}")]
    Redis(String),
}

/// The outbox, on disk or in Redis.
#[derive(Clone)]
pub enum Outbox {
    File(Arc<Mutex<file::FileOutbox>>),
    Redis(Arc<redis::RedisOutbox>),
}

impl Outbox {
    /// Run `f` on the file outbox off the async runtime (it syncs to disk).
    async fn on_file<T: Send + 'static>(
        f: &Arc<Mutex<file::FileOutbox>>,
        op: impl FnOnce(&mut file::FileOutbox) -> Result<T, OutboxError> + Send + 'static,
    ) -> Result<T, OutboxError> {
        let f = Arc::clone(f);
        tokio::task::spawn_blocking(move || {
            let mut guard = f.lock().unwrap_or_else(|e| e.into_inner());
            op(&mut guard)
        })
        .await
        .map_err(|e| OutboxError::Io(std::io::Error::other(e)))?
    }

    /// Add items (an id already there is kept as it is). Returns the items dropped to stay
    /// within the bound, oldest first.
    pub async fn put(&self, items: Vec<Item>) -> Result<Vec<Item>, OutboxError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Outbox::File(f) => Self::on_file(f, move |o| o.put(items)).await,
            Outbox::Redis(r) => r.put(items).await,
        }
    }

    /// Up to `max` items of `dest` that are due at `now_ms`, leased to the caller for
    /// `lease_ms` (nobody else gets them meanwhile).
    pub async fn claim(
        &self,
        dest: &str,
        now_ms: i64,
        max: usize,
        lease_ms: i64,
    ) -> Result<Vec<Item>, OutboxError> {
        match self {
            Outbox::File(f) => {
                let dest = dest.to_owned();
                Self::on_file(f, move |o| Ok(o.claim(&dest, now_ms, max, lease_ms))).await
            }
            Outbox::Redis(r) => r.claim(dest, now_ms, max, lease_ms).await,
        }
    }

    /// The item was delivered (or given up): it leaves the outbox.
    pub async fn done(&self, item: &Item) -> Result<(), OutboxError> {
        match self {
            Outbox::File(f) => {
                let id = item.id.clone();
                Self::on_file(f, move |o| o.done(&id)).await
            }
            Outbox::Redis(r) => r.done(item).await,
        }
    }

    /// The item failed: store its new `attempts` and `due_ms`.
    pub async fn retry(&self, item: &Item) -> Result<(), OutboxError> {
        match self {
            Outbox::File(f) => {
                let item = item.clone();
                Self::on_file(f, move |o| o.retry(&item)).await
            }
            Outbox::Redis(r) => r.retry(item).await,
        }
    }

    pub async fn meta_get(&self, key: &str) -> Result<Option<String>, OutboxError> {
        match self {
            Outbox::File(f) => {
                let key = key.to_owned();
                Self::on_file(f, move |o| Ok(o.meta_get(&key))).await
            }
            Outbox::Redis(r) => r.meta_get(key).await,
        }
    }

    /// Set (or with `None`, remove) the named values, together.
    pub async fn meta_put(&self, values: Vec<(String, Option<String>)>) -> Result<(), OutboxError> {
        if values.is_empty() {
            return Ok(());
        }
        match self {
            Outbox::File(f) => Self::on_file(f, move |o| o.meta_put(values)).await,
            Outbox::Redis(r) => r.meta_put(values).await,
        }
    }
}
