use super::Denial::*;
use super::Role::*;
use super::*;
use crate::fhir::{CodeableConcept, Coding};

const V3: &str = PARTICIPATION_TYPE;
const HL7: &str = PARTICIPANT_TYPE;

fn at(instant: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(instant)
        .unwrap()
        .with_timezone(&Utc)
}

/// A booked appointment "appt-1", 01:00 to 01:30 on 1 December 2026.
fn booked(participant: Vec<AppointmentParticipant>) -> Appointment {
    Appointment {
        id: Some("appt-1".into()),
        status: "booked".into(),
        start: Some(at("2026-12-01T01:00:00Z")),
        end: Some(at("2026-12-01T01:30:00Z")),
        participant,
        appointment_type: None,
        service_type: Vec::new(),
    }
}

const DURING: &str = "2026-12-01T01:10:00Z";

/// A participant who accepted, with no type.
fn person(reference: &str) -> AppointmentParticipant {
    AppointmentParticipant {
        type_: Vec::new(),
        actor: Some(Reference {
            reference: Some(reference.into()),
            display: None,
        }),
        required: Some("required".into()),
        status: "accepted".into(),
    }
}

fn typed(mut p: AppointmentParticipant, system: &str, code: &str) -> AppointmentParticipant {
    p.type_.push(CodeableConcept {
        coding: vec![Coding {
            system: Some(system.into()),
            code: Some(code.into()),
            display: None,
        }],
        text: None,
    });
    p
}

fn declined(mut p: AppointmentParticipant) -> AppointmentParticipant {
    p.status = "declined".into();
    p
}

fn information_only(mut p: AppointmentParticipant) -> AppointmentParticipant {
    p.required = Some("information-only".into());
    p
}

/// A participant known only by a description, like HL7's "Phone Call".
fn described(display: &str) -> AppointmentParticipant {
    let mut p = person("");
    p.actor = Some(Reference {
        reference: None,
        display: Some(display.into()),
    });
    p
}

/// A translator line with nobody assigned yet.
fn translator_slot() -> AppointmentParticipant {
    let mut p = typed(person(""), HL7, "translator");
    p.actor = None;
    p.status = "needs-action".into();
    p
}

type Seat = Result<(Role, usize), Denial>;

fn ask_as(appointment: &Appointment, caller: &Caller, now: &str, cfg: &PolicyConfig) -> Seat {
    decide(appointment, caller, at(now), cfg).map(|a| (a.role, a.participant_index))
}

/// `fhir_user` asks during the appointment, with nothing else to show.
fn ask(appointment: &Appointment, fhir_user: &str) -> Seat {
    ask_at(appointment, fhir_user, DURING, &PolicyConfig::default())
}

fn ask_at(appointment: &Appointment, fhir_user: &str, now: &str, cfg: &PolicyConfig) -> Seat {
    let caller = Caller {
        fhir_user,
        resolved_roles: &HashMap::new(),
        invite: None,
    };
    ask_as(appointment, &caller, now, cfg)
}

fn ask_resolving(appointment: &Appointment, fhir_user: &str, role: &str, to: &str) -> Seat {
    let caller = Caller {
        fhir_user,
        resolved_roles: &HashMap::from([(role.into(), to.into())]),
        invite: None,
    };
    ask_as(appointment, &caller, DURING, &PolicyConfig::default())
}

fn ask_invited(appointment: &Appointment, fhir_user: &str, id: &str, slot: usize) -> Seat {
    let caller = Caller {
        fhir_user,
        resolved_roles: &HashMap::new(),
        invite: Some(InviteGrant {
            appointment_id: id.into(),
            participant_index: slot,
        }),
    };
    ask_as(appointment, &caller, DURING, &PolicyConfig::default())
}

// 1. Appointment status

#[test]
fn only_booked_arrived_and_checked_in_appointments_open() {
    #[rustfmt::skip]
    let statuses = [
        ("proposed", false), ("pending", false), ("booked", true), ("arrived", true),
        ("fulfilled", false), ("cancelled", false), ("noshow", false),
        ("entered-in-error", false), ("checked-in", true), ("waitlist", false),
        ("Booked", false), // codes are case-sensitive
        ("", false),
    ];
    for (status, opens) in statuses {
        let mut appointment = booked(vec![person("Patient/p")]);
        appointment.status = status.into();
        let expected = if opens {
            Ok((Patient, 0))
        } else {
            Err(AppointmentStatus)
        };
        assert_eq!(ask(&appointment, "Patient/p"), expected, "{status:?}");
    }
}

