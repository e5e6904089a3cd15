//! The public HTTP surface (axum): the WebSocket, the access pre-check, health, metrics, the
//! web client ([`crate::web`]), and in dev mode the demo token issuer. One error type answers
//! clients plainly; details go to the log, never to the client (they could hold patient data).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{ConnectInfo, Path, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::access::{self, AccessError, ClientInfo};
use crate::audit::AuditEvent;
use crate::dev::{DEMO_IDENTITIES, DevIssuer};
use crate::state::AppState;

/// A WebSocket's read buffer. tungstenite's default (128 KiB, zeroed when the socket opens)
/// made every idle, unauthenticated socket cost ~135 KiB; a larger message still arrives
/// (up to http.max_message_bytes), the buffer growing for it only while it is read.
const WS_READ_BUFFER: usize = 4 * 1024;

/// Messages are written out as they are sent, not gathered first (tungstenite would keep a
/// 128 KiB buffer per socket for that).
const WS_WRITE_BUFFER: usize = 0;

/// What may pile up unsent for a client that does not read: beyond it the session ends,
/// instead of the server holding an ever larger backlog for it.
const WS_MAX_WRITE_BUFFER: usize = 1024 * 1024;

/// An error answer: `{"error": {"code": ..., "message": ...}}`.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            message: message.into(),
        }
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        e.log_detail("access_check");
        ApiError::new(e.http_status(), e.code(), e.public_message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": { "code": self.code, "message": self.message } })),
        )
            .into_response()
    }
}

/// The dev issuer, when dev mode is on.
#[derive(Clone)]
pub struct Dev(pub Option<Arc<DevIssuer>>);

pub fn router(state: AppState, dev: Dev) -> Router {
    let mut app = Router::new()
        .route("/v1/ws", get(websocket))
        .route("/v1/appointments/{id}/access", get(access_check))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(crate::web::router());
    if let Dev(Some(issuer)) = dev {
        app = app.merge(
            Router::new()
                .route("/.well-known/jwks.json", get(dev_jwks))
                .route("/dev/token", post(dev_token))
                .route(
                    "/dev/identities",
                    get(|| async { Json(json!(DEMO_IDENTITIES)) }),
                )
                .with_state(issuer),
        );
    }
    app.with_state(state)
}

fn client_info(state: &AppState, addr: SocketAddr, headers: &HeaderMap) -> ClientInfo {
    ClientInfo {
        ip: Some(state.addresses.client(addr, headers).to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(200).collect()),
    }
}

async fn websocket(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let client = client_info(&state, addr, &headers);
    if state.draining.load(Ordering::Relaxed) {
        let message = "this instance is shutting down; reconnect";
        return refuse_connect(&state, &client, 503, "draining", message).await;
    }
    let ip = state.addresses.client(addr, &headers);
    // Held until the session has joined: what one address may keep open unauthenticated.
    let Some(slot) = state.unjoined.take(ip) else {
        let message = "too many connections from your address are waiting to join";
        return refuse_connect(&state, &client, 429, "too_many_connections", message).await;
    };
    let limit = state.config.limits.max_sessions;
    if state.sessions.fetch_add(1, Ordering::SeqCst) >= limit {
        state.sessions.fetch_sub(1, Ordering::SeqCst);
        return refuse_connect(&state, &client, 503, "too_many_sessions", "try again later").await;
    }
    let max = state.config.http.max_message_bytes;
    upgrade
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER.max(2 * max))
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade({
            let state = state.clone();
            move |_| {
                state.sessions.fetch_sub(1, Ordering::SeqCst);
            }
        })
        .on_upgrade(move |socket| async move {
            crate::home::route(state.clone(), socket, client, Some(slot)).await;
            state.sessions.fetch_sub(1, Ordering::SeqCst);
        })
}

