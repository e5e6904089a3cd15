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

/// Write `room`'s appointment into `dir` as `<id>.json`: booked, from a few minutes ago to
/// `minutes` from now.
pub fn write_appointment(dir: &Path, room: &RoomPlan, minutes: i64) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let at = |offset_min: i64| {
        (now + chrono::Duration::minutes(offset_min))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let attending = serde_json::json!([{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "ATND" }] }]);
    let translator = serde_json::json!([{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/participant-type", "code": "translator" }] }]);
    let mut participants = vec![
        serde_json::json!({ "actor": { "reference": room.patient }, "required": "required", "status": "accepted" }),
        serde_json::json!({ "type": attending, "actor": { "reference": room.host }, "required": "required", "status": "accepted" }),
    ];
    if let Some(i) = &room.interpreter {
        participants.push(serde_json::json!({ "type": translator, "actor": { "reference": i }, "required": "required", "status": "accepted" }));
    }
    let appointment = serde_json::json!({
        "resourceType": "Appointment",
        "id": room.appointment,
        "status": "booked",
        "description": "Load test consultation",
        "start": at(-5),
        "end": at(minutes),
        "participant": participants,
    });
    std::fs::write(
        dir.join(format!("{}.json", room.appointment)),
        serde_json::to_vec_pretty(&appointment)?,
    )?;
    Ok(())
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
        let _ = std::fs::remove_dir_all(&dir);
    }
}
