//! A client of the SFU node's internal control API: what signaling uses, and what the client
//! library, the tests and the forwarding benchmark use directly.

use std::time::Duration;

use super::api::{
    CreateRoom, ErrorBody, IceCandidate, NodeInfo, OpenSession, RoomCreated, RoomInfo,
    SessionDescription, SessionOpened, SetMuted, VideoPreference,
};
use crate::events::{Rights, RoomEventEnvelope};
use crate::ids::{ParticipantId, RoomId};
use crate::media::MediaKind;
use crate::room::RoomKind;
use bytes::BytesMut;
use futures_util::StreamExt;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::de::DeserializeOwned;

/// An error answer of the control API, or a transport failure (status 0).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    fn transport(e: impl std::fmt::Display) -> Self {
        ApiError {
            status: 0,
            code: "transport".into(),
            message: e.to_string(),
        }
    }
}

/// Install rustls's ring provider for the process, if none is installed yet. The workspace's
/// HTTP client is built with TLS but no default provider (one crypto library for the whole
/// product, the one the media stack uses), so every client needs this first.
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Idle connections kept open to one node, at most.
const MAX_IDLE_CONNECTIONS: usize = 8;

#[derive(Clone)]
pub struct SfuControl {
    base: String,
    credential: String,
    http: reqwest::Client,
}

