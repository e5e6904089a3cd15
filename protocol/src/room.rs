//! What kind of room a consultation is: forwarded (a consultation) or mixed (a shared room).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    /// 1:1 or three-way: every participant's tracks are forwarded to the others, untouched.
    Consultation,
    /// A shared space (waiting hall, group session): video is forwarded, audio is mixed on
    /// the server into one binaural stereo stream per listener (see `spatial`).
    Shared,
}
