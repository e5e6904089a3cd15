//! MetaClinic signaling: the public control plane. Nobody joins a consultation without a
//! booked appointment.
//!
//! Layout:
//! - [`http`], [`session`], [`protocol`]: the public surface (axum; `/v1/ws` and friends).
//! - [`access`]: token -> identity -> appointment -> policy, the one path to a decision.
//! - [`identity`]: JWT verification against the identity provider's JWKS; `fhirUser`.
//! - [`booking`]: the hospital's booking system (FHIR R4 with SMART Backend Services, or files).
//! - [`fhir`], [`policy`]: the Appointment as we read it, and who may join as whom (pure).
//! - [`hub`], [`consultation`]: running consultations, lobby, host controls, hard stop.
//! - [`rooms`]: which kind of SFU room an appointment opens (consultation or shared).
//! - [`cluster`]: SFU nodes and room placement, in memory or shared through Redis.
//! - [`audit`]: the append-only, MAC-chained, checkpointed, durable audit log.
//! - [`server`], [`connections`], [`memory`], [`logs`]: what an outsider can hold or cause
//!   is bounded: connections and their header time, unjoined WebSockets per address, memory
//!   after bursts, log lines per source.
//! - [`config`], [`metrics`], [`state`], [`dev`]: the operator's side.
//! - [`web`]: the reference web client (`signaling/web/`), served at `/`.
//! - [`webhooks`]: signed events to the hospital's systems, and the FHIR write-back, fed by
//!   the audit log through a durable outbox.

pub mod access;
pub mod audit;
pub mod booking;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod consultation;
pub mod dev;
pub mod fhir;
pub mod home;
pub mod http;
pub mod hub;
pub mod ice;
pub mod identity;
pub mod logs;
pub mod memory;
pub mod metrics;
pub mod policy;
pub mod protocol;
pub mod rooms;
pub mod server;
pub mod session;
pub mod state;
pub mod web;
pub mod webhooks;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;

pub use config::SignalingConfig;
use state::{AppState, Deps};

/// Install the TLS crypto provider the HTTP clients use (ring, as the media stack does).
pub fn install_crypto_provider() {
    metaclinic_protocol::control::client::ensure_crypto_provider();
}

/// What `build` may be given instead of what the configuration says (tests, dev mode).
#[derive(Default)]
pub struct Overrides {
    pub booking: Option<Arc<dyn booking::BookingSystem>>,
    pub dev_issuer: Option<Arc<dev::DevIssuer>>,
}

fn identity_config(
    cfg: &SignalingConfig,
    dev: Option<&dev::DevIssuer>,
) -> identity::IdentityConfig {
    let id = &cfg.identity;
    let algorithms = id
        .algorithms
        .iter()
        .filter_map(|a| match a.as_str() {
            "RS256" => Some(identity::SigningAlg::RS256),
            "RS384" => Some(identity::SigningAlg::RS384),
            "ES256" => Some(identity::SigningAlg::ES256),
            "ES384" => Some(identity::SigningAlg::ES384),
            _ => None,
        })
        .collect();
    let mut out = identity::IdentityConfig {
        issuer: id.issuer.clone(),
        audience: id.audience.clone(),
        jwks_url: id.jwks_url.clone(),
        discovery_url: id.discovery_url.clone(),
        algorithms,
        leeway: Duration::from_secs(id.leeway_s),
        fhir_base: id.fhir_base.clone(),
        jwks_refresh_min_interval: Duration::from_secs(id.jwks_refresh_min_interval_s),
        dev_hs256_secret: None,
        http_timeout: Duration::from_millis(id.http_timeout_ms),
        accept_high_s: id.accept_high_s,
    };
    if let Some(d) = dev {
        // Dev mode: this service is its own issuer.
        out.issuer = d.issuer.clone();
        out.audience = dev::DEV_AUDIENCE.into();
        out.jwks_url = Some(format!("{}/.well-known/jwks.json", d.issuer));
        out.discovery_url = None;
        out.fhir_base = d.fhir_base.clone();
        out.algorithms = vec![identity::SigningAlg::ES256];
    }
    out
}

