//! One line of the log and its link in the chain: how a record is sealed with the key, and
//! how a line is checked on its own (the checks across lines are [`super::verify`]'s).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AuditEvent, AuditKey};

/// `prev` of the first record.
pub(super) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A line of the file. Its field order is the canonical member order (see the module docs).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Record {
    pub seq: u64,
    pub time: String,
    pub prev: String,
    #[serde(flatten)]
    pub event: AuditEvent,
    /// The unkeyed SHA-256 of lines written before the log had a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// Set `record.mac` and return the record's line, newline included.
pub(super) fn seal(record: &mut Record, key: &AuditKey) -> serde_json::Result<Vec<u8>> {
    record.hash = None;
    record.mac = None;
    let body = serde_json::to_vec(record)?;
    record.mac = Some(key.mac(&[record.prev.as_bytes(), &body]));
    let mut line = serde_json::to_vec(record)?;
    line.push(b'\n');
    Ok(line)
}

/// hex SHA-256 of `prev` followed by the canonical JSON without `hash`: the links of logs
/// written before the key.
pub(super) fn legacy_hash(prev: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev.as_bytes());
    hasher.update(body);
    hex::encode(hasher.finalize())
}

/// The head of the chain a line ends with, once the line proved to be intact on its own.
#[derive(Debug)]
pub(super) struct Link {
    pub seq: u64,
    pub prev: String,
    /// The line's `mac` (or legacy `hash`): what the next line's `prev` must be.
    pub tag: String,
    /// Sealed with the key (`mac`), not a legacy `hash`.
    pub keyed: bool,
}

/// Check one line (without its newline) on its own: it parses, its MAC (with `key`) or
/// legacy hash recomputes, it is in canonical form and its time is RFC 3339. The problem is
/// worded for an operator.
pub(super) fn check_line(line: &[u8], key: Option<&AuditKey>) -> Result<Link, String> {
    if line.is_empty() {
        return Err("empty line".into());
    }
    let mut record: Record =
        serde_json::from_slice(line).map_err(|e| format!("not a valid record: {e}"))?;
    let (hash, mac) = (record.hash.take(), record.mac.take());
    let body = serde_json::to_vec(&record).map_err(|e| format!("cannot re-encode: {e}"))?;
    let (tag, keyed) = match (hash, mac) {
        (Some(_), Some(_)) => return Err("the record has both a hash and a mac".into()),
        (None, None) => return Err("the record has no mac".into()),
        (Some(hash), None) => {
            if legacy_hash(&record.prev, &body) != hash {
                return Err("hash does not match its content".into());
            }
            record.hash = Some(hash.clone());
            (hash, false)
        }
        (None, Some(mac)) => {
            let Some(key) = key else {
                return Err("the record is MAC'd: its key is needed to check it".into());
            };
            if key.mac(&[record.prev.as_bytes(), &body]) != mac {
                return Err(
                    "mac does not match its content (edited, forged, or another key)".into(),
                );
            }
            record.mac = Some(mac.clone());
            (mac, true)
        }
    };
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
        tag,
        keyed,
    })
}

/// Seal `record` the old way (a plain hash), as logs before the key were: for tests of the
/// upgrade path and of forgeries.
#[cfg(test)]
pub(super) fn seal_legacy(record: &mut Record) -> Vec<u8> {
    record.hash = None;
    record.mac = None;
    let body = serde_json::to_vec(record).unwrap();
    record.hash = Some(legacy_hash(&record.prev, &body));
    let mut line = serde_json::to_vec(record).unwrap();
    line.push(b'\n');
    line
}
