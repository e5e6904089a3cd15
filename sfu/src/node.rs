//! An SFU node: its media threads, which room lives on which, and the operations the control
//! API offers. Every operation on a room is a command to the one shard that owns it.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, oneshot};
use tracing::info;

use crate::config::SfuConfig;
use crate::control::api::{
    CreateRoom, IceCandidate, NodeInfo, OpenSession, RoomCreated, RoomInfo, SessionOpened,
    ShardInfo,
};
use crate::error::ControlError;
use crate::events::RoomEventEnvelope;
use crate::ids::{ParticipantId, RoomId};
use crate::media::MediaKind;
use crate::metrics::Metrics;
use crate::placement::{self, ThreadLoad};
use crate::room::{RoomEvents, RoomKind};
use crate::shard::{self, Command, ShardHandle, ShardSettings};

/// Room events buffered per room for slow readers before they start missing some: a
/// consultation (at most 16 people, a quality report each every two seconds) fills 256 in
/// half a minute; a shared room's hundreds of participants need more. A slot holds a
/// reference, but the event it last held stays alive until the slot is reused (an offer's
/// SDP included), so this is sized by the room's kind.
fn event_buffer(kind: RoomKind) -> usize {
    match kind {
        RoomKind::Consultation => 256,
        RoomKind::Shared => 4096,
    }
}

struct RoomEntry {
    shard: usize,
    kind: RoomKind,
    events: RoomEvents,
}

pub struct Node {
    config: SfuConfig,
    shards: Vec<Mutex<ShardHandle>>,
    rooms: Mutex<HashMap<RoomId, RoomEntry>>,
    metrics: Metrics,
    /// The HRTF set, loaded with the first shared room (consultation-only nodes never do).
    hrtf: std::sync::OnceLock<Arc<crate::spatial::HrtfSet>>,
    /// The workers that mix shared rooms' listeners, started with the first shared room.
    mixer_pool: std::sync::OnceLock<Arc<rayon::ThreadPool>>,
    /// SIGTERM arrived: no new rooms; the rooms here run to their end.
    draining: AtomicBool,
    /// The node registry (Redis, when configured) took the last heartbeat.
    registry_reachable: AtomicBool,
    /// Who has a session here: the TURN server allocates only for them.
    placed: Arc<crate::turn::PlacedParticipants>,
    /// The embedded TURN server, when it runs.
    turn: Mutex<Option<crate::turn::TurnServer>>,
    turn_advert: Option<crate::turn::TurnAdvert>,
}

