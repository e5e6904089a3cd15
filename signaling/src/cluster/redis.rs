//! Placement shared through Redis: SFU nodes come from the registry they heartbeat into
//! (`metaclinic_protocol::registry`), and a room's node is claimed with one Lua script, so
//! replicas racing for a room agree on whichever claim landed first.
//!
//! Keys, under `redis.key_prefix` (each with a TTL):
//! - `{prefix}room:{room}`: the id of the node carrying the room (the consultation's span).
//! - `{prefix}placement:turn`: a counter that spreads rooms over equally loaded nodes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use metaclinic_protocol::control::client::SfuControl;
use metaclinic_protocol::registry::{self, NodeRecord, RegistryKeys};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio::sync::broadcast;
use tracing::{info, warn};

use super::{Candidate, Cluster, ClusterError, PlacedNode, choose};
use crate::config::RedisSection;

/// Set the room's node to `ARGV[2]` if it is unplaced or still on `ARGV[1]` (the node being
/// replaced, or "" for a first placement); answer the node it is on afterwards.
const CLAIM: &str = r#"
local current = redis.call('GET', KEYS[1])
if (not current) or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return ARGV[2]
end
return current
"#;

/// Delete KEYS[1] only if it still holds ARGV[1]: a placement that still names this node,
/// a lease that is still this replica's (also used by `home::redis`).
pub(crate) const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// The turn counter lives this long without placements.
const TURN_TTL_MS: i64 = 24 * 3600 * 1000;

pub struct RedisCluster {
    conn: ConnectionManager,
    prefix: String,
    registry: RegistryKeys,
    credential: String,
    claim: redis::Script,
    release: redis::Script,
    lost: broadcast::Sender<String>,
    /// Control clients by node id (they keep their connection pools).
    clients: Mutex<Vec<PlacedNode>>,
    timeout: Duration,
}

fn store_error(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Store(e.to_string())
}

impl RedisCluster {
    pub fn new(cfg: &RedisSection, credential: &str) -> Result<Arc<RedisCluster>, ClusterError> {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let conn = registry::connect_lazily(&cfg.url, timeout).map_err(store_error)?;
        Ok(Arc::new(RedisCluster {
            conn,
            prefix: cfg.key_prefix.clone(),
            registry: RegistryKeys::new(&cfg.key_prefix),
            credential: credential.to_owned(),
            claim: redis::Script::new(CLAIM),
            release: redis::Script::new(RELEASE),
            lost: broadcast::channel(64).0,
            clients: Mutex::default(),
            timeout,
        }))
    }

    /// A connection to the same Redis (the shared consultation state uses it too).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn room_key(&self, room: &str) -> String {
        format!("{}room:{room}", self.prefix)
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ClusterError> {
        metaclinic_protocol::registry::within(self.timeout, f)
            .await
            .map_err(ClusterError::Store)
    }

    async fn nodes(&self) -> Result<(Vec<NodeRecord>, Vec<String>), ClusterError> {
        let mut conn = self.conn.clone();
        self.bounded(registry::read_nodes(&mut conn, &self.registry))
            .await
    }

    fn client(&self, record: &NodeRecord) -> PlacedNode {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients
            .iter()
            .find(|c| c.id == record.node && c.control.base() == record.control_url)
        {
            return c.clone();
        }
        clients.retain(|c| c.id != record.node);
        let c = PlacedNode {
            id: record.node.clone(),
            control: SfuControl::new(&record.control_url, &self.credential),
        };
        clients.push(c.clone());
        c
    }

