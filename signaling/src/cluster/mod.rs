//! Where rooms run: the SFU nodes signaling knows, and which node carries which room. One
//! interface, two implementations:
//! - [`fixed::FixedNodes`]: the configured `sfu.nodes`, polled for load, placements in memory
//!   (one signaling process: the single-node default and dev mode).
//! - [`redis::RedisCluster`]: SFU nodes register themselves in Redis with heartbeats
//!   (`metaclinic_protocol::registry`); placements are claimed atomically in Redis, so two
//!   signaling replicas never put one room on two nodes.
//!
//! Either way a node that is lost (unreachable, or its heartbeats stopped) is announced on
//! [`Cluster::lost_nodes`]; the hub places its rooms again and tells their clients to
//! reconnect.

pub mod fixed;
pub mod redis;

use std::time::Duration;

use futures_util::future::BoxFuture;
use metaclinic_protocol::control::client::SfuControl;
use tokio::sync::broadcast;

/// A node a room is placed on, with a client of its control API.
#[derive(Clone)]
pub struct PlacedNode {
    pub id: String,
    pub control: SfuControl,
}

impl std::fmt::Debug for PlacedNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlacedNode").field("id", &self.id).finish()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    #[error("no SFU node is available")]
    NoNode,
    #[error("the shared state (Redis) is unavailable: {0}")]
    Store(String),
}

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub participants: usize,
    pub rooms: usize,
}

/// The least loaded candidates (fewest participants, then rooms), ordered by id; `turn`
/// picks among equals, so rooms placed between two load reports still spread.
pub fn choose(mut candidates: Vec<Candidate>, turn: u64) -> Option<Candidate> {
    let best = candidates.iter().map(|c| (c.participants, c.rooms)).min()?;
    candidates.retain(|c| (c.participants, c.rooms) == best);
    candidates.sort_by(|a, b| a.id.cmp(&b.id));
    let i = (turn % candidates.len() as u64) as usize;
    Some(candidates.swap_remove(i))
}

pub trait Cluster: Send + Sync {
    /// The node carrying `room`: the one it is placed on, else a live, non-draining node
    /// claimed for it now (for `ttl`). Concurrent calls for one room agree on one node.
    fn place<'a>(
        &'a self,
        room: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<PlacedNode, ClusterError>>;

    /// `room` was on `lost` (dead, or refusing new rooms): place it on another node. Whoever
    /// asks first moves it; later callers get the same new node.
    fn replace<'a>(
        &'a self,
        room: &'a str,
        lost: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<PlacedNode, ClusterError>>;

    /// The room ended: forget its placement (if it is still on `node`).
    fn release<'a>(&'a self, room: &'a str, node: &'a str) -> BoxFuture<'a, ()>;

    /// `node` did not answer: take it out of placement and announce it lost.
    fn node_unreachable<'a>(&'a self, node: &'a str) -> BoxFuture<'a, ()>;

    /// Nodes found lost from now on.
    fn lost_nodes(&self) -> broadcast::Receiver<String>;

    /// Whether the shared state answers (`/readyz`); the in-memory one always does.
    fn ready(&self) -> BoxFuture<'_, Result<(), &'static str>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, participants: usize, rooms: usize) -> Candidate {
        Candidate {
            id: id.into(),
            participants,
            rooms,
        }
    }

    #[test]
    fn the_least_loaded_node_wins_and_equals_take_turns() {
        let nodes = vec![c("b", 3, 1), c("a", 1, 5), c("c", 1, 2)];
        assert_eq!(choose(nodes.clone(), 0).unwrap().id, "c");
        assert_eq!(choose(nodes, 7).unwrap().id, "c");
        let equal = vec![c("b", 0, 0), c("a", 0, 0)];
        let picks: Vec<String> = (0..4)
            .map(|t| choose(equal.clone(), t).unwrap().id)
            .collect();
        assert_eq!(picks, ["a", "b", "a", "b"]);
        assert!(choose(Vec::new(), 0).is_none());
    }
}
