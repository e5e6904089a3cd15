//! Who joins which consultation, as what: the join policy over the FHIR fixtures in
//! tests/fixtures/fhir (HL7's published examples and our telehealth cases), with the clock
//! injected. One table per behaviour; each row reads "this caller, this appointment: this
//! outcome".

use metaclinic_signaling::{fhir, policy};

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use fhir::{Appointment, parse_appointment, parse_practitioner_role};
use policy::Admission::{Direct, Lobby};
use policy::Denial::*;
use policy::Role::{Companion, Host, Interpreter, Patient};
use policy::{
    Admission, Caller, Denial, InviteGrant, PolicyConfig, Role, decide, unassigned_translator_slots,
};

/// The role, the admission and the participant line; or why not.
type Outcome = Result<(Role, Admission, usize), Denial>;

/// The fixture of the appointment with this id.
fn fixture_json(id: &str) -> &'static [u8] {
    match id {
        "example" => include_bytes!("../../tests/fixtures/fhir/appointment-example.json"),
        "2docs" => include_bytes!("../../tests/fixtures/fhir/appointment-2docs.json"),
        "examplereq" => include_bytes!("../../tests/fixtures/fhir/appointment-examplereq.json"),
        "tele-cancelled" => {
            include_bytes!("../../tests/fixtures/fhir/appointment-telehealth-cancelled.json")
        }
        "tele-declined" => {
            include_bytes!("../../tests/fixtures/fhir/appointment-telehealth-declined.json")
        }
        "tele-interp-1" => {
            include_bytes!("../../tests/fixtures/fhir/appointment-telehealth-interpreter.json")
        }
        "tele-interp-open" => include_bytes!(
            "../../tests/fixtures/fhir/appointment-telehealth-unassigned-interpreter.json"
        ),
        _ => panic!("no fixture for appointment {id}"),
    }
}

fn appointment(id: &str) -> Appointment {
    let appointment = parse_appointment(fixture_json(id)).unwrap();
    assert_eq!(appointment.id.as_deref(), Some(id));
    appointment
}

/// The fixture, edited as JSON before it is parsed: the booking system could have sent that.
fn edited(id: &str, edit: impl FnOnce(&mut Value)) -> Appointment {
    let mut resource: Value = serde_json::from_slice(fixture_json(id)).unwrap();
    edit(&mut resource);
    parse_appointment(&serde_json::to_vec(&resource).unwrap()).unwrap()
}

/// PractitionerRole-role-5 as signaling resolves it before asking.
fn resolved_roles() -> HashMap<String, String> {
    let json = include_bytes!("../../tests/fixtures/fhir/PractitionerRole-role-5.json");
    let role = parse_practitioner_role(json).unwrap();
    let practitioner = role.practitioner.and_then(|p| p.reference).unwrap();
    HashMap::from([(
        format!("PractitionerRole/{}", role.id.unwrap()),
        practitioner,
    )])
}

fn at(instant: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(instant)
        .unwrap()
        .with_timezone(&Utc)
}

/// Ten minutes after the start; an appointment without a start is asked about in the fixtures'
/// own era.
fn ten_minutes_in(appointment: &Appointment) -> DateTime<Utc> {
    appointment
        .start
        .map_or(at("2016-06-05T09:00:00Z"), |start| {
            start + Duration::minutes(10)
        })
}

fn ask(
    appointment: &Appointment,
    caller: &Caller,
    now: DateTime<Utc>,
    cfg: &PolicyConfig,
) -> Outcome {
    decide(appointment, caller, now, cfg)
        .map(|access| (access.role, access.admission, access.participant_index))
}

/// `fhir_user` asks ten minutes in, with nothing but their identity and the default policy.
fn join(appointment: &Appointment, fhir_user: &str) -> Outcome {
    let caller = Caller {
        fhir_user,
        resolved_roles: &HashMap::new(),
        invite: None,
    };
    ask(
        appointment,
        &caller,
        ten_minutes_in(appointment),
        &PolicyConfig::default(),
    )
}

