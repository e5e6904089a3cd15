//! The configured SFU nodes (`sfu.nodes`), polled for their load when a room is placed;
//! placements live in this process. The default for one signaling process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use metaclinic_protocol::control::client::SfuControl;
use tokio::sync::broadcast;
use tracing::warn;

use super::{Candidate, Cluster, ClusterError, PlacedNode, choose};
use crate::config::SfuNode;

/// How long a node's load report may take before the node is passed over.
const POLL_TIMEOUT: Duration = Duration::from_secs(2);

pub struct FixedNodes {
    nodes: Vec<PlacedNode>,
    placements: Mutex<HashMap<String, String>>,
    turn: AtomicU64,
    lost: broadcast::Sender<String>,
}

impl FixedNodes {
    pub fn new(nodes: &[SfuNode]) -> FixedNodes {
        FixedNodes {
            nodes: nodes
                .iter()
                .map(|n| PlacedNode {
                    id: n.id.clone(),
                    control: SfuControl::new(&n.url, &n.credential),
                })
                .collect(),
            placements: Mutex::default(),
            turn: AtomicU64::new(0),
            lost: broadcast::channel(64).0,
        }
    }

    fn placements(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // Single inserts and removes: a poisoned map is still whole.
        self.placements.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn node(&self, id: &str) -> Option<PlacedNode> {
        self.nodes.iter().find(|n| n.id == id).cloned()
    }

    /// The reachable, non-draining nodes with their load, except `avoid`.
    async fn candidates(&self, avoid: Option<&str>) -> Vec<Candidate> {
        let polls = self
            .nodes
            .iter()
            .filter(|n| Some(n.id.as_str()) != avoid)
            .map(|n| async move {
                match tokio::time::timeout(POLL_TIMEOUT, n.control.node()).await {
                    Ok(Ok(info)) if !info.draining => Some(Candidate {
                        id: n.id.clone(),
                        participants: info.participants,
                        rooms: info.rooms,
                    }),
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => {
                        warn!(node = %n.id, "SFU node unavailable: {e}");
                        None
                    }
                    Err(_) => {
                        warn!(node = %n.id, "SFU node did not answer within 2 s");
                        None
                    }
                }
            });
        futures_util::future::join_all(polls)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn claim(&self, room: &str, expected: Option<&str>) -> Result<PlacedNode, ClusterError> {
        let chosen = choose(
            self.candidates(expected).await,
            self.turn.fetch_add(1, Ordering::Relaxed),
        )
        .ok_or(ClusterError::NoNode)?;
        let mut map = self.placements();
        let winner = match map.get(room) {
            // Someone placed (or moved) it while we polled: theirs stands.
            Some(current) if Some(current.as_str()) != expected => current.clone(),
            _ => {
                map.insert(room.to_owned(), chosen.id.clone());
                chosen.id
            }
        };
        self.node(&winner).ok_or(ClusterError::NoNode)
    }
}

impl Cluster for FixedNodes {
    fn place<'a>(
        &'a self,
        room: &'a str,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<PlacedNode, ClusterError>> {
        async move {
            let placed = self.placements().get(room).cloned();
            if let Some(n) = placed.and_then(|id| self.node(&id)) {
                return Ok(n);
            }
            self.claim(room, None).await
        }
        .boxed()
    }

    fn replace<'a>(
        &'a self,
        room: &'a str,
        lost: &'a str,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<PlacedNode, ClusterError>> {
        async move { self.claim(room, Some(lost)).await }.boxed()
    }

    fn release<'a>(&'a self, room: &'a str, node: &'a str) -> BoxFuture<'a, ()> {
        async move {
            let mut map = self.placements();
            if map.get(room).is_some_and(|n| n == node) {
                map.remove(room);
            }
        }
        .boxed()
    }

    fn node_unreachable<'a>(&'a self, node: &'a str) -> BoxFuture<'a, ()> {
        async move {
            // Placement polls every node anyway; only the rooms on it need moving.
            let _ = self.lost.send(node.to_owned());
        }
        .boxed()
    }

    fn lost_nodes(&self) -> broadcast::Receiver<String> {
        self.lost.subscribe()
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), &'static str>> {
        async { Ok(()) }.boxed()
    }
}