#[test]
fn the_status_is_checked_before_the_time_and_the_caller() {
    let mut appointment = booked(vec![]);
    appointment.status = "cancelled".into();
    appointment.start = None;

    assert_eq!(
        ask(&appointment, "Patient/stranger"),
        Err(AppointmentStatus)
    );
}

// 2. Time window

#[test]
fn the_room_opens_lead_before_start_and_closes_grace_after_end() {
    let appointment = booked(vec![person("Patient/p")]);
    let cfg = PolicyConfig::default();
    let ask_at = |now| ask_at(&appointment, "Patient/p", now, &cfg);

    assert_eq!(ask_at("2026-12-01T00:44:59Z"), Err(TooEarly));
    assert_eq!(ask_at("2026-12-01T00:45:00Z"), Ok((Patient, 0)));
    assert_eq!(ask_at("2026-12-01T01:45:00Z"), Ok((Patient, 0)));
    assert_eq!(ask_at("2026-12-01T01:45:00.001Z"), Err(TooLate));
    assert_eq!(ask_at("2026-12-01T01:45:01Z"), Err(TooLate));
}

#[test]
fn access_carries_the_window() {
    let appointment = booked(vec![person("Patient/p")]);
    let caller = Caller {
        fhir_user: "Patient/p",
        resolved_roles: &HashMap::new(),
        invite: None,
    };
    let access = decide(&appointment, &caller, at(DURING), &PolicyConfig::default());

    let access = access.unwrap();
    assert_eq!(access.opens_at, at("2026-12-01T00:45:00Z"));
    assert_eq!(access.closes_at, at("2026-12-01T01:45:00Z"));
}

#[test]
fn lead_and_grace_are_configurable() {
    let appointment = booked(vec![person("Patient/p")]);
    let cfg = PolicyConfig {
        lead: Duration::minutes(5),
        grace: Duration::zero(),
        ..PolicyConfig::default()
    };
    let ask_at = |now| ask_at(&appointment, "Patient/p", now, &cfg);

    assert_eq!(ask_at("2026-12-01T00:54:59Z"), Err(TooEarly));
    assert_eq!(ask_at("2026-12-01T00:55:00Z"), Ok((Patient, 0)));
    assert_eq!(ask_at("2026-12-01T01:30:00Z"), Ok((Patient, 0)));
    assert_eq!(ask_at("2026-12-01T01:30:01Z"), Err(TooLate));
}

#[test]
fn without_both_start_and_end_there_is_no_window() {
    for (start, end) in [(true, false), (false, true), (false, false)] {
        let mut appointment = booked(vec![person("Patient/p")]);
        appointment.start = appointment.start.filter(|_| start);
        appointment.end = appointment.end.filter(|_| end);
        assert_eq!(ask(&appointment, "Patient/p"), Err(NoTimeWindow));
    }
}

#[test]
fn an_end_before_the_start_is_no_window() {
    let mut appointment = booked(vec![person("Patient/p")]);
    appointment.end = Some(at("2026-12-01T00:59:59Z"));

    assert_eq!(ask(&appointment, "Patient/p"), Err(NoTimeWindow));
}

#[test]
fn a_window_past_the_calendar_limits_is_refused_not_a_panic() {
    let mut at_the_end_of_time = booked(vec![person("Patient/p")]);
    at_the_end_of_time.start = Some(DateTime::<Utc>::MAX_UTC);
    at_the_end_of_time.end = Some(DateTime::<Utc>::MAX_UTC);
    let endless_lead = PolicyConfig {
        lead: Duration::MAX,
        ..PolicyConfig::default()
    };

    assert_eq!(ask(&at_the_end_of_time, "Patient/p"), Err(NoTimeWindow));
    let appointment = booked(vec![person("Patient/p")]);
    assert_eq!(
        ask_at(&appointment, "Patient/p", DURING, &endless_lead),
        Err(NoTimeWindow)
    );
}

#[test]
fn the_time_is_checked_before_the_caller() {
    let appointment = booked(vec![person("Patient/p")]);
    let day_before = "2026-11-30T01:00:00Z";

    let cfg = PolicyConfig::default();
    assert_eq!(
        ask_at(&appointment, "Patient/stranger", day_before, &cfg),
        Err(TooEarly)
    );
}

// 3. Who the caller is