/// Assemble the service: identity, booking, audit, SFU nodes.
pub fn build(config: SignalingConfig, overrides: Overrides) -> anyhow::Result<AppState> {
    install_crypto_provider();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_millis(
            config.booking.fhir.timeout_ms.max(500),
        ))
        .build()
        .context("building the HTTP client")?;
    let verifier =
        identity::Verifier::new(identity_config(&config, overrides.dev_issuer.as_deref()))
            .map_err(|e| anyhow::anyhow!("identity: {e}"))?;
    // The SMART client, shared by the booking reads and the FHIR write-back.
    let mut smart = None;
    let booking: Arc<dyn booking::BookingSystem> = match overrides.booking {
        Some(b) => b,
        None => match config.booking.backend {
            config::BookingBackend::Files => {
                Arc::new(booking::FileBooking::open(&config.booking.files.dir)?)
            }
            config::BookingBackend::Fhir => {
                let f = &config.booking.fhir;
                let pem = std::fs::read(&f.private_key_file).with_context(|| {
                    format!(
                        "booking.fhir.private_key_file: cannot read {}",
                        f.private_key_file.display()
                    )
                })?;
                let key = booking::ClientAssertionKey::from_pem(&pem, &f.algorithm, &f.key_id)
                    .map_err(|e| anyhow::anyhow!("booking.fhir.private_key_file: {e}"))?;
                let auth = Arc::new(booking::SmartAuth::new(
                    http.clone(),
                    &f.token_url,
                    &f.client_id,
                    &f.scope,
                    key,
                ));
                smart = Some(auth.clone());
                Arc::new(booking::FhirBooking::new(
                    http.clone(),
                    &f.base_url,
                    auth,
                    f.retries,
                ))
            }
        },
    };
    if let Some(dir) = config.audit.path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("audit.path: cannot create {}", dir.display()))?;
    }
    let audit = open_audit(&config)?;
    let metrics = metrics::Metrics::new();
    let refusals = Arc::new(audit::Refusals::new(
        audit.clone(),
        Duration::from_secs(config.audit.refusal_summary_interval_s),
        metrics.refusals_summarised.clone(),
    ));
    let p = &config.policy;
    let policy = policy::PolicyConfig {
        lead: chrono::Duration::minutes(p.lead_min as i64),
        grace: chrono::Duration::minutes(p.grace_min as i64),
        interpreters_direct: p.interpreters_direct,
    };
    type Shared = (Arc<dyn cluster::Cluster>, Arc<dyn home::Homes>, bool);
    let mut redis_connection = None;
    let (cluster, homes, shared): Shared = if config.redis.url.is_empty() {
        (
            Arc::new(cluster::fixed::FixedNodes::new(&config.sfu.nodes)),
            Arc::new(home::local::LocalHomes::default()),
            false,
        )
    } else {
        let c = cluster::redis::RedisCluster::new(&config.redis, &config.sfu.credential)
            .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
        c.spawn_watcher(Duration::from_millis(config.redis.registry_poll_ms));
        let replica = replica_id(&config.redis.replica_id);
        tracing::info!(replica = %replica, "signaling replica; consultations shared through Redis");
        mirror_checkpoints(&audit, c.connection(), &config);
        redis_connection = Some(c.connection());
        let homes = home::redis::RedisHomes::start(
            &config.redis.url,
            c.connection(),
            &config.redis.key_prefix,
            &replica,
            Duration::from_millis(config.redis.timeout_ms),
        )
        .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
        (c, homes, true)
    };
    let webhooks = webhooks::Pipeline::build(&config, redis_connection, smart, &metrics.registry)?;
    let addresses = connections::ClientAddresses::new(&config.http.trusted_proxies);
    let unjoined = connections::Unjoined::new(config.limits.max_unjoined_per_address);
    Ok(Arc::new(Deps {
        cluster,
        shared,
        homes,
        config,
        policy,
        verifier,
        booking,
        audit,
        refusals,
        addresses,
        unjoined,
        trimmer: Arc::default(),
        hub: hub::Hub::default(),
        webhooks,
        metrics,
        clock: state::Clock::default(),
        sessions: Default::default(),
        draining: Default::default(),
    }))
}

/// Serve until `shutdown` resolves, then drain: refuse new WebSockets (503 `draining`,
/// `/readyz` 503), tell every client to reconnect (to another replica), and return once they
/// are gone or `drain.deadline_s` passed. Alone (no shared state), the consultations end
/// with it.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    dev: Option<Arc<dev::DevIssuer>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tokio::spawn(hub::follow_lost_nodes(Arc::downgrade(&state)));
    tokio::spawn(hub::keep_homes(Arc::downgrade(&state)));
    tokio::spawn(home::serve_incoming(Arc::downgrade(&state)));
    tokio::spawn(audit::Refusals::run(Arc::downgrade(&state.refusals)));
    tokio::spawn(memory::Trimmer::run(Arc::downgrade(&state.trimmer)));
    if let Some(w) = &state.webhooks {
        w.start(&state);
    }
    let app = http::router(state.clone(), http::Dev(dev));
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_state = state.clone();
    let graceful = async move {
        shutdown.await;
        drain(&drain_state).await;
        let _ = drained_tx.send(());
    };
    let limits = server::Limits {
        header_read_timeout: Duration::from_millis(state.config.http.header_read_timeout_ms),
        max_connections: server::connection_cap(state.config.http.max_connections),
    };
    let server = server::serve(
        listener,
        app,
        limits,
        state.metrics.clone(),
        state.trimmer.clone(),
        graceful,
    );
    tokio::select! {
        () = server => {}
        // Connections that outstay the drain (a client that never closes) do not hold the
        // process: a short while after the drain, it returns anyway.
        _ = async {
            let _ = drained_rx.await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        } => {}
    }
    // What the last interval counted of refused clients is audited before the end.
    if let Err(e) = state.refusals.flush().await {
        tracing::warn!("writing the summary of refusals: {e}");
    }
    Ok(())
}

