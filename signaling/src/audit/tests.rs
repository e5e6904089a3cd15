//! The log as its writer and its readers see it.

use super::chain::{GENESIS, Record};
use super::writer::TAIL_WINDOW;
use super::*;
use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::Ordering::SeqCst;

/// The key every test log is MAC'd with.
pub(super) fn test_key() -> AuditKey {
    AuditKey::from_bytes(b"a test key of thirty-two bytes!!").unwrap()
}

/// Where the checkpoint of the log at `path` is kept in tests.
pub(super) fn cp_path(path: &Path) -> PathBuf {
    path.with_extension("checkpoint")
}

pub(super) fn open_at(path: &Path) -> Result<AuditLog, AuditError> {
    AuditLog::open(path, test_key(), cp_path(path))
}

/// A new log in `dir`.
pub(super) fn open_log(dir: &tempfile::TempDir) -> (AuditLog, PathBuf) {
    let path = dir.path().join("audit.jsonl");
    (open_at(&path).expect("open"), path)
}

/// Verify with the key and the checkpoint.
pub(super) fn verify_ok(path: &Path) -> Result<VerifyReport, VerifyError> {
    let key = test_key();
    let cp = cp_path(path);
    verify(
        path,
        &VerifyOptions {
            key: Some(&key),
            checkpoint: Some(&cp),
        },
    )
}

/// The log's records as JSON.
pub(super) fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

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
    let log = open_at(&path).expect("open");
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
    match open_at(path) {
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
    let log = open_at(&path).unwrap();
    let written: Vec<AuditedRecord> = [event("join", "allow"), denial(), event("leave", "ok")]
        .into_iter()
        .map(|e| log.record_blocking(e).unwrap())
        .collect();
    assert_eq!(written.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);

    let report = verify_ok(&path).unwrap();
    assert_eq!(report.records, 3);
    assert_eq!(report.last_hash, written[2].hash);

    let lines = lines(&path);
    assert_eq!(GENESIS.len(), 64);
    let mut prev = GENESIS.to_owned();
    for (i, line) in lines.iter().enumerate() {
        let object = json(line);
        assert_eq!(object["seq"], i as u64 + 1);
        assert_eq!(object["prev"], prev.as_str());
        assert_eq!(object["mac"], written[i].hash.as_str());
        prev = written[i].hash.clone();
    }
}

#[test]
fn reopening_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = three_records(&dir);
    let log = open_at(&path).unwrap();
    let fourth = log.record_blocking(event("end", "ok")).unwrap();
    assert_eq!(fourth.seq, 4);
    let report = verify_ok(&path).unwrap();
    assert_eq!((report.records, report.last_hash), (4, fourth.hash));
}

#[test]
fn empty_log_verifies_with_the_genesis_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    drop(open_at(&path).unwrap());
    let report = verify_ok(&path).unwrap();
    assert_eq!(
        report,
        VerifyReport {
            records: 0,
            last_hash: GENESIS.into(),
            legacy_records: 0,
            keyed_from: 1,
            checkpoint: report.checkpoint.clone(),
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
    let error = verify_ok(&path).unwrap_err();
    assert_eq!(
        error.to_string(),
        "line 2: mac does not match its content (edited, forged, or another key)"
    );
}

#[test]
fn a_deleted_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = three_records(&dir);
    let mut lines = lines(&path);
    lines.remove(1);
    rewrite(&path, &lines);
    let error = verify_ok(&path).unwrap_err();
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
    assert_eq!(verify_ok(&path).unwrap_err().line, 2);
}

#[test]
fn a_line_rehashed_after_editing_breaks_the_next_link() {
    let dir = tempfile::tempdir().unwrap();
    let path = three_records(&dir);
    let mut lines = lines(&path);
    // Even someone with the key who recomputes line 2's own mac breaks line 3's prev.
    let mut record: Record = serde_json::from_str(&lines[1]).unwrap();
    record.event.outcome = "allow".into();
    let forged = chain::seal(&mut record, &test_key()).unwrap();
    lines[1] = String::from_utf8(forged).unwrap().trim_end().to_owned();
    rewrite(&path, &lines);
    let error = verify_ok(&path).unwrap_err();
    assert_eq!(
        error.to_string(),
        "line 3: prev does not match the mac of line 2"
    );
}

