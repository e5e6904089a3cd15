//! What every request and session of the signaling service shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

use chrono::{DateTime, Utc};

use crate::audit::{AuditLog, Refusals};
use crate::booking::BookingSystem;
use crate::cluster::Cluster;
use crate::config::SignalingConfig;
use crate::connections::{ClientAddresses, Unjoined};
use crate::home::Homes;
use crate::hub::Hub;
use crate::identity::Verifier;
use crate::memory::Trimmer;
use crate::metrics::Metrics;
use crate::policy::PolicyConfig;

/// Wall-clock time, with an offset tests can move (appointment windows and hard stops are
/// tested without waiting for them).
#[derive(Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    pub fn advance(&self, by: chrono::Duration) {
        self.offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::Relaxed);
    }

    /// Make `now()` return about `t`.
    pub fn set(&self, t: DateTime<Utc>) {
        self.offset_ms
            .store((t - Utc::now()).num_milliseconds(), Ordering::Relaxed);
    }
}

pub struct Deps {
    pub config: SignalingConfig,
    pub policy: PolicyConfig,
    pub verifier: Verifier,
    pub booking: Arc<dyn BookingSystem>,
    pub audit: AuditLog,
    /// Refusals of unauthenticated clients, audited in summary.
    pub refusals: Arc<Refusals>,
    /// Who a request comes from (through the trusted proxies).
    pub addresses: ClientAddresses,
    /// WebSockets that have not joined yet, per client address.
    pub unjoined: Unjoined,
    /// Gives memory back after bursts of closed connections.
    pub trimmer: Arc<Trimmer>,
    /// SFU nodes and room placement: in memory, or shared through Redis.
    pub cluster: Arc<dyn Cluster>,
    /// Several replicas share the placement (Redis): a draining replica leaves its
    /// consultations running for the others.
    pub shared: bool,
    /// Which replica runs which consultation, and the pipes to it.
    pub homes: Arc<dyn Homes>,
    pub hub: Hub,
    /// Webhooks and the FHIR write-back, when configured.
    pub webhooks: Option<Arc<crate::webhooks::Pipeline>>,
    pub metrics: Metrics,
    pub clock: Clock,
    /// Open WebSocket sessions.
    pub sessions: AtomicUsize,
    /// Shutting down: no new sessions.
    pub draining: AtomicBool,
}

pub type AppState = Arc<Deps>;
