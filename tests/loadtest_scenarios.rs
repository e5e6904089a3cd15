//! The load tool's scenarios, short: a consultation run through `metaclinic dev` (doctors
//! admit patients from the lobby), a shared room of walking avatars (a group session, also
//! through signaling), and a ramp that stops by itself. Each writes its JSON and HTML reports; the checks read them back as a user's
//! script would and hold the figures to what loopback must give: everyone joins, nothing is
//! lost, and the measures are there. No wall-clock bounds.

use clap::Parser;
use metaclinic_loadtest::load::{self, LoadArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: LoadArgs,
}

/// The scenario's arguments, with this build's `metaclinic` and report files in `dir`.
fn args(dir: &std::path::Path, extra: &[&str]) -> LoadArgs {
    let json = dir.join("report.json");
    let html = dir.join("report.html");
    let mut argv = vec![
        "loadtest".to_owned(),
        "--bin".into(),
        env!("CARGO_BIN_EXE_metaclinic").into(),
        "--json".into(),
        json.display().to_string(),
        "--html".into(),
        html.display().to_string(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    Cli::parse_from(argv).args
}

/// Write the reports as the binary does and read the JSON back.
fn outputs(args: &LoadArgs, report: &load::report::Report) -> serde_json::Value {
    load::write_outputs(args, report).unwrap();
    let html = std::fs::read_to_string(args.html.as_ref().unwrap()).unwrap();
    assert!(
        html.contains("<svg") && html.contains("latency") && !html.contains("<script"),
        "a self-contained page with plots"
    );
    let json = std::fs::read_to_string(args.json.as_ref().unwrap()).unwrap();
    serde_json::from_str(&json).unwrap()
}

fn num(j: &serde_json::Value, field: &str) -> f64 {
    j[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number: {j:#}"))
}

/// The fields the issue names, present and consistent.
fn check_common(j: &serde_json::Value, scenario: &str, participants: u64) {
    for field in [
        "scenario",
        "participants",
        "duration_s",
        "join_ms_p50",
        "join_ms_p95",
        "latency_ms_p50",
        "latency_ms_p99",
        "loss_pct",
        "cpu_us_per_fwd_pkt",
        "rss_kb_per_participant",
        "failures",
    ] {
        assert!(j.get(field).is_some(), "{field} missing: {j:#}");
    }
    assert_eq!(j["scenario"], scenario);
    assert_eq!(j["participants"], participants, "{j:#}");
    assert_eq!(j["failures"], 0, "{:#}", j["failure_reasons"]);
    assert!(num(j, "duration_s") > 0.0);
    // Everyone who joined a call heard someone: join times exist and are ordered.
    let (p50, p95) = (num(j, "join_ms_p50"), num(j, "join_ms_p95"));
    assert!(p50 > 0.0 && p50 <= p95, "joins {p50} / {p95}");
    let (l50, l99) = (num(j, "latency_ms_p50"), num(j, "latency_ms_p99"));
    assert!(l50 > 0.0 && l50 <= l99, "latency {l50} / {l99}");
    // Loopback loses nothing.
    assert!(num(j, "received_pkts") > 0.0, "{j:#}");
    assert_eq!(num(j, "lost_pkts"), 0.0, "{j:#}");
    assert_eq!(num(j, "loss_pct"), 0.0);
    // Local processes: CPU and memory come from /proc.
    assert_eq!(j["server_figures_from"], "proc");
    assert!(num(j, "cpu_us_per_fwd_pkt") > 0.0, "{j:#}");
    assert!(num(j, "rss_kb_per_participant") >= 0.0);
    assert!(num(j, "tool_cpu_pct") > 0.0);
    assert!(!j["timeline"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_consult_run_joins_everyone_through_the_lobby_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let args = args(
        dir.path(),
        &[
            "--rooms",
            "2",
            "--duration",
            "3",
            "--warmup",
            "1",
            "--video-kbps",
            "200",
        ],
    );
    let report = load::consult::run(args.clone(), false).await.unwrap();
    eprintln!("{}", load::report::summary(&report));
    let j = outputs(&args, &report);
    check_common(&j, "consult", 4);
    // The patients are the joiners: the doctors were there first and admitted them.
    assert_eq!(j["joins_measured"], 2);
    // Signaling and the SFU live in one dev process, told apart by thread.
    assert!(num(&j, "signaling_cpu_pct") >= 0.0 && num(&j, "sfu_cpu_pct") > 0.0);
    assert_eq!(j["freezes"], 0, "{j:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_shared_room_run_mixes_for_walking_avatars() {
    let dir = tempfile::tempdir().unwrap();
    let args = args(
        dir.path(),
        &["--avatars", "3", "--duration", "3", "--warmup", "1"],
    );
    let report = load::shared::run(args.clone()).await.unwrap();
    eprintln!("{}", load::report::summary(&report));
    let j = outputs(&args, &report);
    check_common(&j, "shared-room", 3);
    // The two guests are the joiners: admitted by the host from the lobby, each hears the
    // mix (its join time is to the mix's first packet).
    assert_eq!(j["joins_measured"], 2);
    assert!(num(&j, "signaling_cpu_pct") >= 0.0 && num(&j, "sfu_cpu_pct") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_stops_by_itself_and_names_its_last_good_step() {
    let dir = tempfile::tempdir().unwrap();
    let args = args(
        dir.path(),
        &[
            "--step",
            "1",
            "--max-participants",
            "4",
            "--duration",
            "2",
            "--warmup",
            "0",
            "--video-kbps",
            "200",
            // Publishers send three layers, as browsers do; the SFU picks one per subscriber.
            "--simulcast",
        ],
    );
    let report = load::ramp::run(args.clone()).await.unwrap();
    eprintln!("{}", load::report::summary(&report));
    let j = outputs(&args, &report);
    assert_eq!(j["simulcast"], true);
    let steps = j["steps"].as_array().unwrap();
    assert!(!steps.is_empty() && steps.len() <= 2, "{j:#}");
    let stopped = j["ramp_stopped"].as_str().unwrap();
    match steps.iter().position(|s| !s["broke"].is_null()) {
        // On loopback the bar holds: the ramp stops at the participant cap.
        None => {
            assert_eq!(steps.len(), 2);
            assert!(stopped.contains("--max-participants"), "{stopped}");
            assert_eq!(j["last_good_step"]["rooms"], 2);
            assert_eq!(j["participants"], 4);
        }
        // A busy machine may push latency over the bar (no wall-clock promises here): then
        // that step is the last, and it says why. Joins still never fail on loopback.
        Some(i) => {
            assert_eq!(i, steps.len() - 1, "{j:#}");
            assert_eq!(steps[i]["broke"].as_str(), Some(stopped));
            assert!(!stopped.contains("join"), "{stopped}");
        }
    }
}
