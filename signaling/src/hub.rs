//! The consultations this instance runs: created on the first join (room placed on an SFU
//! node), watched by a clock task (warning, hard stop, cancellation, cleanup), and fed the
//! SFU's room events (offers and tracks) for their members. When a room's node is lost the
//! room moves to another node and its members are asked to reconnect.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use metaclinic_protocol::control::client::StreamItem;
use metaclinic_protocol::events::{LeaveReason, RoomEvent};
use metaclinic_protocol::room::RoomKind;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::audit::AuditEvent;
use crate::cluster::PlacedNode;
use crate::consultation::Consultation;
use crate::consultation::snapshot::Snapshot;
use crate::protocol::{Description, EndReason, SdpKind, ServerMessage};
use crate::state::{AppState, Deps};

#[derive(Default)]
pub struct Hub {
    consultations: Mutex<HashMap<String, Arc<Consultation>>>,
    /// One gate per consultation being opened: joins of the same appointment wait for the
    /// first to place it; nobody else waits (the map's lock is never held across a network
    /// call).
    opening: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("no SFU node is available")]
    NoSfu,
}

/// Statuses under which a running consultation continues (the policy's admission rule).
const RUNNING_STATUSES: [&str; 3] = ["booked", "arrived", "checked-in"];

impl Hub {
    pub async fn get(&self, appointment_id: &str) -> Option<Arc<Consultation>> {
        self.consultations.lock().await.get(appointment_id).cloned()
    }

    /// The appointment's consultation, created (room placed, tasks started) if needed.
    pub async fn get_or_create(
        &self,
        deps: &AppState,
        appointment_id: &str,
        kind: RoomKind,
        closes_at: DateTime<Utc>,
    ) -> Result<Arc<Consultation>, HubError> {
        if let Some(c) = self.running(appointment_id).await {
            return Ok(c);
        }
        let gate = self
            .opening
            .lock()
            .await
            .entry(appointment_id.to_owned())
            .or_default()
            .clone();
        let opened = {
            let _opening = gate.lock().await;
            // Opened by the join this one waited for?
            match self.running(appointment_id).await {
                Some(c) => Ok(c),
                None => self.open(deps, appointment_id, kind, closes_at).await,
            }
        };
        let mut gates = self.opening.lock().await;
        if gates
            .get(appointment_id)
            .is_some_and(|g| Arc::ptr_eq(g, &gate))
        {
            gates.remove(appointment_id);
        }
        opened
    }

    /// The appointment's consultation here, unless it has ended.
    async fn running(&self, appointment_id: &str) -> Option<Arc<Consultation>> {
        let map = self.consultations.lock().await;
        map.get(appointment_id)
            .filter(|c| c.ended().is_none())
            .cloned()
    }

    /// Open the consultation: its snapshot from Redis if another replica ran it, its room
    /// placed on a node, the node's events followed. Only then is it listed.
    async fn open(
        &self,
        deps: &AppState,
        appointment_id: &str,
        kind: RoomKind,
        closes_at: DateTime<Utc>,
    ) -> Result<Arc<Consultation>, HubError> {
        let room = crate::consultation::room_for(appointment_id);
        // Another replica ran it before (it died or drained): continue from its snapshot.
        let snapshot = deps
            .homes
            .load(appointment_id)
            .await
            .and_then(|text| Snapshot::from_json(&text));
        let closes_at = snapshot.as_ref().map_or(closes_at, |s| s.closes_at);
        let ttl = placement_ttl(deps, closes_at);
        let node = open_room(deps, &room, kind, None, ttl).await?;
        let c = Arc::new(match snapshot {
            Some(s) => {
                deps.metrics.consultations_restored.inc();
                info!(appointment = %appointment_id, members = s.members.len(), "consultation continued from another replica's snapshot");
                Consultation::restore(appointment_id, kind, node, s, deps.clock.now())
            }
            None => {
                audit_start(deps, appointment_id, &room).await;
                Consultation::new(appointment_id, kind, node, closes_at)
            }
        });
        follow(deps, &c).await?;
        tokio::spawn(watch(deps.clone(), Arc::downgrade(&c)));
        let mut map = self.consultations.lock().await;
        map.insert(appointment_id.to_owned(), c.clone());
        deps.metrics.consultations.set(map.len() as i64);
        info!(appointment = %appointment_id, node = %c.node().id, room = %c.room, "consultation opened");
        Ok(c)
    }

