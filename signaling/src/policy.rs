//! Who may join a video consultation, and in which role, decided from the hospital's FHIR
//! `Appointment` alone.
//!
//! The booking system is the authority: a role is what the appointment says the caller is,
//! never what a client claims. The rules are checked in a fixed order, each refusal with its
//! own [`Denial`]:
//! 1. the appointment is `booked`, `arrived` or `checked-in`;
//! 2. `now` is within [start - lead, end + grace];
//! 3. the caller is a participant's actor (or holds an invite to an unassigned translator slot);
//! 4. that participant has not declined, and is not only being informed;
//! 5. the participant's type gives the role;
//! 6. among several matching participants, a usable one wins, then the highest role;
//! 7. the role gives the admission: hosts (and, if configured, interpreters) skip the lobby.
//!
//! Pure: no I/O and no clock, so every edge is testable to the second.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::fhir::{Appointment, AppointmentParticipant, Reference, relative_reference};

/// What a participant does in the consultation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The clinician running the consultation.
    Host,
    Patient,
    Interpreter,
    /// Family or a carer attending with the patient.
    Companion,
}

impl Role {
    /// Which role wins when one person appears as several participants: the one with the
    /// most to do in the consultation.
    fn precedence(self) -> u8 {
        match self {
            Role::Host => 0,
            Role::Interpreter => 1,
            Role::Patient => 2,
            Role::Companion => 3,
        }
    }
}

/// Whether a participant enters the room at once or waits until a host admits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    Direct,
    Lobby,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// How long before the booked start the room opens (patients like to test their camera).
    pub lead: Duration,
    /// How long after the booked end the room stays open (consultations overrun).
    pub grace: Duration,
    /// Let interpreters in without waiting in the lobby. Off by default: an interpreter is
    /// often from an agency, and the clinician confirms who joined.
    pub interpreters_direct: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            lead: Duration::minutes(15),
            grace: Duration::minutes(15),
            interpreters_direct: false,
        }
    }
}

/// The caller may join: as what, how, when, and as which of the appointment's participants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub role: Role,
    pub admission: Admission,
    pub opens_at: DateTime<Utc>,
    pub closes_at: DateTime<Utc>,
    /// The index in `Appointment::participant` the caller joins as.
    pub participant_index: usize,
}

/// Why the caller may not join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("the appointment is not booked")]
    AppointmentStatus,
    #[error("the appointment has no start and end time")]
    NoTimeWindow,
    #[error("the consultation has not opened yet")]
    TooEarly,
    #[error("the consultation has closed")]
    TooLate,
    #[error("not a participant of this appointment")]
    NotAParticipant,
    #[error("the participant declined this appointment")]
    ParticipantDeclined,
    #[error("the participant is informed of this appointment, not attending")]
    InformationOnly,
    #[error("this participant type does not join the consultation")]
    UnsupportedParticipantType,
    #[error("the invite is not for an open interpreter slot of this appointment")]
    InviteInvalid,
}

impl Denial {
    /// A stable code for clients and the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            Denial::AppointmentStatus => "appointment_status",
            Denial::NoTimeWindow => "no_time_window",
            Denial::TooEarly => "too_early",
            Denial::TooLate => "too_late",
            Denial::NotAParticipant => "not_a_participant",
            Denial::ParticipantDeclined => "participant_declined",
            Denial::InformationOnly => "information_only",
            Denial::UnsupportedParticipantType => "unsupported_participant_type",
            Denial::InviteInvalid => "invite_invalid",
        }
    }
}

/// What signaling knows when it asks: the caller's normalized FHIR reference (relative, like
/// "Practitioner/prac-77" or "Patient/pat-1042"), and `PractitionerRole` references resolved
/// to their Practitioner (e.g. "PractitionerRole/role-5" -> "Practitioner/prac-12").
#[derive(Debug, Clone)]
pub struct Caller<'a> {
    pub fhir_user: &'a str,
    pub resolved_roles: &'a HashMap<String, String>,
    pub invite: Option<InviteGrant>,
}

/// A host's single-use interpreter invite for an unassigned translator slot, already checked
/// for signature/expiry/single use by the caller: the appointment id and the slot index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteGrant {
    pub appointment_id: String,
    pub participant_index: usize,
}

const PARTICIPANT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/participant-type";
const PARTICIPATION_TYPE: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
/// Attender, primary performer, secondary performer, consultant: the clinicians of the visit.
const HOST_TYPES: [&str; 4] = ["ATND", "PPRF", "SPRF", "CON"];
/// The statuses of an appointment that is going ahead. `fulfilled` is over; `proposed`,
/// `pending` and `waitlist` are not confirmed; the rest did not or will not happen.
const JOINABLE: [&str; 3] = ["booked", "arrived", "checked-in"];

/// Decide whether `caller` may join the consultation of `appointment` at `now`.
pub fn decide(
    appointment: &Appointment,
    caller: &Caller,
    now: DateTime<Utc>,
    cfg: &PolicyConfig,
) -> Result<Access, Denial> {
    if !JOINABLE.contains(&appointment.status.as_str()) {
        return Err(Denial::AppointmentStatus);
    }
    let (opens_at, closes_at) = window(appointment, cfg)?;
    if now < opens_at {
        return Err(Denial::TooEarly);
    }
    if now > closes_at {
        return Err(Denial::TooLate);
    }
    let (participant_index, role) = seat(appointment, caller)?;
    let admission = match role {
        Role::Host => Admission::Direct,
        Role::Interpreter if cfg.interpreters_direct => Admission::Direct,
        Role::Interpreter | Role::Patient | Role::Companion => Admission::Lobby,
    };
    Ok(Access {
        role,
        admission,
        opens_at,
        closes_at,
        participant_index,
    })
}

