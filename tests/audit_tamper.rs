//! `metaclinic audit verify`, given the log's key and checkpoint, fails on each way of
//! tampering that a plain hash chain let through: the last line deleted, the last 500
//! deleted, a forged line appended with a recomputed hash, a deny turned into an allow with
//! the rest of the chain recomputed. The intact log passes. And an older checkpoint put back
//! with a log cut to match it is caught by the checkpoint's copy in Redis.

use std::path::{Path, PathBuf};
use std::process::Output;

use metaclinic_signaling::audit::{AuditEvent, AuditKey, AuditLog};
use sha2::{Digest, Sha256};

const RECORDS: u64 = 600;

struct Log {
    _dir: tempfile::TempDir,
    path: PathBuf,
    key: PathBuf,
    checkpoint: PathBuf,
}

/// A log of `RECORDS` decisions, every third a denial (the first on line 2), as the service
/// writes it.
async fn log() -> Log {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = dir.path().join("audit.key");
    // The checkpoint lives apart from the log (another volume, in production).
    std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
    let checkpoint = dir.path().join("elsewhere").join("audit.checkpoint");
    let audit = AuditLog::open(&path, AuditKey::create(&key).unwrap(), &checkpoint).unwrap();
    let writes = (0..RECORDS).map(|i| {
        audit.record(AuditEvent {
            fhir_user: Some(format!("Patient/pat-{i}")),
            client_ip: Some("192.0.2.1".into()),
            appointment: Some("Appointment/tele-1".into()),
            action: "join".into(),
            outcome: if i % 3 == 1 { "deny" } else { "allow" }.into(),
            reason: (i % 3 == 1).then(|| "not_a_participant".into()),
            ..AuditEvent::default()
        })
    });
    for written in futures_util::future::join_all(writes).await {
        written.unwrap();
    }
    Log {
        _dir: dir,
        path,
        key,
        checkpoint,
    }
}

fn verify(log: &Log, path: &Path, with: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_metaclinic"))
        .args(["audit", "verify"])
        .args(with)
        .arg("--key-file")
        .arg(&log.key)
        .arg("--checkpoint")
        .arg(&log.checkpoint)
        .arg(path)
        .output()
        .unwrap()
}

fn fails(log: &Log, lines: &[String], what: &str) -> String {
    let copy = log.path.with_extension(what.replace(' ', "-"));
    std::fs::write(
        &copy,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let out = verify(log, &copy, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{what}: verify passed\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    println!("{what}: {}", stderr.trim());
    stderr
}

/// The 64-hex-digit value of `member` in a line.
fn member<'a>(line: &'a str, member: &str) -> &'a str {
    let at = line.find(&format!("\"{member}\":\"")).unwrap() + member.len() + 4;
    &line[at..at + 64]
}

/// What someone without the key can do: re-seal a line after `prev` with a SHA-256 of
/// `prev` and its body, as the chain was before the key (or, `as_mac`, passing it off as the
/// line's mac).
fn reseal(line: &str, prev: &str, as_mac: bool) -> String {
    let old_prev = member(line, "prev").to_owned();
    let tag = member(line, "mac").to_owned();
    let body = line
        .replace(&format!(",\"mac\":\"{tag}\""), "")
        .replace(&old_prev, prev);
    let hash = hex(Sha256::new()
        .chain_update(prev)
        .chain_update(&body)
        .finalize());
    let name = if as_mac { "mac" } else { "hash" };
    format!(
        "{},\"{name}\":\"{hash}\"}}",
        body.strip_suffix('}').unwrap()
    )
}

