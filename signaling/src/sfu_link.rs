//! The SFU nodes signaling places rooms on, through their internal control API.

use std::time::Duration;

use metaclinic_sfu::control::client::SfuControl;
use tracing::warn;

use crate::config::SfuNode;

#[derive(Clone)]
pub struct PlacedNode {
    pub id: String,
    pub control: SfuControl,
}

pub struct SfuPool {
    nodes: Vec<PlacedNode>,
}

#[derive(Debug, thiserror::Error)]
#[error("no SFU node is reachable")]
pub struct NoNodeAvailable;

impl SfuPool {
    pub fn new(nodes: &[SfuNode]) -> SfuPool {
        SfuPool {
            nodes: nodes
                .iter()
                .map(|n| PlacedNode {
                    id: n.id.clone(),
                    control: SfuControl::new(&n.url, &n.credential),
                })
                .collect(),
        }
    }

    /// The reachable node with the fewest participants (then rooms).
    pub async fn place(&self) -> Result<PlacedNode, NoNodeAvailable> {
        let mut best: Option<((usize, usize), &PlacedNode)> = None;
        for n in &self.nodes {
            let info = tokio::time::timeout(Duration::from_secs(2), n.control.node()).await;
            match info {
                Ok(Ok(info)) => {
                    let load = (info.participants, info.rooms);
                    if best.as_ref().is_none_or(|(b, _)| load < *b) {
                        best = Some((load, n));
                    }
                }
                Ok(Err(e)) => warn!(node = %n.id, "SFU node unavailable: {e}"),
                Err(_) => warn!(node = %n.id, "SFU node did not answer within 2 s"),
            }
        }
        best.map(|(_, n)| n.clone()).ok_or(NoNodeAvailable)
    }
}