    /// End a consultation for everyone: audit it, tell the members, close the SFU room,
    /// forget it.
    pub async fn finish(
        &self,
        deps: &Deps,
        c: &Arc<Consultation>,
        reason: EndReason,
        by: Option<&str>,
    ) {
        let first = c.claim_end(reason);
        self.forget_here(deps, c).await;
        if !first {
            return;
        }
        let reason_code = match reason {
            EndReason::HostEnded => "host_ended",
            EndReason::TimeOver => "time_over",
            EndReason::Cancelled => "cancelled",
            EndReason::ServiceRestart => "service_restart",
        };
        let audited = deps
            .audit
            .record(AuditEvent {
                fhir_user: by.map(str::to_owned),
                appointment: Some(format!("Appointment/{}", c.appointment_id)),
                room: Some(c.room.clone()),
                action: "end".into(),
                outcome: "ok".into(),
                reason: Some(reason_code.into()),
                ..AuditEvent::default()
            })
            .await;
        if let Err(e) = audited {
            // The end happens regardless: a call past its time or cancelled must stop.
            warn!(appointment = %c.appointment_id, "auditing the end failed: {e}");
        }
        c.announce_end();
        let node = c.node();
        if let Err(e) = node.control.close_room(&c.room).await {
            warn!(room = %c.room, "closing the SFU room: {e}");
        }
        deps.cluster.release(&c.room, &node.id).await;
        deps.homes.forget(&c.appointment_id).await;
        deps.homes.release(&c.appointment_id).await;
    }

    /// Take `c` out of this replica's consultations (if it is still the one listed).
    async fn forget_here(&self, deps: &Deps, c: &Arc<Consultation>) {
        let mut map = self.consultations.lock().await;
        if map
            .get(&c.appointment_id)
            .is_some_and(|x| Arc::ptr_eq(x, c))
        {
            map.remove(&c.appointment_id);
        }
        deps.metrics.consultations.set(map.len() as i64);
    }

    /// Stop running `c` here without ending it: another replica continues it (from its
    /// snapshot) and its clients are told to reconnect.
    async fn hand_over(&self, deps: &Deps, c: &Arc<Consultation>, after_ms: u64) -> usize {
        self.forget_here(deps, c).await;
        let told = c.hand_over(after_ms);
        deps.metrics
            .reconnect_hints
            .with_label_values(&["handed_over"])
            .inc_by(told as u64);
        told
    }

    /// Draining with shared state: store every consultation's snapshot, give up the
    /// leases, and send their clients to the other replicas. Returns how many were told.
    pub async fn hand_over_all(&self, deps: &Deps, after_ms: u64) -> usize {
        let all: Vec<Arc<Consultation>> =
            self.consultations.lock().await.values().cloned().collect();
        let mut told = 0;
        for c in all {
            save_snapshot(deps, &c, c.snapshot().to_json()).await;
            deps.homes.release(&c.appointment_id).await;
            told += self.hand_over(deps, &c, after_ms).await;
        }
        if told > 0 {
            info!(
                clients = told,
                "consultations handed over to other replicas"
            );
        }
        told
    }

    /// Keep the leases of the consultations this replica runs; one whose lease another
    /// replica took (this one was cut off from Redis for a while) is handed over.
    pub async fn renew_homes(&self, deps: &Deps) {
        let ids: Vec<String> = self.consultations.lock().await.keys().cloned().collect();
        for lost in deps.homes.renew(&ids).await {
            let Some(c) = self.get(&lost).await else {
                continue;
            };
            warn!(appointment = %lost, "another replica runs this consultation now; handing it over");
            self.hand_over(deps, &c, 0).await;
        }
    }

    /// Close every consultation (shutdown of the only instance).
    pub async fn finish_all(&self, deps: &Deps) {
        let all: Vec<Arc<Consultation>> =
            self.consultations.lock().await.values().cloned().collect();
        for c in all {
            self.finish(deps, &c, EndReason::ServiceRestart, None).await;
        }
    }

