//! `metaclinic`: the product's one binary.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "metaclinic",
    version,
    about = "MetaClinic: real-time voice and video for telemedicine consultations"
)]
struct Cli {
    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(
        long,
        global = true,
        env = "METACLINIC_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run an SFU node: media threads plus its internal control API.
    Sfu {
        /// TOML configuration (see config/sfu.toml); every key can also be set from the
        /// environment, e.g. METACLINIC_SFU__RTC__UDP_PORT=40000.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn init_logs(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("METACLINIC_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "info,rtc=warn,rtc_ice=warn,rtc_dtls=error,rtc_sctp=warn",
            )
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler only fails outside a Tokio runtime");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Sfu { config } => {
            let config = metaclinic_sfu::SfuConfig::load(config.as_deref())?;
            runtime.block_on(metaclinic_sfu::run(config, shutdown_signal()))
        }
    }
}
