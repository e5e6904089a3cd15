//! The node registry in Redis, when several SFU nodes serve one deployment. Each node writes
//! its record (control URL, media address, load, draining) under a key that expires, and
//! renews it every heartbeat; signaling reads the records to place rooms. A node whose
//! record expired is dead: its rooms are placed again (signaling's `cluster`).
//!
//! The keys and the record are the protocol crate's (`metaclinic_protocol::registry`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use tracing::{info, warn};

use crate::config::SfuConfig;
use crate::node::Node;

pub use metaclinic_protocol::registry::{
    NodeRecord, RegistryKeys, connect_lazily, read_nodes, within,
};

/// How long the set of node ids lives without any heartbeat (every heartbeat renews it).
const NODE_SET_TTL: Duration = Duration::from_secs(24 * 3600);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A node's registration: heartbeats until stopped, then removes the record.
pub struct Registration {
    conn: ConnectionManager,
    keys: RegistryKeys,
    node: Arc<Node>,
    control_url: String,
    ttl: Duration,
}

impl Registration {
    pub fn new(node: Arc<Node>, config: &SfuConfig) -> redis::RedisResult<Registration> {
        let r = &config.redis;
        let ttl = Duration::from_millis(r.node_ttl_ms);
        Ok(Registration {
            conn: connect_lazily(&r.url, Duration::from_millis(r.heartbeat_interval_ms))?,
            keys: RegistryKeys::new(&r.key_prefix),
            node,
            control_url: config.control_url(),
            ttl,
        })
    }

    fn record(&self) -> NodeRecord {
        let info = self.node.info();
        NodeRecord {
            node: info.node,
            control_url: self.control_url.clone(),
            announced_ip: info.announced_ip,
            rooms: info.rooms,
            participants: info.participants,
            draining: info.draining,
            heartbeat_ms: unix_ms(),
        }
    }

    /// Write the record once.
    pub async fn heartbeat(&mut self) -> redis::RedisResult<()> {
        let record = self.record();
        let json = serde_json::to_string(&record).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "record", e.to_string()))
        })?;
        redis::pipe()
            .atomic()
            .pset_ex(
                self.keys.node(&record.node),
                json,
                self.ttl.as_millis() as u64,
            )
            .ignore()
            .sadd(self.keys.nodes(), &record.node)
            .ignore()
            .pexpire(self.keys.nodes(), NODE_SET_TTL.as_millis() as i64)
            .ignore()
            .query_async::<()>(&mut self.conn)
            .await
    }

    /// Heartbeat every `interval` until `stop` resolves; the node's readiness follows
    /// whether the registry can be written. Returns the registration (to deregister).
    pub async fn run(
        mut self,
        interval: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Self {
        tokio::pin!(stop);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut healthy = true;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = ticker.tick() => {}
            }
            let result = tokio::time::timeout(interval, self.heartbeat()).await;
            let ok = matches!(result, Ok(Ok(())));
            let metrics = self.node.metrics();
            metrics
                .registry_heartbeats
                .with_label_values(&[if ok { "ok" } else { "error" }])
                .inc();
            self.node.set_registry_reachable(ok);
            if ok != healthy {
                healthy = ok;
                if ok {
                    info!("node registry reachable again");
                } else {
                    warn!("cannot write the node registry (Redis); not ready");
                }
            }
        }
        self
    }

    /// Remove the record (the node is gone on purpose, not dead).
    pub async fn deregister(&mut self) {
        let id = self.node.config().node.id.clone();
        let removed = tokio::time::timeout(Duration::from_secs(2), async {
            redis::pipe()
                .del(self.keys.node(&id))
                .ignore()
                .srem(self.keys.nodes(), &id)
                .ignore()
                .query_async::<()>(&mut self.conn)
                .await
        })
        .await;
        if !matches!(removed, Ok(Ok(()))) {
            warn!("could not remove this node from the registry; it expires by itself");
        }
    }
}
