//! The checkpoint: how many records the log holds and the last one's `mac`, signed with the
//! log's key and kept outside the log. A chain cannot show lines cut off its end; a log
//! shorter than its checkpoint, or whose record at the checkpoint's count has another `mac`,
//! can.
//!
//! The file holds two fixed-size slots, written in turn (one `pwrite` and one `fdatasync`
//! each): a crash mid-write tears at most the slot being written, and the other still holds
//! the previous checkpoint. A slot is one line of JSON padded with spaces:
//! `{"records":N,"mac":"<hex>","keyed_from":K,"time":"<RFC 3339>","tag":"<hex>"}`, where
//! `tag` is the HMAC-SHA256 of `metaclinic audit checkpoint v1\n<records>\n<mac>\n<keyed_from>
//! \n<time>`. Readers take the valid slot with the most records. `keyed_from` is the first
//! record sealed with the key: a log rewritten into the old, unkeyed form (which anyone can
//! compute) fails at its first rewritten line, not only at the checkpoint's count.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::AuditKey;

/// Bytes per slot, the final newline included.
const SLOT: usize = 256;

/// What the tag covers starts with this, so no other MAC of the key can pass for a tag.
const DOMAIN: &str = "metaclinic audit checkpoint v1";

/// A signed statement about the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Records in the log when it was written.
    pub records: u64,
    /// The `mac` (or legacy `hash`) of record `records`; 64 zeros for none.
    pub mac: String,
    /// The first record sealed with the key; those before it are from before the key.
    pub keyed_from: u64,
    /// When it was written (UTC).
    pub time: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Slot {
    records: u64,
    mac: String,
    keyed_from: u64,
    time: String,
    tag: String,
}

fn tag(cp: &Checkpoint, key: &AuditKey) -> String {
    let text = format!(
        "{DOMAIN}\n{}\n{}\n{}\n{}",
        cp.records, cp.mac, cp.keyed_from, cp.time
    );
    key.mac(&[text.as_bytes()])
}

impl Checkpoint {
    /// The checkpoint's file form: one slot, signed.
    pub fn encode(&self, key: &AuditKey) -> String {
        let slot = Slot {
            records: self.records,
            mac: self.mac.clone(),
            keyed_from: self.keyed_from,
            time: self.time.clone(),
            tag: tag(self, key),
        };
        let mut text = serde_json::to_string(&slot).expect("a slot always serializes");
        // 20 digits, 64 hex, a 24-character time and 64 hex fit with room to spare.
        debug_assert!(text.len() < SLOT);
        text.extend(std::iter::repeat_n(
            ' ',
            SLOT - 1 - text.len().min(SLOT - 1),
        ));
        text.push('\n');
        text
    }

    /// A slot's checkpoint, if it is one and `key` signed it.
    pub fn decode(text: &str, key: &AuditKey) -> Option<Checkpoint> {
        let slot: Slot = serde_json::from_str(text.trim_end()).ok()?;
        let cp = Checkpoint {
            records: slot.records,
            mac: slot.mac,
            keyed_from: slot.keyed_from,
            time: slot.time,
        };
        (tag(&cp, key) == slot.tag).then_some(cp)
    }
}

/// The latest valid checkpoint in `text` (a file's content), or why there is none.
pub fn latest(text: &[u8], key: &AuditKey) -> Result<Checkpoint, String> {
    if text.is_empty() {
        return Err("empty".into());
    }
    text.chunks(SLOT)
        .filter_map(|slot| std::str::from_utf8(slot).ok())
        .filter_map(|slot| Checkpoint::decode(slot, key))
        .max_by_key(|cp| cp.records)
        .ok_or_else(|| "no slot is a checkpoint signed with this key".into())
}

/// Where Redis keeps the copy of the checkpoint of the log at `log` (each replica writes its
/// own log, named after it).
pub fn redis_key(prefix: &str, log: &Path) -> String {
    let name = log.file_name().map_or_else(
        || log.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    format!("{prefix}audit:checkpoint:{name}")
}

/// The copy of the checkpoint of the log at `log` that the service keeps in Redis (file
/// form), for `metaclinic audit verify --redis`.
pub async fn from_redis(url: &str, prefix: &str, log: &Path) -> Result<Vec<u8>, String> {
    let key = redis_key(prefix, log);
    let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let value: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    value
        .map(String::into_bytes)
        .ok_or_else(|| format!("no checkpoint under {key} in {url}"))
}

/// Read the checkpoint at `path`.
pub fn read(path: &Path, key: &AuditKey) -> Result<Checkpoint, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    latest(&text, key)
}