fn seg(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

impl SfuControl {
    /// `base` like `http://127.0.0.1:7001`.
    pub fn new(base: &str, credential: &str) -> Self {
        ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            // A burst of joins opens a connection per request in flight; once it is over, a
            // few idle ones serve the steady traffic. Each one kept costs the node its
            // buffers (about 20 KiB).
            .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
            .build()
            .expect("a plain HTTP client always builds");
        SfuControl {
            base: base.trim_end_matches('/').to_owned(),
            credential: credential.to_owned(),
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn participant_path(room: &str, participant: &str) -> String {
        format!("/v1/rooms/{}/participants/{}", seg(room), seg(participant))
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
        let resp = req
            .bearer_auth(&self.credential)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(ApiError::transport)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => ApiError {
                status,
                code: b.error.code,
                message: b.error.message,
            },
            Err(_) => ApiError {
                status,
                code: "unknown".into(),
                message: text,
            },
        })
    }

    async fn json<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, ApiError> {
        self.send(req)
            .await?
            .json()
            .await
            .map_err(ApiError::transport)
    }

    pub async fn create_room(&self, room: &str) -> Result<RoomCreated, ApiError> {
        self.create_room_of_kind(room, RoomKind::Consultation).await
    }

    pub async fn create_room_of_kind(
        &self,
        room: &str,
        kind: RoomKind,
    ) -> Result<RoomCreated, ApiError> {
        let room = RoomId::new(room).map_err(|e| ApiError {
            status: 0,
            code: "invalid_id".into(),
            message: e.to_string(),
        })?;
        self.json(
            self.http
                .post(self.url("/v1/rooms"))
                .json(&CreateRoom { room, kind }),
        )
        .await
    }

    pub async fn close_room(&self, room: &str) -> Result<(), ApiError> {
        self.send(
            self.http
                .delete(self.url(&format!("/v1/rooms/{}", seg(room)))),
        )
        .await
        .map(|_| ())
    }

    pub async fn room(&self, room: &str) -> Result<RoomInfo, ApiError> {
        self.json(self.http.get(self.url(&format!("/v1/rooms/{}", seg(room)))))
            .await
    }

    pub async fn open_session(
        &self,
        room: &str,
        participant: &str,
        role: Option<&str>,
        rights: Rights,
    ) -> Result<SessionOpened, ApiError> {
        let participant = ParticipantId::new(participant).map_err(|e| ApiError {
            status: 0,
            code: "invalid_id".into(),
            message: e.to_string(),
        })?;
        let body = OpenSession {
            participant,
            role: role.map(str::to_owned),
            rights,
        };
        self.json(
            self.http
                .post(self.url(&format!("/v1/rooms/{}/participants", seg(room))))
                .json(&body),
        )
        .await
    }

    pub async fn close_session(&self, room: &str, participant: &str) -> Result<(), ApiError> {
        self.send(
            self.http
                .delete(self.url(&Self::participant_path(room, participant))),
        )
        .await
        .map(|_| ())
    }

    /// Send the participant's offer; returns the SFU's answer SDP.
    pub async fn offer(
        &self,
        room: &str,
        participant: &str,
        sdp: String,
    ) -> Result<String, ApiError> {
        let url = self.url(&format!(
            "{}/sdp",
            Self::participant_path(room, participant)
        ));
        match self
            .json(self.http.post(url).json(&SessionDescription::Offer { sdp }))
            .await?
        {
            SessionDescription::Answer { sdp } => Ok(sdp),
            SessionDescription::Offer { .. } => Err(ApiError::transport(
                "the SFU answered an offer with an offer",
            )),
        }
    }

    pub async fn answer(&self, room: &str, participant: &str, sdp: String) -> Result<(), ApiError> {
        let url = self.url(&format!(
            "{}/sdp",
            Self::participant_path(room, participant)
        ));
        self.send(
            self.http
                .post(url)
                .json(&SessionDescription::Answer { sdp }),
        )
        .await
        .map(|_| ())
    }

    /// A trickled ICE candidate of the participant.
    pub async fn candidate(
        &self,
        room: &str,
        participant: &str,
        candidate: &IceCandidate,
    ) -> Result<(), ApiError> {
        let url = self.url(&format!(
            "{}/candidates",
            Self::participant_path(room, participant)
        ));
        self.send(self.http.post(url).json(candidate))
            .await
            .map(|_| ())
    }

    /// The node's identity and load.
    pub async fn node(&self) -> Result<NodeInfo, ApiError> {
        self.json(self.http.get(self.url("/v1/node"))).await
    }

    /// Whether companions receive the patient's vitals in `room` (clinicians always do).
    pub async fn set_vitals_sharing(&self, room: &str, companions: bool) -> Result<(), ApiError> {
        let url = self.url(&format!("/v1/rooms/{}/vitals", seg(room)));
        self.send(
            self.http
                .post(url)
                .json(&super::api::VitalsSharing { companions }),
        )
        .await
        .map(|_| ())
    }

    pub async fn set_muted(
        &self,
        room: &str,
        participant: &str,
        kind: MediaKind,
        muted: bool,
    ) -> Result<(), ApiError> {
        let url = self.url(&format!(
            "{}/mute",
            Self::participant_path(room, participant)
        ));
        self.send(self.http.post(url).json(&SetMuted { kind, muted }))
            .await
            .map(|_| ())
    }

    /// How `participant` wants one video it receives (the best quality, pinned or not).
    pub async fn set_video_preference(
        &self,
        room: &str,
        participant: &str,
        preference: &VideoPreference,
    ) -> Result<(), ApiError> {
        let url = self.url(&format!(
            "{}/video",
            Self::participant_path(room, participant)
        ));
        self.send(self.http.post(url).json(preference))
            .await
            .map(|_| ())
    }

    /// The participant's event stream: room events plus the offers addressed to it.
    pub async fn participant_events(
        &self,
        room: &str,
        participant: &str,
    ) -> Result<EventStream, ApiError> {
        let url = self.url(&format!(
            "{}/events",
            Self::participant_path(room, participant)
        ));
        self.stream(url).await
    }

    pub async fn room_events(&self, room: &str) -> Result<EventStream, ApiError> {
        self.stream(self.url(&format!("/v1/rooms/{}/events", seg(room))))
            .await
    }

    async fn stream(&self, url: String) -> Result<EventStream, ApiError> {
        let resp = self
            .http
            .get(url)
            .bearer_auth(&self.credential)
            .send()
            .await
            .map_err(ApiError::transport)?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            let body = serde_json::from_str::<ErrorBody>(&text).ok();
            return Err(ApiError {
                status,
                code: body
                    .as_ref()
                    .map_or("unknown".into(), |b| b.error.code.clone()),
                message: body.map_or(text, |b| b.error.message),
            });
        }
        Ok(EventStream {
            body: Box::pin(resp.bytes_stream()),
            buf: BytesMut::new(),
        })
    }

    /// The node's Prometheus exposition.
    pub async fn metrics(&self) -> Result<String, ApiError> {
        self.send(self.http.get(self.url("/metrics")))
            .await?
            .text()
            .await
            .map_err(ApiError::transport)
    }
}

/// Newline-delimited JSON room events.
pub struct EventStream {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: BytesMut,
}

/// One item of an event stream.
#[derive(Debug, Clone)]
pub enum StreamItem {
    Event(RoomEventEnvelope),
    /// The reader fell behind and this many events were lost.
    Lagged(u64),
}

impl EventStream {
    /// The next event; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<StreamItem> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(pos + 1);
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else {
                    continue;
                };
                match v.get("type").and_then(|t| t.as_str()) {
                    Some("keepalive") => continue,
                    Some("lagged") => {
                        return Some(StreamItem::Lagged(
                            v.get("missed").and_then(|m| m.as_u64()).unwrap_or(0),
                        ));
                    }
                    _ => {}
                }
                if let Ok(e) = serde_json::from_value::<RoomEventEnvelope>(v) {
                    return Some(StreamItem::Event(e));
                }
                continue;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }
}