/// Refuse a WebSocket before it opens: counted, audited in summary (the client has proved
/// nothing yet), answered with `code`.
async fn refuse_connect(
    state: &AppState,
    client: &ClientInfo,
    status: u16,
    code: &'static str,
    message: &str,
) -> Response {
    state.metrics.ws_refused.with_label_values(&[code]).inc();
    let _ = state
        .refusals
        .record(AuditEvent {
            client_ip: client.ip.clone(),
            action: "connect".into(),
            outcome: "deny".into(),
            reason: Some(code.into()),
            ..AuditEvent::default()
        })
        .await;
    ApiError::new(status, code, message).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// `GET /v1/appointments/{id}/access`: may this caller join, and as whom? Nothing is
/// joined; the decision is audited.
async fn access_check(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let client = client_info(&state, addr, &headers);
    let Some(token) = bearer(&headers) else {
        state
            .metrics
            .joins
            .with_label_values(&["deny", "token_missing"])
            .inc();
        // Nobody to name: the address, the appointment asked about and the reason.
        let _ = state
            .refusals
            .record(AuditEvent {
                client_ip: client.ip.clone(),
                appointment: Some(access::appointment_ref(&id)),
                action: "access_check".into(),
                outcome: "deny".into(),
                reason: Some("token_missing".into()),
                ..AuditEvent::default()
            })
            .await;
        return Err(ApiError::new(
            401,
            "token_missing",
            "send Authorization: Bearer <token>",
        ));
    };
    // The token is verified once; a refusal after it is audited under the caller's name.
    let (result, identity) = match state
        .verifier
        .verify(token, state.clock.now().timestamp())
        .await
    {
        Ok(who) => (
            access::authorize_identity(&state, who.clone(), &id, None).await,
            Some(who),
        ),
        Err(e) => (Err(e.into()), None),
    };
    access::record_decision(
        &state,
        "access_check",
        &client,
        &id,
        &result,
        identity.as_ref(),
    )
    .await
    .map_err(|_| ApiError::new(503, "audit_unavailable", "the audit log cannot be written"))?;
    let granted = result?;
    let ice_servers = crate::ice::precall(&state, &granted).await;
    Ok(Json(
        json!({ "role": granted.access.role, "admission": granted.access.admission, "ice_servers": ice_servers }),
    ))
}

/// Takes new sessions: not while draining, nor while the shared state (Redis) is down.
async fn ready(State(state): State<AppState>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    match state.cluster.ready().await {
        // Clients of other replicas could not be piped here yet.
        Ok(()) if !state.homes.listening() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not listening for piped clients\n",
        )
            .into_response(),
        Ok(()) => "ready\n".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.jwks_fetches.reset();
    state
        .metrics
        .jwks_fetches
        .inc_by(state.verifier.jwks_fetches());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn dev_jwks(State(issuer): State<Arc<DevIssuer>>) -> Json<serde_json::Value> {
    Json(issuer.jwks())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    fhir_user: String,
    #[serde(default)]
    minutes: Option<i64>,
}

/// `POST /dev/token {"fhir_user": "Practitioner/dr-demo"}`: a demo identity's token.
async fn dev_token(
    State(issuer): State<Arc<DevIssuer>>,
    Json(req): Json<TokenRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let valid = req.fhir_user.split_once('/').is_some_and(|(kind, id)| {
        [
            "Practitioner",
            "Patient",
            "RelatedPerson",
            "PractitionerRole",
        ]
        .contains(&kind)
            && crate::booking::is_fhir_id(id)
    });
    if !valid {
        return Err(ApiError::new(
            400,
            "fhir_user_invalid",
            "a relative reference like Practitioner/dr-demo",
        ));
    }
    let minutes = req.minutes.unwrap_or(60).clamp(1, 24 * 60);
    let token = issuer
        .token(&req.fhir_user, chrono::Utc::now(), minutes)
        .map_err(|_| ApiError::new(500, "internal", "cannot sign a token"))?;
    Ok(Json(json!({ "token": token, "fhir_user": req.fhir_user })))
}
