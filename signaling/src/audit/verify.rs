//! Checking a whole log against its key and its checkpoint (`metaclinic audit verify`).

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use super::AuditKey;
use super::chain::{self, GENESIS};
use super::checkpoint::{self, Checkpoint};
use super::writer::TORN;

/// What to check a log with.
#[derive(Debug, Default, Clone, Copy)]
pub struct VerifyOptions<'a> {
    /// The log's key: needed for every MAC'd record (and for the checkpoint).
    pub key: Option<&'a AuditKey>,
    /// The checkpoint to compare the log with. Without one, lines cut off the end of a log
    /// cannot be told from a log that ends there.
    pub checkpoint: Option<&'a Path>,
}

/// A whole, intact chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    /// The last record's `mac` (or legacy `hash`); 64 zeros for an empty file.
    pub last_hash: String,
    /// Records written before the log had a key (plain hashes, at its start).
    pub legacy_records: u64,
    /// The first MAC'd record (`records + 1` if there is none yet).
    pub keyed_from: u64,
    /// The checkpoint the log was compared with.
    pub checkpoint: Option<Checkpoint>,
}

/// The first problem [`verify`] found. `line` is 1-based; 0 means the file (or the
/// checkpoint) could not be read, or is not about one line.
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
/// previous line's mac, every mac recomputes with the key (legacy hashes only before the first
/// mac), every line is in canonical form; and, with a checkpoint, the log holds at least the
/// records it counts and the one at its count is the one it names. A log being written to may
/// end in a half-written batch: verify a copy or a rotated file, or expect the last line.
pub fn verify(
    path: impl AsRef<Path>,
    options: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let whole = |problem: String| VerifyError { line: 0, problem };
    // The checkpoint first: the log only grows after it was written.
    let checkpoint = match (options.checkpoint, options.key) {
        (None, _) => None,
        (Some(_), None) => return Err(whole("checking a checkpoint needs the log's key".into())),
        (Some(cp), Some(key)) => Some(
            checkpoint::read(cp, key)
                .map_err(|e| whole(format!("checkpoint {}: {e}", cp.display())))?,
        ),
    };
    let unreadable = |line, e: io::Error| VerifyError {
        line,
        problem: format!("cannot read the file: {e}"),
    };
    let file = File::open(path.as_ref()).map_err(|e| unreadable(0, e))?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let (mut records, mut last_hash, mut legacy, mut keyed) = (0u64, GENESIS.to_owned(), 0, false);
    loop {
        buf.clear();
        if reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| unreadable(records + 1, e))?
            == 0
        {
            break;
        }
        let line = records + 1;
        let fail = |problem: String| VerifyError { line, problem };
        let Some(content) = buf.strip_suffix(b"\n") else {
            return Err(fail(TORN.into()));
        };
        let link = chain::check_line(content, options.key).map_err(fail)?;
        if link.seq != line {
            return Err(fail(format!("seq is {}, expected {line}", link.seq)));
        }
        if link.prev != last_hash {
            return Err(fail(match line {
                1 => "prev of the first record is not 64 zeros".into(),
                _ => format!("prev does not match the mac of line {}", line - 1),
            }));
        }
        if keyed && !link.keyed {
            // Anyone can compute a plain hash: after the first MAC'd record, one is forged.
            return Err(fail("a record without a mac after MAC'd records".into()));
        }
        if let Some(cp) = &checkpoint
            && line >= cp.keyed_from
            && !link.keyed
        {
            return Err(fail(format!(
                "a record without a mac, where the checkpoint of {} says records are MAC'd \
                 from {} on",
                cp.time, cp.keyed_from
            )));
        }
        keyed |= link.keyed;
        legacy += u64::from(!link.keyed);
        if let Some(cp) = &checkpoint
            && cp.records == line
            && cp.mac != link.tag
        {
            return Err(fail(format!(
                "not the record the checkpoint of {} names: the log was rewritten",
                cp.time
            )));
        }
        (records, last_hash) = (line, link.tag);
    }
    if let Some(cp) = &checkpoint {
        if records < cp.records {
            return Err(VerifyError {
                line: records + 1,
                problem: format!(
                    "missing: the log ends after {records} records, its checkpoint of {} \
                     counts {}: records were cut off the end",
                    cp.time, cp.records
                ),
            });
        }
        if cp.records == 0 && cp.mac != GENESIS {
            return Err(whole(
                "the checkpoint of an empty log names a record".into(),
            ));
        }
    }
    Ok(VerifyReport {
        records,
        last_hash,
        legacy_records: legacy,
        keyed_from: legacy + 1,
        checkpoint,
    })
}
