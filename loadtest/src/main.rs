//! `loadtest`: real WebRTC participants against a MetaClinic deployment, and the reports
//! that say where the SFU stands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use metaclinic_loadtest::load::{self, LoadArgs};
use metaclinic_loadtest::{forward, join};

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Load and benchmark MetaClinic with real WebRTC participants"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consultations through signaling: per room a doctor who admits a patient from the
    /// lobby, both talking (speech with pauses) and sending video.
    Consult(LoadArgs),
    /// Three-way consultations: doctor, patient and interpreter per room.
    Interpreter(LoadArgs),
    /// One shared room of walking, talking avatars (spatial audio mixed by the SFU).
    SharedRoom(LoadArgs),
    /// Add consultations step by step until quality breaks; reports the last good step.
    Ramp(LoadArgs),
    /// Write the appointments a run uses (consultations, and the shared room's group
    /// session) into a folder, for a `metaclinic dev --appointments DIR` started by hand
    /// (then run with --url).
    Appointments(AppointmentsArgs),
    /// Forwarding benchmark: an SFU child process, rooms of publishers and subscribers, CPU
    /// per forwarded packet, loss and latency. Ends with one JSON line.
    Forward(forward::ForwardArgs),
    /// The forwarding benchmark's shape against a running Janus VideoRoom (the reference
    /// SFU), for CPU per forwarded packet side by side. Ends with one JSON line.
    JanusForward(metaclinic_loadtest::janus::JanusForwardArgs),
    /// One participant joins a consultation through signaling (a dev token by default),
    /// sends a tone and prints what it hears: try `metaclinic dev` from a terminal.
    Join(join::JoinArgs),
}

#[derive(clap::Args)]
struct AppointmentsArgs {
    /// The folder to write into (created if missing).
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Three-way: an interpreter in every appointment.
    #[arg(long)]
    interpreter: bool,
    /// People in the shared room's appointment (`lt-hall`: its host and avatars); 0 for none.
    #[arg(long, default_value_t = 0)]
    avatars: usize,
    /// Minutes from now the appointments end.
    #[arg(long, default_value_t = 60)]
    minutes: i64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOADTEST_LOG")
                .unwrap_or_else(|_| "warn,rtc=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let scenario = |args: LoadArgs, report: anyhow::Result<load::report::Report>| {
        let report = report?;
        println!("{}", load::report::summary(&report));
        load::write_outputs(&args, &report)?;
        anyhow::Ok(())
    };
    match cli.command {
        Command::Consult(args) => scenario(
            args.clone(),
            runtime.block_on(load::consult::run(args, false)),
        )?,
        Command::Interpreter(args) => scenario(
            args.clone(),
            runtime.block_on(load::consult::run(args, true)),
        )?,
        Command::SharedRoom(args) => {
            scenario(args.clone(), runtime.block_on(load::shared::run(args)))?
        }
        Command::Ramp(args) => scenario(args.clone(), runtime.block_on(load::ramp::run(args)))?,
        Command::Appointments(a) => {
            anyhow::ensure!(
                a.rooms <= load::HARD_CAP,
                "--rooms must be at most {}",
                load::HARD_CAP
            );
            std::fs::create_dir_all(&a.dir)?;
            let patterns = load::rooms::RoomPatterns::default();
            for n in 0..a.rooms {
                load::rooms::write_appointment(
                    &a.dir,
                    &patterns.room(n, a.interpreter),
                    a.minutes,
                )?;
            }
            if a.avatars > 0 {
                anyhow::ensure!(
                    (2..=load::HARD_CAP).contains(&a.avatars),
                    "--avatars must be 2..={}",
                    load::HARD_CAP
                );
                use load::rooms::{AVATAR_PATTERN, SHARED_APPOINTMENT, SHARED_HOST, SharedPlan};
                let plan =
                    SharedPlan::new(SHARED_APPOINTMENT, SHARED_HOST, AVATAR_PATTERN, a.avatars)?;
                load::rooms::write_shared_appointment(&a.dir, &plan, a.minutes)?;
                println!("shared room {SHARED_APPOINTMENT} for {} avatars", a.avatars);
            }
            println!("{} appointments in {}", a.rooms, a.dir.display());
        }
        Command::Forward(args) => {
            let json_path = args.json.clone();
            let report = runtime.block_on(forward::run(args))?;
            let json = serde_json::to_string(&report)?;
            println!("{}", forward::summary(&report));
            if let Some(p) = json_path {
                std::fs::write(&p, format!("{json}\n"))?;
            }
            println!("{json}");
        }
        Command::JanusForward(args) => {
            let json_path = args.json.clone();
            let report = runtime.block_on(metaclinic_loadtest::janus::run(args))?;
            let json = serde_json::to_string(&report)?;
            println!(
                "janus: {:.2} us per forwarded packet ({} packets, {:.1}% loss, latency p50 {:.2} ms)",
                report.cpu_us_per_fwd_pkt,
                report.received_pkts,
                report.loss_pct,
                report.latency_ms_p50
            );
            if let Some(p) = json_path {
                std::fs::write(&p, format!("{json}\n"))?;
            }
            println!("{json}");
        }
        Command::Join(args) => {
            let outcome = runtime.block_on(join::run(args, |line| println!("{line}")))?;
            println!("session ended: {}", outcome.ended);
        }
    }
    Ok(())
}
