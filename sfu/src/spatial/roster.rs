//! Where everyone stands, told back to the room: the SFU is the one place that knows every
//! avatar's pose (its own or its default placement), so it sends each participant the poses
//! the mixer uses, and a map drawn from them shows what the listener hears. Format in
//! `FORMAT.md` ("Server to client").

use super::pose::{POSE_WIRE_LEN, Pose, PoseError};

/// First byte of a roster message; distinct from a client's pose version (1).
pub const ROSTER_WIRE_VERSION: u8 = 0x81;
/// A message stays within 16 KiB, the size every SCTP stack delivers whole (RFC 8831 §6.6);
/// larger rooms take several messages.
pub const MAX_ROSTER_MESSAGE: usize = 16 * 1024;
/// Entries in one message (the count is one byte).
const MAX_ENTRIES: usize = u8::MAX as usize;

/// One participant on the map: its id (as the control API names it) and pose.
#[derive(Debug, Clone, PartialEq)]
pub struct RosterEntry {
    pub participant: String,
    pub pose: Pose,
}

/// The roster as one or more messages. Ids longer than 255 bytes cannot be written and are
/// left out (the control API's ids are far shorter).
pub fn encode_roster(entries: &[RosterEntry]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    let mut current = header();
    let mut count = 0usize;
    for e in entries {
        let id = e.participant.as_bytes();
        let Ok(id_len) = u8::try_from(id.len()) else {
            continue;
        };
        let size = 1 + id.len() + POSE_WIRE_LEN;
        if count == MAX_ENTRIES || current.len() + size > MAX_ROSTER_MESSAGE {
            current[1] = count as u8;
            messages.push(std::mem::replace(&mut current, header()));
            count = 0;
        }
        current.push(id_len);
        current.extend_from_slice(id);
        current.extend_from_slice(&e.pose.encode());
        count += 1;
    }
    if count > 0 {
        current[1] = count as u8;
        messages.push(current);
    }
    messages
}

fn header() -> Vec<u8> {
    vec![ROSTER_WIRE_VERSION, 0]
}

/// Why a roster message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RosterError {
    #[error("not a roster message")]
    NotARoster,
    #[error("roster message cut short")]
    Truncated,
    #[error("participant id is not UTF-8")]
    BadId,
    #[error("pose: {0}")]
    Pose(#[from] PoseError),
}

/// Read a roster message (for clients written in Rust, and tests).
pub fn decode_roster(bytes: &[u8]) -> Result<Vec<RosterEntry>, RosterError> {
    let [version, count, tail @ ..] = bytes else {
        return Err(RosterError::NotARoster);
    };
    let mut rest = tail;
    if *version != ROSTER_WIRE_VERSION {
        return Err(RosterError::NotARoster);
    }
    let mut out = Vec::with_capacity(usize::from(*count));
    for _ in 0..*count {
        let (&len, tail) = rest.split_first().ok_or(RosterError::Truncated)?;
        let len = usize::from(len);
        if tail.len() < len + POSE_WIRE_LEN {
            return Err(RosterError::Truncated);
        }
        let (id, tail) = tail.split_at(len);
        let (pose, tail) = tail.split_at(POSE_WIRE_LEN);
        out.push(RosterEntry {
            participant: std::str::from_utf8(id)
                .map_err(|_| RosterError::BadId)?
                .to_owned(),
            pose: Pose::decode(pose)?,
        });
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(RosterError::Truncated);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> RosterEntry {
        RosterEntry {
            participant: format!("Patient/p-{i}"),
            pose: Pose::at([i as f32, 1.6, -(i as f32)]),
        }
    }

    #[test]
    fn a_roster_reads_back_as_written() {
        let entries: Vec<_> = (0..3).map(entry).collect();
        let messages = encode_roster(&entries);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0][0], ROSTER_WIRE_VERSION);
        assert_eq!(decode_roster(&messages[0]).unwrap(), entries);
        assert!(encode_roster(&[]).is_empty());
    }

    #[test]
    fn a_large_room_is_split_into_messages_within_the_limit() {
        let entries: Vec<_> = (0..600).map(entry).collect();
        let messages = encode_roster(&entries);
        assert!(messages.len() >= 3, "{}", messages.len());
        let mut back = Vec::new();
        for m in &messages {
            assert!(m.len() <= MAX_ROSTER_MESSAGE);
            back.extend(decode_roster(m).unwrap());
        }
        assert_eq!(back, entries);
    }

    #[test]
    fn an_id_too_long_to_write_is_left_out() {
        let mut long = entry(1);
        long.participant = "x".repeat(300);
        let messages = encode_roster(&[long, entry(2)]);
        assert_eq!(decode_roster(&messages[0]).unwrap(), vec![entry(2)]);
    }

    #[test]
    fn broken_rosters_are_refused() {
        let good = encode_roster(&[entry(1)]).remove(0);
        assert_eq!(decode_roster(&[]), Err(RosterError::NotARoster));
        assert_eq!(
            decode_roster(&Pose::at([0.0; 3]).encode()),
            Err(RosterError::NotARoster)
        );
        for cut in 2..good.len() {
            assert_eq!(
                decode_roster(&good[..cut]),
                Err(RosterError::Truncated),
                "{cut}"
            );
        }
        let mut extra = good.clone();
        extra.push(0);
        assert_eq!(decode_roster(&extra), Err(RosterError::Truncated));
    }
}
