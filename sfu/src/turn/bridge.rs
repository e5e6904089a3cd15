//! Relayed media without a second trip through the kernel. The TURN thread hands a
//! client's datagram straight to the media thread that owns the peer port (a queue and a
//! wake-up), and a media thread hands what it sends to a relay address straight back to
//! that allocation. Each allocation still binds its relay socket: its address is the one
//! the media thread and the client know the flow by, and no other process can take it.
//!
//! Both directions are bounded and never block: a full queue drops the datagram, as a
//! congested network would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use mio::Waker;
use prometheus::{IntCounter, IntCounterVec, Opts};
use tokio::sync::mpsc;

use crate::shard::udp::SendQueue;

/// Datagrams queued for one media thread before more are dropped.
const MEDIA_QUEUE: usize = 4096;
/// Datagrams queued for one allocation before more are dropped.
const RELAY_QUEUE: usize = 512;

/// A relayed client's datagram for a media thread: `from` is the allocation's relay
/// address, as if it had arrived on the media socket from there.
pub struct Relayed {
    pub from: SocketAddr,
    pub data: Vec<u8>,
}

/// One media thread's inbox.
pub struct MediaInbox {
    /// The media socket's local address (as the TURN server names it).
    pub local: SocketAddr,
    pub queue: crossbeam_channel::Sender<Relayed>,
    pub waker: Arc<Waker>,
}

/// What a media thread sent to an allocation: from which of its local addresses, and what.
pub type ToClient = (SocketAddr, Vec<u8>);

pub struct RelayBridge {
    media: OnceLock<Vec<MediaInbox>>,
    relays: RwLock<HashMap<SocketAddr, mpsc::Sender<ToClient>>>,
    /// Relay addresses registered: a media thread looks its sends up only when some are.
    active: AtomicUsize,
    to_media: IntCounter,
    to_client: IntCounter,
    dropped: IntCounter,
}

impl RelayBridge {
    pub fn new(registry: &prometheus::Registry) -> RelayBridge {
        let handed = IntCounterVec::new(
            Opts::new(
                "metaclinic_sfu_turn_handed_packets_total",
                "Relayed datagrams handed between the TURN server and the media threads without a socket, by direction",
            ),
            &["direction"],
        )
        .expect("static metric");
        let dropped = IntCounter::new(
            "metaclinic_sfu_turn_handoff_dropped_total",
            "Relayed datagrams dropped between the TURN server and the media threads (a full queue)",
        )
        .expect("static metric");
        let _ = registry.register(Box::new(handed.clone()));
        let _ = registry.register(Box::new(dropped.clone()));
        RelayBridge {
            media: OnceLock::new(),
            relays: RwLock::new(HashMap::new()),
            active: AtomicUsize::new(0),
            to_media: handed.with_label_values(&["to_media"]),
            to_client: handed.with_label_values(&["to_client"]),
            dropped,
        }
    }

    /// A queue for one media thread, made before it starts; `set_media` gives its sending
    /// side to the bridge once every thread runs.
    pub fn media_queue() -> (
        crossbeam_channel::Sender<Relayed>,
        crossbeam_channel::Receiver<Relayed>,
    ) {
        crossbeam_channel::bounded(MEDIA_QUEUE)
    }

    pub fn set_media(&self, inboxes: Vec<MediaInbox>) {
        let _ = self.media.set(inboxes);
    }

    /// The TURN thread: hand `data` from the allocation at `from` to the media socket at
    /// `local`. False when no media thread has that address.
    pub fn to_media(&self, local: SocketAddr, from: SocketAddr, data: &[u8]) -> bool {
        let Some(inbox) = self
            .media
            .get()
            .and_then(|m| m.iter().find(|i| i.local == local))
        else {
            return false;
        };
        let relayed = Relayed {
            from,
            data: data.to_vec(),
        };
        match inbox.queue.try_send(relayed) {
            Ok(()) => {
                self.to_media.inc();
                let _ = inbox.waker.wake();
            }
            Err(_) => self.dropped.inc(),
        }
        true
    }

    /// An allocation's relay address starts taking what media threads send to it.
    pub fn register(&self, relay: SocketAddr) -> mpsc::Receiver<ToClient> {
        let (tx, rx) = mpsc::channel(RELAY_QUEUE);
        let mut relays = self.relays.write().unwrap_or_else(|p| p.into_inner());
        if relays.insert(relay, tx).is_none() {
            self.active.fetch_add(1, Ordering::Relaxed);
        }
        rx
    }

    pub fn deregister(&self, relay: SocketAddr) {
        let mut relays = self.relays.write().unwrap_or_else(|p| p.into_inner());
        if relays.remove(&relay).is_some() {
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Any relay address registered? (A media thread skips the lookup when none is.)
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// A media thread, before it flushes: of what it is about to send from its socket at
    /// `local`, hand what goes to an allocation's relay address to that allocation. One
    /// look at the table per flush; the rest stays queued for the socket.
    pub fn take_relayed(&self, local: SocketAddr, queue: &mut SendQueue) {
        let relays = self.relays.read().unwrap_or_else(|p| p.into_inner());
        queue.divert(|to, data| {
            let Some(tx) = relays.get(&to) else {
                return false;
            };
            match tx.try_send((local, data.to_vec())) {
                Ok(()) => self.to_client.inc(),
                Err(_) => self.dropped.inc(),
            }
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_cross_both_ways_and_only_to_registered_relays() {
        let bridge = RelayBridge::new(&prometheus::Registry::new());
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(1)).unwrap());
        let (tx, rx) = RelayBridge::media_queue();
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        bridge.set_media(vec![MediaInbox {
            local,
            queue: tx,
            waker,
        }]);
        let relay: SocketAddr = "127.0.0.1:50123".parse().unwrap();
        assert!(bridge.to_media(local, relay, b"check"));
        let got = rx.try_recv().unwrap();
        assert_eq!((got.from, got.data.as_slice()), (relay, &b"check"[..]));
        assert!(!bridge.to_media("127.0.0.1:40001".parse().unwrap(), relay, b"x"));

        let other: SocketAddr = "127.0.0.1:50124".parse().unwrap();
        let queued = |to| {
            let mut q = SendQueue::default();
            q.push(to, bytes::BytesMut::from(&b"answer"[..]));
            q.push(other, bytes::BytesMut::from(&b"direct"[..]));
            q
        };
        assert!(!bridge.active());
        let mut q = queued(relay);
        bridge.take_relayed(local, &mut q);
        assert_eq!(q.len(), 2, "nothing is a relay address yet");
        let mut inbox = bridge.register(relay);
        assert!(bridge.active());
        let mut q = queued(relay);
        bridge.take_relayed(local, &mut q);
        assert_eq!(q.len(), 1, "the direct datagram stays for the socket");
        assert_eq!(inbox.try_recv().unwrap(), (local, b"answer".to_vec()));
        bridge.deregister(relay);
        assert!(!bridge.active());
        let mut q = queued(relay);
        bridge.take_relayed(local, &mut q);
        assert_eq!(q.len(), 2);
        assert_eq!(bridge.to_media.get(), 1);
        assert_eq!(bridge.to_client.get(), 1);
    }
}