fn hex(bytes: impl AsRef<[u8]>) -> String {
    bytes.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The tag a line ends with (its mac or hash), for the next line's prev.
fn tag(line: &str) -> String {
    line.rsplit_once(":\"").unwrap().1[..64].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_tampering_fails_verification() {
    let log = log().await;
    let ok = verify(&log, &log.path, &[]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains(&format!("{RECORDS} records")), "{stdout}");
    assert!(stdout.contains("checkpoint"), "{stdout}");

    let lines: Vec<String> = std::fs::read_to_string(&log.path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let n = lines.len();

    let e = fails(&log, &lines[..n - 1], "last line deleted");
    assert!(e.contains("cut off the end"), "{e}");
    let e = fails(&log, &lines[..n - 500], "last 500 deleted");
    assert!(e.contains("cut off the end"), "{e}");

    for as_mac in [false, true] {
        let mut forged = lines.clone();
        let extra = lines[n - 1]
            .replace(&format!("\"seq\":{n},"), &format!("\"seq\":{},", n + 1))
            .replace("\"outcome\":\"deny\"", "\"outcome\":\"allow\"");
        forged.push(reseal(&extra, &tag(&lines[n - 1]), as_mac));
        fails(
            &log,
            &forged,
            &format!("forged line appended (as mac: {as_mac})"),
        );
    }

    // A deny turned into an allow, every later line re-chained.
    let first_deny = lines
        .iter()
        .position(|l| l.contains("\"outcome\":\"deny\""))
        .unwrap();
    for as_mac in [false, true] {
        let mut forged = lines.clone();
        let mut prev = match first_deny {
            0 => "0".repeat(64),
            i => tag(&lines[i - 1]),
        };
        for line in &mut forged[first_deny..] {
            let edited = line.replacen("\"outcome\":\"deny\"", "\"outcome\":\"allow\"", 1);
            *line = reseal(&edited, &prev, as_mac);
            prev = tag(line);
        }
        let e = fails(
            &log,
            &forged,
            &format!("deny to allow, chain recomputed (as mac: {as_mac})"),
        );
        assert!(e.contains(&format!("line {}", first_deny + 1)), "{e}");
    }

    // Without the key, a MAC'd log cannot be checked at all.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_metaclinic"))
        .args(["audit", "verify", "--no-checkpoint"])
        .arg(&log.path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("key"));
}

/// What the key and a checkpoint file cannot show: someone who can write both files puts
/// back an older checkpoint together with the log cut to match it. The copy the service
/// keeps in Redis (with redis.url) was not rolled back, and `verify --redis` compares with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_checkpoint_put_back_is_caught_by_the_copy_in_redis() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key_file = dir.path().join("audit.key");
    let checkpoint = dir.path().join("audit.checkpoint");
    let audit = AuditLog::open(&path, AuditKey::create(&key_file).unwrap(), &checkpoint).unwrap();
    let event = |i: u64| AuditEvent {
        fhir_user: Some(format!("Patient/pat-{i}")),
        action: "join".into(),
        outcome: "allow".into(),
        ..AuditEvent::default()
    };
    for i in 0..10 {
        audit.record(event(i)).await.unwrap();
    }
    let old_checkpoint = std::fs::read(&checkpoint).unwrap();
    for i in 10..30 {
        audit.record(event(i)).await.unwrap();
    }
    // What the service stores in Redis after each write.
    let latest = audit.checkpoints().borrow().clone().unwrap();
    drop(audit);
    let prefix = format!("mc-test-{}:", uuid::Uuid::new_v4().simple());
    let redis_key = metaclinic_signaling::audit::checkpoint::redis_key(&prefix, &path);
    let mut redis = redis::Client::open("redis://127.0.0.1:6379/0")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis on 127.0.0.1:6379 (as the multi-node tests use)");
    let _: () = redis::cmd("SET")
        .arg(&redis_key)
        .arg(latest.trim_end())
        .arg("EX")
        .arg(600)
        .query_async(&mut redis)
        .await
        .unwrap();

    // The rollback: the first 10 lines and the checkpoint written after them.
    let text = std::fs::read_to_string(&path).unwrap();
    let first_ten: String = text.lines().take(10).map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, first_ten).unwrap();
    std::fs::write(&checkpoint, old_checkpoint).unwrap();
    let run = |redis: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_metaclinic"));
        command
            .args(["audit", "verify", "--key-file"])
            .arg(&key_file)
            .arg("--checkpoint")
            .arg(&checkpoint);
        if redis {
            command.args([
                "--redis",
                "redis://127.0.0.1:6379/0",
                "--redis-key-prefix",
                &prefix,
            ]);
        }
        command.arg(&path).output().unwrap()
    };
    assert!(run(false).status.success(), "the files alone cannot tell");
    let caught = run(true);
    let stderr = String::from_utf8_lossy(&caught.stderr);
    assert!(!caught.status.success());
    assert!(
        stderr.contains("cut off the end") && stderr.contains("Redis"),
        "{stderr}"
    );
    let _: () = redis::cmd("DEL")
        .arg(&redis_key)
        .query_async(&mut redis)
        .await
        .unwrap();
}