    /// Draining: tell every connected client to reconnect (to another replica). Returns
    /// how many were told.
    pub async fn ask_all_to_reconnect(&self, after_ms: u64) -> usize {
        let all: Vec<Arc<Consultation>> =
            self.consultations.lock().await.values().cloned().collect();
        all.iter()
            .map(|c| c.ask_to_reconnect(after_ms, false))
            .sum()
    }

    /// `lost` is gone: move each of its rooms this instance runs to another node, and tell
    /// the members in those calls to reconnect (they rejoin; the appointment is read again).
    pub async fn move_rooms_off(&self, deps: &AppState, lost: &str) {
        let on_lost: Vec<Arc<Consultation>> = self
            .consultations
            .lock()
            .await
            .values()
            .filter(|c| c.node().id == lost && c.ended().is_none())
            .cloned()
            .collect();
        for c in on_lost {
            let deps = deps.clone();
            let lost = lost.to_owned();
            tokio::spawn(async move { move_room(&deps, &c, &lost).await });
        }
    }
}

/// A consultation begins (not one continued from a snapshot): the start of its Encounter
/// and of its webhooks (crate::webhooks).
async fn audit_start(deps: &Deps, appointment_id: &str, room: &str) {
    let audited = deps
        .audit
        .record(AuditEvent {
            appointment: Some(format!("Appointment/{appointment_id}")),
            room: Some(room.to_owned()),
            action: "start".into(),
            outcome: "ok".into(),
            ..AuditEvent::default()
        })
        .await;
    if let Err(e) = audited {
        // The join that opens it is audited on its own, and refused if the log is stopped.
        warn!(appointment = %appointment_id, "auditing the start failed: {e}");
    }
}

/// Store the consultation's snapshot (`text`) for whoever continues it.
async fn save_snapshot(deps: &Deps, c: &Consultation, text: String) {
    let ttl = placement_ttl(deps, c.closes_at());
    deps.homes.save(&c.appointment_id, text, ttl).await;
}

/// Renew this replica's consultation leases every second, for as long as the service runs.
pub async fn keep_homes(deps: std::sync::Weak<Deps>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let Some(d) = deps.upgrade() else { return };
        d.hub.renew_homes(&d).await;
    }
}

/// How long a placement is kept: the consultation's span, with room for extensions.
fn placement_ttl(deps: &Deps, closes_at: DateTime<Utc>) -> Duration {
    let left = (closes_at - deps.clock.now()).num_seconds().max(0) as u64;
    Duration::from_secs(left + deps.config.policy.max_extension_min * 60 + 3600)
}

/// Place `room` (on another node than `lost`, if given) and create it there. A node that
/// drains, is full or is overloaded hands the room on; one that does not answer is reported
/// lost.
async fn open_room(
    deps: &Deps,
    room: &str,
    kind: RoomKind,
    lost: Option<&str>,
    ttl: Duration,
) -> Result<PlacedNode, HubError> {
    let mut node = match lost {
        Some(l) => deps.cluster.replace(room, l, ttl).await,
        None => deps.cluster.place(room, ttl).await,
    }
    .map_err(|e| {
        warn!(room, "cannot place the room: {e}");
        HubError::NoSfu
    })?;
    for _ in 0..3 {
        match node.control.create_room_of_kind(room, kind).await {
            Ok(_) => return Ok(node),
            Err(e) => {
                warn!(room, node = %node.id, "cannot create the room: {e}");
                if e.status == 0 {
                    deps.cluster.node_unreachable(&node.id).await;
                } else if !matches!(e.code.as_str(), "draining" | "node_full" | "overloaded") {
                    return Err(HubError::NoSfu);
                }
                node = deps
                    .cluster
                    .replace(room, &node.id, ttl)
                    .await
                    .map_err(|_| HubError::NoSfu)?;
            }
        }
    }
    Err(HubError::NoSfu)
}

/// Follow the room's events on its current node (before anyone joins, so no offer of the
/// SFU's is missed).
async fn follow(deps: &AppState, c: &Arc<Consultation>) -> Result<(), HubError> {
    let node = c.node();
    let events = node.control.room_events(&c.room).await.map_err(|e| {
        warn!(room = %c.room, "cannot follow the room's events: {e}");
        HubError::NoSfu
    })?;
    tokio::spawn(relay(deps.clone(), Arc::downgrade(c), node, events));
    Ok(())
}

