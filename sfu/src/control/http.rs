//! The control API over HTTP/1.1 (hyper): routing, the service credential, bounded JSON
//! bodies, and newline-delimited JSON event streams.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::api::{
    CreateRoom, ErrorBody, ErrorDetail, IceCandidate, OpenSession, SessionDescription, SetMuted,
    VideoPreference, VitalsSharing,
};
use crate::error::ControlError;
use crate::events::{RoomEvent, RoomEventEnvelope};
use crate::ids::{ParticipantId, RoomId};
use crate::node::Node;

/// Largest request body: an SDP with many tracks stays well below this.
pub const MAX_BODY: usize = 128 * 1024;
/// What is read and dropped of a body over [`MAX_BODY`] before answering 413.
const MAX_DRAIN: usize = 4 << 20;
/// The longest a request body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A line sent on idle event streams so both ends notice a dead connection.
const KEEPALIVE: Duration = Duration::from_secs(15);

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Serve the control API on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!("control API accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let node = node.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(handle(&node, req, peer).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, "control connection: {e}");
            }
        });
    }
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(v) => full(status, "application/json", v),
        Err(_) => error_response(&ControlError::Internal),
    }
}

fn no_content() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn error_response(e: &ControlError) -> Response<Body> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = ErrorBody {
        error: ErrorDetail {
            code: e.code().to_owned(),
            message: e.to_string(),
        },
    };
    let v = serde_json::to_vec(&body).unwrap_or_default();
    full(status, "application/json", v)
}

fn authorized(node: &Node, req: &Request<Incoming>) -> bool {
    let Some(value) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(token) = value.strip_prefix("Bearer ") else {
        return false;
    };
    let expected = node.config().control.credential.as_bytes();
    token.as_bytes().ct_eq(expected).into()
}

async fn body_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, ControlError> {
    let mut body = req.into_body();
    let mut bytes = Vec::new();
    let mut too_large = false;
    let read = async {
        let mut drained = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|_| ControlError::BadRequest("could not read the request body".into()))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            if !too_large && bytes.len() + data.len() <= MAX_BODY {
                bytes.extend_from_slice(data);
                continue;
            }
            // Over the limit: read the rest and throw it away (up to a bound), so the refusal
            // reaches the caller. Closing with its bytes unread would reset the connection
            // under the answer.
            too_large = true;
            drained += data.len();
            if drained > MAX_DRAIN {
                break;
            }
        }
        Ok(())
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(())) if too_large => return Err(ControlError::PayloadTooLarge),
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) if too_large => return Err(ControlError::PayloadTooLarge),
        Err(_) => {
            return Err(ControlError::BadRequest(
                "the request body came too slowly".into(),
            ));
        }
    }
    serde_json::from_slice(&bytes).map_err(|e| ControlError::BadRequest(e.to_string()))
}

fn decode_segment(s: &str) -> Result<String, ControlError> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ControlError::BadRequest("path segment is not UTF-8".into()))
}

fn room_id(s: &str) -> Result<RoomId, ControlError> {
    RoomId::new(&decode_segment(s)?).map_err(|e| ControlError::BadRequest(format!("room: {e}")))
}

fn participant_id(s: &str) -> Result<ParticipantId, ControlError> {
    ParticipantId::new(&decode_segment(s)?)
        .map_err(|e| ControlError::BadRequest(format!("participant: {e}")))
}

async fn handle(node: &Node, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let route = route_name(&segments);
    let method = req.method().clone();
    let result = match (method.clone(), segments.as_slice()) {
        (Method::GET, ["healthz"]) => Ok(full(StatusCode::OK, "text/plain", "ok\n")),
        (Method::GET, ["readyz"]) => Ok(match node.readiness() {
            Ok(()) => full(StatusCode::OK, "text/plain", "ready\n"),
            Err(why) => full(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{why}\n"),
            ),
        }),
        (Method::GET, ["metrics"]) => {
            node.refresh_census().await;
            Ok(full(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                node.metrics().render(),
            ))
        }
        (_, ["v1", ..]) if !authorized(node, &req) => Err(ControlError::Unauthorized),
        (_, ["v1", rest @ ..]) => v1(node, method.clone(), rest, req).await,
        _ => Err(ControlError::NotFound),
    };
    let response = result.unwrap_or_else(|e| {
        node.metrics()
            .control_refused
            .with_label_values(&[e.code()])
            .inc();
        if e.status() >= 500 {
            warn!(%peer, %method, route, code = e.code(), "control request failed");
        } else {
            debug!(%peer, %method, route, code = e.code(), "control request refused");
        }
        error_response(&e)
    });
    let class = format!("{}xx", response.status().as_u16() / 100);
    node.metrics()
        .control_requests
        .with_label_values(&[route, &class])
        .inc();
    response
}

/// A low-cardinality name for the route, for metrics.
fn route_name(segments: &[&str]) -> &'static str {
    match segments {
        ["healthz"] => "healthz",
        ["readyz"] => "readyz",
        ["metrics"] => "metrics",
        ["v1", "node"] => "node",
        ["v1", "rooms"] => "rooms",
        ["v1", "rooms", _] => "room",
        ["v1", "rooms", _, "events"] => "room_events",
        ["v1", "rooms", _, "vitals"] => "vitals",
        ["v1", "rooms", _, "participants"] => "participants",
        ["v1", "rooms", _, "participants", _] => "participant",
        ["v1", "rooms", _, "participants", _, "events"] => "participant_events",
        ["v1", "rooms", _, "participants", _, "sdp"] => "sdp",
        ["v1", "rooms", _, "participants", _, "candidates"] => "candidates",
        ["v1", "rooms", _, "participants", _, "mute"] => "mute",
        ["v1", "rooms", _, "participants", _, "video"] => "video",
        _ => "unknown",
    }
}

