//! Who meets where in a consultation run: one appointment per room, with a host (the
//! doctor), a patient and, three-way, an interpreter. For a local target the appointments
//! are generated as FHIR Appointment files (starting now) that `metaclinic dev` serves; for a
//! deployment they must exist in its booking system, named by patterns on the command line.

use std::path::Path;

/// One consultation room of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomPlan {
    pub appointment: String,
    pub host: String,
    pub patient: String,
    pub interpreter: Option<String>,
}

impl RoomPlan {
    pub fn participants(&self) -> usize {
        2 + usize::from(self.interpreter.is_some())
    }
}

/// Patterns naming room `n`'s appointment and people: `{n}` is replaced by the room number.
#[derive(Debug, Clone)]
pub struct RoomPatterns {
    pub appointment: String,
    pub host: String,
    pub patient: String,
    pub interpreter: String,
}

impl Default for RoomPatterns {
    fn default() -> Self {
        RoomPatterns {
            appointment: "lt-consult-{n}".into(),
            host: "Practitioner/lt-dr-{n}".into(),
            patient: "Patient/lt-pat-{n}".into(),
            interpreter: "Practitioner/lt-interp-{n}".into(),
        }
    }
}

impl RoomPatterns {
    pub fn room(&self, n: usize, three_way: bool) -> RoomPlan {
        let fill = |p: &str| p.replace("{n}", &n.to_string());
        RoomPlan {
            appointment: fill(&self.appointment),
            host: fill(&self.host),
            patient: fill(&self.patient),
            interpreter: three_way.then(|| fill(&self.interpreter)),
        }
    }

    /// Each pattern must tell rooms apart.
    pub fn check(&self, three_way: bool) -> anyhow::Result<()> {
        let mut all = vec![&self.appointment, &self.host, &self.patient];
        if three_way {
            all.push(&self.interpreter);
        }
        for p in all {
            anyhow::ensure!(
                p.contains("{n}"),
                "pattern {p:?} lacks {{n}} (the room number)"
            );
        }
        Ok(())
    }
}

/// The shared room's defaults, for a local run and `loadtest appointments`.
pub const SHARED_APPOINTMENT: &str = "lt-hall";
pub const SHARED_HOST: &str = "Practitioner/lt-hall-host";
pub const AVATAR_PATTERN: &str = "Patient/lt-avatar-{n}";

/// The shared room of a `shared-room` run: one group-session appointment whose host (the
/// first avatar) admits the others from the lobby.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedPlan {
    pub appointment: String,
    pub host: String,
    pub guests: Vec<String>,
}

impl SharedPlan {
    /// `avatars` people: the host, and guests named by `guest_pattern` with `{n}` = 1, 2, ...
    pub fn new(
        appointment: &str,
        host: &str,
        guest_pattern: &str,
        avatars: usize,
    ) -> anyhow::Result<SharedPlan> {
        anyhow::ensure!(
            guest_pattern.contains("{n}"),
            "pattern {guest_pattern:?} lacks {{n}} (the avatar number)"
        );
        Ok(SharedPlan {
            appointment: appointment.to_owned(),
            host: host.to_owned(),
            guests: (1..avatars.max(1))
                .map(|n| guest_pattern.replace("{n}", &n.to_string()))
                .collect(),
        })
    }

    /// Everyone, the host first, with whether they host.
    pub fn people(&self) -> impl Iterator<Item = (&str, bool)> {
        std::iter::once((self.host.as_str(), true))
            .chain(self.guests.iter().map(|g| (g.as_str(), false)))
    }
}

fn attending() -> serde_json::Value {
    serde_json::json!([{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "ATND" }] }])
}

fn accepted(actor: &str, kind: Option<serde_json::Value>) -> serde_json::Value {
    let mut p = serde_json::json!({ "actor": { "reference": actor }, "required": "required", "status": "accepted" });
    if let Some(kind) = kind {
        p["type"] = kind;
    }
    p
}