#[test]
fn a_caller_matches_their_own_reference_only() {
    let appointment = booked(vec![person("Patient/p"), person("Practitioner/d")]);

    assert_eq!(ask(&appointment, "Patient/p"), Ok((Patient, 0)));
    assert_eq!(ask(&appointment, "Practitioner/d"), Ok((Host, 1)));
    for stranger in ["Patient/d", "Practitioner/p", "Patient/p2", "Patient/P", ""] {
        assert_eq!(
            ask(&appointment, stranger),
            Err(NotAParticipant),
            "{stranger:?}"
        );
    }
}

#[test]
fn absolute_and_versioned_references_name_the_same_person() {
    let appointment = booked(vec![
        person("https://fhir.example/R4/Patient/p"),
        person("Practitioner/d/_history/4"),
    ]);

    assert_eq!(ask(&appointment, "Patient/p"), Ok((Patient, 0)));
    assert_eq!(ask(&appointment, "Practitioner/d"), Ok((Host, 1)));
    // The caller's reference is normalized the same way, should it arrive absolute.
    let absolute_caller = "https://fhir.example/R4/Patient/p";
    assert_eq!(ask(&appointment, absolute_caller), Ok((Patient, 0)));
}

#[test]
fn an_actor_known_only_by_description_matches_nobody() {
    let appointment = booked(vec![described("Phone Call")]);

    assert_eq!(ask(&appointment, "Phone Call"), Err(NotAParticipant));
}

#[test]
fn places_devices_and_services_match_nobody() {
    for actor in [
        "Location/1",
        "Device/cam-1",
        "HealthcareService/tele",
        "Organization/o",
    ] {
        let appointment = booked(vec![person(actor)]);
        assert_eq!(ask(&appointment, actor), Err(NotAParticipant), "{actor}");
    }
}

#[test]
fn a_practitioner_role_matches_the_practitioner_it_resolves_to() {
    let appointment = booked(vec![typed(person("PractitionerRole/role-5"), V3, "PPRF")]);
    let role = "PractitionerRole/role-5";

    let resolved = ask_resolving(&appointment, "Practitioner/d", role, "Practitioner/d");
    assert_eq!(resolved, Ok((Host, 0)));
    let other = ask_resolving(&appointment, "Practitioner/other", role, "Practitioner/d");
    assert_eq!(other, Err(NotAParticipant));
    assert_eq!(ask(&appointment, "Practitioner/d"), Err(NotAParticipant));
    // Naming the role itself is naming the actor.
    assert_eq!(ask(&appointment, role), Ok((Host, 0)));
}

#[test]
fn a_practitioner_role_resolved_to_anyone_but_a_practitioner_matches_nobody() {
    let appointment = booked(vec![person("PractitionerRole/role-5")]);

    let seat = ask_resolving(
        &appointment,
        "Patient/p",
        "PractitionerRole/role-5",
        "Patient/p",
    );
    assert_eq!(seat, Err(NotAParticipant));
}

// 4. The participant's own answer

#[test]
fn a_participant_who_declined_is_refused() {
    let appointment = booked(vec![declined(person("Patient/p"))]);

    assert_eq!(ask(&appointment, "Patient/p"), Err(ParticipantDeclined));
}

#[test]
fn an_information_only_participant_is_informed_not_admitted() {
    let appointment = booked(vec![information_only(person("Patient/p"))]);

    assert_eq!(ask(&appointment, "Patient/p"), Err(InformationOnly));
}

#[test]
fn declining_is_reported_before_information_only() {
    let appointment = booked(vec![information_only(declined(person("Patient/p")))]);

    assert_eq!(ask(&appointment, "Patient/p"), Err(ParticipantDeclined));
}

#[test]
fn tentative_and_undecided_participants_may_join() {
    for status in ["accepted", "tentative", "needs-action"] {
        let mut companion = person("RelatedPerson/r");
        companion.status = status.into();
        let appointment = booked(vec![companion]);
        assert_eq!(
            ask(&appointment, "RelatedPerson/r"),
            Ok((Companion, 0)),
            "{status}"
        );
    }
}

// 5. Role, from the appointment

#[test]
fn a_translator_is_an_interpreter_whatever_the_actor() {
    for actor in [
        "Practitioner/i",
        "PractitionerRole/i",
        "RelatedPerson/i",
        "Patient/i",
    ] {
        let appointment = booked(vec![typed(person(actor), HL7, "translator")]);
        assert_eq!(ask(&appointment, actor), Ok((Interpreter, 0)), "{actor}");
    }
}