    async fn claim(
        &self,
        room: &str,
        expected: &str,
        live: &[NodeRecord],
        ttl: Duration,
    ) -> Result<PlacedNode, ClusterError> {
        let candidates: Vec<Candidate> = live
            .iter()
            .filter(|r| !r.draining && r.node != expected)
            .map(|r| Candidate {
                id: r.node.clone(),
                participants: r.participants,
                rooms: r.rooms,
            })
            .collect();
        let mut conn = self.conn.clone();
        let turn_key = format!("{}placement:turn", self.prefix);
        let turn: u64 = self
            .bounded(async {
                let (t,): (u64,) = redis::pipe()
                    .atomic()
                    .incr(&turn_key, 1)
                    .pexpire(&turn_key, TURN_TTL_MS)
                    .ignore()
                    .query_async(&mut conn)
                    .await?;
                Ok(t)
            })
            .await?;
        let chosen = choose(candidates, turn).ok_or(ClusterError::NoNode)?;
        let winner: String = self
            .bounded(
                self.claim
                    .key(self.room_key(room))
                    .arg(expected)
                    .arg(&chosen.id)
                    .arg(ttl.as_millis().max(1000) as u64)
                    .invoke_async(&mut conn),
            )
            .await?;
        if winner != chosen.id {
            info!(room, node = %winner, "room already placed by another replica");
        }
        live.iter()
            .find(|r| r.node == winner)
            .map(|r| self.client(r))
            .ok_or(ClusterError::NoNode)
    }

    /// Watch the registry: every node that was live and no longer is (its heartbeats stopped,
    /// or it left) is announced lost. Runs until the cluster is dropped.
    pub fn spawn_watcher(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut live: HashSet<String> = HashSet::new();
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(cluster) = weak.upgrade() else {
                    return;
                };
                let (records, dead) = match cluster.nodes().await {
                    Ok(n) => n,
                    Err(e) => {
                        warn!("reading the node registry: {e}");
                        continue;
                    }
                };
                let now: HashSet<String> = records.iter().map(|r| r.node.clone()).collect();
                for gone in live.difference(&now) {
                    warn!(node = %gone, "SFU node left the registry; its rooms move");
                    let _ = cluster.lost.send(gone.clone());
                }
                if !dead.is_empty() {
                    // Expired records: drop their ids so the set holds live nodes only.
                    let mut conn = cluster.conn.clone();
                    let _ = cluster
                        .bounded(conn.srem::<_, _, ()>(cluster.registry.nodes(), &dead))
                        .await;
                }
                live = now;
            }
        });
    }
}

impl Cluster for RedisCluster {
    fn place<'a>(
        &'a self,
        room: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<PlacedNode, ClusterError>> {
        async move {
            let (live, _) = self.nodes().await?;
            let mut conn = self.conn.clone();
            let current: Option<String> = self.bounded(conn.get(self.room_key(room))).await?;
            match current {
                Some(id) => match live.iter().find(|r| r.node == id) {
                    Some(r) => Ok(self.client(r)),
                    // Placed on a node that is gone: move it.
                    None => self.claim(room, &id, &live, ttl).await,
                },
                None => self.claim(room, "", &live, ttl).await,
            }
        }
        .boxed()
    }

    fn replace<'a>(
        &'a self,
        room: &'a str,
        lost: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<PlacedNode, ClusterError>> {
        async move {
            let (live, _) = self.nodes().await?;
            self.claim(room, lost, &live, ttl).await
        }
        .boxed()
    }

    fn release<'a>(&'a self, room: &'a str, node: &'a str) -> BoxFuture<'a, ()> {
        async move {
            let mut conn = self.conn.clone();
            let released = self
                .bounded(
                    self.release
                        .key(self.room_key(room))
                        .arg(node)
                        .invoke_async::<i64>(&mut conn),
                )
                .await;
            if let Err(e) = released {
                // The key expires by itself.
                warn!(room, "releasing the placement: {e}");
            }
        }
        .boxed()
    }

    fn node_unreachable<'a>(&'a self, node: &'a str) -> BoxFuture<'a, ()> {
        async move {
            // Its record goes now rather than at its TTL; a live node writes it back at its
            // next heartbeat.
            let mut conn = self.conn.clone();
            let _ = self
                .bounded(conn.del::<_, ()>(self.registry.node(node)))
                .await;
            let _ = self.lost.send(node.to_owned());
        }
        .boxed()
    }

    fn lost_nodes(&self) -> broadcast::Receiver<String> {
        self.lost.subscribe()
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), &'static str>> {
        async move {
            let mut conn = self.conn.clone();
            match self
                .bounded(redis::cmd("PING").query_async::<String>(&mut conn))
                .await
            {
                Ok(_) => Ok(()),
                Err(_) => Err("redis_unreachable"),
            }
        }
        .boxed()
    }
}
