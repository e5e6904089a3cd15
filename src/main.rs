//! `metaclinic`: the product's one binary.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// `metaclinic --version`: the release and the source revision it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("METACLINIC_BUILD_REVISION"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "metaclinic",
    version = VERSION,
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
    /// Everything in one process for a laptop: signaling with demo appointments and a
    /// development token issuer, and an SFU node.
    Dev {
        /// Signaling configuration to start from (see config/dev.toml); dev settings win.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A folder of FHIR Appointment JSON files to use instead of fresh demo appointments.
        #[arg(long)]
        appointments: Option<PathBuf>,
    },
    /// Run an SFU node: media threads plus its internal control API.
    Sfu {
        /// TOML configuration (see config/sfu.toml); every key can also be set from the
        /// environment, e.g. METACLINIC_SFU__RTC__UDP_PORT=40000.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the public signaling service.
    Signaling {
        /// TOML configuration (see config/signaling.toml); keys also from the environment,
        /// e.g. METACLINIC_SIGNALING__HTTP__LISTEN=0.0.0.0:8080.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check an audit log's MAC chain against its key and checkpoint; exits non-zero at the
    /// first problem (an edited, forged or missing line, records cut off the end).
    Verify {
        /// The audit log (JSON Lines).
        path: PathBuf,
        #[command(flatten)]
        key: AuditKeyArgs,
        /// The log's checkpoint (audit.checkpoint_path); default: <path>.checkpoint.
        #[arg(long, conflicts_with = "no_checkpoint")]
        checkpoint: Option<PathBuf>,
        /// Check the chain alone: records cut off the end then go unnoticed.
        #[arg(long)]
        no_checkpoint: bool,
        /// Also compare the log with the checkpoint's copy in Redis (the service's redis.url):
        /// an older checkpoint file put back together with a log cut to match it passes the
        /// file, not the copy.
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
        /// The service's redis.key_prefix.
        #[arg(long, default_value = "metaclinic:")]
        redis_key_prefix: String,
    },
    /// Write the log's records as FHIR R4 AuditEvents (IHE BALP), one JSON per line
    /// (NDJSON), to stdout: what the FHIR write-back sends.
    Export {
        /// The audit log (JSON Lines).
        path: PathBuf,
        /// As FHIR AuditEvents (the one format there is).
        #[arg(long, required = true)]
        fhir: bool,
    },
    /// Check a log without its checkpoint, then write a new checkpoint for it (after the
    /// checkpoint file was lost; the service refuses to continue a MAC'd log without one).
    Checkpoint {
        /// The audit log (JSON Lines).
        path: PathBuf,
        #[command(flatten)]
        key: AuditKeyArgs,
        /// Where to write it (audit.checkpoint_path); default: <path>.checkpoint.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct AuditKeyArgs {
    /// The log's MAC key (audit.key_file).
    #[arg(long, env = "METACLINIC_AUDIT_KEY_FILE")]
    key_file: Option<PathBuf>,
}

fn init_logs(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("METACLINIC_LOG").unwrap_or_else(|_| {
            // sofar warns about harmless layout quirks of the KEMAR SOFA file at every load.
            tracing_subscriber::EnvFilter::new(
                "info,rtc=warn,rtc_ice=warn,rtc_dtls=error,rtc_sctp=warn,sofar=error",
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
    if let Command::Audit { command } = &cli.command {
        return audit(command);
    }
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
        Command::Signaling { config } => {
            let config = metaclinic_signaling::SignalingConfig::load(config.as_deref())?;
            runtime.block_on(signaling(config))
        }
        Command::Dev {
            config,
            appointments,
        } => runtime.block_on(dev(config, appointments)),
        Command::Audit { .. } => unreachable!("handled above, before logging starts"),
    }
}

fn audit(command: &AuditCommand) -> anyhow::Result<()> {
    use metaclinic_signaling::audit::{self, AuditKey, VerifyOptions};
    let read_key = |args: &AuditKeyArgs| -> anyhow::Result<Option<AuditKey>> {
        args.key_file
            .as_deref()
            .map(|p| AuditKey::from_file(p).map_err(|e| anyhow::anyhow!("--key-file: {e}")))
            .transpose()
    };
    let beside = |path: &std::path::Path| {
        let mut p = path.as_os_str().to_owned();
        p.push(".checkpoint");
        PathBuf::from(p)
    };
    match command {
        AuditCommand::Verify {
            path,
            key,
            checkpoint,
            no_checkpoint,
            redis,
            redis_key_prefix,
        } => {
            let key = read_key(key)?;
            if let Some(url) = redis {
                // The copy in Redis, checked first; then the file as for any log.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let copy = runtime
                    .block_on(audit::checkpoint::from_redis(url, redis_key_prefix, path))
                    .map_err(|e| anyhow::anyhow!("--redis: {e}"))?;
                let file = std::env::temp_dir()
                    .join(format!("metaclinic-checkpoint-{}", std::process::id()));
                std::fs::write(&file, copy)?;
                let options = VerifyOptions {
                    key: key.as_ref(),
                    checkpoint: Some(&file),
                };
                let checked = audit::verify(path, &options);
                let _ = std::fs::remove_file(&file);
                match checked {
                    Ok(r) => println!(
                        "the checkpoint in Redis ({} records) matches the log",
                        r.checkpoint.map_or(0, |c| c.records)
                    ),
                    Err(e) => {
                        eprintln!("{} (against the checkpoint in Redis): {e}", path.display());
                        std::process::exit(1);
                    }
                }
            }
            let checkpoint = (!no_checkpoint).then(|| checkpoint.clone().unwrap_or(beside(path)));
            let options = VerifyOptions {
                key: key.as_ref(),
                checkpoint: checkpoint.as_deref(),
            };
            match audit::verify(path, &options) {
                Ok(report) => {
                    println!(
                        "ok: {} records, chain intact, last mac {}",
                        report.records, report.last_hash
                    );
                    if let Some(cp) = &report.checkpoint {
                        println!(
                            "checkpoint of {}: {} records, matches the log",
                            cp.time, cp.records
                        );
                    } else {
                        println!("no checkpoint compared: records cut off the end would not show");
                    }
                    if report.legacy_records > 0 {
                        println!(
                            "{} records from before the log had a key (plain hashes)",
                            report.legacy_records
                        );
                    }
                    Ok(())
                }
                Err(e) => {
                    eprintln!("{}: {e}", path.display());
                    std::process::exit(1);
                }
            }
        }
        AuditCommand::Export { path, fhir: _ } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let written = metaclinic_signaling::fhir::audit_event::export_ndjson(path, &mut out)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            std::io::Write::flush(&mut out)?;
            eprintln!("{written} AuditEvents written");
            Ok(())
        }
        AuditCommand::Checkpoint {
            path,
            key,
            checkpoint,
        } => {
            let key = read_key(key)?.context("--key-file is needed to sign the checkpoint")?;
            let at = checkpoint.clone().unwrap_or(beside(path));
            let options = VerifyOptions {
                key: Some(&key),
                checkpoint: None,
            };
            let report = audit::verify(path, &options)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let (records, last) = (report.records, &report.last_hash);
            audit::checkpoint::write_new(&at, &key, records, last, report.keyed_from)
                .with_context(|| format!("writing {}", at.display()))?;
            println!(
                "ok: {} records; checkpoint written to {}",
                report.records,
                at.display()
            );
            Ok(())
        }
    }
}

async fn signaling(config: metaclinic_signaling::SignalingConfig) -> anyhow::Result<()> {
    let listen = config.http.listen;
    let state = metaclinic_signaling::build(config, Default::default())?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {listen}"))?;
    tracing::info!(addr = %listener.local_addr()?, "signaling listening");
    metaclinic_signaling::serve(listener, state, None, shutdown_signal()).await
}

/// Dev mode: an in-process SFU node, signaling in front of it, demo appointments and the
/// development token issuer.
async fn dev(config: Option<PathBuf>, appointments: Option<PathBuf>) -> anyhow::Result<()> {
    use metaclinic_signaling::config::{BookingBackend, SfuNode};

    let data = std::env::temp_dir().join(format!("metaclinic-dev-{}", std::process::id()));
    let appointments = match appointments {
        Some(dir) => dir,
        None => {
            let dir = data.join("appointments");
            metaclinic_signaling::dev::write_demo_appointments(&dir, chrono::Utc::now())?;
            dir
        }
    };

    // The SFU node, its control API on a loopback port with a one-off credential.
    // Environment overrides (METACLINIC_SFU__RTC__UDP_PORT, ...) apply; the credential is
    // made up, since only this process talks to the node.
    let mut sfu = metaclinic_sfu::SfuConfig::extract(None)?;
    // Dev mode serves this machine (signaling is on loopback too): media binds to loopback
    // unless the environment says otherwise.
    if std::env::var_os("METACLINIC_SFU__RTC__BIND_IP").is_none() {
        sfu.rtc.bind_ip = std::net::Ipv4Addr::LOCALHOST.into();
    }
    sfu.control.credential = format!("dev-{}", uuid_like());
    sfu.validate()?;
    // A free loopback port unless one is asked for (a test that reads the node's metrics).
    let control_listen = match std::env::var_os("METACLINIC_SFU__CONTROL__LISTEN") {
        Some(_) => sfu.control.listen,
        None => std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
    };
    let control = tokio::net::TcpListener::bind(control_listen).await?;
    let control_addr = control.local_addr()?;
    let node = metaclinic_sfu::Node::start(sfu.clone()).context("starting the SFU node")?;
    tokio::spawn(metaclinic_sfu::control::http::serve(
        control,
        node.clone(),
        std::future::pending(),
    ));

    let mut cfg = metaclinic_signaling::SignalingConfig::extract(config.as_deref())?;
    cfg.dev.enabled = true;
    cfg.booking.backend = BookingBackend::Files;
    cfg.booking.files.dir = appointments.clone();
    if cfg.audit.path == metaclinic_signaling::config::AuditSection::default().path {
        cfg.audit.path = data.join("audit.jsonl");
    }
    // Dev mode makes the audit key (once) where it is configured or beside the log.
    cfg.audit.key_file = metaclinic_signaling::dev_audit_key(&cfg);
    cfg.sfu.nodes = vec![SfuNode {
        id: sfu.node.id.clone(),
        url: format!("http://{control_addr}"),
        credential: sfu.control.credential.clone(),
    }];
    cfg.validate()?;
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {}", cfg.http.listen))?;
    let public = cfg.http.public_url.clone();
    let issuer = Arc::new(metaclinic_signaling::dev::DevIssuer::new(&public)?);
    let audit_path = cfg.audit.path.clone();
    let audit_key = cfg.audit.key_file.clone();
    let state = metaclinic_signaling::build(
        cfg,
        metaclinic_signaling::Overrides {
            dev_issuer: Some(issuer.clone()),
            ..Default::default()
        },
    )?;
    print_dev_banner(
        &public,
        &appointments,
        (&audit_path, &audit_key),
        sfu.rtc.udp_port,
    );
    let result =
        metaclinic_signaling::serve(listener, state, Some(issuer), shutdown_signal()).await;
    let n = node.clone();
    tokio::task::spawn_blocking(move || n.shutdown()).await?;
    result
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", nanos, std::process::id())
}

fn print_dev_banner(
    public: &str,
    appointments: &std::path::Path,
    (audit, audit_key): (&std::path::Path, &std::path::Path),
    udp_port: u16,
) {
    println!(
        "\nMetaClinic dev mode\n\
         \x20 signaling    {public}  (WebSocket {public}/v1/ws, protocol: signaling/PROTOCOL.md)\n\
         \x20 media        UDP {udp_port} on this machine\n\
         \x20 appointments {}  (FHIR JSON; edit a status to \"cancelled\" to end a call)\n\
         \x20 audit log    {}  (check it: metaclinic audit verify --key-file {} <path>)\n\n\
         Open {public}/ in two browser windows: pick the doctor in one and the patient in\n\
         the other (the doctor lets the patient in from the waiting room).\n\n\
         Demo appointments: demo-consult, demo-interpreter-invite, demo-group (a shared room:\n\
         \x20 spatial audio, avatars on a map). Demo identities:\n",
        appointments.display(),
        audit.display(),
        audit_key.display()
    );
    for id in metaclinic_signaling::dev::DEMO_IDENTITIES {
        println!("  {:<28} {}", id.fhir_user, id.label);
    }
    println!(
        "\nA token for one:  curl -s -X POST {public}/dev/token -H 'content-type: application/json' \\\n\
         \x20                     -d '{{\"fhir_user\":\"Practitioner/dr-demo\"}}'\n\
         May they join?    curl -s {public}/v1/appointments/demo-consult/access -H \"authorization: Bearer $TOKEN\"\n"
    );
}