async fn v1(
    node: &Node,
    method: Method,
    path: &[&str],
    req: Request<Incoming>,
) -> Result<Response<Body>, ControlError> {
    match (method, path) {
        (Method::GET, ["node"]) => Ok(json(StatusCode::OK, &node.info())),
        (Method::POST, ["rooms"]) => {
            let body: CreateRoom = body_json(req).await?;
            let created = node.create_room(body).await?;
            let status = if created.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json(status, &created))
        }
        (Method::GET, ["rooms", room]) => Ok(json(
            StatusCode::OK,
            &node.describe_room(&room_id(room)?).await?,
        )),
        (Method::DELETE, ["rooms", room]) => {
            node.close_room(&room_id(room)?).await?;
            Ok(no_content())
        }
        (Method::GET, ["rooms", room, "events"]) => {
            let rx = node.events(&room_id(room)?)?;
            Ok(event_stream(rx, None))
        }
        (Method::POST, ["rooms", room, "vitals"]) => {
            let v: VitalsSharing = body_json(req).await?;
            node.set_vitals_sharing(&room_id(room)?, v.companions)
                .await?;
            Ok(no_content())
        }
        (Method::POST, ["rooms", room, "participants"]) => {
            let room = room_id(room)?;
            let body: OpenSession = body_json(req).await?;
            Ok(json(
                StatusCode::CREATED,
                &node.open_session(&room, body).await?,
            ))
        }
        (Method::DELETE, ["rooms", room, "participants", p]) => {
            node.close_session(&room_id(room)?, &participant_id(p)?)
                .await?;
            Ok(no_content())
        }
        (Method::GET, ["rooms", room, "participants", p, "events"]) => {
            let (room, p) = (room_id(room)?, participant_id(p)?);
            // Subscribe first, then check the participant exists: nothing said in between is lost.
            let rx = node.events(&room)?;
            let info = node.describe_room(&room).await?;
            if !info.participants.iter().any(|i| i.participant == p) {
                return Err(ControlError::ParticipantNotFound);
            }
            Ok(event_stream(rx, Some(p)))
        }
        (Method::POST, ["rooms", room, "participants", p, "sdp"]) => {
            let (room, p) = (room_id(room)?, participant_id(p)?);
            match body_json::<SessionDescription>(req).await? {
                SessionDescription::Offer { sdp } => {
                    let answer = node.offer(&room, &p, sdp).await?;
                    Ok(json(
                        StatusCode::OK,
                        &SessionDescription::Answer { sdp: answer },
                    ))
                }
                SessionDescription::Answer { sdp } => {
                    node.answer(&room, &p, sdp).await?;
                    Ok(no_content())
                }
            }
        }
        (Method::POST, ["rooms", room, "participants", p, "candidates"]) => {
            let (room, p) = (room_id(room)?, participant_id(p)?);
            let c: IceCandidate = body_json(req).await?;
            node.candidate(&room, &p, c).await?;
            Ok(no_content())
        }
        (Method::POST, ["rooms", room, "participants", p, "mute"]) => {
            let (room, p) = (room_id(room)?, participant_id(p)?);
            let m: SetMuted = body_json(req).await?;
            node.set_muted(&room, &p, m.kind, m.muted).await?;
            Ok(no_content())
        }
        (Method::POST, ["rooms", room, "participants", p, "video"]) => {
            let (room, p) = (room_id(room)?, participant_id(p)?);
            let v: VideoPreference = body_json(req).await?;
            node.set_video_preference(&room, &p, v).await?;
            Ok(no_content())
        }
        (_, ["node" | "rooms"] | ["rooms", _] | ["rooms", _, "events" | "participants"])
        | (_, ["rooms", _, "participants", _] | ["rooms", _, "participants", _, _]) => {
            Err(ControlError::MethodNotAllowed)
        }
        _ => Err(ControlError::NotFound),
    }
}

/// Room events as newline-delimited JSON. The room's stream carries everything (signaling
/// relays offers from it); with `only_for`, only the room-wide events and those addressed to
/// that participant, ending when the participant leaves.
fn event_stream(
    rx: broadcast::Receiver<Arc<RoomEventEnvelope>>,
    only_for: Option<ParticipantId>,
) -> Response<Body> {
    struct State {
        rx: broadcast::Receiver<Arc<RoomEventEnvelope>>,
        only_for: Option<ParticipantId>,
        done: bool,
    }
    let lines = futures_util::stream::unfold(
        State {
            rx,
            only_for,
            done: false,
        },
        |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                let next = tokio::time::timeout(KEEPALIVE, st.rx.recv()).await;
                let line = match next {
                    Err(_) => Bytes::from_static(b"{\"type\":\"keepalive\"}\n"),
                    Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                    Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                        Bytes::from(format!("{{\"type\":\"lagged\",\"missed\":{n}}}\n"))
                    }
                    Ok(Ok(env)) => {
                        if let Some(me) = &st.only_for {
                            if env.event.addressee().is_some_and(|a| a != me) {
                                continue;
                            }
                            if let RoomEvent::ParticipantLeft { participant, .. } = &env.event
                                && participant == me
                            {
                                st.done = true;
                            }
                        }
                        if matches!(env.event, RoomEvent::RoomClosed) {
                            st.done = true;
                        }
                        let mut v = serde_json::to_vec(&*env).unwrap_or_default();
                        v.push(b'\n');
                        Bytes::from(v)
                    }
                };
                return Some((Ok::<_, Infallible>(Frame::data(line)), st));
            }
        },
    );
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(lines)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    r
}