/// The room's node went away under a running consultation: place the room again and send
/// everyone in the call to it.
async fn move_room(deps: &AppState, c: &Arc<Consultation>, lost: &str) {
    if c.node().id != lost || c.ended().is_some() {
        return; // moved already (by a lost stream and the registry both noticing)
    }
    let ttl = placement_ttl(deps, c.closes_at());
    match open_room(deps, &c.room, c.kind, Some(lost), ttl).await {
        Ok(node) => {
            info!(room = %c.room, from = %lost, to = %node.id, "room moved to another SFU node");
            c.set_node(node);
            deps.metrics.room_moves.with_label_values(&["moved"]).inc();
            if let Err(e) = follow(deps, c).await {
                warn!(room = %c.room, "following the moved room: {e}");
            }
        }
        Err(_) => {
            warn!(room = %c.room, from = %lost, "no SFU node to move the room to");
            deps.metrics
                .room_moves
                .with_label_values(&["no_node"])
                .inc();
        }
    }
    // Rejoining opens their sessions on the new node (or says the media server is
    // unavailable when there is none).
    let told = c.ask_to_reconnect(0, true);
    deps.metrics
        .reconnect_hints
        .with_label_values(&["room_moved"])
        .inc_by(told as u64);
    info!(room = %c.room, members = told, "members asked to reconnect");
}

/// The event stream of `node` ended while the consultation runs: a node that does not
/// answer is lost (its rooms move); one that does is followed again.
fn stream_ended(
    deps: AppState,
    c: Arc<Consultation>,
    node: PlacedNode,
) -> futures_util::future::BoxFuture<'static, ()> {
    // Boxed with a named type: following again starts a relay, whose end may come here.
    Box::pin(stream_ended_inner(deps, c, node))
}

async fn stream_ended_inner(deps: AppState, c: Arc<Consultation>, node: PlacedNode) {
    if c.ended().is_some() || c.node().id != node.id {
        return;
    }
    let alive = tokio::time::timeout(Duration::from_secs(1), node.control.node())
        .await
        .is_ok_and(|r| r.is_ok());
    if alive {
        warn!(room = %c.room, node = %node.id, "room event stream ended; following again");
        tokio::time::sleep(Duration::from_millis(200)).await;
        if c.ended().is_none() && c.node().id == node.id && follow(&deps, &c).await.is_err() {
            deps.cluster.node_unreachable(&node.id).await;
        }
    } else {
        warn!(room = %c.room, node = %node.id, "SFU node does not answer; moving its rooms");
        deps.cluster.node_unreachable(&node.id).await;
    }
}

