//! The one path to "may this caller join this appointment, and as whom": verify the token,
//! read the appointment from the booking system (never from the client), resolve
//! PractitionerRoles, apply the policy. Used by the WebSocket join and the HTTP pre-check.

use std::time::Instant;

use crate::audit::AuditEvent;
use crate::booking::{self, BookingError};
use crate::fhir::Appointment;
use crate::identity::{AuthError, Identity};
use crate::policy::{self, Access, Caller, Denial, InviteGrant};
use crate::state::Deps;

/// Where a request came from, for the audit log.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Booking failures reach the log once per interval.
static BOOKING_ERRORS: crate::logs::Limiter =
    crate::logs::Limiter::new(std::time::Duration::from_secs(10));

#[derive(Debug, Clone, thiserror::Error)]
pub enum AccessError {
    #[error("{0}")]
    Auth(String, &'static str),
    #[error("appointment id is not a FHIR id")]
    BadAppointmentId,
    #[error("{0}")]
    Booking(BookingError),
    #[error("denied: {}", .0.code())]
    Denied(Denial),
}

impl From<AuthError> for AccessError {
    fn from(e: AuthError) -> Self {
        AccessError::Auth(e.to_string(), e.code())
    }
}

impl AccessError {
    pub fn code(&self) -> &'static str {
        match self {
            AccessError::Auth(_, code) => code,
            AccessError::BadAppointmentId => "appointment_not_found",
            AccessError::Booking(e) => e.code(),
            AccessError::Denied(d) => d.code(),
        }
    }

    /// What the client is told. A failure on our side (the identity provider's keys, the
    /// booking system) gets a generic sentence: its detail can carry an internal URL and goes
    /// to the log only (`log_detail`).
    pub fn public_message(&self) -> String {
        match self {
            AccessError::Auth(_, "jwks_unavailable") => {
                "the identity provider cannot be reached; try again later".into()
            }
            AccessError::Booking(BookingError::Unavailable(_) | BookingError::Invalid(_)) => {
                "the booking system cannot be reached; try again later".into()
            }
            other => other.to_string(),
        }
    }

    /// Log a booking failure with its detail, for operators (never sent to the client), at
    /// most once per interval: every join runs into an outage. The identity provider's
    /// failures are logged where the keys are fetched (crate::identity).
    pub fn log_detail(&self, action: &str) {
        if let AccessError::Booking(BookingError::Unavailable(_) | BookingError::Invalid(_)) = self
            && let Some(suppressed) = BOOKING_ERRORS.check("booking", Instant::now())
        {
            tracing::warn!(action, code = self.code(), suppressed, "{self}");
        }
    }

    /// 401 for who you are, 403 for what you may, 404 for an unknown appointment, 503 when
    /// the booking system cannot say.
    pub fn http_status(&self) -> u16 {
        match self {
            AccessError::Auth(..) => 401,
            AccessError::BadAppointmentId | AccessError::Booking(BookingError::NotFound) => 404,
            AccessError::Booking(BookingError::Unavailable(_))
            | AccessError::Booking(BookingError::Invalid(_)) => 503,
            AccessError::Denied(_) => 403,
        }
    }
}

pub struct Granted {
    pub identity: Identity,
    pub appointment_id: String,
    pub appointment: Appointment,
    pub access: Access,
}

/// Read an appointment, timed and counted.
pub async fn read_appointment(deps: &Deps, id: &str) -> Result<Appointment, BookingError> {
    let started = Instant::now();
    let result = deps.booking.appointment(id).await;
    deps.metrics
        .booking_lookup
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        deps.metrics
            .booking_errors
            .with_label_values(&[e.code()])
            .inc();
    }
    result
}

/// Decide. `invite` is the slot of a valid, unused invite the caller presented (checked by
/// the caller against the consultation's invites).
pub async fn authorize(
    deps: &Deps,
    token: &str,
    appointment: &str,
    invite: Option<usize>,
) -> Result<Granted, AccessError> {
    let identity = deps
        .verifier
        .verify(token, deps.clock.now().timestamp())
        .await?;
    authorize_identity(deps, identity, appointment, invite).await
}

/// `authorize` for a caller whose token is already verified (the join verifies it once).
pub async fn authorize_identity(
    deps: &Deps,
    identity: Identity,
    appointment: &str,
    invite: Option<usize>,
) -> Result<Granted, AccessError> {
    let now = deps.clock.now();
    let appointment_id = booking::appointment_id(appointment)
        .ok_or(AccessError::BadAppointmentId)?
        .to_owned();
    let appt = read_appointment(deps, &appointment_id)
        .await
        .map_err(AccessError::Booking)?;
    let resolved = booking::resolve_practitioner_roles(deps.booking.as_ref(), &appt)
        .await
        .map_err(AccessError::Booking)?;
    let caller = Caller {
        fhir_user: &identity.fhir_user,
        resolved_roles: &resolved,
        invite: invite.map(|slot| InviteGrant {
            appointment_id: appointment_id.clone(),
            participant_index: slot,
        }),
    };
    let access = policy::decide(&appt, &caller, now, &deps.policy).map_err(AccessError::Denied)?;
    Ok(Granted {
        identity,
        appointment_id,
        appointment: appt,
        access,
    })
}

/// The audit's reference to an appointment a client named: `Appointment/<id>` for a valid
/// FHIR id, `Appointment/invalid` for anything else (never the client's bytes).
pub fn appointment_ref(appointment: &str) -> String {
    format!(
        "Appointment/{}",
        booking::appointment_id(appointment).unwrap_or("invalid")
    )
}

/// Count and audit a decision. A refusal of a caller whose token did not verify is audited
/// in summary (crate::audit::Refusals): anyone can send bad tokens as fast as they like.
pub async fn record_decision(
    deps: &Deps,
    action: &str,
    client: &ClientInfo,
    appointment: &str,
    result: &Result<Granted, AccessError>,
    identity: Option<&Identity>,
) -> Result<(), crate::audit::AuditError> {
    let (outcome, reason) = match result {
        Ok(_) => ("allow", None),
        Err(e) => ("deny", Some(e.code())),
    };
    deps.metrics
        .joins
        .with_label_values(&[outcome, reason.unwrap_or("")])
        .inc();
    let granted = result.as_ref().ok();
    let identity = granted.map(|g| &g.identity).or(identity);
    let event = AuditEvent {
        fhir_user: identity.map(|i| i.fhir_user.clone()),
        jti: identity.and_then(|i| i.jti.clone()),
        client_ip: client.ip.clone(),
        user_agent: client.user_agent.clone(),
        appointment: Some(appointment_ref(appointment)),
        room: None,
        role: granted.map(|g| role_name(g.access.role).to_owned()),
        action: action.to_owned(),
        outcome: outcome.to_owned(),
        reason: reason.map(str::to_owned),
        target: None,
        count: None,
    };
    if identity.is_none() {
        return deps.refusals.record(event).await;
    }
    deps.audit.record(event).await.map(|_| ())
}

pub fn role_name(role: policy::Role) -> &'static str {
    match role {
        policy::Role::Host => "host",
        policy::Role::Patient => "patient",
        policy::Role::Interpreter => "interpreter",
        policy::Role::Companion => "companion",
    }
}
