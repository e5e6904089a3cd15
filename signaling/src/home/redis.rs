//! Homes shared through Redis. Keys, under `redis.key_prefix`:
//! - `{prefix}signaling:replica:{id}`: the replica is alive (refreshed every second, lives
//!   [`ALIVE_MS`]); deleted when it drains.
//! - `{prefix}signaling:home:{appointment}`: the id of the replica running the consultation
//!   (a lease of [`LEASE_MS`], renewed every second). A lease held by a replica that is no
//!   longer alive is taken over by the next claim.
//! - `{prefix}signaling:consultation:{appointment}`: the consultation's snapshot (JSON), for
//!   the consultation's span.
//!
//! Pipes go over pub/sub: every replica listens on `{prefix}signaling:pipe:{id}`; a frame is
//! one JSON message naming the pipe, the sender and the direction. Pub/sub does not store
//! messages, so whenever a replica's subscription breaks, or a peer stops being alive, the
//! pipes concerned end and their clients reconnect.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Home, HomeError, Homes, IncomingPipe, PipeEnd, PipeOp};
use crate::access::ClientInfo;
use crate::protocol::ServerMessage;

/// How long a replica counts as alive after its last heartbeat.
pub const ALIVE_MS: u64 = 3000;
/// How long a consultation's lease lasts without renewal.
pub const LEASE_MS: u64 = 6000;
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Take the lease if nobody holds it, this replica does, or its holder is not alive;
/// answer the holder afterwards.
const CLAIM: &str = r#"
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. current) == 1 then
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"#;

/// Extend each lease in KEYS still held by ARGV[1]; 1 for those, 0 for the others.
const RENEW: &str = r#"
local held = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    held[i] = 1
  else
    held[i] = 0
  end
end
return held
"#;

/// One pub/sub message.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    pipe: String,
    from: String,
    /// Travelling from the edge to the home.
    to_home: bool,
    #[serde(flatten)]
    op: PipeOp,
}

/// Where the frames of one pipe go on this replica.
struct Route {
    peer: String,
    frames: mpsc::UnboundedSender<PipeOp>,
}

pub struct RedisHomes {
    conn: ConnectionManager,
    client: redis::Client,
    replica: String,
    prefix: String,
    timeout: Duration,
    claim: redis::Script,
    renew: redis::Script,
    release: redis::Script,
    next_pipe: AtomicU64,
    /// Pipes whose edge is here (by pipe id).
    at_edge: Mutex<HashMap<String, Route>>,
    /// Pipes whose home is here.
    at_home: Mutex<HashMap<String, Route>>,
    incoming_tx: mpsc::UnboundedSender<IncomingPipe>,
    incoming_rx: Mutex<Option<mpsc::UnboundedReceiver<IncomingPipe>>>,
    /// Listening on this replica's channel (only then is it announced alive).
    subscribed: AtomicBool,
    draining: AtomicBool,
}

