//! What a shard does with a peer's outputs: publications appear and end, packets fan out to
//! subscribers, keyframe requests go upstream (coalesced), and subscription changes become
//! offers.

use std::time::Instant;

use rand::RngExt;
use tracing::{info, warn};

use super::ShardCore;
use super::demux::SessionKey;
use crate::events::{LeaveReason, MediaState, RoomEvent};
use crate::forward::DownTrack;
use crate::ids::TrackId;
use crate::media::{Feedback, MediaKind, RtpPacket};
use crate::metrics::DropReason;
use crate::room::{FanOutSink, Publication, Subscriber};
use crate::webrtc::{ConnectionState, InboundId, OutboundId, PeerOutput};

impl ShardCore {
    /// Act on everything the session's peer has to say.
    pub(super) fn drive(&mut self, key: SessionKey, now: Instant) {
        loop {
            let Some(s) = self.sessions.get_mut(key) else {
                return;
            };
            let peer = &mut s.peer;
            let out =
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| peer.poll_output()))
                {
                    Ok(Some(out)) => out,
                    Ok(None) => return,
                    Err(_) => {
                        self.on_peer_panic(key, now);
                        return;
                    }
                };
            match out {
                PeerOutput::Rtp {
                    inbound,
                    layer,
                    packet,
                } => self.forward(key, inbound, layer, &packet, now),
                PeerOutput::State(state) => self.on_state(key, state, now),
                PeerOutput::TrackOpened { inbound, codec, .. } => {
                    self.publish(key, inbound, codec, now)
                }
                PeerOutput::TrackClosed { inbound } => self.unpublish(key, inbound),
                PeerOutput::UnroutableRtp => self.tally.drop(DropReason::UnknownSsrc),
                PeerOutput::Feedback {
                    outbound,
                    feedback: Feedback::KeyframeRequest,
                } => {
                    self.metrics
                        .keyframe_requests
                        .with_label_values(&["from_subscribers"])
                        .inc();
                    let track = self
                        .sessions
                        .get(key)
                        .and_then(|s| s.subscriptions.get(&outbound).copied());
                    if let Some(track) = track {
                        self.request_keyframe(track, now);
                    }
                }
                // Data channels carry avatar poses in shared rooms and the patient's vitals
                // (on the channel labelled so) in consultations; others stay open and unread.
                PeerOutput::ChannelMessage {
                    channel,
                    data,
                    text,
                } => {
                    if self.is_vitals_channel(key, channel) {
                        self.on_vitals(key, &data, text, now)
                    } else {
                        self.on_pose(key, &data, text, now)
                    }
                }
                PeerOutput::ChannelOpened { channel, label } => {
                    if self.in_shared_room(key) {
                        self.on_channel(key, Some(channel))
                    } else {
                        self.on_vitals_channel(key, channel, &label)
                    }
                }
                PeerOutput::ChannelClosed { channel } => {
                    let Some(s) = self.sessions.get_mut(key) else {
                        continue;
                    };
                    if s.vitals_channel == Some(channel) {
                        s.vitals_channel = None;
                    }
                    if s.pose_channel == Some(channel) {
                        self.on_channel(key, None);
                    }
                }
            }
        }
    }

    /// A publisher's packet: its room fans it out, and a keyframe request the room held
    /// back goes to the publisher with it.
    fn forward(
        &mut self,
        key: SessionKey,
        inbound: InboundId,
        layer: u8,
        packet: &RtpPacket,
        now: Instant,
    ) {
        self.tally.rtp_packets_received += 1;
        let ShardCore {
            sessions,
            rooms,
            tally,
            dirty,
            metrics,
            ..
        } = self;
        let Some(s) = sessions.get(key) else { return };
        let Some(&track) = s.publications.get(&inbound) else {
            // A track we did not accept: the participant may not publish.
            tally.drop(DropReason::NotPermitted);
            return;
        };
        let Some(room) = rooms.get_mut(s.room) else {
            tally.drop(DropReason::UnknownSsrc);
            return;
        };
        let mut sink = FanOutSink {
            sessions,
            touched: dirty,
            tally,
        };
        let Some(layers) = room.fan_out(track, layer, packet, now, &mut sink) else {
            return;
        };
        if let Some(p) = sessions.get_mut(key)
            && p.peer.request_keyframe(now, inbound, layers)
        {
            metrics
                .keyframe_requests
                .with_label_values(&["to_publishers"])
                .inc();
            self.mark_dirty(key);
        }
    }

    fn on_state(&mut self, key: SessionKey, state: ConnectionState, now: Instant) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let participant = s.participant.clone();
        let rkey = s.room;
        match state {
            ConnectionState::Connected => {
                let first = !s.connected_once;
                s.connected_once = true;
                if first {
                    info!(shard = self.index, room = %s.room_id, participant = %participant, ms = now.duration_since(s.created).as_millis() as u64, "media connected");
                }
                self.rooms[rkey].emit(RoomEvent::ParticipantMedia {
                    participant,
                    state: MediaState::Connected,
                });
                // Offers wait for the first connection (see maybe_offer).
                self.mark_dirty(key);
            }
            ConnectionState::Disconnected => {
                self.rooms[rkey].emit(RoomEvent::ParticipantMedia {
                    participant,
                    state: MediaState::Disconnected,
                });
            }
            ConnectionState::Failed | ConnectionState::Closed => {
                self.close_session(key, LeaveReason::Failed, now);
            }
            ConnectionState::Connecting => {}
        }
    }

    /// A session's first packet on a new track: it becomes a publication of the room.
    fn publish(
        &mut self,
        key: SessionKey,
        inbound: InboundId,
        codec: crate::media::Codec,
        now: Instant,
    ) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if !s.rights.publish {
            warn!(shard = self.index, room = %s.room_id, participant = %s.participant, "media from a participant without the right to publish");
            return;
        }
        let track = TrackId(
            self.track_ids
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        s.publications.insert(inbound, track);
        let muted = match codec.kind() {
            MediaKind::Audio => s.audio_muted,
            MediaKind::Video => s.video_muted,
        };
        let (rkey, participant) = (s.room, s.participant.clone());
        let interpreter = s.role.as_deref() == Some("interpreter");
        let mut publication = Publication::new(
            track,
            key,
            participant.clone(),
            inbound,
            codec,
            self.settings.keyframe_request_interval,
            now,
        );
        publication.muted = muted;
        publication.interpreter = interpreter;
        let room = &mut self.rooms[rkey];
        room.tracks.insert(track, publication);
        room.emit(RoomEvent::TrackPublished {
            track,
            participant: participant.clone(),
            kind: codec.kind(),
            codec,
        });
        self.metrics
            .tracks
            .with_label_values(&[kind_label(codec.kind())])
            .inc();
        info!(shard = self.index, room = %room.id, participant = %participant, %track, ?codec, "track published");
        // Voices in a shared room reach the others through the mix, not as tracks.
        if room.mixer.is_some() && codec.kind() == MediaKind::Audio {
            return;
        }
        let others: Vec<SessionKey> = room
            .sessions
            .values()
            .copied()
            .filter(|&k| k != key)
            .collect();
        for other in others {
            let ready = self
                .sessions
                .get(other)
                .is_some_and(|o| o.rights.subscribe && o.had_remote_offer);
            if ready {
                self.subscribe(other, track, now);
            }
        }
    }

    /// Give session `key` its own outbound copy of `track`. The next offer carries it.
    pub(super) fn subscribe(&mut self, key: SessionKey, track: TrackId, now: Instant) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.subscriptions.values().any(|&t| t == track) {
            return;
        }
        let Some(publication) = self.rooms[s.room].tracks.get_mut(&track) else {
            return;
        };
        if publication.publisher == key {
            return;
        }
        let mut rng = rand::rng();
        // Zero is a valid SSRC, but some stacks treat it as "unset".
        let ssrc = rng.random_range(1..=u32::MAX);
        let mut down = DownTrack::new(publication.codec, ssrc, rng.random(), rng.random());
        // The best layer being sent; the allocator adjusts it to the subscriber's bandwidth.
        if let Some(&best) = publication.ranked_layers(now).last() {
            down.set_target(Some(best));
        }
        let outbound = match s.peer.add_outbound(
            publication.codec,
            ssrc,
            publication.participant.as_str(),
            &track.to_string(),
        ) {
            Ok(o) => o,
            Err(e) => {
                warn!(shard = self.index, %track, "cannot add an outbound track: {e}");
                return;
            }
        };
        publication.subscribers.push(Subscriber {
            session: key,
            outbound,
            down,
            ready: false,
            max_quality: None,
            pinned: false,
        });
        s.subscriptions.insert(outbound, track);
        s.needs_offer = true;
        self.mark_dirty(key);
    }

    /// The publisher stopped sending a track (renegotiated it away): it ends for everyone.
    fn unpublish(&mut self, key: SessionKey, inbound: InboundId) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(track) = s.publications.remove(&inbound) else {
            return;
        };
        let rkey = s.room;
        self.end_publication(rkey, track);
    }

    fn end_publication(&mut self, rkey: usize, track: TrackId) {
        let Some(publication) = self.rooms[rkey].tracks.remove(&track) else {
            return;
        };
        for sub in &publication.subscribers {
            self.unsubscribe(sub.session, sub.outbound);
        }
        self.metrics
            .tracks
            .with_label_values(&[kind_label(publication.codec.kind())])
            .dec();
        let room = &mut self.rooms[rkey];
        info!(shard = self.index, room = %room.id, participant = %publication.participant, %track, "track ended");
        room.emit(RoomEvent::TrackEnded {
            track,
            participant: publication.participant,
        });
    }

    fn unsubscribe(&mut self, key: SessionKey, outbound: OutboundId) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.subscriptions.remove(&outbound).is_none() {
            return;
        }
        if let Err(e) = s.peer.remove_outbound(outbound) {
            warn!(shard = self.index, "cannot remove an outbound track: {e}");
        }
        s.needs_offer = true;
        self.mark_dirty(key);
    }

    /// Ask a publisher for a keyframe, at most once per coalescing interval.
    pub(super) fn request_keyframe(&mut self, track: TrackId, now: Instant) {
        let ShardCore {
            sessions, rooms, ..
        } = self;
        let Some(publication) = rooms.iter_mut().find_map(|(_, r)| r.tracks.get_mut(&track)) else {
            return;
        };
        if !publication.take_keyframe_request(now) {
            return;
        }
        let (publisher, inbound) = (publication.publisher, publication.inbound);
        let layers = publication.wanted_layers();
        if let Some(p) = sessions.get_mut(publisher)
            && p.peer.request_keyframe(now, inbound, layers)
        {
            self.metrics
                .keyframe_requests
                .with_label_values(&["to_publishers"])
                .inc();
            self.mark_dirty(publisher);
        }
    }

    /// Subscribers still waiting for their first keyframe get another request.
    pub(super) fn retry_keyframes(&mut self, now: Instant) {
        let overdue: Vec<TrackId> = self
            .rooms
            .iter()
            .flat_map(|(_, r)| r.tracks.values())
            .filter(|p| p.keyframe_overdue(now))
            .map(|p| p.id)
            .collect();
        for track in overdue {
            self.request_keyframe(track, now);
        }
    }

    /// Send the offer a session is owed, once it is connected and no exchange is under way.
    pub(super) fn maybe_offer(&mut self, key: SessionKey, now: Instant) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if !s.needs_offer || !s.had_remote_offer || !s.connected_once || s.peer.is_negotiating() {
            return;
        }
        s.needs_offer = false;
        match s.peer.create_offer(now) {
            Ok(sdp) => {
                let participant = s.participant.clone();
                let session = s.uid;
                self.rooms[s.room].emit(RoomEvent::Offer {
                    participant,
                    session,
                    sdp,
                });
            }
            Err(e) => {
                warn!(shard = self.index, room = %s.room_id, participant = %s.participant, "cannot create an offer: {e}")
            }
        }
    }

    /// End a session: its tracks end for the others, its subscriptions go, its addresses stop
    /// routing, and the peer says goodbye (DTLS close_notify).
    pub(super) fn close_session(&mut self, key: SessionKey, reason: LeaveReason, now: Instant) {
        let _ = now;
        if !self.sessions.contains(key) {
            return;
        }
        let mut s = self.sessions.remove(key);
        self.by_uid.remove(&s.uid);
        self.demux.remove_session(&s.ufrag, &s.addrs);
        let rkey = s.room;
        if let Some(room) = self.rooms.get_mut(rkey) {
            if room.sessions.get(&s.participant) == Some(&key) {
                room.sessions.remove(&s.participant);
                room.speaker.remove(&s.participant);
            }
            if let Some(m) = room.mixer.as_mut() {
                m.remove_participant(key);
                room.poses_changed = true;
            }
            for p in room.tracks.values_mut() {
                p.subscribers.retain(|sub| sub.session != key);
            }
        }
        for track in s.publications.values().copied().collect::<Vec<_>>() {
            self.end_publication(rkey, track);
        }
        s.peer.close();
        self.take_transmits(&mut s.peer);
        if let Some(room) = self.rooms.get_mut(rkey) {
            room.emit(RoomEvent::ParticipantLeft {
                participant: s.participant.clone(),
                reason,
            });
        }
        self.metrics.participants.dec();
        self.metrics
            .sessions_closed
            .with_label_values(&[leave_label(reason)])
            .inc();
        info!(shard = self.index, room = %s.room_id, participant = %s.participant, ?reason, "session closed");
    }
}

fn kind_label(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    }
}

fn leave_label(reason: LeaveReason) -> &'static str {
    match reason {
        LeaveReason::Removed => "removed",
        LeaveReason::RoomClosed => "room_closed",
        LeaveReason::Timeout => "timeout",
        LeaveReason::Failed => "failed",
        LeaveReason::InternalError => "internal_error",
    }
}
