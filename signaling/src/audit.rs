//! The audit log: append-only, hash-chained, durable.
//!
//! Every allow, deny, admit, host action, join and leave of a consultation becomes one line of
//! JSON (JSON Lines) in one file. A caller acknowledges an action only after [`AuditLog::record`]
//! returns, and `record` returns only after the line is on disk (`fdatasync`), so an action the
//! service confirmed is an action the hospital can find in the log.
//!
//! # The line format and its canonical form
//!
//! A line is the compact `serde_json` serialization of these members, in this order:
//! `seq`, `time`, `prev`, then the [`AuditEvent`] fields (`fhir_user`, `jti`, `client_ip`,
//! `user_agent`, `appointment`, `room`, `role`, `action`, `outcome`, `reason`, `target`), then
//! `hash`, followed by `\n`. Optional fields that are `None` are omitted, never written as
//! `null`. No whitespace; strings are escaped as `serde_json` does (only `"`, `\` and control
//! characters, the latter as `\n`, `\t`, ... or lowercase `\u00xx`; other characters as raw UTF-8).
//!
//! `hash` is the lowercase hex SHA-256 of `prev` (64 ASCII hex characters) followed by the
//! line's canonical JSON *without* the `hash` member. `prev` is the previous line's `hash`, or
//! 64 zeros on the first line; `seq` counts lines from 1. [`verify`] re-serializes every line
//! and also requires the result to be byte-identical to the line, so an added member, a
//! reordering or a reformatting is reported even where the hash alone would not change.
//! An external checker reproduces the hash with e.g. Python's
//! `json.dumps(obj, separators=(",", ":"), ensure_ascii=False)` over the members in file order.
//!
//! # What the chain proves
//!
//! Editing, deleting, inserting or reordering lines breaks the chain at the first changed line.
//! Cutting lines off the end does not: the remaining file is a valid, shorter chain. Keep
//! [`VerifyReport::last_hash`] (or the latest [`AuditedRecord::hash`]) somewhere else, e.g. in
//! the daily operations report, to detect truncation.
//!
//! # Writing
//!
//! One thread owns the file. It alone knows the next `seq` and `prev`, so no lock is needed
//! around the chain, and the blocking `write` and `fdatasync` never run on the async runtime.
//! Records that arrive while it is syncing are written together by the next single `write_all`
//! and covered by one sync (group commit): under load the log costs one sync per batch, not per
//! record. The first write or sync error stops the log for good: after a failed sync the kernel
//! may have dropped the dirty pages, and a partial write leaves a torn line, so continuing would
//! acknowledge actions whose audit is unknown. Every waiting and later caller gets an error; an
//! operator looks at the file (reopening refuses a torn tail) and restarts the service.
//!
//! One file must have one [`AuditLog`] (clone the handle, do not open the path twice): two
//! writers would both continue from the same last line and fork the chain.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

#[cfg(test)]
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

/// `prev` of the first record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The problem named for a last line without its newline.
const TORN: &str = "no trailing newline: the last write was cut short";

/// At most this many records share one write and one sync, so that a burst does not keep the
/// first caller of a batch waiting behind an unbounded amount of encoding.
const MAX_BATCH: usize = 512;

