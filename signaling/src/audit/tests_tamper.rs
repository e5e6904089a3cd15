//! What the key and the checkpoint add: tampering that a plain hash chain let through is
//! found by `verify`, and refused by `open` before the service continues the chain.
//! (tests/audit_tamper.rs tries the same through `metaclinic audit verify`.)

use super::chain::{self, GENESIS, Record};
use super::tests::{cp_path, open_at, records, test_key, verify_ok};
use super::*;

fn denial(i: u64) -> AuditEvent {
    AuditEvent {
        client_ip: Some("192.0.2.1".into()),
        appointment: Some(format!("Appointment/a-{i}")),
        action: "join".into(),
        outcome: "deny".into(),
        reason: Some("not_a_participant".into()),
        ..AuditEvent::default()
    }
}

/// A log of `n` denials, written in a few batches.
async fn log_of(n: u64, dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("audit.jsonl");
    let log = open_at(&path).unwrap();
    let writes = (1..=n).map(|i| log.record(denial(i)));
    for written in futures_util::future::join_all(writes).await {
        written.unwrap();
    }
    path
}

fn lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().map(str::to_owned).collect()
}

fn rewrite(path: &Path, lines: &[String]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// Re-chain `lines` from `from` (0-based) on with plain hashes, as a forger without the key
/// can: every line recomputes, every link holds.
fn rechain_without_key(lines: &mut [String], from: usize) {
    let mut prev = match from {
        0 => GENESIS.to_owned(),
        _ => {
            let r: Record = serde_json::from_str(&lines[from - 1]).unwrap();
            r.mac.or(r.hash).unwrap()
        }
    };
    for line in &mut lines[from..] {
        let mut r: Record = serde_json::from_str(line).unwrap();
        r.prev = prev;
        let sealed = chain::seal_legacy(&mut r);
        prev = r.hash.clone().unwrap();
        *line = String::from_utf8(sealed).unwrap().trim_end().to_owned();
    }
}

#[tokio::test]
async fn cutting_lines_off_the_end_is_found_with_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(600, &dir).await;
    assert_eq!(verify_ok(&path).unwrap().records, 600);
    let all = lines(&path);
    for keep in [599, 100, 0] {
        rewrite(&path, &all[..keep]);
        let error = verify_ok(&path).unwrap_err();
        assert_eq!(error.line, keep as u64 + 1, "{error}");
        assert!(error.problem.contains("cut off the end"), "{error}");
        // The service refuses to continue it too.
        let refused = open_at(&path).unwrap_err();
        assert!(
            matches!(refused, AuditError::Checkpoint { .. }),
            "{refused}"
        );
    }
}

#[tokio::test]
async fn forged_appends_and_rewritten_chains_fail() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(20, &dir).await;
    let all = lines(&path);

    // A line appended with a recomputed (plain) hash.
    let mut forged = all.clone();
    let mut extra: Record = serde_json::from_str(&all[19]).unwrap();
    extra.seq = 21;
    extra.prev = extra.mac.take().unwrap();
    extra.event.outcome = "allow".into();
    forged.push(
        String::from_utf8(chain::seal_legacy(&mut extra))
            .unwrap()
            .trim_end()
            .into(),
    );
    rewrite(&path, &forged);
    let error = verify_ok(&path).unwrap_err();
    assert_eq!(error.line, 21, "{error}");
    assert!(open_at(&path).is_err(), "the service does not continue it");

    // A line appended with a MAC under another key.
    let mut forged = all.clone();
    let other = AuditKey::from_bytes(&[7; 32]).unwrap();
    let mut extra: Record = serde_json::from_str(&all[19]).unwrap();
    extra.seq = 21;
    extra.prev = extra.mac.take().unwrap();
    forged.push(
        String::from_utf8(chain::seal(&mut extra, &other).unwrap())
            .unwrap()
            .trim_end()
            .into(),
    );
    rewrite(&path, &forged);
    assert_eq!(verify_ok(&path).unwrap_err().line, 21);

    // A deny turned into an allow, and every line after it re-chained.
    let mut forged = all.clone();
    forged[4] = forged[4].replace("\"outcome\":\"deny\"", "\"outcome\":\"allow\"");
    rechain_without_key(&mut forged, 4);
    rewrite(&path, &forged);
    let error = verify_ok(&path).unwrap_err();
    assert_eq!(error.line, 5, "{error}");

    // The whole chain rewritten from the first line, checkpoint and all, without the key.
    let mut forged = all.clone();
    rechain_without_key(&mut forged, 0);
    rewrite(&path, &forged);
    std::fs::remove_file(cp_path(&path)).unwrap();
    let error = verify_ok(&path).unwrap_err();
    assert!(error.problem.contains("checkpoint"), "{error}");
}

#[tokio::test]
async fn a_log_from_before_the_key_is_continued_and_stays_protected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    // Three lines as the service wrote them before it had a key.
    let mut prev = GENESIS.to_owned();
    let mut old = Vec::new();
    for i in 1..=3 {
        let mut r = Record {
            seq: i,
            time: "2026-01-01T00:00:00.000Z".into(),
            prev,
            event: denial(i),
            hash: None,
            mac: None,
        };
        old.push(
            String::from_utf8(chain::seal_legacy(&mut r))
                .unwrap()
                .trim_end()
                .to_owned(),
        );
        prev = r.hash.unwrap();
    }
    rewrite(&path, &old);
    let log = open_at(&path).unwrap();
    log.record(denial(4)).await.unwrap();
    drop(log);
    let report = verify_ok(&path).unwrap();
    assert_eq!((report.records, report.legacy_records), (4, 3));
    assert!(records(&path)[3].get("mac").is_some());

    // Re-chaining the old lines breaks the first MAC'd line's link.
    let mut forged = lines(&path);
    forged[0] = forged[0].replace("\"outcome\":\"deny\"", "\"outcome\":\"allow\"");
    rechain_without_key(&mut forged[..3], 0);
    rewrite(&path, &forged);
    assert_eq!(verify_ok(&path).unwrap_err().line, 4);
}

#[tokio::test]
async fn the_key_and_the_checkpoint_are_needed() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(3, &dir).await;
    let no_key = verify(&path, &VerifyOptions::default()).unwrap_err();
    assert!(no_key.problem.contains("key is needed"), "{no_key}");
    let other = AuditKey::from_bytes(&[7; 32]).unwrap();
    let cp = cp_path(&path);
    let wrong = VerifyOptions {
        key: Some(&other),
        checkpoint: Some(&cp),
    };
    assert!(
        verify(&path, &wrong)
            .unwrap_err()
            .problem
            .contains("signed with this key")
    );
    // Without its checkpoint the service does not continue a MAC'd log.
    std::fs::remove_file(&cp).unwrap();
    let refused = open_at(&path).unwrap_err();
    assert!(
        refused.to_string().contains("missing or empty"),
        "{refused}"
    );
    // A checkpoint that names another last record: the log was rewritten.
    let other_log = dir.path().join("other.jsonl");
    let log = AuditLog::open(&other_log, test_key(), &cp).unwrap();
    for i in 0..3 {
        log.record(denial(100 + i)).await.unwrap();
    }
    drop(log);
    let refused = open_at(&path).unwrap_err();
    assert!(refused.to_string().contains("rewritten"), "{refused}");
}