#[test]
fn only_a_booked_arrived_or_checked_in_appointment_opens() {
    #[rustfmt::skip]
    let table = [
        // FHIR R4 AppointmentStatus    the patient of tele-interp-1
        ("proposed",                    Err(AppointmentStatus)),
        ("pending",                     Err(AppointmentStatus)),
        ("booked",                      Ok((Patient, Lobby, 0))),
        ("arrived",                     Ok((Patient, Lobby, 0))),
        ("fulfilled",                   Err(AppointmentStatus)),
        ("cancelled",                   Err(AppointmentStatus)),
        ("noshow",                      Err(AppointmentStatus)),
        ("entered-in-error",            Err(AppointmentStatus)),
        ("checked-in",                  Ok((Patient, Lobby, 0))),
        ("waitlist",                    Err(AppointmentStatus)),
    ];
    for (status, expected) in table {
        let appointment = edited("tele-interp-1", |a| a["status"] = json!(status));
        assert_eq!(join(&appointment, "Patient/pat-1042"), expected, "{status}");
    }
}

#[test]
fn the_room_is_open_from_start_minus_lead_to_end_plus_grace() {
    // tele-interp-1 is booked 01:00 to 01:30.
    let default = PolicyConfig::default(); // 15 minutes either side
    let wide = PolicyConfig {
        lead: Duration::minutes(30),
        grace: Duration::minutes(5),
        ..PolicyConfig::default()
    };
    let exact = PolicyConfig {
        lead: Duration::zero(),
        grace: Duration::zero(),
        ..PolicyConfig::default()
    };
    #[rustfmt::skip]
    let table = [
        // policy   now                     the patient
        (&default,  "2026-12-01T00:44:59Z", Err(TooEarly)),
        (&default,  "2026-12-01T00:45:00Z", Ok((Patient, Lobby, 0))),
        (&default,  "2026-12-01T01:45:00Z", Ok((Patient, Lobby, 0))),
        (&default,  "2026-12-01T01:45:01Z", Err(TooLate)),
        (&wide,     "2026-12-01T00:29:59Z", Err(TooEarly)),
        (&wide,     "2026-12-01T00:30:00Z", Ok((Patient, Lobby, 0))),
        (&wide,     "2026-12-01T01:35:00Z", Ok((Patient, Lobby, 0))),
        (&wide,     "2026-12-01T01:35:01Z", Err(TooLate)),
        (&exact,    "2026-12-01T00:59:59Z", Err(TooEarly)),
        (&exact,    "2026-12-01T01:00:00Z", Ok((Patient, Lobby, 0))),
        (&exact,    "2026-12-01T01:30:00Z", Ok((Patient, Lobby, 0))),
        (&exact,    "2026-12-01T01:30:01Z", Err(TooLate)),
    ];
    let appointment = appointment("tele-interp-1");
    let patient = Caller {
        fhir_user: "Patient/pat-1042",
        resolved_roles: &HashMap::new(),
        invite: None,
    };
    for (cfg, now, expected) in table {
        let outcome = ask(&appointment, &patient, at(now), cfg);
        assert_eq!(outcome, expected, "{now} with {cfg:?}");
    }
}

#[test]
fn access_says_when_the_room_opens_and_closes() {
    let appointment = appointment("tele-interp-1");
    let patient = Caller {
        fhir_user: "Patient/pat-1042",
        resolved_roles: &HashMap::new(),
        invite: None,
    };
    let now = at("2026-12-01T01:10:00Z");
    let access = decide(&appointment, &patient, now, &PolicyConfig::default()).unwrap();

    assert_eq!(access.opens_at, at("2026-12-01T00:45:00Z"));
    assert_eq!(access.closes_at, at("2026-12-01T01:45:00Z"));
}

