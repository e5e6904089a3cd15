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
use crate::dev::{DEMO_IDENTITIES, DevIssuer};
use crate::state::AppState;

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
        ApiError::new(e.http_status(), e.code(), e.to_string())
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

fn client_info(addr: SocketAddr, headers: &HeaderMap) -> ClientInfo {
    ClientInfo {
        ip: Some(addr.ip().to_string()),
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
    if state.draining.load(Ordering::Relaxed) {
        state
            .metrics
            .ws_refused
            .with_label_values(&["draining"])
            .inc();
        return ApiError::new(503, "draining", "this instance is shutting down; reconnect")
            .into_response();
    }
    let limit = state.config.limits.max_sessions;
    if state.sessions.fetch_add(1, Ordering::SeqCst) >= limit {
        state.sessions.fetch_sub(1, Ordering::SeqCst);
        state
            .metrics
            .ws_refused
            .with_label_values(&["too_many_sessions"])
            .inc();
        return ApiError::new(503, "too_many_sessions", "try again later").into_response();
    }
    let client = client_info(addr, &headers);
    let max = state.config.http.max_message_bytes;
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade({
            let state = state.clone();
            move |_| {
                state.sessions.fetch_sub(1, Ordering::SeqCst);
            }
        })
        .on_upgrade(move |socket| async move {
            crate::home::route(state.clone(), socket, client).await;
            state.sessions.fetch_sub(1, Ordering::SeqCst);
        })
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
    let client = client_info(addr, &headers);
    let Some(token) = bearer(&headers) else {
        state
            .metrics
            .joins
            .with_label_values(&["deny", "token_missing"])
            .inc();
        return Err(ApiError::new(
            401,
            "token_missing",
            "send Authorization: Bearer <token>",
        ));
    };
    let result = access::authorize(&state, token, &id, None).await;
    let identity = if result.is_err() {
        state
            .verifier
            .verify(token, state.clock.now().timestamp())
            .await
            .ok()
    } else {
        None
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
    Ok(Json(
        json!({ "role": granted.access.role, "admission": granted.access.admission }),
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
