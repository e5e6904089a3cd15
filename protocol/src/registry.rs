//! The node registry's schema in Redis, shared by its writers (each SFU node) and its
//! readers (signaling's placement).
//!
//! Keys (all under the configured prefix, all with a TTL):
//! - `{prefix}sfu:nodes`: a set of the node ids that registered (a day, renewed).
//! - `{prefix}sfu:node:{id}`: the node's [`NodeRecord`] as JSON (`redis.node_ttl_ms`).
//!
//! No credential ever goes to Redis: signaling holds the service credential itself.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

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