/// How much of the file end `open` reads first when looking for the last line.
const TAIL_WINDOW: u64 = 4096;

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
    /// e.g. "join", "admit", "deny", "mute", "remove", "end", "extend", "leave", "access_check".
    pub action: String,
    /// "allow" | "deny" | "ok" | "error"
    pub outcome: String,
    /// A stable reason code on denials, e.g. "appointment_status".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The participant a host action applies to (a reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// What the log wrote for one event: enough for the caller to cite it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditedRecord {
    pub seq: u64,
    pub hash: String,
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
    /// last record. A last line that is torn (no trailing newline), unparsable or whose hash
    /// does not match is refused with [`AuditError::Tail`] naming the line: the log never
    /// silently starts a new chain over a damaged one.
    pub fn open(path: impl AsRef<Path>) -> Result<AuditLog, AuditError> {
        let path = path.as_ref().to_path_buf();
        let open_error = |source| AuditError::Open {
            path: path.clone(),
            source,
        };
        let mut options = OpenOptions::new();
        options.read(true).append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // The log names patients' appointments: readable by the service account only.
            options.mode(0o600);
        }
        let file = options.open(&path).map_err(open_error)?;
        let meta = file.metadata().map_err(open_error)?;
        if !meta.is_file() {
            let not_file = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
            return Err(open_error(not_file));
        }
        let (seq, prev) = if meta.len() == 0 {
            // A new file's directory entry must be durable too, or a crash can lose the file
            // together with records that were acknowledged.
            sync_parent(&path).map_err(open_error)?;
            (0, GENESIS.to_owned())
        } else {
            continue_chain(&file, meta.len(), &path)?
        };

        let (requests, receiver) = mpsc::channel();
        let stopped = Arc::new(OnceLock::new());
        #[cfg(test)]
        let probe = Arc::new(Probe::default());
        let writer = Writer {
            file,
            seq,
            prev,
            requests: receiver,
            stopped: Arc::clone(&stopped),
            #[cfg(test)]
            probe: Arc::clone(&probe),
        };
        let writer = thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run())
            .map_err(open_error)?;
        Ok(AuditLog {
            requests,
            inner: Arc::new(Inner {
                path,
                writer: Some(writer),
                stopped,
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

/// The thread that owns the file and the chain's head.
struct Writer {
    file: File,
    /// `seq` of the last record on disk (0 for an empty file).
    seq: u64,
    /// `hash` of the last record on disk.
    prev: String,
    requests: mpsc::Receiver<Request>,
    stopped: Arc<OnceLock<String>>,
    #[cfg(test)]
    probe: Arc<Probe>,
}

impl Writer {
    fn run(mut self) {
        // `recv` fails once every handle is gone and the queue is empty.
        while let Ok(first) = self.requests.recv() {
            #[cfg(test)]
            let probe = Arc::clone(&self.probe);
            #[cfg(test)]
            let _held = probe.gate.lock().unwrap_or_else(|e| e.into_inner());

            let mut batch = vec![first];
            batch.extend(self.requests.try_iter().take(MAX_BATCH - 1));
            let (events, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|r| (r.event, r.reply)).unzip();
            match self.append(events) {
                Ok(records) => {
                    #[cfg(test)]
                    self.probe.batches.fetch_add(1, SeqCst);
                    for (reply, record) in replies.into_iter().zip(records) {
                        reply.send(Ok(record));
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "audit log write failed; the audit log is stopped");
                    let reason = error.to_string();
                    let _ = self
                        .stopped
                        .set(format!("an earlier write failed: {reason}"));
                    for reply in replies {
                        reply.send(Err(AuditError::Write(reason.clone())));
                    }
                    // Returning drops the queue: callers still waiting in it get `Stopped`.
                    break;
                }
            }
        }
        #[cfg(test)]
        self.probe.exited.store(true, SeqCst);
    }

    /// Write the events as the next records with one write and one sync. The chain's head moves
    /// only once they are durable.
    fn append(&mut self, events: Vec<AuditEvent>) -> io::Result<Vec<AuditedRecord>> {
        let mut bytes = Vec::with_capacity(events.len() * 256);
        let mut records = Vec::with_capacity(events.len());
        let (mut seq, mut prev) = (self.seq, self.prev.clone());
        for event in events {
            seq += 1;
            let mut record = Record {
                seq,
                time: now(),
                prev,
                event,
                hash: None,
            };
            bytes.extend(seal(&mut record)?);
            prev = record.hash.unwrap_or_default();
            records.push(AuditedRecord {
                seq,
                hash: prev.clone(),
            });
        }
        #[cfg(test)]
        if self.probe.fail_writes.load(SeqCst) {
            return Err(io::Error::other("injected write failure"));
        }
        self.file.write_all(&bytes)?;
        self.file.sync_data()?;
        (self.seq, self.prev) = (seq, prev);
        Ok(records)
    }
}

/// UTC, RFC 3339, milliseconds, `Z`: the log's clock, not the caller's. `seq`, not `time`,
/// orders the records: the wall clock may step back.
fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A line of the file. Its field order is the canonical member order (see the module docs).
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    seq: u64,
    time: String,
    prev: String,
    #[serde(flatten)]
    event: AuditEvent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hash: Option<String>,
}

/// Set `record.hash` and return the record's line, newline included.
fn seal(record: &mut Record) -> serde_json::Result<Vec<u8>> {
    record.hash = None;
    let body = serde_json::to_vec(record)?;
    record.hash = Some(chain_hash(&record.prev, &body));
    let mut line = serde_json::to_vec(record)?;
    line.push(b'\n');
    Ok(line)
}

/// hex SHA-256 of `prev` followed by the canonical JSON without `hash`.
fn chain_hash(prev: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev.as_bytes());
    hasher.update(body);
    hex::encode(hasher.finalize())
}

/// The head of the chain a line ends with, once the line proved to be intact on its own.
struct Link {
    seq: u64,
    prev: String,
    hash: String,
}

/// Check one line (without its newline) on its own: it parses, its hash recomputes, it is in
/// canonical form and its time is RFC 3339. The problem is worded for an operator.
fn check_line(line: &[u8]) -> Result<Link, String> {
    if line.is_empty() {
        return Err("empty line".into());
    }
    let mut record: Record =
        serde_json::from_slice(line).map_err(|e| format!("not a valid record: {e}"))?;
    let Some(claimed) = record.hash.take() else {
        return Err("the record has no hash".into());
    };
    let body = serde_json::to_vec(&record).map_err(|e| format!("cannot re-encode: {e}"))?;
    if chain_hash(&record.prev, &body) != claimed {
        return Err("hash does not match its content".into());
    }
    record.hash = Some(claimed);
    let canonical = serde_json::to_vec(&record).map_err(|e| format!("cannot re-encode: {e}"))?;
    if canonical != line {
        return Err(
            "not in canonical form (extra, missing-as-null, reordered or reformatted members)"
                .into(),
        );
    }
    if chrono::DateTime::parse_from_rfc3339(&record.time).is_err() {
        return Err("time is not an RFC 3339 timestamp".into());
    }
    Ok(Link {
        seq: record.seq,
        prev: record.prev,
        hash: record.hash.unwrap_or_default(),
    })
}

/// `seq` and `hash` of the file's last record, or why the file cannot be continued.
fn continue_chain(file: &File, len: u64, path: &Path) -> Result<(u64, String), AuditError> {
    let open_error = |source| AuditError::Open {
        path: path.to_path_buf(),
        source,
    };
    let (offset, tail) = last_line(file, len).map_err(open_error)?;
    let problem = match tail.strip_suffix(b"\n") {
        None => TORN.to_owned(),
        Some(line) => match check_line(line) {
            Ok(link) => return Ok((link.seq, link.hash)),
            Err(problem) => problem,
        },
    };
    // Only a damaged file pays for reading it whole, to name the line exactly.
    let line = count_newlines(file, offset).map_err(open_error)? + 1;
    Err(AuditError::Tail {
        path: path.to_path_buf(),
        line,
        problem,
    })
}

/// The last line of a non-empty file (with its newline, if it has one) and where it starts.
/// Reads a growing window from the end, so opening a large log does not read all of it.
fn last_line(file: &File, len: u64) -> io::Result<(u64, Vec<u8>)> {
    let mut window = len.min(TAIL_WINDOW);
    loop {
        let start = len - window;
        let bytes = read_range(file, start, window)?;
        // The file's final byte is the last line's own terminator, not a line break before it.
        let searched = &bytes[..bytes.len().saturating_sub(1)];
        if let Some(at) = searched.iter().rposition(|&b| b == b'\n') {
            return Ok((start + at as u64 + 1, bytes[at + 1..].to_vec()));
        }
        if start == 0 {
            return Ok((0, bytes));
        }
        window = window.saturating_mul(2).min(len);
    }
}

fn read_range(mut file: &File, start: u64, len: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(io::Error::other)?;
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = vec![0; len];
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn count_newlines(mut file: &File, end: u64) -> io::Result<u64> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = file.take(end);
    let mut chunk = vec![0; 64 * 1024];
    let mut count = 0;
    loop {
        let read = reader.read(&mut chunk)?;
        if read == 0 {
            return Ok(count);
        }
        count += chunk[..read].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

#[cfg(unix)]
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

#[cfg(not(unix))]
fn sync_parent(_path: &Path) -> io::Result<()> {
    // Directories cannot be opened for syncing here; the file system orders it itself.
    Ok(())
}

/// A whole, intact chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    /// 64 zeros for an empty file.
    pub last_hash: String,
}

/// The first problem [`verify`] found. `line` is 1-based; 0 means the file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    pub line: u64,
    pub problem: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => f.write_str(&self.problem),
            line => write!(f, "line {line}: {}", self.problem),
        }
    }
}