/// Write a booked appointment into `dir` as `<id>.json`, from a few minutes ago to
/// `minutes` from now.
fn write_booked(
    dir: &Path,
    mut appointment: serde_json::Value,
    participants: Vec<serde_json::Value>,
    minutes: i64,
) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let at = |offset_min: i64| {
        (now + chrono::Duration::minutes(offset_min))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    appointment["resourceType"] = "Appointment".into();
    appointment["status"] = "booked".into();
    appointment["start"] = at(-5).into();
    appointment["end"] = at(minutes).into();
    appointment["participant"] = participants.into();
    let id = appointment["id"].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(!id.is_empty(), "an appointment needs an id");
    std::fs::write(
        dir.join(format!("{id}.json")),
        serde_json::to_vec_pretty(&appointment)?,
    )?;
    Ok(())
}

/// Write `room`'s appointment into `dir` as `<id>.json`: booked, from a few minutes ago to
/// `minutes` from now.
pub fn write_appointment(dir: &Path, room: &RoomPlan, minutes: i64) -> anyhow::Result<()> {
    let translator = serde_json::json!([{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/participant-type", "code": "translator" }] }]);
    let mut participants = vec![
        accepted(&room.patient, None),
        accepted(&room.host, Some(attending())),
    ];
    if let Some(i) = &room.interpreter {
        participants.push(accepted(i, Some(translator)));
    }
    let appointment = serde_json::json!({
        "id": room.appointment,
        "description": "Load test consultation",
    });
    write_booked(dir, appointment, participants, minutes)
}

/// Write the shared room's appointment (a group session, marked with signaling's default
/// shared-room code) into `dir`.
pub fn write_shared_appointment(dir: &Path, plan: &SharedPlan, minutes: i64) -> anyhow::Result<()> {
    let participants = plan
        .people()
        .map(|(who, host)| accepted(who, host.then(attending)))
        .collect();
    let appointment = serde_json::json!({
        "id": plan.appointment,
        "description": "Load test group session in a shared room",
        "serviceType": [{ "coding": [{ "system": metaclinic_signaling::config::ROOM_KIND_SYSTEM, "code": "shared" }] }],
    });
    write_booked(dir, appointment, participants, minutes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_follow_their_patterns_and_appointments_are_fhir() {
        let p = RoomPatterns::default();
        let r = p.room(7, true);
        assert_eq!(r.appointment, "lt-consult-7");
        assert_eq!(r.patient, "Patient/lt-pat-7");
        assert_eq!(r.interpreter.as_deref(), Some("Practitioner/lt-interp-7"));
        assert_eq!(p.room(7, false).participants(), 2);
        assert!(p.check(true).is_ok());
        let bad = RoomPatterns {
            host: "Practitioner/dr".into(),
            ..RoomPatterns::default()
        };
        assert!(bad.check(false).is_err());

        let dir = std::env::temp_dir().join(format!("lt-rooms-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_appointment(&dir, &r, 30).unwrap();
        let a: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("lt-consult-7.json")).unwrap()).unwrap();
        assert_eq!(a["resourceType"], "Appointment");
        assert_eq!(a["participant"].as_array().unwrap().len(), 3);
        assert!(a["start"].as_str().unwrap() < a["end"].as_str().unwrap());

        let hall = SharedPlan::new("lt-hall", "Practitioner/h", "Patient/a-{n}", 3).unwrap();
        assert_eq!(hall.guests, ["Patient/a-1", "Patient/a-2"]);
        assert!(SharedPlan::new("lt-hall", "Practitioner/h", "Patient/a", 3).is_err());
        write_shared_appointment(&dir, &hall, 30).unwrap();
        let a: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("lt-hall.json")).unwrap()).unwrap();
        assert_eq!(a["serviceType"][0]["coding"][0]["code"], "shared");
        assert_eq!(a["participant"].as_array().unwrap().len(), 3);
        assert_eq!(a["participant"][0]["actor"]["reference"], "Practitioner/h");
        assert_eq!(a["participant"][0]["type"][0]["coding"][0]["code"], "ATND");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
