//! The audit log: append-only, chained with a keyed MAC, checkpointed, durable.
//!
//! Every allow, deny, admit, host action, join and leave of a consultation, and every refusal
//! of a client, becomes one line of JSON (JSON Lines) in one file. A caller acknowledges an
//! action only after [`AuditLog::record`] returns, and `record` returns only after the line
//! and the checkpoint are on disk (`fdatasync`), so an action the service confirmed is an
//! action the hospital can find in the log.
//!
//! # The line format and its canonical form
//!
//! A line is the compact `serde_json` serialization of these members, in this order:
//! `seq`, `time`, `prev`, then the [`AuditEvent`] fields (`fhir_user`, `jti`, `client_ip`,
//! `user_agent`, `appointment`, `room`, `role`, `action`, `outcome`, `reason`, `target`,
//! `count`), then `mac` (or, on lines written before the MAC, `hash`), followed by `\n`.
//! Optional fields that are `None` are omitted, never written as `null`. No whitespace;
//! strings are escaped as `serde_json` does (only `"`, `\` and control characters, the latter
//! as `\n`, `\t`, ... or lowercase `\u00xx`; other characters as raw UTF-8).
//!
//! `mac` is the lowercase hex HMAC-SHA256, under the log's key ([`AuditKey`]), of `prev`
//! followed by the line's canonical JSON without `mac`. `prev` is the previous line's `mac`
//! (or `hash`), or 64 zeros on the first line; `seq` counts lines from 1. Logs written before
//! the key have `hash` instead: the plain SHA-256 of the same bytes. Such lines may begin a
//! file (the first MAC'd line chains to the last of them, which protects them too); a `hash`
//! line after a `mac` line is refused. [`verify`] re-serializes every line and requires the
//! result to be byte-identical to it, so an added member, a reordering or a reformatting is
//! reported even where the MAC alone would not change.
//!
//! # What the chain and the checkpoint prove
//!
//! Without the key nobody can compute a `mac`: editing, deleting, inserting or reordering
//! lines, appending forged ones, or rewriting the whole chain from some line on breaks it. What
//! a chain cannot show by itself is lines cut off its end; for that the writer keeps a
//! [checkpoint](checkpoint) outside the log: the record count and the last `mac`, signed with
//! the key, rewritten (and synced) after every write, and copied to Redis where Redis is
//! configured. `metaclinic audit verify` compares the log with it. Someone who can write both
//! files can still put back an older checkpoint together with a log cut to match it: keep the
//! checkpoint on another volume, and compare with the copy in Redis (`verify --redis`).
//!
//! # Writing
//!
//! One thread owns the file. It alone knows the next `seq` and `prev`, so no lock is needed
//! around the chain, and the blocking `write` and `fdatasync` never run on the async runtime.
//! Records that arrive while it is syncing are written together by the next single `write_all`
//! and covered by one sync (group commit): under load the log costs two syncs (log and
//! checkpoint) per batch, not per record. The first write or sync error stops the log for
//! good: after a failed sync the kernel may have dropped the dirty pages, and a partial write
//! leaves a torn line, so continuing would acknowledge actions whose audit is unknown. Every
//! waiting and later caller gets an error; an operator looks at the file (reopening refuses a
//! torn tail) and restarts the service.
//!
//! Refusals of clients that have not authenticated are summarised ([`Refusals`]), so a flood
//! of them costs a record per address and reason per interval, not a record (and a sync) each.
//!
//! One file must have one [`AuditLog`] (clone the handle, do not open the path twice): two
//! writers would both continue from the same last line and fork the chain.

mod chain;
pub mod checkpoint;
mod key;
mod records;
mod refusals;
mod verify;
mod writer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_tamper;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

pub use checkpoint::Checkpoint;
pub use key::AuditKey;
pub use records::{Committed, read_records};
pub use refusals::Refusals;
pub use verify::{VerifyError, VerifyOptions, VerifyReport, verify};

#[cfg(test)]
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

/// One audited event. References only: no names, no media, no chat text.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    /// The caller, as a FHIR reference, e.g. "Practitioner/prac-77" (never a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// The caller token's `jti`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// "Appointment/tele-interp-1" or the bare id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// host | patient | interpreter | companion
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// e.g. "join", "admit", "deny", "mute", "remove", "end", "extend", "leave",
    /// "access_check", "connect", "message".
    pub action: String,
    /// "allow" | "deny" | "ok" | "error"
    pub outcome: String,
    /// A stable reason code on denials, e.g. "appointment_status".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The participant a host action applies to (a reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// On a summary of refusals ([`Refusals`]): how many this one record stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// What the log wrote for one event: enough for the caller to cite it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditedRecord {
    pub seq: u64,
    /// The record's `mac`.
    pub hash: String,
    /// The record's `time` (the log's clock).
    pub time: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file ends in a line that cannot continue the chain (usually a crash mid-write).
    #[error(
        "audit log {path}, line {line}: {problem}; an operator must inspect the file before the chain can continue"
    )]
    Tail {
        path: PathBuf,
        line: u64,
        problem: String,
    },
    /// The checkpoint is missing, unreadable, signed with another key, or disagrees with the
    /// log (which may have been cut short).
    #[error("audit checkpoint {path}: {problem}")]
    Checkpoint { path: PathBuf, problem: String },
    /// This record's write or sync failed; it may or may not be on disk, and the log has stopped.
    #[error("audit write failed: {0}")]
    Write(String),
    /// The writer is gone (after an earlier failure); nothing more can be recorded.
    #[error("audit log stopped: {0}")]
    Stopped(String),
}

