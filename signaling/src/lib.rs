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
//! - [`audit`]: the append-only, hash-chained, durable audit log.
//! - [`config`], [`metrics`], [`state`], [`dev`]: the operator's side.
//! - [`web`]: the reference web client (`signaling/web/`), served at `/`.

pub mod access;
pub mod audit;
pub mod booking;
pub mod cluster;
pub mod config;
pub mod consultation;
pub mod dev;
pub mod fhir;
pub mod home;
pub mod http;
pub mod hub;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod protocol;
pub mod rooms;
pub mod session;
pub mod state;
pub mod web;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;

pub use config::SignalingConfig;
use state::{AppState, Deps};

/// Install the TLS crypto provider the HTTP clients use (ring, as the media stack does).
pub fn install_crypto_provider() {
    metaclinic_sfu::control::client::ensure_crypto_provider();
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
    let audit = audit::AuditLog::open(&config.audit.path)
        .map_err(|e| anyhow::anyhow!("audit.path: {e}"))?;
    let p = &config.policy;
    let policy = policy::PolicyConfig {
        lead: chrono::Duration::minutes(p.lead_min as i64),
        grace: chrono::Duration::minutes(p.grace_min as i64),
        interpreters_direct: p.interpreters_direct,
    };
    type Shared = (Arc<dyn cluster::Cluster>, Arc<dyn home::Homes>, bool);
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
    Ok(Arc::new(Deps {
        cluster,
        shared,
        homes,
        config,
        policy,
        verifier,
        booking,
        audit,
        hub: hub::Hub::default(),
        metrics: metrics::Metrics::new(),
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
    let app = http::router(state.clone(), http::Dev(dev));
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_state = state.clone();
    let graceful = async move {
        shutdown.await;
        drain(&drain_state).await;
        let _ = drained_tx.send(());
    };
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(graceful);
    tokio::select! {
        served = server => served.context("serving HTTP")?,
        // Connections that outstay the drain (a client that never closes) do not hold the
        // process: a short while after the drain, it returns anyway.
        _ = async {
            let _ = drained_rx.await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        } => {}
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