impl std::error::Error for VerifyError {}

/// Check a whole file: every line parses, seq increases by one from 1, every prev matches the
/// previous hash, every hash recomputes, every line is in canonical form. A log being written
/// to may end in a half-written batch: verify a copy or a rotated file, or expect the last line.
pub fn verify(path: impl AsRef<Path>) -> Result<VerifyReport, VerifyError> {
    let unreadable = |line, e: io::Error| VerifyError {
        line,
        problem: format!("cannot read the file: {e}"),
    };
    let file = File::open(path.as_ref()).map_err(|e| unreadable(0, e))?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let (mut records, mut last_hash) = (0u64, GENESIS.to_owned());
    loop {
        buf.clear();
        if reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| unreadable(records + 1, e))?
            == 0
        {
            return Ok(VerifyReport { records, last_hash });
        }
        let line = records + 1;
        let fail = |problem: String| VerifyError { line, problem };
        let Some(content) = buf.strip_suffix(b"\n") else {
            return Err(fail(TORN.into()));
        };
        let link = check_line(content).map_err(fail)?;
        if link.seq != line {
            return Err(fail(format!("seq is {}, expected {line}", link.seq)));
        }
        if link.prev != last_hash {
            return Err(fail(match line {
                1 => "prev of the first record is not 64 zeros".into(),
                _ => format!("prev does not match the hash of line {}", line - 1),
            }));
        }
        (records, last_hash) = (line, link.hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn event(action: &str, outcome: &str) -> AuditEvent {
        AuditEvent {
            fhir_user: Some("Practitioner/prac-77".into()),
            jti: Some("jti-1".into()),
            appointment: Some("Appointment/tele-interp-1".into()),
            room: Some("room-1".into()),
            role: Some("host".into()),
            action: action.into(),
            outcome: outcome.into(),
            ..AuditEvent::default()
        }
    }

    fn denial() -> AuditEvent {
        AuditEvent {
            reason: Some("appointment_status".into()),
            ..event("join", "deny")
        }
    }

    /// A log with three records: join/allow, join/deny, admit/ok.
    fn three_records(dir: &tempfile::TempDir) -> PathBuf {
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).expect("open");
        for e in [event("join", "allow"), denial(), event("admit", "ok")] {
            log.record_blocking(e).expect("record");
        }
        path
    }

    fn lines(path: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(path).expect("read");
        text.lines().map(str::to_owned).collect()
    }

    fn rewrite(path: &Path, lines: &[String]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(path, text).expect("write");
    }

    /// The line `open` names when it refuses the file.
    fn refused_line(path: &Path) -> u64 {
        match AuditLog::open(path) {
            Err(AuditError::Tail { line, .. }) => line,
            other => panic!("expected a tail error, got {other:?}"),
        }
    }

    fn json(line: &str) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(line).expect("json object")
    }

    #[test]
    fn records_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let written: Vec<AuditedRecord> = [event("join", "allow"), denial(), event("leave", "ok")]
            .into_iter()
            .map(|e| log.record_blocking(e).unwrap())
            .collect();
        assert_eq!(written.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);

        let report = verify(&path).unwrap();
        assert_eq!(report.records, 3);
        assert_eq!(report.last_hash, written[2].hash);

        let lines = lines(&path);
        assert_eq!(GENESIS.len(), 64);
        let mut prev = GENESIS.to_owned();
        for (i, line) in lines.iter().enumerate() {
            let object = json(line);
            assert_eq!(object["seq"], i as u64 + 1);
            assert_eq!(object["prev"], prev.as_str());
            assert_eq!(object["hash"], written[i].hash.as_str());
            prev = written[i].hash.clone();
        }
    }

    #[test]
    fn reopening_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = three_records(&dir);
        let log = AuditLog::open(&path).unwrap();
        let fourth = log.record_blocking(event("end", "ok")).unwrap();
        assert_eq!(fourth.seq, 4);
        let report = verify(&path).unwrap();
        assert_eq!((report.records, report.last_hash), (4, fourth.hash));
    }

    #[test]
    fn empty_log_verifies_with_the_genesis_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        drop(AuditLog::open(&path).unwrap());
        let report = verify(&path).unwrap();
        assert_eq!(
            report,
            VerifyReport {
                records: 0,
                last_hash: GENESIS.into()
            }
        );
    }

    #[test]
    fn an_edited_middle_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = three_records(&dir);
        let mut lines = lines(&path);
        assert!(lines[1].contains("\"deny\""));
        lines[1] = lines[1].replace("\"deny\"", "\"allow\"");
        rewrite(&path, &lines);
        let error = verify(&path).unwrap_err();
        assert_eq!(error.to_string(), "line 2: hash does not match its content");
    }

    #[test]
    fn a_deleted_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = three_records(&dir);
        let mut lines = lines(&path);
        lines.remove(1);
        rewrite(&path, &lines);
        let error = verify(&path).unwrap_err();
        assert_eq!(error.line, 2);
        assert_eq!(error.problem, "seq is 3, expected 2");
    }

    #[test]
    fn swapped_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = three_records(&dir);
        let mut lines = lines(&path);
        lines.swap(1, 2);
        rewrite(&path, &lines);
        assert_eq!(verify(&path).unwrap_err().line, 2);
    }

    #[test]
    fn a_line_rehashed_after_editing_breaks_the_next_link() {
        let dir = tempfile::tempdir().unwrap();
        let path = three_records(&dir);
        let mut lines = lines(&path);
        // A forger who recomputes line 2's own hash still breaks line 3's prev.
        let mut record: Record = serde_json::from_str(&lines[1]).unwrap();
        record.event.outcome = "allow".into();
        let forged = seal(&mut record).unwrap();
        lines[1] = String::from_utf8(forged).unwrap().trim_end().to_owned();
        rewrite(&path, &lines);
        let error = verify(&path).unwrap_err();
        assert_eq!(
            error.to_string(),
            "line 3: prev does not match the hash of line 2"
        );
    }

    #[test]
    fn an_added_member_is_not_canonical() {
        let dir = tempfile::tempdir().unwrap();
        let path = three_records(&dir);
        let mut lines = lines(&path);
        lines[0] = lines[0].replacen("{", "{\"note\":\"x\",", 1);
        rewrite(&path, &lines);
        let error = verify(&path).unwrap_err();
        assert_eq!(error.line, 1);
        assert!(error.problem.contains("canonical"), "{error}");
    }

    #[test]
    fn an_edited_last_line_is_detected_by_verify_and_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = three_records(&dir);
        let mut lines = lines(&path);
        lines[2] = lines[2].replace("\"admit\"", "\"remove\"");
        rewrite(&path, &lines);
        assert_eq!(
            verify(&path).unwrap_err().to_string(),
            "line 3: hash does not match its content"
        );
        assert_eq!(refused_line(&path), 3);
    }

    #[test]
    fn a_torn_tail_refuses_open_and_fails_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = three_records(&dir);
        let half = &lines(&path)[2][..40];
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(half.as_bytes()).unwrap();
        drop(file);

        let error = AuditLog::open(&path).unwrap_err();
        assert!(
            error.to_string().contains("line 4: no trailing newline"),
            "{error}"
        );
        assert_eq!(refused_line(&path), 4);
        let error = verify(&path).unwrap_err();
        assert_eq!(error.line, 4);
        assert!(error.problem.contains("no trailing newline"), "{error}");
    }

    #[test]
    fn an_unparsable_last_line_refuses_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = three_records(&dir);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":4,\"ti\n").unwrap();
        drop(file);
        assert_eq!(refused_line(&path), 4);
        assert_eq!(verify(&path).unwrap_err().line, 4);
    }

    #[test]
    fn a_long_last_line_is_found_beyond_the_first_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        log.record_blocking(event("join", "allow")).unwrap();
        let long = AuditEvent {
            user_agent: Some("x".repeat(3 * TAIL_WINDOW as usize)),
            ..event("join", "allow")
        };
        let last = log.record_blocking(long).unwrap();
        drop(log);
        let log = AuditLog::open(&path).unwrap();
        let next = log.record_blocking(event("leave", "ok")).unwrap();
        assert_eq!(next.seq, last.seq + 1);
        assert_eq!(verify(&path).unwrap().records, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_records_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let probe = log.probe();

        // Hold the writer until all 200 records are queued, so that group commit is shown
        // without depending on how fast the disk syncs. The tasks run on the runtime's
        // workers; this thread only waits (without an await) for them to queue.
        let tasks: Vec<_> = {
            let _gate = probe.gate.lock().unwrap();
            let tasks = (0..200)
                .map(|i| {
                    let log = log.clone();
                    tokio::spawn(async move { log.record(event("join", &format!("ok-{i}"))).await })
                })
                .collect();
            while probe.queued.load(SeqCst) < 200 {
                thread::yield_now();
            }
            tasks
        };

        let mut seqs = BTreeSet::new();
        for task in tasks {
            seqs.insert(task.await.unwrap().unwrap().seq);
        }
        assert_eq!(seqs, (1..=200).collect());
        assert_eq!(verify(&path).unwrap().records, 200);
        let batches = probe.batches.load(SeqCst);
        assert!(batches < 200, "{batches} syncs for 200 records");
        assert_eq!(batches, 1, "all 200 were queued before the writer started");
    }

    #[test]
    fn none_fields_are_omitted_and_values_are_verbatim() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let given = AuditEvent {
            user_agent: Some("Mozilla/5.0 \"quoted\"\nsecond line\t\u{1} é 漢 \u{2028}".into()),
            client_ip: Some("2001:db8::1".into()),
            action: "access_check".into(),
            outcome: "deny".into(),
            reason: Some("appointment_status".into()),
            ..AuditEvent::default()
        };
        log.record_blocking(given.clone()).unwrap();
        drop(log);

        let lines = lines(&path);
        assert_eq!(
            lines.len(),
            1,
            "a newline in a value must not split the record"
        );
        let object = json(&lines[0]);
        // The map is sorted by key: the caller's five fields and the log's four, nothing else.
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        let expected = "action client_ip hash outcome prev reason seq time user_agent";
        assert_eq!(keys.join(" "), expected);
        assert!(!lines[0].contains("null"));

        let record: Record = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(record.event, given);
        assert!(verify(&path).is_ok());
    }

    #[test]
    fn members_are_in_canonical_order_and_time_is_utc_millis() {
        let dir = tempfile::tempdir().unwrap();
        let path = three_records(&dir);
        let line = &lines(&path)[1];
        let order = "seq time prev fhir_user jti appointment room role action outcome reason hash";
        let at: Vec<usize> = order
            .split(' ')
            .map(|k| line.find(&format!("\"{k}\":")).expect(k))
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{line}");

        let time = json(line)["time"].as_str().unwrap().to_owned();
        // e.g. 2025-03-01T09:30:00.123Z
        assert_eq!(time.len(), 24, "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
        assert!(chrono::DateTime::parse_from_rfc3339(&time).is_ok());
    }

    #[tokio::test]
    async fn a_failed_write_fails_waiting_and_later_callers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        log.record(event("join", "allow")).await.unwrap();

        log.probe().fail_writes.store(true, SeqCst);
        let error = log.record(event("admit", "ok")).await.unwrap_err();
        assert!(matches!(error, AuditError::Write(_)), "{error:?}");
        let error = log.record(event("leave", "ok")).await.unwrap_err();
        assert!(matches!(error, AuditError::Stopped(_)), "{error:?}");
        assert!(
            error.to_string().contains("earlier write failed"),
            "{error}"
        );
        let error = log.record_blocking(event("leave", "ok")).unwrap_err();
        assert!(matches!(error, AuditError::Stopped(_)), "{error:?}");
        assert_eq!(verify(&path).unwrap().records, 1);
    }

    #[test]
    fn the_writer_stops_with_the_last_handle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let probe = log.probe();
        let clone = log.clone();
        drop(log);
        clone.record_blocking(event("join", "allow")).unwrap();
        assert!(!probe.exited.load(SeqCst));
        drop(clone);
        assert!(probe.exited.load(SeqCst));
    }

    #[test]
    fn record_blocking_works_from_plain_threads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let log = log.clone();
                thread::spawn(move || log.record_blocking(event("mute", "ok")).map(|r| r.seq))
            })
            .collect();
        let seqs: BTreeSet<u64> = threads
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect();
        assert_eq!(seqs, (1..=8).collect());
        assert_eq!(verify(&path).unwrap().records, 8);
    }

    #[test]
    fn a_missing_file_fails_verify_and_a_directory_fails_open() {
        let dir = tempfile::tempdir().unwrap();
        let error = verify(dir.path().join("absent.jsonl")).unwrap_err();
        assert_eq!(error.line, 0);
        assert!(
            error.to_string().starts_with("cannot read the file"),
            "{error}"
        );
        assert!(matches!(
            AuditLog::open(dir.path()),
            Err(AuditError::Open { .. })
        ));
    }

    #[test]
    fn the_handle_is_send_sync_and_record_is_send() {
        fn send_sync<T: Send + Sync + Clone>(_: &T) {}
        fn send<T: Send>(_: T) {}
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path().join("audit.jsonl")).unwrap();
        send_sync(&log);
        send(log.record(AuditEvent::default()));
    }
}