#[test]
fn an_added_member_is_not_canonical() {
    let dir = tempfile::tempdir().unwrap();
    let path = three_records(&dir);
    let mut lines = lines(&path);
    lines[0] = lines[0].replacen("{", "{\"note\":\"x\",", 1);
    rewrite(&path, &lines);
    let error = verify_ok(&path).unwrap_err();
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
        verify_ok(&path).unwrap_err().to_string(),
        "line 3: mac does not match its content (edited, forged, or another key)"
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

    let error = open_at(&path).unwrap_err();
    assert!(
        error.to_string().contains("line 4: no trailing newline"),
        "{error}"
    );
    assert_eq!(refused_line(&path), 4);
    let error = verify_ok(&path).unwrap_err();
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
    assert_eq!(verify_ok(&path).unwrap_err().line, 4);
}

#[test]
fn a_long_last_line_is_found_beyond_the_first_window() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = open_at(&path).unwrap();
    log.record_blocking(event("join", "allow")).unwrap();
    let long = AuditEvent {
        user_agent: Some("x".repeat(3 * TAIL_WINDOW as usize)),
        ..event("join", "allow")
    };
    let last = log.record_blocking(long).unwrap();
    drop(log);
    let log = open_at(&path).unwrap();
    let next = log.record_blocking(event("leave", "ok")).unwrap();
    assert_eq!(next.seq, last.seq + 1);
    assert_eq!(verify_ok(&path).unwrap().records, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_records_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = open_at(&path).unwrap();
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
    assert_eq!(verify_ok(&path).unwrap().records, 200);
    let batches = probe.batches.load(SeqCst);
    assert!(batches < 200, "{batches} syncs for 200 records");
    assert_eq!(batches, 1, "all 200 were queued before the writer started");
}

#[test]
fn none_fields_are_omitted_and_values_are_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = open_at(&path).unwrap();
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
    let expected = "action client_ip mac outcome prev reason seq time user_agent";
    assert_eq!(keys.join(" "), expected);
    assert!(!lines[0].contains("null"));

    let record: Record = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(record.event, given);
    assert!(verify_ok(&path).is_ok());
}

#[test]
fn members_are_in_canonical_order_and_time_is_utc_millis() {
    let dir = tempfile::tempdir().unwrap();
    let path = three_records(&dir);
    let line = &lines(&path)[1];
    let order = "seq time prev fhir_user jti appointment room role action outcome reason mac";
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
    let log = open_at(&path).unwrap();
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
    assert_eq!(verify_ok(&path).unwrap().records, 1);
}

#[test]
fn the_writer_stops_with_the_last_handle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = open_at(&path).unwrap();
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
    let log = open_at(&path).unwrap();
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
    assert_eq!(verify_ok(&path).unwrap().records, 8);
}

#[test]
fn a_missing_file_fails_verify_and_a_directory_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    let key = test_key();
    let options = VerifyOptions {
        key: Some(&key),
        checkpoint: None,
    };
    let error = verify(dir.path().join("absent.jsonl"), &options).unwrap_err();
    assert_eq!(error.line, 0);
    assert!(
        error.to_string().starts_with("cannot read the file"),
        "{error}"
    );
    assert!(matches!(
        AuditLog::open(dir.path(), test_key(), dir.path().join("cp")),
        Err(AuditError::Open { .. })
    ));
}

#[test]
fn the_handle_is_send_sync_and_record_is_send() {
    fn send_sync<T: Send + Sync + Clone>(_: &T) {}
    fn send<T: Send>(_: T) {}
    let dir = tempfile::tempdir().unwrap();
    let log = open_at(&dir.path().join("audit.jsonl")).unwrap();
    send_sync(&log);
    send(log.record(AuditEvent::default()));
}
