//! The thread that owns the log file, the head of the chain and the checkpoint, and how it
//! finds where to continue when the log is opened.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use tokio::sync::watch;

use super::chain::{self, GENESIS, Record};
use super::checkpoint::{Checkpoint, CheckpointFile};
use super::{AuditError, AuditEvent, AuditKey, AuditedRecord, Request};

#[cfg(test)]
use std::sync::atomic::Ordering::SeqCst;

/// The problem named for a last line without its newline.
pub(super) const TORN: &str = "no trailing newline: the last write was cut short";

/// At most this many records share one write and one sync, so that a burst does not keep the
/// first caller of a batch waiting behind an unbounded amount of encoding.
const MAX_BATCH: usize = 512;

/// How much of the file end `open` reads first when looking for the last line.
pub(super) const TAIL_WINDOW: u64 = 4096;

/// An opened log: the file, where its chain ends, and its checkpoint.
pub(super) struct Opened {
    file: File,
    /// `seq` of the last record on disk (0 for an empty file).
    seq: u64,
    /// `mac` (or legacy `hash`) of the last record on disk.
    prev: String,
    key: AuditKey,
    checkpoint: CheckpointFile,
    /// The first record sealed with the key (for the checkpoint).
    keyed_from: u64,
}

/// Open the log and its checkpoint, and check that they agree: the log may be ahead of the
/// checkpoint (a crash between the two syncs) but never behind it or different at it.
pub(super) fn open(path: &Path, key: AuditKey, checkpoint: &Path) -> Result<Opened, AuditError> {
    let open_error = |source| AuditError::Open {
        path: path.to_path_buf(),
        source,
    };
    let cp_error = |problem: String| AuditError::Checkpoint {
        path: checkpoint.to_path_buf(),
        problem,
    };
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // The log names patients' appointments: readable by the service account only.
        options.mode(0o600);
    }
    let file = options.open(path).map_err(open_error)?;
    let meta = file.metadata().map_err(open_error)?;
    if !meta.is_file() {
        let not_file = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
        return Err(open_error(not_file));
    }
    let tail = if meta.len() == 0 {
        // A new file's directory entry must be durable too, or a crash can lose the file
        // together with records that were acknowledged.
        sync_parent(path).map_err(open_error)?;
        None
    } else {
        Some(continue_chain(&file, meta.len(), path, &key)?)
    };
    let (seq, prev, keyed) = match tail {
        Some(link) => (link.seq, link.tag, link.keyed),
        None => (0, GENESIS.to_owned(), false),
    };
    let (mut cp_file, stored) = CheckpointFile::open(checkpoint, &key).map_err(cp_error)?;
    // Records from here on are sealed with the key; a log that had MAC'd records before
    // keeps the checkpoint's word for where they began.
    let keyed_from = match &stored {
        Some(cp) if keyed || cp.keyed_from <= seq => cp.keyed_from,
        _ => seq + 1,
    };
    match stored {
        Some(cp) if seq < cp.records => {
            return Err(cp_error(format!(
                "the log ends at record {seq} but the checkpoint of {} counts {}: records were \
                 cut off the end of {}",
                cp.time,
                cp.records,
                path.display()
            )));
        }
        Some(cp) if seq == cp.records && prev != cp.mac => {
            return Err(cp_error(format!(
                "record {seq} of {} is not the one the checkpoint of {} names: the log was \
                 rewritten",
                path.display(),
                cp.time
            )));
        }
        // Ahead of the checkpoint only by records sealed with the key.
        Some(cp) if seq > cp.records && !keyed => {
            return Err(cp_error(format!(
                "{} continues past the checkpoint of {} with a record that has no mac",
                path.display(),
                cp.time
            )));
        }
        Some(_) => {}
        None if keyed => {
            return Err(cp_error(format!(
                "missing or empty, but {} holds MAC'd records: restore it, or check the log \
                 (metaclinic audit verify --no-checkpoint) and write a new one (metaclinic \
                 audit checkpoint)",
                path.display()
            )));
        }
        // A new log, or one written before the key: its checkpoint starts now.
        None => {
            let cp = Checkpoint {
                records: seq,
                mac: prev.clone(),
                keyed_from,
                time: now(),
            };
            cp_file
                .store(&cp.encode(&key))
                .map_err(|e| cp_error(format!("cannot write it: {e}")))?;
        }
    }
    Ok(Opened {
        file,
        seq,
        prev,
        key,
        checkpoint: cp_file,
        keyed_from,
    })
}

