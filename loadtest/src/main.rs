//! `loadtest`: real WebRTC participants against a MetaClinic deployment, and the reports
//! that say where the SFU stands.

use clap::{Parser, Subcommand};
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
    /// Forwarding benchmark: an SFU child process, rooms of publishers and subscribers, CPU
    /// per forwarded packet, loss and latency. Ends with one JSON line.
    Forward(forward::ForwardArgs),
    /// One participant joins a consultation through signaling (a dev token by default),
    /// sends a tone and prints what it hears: try `metaclinic dev` from a terminal.
    Join(join::JoinArgs),
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
    match cli.command {
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
        Command::Join(args) => {
            let outcome = runtime.block_on(join::run(args, |line| println!("{line}")))?;
            println!("session ended: {}", outcome.ended);
        }
    }
    Ok(())
}