/// Write the first checkpoint of a log that has `records` records, the last with `mac`, at
/// `path` (`metaclinic audit checkpoint`, after the checkpoint was lost). An existing
/// checkpoint is never replaced: compare the log with it instead.
pub fn write_new(
    path: &Path,
    key: &AuditKey,
    records: u64,
    mac: &str,
    keyed_from: u64,
) -> io::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a checkpoint exists: verify the log against it",
        ));
    }
    let (mut file, _) = CheckpointFile::open(path, key).map_err(io::Error::other)?;
    let cp = Checkpoint {
        records,
        mac: mac.to_owned(),
        keyed_from,
        time: super::writer::now(),
    };
    file.store(&cp.encode(key))
}

/// The writer's handle on the checkpoint file.
pub(super) struct CheckpointFile {
    file: File,
    /// The slot the next checkpoint goes to (the other holds the latest).
    next: u64,
}

impl CheckpointFile {
    /// Open the file at `path`, creating it if missing; also returns the latest checkpoint
    /// in it (`None` for a new or empty file).
    pub fn open(
        path: &Path,
        key: &AuditKey,
    ) -> Result<(CheckpointFile, Option<Checkpoint>), String> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(path)
            .map_err(|e| format!("cannot open it: {e}"))?;
        let mut text = Vec::new();
        file.read_to_end(&mut text)
            .map_err(|e| format!("cannot read it: {e}"))?;
        if text.is_empty() {
            // A new file's directory entry must be durable too.
            super::writer::sync_parent(path).map_err(|e| format!("cannot sync its folder: {e}"))?;
            return Ok((CheckpointFile { file, next: 0 }, None));
        }
        let latest = latest(&text, key)?;
        // Write over the other slot: the one that is not the latest.
        let slots: Vec<Option<Checkpoint>> = text
            .chunks(SLOT)
            .map(|s| {
                std::str::from_utf8(s)
                    .ok()
                    .and_then(|s| Checkpoint::decode(s, key))
            })
            .collect();
        let at = slots
            .iter()
            .position(|s| s.as_ref() == Some(&latest))
            .unwrap_or(0) as u64;
        Ok((
            CheckpointFile {
                file,
                next: 1 - at.min(1),
            },
            Some(latest),
        ))
    }

    /// Write `cp` (already encoded) durably; returns once it is on disk.
    pub fn store(&mut self, encoded: &str) -> io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.file
                .write_all_at(encoded.as_bytes(), self.next * SLOT as u64)?;
        }
        #[cfg(not(unix))]
        {
            use std::io::{Seek, SeekFrom, Write};
            self.file.seek(SeekFrom::Start(self.next * SLOT as u64))?;
            self.file.write_all(encoded.as_bytes())?;
        }
        self.file.sync_data()?;
        self.next = 1 - self.next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> AuditKey {
        AuditKey::from_bytes(&[byte; 32]).unwrap()
    }

    fn cp(records: u64) -> Checkpoint {
        Checkpoint {
            records,
            mac: "ab".repeat(32),
            keyed_from: 1,
            time: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn slots_alternate_and_the_latest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp");
        let k = key(1);
        let (mut file, none) = CheckpointFile::open(&path, &k).unwrap();
        assert_eq!(none, None);
        for n in 1..=5 {
            file.store(&cp(n).encode(&k)).unwrap();
            assert_eq!(read(&path, &k).unwrap().records, n);
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * SLOT as u64);
        // Reopened, the next write goes over the older slot.
        let (mut file, latest) = CheckpointFile::open(&path, &k).unwrap();
        assert_eq!(latest.unwrap().records, 5);
        file.store(&cp(6).encode(&k)).unwrap();
        let text = std::fs::read(&path).unwrap();
        let slots: Vec<u64> = text
            .chunks(SLOT)
            .map(|s| {
                Checkpoint::decode(std::str::from_utf8(s).unwrap(), &k)
                    .unwrap()
                    .records
            })
            .collect();
        assert_eq!(slots.iter().max(), Some(&6));
        assert!(slots.contains(&5), "{slots:?}");
    }

    #[test]
    fn a_torn_slot_leaves_the_other() {
        let k = key(1);
        let mut text = cp(7).encode(&k).into_bytes();
        let torn = cp(8).encode(&k);
        text.extend_from_slice(&torn.as_bytes()[..40]);
        assert_eq!(latest(&text, &k).unwrap().records, 7);
    }

    #[test]
    fn another_key_or_an_edit_is_no_checkpoint() {
        let text = cp(3).encode(&key(1));
        assert!(Checkpoint::decode(&text, &key(2)).is_none());
        let edited = text.replace("\"records\":3", "\"records\":9");
        assert!(Checkpoint::decode(&edited, &key(1)).is_none());
        assert!(latest(edited.as_bytes(), &key(1)).is_err());
    }
}
