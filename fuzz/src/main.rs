//! `metaclinic-fuzz <target>|all|list [--runs N] [--seconds S] [--seed N] [--replay FILE...]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use metaclinic_fuzz::engine::{self, Options};
use metaclinic_fuzz::targets::{self, Target};

/// Fuzz MetaClinic's parsers that face the outside. Each target runs its seeds, then mutated
/// inputs; a panic, a broken invariant, a hang or an abort is saved under
/// target/fuzz-findings/<target>/ and makes the run fail.
#[derive(Parser)]
#[command(name = "metaclinic-fuzz")]
struct Args {
    /// A target's name, `all`, or `list`.
    target: String,
    /// Mutated inputs per target (the seeds come on top).
    #[arg(long)]
    runs: Option<u64>,
    /// Seconds per target. Without --runs or --seconds: 10 seconds per target.
    #[arg(long)]
    seconds: Option<f64>,
    /// Seed of the mutations: the same seed runs the same inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where findings go.
    #[arg(long, default_value_os_t = default_findings())]
    findings: PathBuf,
    /// One input running longer than this many seconds is a hang.
    #[arg(long, default_value_t = 20)]
    hang_after_s: u64,
    /// Inputs at most this long (below the target's own limit), to steer around a known
    /// finding.
    #[arg(long)]
    max_len: Option<usize>,
    /// Run these files once each instead of fuzzing (a finding's .bin, say).
    #[arg(long, num_args = 1..)]
    replay: Vec<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

fn default_findings() -> PathBuf {
    // The workspace's target/, beside fuzz/.
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    fuzz.parent().unwrap_or(fuzz).join("target/fuzz-findings")
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.target == "list" {
        for t in targets::all() {
            println!("{:24} {}", t.name, t.entry);
        }
        return ExitCode::SUCCESS;
    }
    let chosen: Vec<Target> = if args.target == "all" {
        targets::all()
    } else {
        match targets::find(&args.target) {
            Some(t) => vec![t],
            None => {
                eprintln!(
                    "no target {:?}; `metaclinic-fuzz list` names them",
                    args.target
                );
                return ExitCode::from(2);
            }
        }
    };
    let opts = Options {
        seconds: args.seconds.or(args.runs.is_none().then_some(10.0)),
        runs: args.runs,
        seed: args.seed,
        findings: args.findings,
        progress: !args.quiet,
        hang_after: Duration::from_secs(args.hang_after_s),
        max_len: args.max_len,
    };
    if !args.replay.is_empty() {
        return replay(&chosen, &opts, &args.replay);
    }
    println!(
        "{:24} {:>12} {:>10} {:>9} {:>7}  result",
        "target", "executions", "exec/s", "seconds", "corpus"
    );
    let mut failed = 0;
    for target in &chosen {
        let report = engine::run(target, &opts);
        let result = match &report.finding {
            None => "ok".to_owned(),
            Some(f) => {
                failed += 1;
                format!("FINDING: {}", f.input.display())
            }
        };
        println!(
            "{:24} {:>12} {:>10.0} {:>9.1} {:>7}  {result}",
            report.target,
            report.execs,
            report.per_second(),
            report.elapsed.as_secs_f64(),
            report.corpus
        );
        if let Some(f) = &report.finding {
            eprintln!(
                "{}\n  details: {}",
                f.panic.summary(),
                f.input.with_extension("txt").display()
            );
        }
    }
    if failed > 0 {
        eprintln!(
            "{failed} target(s) found something; inputs under {}",
            opts.findings.display()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn replay(chosen: &[Target], opts: &Options, files: &[PathBuf]) -> ExitCode {
    let [target] = chosen else {
        eprintln!("--replay takes one target");
        return ExitCode::from(2);
    };
    let mut failed = false;
    for (file, result) in engine::replay(target, opts, files) {
        match result {
            Ok(_) => println!("{}: no panic", file.display()),
            Err(caught) => {
                failed = true;
                println!("{}: {}", file.display(), caught.summary());
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
