//! The node registry in Redis, when several SFU nodes serve one deployment. Each node writes
//! its record (control URL, media address, load, draining) under a key that expires, and
//! renews it every heartbeat; signaling reads the records to place rooms. A node whose
//! record expired is dead: its rooms are placed again (signaling's `cluster`).
//!
//! Keys (all under the configured prefix, all with a TTL):
//! - `{prefix}sfu:nodes`: a set of the node ids that registered (a day, renewed).
//! - `{prefix}sfu:node:{id}`: the node's [`NodeRecord`] as JSON (`redis.node_ttl_ms`).
//!
//! No credential ever goes to Redis: signaling holds the service credential itself.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::SfuConfig;
use crate::node::Node;

/// How long the set of node ids lives without any heartbeat (every heartbeat renews it).
const NODE_SET_TTL: Duration = Duration::from_secs(24 * 3600);

/// Key names of the registry under one prefix (writers and readers share this).
#[derive(Debug, Clone)]
pub struct RegistryKeys {
    prefix: String,
}

impl RegistryKeys {
    pub fn new(prefix: &str) -> Self {
        RegistryKeys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn nodes(&self) -> String {
        format!("{}sfu:nodes", self.prefix)
    }

    pub fn node(&self, id: &str) -> String {
        format!("{}sfu:node:{id}", self.prefix)
    }
}

/// What a node tells the registry about itself at each heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    /// Where signaling reaches the node's control API.
    pub control_url: String,
    pub announced_ip: std::net::IpAddr,
    pub rooms: usize,
    pub participants: usize,
    /// Taking no new rooms.
    pub draining: bool,
    /// When this record was written, Unix milliseconds (for operators reading Redis).
    pub heartbeat_ms: u64,
}

/// A Redis command's answer, or why there is none: an error, or no answer within `timeout`
/// (a stalled Redis must not stall a join).
pub async fn within<T>(
    timeout: Duration,
    command: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, command).await {
        Ok(answer) => answer.map_err(|e| e.to_string()),
        Err(_) => Err("Redis did not answer in time".into()),
    }
}

/// A Redis connection that reconnects by itself, with bounded waits (a heartbeat must never
/// hang on a dead Redis).
pub fn connect_lazily(url: &str, timeout: Duration) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}

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

/// Read every live node's record; ids whose record expired are returned apart (dead).
pub async fn read_nodes(
    conn: &mut ConnectionManager,
    keys: &RegistryKeys,
) -> redis::RedisResult<(Vec<NodeRecord>, Vec<String>)> {
    let ids: Vec<String> = conn.smembers(keys.nodes()).await?;
    if ids.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let node_keys: Vec<String> = ids.iter().map(|id| keys.node(id)).collect();
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(&node_keys).query_async(conn).await?;
    let mut live = Vec::new();
    let mut dead = Vec::new();
    for (id, v) in ids.into_iter().zip(values) {
        match v.and_then(|j| serde_json::from_str::<NodeRecord>(&j).ok()) {
            Some(r) => live.push(r),
            None => dead.push(id),
        }
    }
    live.sort_by(|a, b| a.node.cmp(&b.node));
    Ok((live, dead))
}
