//! What the control plane asks of a shard, and how the shard carries it out.

use std::time::Instant;

use rand::RngExt;
use tokio::sync::oneshot;
use tracing::info;

use super::ShardCore;
use super::demux::SessionKey;
use crate::control::api::{IceCandidate, ParticipantInfo, RoomInfo, TrackInfo};
use crate::error::ControlError;
use crate::events::{LeaveReason, MediaState, Rights, RoomEvent};
use crate::ids::{ParticipantId, RoomId};
use crate::media::MediaKind;
use crate::room::{Room, RoomEvents, RoomKind};
use crate::session::Session;
use crate::webrtc::{ConnectionState, Peer, PeerError, Side};

pub type Reply<T> = oneshot::Sender<Result<T, ControlError>>;

pub enum Command {
    CreateRoom {
        room: RoomId,
        kind: RoomKind,
        events: RoomEvents,
        /// Shared rooms: the spatial mixer, built off the media thread.
        mixer: Option<Box<crate::spatial::SpatialMixer<SessionKey>>>,
        reply: Reply<()>,
    },
    CloseRoom {
        room: RoomId,
        reply: Reply<()>,
    },
    /// An ICE-TCP connection whose first check names a session of this shard.
    AdoptTcp {
        stream: std::net::TcpStream,
        first: Vec<u8>,
    },
    /// Open a session; a participant that already has one is reconnecting, and its old
    /// session is replaced. Answers whether one was replaced.
    OpenSession {
        room: RoomId,
        participant: ParticipantId,
        role: Option<String>,
        rights: Rights,
        /// Whether an earlier session was replaced, and the new session's id.
        reply: Reply<(bool, u64)>,
    },
    CloseSession {
        room: RoomId,
        participant: ParticipantId,
        reply: Reply<()>,
    },
    Offer {
        room: RoomId,
        participant: ParticipantId,
        sdp: String,
        reply: Reply<String>,
    },
    Answer {
        room: RoomId,
        participant: ParticipantId,
        sdp: String,
        reply: Reply<()>,
    },
    Candidate {
        room: RoomId,
        participant: ParticipantId,
        candidate: IceCandidate,
        reply: Reply<()>,
    },
    SetMuted {
        room: RoomId,
        participant: ParticipantId,
        kind: MediaKind,
        muted: bool,
        reply: Reply<()>,
    },
    SetVitalsSharing {
        room: RoomId,
        companions: bool,
        reply: Reply<()>,
    },
    SetVideoPreference {
        room: RoomId,
        participant: ParticipantId,
        preference: crate::control::api::VideoPreference,
        reply: Reply<()>,
    },
    DescribeRoom {
        room: RoomId,
        reply: Reply<RoomInfo>,
    },
    /// What lives on the shard, for the node's gauges.
    Census {
        reply: oneshot::Sender<Census>,
    },
    Shutdown,
}

/// Rooms by kind, sessions by (room kind, role), published tracks by media kind.
#[derive(Debug, Default)]
pub struct Census {
    pub rooms: std::collections::HashMap<&'static str, i64>,
    pub participants: std::collections::HashMap<(&'static str, String), i64>,
    pub tracks: std::collections::HashMap<&'static str, i64>,
}

fn kind_label(kind: RoomKind) -> &'static str {
    match kind {
        RoomKind::Consultation => "consultation",
        RoomKind::Shared => "shared",
    }
}

fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