/// A cheap, cloneable handle on the log; the writer thread stops when the last one is dropped.
#[derive(Clone)]
pub struct AuditLog {
    // Declared before `inner`, so that the last handle closes the channel before `Inner::drop`
    // waits for the writer to see it closed.
    requests: mpsc::Sender<Request>,
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Option<JoinHandle<()>>,
    /// Why the writer stopped, set by the writer before it exits.
    stopped: Arc<OnceLock<String>>,
    /// The latest checkpoint as written (its file form), for a copy elsewhere (Redis).
    checkpoints: watch::Receiver<Option<String>>,
    /// Who hears of every record once it is durable (crate::webhooks).
    observer: Arc<OnceLock<tokio::sync::mpsc::UnboundedSender<Committed>>>,
    #[cfg(test)]
    probe: Arc<Probe>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Every sender is gone, so the writer finishes the records already queued and exits.
        // Waiting for it means the file is complete and closed once the last handle is gone.
        if let Some(writer) = self.writer.take() {
            // A panicked writer already failed its callers (their replies were dropped).
            let _ = writer.join();
        }
    }
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Open (create if missing) the log at `path`, append-only, and continue its chain from the
    /// last record, MAC'd with `key`, checkpointed at `checkpoint`. A last line that is torn
    /// (no trailing newline), unparsable or whose MAC does not match is refused with
    /// [`AuditError::Tail`] naming the line, and a log that disagrees with its checkpoint
    /// (shorter, another last record) with [`AuditError::Checkpoint`]: the log never silently
    /// continues a damaged or shortened chain.
    pub fn open(
        path: impl AsRef<Path>,
        key: AuditKey,
        checkpoint: impl AsRef<Path>,
    ) -> Result<AuditLog, AuditError> {
        let path = path.as_ref().to_path_buf();
        let opened = writer::open(&path, key, checkpoint.as_ref())?;
        let (requests, receiver) = mpsc::channel();
        let stopped = Arc::new(OnceLock::new());
        let (published, checkpoints) = watch::channel(None);
        let observer = Arc::new(OnceLock::new());
        #[cfg(test)]
        let probe = Arc::new(Probe::default());
        let writer = writer::Writer {
            opened,
            requests: receiver,
            stopped: Arc::clone(&stopped),
            published,
            observer: Arc::clone(&observer),
            #[cfg(test)]
            probe: Arc::clone(&probe),
        };
        let writer = thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run())
            .map_err(|source| AuditError::Open {
                path: path.clone(),
                source,
            })?;
        Ok(AuditLog {
            requests,
            inner: Arc::new(Inner {
                path,
                writer: Some(writer),
                stopped,
                checkpoints,
                observer,
                #[cfg(test)]
                probe,
            }),
        })
    }

    /// Append one record; returns once it is on disk. Dropping the future after it was first
    /// polled does not withdraw the record: it is written all the same.
    pub async fn record(&self, event: AuditEvent) -> Result<AuditedRecord, AuditError> {
        let (reply, answer) = oneshot::channel();
        self.submit(event, Reply::Async(reply))?;
        answer.await.map_err(|_| self.stopped())?
    }

    /// Same as [`AuditLog::record`], for threads that are not async tasks. It blocks for the
    /// duration of a disk sync: do not call it on an async runtime's worker.
    pub fn record_blocking(&self, event: AuditEvent) -> Result<AuditedRecord, AuditError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(event, Reply::Blocking(reply))?;
        answer.recv().map_err(|_| self.stopped())?
    }

    /// The checkpoints as they are written (their file form), latest first: for a copy
    /// outside this machine.
    pub fn checkpoints(&self) -> watch::Receiver<Option<String>> {
        self.inner.checkpoints.clone()
    }

    /// Every record from now on, in `seq` order, once it is on disk (one observer per log;
    /// `None` if there is one already). Records written before the call are in the file.
    pub fn observe(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Committed>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.inner.observer.set(tx).ok().map(|()| rx)
    }

    /// The file the log is written to.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn submit(&self, event: AuditEvent, reply: Reply) -> Result<(), AuditError> {
        self.requests
            .send(Request { event, reply })
            .map_err(|_| self.stopped())?;
        #[cfg(test)]
        self.inner.probe.queued.fetch_add(1, SeqCst);
        Ok(())
    }

    fn stopped(&self) -> AuditError {
        let reason = self.inner.stopped.get().cloned();
        AuditError::Stopped(reason.unwrap_or_else(|| "the writer thread exited".into()))
    }

    #[cfg(test)]
    fn probe(&self) -> Arc<Probe> {
        Arc::clone(&self.inner.probe)
    }
}

/// What tests can observe and steer inside the writer.
#[cfg(test)]
#[derive(Default)]
struct Probe {
    /// Records handed to the writer's queue.
    queued: AtomicU64,
    /// Successful write + sync rounds.
    batches: AtomicU64,
    /// Held by a test to keep the writer from starting a batch.
    gate: std::sync::Mutex<()>,
    /// Makes the next write fail as a full disk would.
    fail_writes: AtomicBool,
    /// Set as the writer thread returns.
    exited: AtomicBool,
}

struct Request {
    event: AuditEvent,
    reply: Reply,
}

enum Reply {
    Async(oneshot::Sender<Result<AuditedRecord, AuditError>>),
    Blocking(mpsc::SyncSender<Result<AuditedRecord, AuditError>>),
}

impl Reply {
    fn send(self, result: Result<AuditedRecord, AuditError>) {
        // A caller that stopped waiting (a cancelled future) needs no answer: its record,
        // if written, stands like any other.
        let _ = match self {
            Reply::Async(reply) => reply.send(result).map_err(drop),
            Reply::Blocking(reply) => reply.send(result).map_err(drop),
        };
    }
}