async fn drain(state: &AppState) {
    state.draining.store(true, Ordering::SeqCst);
    state.metrics.draining.set(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(state.config.drain.deadline_s);
    let after_ms = state.config.drain.reconnect_after_ms;
    tracing::info!(
        sessions = state.sessions.load(Ordering::SeqCst),
        "draining: no new WebSockets; asking clients to reconnect"
    );
    if state.shared {
        // Other replicas continue this one's consultations from their snapshots; clients
        // connected here whose consultations run elsewhere reconnect to another replica.
        let mut told = state.homes.drain(after_ms).await;
        told += state.hub.hand_over_all(state, after_ms).await;
        state
            .metrics
            .reconnect_hints
            .with_label_values(&["drain"])
            .inc_by(told as u64);
    }
    loop {
        // Again each round: a session that was still joining lands in a consultation later.
        let told = state.hub.ask_all_to_reconnect(after_ms).await;
        state
            .metrics
            .reconnect_hints
            .with_label_values(&["drain"])
            .inc_by(told as u64);
        let open = state.sessions.load(Ordering::SeqCst);
        if open == 0 {
            tracing::info!("drained: no WebSockets left");
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(sessions = open, "drain deadline passed; closing");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !state.shared {
        // Nobody else holds these consultations: they end with this process.
        state.hub.finish_all(state).await;
    }
}

/// The audit log, MAC'd with the configured key and checkpointed where configured.
fn open_audit(config: &SignalingConfig) -> anyhow::Result<audit::AuditLog> {
    let a = &config.audit;
    let key = if config.dev.enabled {
        // Dev mode makes its own key (beside the log unless configured), once.
        let path = dev_audit_key(config);
        if path.exists() {
            audit::AuditKey::from_file(&path)
        } else {
            audit::AuditKey::create(&path).map_err(|e| format!("{}: {e}", path.display()))
        }
    } else {
        audit::AuditKey::from_file(&a.key_file)
    }
    .map_err(|e| anyhow::anyhow!("audit.key_file: {e}"))?;
    let checkpoint = a.checkpoint_path();
    if let Some(dir) = checkpoint.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("audit.checkpoint_path: cannot create {}", dir.display()))?;
    }
    audit::AuditLog::open(&a.path, key, &checkpoint).map_err(|e| anyhow::anyhow!("audit: {e}"))
}

/// The audit key dev mode uses: as configured, or `<audit.path>.key`.
pub fn dev_audit_key(config: &SignalingConfig) -> std::path::PathBuf {
    if config.audit.key_file.as_os_str().is_empty() {
        let mut p = config.audit.path.clone().into_os_string();
        p.push(".key");
        p.into()
    } else {
        config.audit.key_file.clone()
    }
}

/// One failure to copy checkpoints to Redis per interval reaches the log.
static MIRROR_ERRORS: logs::Limiter = logs::Limiter::new(Duration::from_secs(60));

/// How long Redis keeps a replica's last checkpoint after its last write (every key of ours
/// expires; a replica gone for longer has had its log checked, or archived, by then).
const CHECKPOINT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// With Redis, every checkpoint is also stored there (latest wins), apart from the disk the
/// log is on: someone who can rewrite both files still cannot roll this copy back.
fn mirror_checkpoints(
    audit: &audit::AuditLog,
    mut redis: redis::aio::ConnectionManager,
    config: &SignalingConfig,
) {
    let key = audit::checkpoint::redis_key(&config.redis.key_prefix, &config.audit.path);
    let mut checkpoints = audit.checkpoints();
    tokio::spawn(async move {
        while checkpoints.changed().await.is_ok() {
            let Some(latest) = checkpoints.borrow_and_update().clone() else {
                continue;
            };
            let stored: redis::RedisResult<()> = redis::cmd("SET")
                .arg(&key)
                .arg(latest.trim_end())
                .arg("EX")
                .arg(CHECKPOINT_TTL.as_secs())
                .query_async(&mut redis)
                .await;
            if let Err(e) = stored
                && let Some(suppressed) = MIRROR_ERRORS.check("redis", std::time::Instant::now())
            {
                // The next checkpoint tries again; the file copy is written regardless.
                tracing::warn!(suppressed, "storing the audit checkpoint in Redis: {e}");
            }
        }
    });
}

/// This replica's id: configured, or the host name (the pod's, on Kubernetes) with a random
/// suffix, so a restarted replica never mistakes an old lease for its own.
fn replica_id(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "signaling".into());
    let suffix: u32 = rand::random();
    format!("{host}-{suffix:08x}")
}