fn store_error(e: impl std::fmt::Display) -> HomeError {
    HomeError::Store(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RedisHomes {
    /// Homes for the replica `replica`, sharing `conn`'s Redis at `url`; its listener and
    /// heartbeat run until the value is dropped.
    pub fn start(
        url: &str,
        conn: ConnectionManager,
        prefix: &str,
        replica: &str,
        timeout: Duration,
    ) -> Result<Arc<RedisHomes>, HomeError> {
        let client = redis::Client::open(url).map_err(store_error)?;
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let homes = Arc::new(RedisHomes {
            conn,
            client,
            replica: replica.to_owned(),
            prefix: prefix.to_owned(),
            timeout,
            claim: redis::Script::new(CLAIM),
            renew: redis::Script::new(RENEW),
            release: redis::Script::new(crate::cluster::redis::RELEASE),
            next_pipe: AtomicU64::new(1),
            at_edge: Mutex::default(),
            at_home: Mutex::default(),
            incoming_tx,
            incoming_rx: Mutex::new(Some(incoming_rx)),
            subscribed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        });
        tokio::spawn(listen(Arc::downgrade(&homes)));
        tokio::spawn(heartbeat(Arc::downgrade(&homes)));
        Ok(homes)
    }

    fn alive_prefix(&self) -> String {
        format!("{}signaling:replica:", self.prefix)
    }

    fn alive_key(&self, replica: &str) -> String {
        format!("{}{replica}", self.alive_prefix())
    }

    fn home_key(&self, appointment: &str) -> String {
        format!("{}signaling:home:{appointment}", self.prefix)
    }

    fn snapshot_key(&self, appointment: &str) -> String {
        format!("{}signaling:consultation:{appointment}", self.prefix)
    }

    fn channel(&self, replica: &str) -> String {
        format!("{}signaling:pipe:{replica}", self.prefix)
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, HomeError> {
        metaclinic_protocol::registry::within(self.timeout, f)
            .await
            .map_err(HomeError::Store)
    }

    /// Refresh this replica's alive key (not while draining).
    async fn announce(&self) {
        if self.draining.load(Ordering::SeqCst) {
            return;
        }
        let mut conn = self.conn.clone();
        let set = self
            .bounded(
                redis::cmd("SET")
                    .arg(self.alive_key(&self.replica))
                    .arg("1")
                    .arg("PX")
                    .arg(ALIVE_MS)
                    .query_async::<()>(&mut conn),
            )
            .await;
        if let Err(e) = set {
            warn!("announcing this replica: {e}");
        }
    }

    async fn publish(&self, to: &str, env: &Envelope) -> bool {
        let Ok(text) = serde_json::to_string(env) else {
            return false;
        };
        let mut conn = self.conn.clone();
        let channel = self.channel(to);
        let sent = self
            .bounded(
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(text)
                    .query_async::<i64>(&mut conn),
            )
            .await;
        // Nobody listening on the peer's channel: it is gone.
        matches!(sent, Ok(n) if n > 0)
    }

    fn dispatch(self: &Arc<Self>, payload: &str) {
        let env: Envelope = match serde_json::from_str(payload) {
            Ok(e) => e,
            Err(e) => {
                warn!("ignoring a malformed pipe message: {e}");
                return;
            }
        };
        if env.to_home {
            if let PipeOp::Open { client, text } = env.op {
                self.open_here(env.pipe, env.from, client, text);
                return;
            }
            deliver(&self.at_home, &env.pipe, env.op);
        } else {
            deliver(&self.at_edge, &env.pipe, env.op);
        }
    }

    /// An edge opens a pipe to a consultation here.
    fn open_here(self: &Arc<Self>, pipe: String, edge: String, client: ClientInfo, first: String) {
        let end = PipeEnd {
            id: pipe.clone(),
            peer: edge.clone(),
            at_edge: false,
        };
        if self.draining.load(Ordering::SeqCst) {
            // Raced with the drain: the client goes elsewhere.
            let hint = serde_json::to_string(&ServerMessage::Reconnect { after_ms: 0 })
                .unwrap_or_default();
            let me = self.clone();
            tokio::spawn(async move {
                me.send(&end, PipeOp::Text { text: hint }).await;
                me.send(&end, PipeOp::Close).await;
            });
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.at_home).insert(
            pipe,
            Route {
                peer: edge,
                frames: tx,
            },
        );
        let _ = self.incoming_tx.send(IncomingPipe {
            end,
            client,
            first,
            frames: rx,
        });
    }

    /// Every pipe ends: their frames may have been lost.
    fn end_all_pipes(&self) {
        let edges = std::mem::take(&mut *lock(&self.at_edge));
        let homes = std::mem::take(&mut *lock(&self.at_home));
        if !edges.is_empty() || !homes.is_empty() {
            warn!(
                edge = edges.len(),
                home = homes.len(),
                "the pipe subscription broke; ending its pipes"
            );
        }
    }

    /// End the pipes whose other side is one of `dead`.
    fn end_pipes_to(&self, dead: &HashSet<String>) {
        for map in [&self.at_edge, &self.at_home] {
            lock(map).retain(|_, r| !dead.contains(&r.peer));
        }
    }

    fn peers(&self) -> HashSet<String> {
        let mut peers: HashSet<String> = lock(&self.at_edge)
            .values()
            .map(|r| r.peer.clone())
            .collect();
        peers.extend(lock(&self.at_home).values().map(|r| r.peer.clone()));
        peers
    }
}

fn deliver(map: &Mutex<HashMap<String, Route>>, pipe: &str, op: PipeOp) {
    let mut routes = lock(map);
    let close = op == PipeOp::Close;
    if let Some(r) = routes.get(pipe) {
        let _ = r.frames.send(op);
    }
    if close {
        routes.remove(pipe);
    }
}

/// Listen on this replica's channel, again after every break.
async fn listen(weak: Weak<RedisHomes>) {
    loop {
        let Some(h) = weak.upgrade() else { return };
        let channel = h.channel(&h.replica);
        let client = h.client.clone();
        drop(h);
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    // Alive (so others pipe clients here) only once listening.
                    if let Some(h) = weak.upgrade() {
                        h.announce().await;
                        h.subscribed.store(true, Ordering::SeqCst);
                        info!(replica = %h.replica, "listening for piped clients");
                    }
                    let mut messages = pubsub.into_on_message();
                    loop {
                        // Woken at least every second, so a dropped replica stops listening.
                        let next = tokio::time::timeout(HEARTBEAT, messages.next()).await;
                        let Some(h) = weak.upgrade() else { return };
                        match next {
                            Err(_) => continue,
                            Ok(None) => break,
                            Ok(Some(msg)) => match msg.get_payload::<String>() {
                                Ok(payload) => h.dispatch(&payload),
                                Err(e) => warn!("ignoring a pipe message that is not text: {e}"),
                            },
                        }
                    }
                }
                Err(e) => warn!("subscribing to the pipe channel: {e}"),
            },
            Err(e) => warn!("connecting the pipe subscription: {e}"),
        }
        let Some(h) = weak.upgrade() else { return };
        h.subscribed.store(false, Ordering::SeqCst);
        h.end_all_pipes();
        drop(h);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Announce this replica alive, and end the pipes of peers that are not.
async fn heartbeat(weak: Weak<RedisHomes>) {
    let mut ticker = tokio::time::interval(HEARTBEAT);
    loop {
        ticker.tick().await;
        let Some(h) = weak.upgrade() else { return };
        let mut conn = h.conn.clone();
        if h.listening() {
            h.announce().await;
        }
        let peers = h.peers();
        if peers.is_empty() {
            continue;
        }
        let mut dead = HashSet::new();
        for peer in peers {
            let exists = h
                .bounded(
                    redis::cmd("EXISTS")
                        .arg(h.alive_key(&peer))
                        .query_async::<i64>(&mut conn),
                )
                .await;
            // Only a clear "gone" ends pipes; a slow Redis does not.
            if matches!(exists, Ok(0)) {
                dead.insert(peer);
            }
        }
        if !dead.is_empty() {
            warn!(peers = ?dead, "replicas stopped; ending their pipes");
            h.end_pipes_to(&dead);
        }
    }
}

impl Homes for RedisHomes {
    fn replica(&self) -> &str {
        &self.replica
    }

    fn listening(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
    }

    fn claim<'a>(&'a self, appointment: &'a str) -> BoxFuture<'a, Result<Home, HomeError>> {
        async move {
            let mut conn = self.conn.clone();
            let holder: String = self
                .bounded(
                    self.claim
                        .key(self.home_key(appointment))
                        .arg(&self.replica)
                        .arg(LEASE_MS)
                        .arg(self.alive_prefix())
                        .invoke_async(&mut conn),
                )
                .await?;
            Ok(if holder == self.replica {
                Home::Here
            } else {
                Home::Elsewhere(holder)
            })
        }
        .boxed()
    }

    fn renew<'a>(&'a self, appointments: &'a [String]) -> BoxFuture<'a, Vec<String>> {
        async move {
            if appointments.is_empty() || self.draining.load(Ordering::SeqCst) {
                return Vec::new();
            }
            let mut conn = self.conn.clone();
            let mut inv = self.renew.prepare_invoke();
            for a in appointments {
                inv.key(self.home_key(a));
            }
            inv.arg(&self.replica).arg(LEASE_MS);
            match self.bounded(inv.invoke_async::<Vec<i64>>(&mut conn)).await {
                Ok(held) => appointments
                    .iter()
                    .zip(held)
                    .filter(|(_, h)| *h == 0)
                    .map(|(a, _)| a.clone())
                    .collect(),
                // Unknown: keep them (a lease outlives a short Redis outage).
                Err(e) => {
                    warn!("renewing consultation leases: {e}");
                    Vec::new()
                }
            }
        }
        .boxed()
    }

    fn release<'a>(&'a self, appointment: &'a str) -> BoxFuture<'a, ()> {
        async move {
            let mut conn = self.conn.clone();
            let r = self
                .bounded(
                    self.release
                        .key(self.home_key(appointment))
                        .arg(&self.replica)
                        .invoke_async::<i64>(&mut conn),
                )
                .await;
            if let Err(e) = r {
                warn!("releasing a consultation lease: {e}");
            }
        }
        .boxed()
    }

    fn save<'a>(
        &'a self,
        appointment: &'a str,
        snapshot: String,
        ttl: Duration,
    ) -> BoxFuture<'a, ()> {
        async move {
            let mut conn = self.conn.clone();
            let r = self
                .bounded(
                    redis::cmd("SET")
                        .arg(self.snapshot_key(appointment))
                        .arg(snapshot)
                        .arg("PX")
                        .arg(ttl.as_millis().max(1) as u64)
                        .query_async::<()>(&mut conn),
                )
                .await;
            if let Err(e) = r {
                warn!("storing a consultation snapshot: {e}");
            }
        }
        .boxed()
    }

    fn load<'a>(&'a self, appointment: &'a str) -> BoxFuture<'a, Option<String>> {
        async move {
            let mut conn = self.conn.clone();
            match self
                .bounded(
                    redis::cmd("GET")
                        .arg(self.snapshot_key(appointment))
                        .query_async::<Option<String>>(&mut conn),
                )
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    warn!("reading a consultation snapshot: {e}");
                    None
                }
            }
        }
        .boxed()
    }

    fn forget<'a>(&'a self, appointment: &'a str) -> BoxFuture<'a, ()> {
        async move {
            let mut conn = self.conn.clone();
            let r = self
                .bounded(
                    redis::cmd("DEL")
                        .arg(self.snapshot_key(appointment))
                        .query_async::<i64>(&mut conn),
                )
                .await;
            if let Err(e) = r {
                warn!("deleting a consultation snapshot: {e}");
            }
        }
        .boxed()
    }

    fn open_pipe<'a>(
        &'a self,
        home: &'a str,
        client: ClientInfo,
        first: String,
    ) -> BoxFuture<'a, Result<(PipeEnd, mpsc::UnboundedReceiver<PipeOp>), HomeError>> {
        async move {
            let n = self.next_pipe.fetch_add(1, Ordering::Relaxed);
            let end = PipeEnd {
                id: format!("{}-{n}", self.replica),
                peer: home.to_owned(),
                at_edge: true,
            };
            let (tx, rx) = mpsc::unbounded_channel();
            lock(&self.at_edge).insert(
                end.id.clone(),
                Route {
                    peer: home.to_owned(),
                    frames: tx,
                },
            );
            if self
                .send(
                    &end,
                    PipeOp::Open {
                        client,
                        text: first,
                    },
                )
                .await
            {
                Ok((end, rx))
            } else {
                lock(&self.at_edge).remove(&end.id);
                Err(HomeError::HomeGone)
            }
        }
        .boxed()
    }

    fn send<'a>(&'a self, end: &'a PipeEnd, op: PipeOp) -> BoxFuture<'a, bool> {
        async move {
            let env = Envelope {
                pipe: end.id.clone(),
                from: self.replica.clone(),
                to_home: end.at_edge,
                op,
            };
            self.publish(&end.peer, &env).await
        }
        .boxed()
    }

    fn close_pipe(&self, end: &PipeEnd) {
        let map = if end.at_edge {
            &self.at_edge
        } else {
            &self.at_home
        };
        lock(map).remove(&end.id);
    }

    fn incoming(&self) -> Option<mpsc::UnboundedReceiver<IncomingPipe>> {
        lock(&self.incoming_rx).take()
    }

    fn drain(&self, after_ms: u64) -> BoxFuture<'_, usize> {
        async move {
            self.draining.store(true, Ordering::SeqCst);
            // No longer alive to the others: their next claims take this replica's
            // consultations over, and their pipes to it end (their clients reconnect).
            let mut conn = self.conn.clone();
            let _ = self
                .bounded(
                    redis::cmd("DEL")
                        .arg(self.alive_key(&self.replica))
                        .query_async::<i64>(&mut conn),
                )
                .await;
            let hint =
                serde_json::to_string(&ServerMessage::Reconnect { after_ms }).unwrap_or_default();
            let edges = std::mem::take(&mut *lock(&self.at_edge));
            for route in edges.values() {
                let _ = route.frames.send(PipeOp::Text { text: hint.clone() });
                let _ = route.frames.send(PipeOp::Close);
            }
            edges.len()
        }
        .boxed()
    }
}