#[test]
fn everyone_in_the_interpreted_consultation_gets_the_role_the_appointment_gives() {
    let lobby = PolicyConfig::default();
    let direct = PolicyConfig {
        interpreters_direct: true,
        ..PolicyConfig::default()
    };
    #[rustfmt::skip]
    let table = [
        // caller                  interpreters   outcome
        ("Patient/pat-1042",       &lobby,        Ok((Patient, Lobby, 0))),
        ("Practitioner/prac-77",   &lobby,        Ok((Host, Direct, 1))),
        ("Practitioner/interp-9",  &lobby,        Ok((Interpreter, Lobby, 2))),
        ("Practitioner/interp-9",  &direct,       Ok((Interpreter, Direct, 2))),
        ("RelatedPerson/rp-3",     &lobby,        Ok((Companion, Lobby, 3))),
        ("Patient/pat-1042",       &direct,       Ok((Patient, Lobby, 0))),
        ("RelatedPerson/rp-3",     &direct,       Ok((Companion, Lobby, 3))),
    ];
    let appointment = appointment("tele-interp-1");
    let now = ten_minutes_in(&appointment);
    for (fhir_user, cfg, expected) in table {
        let caller = Caller {
            fhir_user,
            resolved_roles: &HashMap::new(),
            invite: None,
        };
        let outcome = ask(&appointment, &caller, now, cfg);
        assert_eq!(outcome, expected, "{fhir_user} with {cfg:?}");
    }
}

#[test]
fn each_fixture_admits_its_people_and_refuses_the_rest() {
    #[rustfmt::skip]
    let table = [
        // appointment       caller                   outcome
        ("example",          "Patient/example",       Ok((Patient, Lobby, 0))),
        ("example",          "Practitioner/example",  Ok((Host, Direct, 1))),     // ATND
        ("example",          "Location/1",            Err(NotAParticipant)),      // a place
        ("2docs",            "Patient/example",       Err(InformationOnly)),
        ("2docs",            "Practitioner/example",  Ok((Host, Direct, 1))),     // no type
        ("2docs",            "Practitioner/f202",     Ok((Host, Direct, 2))),
        ("2docs",            "Phone Call",            Err(NotAParticipant)),      // display only
        ("examplereq",       "Patient/example",       Err(AppointmentStatus)),    // proposed
        ("tele-cancelled",   "Patient/pat-1042",      Err(AppointmentStatus)),
        ("tele-cancelled",   "Practitioner/prac-77",  Err(AppointmentStatus)),
        ("tele-declined",    "Patient/pat-3003",      Err(ParticipantDeclined)),
        ("tele-declined",    "Practitioner/prac-77",  Ok((Host, Direct, 1))),
        ("tele-interp-open", "Patient/pat-2001",      Ok((Patient, Lobby, 0))),
    ];
    for (id, fhir_user, expected) in table {
        let outcome = join(&appointment(id), fhir_user);
        assert_eq!(outcome, expected, "{fhir_user} in {id}");
    }
}

#[test]
fn a_booked_appointment_without_start_and_end_has_no_window() {
    let booked_request = edited("examplereq", |a| a["status"] = json!("booked"));

    assert_eq!(join(&booked_request, "Patient/example"), Err(NoTimeWindow));
}

#[test]
fn a_practitioner_role_actor_is_the_practitioner_it_resolves_to() {
    let appointment = appointment("tele-interp-open");
    let role_5 = resolved_roles(); // PractitionerRole/role-5 -> Practitioner/prac-12
    let nothing = HashMap::new();
    #[rustfmt::skip]
    let table = [
        // caller                   resolved  outcome
        ("Practitioner/prac-12",    &role_5,  Ok((Host, Direct, 1))),
        ("Practitioner/prac-12",    &nothing, Err(NotAParticipant)),
        ("Practitioner/prac-77",    &role_5,  Err(NotAParticipant)),
    ];
    let now = ten_minutes_in(&appointment);
    for (fhir_user, resolved_roles, expected) in table {
        let caller = Caller {
            fhir_user,
            resolved_roles,
            invite: None,
        };
        let outcome = ask(&appointment, &caller, now, &PolicyConfig::default());
        assert_eq!(outcome, expected, "{fhir_user} with {resolved_roles:?}");
    }
}

