//! Consultations: the patient's device readings, from their `vitals` data channel to the
//! clinicians' (see [`crate::vitals`] for the format and who receives them).

use std::time::{Duration, Instant};

use super::ShardCore;
use super::demux::SessionKey;
use crate::events::RoomEvent;
use crate::metrics::DropReason;
use crate::vitals::{self, Reading};
use crate::webrtc::ChannelId;

impl ShardCore {
    pub(super) fn in_shared_room(&self, key: SessionKey) -> bool {
        self.sessions
            .get(key)
            .and_then(|s| self.rooms.get(s.room))
            .is_some_and(|r| r.mixer.is_some())
    }

    /// A host lets companions see the patient's vitals, or stops it.
    pub(super) fn set_vitals_sharing(
        &mut self,
        room: &crate::ids::RoomId,
        companions: bool,
    ) -> Result<(), crate::error::ControlError> {
        let rkey = *self
            .room_index
            .get(room)
            .ok_or(crate::error::ControlError::RoomNotFound)?;
        self.rooms[rkey].vitals_to_companions = companions;
        Ok(())
    }

    /// A data channel opened in a consultation: the one labelled `vitals` carries readings
    /// both ways (the patient's out, the room's in).
    pub(super) fn on_vitals_channel(&mut self, key: SessionKey, channel: ChannelId, label: &str) {
        if label != vitals::CHANNEL_LABEL {
            return;
        }
        if let Some(s) = self.sessions.get_mut(key) {
            s.vitals_channel = Some(channel);
        }
    }

    /// Whether `channel` is the session's vitals channel.
    pub(super) fn is_vitals_channel(&self, key: SessionKey, channel: ChannelId) -> bool {
        self.sessions
            .get(key)
            .is_some_and(|s| s.vitals_channel == Some(channel))
    }

    /// A message on a vitals channel: only the patient sends, at most
    /// [`vitals::MAX_READINGS_PER_SECOND`]; a checked reading goes, rewritten, to those of the
    /// room who receive vitals, and to signaling for the record.
    pub(super) fn on_vitals(&mut self, key: SessionKey, data: &[u8], text: bool, now: Instant) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if !vitals::may_send_vitals(s.role.as_deref()) {
            self.tally.drop(DropReason::VitalsRefused);
            return;
        }
        let (since, count) = &mut s.vitals_window;
        if now.duration_since(*since) >= Duration::from_secs(1) {
            (*since, *count) = (now, 0);
        }
        if *count >= vitals::MAX_READINGS_PER_SECOND {
            self.tally.drop(DropReason::VitalsRefused);
            return;
        }
        *count += 1;
        let reading = match (text, Reading::parse(data)) {
            (true, Ok(r)) => r,
            _ => {
                self.tally.drop(DropReason::BadVitals);
                return;
            }
        };
        let from = s.participant.clone();
        let Some(room) = self.rooms.get_mut(s.room) else {
            return;
        };
        let message = reading.relay_message(from.as_str());
        let to_companions = room.vitals_to_companions;
        for &k in room.sessions.values() {
            let Some(r) = self.sessions.get_mut(k) else {
                continue;
            };
            if !vitals::receives_vitals(r.role.as_deref(), to_companions) {
                continue;
            }
            let Some(channel) = r.vitals_channel.filter(|&c| r.peer.channel_is_open(c)) else {
                continue;
            };
            if !r.peer.send_channel(now, channel, message.as_bytes(), true) {
                self.tally.drop(DropReason::SendFailed);
                continue;
            }
            r.touch(k, &mut self.dirty);
        }
        self.metrics.vitals_relayed.inc();
        room.emit(RoomEvent::VitalSign {
            participant: from,
            reading,
        });
    }
}