#[test]
fn a_clinician_type_or_no_type_makes_a_practitioner_the_host() {
    for code in HOST_TYPES {
        let appointment = booked(vec![typed(person("Practitioner/d"), V3, code)]);
        assert_eq!(ask(&appointment, "Practitioner/d"), Ok((Host, 0)), "{code}");
    }
    let untyped = booked(vec![person("Practitioner/d")]);
    assert_eq!(ask(&untyped, "Practitioner/d"), Ok((Host, 0)));
}

#[test]
fn any_other_type_on_a_practitioner_is_unsupported() {
    let doctor = || person("Practitioner/d");
    let mut text_only = doctor();
    text_only.type_.push(CodeableConcept {
        coding: Vec::new(),
        text: Some("Attending".into()),
    });
    for participant in [
        typed(doctor(), V3, "REF"),
        typed(doctor(), V3, "ADM"),
        typed(doctor(), HL7, "emergency"),
        typed(doctor(), "http://example.org/local", "ATND"),
        typed(doctor(), V3, "translator"),
        typed(doctor(), V3, "atnd"),
        text_only,
    ] {
        let types = format!("{:?}", participant.type_);
        let appointment = booked(vec![participant]);
        let seat = ask(&appointment, "Practitioner/d");
        assert_eq!(seat, Err(UnsupportedParticipantType), "{types}");
    }
}

#[test]
fn a_clinician_type_among_others_still_makes_the_host() {
    let referrer_and_consultant = typed(typed(person("Practitioner/d"), V3, "REF"), V3, "CON");
    let appointment = booked(vec![referrer_and_consultant]);

    assert_eq!(ask(&appointment, "Practitioner/d"), Ok((Host, 0)));
}

#[test]
fn patients_and_related_persons_keep_their_role_whatever_the_type() {
    let appointment = booked(vec![
        typed(person("Patient/p"), V3, "ATND"),
        typed(person("RelatedPerson/r"), V3, "PPRF"),
    ]);

    assert_eq!(ask(&appointment, "Patient/p"), Ok((Patient, 0)));
    assert_eq!(ask(&appointment, "RelatedPerson/r"), Ok((Companion, 1)));
}

// 6. One person, several participant lines

#[test]
fn a_usable_line_wins_over_a_refused_one() {
    let appointment = booked(vec![
        declined(typed(person("Practitioner/d"), V3, "ATND")),
        information_only(typed(person("Practitioner/d"), V3, "CON")),
        typed(person("Practitioner/d"), V3, "REF"),
        typed(person("Practitioner/d"), HL7, "translator"),
    ]);

    assert_eq!(ask(&appointment, "Practitioner/d"), Ok((Interpreter, 3)));
}

#[test]
fn the_highest_role_wins_and_ties_keep_the_first_line() {
    let appointment = booked(vec![
        typed(person("Practitioner/d"), HL7, "translator"),
        typed(person("Practitioner/d"), V3, "SPRF"),
        typed(person("Practitioner/d"), V3, "ATND"),
    ]);

    assert_eq!(ask(&appointment, "Practitioner/d"), Ok((Host, 1)));
}

#[test]
fn with_no_usable_line_the_first_refusal_is_given() {
    let appointment = booked(vec![
        information_only(person("Patient/p")),
        declined(person("Patient/p")),
    ]);

    assert_eq!(ask(&appointment, "Patient/p"), Err(InformationOnly));
}

// 7. Admission

#[test]
fn hosts_go_straight_in_and_everyone_else_waits_in_the_lobby() {
    let appointment = booked(vec![
        person("Practitioner/d"),
        typed(person("Practitioner/i"), HL7, "translator"),
        person("Patient/p"),
        person("RelatedPerson/r"),
    ]);
    let admission = |fhir_user, cfg: &PolicyConfig| {
        let caller = Caller {
            fhir_user,
            resolved_roles: &HashMap::new(),
            invite: None,
        };
        decide(&appointment, &caller, at(DURING), cfg).map(|a| a.admission)
    };
    let default = PolicyConfig::default();
    let direct = PolicyConfig {
        interpreters_direct: true,
        ..PolicyConfig::default()
    };

    assert_eq!(admission("Practitioner/d", &default), Ok(Admission::Direct));
    assert_eq!(admission("Practitioner/i", &default), Ok(Admission::Lobby));
    assert_eq!(admission("Patient/p", &default), Ok(Admission::Lobby));
    assert_eq!(admission("RelatedPerson/r", &default), Ok(Admission::Lobby));
    assert_eq!(admission("Practitioner/i", &direct), Ok(Admission::Direct));
    assert_eq!(admission("Patient/p", &direct), Ok(Admission::Lobby));
}

// Interpreter invites

