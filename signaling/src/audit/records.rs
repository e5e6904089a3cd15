//! The log's records as data, for those who act on them (webhooks, FHIR `AuditEvent`s, the
//! export): as the writer commits them ([`super::AuditLog::observe`]), or read back from the
//! file. Reading does not check the chain; `audit verify` does that.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use super::AuditEvent;
use super::chain::Record;

/// One record as it is on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub seq: u64,
    /// RFC 3339, the log's clock.
    pub time: String,
    /// The record's `mac` (or legacy `hash`): unique per record, so ids derived from it are
    /// the same however often the record is read.
    pub mac: String,
    pub event: AuditEvent,
}

/// The records of the file at `path`, in order; a line that does not parse is an error
/// naming the line (a torn last line included).
pub fn read_records(path: &Path) -> io::Result<impl Iterator<Item = Result<Committed, String>>> {
    let reader = BufReader::new(File::open(path)?);
    Ok(reader.lines().enumerate().map(|(i, line)| {
        let line = line.map_err(|e| format!("line {}: {e}", i + 1))?;
        let record: Record =
            serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", i + 1))?;
        Ok(Committed {
            seq: record.seq,
            time: record.time,
            mac: record.mac.or(record.hash).unwrap_or_default(),
            event: record.event,
        })
    }))
}
