//! The consultations this instance runs: created on the first join (room placed on an SFU
//! node), watched by a clock task (warning, hard stop, cancellation, cleanup), and fed the
//! SFU's room events (offers and tracks) for their members.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use metaclinic_sfu::control::client::StreamItem;
use metaclinic_sfu::events::{LeaveReason, RoomEvent};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::audit::AuditEvent;
use crate::consultation::Consultation;
use crate::protocol::{Description, EndReason, SdpKind, ServerMessage};
use crate::state::{AppState, Deps};

#[derive(Default)]
pub struct Hub {
    consultations: Mutex<HashMap<String, Arc<Consultation>>>,
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
        closes_at: DateTime<Utc>,
    ) -> Result<Arc<Consultation>, HubError> {
        let mut map = self.consultations.lock().await;
        if let Some(c) = map.get(appointment_id)
            && c.ended().is_none()
        {
            return Ok(c.clone());
        }
        let node = deps.sfu.place().await.map_err(|_| HubError::NoSfu)?;
        let c = Arc::new(Consultation::new(appointment_id, node, closes_at));
        node_create_room(&c).await?;
        // Listen before anyone joins, so no offer of the SFU's is missed.
        let events = c.node.control.room_events(&c.room).await.map_err(|e| {
            warn!(room = %c.room, "cannot follow the room's events: {e}");
            HubError::NoSfu
        })?;
        tokio::spawn(relay(Arc::downgrade(&c), events));
        tokio::spawn(watch(deps.clone(), Arc::downgrade(&c)));
        map.insert(appointment_id.to_owned(), c.clone());
        deps.metrics.consultations.set(map.len() as i64);
        info!(appointment = %appointment_id, node = %c.node.id, room = %c.room, "consultation opened");
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
        {
            let mut map = self.consultations.lock().await;
            if map
                .get(&c.appointment_id)
                .is_some_and(|x| Arc::ptr_eq(x, c))
            {
                map.remove(&c.appointment_id);
            }
            deps.metrics.consultations.set(map.len() as i64);
        }
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
        if let Err(e) = c.node.control.close_room(&c.room).await {
            warn!(room = %c.room, "closing the SFU room: {e}");
        }
    }

    /// Close every consultation (shutdown): clients are told to reconnect.
    pub async fn finish_all(&self, deps: &Deps) {
        let all: Vec<Arc<Consultation>> =
            self.consultations.lock().await.values().cloned().collect();
        for c in all {
            self.finish(deps, &c, EndReason::ServiceRestart, None).await;
        }
    }
}

async fn node_create_room(c: &Consultation) -> Result<(), HubError> {
    c.node
        .control
        .create_room(&c.room)
        .await
        .map(|_| ())
        .map_err(|e| {
            warn!(room = %c.room, node = %c.node.id, "cannot create the room: {e}");
            HubError::NoSfu
        })
}

/// SFU room events to the members they concern.
async fn relay(
    c: std::sync::Weak<Consultation>,
    mut events: metaclinic_sfu::control::client::EventStream,
) {
    while let Some(item) = events.next().await {
        let Some(c) = c.upgrade() else { return };
        let env = match item {
            StreamItem::Event(env) => env,
            StreamItem::Lagged(n) => {
                warn!(room = %c.room, missed = n, "fell behind the SFU's events");
                continue;
            }
        };
        match env.event {
            RoomEvent::Offer { participant, sdp } => {
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
            } => c.broadcast_in_call(&ServerMessage::TrackPublished {
                participant: participant.to_string(),
                track: track.to_string(),
                kind: serde_json::to_value(kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            }),
            RoomEvent::TrackEnded { track, participant } => {
                c.broadcast_in_call(&ServerMessage::TrackEnded {
                    participant: participant.to_string(),
                    track: track.to_string(),
                })
            }
            RoomEvent::TrackMuted {
                track,
                participant,
                muted,
            } => c.broadcast_in_call(&ServerMessage::TrackMuted {
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
            } => c.send(participant.as_str(), ServerMessage::Quality(quality)),
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
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let Some(c) = c.upgrade() else { return };
        if c.ended().is_some() {
            return;
        }
        let now = deps.clock.now();
        let tick = c.tick(now, warn_before, grace);
        for participant in &tick.expired {
            let _ = c.node.control.close_session(&c.room, participant).await;
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