/// The thread that owns the file and the chain's head.
pub(super) struct Writer {
    pub opened: Opened,
    pub requests: mpsc::Receiver<Request>,
    pub stopped: Arc<OnceLock<String>>,
    pub published: watch::Sender<Option<String>>,
    pub observer: Arc<OnceLock<tokio::sync::mpsc::UnboundedSender<super::Committed>>>,
    #[cfg(test)]
    pub probe: Arc<super::Probe>,
}

impl Writer {
    pub fn run(mut self) {
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
            // Copies only when someone listens (crate::webhooks).
            let observed = self.observer.get().map(|tx| (tx.clone(), events.clone()));
            match self.append(events) {
                Ok(records) => {
                    #[cfg(test)]
                    self.probe.batches.fetch_add(1, SeqCst);
                    if let Some((tx, events)) = observed {
                        for (event, r) in events.into_iter().zip(&records) {
                            // An observer that is gone misses nothing it could not replay.
                            let _ = tx.send(super::Committed {
                                seq: r.seq,
                                time: r.time.clone(),
                                mac: r.hash.clone(),
                                event,
                            });
                        }
                    }
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

    /// Write the events as the next records with one write and one sync, then the checkpoint
    /// with one more. The chain's head moves only once both are durable.
    fn append(&mut self, events: Vec<AuditEvent>) -> io::Result<Vec<AuditedRecord>> {
        let o = &mut self.opened;
        let mut bytes = Vec::with_capacity(events.len() * 256);
        let mut records = Vec::with_capacity(events.len());
        let (mut seq, mut prev) = (o.seq, o.prev.clone());
        for event in events {
            seq += 1;
            let time = now();
            let mut record = Record {
                seq,
                time: time.clone(),
                prev,
                event,
                hash: None,
                mac: None,
            };
            bytes.extend(chain::seal(&mut record, &o.key)?);
            prev = record.mac.unwrap_or_default();
            records.push(AuditedRecord {
                seq,
                hash: prev.clone(),
                time,
            });
        }
        #[cfg(test)]
        if self.probe.fail_writes.load(SeqCst) {
            return Err(io::Error::other("injected write failure"));
        }
        o.file.write_all(&bytes)?;
        o.file.sync_data()?;
        let cp = Checkpoint {
            records: seq,
            mac: prev.clone(),
            keyed_from: o.keyed_from,
            time: now(),
        };
        let encoded = cp.encode(&o.key);
        o.checkpoint.store(&encoded)?;
        (o.seq, o.prev) = (seq, prev);
        self.published.send_replace(Some(encoded));
        Ok(records)
    }
}

/// UTC, RFC 3339, milliseconds, `Z`: the log's clock, not the caller's. `seq`, not `time`,
/// orders the records: the wall clock may step back.
pub(super) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The link of the file's last record, or why the file cannot be continued.
fn continue_chain(
    file: &File,
    len: u64,
    path: &Path,
    key: &AuditKey,
) -> Result<chain::Link, AuditError> {
    let open_error = |source| AuditError::Open {
        path: path.to_path_buf(),
        source,
    };
    let (offset, tail) = last_line(file, len).map_err(open_error)?;
    let problem = match tail.strip_suffix(b"\n") {
        None => TORN.to_owned(),
        Some(line) => match chain::check_line(line, Some(key)) {
            Ok(link) => return Ok(link),
            Err(problem) => problem,
        },
    };
    // Only a damaged file pays for reading it whole, to name the line exactly.
    let line = count_newlines(file, offset).map_err(open_error)? + 1;
    Err(AuditError::Tail {
        path: PathBuf::from(path),
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
pub(super) fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

#[cfg(not(unix))]
pub(super) fn sync_parent(_path: &Path) -> io::Result<()> {
    // Directories cannot be opened for syncing here; the file system orders it itself.
    Ok(())
}