impl Node {
    /// Bind the media ports and start one media thread per port.
    pub fn start(config: SfuConfig) -> std::io::Result<Arc<Node>> {
        let metrics = Metrics::new();
        let track_ids = Arc::new(AtomicU64::new(1));
        let settings = ShardSettings {
            node_id: config.node.id.clone(),
            connect_timeout: config.connect_timeout(),
            idle_timeout: config.idle_timeout(),
            max_participants: config.rooms.max_participants,
            max_shared_participants: config.spatial.max_participants,
            keyframe_request_interval: std::time::Duration::from_millis(
                config.rtc.keyframe_request_interval_ms,
            ),
            max_busy: config.max_thread_busy(),
            tcp_candidate: (config.rtc.tcp_port != 0)
                .then(|| SocketAddr::new(config.node.announced_ip, config.rtc.tcp_port)),
            fast_path: config.rtc.fast_path,
            udp_gso: config.rtc.udp_gso,
        };
        // Bind the ICE-TCP port before anything starts, so a taken port fails the start.
        let tcp_listener = match config.rtc.tcp_port {
            0 => None,
            port => Some(
                std::net::TcpListener::bind(SocketAddr::new(config.rtc.bind_ip, port)).map_err(
                    |e| {
                        std::io::Error::new(
                            e.kind(),
                            format!(
                                "cannot bind ICE-TCP port {}:{port}: {e}",
                                config.rtc.bind_ip
                            ),
                        )
                    },
                )?,
            ),
        };
        // With TURN, relayed media crosses to the media threads without a socket.
        let bridge = config
            .turn
            .active()
            .then(|| Arc::new(crate::turn::bridge::RelayBridge::new(&metrics.registry)));
        let media_addrs = crate::turn::MediaAddrs::from_config(&config);
        let mut inboxes = Vec::new();
        let mut shards = Vec::new();
        for i in 0..config.media_threads() {
            let port = config.rtc.udp_port + i as u16;
            let socket =
                UdpSocket::bind(SocketAddr::new(config.rtc.bind_ip, port)).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot bind media port {}:{port}: {e}", config.rtc.bind_ip),
                    )
                })?;
            let (rcv, snd) =
                crate::shard::udp::enlarge_buffers(&socket, config.rtc.socket_buffer_bytes);
            if rcv < config.rtc.socket_buffer_bytes {
                tracing::warn!(
                    port,
                    asked = config.rtc.socket_buffer_bytes,
                    granted = rcv,
                    "the kernel granted a smaller media socket buffer; raise net.core.rmem_max"
                );
            }
            tracing::debug!(port, rcv, snd, "media socket buffers");
            let candidate = SocketAddr::new(config.node.announced_ip, port);
            let local = media_addrs.local_for(candidate);
            let relay = bridge.as_ref().zip(local).map(|(b, local)| {
                let (queue, inbox) = crate::turn::bridge::RelayBridge::media_queue();
                (
                    queue,
                    shard::ShardRelay {
                        bridge: b.clone(),
                        queue: inbox,
                        local,
                    },
                )
            });
            let (queue, relay) = relay.unzip();
            let handle = shard::spawn(
                i,
                socket,
                candidate,
                settings.clone(),
                metrics.clone(),
                track_ids.clone(),
                relay,
            )?;
            if let (Some(queue), Some(local)) = (queue, local) {
                inboxes.push(crate::turn::bridge::MediaInbox {
                    local,
                    queue,
                    waker: handle.waker(),
                });
            }
            shards.push(Mutex::new(handle));
        }
        info!(node = %config.node.id, shards = shards.len(), first_port = config.rtc.udp_port, "SFU node started");
        let placed = Arc::new(crate::turn::PlacedParticipants::default());
        let turn = if config.turn.active() {
            if let Some(b) = &bridge {
                b.set_media(inboxes);
            }
            let server = crate::turn::TurnServer::start(
                &config,
                placed.clone(),
                bridge.clone(),
                &metrics.registry,
            )
            .map_err(|e| std::io::Error::other(e.to_string()))?;
            Some(server)
        } else {
            if config.turn.enabled {
                info!("the embedded TURN server is off: no turn.shared_secret");
            }
            None
        };
        let turn_advert = turn.as_ref().map(|t| t.advert.clone());
        let node = Arc::new(Node {
            config,
            shards,
            rooms: Mutex::new(HashMap::new()),
            metrics,
            hrtf: std::sync::OnceLock::new(),
            mixer_pool: std::sync::OnceLock::new(),
            draining: AtomicBool::new(false),
            registry_reachable: AtomicBool::new(true),
            placed,
            turn: Mutex::new(turn),
            turn_advert,
        });
        if let Some(listener) = tcp_listener {
            let weak = Arc::downgrade(&node);
            shard::tcp::spawn_acceptor(
                listener,
                Arc::new(move |shard, stream, first| {
                    weak.upgrade().is_some_and(|n| {
                        shard < n.shards.len()
                            && n.send(shard, Command::AdoptTcp { stream, first }).is_ok()
                    })
                }),
            )?;
        }
        Ok(node)
    }

    pub fn config(&self) -> &SfuConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stop taking new rooms. Rooms already here (and sessions in them, reconnects too) go on.
    pub fn start_draining(&self) {
        if !self.draining.swap(true, Ordering::SeqCst) {
            self.metrics.draining.set(1);
            info!(node = %self.config.node.id, rooms = self.room_count(), "draining: no new rooms");
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn set_registry_reachable(&self, reachable: bool) {
        self.registry_reachable.store(reachable, Ordering::SeqCst);
    }

    /// Whether the node takes new rooms (`/readyz`): not while draining, nor while signaling
    /// cannot find it (the registry is unreachable).
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.is_draining() {
            Err("draining")
        } else if !self.registry_reachable.load(Ordering::SeqCst) {
            Err("registry_unreachable")
        } else {
            Ok(())
        }
    }

    /// Rooms open on this node.
    pub fn room_count(&self) -> usize {
        self.rooms().len()
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, RoomEntry>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts
        // and removes), so a poisoned lock is still usable.
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, shard: usize, cmd: Command) -> Result<(), ControlError> {
        let handle = self.shards[shard].lock().unwrap_or_else(|p| p.into_inner());
        handle.send(cmd)
    }

    async fn ask<T>(
        &self,
        room: &RoomId,
        make: impl FnOnce(oneshot::Sender<Result<T, ControlError>>) -> Command,
    ) -> Result<T, ControlError> {
        let shard = self
            .rooms()
            .get(room)
            .map(|r| r.shard)
            .ok_or(ControlError::RoomNotFound)?;
        let (tx, rx) = oneshot::channel();
        self.send(shard, make(tx))?;
        rx.await.map_err(|_| ControlError::Unavailable)?
    }

    /// The media thread for a new room of `kind` (see `placement`): rooms counted from this
    /// node's own record, which `rooms` holds up to date under its lock, so a burst of
    /// creations never sees a stale count; busy shares as the threads last measured them.
    fn place(&self, rooms: &HashMap<RoomId, RoomEntry>, kind: RoomKind) -> Option<usize> {
        let mut threads: Vec<ThreadLoad> = self
            .shards
            .iter()
            .map(|h| {
                let h = h.lock().unwrap_or_else(|p| p.into_inner());
                ThreadLoad {
                    busy: h.load.busy(),
                    rooms_measured: h.load.rooms_measured.load(Ordering::Relaxed),
                    ..Default::default()
                }
            })
            .collect();
        for r in rooms.values() {
            let t = &mut threads[r.shard];
            match r.kind {
                RoomKind::Consultation => t.consultations += 1,
                RoomKind::Shared => t.shared_rooms += 1,
            }
        }
        placement::choose(&threads, kind, self.config.max_thread_busy())
    }

    /// Create a room, or confirm it exists (idempotent).
    pub async fn create_room(&self, req: CreateRoom) -> Result<RoomCreated, ControlError> {
        let (shard, events, created) = {
            let mut rooms = self.rooms();
            if let Some(r) = rooms.get(&req.room) {
                if r.kind != req.kind {
                    return Err(ControlError::RoomKindMismatch);
                }
                return Ok(RoomCreated {
                    room: req.room,
                    kind: req.kind,
                    node: self.config.node.id.clone(),
                    created: false,
                });
            }
            if self.is_draining() {
                return Err(ControlError::Draining);
            }
            if rooms.len() >= self.config.rooms.max_rooms {
                return Err(ControlError::NodeFull);
            }
            let shard = self
                .place(&rooms, req.kind)
                .ok_or(ControlError::Overloaded)?;
            let (events, _) = broadcast::channel(event_buffer(req.kind));
            rooms.insert(
                req.room.clone(),
                RoomEntry {
                    shard,
                    kind: req.kind,
                    events: events.clone(),
                },
            );
            (shard, events, true)
        };
        let mixer = match req.kind {
            RoomKind::Shared => match self.spatial_mixer().await {
                Ok(m) => Some(m),
                Err(e) => {
                    self.rooms().remove(&req.room);
                    return Err(e);
                }
            },
            RoomKind::Consultation => None,
        };
        let (tx, rx) = oneshot::channel();
        let sent = self.send(
            shard,
            Command::CreateRoom {
                room: req.room.clone(),
                kind: req.kind,
                events,
                mixer,
                reply: tx,
            },
        );
        let result = match sent {
            Ok(()) => rx.await.unwrap_or(Err(ControlError::Unavailable)),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.rooms().remove(&req.room);
            return Err(e);
        }
        Ok(RoomCreated {
            room: req.room,
            kind: req.kind,
            node: self.config.node.id.clone(),
            created,
        })
    }

    /// A mixer for a new shared room; the HRTF set is read (blocking, off the runtime) the
    /// first time.
    async fn spatial_mixer(
        &self,
    ) -> Result<Box<crate::spatial::SpatialMixer<shard::demux::SessionKey>>, ControlError> {
        let hrtf = match self.hrtf.get() {
            Some(h) => h.clone(),
            None => {
                let path = self.config.spatial.hrtf_path.clone();
                let loaded =
                    tokio::task::spawn_blocking(move || crate::spatial::HrtfSet::load(&path))
                        .await
                        .map_err(|_| ControlError::Internal)?
                        .map_err(|e| {
                            tracing::error!("cannot load the HRTF set for shared rooms: {e}");
                            ControlError::Internal
                        })?;
                self.hrtf.get_or_init(|| loaded).clone()
            }
        };
        let pool = match self.mixer_pool.get() {
            Some(p) => p.clone(),
            None => {
                let workers = self.config.mixer_threads();
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(workers)
                    .thread_name(|i| format!("mixer-{i}"))
                    .build()
                    .map_err(|e| {
                        tracing::error!("cannot start the mixer workers: {e}");
                        ControlError::Internal
                    })?;
                info!(workers, "spatial mixer workers started");
                self.mixer_pool.get_or_init(|| Arc::new(pool)).clone()
            }
        };
        crate::spatial::SpatialMixer::new(self.config.spatial.clone(), hrtf)
            .map(|m| Box::new(m.with_pool(pool)))
            .map_err(|e| {
                tracing::error!("cannot create a spatial mixer: {e}");
                ControlError::Internal
            })
    }

    pub async fn close_room(&self, room: &RoomId) -> Result<(), ControlError> {
        let result = self
            .ask(room, |reply| Command::CloseRoom {
                room: room.clone(),
                reply,
            })
            .await;
        // Dropping the entry drops the event sender: every event stream ends after RoomClosed.
        self.rooms().remove(room);
        self.placed.remove_room(room);
        result
    }

    pub async fn open_session(
        &self,
        room: &RoomId,
        req: OpenSession,
    ) -> Result<SessionOpened, ControlError> {
        if !req.role_is_valid() {
            return Err(ControlError::BadRequest(
                "role: lowercase letters and _ only, at most 32".into(),
            ));
        }
        let participant = req.participant.clone();
        let (replaced, session) = self
            .ask(room, |reply| Command::OpenSession {
                room: room.clone(),
                participant: req.participant,
                role: req.role,
                rights: req.rights,
                reply,
            })
            .await?;
        self.placed.add(room, &participant);
        Ok(SessionOpened {
            room: room.clone(),
            participant,
            node: self.config.node.id.clone(),
            replaced,
            session,
            turn: self.turn_advert.clone(),
        })
    }

    pub async fn close_session(
        &self,
        room: &RoomId,
        participant: &ParticipantId,
    ) -> Result<(), ControlError> {
        let closed = self
            .ask(room, |reply| Command::CloseSession {
                room: room.clone(),
                participant: participant.clone(),
                reply,
            })
            .await;
        self.placed.remove(room, participant);
        closed
    }

    /// The participant's offer; returns the SFU's answer.
    pub async fn offer(
        &self,
        room: &RoomId,
        participant: &ParticipantId,
        sdp: String,
    ) -> Result<String, ControlError> {
        self.ask(room, |reply| Command::Offer {
            room: room.clone(),
            participant: participant.clone(),
            sdp,
            reply,
        })
        .await
    }

    /// The participant's answer to the SFU's last offer.
    pub async fn answer(
        &self,
        room: &RoomId,
        participant: &ParticipantId,
        sdp: String,
    ) -> Result<(), ControlError> {
        self.ask(room, |reply| Command::Answer {
            room: room.clone(),
            participant: participant.clone(),
            sdp,
            reply,
        })
        .await
    }

    pub async fn candidate(
        &self,
        room: &RoomId,
        participant: &ParticipantId,
        candidate: IceCandidate,
    ) -> Result<(), ControlError> {
        self.ask(room, |reply| Command::Candidate {
            room: room.clone(),
            participant: participant.clone(),
            candidate,
            reply,
        })
        .await
    }

    pub async fn set_muted(
        &self,
        room: &RoomId,
        participant: &ParticipantId,
        kind: MediaKind,
        muted: bool,
    ) -> Result<(), ControlError> {
        self.ask(room, |reply| Command::SetMuted {
            room: room.clone(),
            participant: participant.clone(),
            kind,
            muted,
            reply,
        })
        .await
    }

    pub async fn set_vitals_sharing(
        &self,
        room: &RoomId,
        companions: bool,
    ) -> Result<(), ControlError> {
        self.ask(room, |reply| Command::SetVitalsSharing {
            room: room.clone(),
            companions,
            reply,
        })
        .await
    }

    pub async fn set_video_preference(
        &self,
        room: &RoomId,
        participant: &ParticipantId,
        preference: crate::control::api::VideoPreference,
    ) -> Result<(), ControlError> {
        self.ask(room, |reply| Command::SetVideoPreference {
            room: room.clone(),
            participant: participant.clone(),
            preference,
            reply,
        })
        .await
    }

    pub async fn describe_room(&self, room: &RoomId) -> Result<RoomInfo, ControlError> {
        self.ask(room, |reply| Command::DescribeRoom {
            room: room.clone(),
            reply,
        })
        .await
    }

    /// Subscribe to a room's events from now on.
    pub fn events(
        &self,
        room: &RoomId,
    ) -> Result<broadcast::Receiver<Arc<RoomEventEnvelope>>, ControlError> {
        self.rooms()
            .get(room)
            .map(|r| r.events.subscribe())
            .ok_or(ControlError::RoomNotFound)
    }

    pub fn info(&self) -> NodeInfo {
        let shards: Vec<ShardInfo> = self
            .shards
            .iter()
            .map(|h| {
                let h = h.lock().unwrap_or_else(|p| p.into_inner());
                ShardInfo {
                    index: h.index,
                    media_port: h.media_addr.port(),
                    rooms: h.load.rooms.load(Ordering::Relaxed),
                    sessions: h.load.sessions.load(Ordering::Relaxed),
                }
            })
            .collect();
        NodeInfo {
            node: self.config.node.id.clone(),
            announced_ip: self.config.node.announced_ip,
            rooms: self.rooms().len(),
            participants: shards.iter().map(|s| s.sessions).sum(),
            shards,
            draining: self.is_draining(),
            turn: self.turn_advert.clone(),
        }
    }

    /// Ask every media thread what it holds and set the gauges by kind and role (at scrape
    /// time: nothing on the packet path keeps them).
    pub async fn refresh_census(&self) {
        let mut asks = Vec::new();
        for i in 0..self.shards.len() {
            let (tx, rx) = oneshot::channel();
            if self.send(i, Command::Census { reply: tx }).is_ok() {
                asks.push(rx);
            }
        }
        let m = &self.metrics;
        m.rooms_by_kind.reset();
        m.participants_by_role.reset();
        m.tracks.reset();
        for census in futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
        {
            for (kind, n) in census.rooms {
                m.rooms_by_kind.with_label_values(&[kind]).add(n);
            }
            for ((kind, role), n) in census.participants {
                m.participants_by_role
                    .with_label_values(&[kind, &role])
                    .add(n);
            }
            for (kind, n) in census.tracks {
                m.tracks.with_label_values(&[kind]).add(n);
            }
        }
    }

    /// Close every room and stop the media threads.
    pub fn shutdown(&self) {
        if let Some(mut t) = self.turn.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.shutdown();
        }
        for h in &self.shards {
            h.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
        }
        self.rooms().clear();
    }
}