/// The indices of translator slots with no actor (where an interpreter invite may be issued).
pub fn unassigned_translator_slots(appointment: &Appointment) -> Vec<usize> {
    appointment
        .participant
        .iter()
        .enumerate()
        .filter(|(_, p)| is_unassigned_translator(p))
        .map(|(index, _)| index)
        .collect()
}

/// When the room is open, both ends included.
fn window(
    appointment: &Appointment,
    cfg: &PolicyConfig,
) -> Result<(DateTime<Utc>, DateTime<Utc>), Denial> {
    let (Some(start), Some(end)) = (appointment.start, appointment.end) else {
        return Err(Denial::NoTimeWindow);
    };
    // An end before the start is a broken booking, not a window to guess.
    if end < start {
        return Err(Denial::NoTimeWindow);
    }
    // Checked: chrono panics when an instant near its range limit is pushed past it.
    let opens_at = start.checked_sub_signed(cfg.lead);
    let closes_at = end.checked_add_signed(cfg.grace);
    opens_at.zip(closes_at).ok_or(Denial::NoTimeWindow)
}

/// The participant the caller joins as, and the role that gives them.
fn seat(appointment: &Appointment, caller: &Caller) -> Result<(usize, Role), Denial> {
    let mut best: Option<(usize, Role)> = None;
    let mut refusal = None;
    for (index, participant) in appointment.participant.iter().enumerate() {
        if !is_caller(participant, caller) {
            continue;
        }
        match attendance(participant) {
            Ok(role) => {
                // Strictly better only, so the first of equal participants is kept.
                if best.is_none_or(|(_, kept)| role.precedence() < kept.precedence()) {
                    best = Some((index, role));
                }
            }
            Err(denial) => refusal = refusal.or(Some(denial)),
        }
    }
    match (best, refusal) {
        (Some(seat), _) => Ok(seat),
        (None, Some(denial)) => Err(denial),
        (None, None) => invited(appointment, caller.invite.as_ref()),
    }
}

/// Someone on no participant line may still fill an open translator slot with a host's invite.
fn invited(
    appointment: &Appointment,
    invite: Option<&InviteGrant>,
) -> Result<(usize, Role), Denial> {
    let Some(invite) = invite else {
        return Err(Denial::NotAParticipant);
    };
    if appointment.id.as_deref() != Some(invite.appointment_id.as_str()) {
        return Err(Denial::InviteInvalid);
    }
    let slot = appointment
        .participant
        .get(invite.participant_index)
        .filter(|p| is_unassigned_translator(p))
        .ok_or(Denial::InviteInvalid)?;
    attendance(slot).map(|role| (invite.participant_index, role))
}

/// Whether the participant's actor is the caller. Only people join: a `Location`, `Device` or
/// `HealthcareService` actor, or one described by `display` alone, matches nobody.
fn is_caller(participant: &AppointmentParticipant, caller: &Caller) -> bool {
    let Some(me) = relative_reference(caller.fhir_user) else {
        return false;
    };
    let Some(actor) = participant.actor.as_ref().and_then(Reference::relative) else {
        return false;
    };
    match resource_type(actor) {
        "Patient" | "Practitioner" | "RelatedPerson" => actor == me,
        "PractitionerRole" => {
            actor == me
                || caller
                    .resolved_roles
                    .get(actor)
                    .and_then(|practitioner| relative_reference(practitioner))
                    // A role is held by a Practitioner; a map that says otherwise must not
                    // turn someone else into a host.
                    .is_some_and(|practitioner| {
                        resource_type(practitioner) == "Practitioner" && practitioner == me
                    })
        }
        _ => false,
    }
}

/// Whether this participant attends, and if so in which role.
fn attendance(participant: &AppointmentParticipant) -> Result<Role, Denial> {
    if participant.status == "declined" {
        return Err(Denial::ParticipantDeclined);
    }
    if participant.required.as_deref() == Some("information-only") {
        return Err(Denial::InformationOnly);
    }
    role(participant)
}

fn role(participant: &AppointmentParticipant) -> Result<Role, Denial> {
    if has_type(participant, PARTICIPANT_TYPE, &["translator"]) {
        return Ok(Role::Interpreter);
    }
    let actor = participant.actor.as_ref().and_then(Reference::relative);
    match actor.map(resource_type) {
        Some("Practitioner" | "PractitionerRole") => {
            if participant.type_.is_empty()
                || has_type(participant, PARTICIPATION_TYPE, &HOST_TYPES)
            {
                Ok(Role::Host)
            } else {
                // A referrer, an admitter, an escort...: on the booking, not in the call.
                Err(Denial::UnsupportedParticipantType)
            }
        }
        Some("Patient") => Ok(Role::Patient),
        Some("RelatedPerson") => Ok(Role::Companion),
        _ => Err(Denial::UnsupportedParticipantType),
    }
}

fn is_unassigned_translator(participant: &AppointmentParticipant) -> bool {
    participant.actor.is_none() && has_type(participant, PARTICIPANT_TYPE, &["translator"])
}

fn has_type(participant: &AppointmentParticipant, system: &str, codes: &[&str]) -> bool {
    participant
        .type_
        .iter()
        .flat_map(|concept| &concept.coding)
        .any(|coding| {
            coding.system.as_deref() == Some(system)
                && coding
                    .code
                    .as_deref()
                    .is_some_and(|code| codes.contains(&code))
        })
}

/// "Patient" of "Patient/x"; only called on the output of `relative_reference`.
fn resource_type(relative: &str) -> &str {
    relative
        .split_once('/')
        .map_or(relative, |(resource_type, _)| resource_type)
}

#[cfg(test)]
mod tests;
