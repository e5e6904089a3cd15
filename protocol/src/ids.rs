//! Typed identifiers. Room and participant ids come from outside (signaling names them), so
//! they are validated once, here, and are cheap to clone afterwards.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an id from outside was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must be 1 to {max} characters long")]
    Length { max: usize },
    #[error("may only contain ASCII letters, digits and . _ - : /")]
    Charset,
}

/// The longest id accepted from outside. FHIR ids are at most 64 characters; a reference
/// such as `Appointment/<id>` needs a little more.
pub const MAX_ID_LEN: usize = 96;

fn validate(s: &str) -> Result<(), IdError> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(IdError::Length { max: MAX_ID_LEN });
    }
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'));
    if ok { Ok(()) } else { Err(IdError::Charset) }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(s: &str) -> Result<Self, IdError> {
                validate(s)?;
                Ok(Self(Arc::from(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), &self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A room: one consultation (or one shared space). Named by signaling.
    RoomId
);
string_id!(
    /// A participant within a room. Named by signaling; unique within the room.
    ParticipantId
);

/// A published track, unique within its SFU node. Assigned by the SFU.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId(pub u64);

impl fmt::Display for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

impl fmt::Debug for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrackId({})", self.0)
    }
}

impl TrackId {
    pub fn parse(s: &str) -> Option<Self> {
        s.strip_prefix('t')?.parse().ok().map(TrackId)
    }
}

impl Serialize for TrackId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TrackId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        TrackId::parse(&s)
            .ok_or_else(|| serde::de::Error::custom("track id must look like t<number>"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_outside_are_checked() {
        assert!(RoomId::new("Appointment/telehealth-1").is_ok());
        assert_eq!(RoomId::new(""), Err(IdError::Length { max: MAX_ID_LEN }));
        assert_eq!(
            RoomId::new(&"a".repeat(MAX_ID_LEN + 1)),
            Err(IdError::Length { max: MAX_ID_LEN })
        );
        assert_eq!(ParticipantId::new("dr who"), Err(IdError::Charset));
        assert_eq!(ParticipantId::new("x\n"), Err(IdError::Charset));
        assert!(serde_json::from_str::<RoomId>("\"bad room\"").is_err());
    }

    #[test]
    fn track_ids_round_trip() {
        let t = TrackId(42);
        assert_eq!(t.to_string(), "t42");
        assert_eq!(TrackId::parse("t42"), Some(t));
        assert_eq!(TrackId::parse("42"), None);
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"t42\"");
    }
}