/// Move this instance's rooms off every node the cluster finds lost, for as long as the
/// service runs.
pub async fn follow_lost_nodes(deps: std::sync::Weak<Deps>) {
    let Some(mut lost) = deps.upgrade().map(|d| d.cluster.lost_nodes()) else {
        return;
    };
    loop {
        let node = match lost.recv().await {
            Ok(n) => n,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Some(d) = deps.upgrade() else { return };
        d.hub.move_rooms_off(&d, &node).await;
    }
}

/// SFU room events to the members they concern, until the room closes. A stream that ends
/// before is a node that may be gone ([`stream_ended`]).
async fn relay(
    deps: AppState,
    weak: std::sync::Weak<Consultation>,
    node: PlacedNode,
    mut events: metaclinic_protocol::control::client::EventStream,
) {
    loop {
        let Some(item) = events.next().await else {
            if let Some(c) = weak.upgrade() {
                tokio::spawn(stream_ended(deps, c, node));
            }
            return;
        };
        let Some(c) = weak.upgrade() else { return };
        if c.node().id != node.id {
            return; // the room moved; another relay follows it
        }
        let env = match item {
            StreamItem::Event(env) => env,
            StreamItem::Lagged(n) => {
                warn!(room = %c.room, missed = n, "fell behind the SFU's events");
                continue;
            }
        };
        match env.event {
            RoomEvent::Offer {
                participant,
                session,
                sdp,
            } => {
                if !c.offer_is_current(participant.as_str(), session) {
                    debug!(room = %c.room, "dropping an offer made for a replaced session");
                    continue;
                }
                c.send(
                    participant.as_str(),
                    ServerMessage::Sdp {
                        description: Description {
                            kind: SdpKind::Offer,
                            sdp,
                        },
                    },
                );
            }
            RoomEvent::TrackPublished {
                track,
                participant,
                kind,
                ..
            } => c.track_event(ServerMessage::TrackPublished {
                participant: participant.to_string(),
                track: track.to_string(),
                kind: serde_json::to_value(kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            }),
            RoomEvent::TrackEnded { track, participant } => {
                c.track_event(ServerMessage::TrackEnded {
                    participant: participant.to_string(),
                    track: track.to_string(),
                })
            }
            RoomEvent::TrackMuted {
                track,
                participant,
                muted,
            } => c.track_event(ServerMessage::TrackMuted {
                participant: participant.to_string(),
                track: track.to_string(),
                muted,
            }),
            RoomEvent::ParticipantLeft {
                participant,
                reason: LeaveReason::Timeout | LeaveReason::Failed | LeaveReason::InternalError,
            } => {
                // The media connection died under a member who is still here.
                c.send(
                    participant.as_str(),
                    ServerMessage::Error {
                        code: "media_lost".into(),
                        message: "the media connection was lost; rejoin".into(),
                    },
                );
            }
            RoomEvent::DominantSpeaker { participant } => {
                c.speaker_changed(participant.map(|p| p.to_string()))
            }
            RoomEvent::Quality {
                participant,
                quality,
            } => c.send(participant.as_str(), ServerMessage::Quality(quality.into())),
            RoomEvent::VitalSign {
                participant,
                reading,
            } => {
                // Off the relay: the outbox may take a moment, the call's events must not.
                if let Some(p) = deps.webhooks.clone() {
                    let appointment = c.appointment_id.clone();
                    tokio::spawn(async move {
                        p.record_vital(&appointment, participant.as_str(), &reading)
                            .await
                    });
                }
            }
            RoomEvent::RoomClosed => return,
            _ => {}
        }
    }
}

/// The consultation's clock: warning before the end, the hard stop, re-reading the
/// appointment (a cancellation ends the call), and closing an abandoned room.
async fn watch(deps: AppState, c: std::sync::Weak<Consultation>) {
    let p = &deps.config.policy;
    let warn_before = chrono::Duration::minutes(p.warn_before_end_min as i64);
    let grace = chrono::Duration::seconds(p.reconnect_grace_s as i64);
    let recheck = chrono::Duration::seconds(p.recheck_interval_s as i64);
    let mut next_recheck = deps.clock.now() + recheck;
    let mut empty_since: Option<DateTime<Utc>> = None;
    let mut saved = String::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let Some(c) = c.upgrade() else { return };
        if c.ended().is_some() || c.handed_over() {
            return;
        }
        // What another replica would continue from, stored when it changed.
        let snapshot = c.snapshot().to_json();
        if snapshot != saved {
            save_snapshot(&deps, &c, snapshot.clone()).await;
            saved = snapshot;
        }
        let now = deps.clock.now();
        let tick = c.tick(now, warn_before, grace);
        for participant in &tick.expired {
            let _ = c.node().control.close_session(&c.room, participant).await;
        }
        if tick.time_over {
            deps.hub.finish(&deps, &c, EndReason::TimeOver, None).await;
            return;
        }
        // Nobody connected for the reconnect grace: free the room.
        if tick.empty {
            let since = *empty_since.get_or_insert(now);
            if now - since > grace {
                info!(appointment = %c.appointment_id, "consultation abandoned; closing its room");
                deps.hub.finish(&deps, &c, EndReason::TimeOver, None).await;
                return;
            }
        } else {
            empty_since = None;
        }
        if now >= next_recheck {
            next_recheck = now + recheck;
            match crate::access::read_appointment(&deps, &c.appointment_id).await {
                Ok(a) if !RUNNING_STATUSES.contains(&a.status.as_str()) => {
                    info!(appointment = %c.appointment_id, status = %a.status, "appointment no longer on; ending the consultation");
                    deps.hub.finish(&deps, &c, EndReason::Cancelled, None).await;
                    return;
                }
                Ok(_) => {}
                // An unreachable booking system does not end a call in progress.
                Err(e) => warn!(appointment = %c.appointment_id, "re-reading the appointment: {e}"),
            }
        }
    }
}
