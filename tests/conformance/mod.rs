//! What tests/protocol_conformance.rs reads and speaks: PROTOCOL.md's tables as a client
//! developer reads them, and a raw WebSocket client written from the document (JSON it
//! builds itself), with a ledger of the errors it provoked.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use metaclinic_signaling::protocol::ServerMessage;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::common::signaling::{Harness, fixture_now};

/// The longest any single answer may take.
pub const T: Duration = Duration::from_secs(10);

// ---- PROTOCOL.md, as a client developer reads it ------------------------------------------

pub struct Doc {
    pub client_types: Vec<String>,
    pub server_types: Vec<String>,
    /// Error code -> the "then" cell: "stays open", "closes, 1008", or both.
    pub errors: BTreeMap<String, String>,
    pub close_codes: Vec<u16>,
}

/// The rows (header left out) of the tables of the `## {heading}` section.
pub fn rows(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("PROTOCOL.md has no section {heading}"));
    let table = section.lines().filter(|l| l.starts_with('|'));
    table
        .filter(|l| !l.starts_with("|---"))
        .skip(1)
        .map(|l| {
            let cells = l.trim_matches('|').split(" | ");
            cells.map(|c| c.trim().to_owned()).collect()
        })
        .collect()
}

pub fn first_code_span(cell: &str) -> String {
    cell.split('`').nth(1).unwrap_or_default().to_owned()
}

pub fn doc() -> Doc {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/signaling/PROTOCOL.md");
    let text = std::fs::read_to_string(path).unwrap();
    let types = |heading| {
        rows(&text, heading)
            .iter()
            .map(|r| first_code_span(&r[0]))
            .collect()
    };
    Doc {
        client_types: types("Client messages"),
        server_types: types("Server messages"),
        errors: rows(&text, "Errors")
            .iter()
            .map(|r| (first_code_span(&r[0]), r[2].clone()))
            .collect(),
        close_codes: rows(&text, "Closing")
            .iter()
            .map(|r| r[0].parse().unwrap())
            .collect(),
    }
}

/// The smallest valid message of each documented client type (the names of the call's
/// participants where one is needed).
pub fn sample(t: &str) -> Value {
    let who = "Patient/pat-1042";
    match t {
        "join" => json!({"type": t, "v": 1, "appointment": "tele-interp-1", "token": "x"}),
        "sdp" => json!({"type": t, "description": {"type": "answer", "sdp": "v=0"}}),
        "ice" => json!({"type": t, "candidate": {"candidate": ""}}),
        "video_preference" => json!({"type": t, "track": "t1"}),
        "admit" | "deny" | "return_to_lobby" | "remove" => json!({"type": t, "participant": who}),
        "mute" => json!({"type": t, "participant": who, "kind": "audio", "muted": true}),
        "extend" => json!({"type": t, "minutes": 1}),
        "share_vitals" => json!({"type": t, "companions": false}),
        "chat" => json!({"type": t, "text": "hi"}),
        "allow_chat" => json!({"type": t, "allowed": true}),
        "end" | "invite_interpreter" | "leave" | "ping" => json!({"type": t}),
        other => panic!("PROTOCOL.md documents {other}, which this test has no sample of"),
    }
}

/// An offer a client with nothing to publish makes: one data channel section (PROTOCOL.md,
/// "Media"). Its ICE never connects; the SFU answers it all the same.
pub fn data_channel_offer() -> String {
    "v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
m=application 9 UDP/DTLS/SCTP webrtc-datachannel
c=IN IP4 0.0.0.0
a=ice-ufrag:cnfm
a=ice-pwd:conformanceconformance01
a=fingerprint:sha-256 00:07:0E:15:1C:23:2A:31:38:3F:46:4D:54:5B:62:69:70:77:7E:85:8C:93:9A:A1:A8:AF:B6:BD:C4:CB:D2:D9
a=setup:actpass
a=mid:0
a=sctp-port:5000
"
    .replace('\n', "\r\n")
}

// ---- A client written from the document ----------------------------------------------------

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub enum Got {
    Msg(Value),
    /// The server's close frame code (None: closed without one).
    Closed(Option<u16>),
}

/// Messages that arrive whenever the call changes, between a request and its answer.
pub const EVENTS: &str = "lobby_changed members_changed track_published track_ended track_muted \
                      active_speaker quality warning extended chat chat_allowed";

pub struct Client {
    pub ws: Ws,
    /// Every message type sent and received, for the checks against the tables.
    pub sent: BTreeSet<String>,
    pub received: BTreeSet<String>,
}

impl Client {
    pub async fn open(h: &Harness) -> Client {
        let (ws, _) = tokio::time::timeout(T, tokio_tungstenite::connect_async(&h.ws_url))
            .await
            .expect("connects in time")
            .unwrap();
        Client {
            ws,
            sent: BTreeSet::new(),
            received: BTreeSet::new(),
        }
    }

    pub async fn join(h: &Harness, appointment: &str, who: &str) -> (Client, Value) {
        let mut c = Client::open(h).await;
        c.send(join_msg(appointment, &h.token(who))).await;
        let first = c.msg().await;
        (c, first)
    }