impl ShardCore {
    /// Carry out one command (shutting down and ICE-TCP connections are handled before it
    /// gets here: see `ShardCore::handle_command` and the driver).
    pub(super) fn command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Shutdown | Command::AdoptTcp { .. } => {}
            Command::CreateRoom {
                room,
                kind,
                events,
                mixer,
                reply,
            } => {
                let _ = reply.send(self.create_room(room, kind, events, mixer, now));
            }
            Command::CloseRoom { room, reply } => {
                let _ = reply.send(self.close_room(&room, now));
            }
            Command::OpenSession {
                room,
                participant,
                role,
                rights,
                reply,
            } => {
                let _ = reply.send(self.open_session(&room, participant, role, rights, now));
            }
            Command::CloseSession {
                room,
                participant,
                reply,
            } => {
                let r = self
                    .session_key(&room, &participant)
                    .map(|key| self.close_session(key, LeaveReason::Removed, now));
                let _ = reply.send(r);
            }
            Command::Offer {
                room,
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.remote_offer(&room, &participant, &sdp, now));
            }
            Command::Answer {
                room,
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.remote_answer(&room, &participant, &sdp, now));
            }
            Command::Candidate {
                room,
                participant,
                candidate,
                reply,
            } => {
                let r = self.session_key(&room, &participant).and_then(|key| {
                    self.sessions[key]
                        .peer
                        .add_remote_candidate(
                            &candidate.candidate,
                            candidate.sdp_mid,
                            candidate.sdp_m_line_index,
                        )
                        .map_err(|e| ControlError::InvalidCandidate(e.to_string()))
                });
                let _ = reply.send(r);
            }
            Command::SetMuted {
                room,
                participant,
                kind,
                muted,
                reply,
            } => {
                let _ = reply.send(self.set_muted(&room, &participant, kind, muted, now));
            }
            Command::SetVitalsSharing {
                room,
                companions,
                reply,
            } => {
                let _ = reply.send(self.set_vitals_sharing(&room, companions));
            }
            Command::SetVideoPreference {
                room,
                participant,
                preference,
                reply,
            } => {
                let _ = reply.send(self.set_video_preference(&room, &participant, preference));
            }
            Command::DescribeRoom { room, reply } => {
                let _ = reply.send(self.describe_room(&room));
            }
            Command::Census { reply } => {
                let _ = reply.send(self.census());
            }
        }
    }

    fn create_room(
        &mut self,
        id: RoomId,
        kind: RoomKind,
        events: RoomEvents,
        mixer: Option<Box<crate::spatial::SpatialMixer<SessionKey>>>,
        now: Instant,
    ) -> Result<(), ControlError> {
        if let Some(&key) = self.room_index.get(&id) {
            return if self.rooms[key].kind == kind {
                Ok(())
            } else {
                Err(ControlError::RoomKindMismatch)
            };
        }
        let mut room = Room::new(id.clone(), kind, events);
        if mixer.is_some() && self.next_mix.is_none() {
            self.next_mix = Some(now + crate::shard::spatial::TICK);
        }
        room.mixer = mixer;
        let key = self.rooms.insert(room);
        self.room_index.insert(id.clone(), key);
        self.metrics.rooms.inc();
        info!(shard = self.index, room = %id, ?kind, "room created");
        Ok(())
    }

    fn close_room(&mut self, id: &RoomId, now: Instant) -> Result<(), ControlError> {
        let key = *self.room_index.get(id).ok_or(ControlError::RoomNotFound)?;
        let members: Vec<_> = self.rooms[key].sessions.values().copied().collect();
        for s in members {
            self.close_session(s, LeaveReason::RoomClosed, now);
        }
        let mut room = self.rooms.remove(key);
        self.room_index.remove(id);
        room.emit(RoomEvent::RoomClosed);
        self.metrics.rooms.dec();
        info!(shard = self.index, room = %id, "room closed");
        Ok(())
    }

    pub(super) fn session_key(
        &self,
        room: &RoomId,
        participant: &ParticipantId,
    ) -> Result<usize, ControlError> {
        let rkey = *self
            .room_index
            .get(room)
            .ok_or(ControlError::RoomNotFound)?;
        self.rooms[rkey]
            .sessions
            .get(participant)
            .copied()
            .ok_or(ControlError::ParticipantNotFound)
    }

    fn open_session(
        &mut self,
        room: &RoomId,
        participant: ParticipantId,
        role: Option<String>,
        rights: Rights,
        now: Instant,
    ) -> Result<(bool, u64), ControlError> {
        let rkey = *self
            .room_index
            .get(room)
            .ok_or(ControlError::RoomNotFound)?;
        let replaced = match self.rooms[rkey].sessions.get(&participant).copied() {
            Some(old) => {
                self.close_session(old, LeaveReason::Removed, now);
                true
            }
            None => false,
        };
        let cap = match self.rooms[rkey].kind {
            RoomKind::Consultation => self.settings.max_participants,
            RoomKind::Shared => self.settings.max_shared_participants,
        };
        if self.rooms[rkey].sessions.len() >= cap {
            return Err(ControlError::RoomFull);
        }
        // A participant coming back (replaced above) keeps their place; a new one needs
        // headroom. A shared room that cannot mix one more voice is full.
        if !replaced && !self.has_headroom() {
            return Err(match self.rooms[rkey].kind {
                RoomKind::Consultation => ControlError::Overloaded,
                RoomKind::Shared => ControlError::RoomFull,
            });
        }
        // The ufrag keys the shared-port demultiplexer; it must be unique on this shard.
        // Its first two characters name this shard, so that an ICE-TCP connection (which
        // arrives at the node, not the shard) finds its way here.
        let ufrag = loop {
            let u = format!("{:02x}{}", self.index, random_token(6));
            if !self.demux.has_ufrag(&u) {
                break u;
            }
        };
        let pwd = random_token(24);
        let mut peer = Peer::new(
            Side::Server {
                ufrag: ufrag.clone(),
                pwd,
                fast_path: self.settings.fast_path,
            },
            self.candidate,
            now,
        )
        .map_err(|e| {
            tracing::error!(shard = self.index, "cannot create a peer connection: {e}");
            ControlError::Internal
        })?;
        if let Some(tcp) = self.settings.tcp_candidate {
            peer.set_tcp_candidate(tcp, true);
        }
        let uid = self.next_uid();
        let session = Session::new(
            uid,
            rkey,
            room.clone(),
            participant.clone(),
            role.clone(),
            rights,
            peer,
            ufrag.clone(),
            now,
        );
        let key = self.sessions.insert(session);
        // In a shared room everyone is a voice and an ear of the spatial mix (as rights allow).
        if let Some(mixer) = self.rooms[rkey].mixer.as_mut() {
            use crate::spatial::Role;
            let role = match (rights.publish, rights.subscribe) {
                (true, true) => Some(Role::SpeakerListener),
                (true, false) => Some(Role::SpeakerOnly),
                (false, true) => Some(Role::ListenerOnly),
                (false, false) => None,
            };
            if let Some(role) = role
                && let Err(e) = mixer.add_participant(key, role)
            {
                self.sessions.remove(key);
                tracing::warn!(shard = self.index, room = %room, "the spatial mix refused a participant: {e}");
                return Err(ControlError::RoomFull);
            }
            self.rooms[rkey].poses_changed = true;
        }
        self.by_uid.insert(uid, key);
        self.demux.add_session(ufrag, key);
        let r = &mut self.rooms[rkey];
        r.sessions.insert(participant.clone(), key);
        r.emit(RoomEvent::ParticipantJoined {
            participant: participant.clone(),
            role,
            rights,
        });
        self.metrics.participants.inc();
        info!(shard = self.index, room = %room, participant = %participant, replaced, "session opened");
        Ok((replaced, uid))
    }

    fn remote_offer(
        &mut self,
        room: &RoomId,
        participant: &ParticipantId,
        sdp: &str,
        now: Instant,
    ) -> Result<String, ControlError> {
        let key = self.session_key(room, participant)?;
        let s = &mut self.sessions[key];
        if s.peer.is_negotiating() {
            return Err(ControlError::Glare);
        }
        let answer = s.peer.accept_offer(now, sdp).map_err(|e| match e {
            PeerError::Rejected(m) => ControlError::InvalidSdp(m),
            PeerError::Setup(m) => {
                tracing::error!(shard = self.index, "answering an offer failed: {m}");
                ControlError::Internal
            }
        })?;
        s.had_remote_offer = true;
        // A new participant receives what the room already publishes: in a shared room, the
        // video, and its own spatial mix instead of everyone's audio.
        if s.rights.subscribe {
            let rkey = s.room;
            let shared = self.rooms[rkey].mixer.is_some();
            let tracks: Vec<_> = self.rooms[rkey]
                .tracks
                .values()
                .filter(|p| !shared || p.codec.kind() == MediaKind::Video)
                .map(|p| p.id)
                .collect();
            for track in tracks {
                self.subscribe(key, track, now);
            }
            if shared {
                self.add_mix_track(key);
            }
        }
        self.mark_dirty(key);
        Ok(answer)
    }

    fn remote_answer(
        &mut self,
        room: &RoomId,
        participant: &ParticipantId,
        sdp: &str,
        now: Instant,
    ) -> Result<(), ControlError> {
        let key = self.session_key(room, participant)?;
        let s = &mut self.sessions[key];
        s.peer.accept_answer(now, sdp).map_err(|e| match e {
            PeerError::Rejected(m) if !s.peer.is_negotiating() => {
                let _ = m;
                ControlError::NoPendingOffer
            }
            PeerError::Rejected(m) => ControlError::InvalidSdp(m),
            PeerError::Setup(_) => ControlError::Internal,
        })?;
        // Subscriptions this answer made ready start with a keyframe.
        let rkey = s.room;
        let tracks: Vec<_> = s.subscriptions.values().copied().collect();
        for track in tracks {
            let newly_ready = self.rooms[rkey].tracks.get_mut(&track).is_some_and(|p| {
                p.subscribers
                    .iter_mut()
                    .filter(|sub| sub.session == key && !sub.ready)
                    .fold(false, |_, sub| {
                        sub.ready = true;
                        true
                    })
            });
            if newly_ready {
                self.request_keyframe(track, now);
            }
        }
        self.mark_dirty(key);
        Ok(())
    }

    fn set_muted(
        &mut self,
        room: &RoomId,
        participant: &ParticipantId,
        kind: MediaKind,
        muted: bool,
        now: Instant,
    ) -> Result<(), ControlError> {
        let key = self.session_key(room, participant)?;
        let s = &mut self.sessions[key];
        match kind {
            MediaKind::Audio => s.audio_muted = muted,
            MediaKind::Video => s.video_muted = muted,
        }
        let rkey = s.room;
        if kind == MediaKind::Audio
            && let Some(m) = self.rooms[rkey].mixer.as_mut()
        {
            let _ = m.set_muted(key, muted);
        }
        let tracks: Vec<_> = s.publications.values().copied().collect();
        let mut changed = Vec::new();
        for track in tracks {
            if let Some(p) = self.rooms[rkey].tracks.get_mut(&track)
                && p.codec.kind() == kind
                && p.muted != muted
            {
                p.muted = muted;
                if muted {
                    // What the subscribers get after the unmute follows on from what they
                    // had, with no hole to NACK (video from the keyframe asked for below).
                    for sub in &mut p.subscribers {
                        sub.down.interrupt();
                    }
                }
                changed.push(track);
            }
        }
        for track in changed {
            self.rooms[rkey].emit(RoomEvent::TrackMuted {
                track,
                participant: participant.clone(),
                muted,
            });
            if !muted {
                self.request_keyframe(track, now);
            }
        }
        Ok(())
    }

    /// A subscriber says how it shows one video (its tile's size, pinned or not); the next
    /// allocation applies it.
    fn set_video_preference(
        &mut self,
        room: &RoomId,
        participant: &ParticipantId,
        preference: crate::control::api::VideoPreference,
    ) -> Result<(), ControlError> {
        let key = self.session_key(room, participant)?;
        let s = &mut self.sessions[key];
        if !s.subscriptions.values().any(|t| *t == preference.track) {
            return Err(ControlError::TrackNotFound);
        }
        let sub = self.rooms[s.room]
            .tracks
            .get_mut(&preference.track)
            .filter(|p| p.codec.kind() == MediaKind::Video)
            .and_then(|p| p.subscribers.iter_mut().find(|sub| sub.session == key))
            .ok_or(ControlError::TrackNotFound)?;
        sub.max_quality = preference.max_quality.map(|q| q.rank());
        sub.pinned = preference.pinned;
        // Decide at the next housekeeping turn rather than waiting out the interval.
        s.allocation.decide_soon();
        Ok(())
    }

    fn describe_room(&self, room: &RoomId) -> Result<RoomInfo, ControlError> {
        let rkey = *self
            .room_index
            .get(room)
            .ok_or(ControlError::RoomNotFound)?;
        let r = &self.rooms[rkey];
        let mut participants: Vec<ParticipantInfo> = r
            .sessions
            .values()
            .filter_map(|&k| self.sessions.get(k))
            .map(|s| {
                let mut publications: Vec<_> = s.publications.values().copied().collect();
                publications.sort();
                ParticipantInfo {
                    participant: s.participant.clone(),
                    role: s.role.clone(),
                    rights: s.rights,
                    media: if s.peer.state() == ConnectionState::Connected {
                        MediaState::Connected
                    } else {
                        MediaState::Disconnected
                    },
                    publications,
                    subscriptions: s.subscriptions.len(),
                    audio_muted: s.audio_muted,
                    video_muted: s.video_muted,
                }
            })
            .collect();
        participants.sort_by(|a, b| a.participant.cmp(&b.participant));
        let mut tracks: Vec<TrackInfo> = r
            .tracks
            .values()
            .map(|p| TrackInfo {
                track: p.id,
                participant: p.participant.clone(),
                kind: p.codec.kind(),
                codec: p.codec,
                muted: p.muted,
                subscribers: p.subscribers.len(),
            })
            .collect();
        tracks.sort_by_key(|t| t.track);
        Ok(RoomInfo {
            room: r.id.clone(),
            kind: r.kind,
            participants,
            tracks,
        })
    }

    fn census(&self) -> Census {
        let mut c = Census::default();
        for (_, r) in self.rooms.iter() {
            *c.rooms.entry(kind_label(r.kind)).or_default() += 1;
            for p in r.tracks.values() {
                let kind = match p.codec.kind() {
                    MediaKind::Audio => "audio",
                    MediaKind::Video => "video",
                };
                *c.tracks.entry(kind).or_default() += 1;
            }
        }
        for (_, s) in self.sessions.iter() {
            let Some(r) = self.rooms.get(s.room) else {
                continue;
            };
            let role = s.role.clone().unwrap_or_else(|| "none".into());
            *c.participants
                .entry((kind_label(r.kind), role))
                .or_default() += 1;
        }
        c
    }

    /// Close every room (node shutdown).
    pub(super) fn close_all(&mut self, now: Instant) {
        let rooms: Vec<RoomId> = self.room_index.keys().cloned().collect();
        for r in rooms {
            let _ = self.close_room(&r, now);
        }
    }
}