/// Line 2 is open; line 3 is a translator already assigned.
fn with_open_slot() -> Appointment {
    booked(vec![
        person("Patient/p"),
        typed(person("Practitioner/d"), V3, "ATND"),
        translator_slot(),
        typed(person("Practitioner/i"), HL7, "translator"),
    ])
}

#[test]
fn open_slots_are_translator_lines_without_an_actor() {
    let mut appointment = with_open_slot();
    let mut described_translator = typed(described("Agency interpreter"), HL7, "translator");
    described_translator.status = "needs-action".into();
    let mut untyped_slot = translator_slot();
    untyped_slot.type_.clear();
    appointment
        .participant
        .extend([described_translator, untyped_slot, translator_slot()]);

    assert_eq!(unassigned_translator_slots(&appointment), vec![2, 6]);
    assert!(unassigned_translator_slots(&booked(vec![])).is_empty());
}

#[test]
fn an_invite_seats_a_stranger_in_the_open_translator_slot() {
    let seat = ask_invited(&with_open_slot(), "Practitioner/agency-4", "appt-1", 2);

    assert_eq!(seat, Ok((Interpreter, 2)));
}

#[test]
fn an_invite_does_not_need_a_fhir_identity() {
    let seat = ask_invited(&with_open_slot(), "", "appt-1", 2);

    assert_eq!(seat, Ok((Interpreter, 2)));
}

#[test]
fn an_invite_for_anything_but_an_open_translator_slot_here_is_invalid() {
    #[rustfmt::skip]
    let invites = [
        ("appt-2", 2),  // another appointment
        ("APPT-1", 2),  // ids are case-sensitive
        ("appt-1", 0),  // the patient's line
        ("appt-1", 1),  // the host's line
        ("appt-1", 3),  // a translator already assigned
        ("appt-1", 4),  // no such line
        ("appt-1", usize::MAX),
    ];
    for (id, slot) in invites {
        let seat = ask_invited(&with_open_slot(), "Practitioner/agency-4", id, slot);
        assert_eq!(seat, Err(InviteInvalid), "{id} #{slot}");
    }
    let mut without_id = with_open_slot();
    without_id.id = None;
    let seat = ask_invited(&without_id, "Practitioner/agency-4", "", 2);
    assert_eq!(seat, Err(InviteInvalid));
}

#[test]
fn without_an_invite_a_stranger_is_not_a_participant() {
    assert_eq!(
        ask(&with_open_slot(), "Practitioner/agency-4"),
        Err(NotAParticipant)
    );
}

#[test]
fn a_participant_joins_as_themself_whatever_invite_they_hold() {
    let seat = ask_invited(&with_open_slot(), "Patient/p", "appt-1", 2);

    assert_eq!(seat, Ok((Patient, 0)));
}

#[test]
fn an_invite_to_a_slot_that_was_declined_is_refused_as_declined() {
    let mut appointment = with_open_slot();
    appointment.participant[2].status = "declined".into();

    let seat = ask_invited(&appointment, "Practitioner/agency-4", "appt-1", 2);
    assert_eq!(seat, Err(ParticipantDeclined));
}

// The names other components rely on

#[test]
fn denial_codes_are_stable() {
    #[rustfmt::skip]
    let codes = [
        (AppointmentStatus,          "appointment_status"),
        (NoTimeWindow,               "no_time_window"),
        (TooEarly,                   "too_early"),
        (TooLate,                    "too_late"),
        (NotAParticipant,            "not_a_participant"),
        (ParticipantDeclined,        "participant_declined"),
        (InformationOnly,            "information_only"),
        (UnsupportedParticipantType, "unsupported_participant_type"),
        (InviteInvalid,              "invite_invalid"),
    ];
    for (denial, code) in codes {
        assert_eq!(denial.code(), code);
        assert!(!denial.to_string().is_empty());
    }
}

#[test]
fn roles_and_admissions_are_snake_case_on_the_wire() {
    let roles = serde_json::to_string(&[Host, Patient, Interpreter, Companion]).unwrap();
    let admissions = serde_json::to_string(&[Admission::Direct, Admission::Lobby]).unwrap();

    assert_eq!(roles, r#"["host","patient","interpreter","companion"]"#);
    assert_eq!(admissions, r#"["direct","lobby"]"#);
    let companion: Role = serde_json::from_str(r#""companion""#).unwrap();
    assert_eq!(companion, Companion);
    let lobby: Admission = serde_json::from_str(r#""lobby""#).unwrap();
    assert_eq!(lobby, Admission::Lobby);
}