    pub async fn send(&mut self, v: Value) {
        self.sent.extend(v["type"].as_str().map(str::to_owned));
        self.send_raw(Message::Text(v.to_string().into())).await;
    }

    /// Send a message written out as JSON text.
    pub async fn say(&mut self, text: &str) {
        self.send(serde_json::from_str(text).unwrap()).await;
    }

    /// Send `text` and return the reply.
    pub async fn ask(&mut self, text: &str) -> Value {
        self.say(text).await;
        self.reply().await
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    pub async fn next(&mut self) -> Got {
        loop {
            let frame = tokio::time::timeout(T, self.ws.next())
                .await
                .expect("the server answers in time");
            match frame {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    // Everything the server says is a message of its table.
                    assert!(
                        serde_json::from_value::<ServerMessage>(v.clone()).is_ok(),
                        "{v}"
                    );
                    self.received.insert(v["type"].as_str().unwrap().to_owned());
                    return Got::Msg(v);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Got::Closed(frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return Got::Closed(None),
            }
        }
    }

    pub async fn msg(&mut self) -> Value {
        match self.next().await {
            Got::Msg(v) => v,
            Got::Closed(code) => panic!("closed ({code:?}) where a message was due"),
        }
    }

    /// The next message that is not an event of the call (nor a `media_lost` of a
    /// connection that cannot connect, as this client's cannot).
    pub async fn reply(&mut self) -> Value {
        loop {
            let v = self.msg().await;
            let t = v["type"].as_str().unwrap_or_default();
            if !EVENTS.split_whitespace().any(|e| e == t) && v["code"] != "media_lost" {
                return v;
            }
        }
    }

    /// Skip to the next message of type `t`.
    pub async fn until(&mut self, t: &str) -> Value {
        loop {
            let v = self.msg().await;
            if v["type"] == t {
                return v;
            }
        }
    }

    /// The connection is still usable: a ping gets its pong.
    pub async fn alive(&mut self) {
        self.say(r#"{"type":"ping"}"#).await;
        assert_eq!(self.reply().await["type"], "pong");
    }

    /// The server closes: its close code (messages before the close skipped).
    pub async fn closed(&mut self) -> u16 {
        loop {
            match self.next().await {
                Got::Msg(_) => continue,
                Got::Closed(Some(code)) => return code,
                Got::Closed(None) => panic!("closed without a close code"),
            }
        }
    }
}

/// The errors provoked so far, each checked against PROTOCOL.md's table.
pub struct Ledger {
    pub doc: Doc,
    pub provoked: BTreeSet<String>,
}

impl Ledger {
    /// The next reply of `c` is `error` `code`, documented; the connection then stays open
    /// (`open`) or closes with a code the table gives.
    pub async fn refused(&mut self, c: &mut Client, code: &str, open: bool) {
        let v = c.reply().await;
        assert!(v["type"] == "error" && v["code"] == code, "{code}: {v}");
        let then = self
            .doc
            .errors
            .get(code)
            .unwrap_or_else(|| panic!("{code} is sent but not in PROTOCOL.md's Errors"));
        if open {
            assert!(then.contains("stays open"), "{code}: {then}");
            c.alive().await;
        } else {
            let closed = c.closed().await;
            assert!(
                then.contains(&format!("closes, {closed}")),
                "{code} closed with {closed}: {then}"
            );
            assert!(self.doc.close_codes.contains(&closed));
        }
        self.provoked.insert(code.to_owned());
    }

    /// A join that is refused with `code` (and closed).
    pub async fn join_refused(&mut self, h: &Harness, join: Value, code: &str) {
        let mut c = Client::open(h).await;
        c.send(join).await;
        self.refused(&mut c, code, false).await;
    }
}

pub fn join_msg(appointment: &str, token: &str) -> Value {
    json!({"type": "join", "v": 1, "appointment": appointment, "token": token})
}

/// `token` with its header replaced by `header` (the signature no longer matches).
pub fn reheadered(token: &str, header: Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (_, rest) = token.split_once('.').unwrap();
    format!("{}.{rest}", b64.encode(header.to_string()))
}

/// `token` with one bit of its signature flipped.
pub fn resigned(token: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (input, signature) = token.rsplit_once('.').unwrap();
    let mut sig = b64.decode(signature).unwrap();
    sig[10] ^= 1;
    format!("{input}.{}", b64.encode(sig))
}

/// Move an appointment's time window by `hours`.
pub fn shift(a: &mut Value, hours: i64) {
    for key in ["start", "end"] {
        let at = chrono::DateTime::parse_from_rfc3339(a[key].as_str().unwrap()).unwrap();
        let at = at + chrono::Duration::hours(hours);
        a[key] = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).into();
    }
}

/// A copy of the interpreter appointment under another id, changed by `edit`.
pub fn variant(id: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut a = fixture_now("appointment-telehealth-interpreter", 30);
    a["id"] = id.into();
    edit(&mut a);
    a
}