#[test]
fn an_unassigned_translator_slot_is_filled_by_invite_only() {
    let open = appointment("tele-interp-open");
    assert_eq!(unassigned_translator_slots(&open), vec![2]);
    let assigned = appointment("tele-interp-1");
    assert_eq!(unassigned_translator_slots(&assigned), Vec::<usize>::new());

    let invite = |appointment_id: &str, participant_index| InviteGrant {
        appointment_id: appointment_id.into(),
        participant_index,
    };
    #[rustfmt::skip]
    let table = [
        // invite held                             the agency interpreter
        (Some(invite("tele-interp-open", 2)),      Ok((Interpreter, Lobby, 2))),
        (Some(invite("tele-interp-open", 0)),      Err(InviteInvalid)),  // the patient's line
        (Some(invite("tele-interp-open", 1)),      Err(InviteInvalid)),  // the doctor's line
        (Some(invite("tele-interp-open", 3)),      Err(InviteInvalid)),  // no such line
        (Some(invite("tele-interp-1", 2)),         Err(InviteInvalid)),  // another appointment
        (None,                                     Err(NotAParticipant)),
    ];
    let now = ten_minutes_in(&open);
    for (invite, expected) in table {
        let caller = Caller {
            fhir_user: "Practitioner/agency-int-4",
            resolved_roles: &HashMap::new(),
            invite: invite.clone(),
        };
        let outcome = ask(&open, &caller, now, &PolicyConfig::default());
        assert_eq!(outcome, expected, "{invite:?}");
    }
}

#[test]
fn absolute_actor_references_name_the_same_people() {
    let absolute = edited("tele-interp-1", |a| {
        for participant in a["participant"].as_array_mut().unwrap() {
            let reference = &mut participant["actor"]["reference"];
            let relative = reference.as_str().unwrap();
            *reference = json!(format!("https://fhir.example/R4/{relative}"));
        }
    });
    #[rustfmt::skip]
    let table = [
        ("Patient/pat-1042",       Ok((Patient, Lobby, 0))),
        ("Practitioner/prac-77",   Ok((Host, Direct, 1))),
        ("Practitioner/interp-9",  Ok((Interpreter, Lobby, 2))),
        ("RelatedPerson/rp-3",     Ok((Companion, Lobby, 3))),
    ];
    for (fhir_user, expected) in table {
        assert_eq!(join(&absolute, fhir_user), expected, "{fhir_user}");
    }

    let absolute_role = edited("tele-interp-open", |a| {
        a["participant"][1]["actor"]["reference"] =
            json!("https://fhir.example/R4/PractitionerRole/role-5");
    });
    let doctor = Caller {
        fhir_user: "Practitioner/prac-12",
        resolved_roles: &resolved_roles(),
        invite: None,
    };
    let now = ten_minutes_in(&absolute_role);
    let outcome = ask(&absolute_role, &doctor, now, &PolicyConfig::default());
    assert_eq!(outcome, Ok((Host, Direct, 1)));
}

#[test]
fn a_caller_on_no_line_of_the_appointment_gets_nothing() {
    #[rustfmt::skip]
    let table = [
        "Practitioner/prac-999",    // a clinician of the same hospital
        "Patient/pat-1043",         // a patient of the same hospital
        "PractitionerRole/role-5",  // a role that is not on this appointment
        "Practitioner/example",     // on other appointments, not this one
        "https://fhir.example/R4/Practitioner/prac-999",
        "",                         // no FHIR identity at all
    ];
    let appointment = appointment("tele-interp-1");
    for fhir_user in table {
        assert_eq!(
            join(&appointment, fhir_user),
            Err(NotAParticipant),
            "{fhir_user:?}"
        );
    }
}

#[test]
fn the_role_comes_from_each_appointment_not_from_who_the_caller_is() {
    #[rustfmt::skip]
    let table = [
        // practitioners are not hosts by being practitioners
        ("tele-interp-1",    "Practitioner/interp-9", Ok((Interpreter, Lobby, 2))),
        ("tele-declined",    "Practitioner/interp-9", Err(NotAParticipant)),
        ("tele-interp-open", "Practitioner/prac-77",  Err(NotAParticipant)),
        // the same patient attends one consultation and is only informed of another
        ("example",          "Patient/example",       Ok((Patient, Lobby, 0))),
        ("2docs",            "Patient/example",       Err(InformationOnly)),
    ];
    for (id, fhir_user, expected) in table {
        let outcome = join(&appointment(id), fhir_user);
        assert_eq!(outcome, expected, "{fhir_user} in {id}");
    }
}
