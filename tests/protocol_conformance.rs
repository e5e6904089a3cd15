//! The session protocol as documented is the session protocol as built: a client written
//! from signaling/PROTOCOL.md alone gets the answers the document promises. The tables of
//! PROTOCOL.md (client messages, server messages, errors, close codes) are read here, and
//! every documented client message, every error the test can provoke, and an unknown field
//! on every message type are sent over a real WebSocket (loopback, real SFU); each answer
//! (type, error code, whether the connection stays open, close code) is checked against
//! the tables, and the errors left unprovoked are named with the reason.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine;
use common::signaling::{Harness, fixture, fixture_now};
use futures_util::{SinkExt, StreamExt};
use metaclinic_loadtest::{ClientDriver, ParticipantSpec, Phase, SignalingParticipant};
use metaclinic_signaling::protocol::ServerMessage;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The longest any single answer may take.
const T: Duration = Duration::from_secs(10);

// ---- PROTOCOL.md, as a client developer reads it ------------------------------------------

struct Doc {
    client_types: Vec<String>,
    server_types: Vec<String>,
    /// Error code -> the "then" cell: "stays open", "closes, 1008", or both.
    errors: BTreeMap<String, String>,
    close_codes: Vec<u16>,
}

/// The rows (header left out) of the tables of the `## {heading}` section.
fn rows(doc: &str, heading: &str) -> Vec<Vec<String>> {
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

fn first_code_span(cell: &str) -> String {
    cell.split('`').nth(1).unwrap_or_default().to_owned()
}

fn doc() -> Doc {
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
fn sample(t: &str) -> Value {
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
fn data_channel_offer() -> String {
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

/// Documented errors this test does not provoke: the test that does (in signaling/tests/
/// or tests/), or what it would take.
const ELSEWHERE: [(&str, &str); 14] = [
    ("token_expired", CLAIMS),
    ("token_not_yet_valid", CLAIMS),
    ("issuer_invalid", CLAIMS),
    ("audience_invalid", CLAIMS),
    ("fhir_user_missing", CLAIMS),
    ("jwks_unavailable", CLAIMS),
    ("consultation_ended", "a join racing the end"),
    ("audit_unavailable", "the audit disk failing"),
    ("state_unavailable", "Redis down"),
    ("glare", "a connected peer and an unanswered SFU offer"),
    ("media_lost", "a media connection dying under a member"),
    ("ended", "a host control racing the end"),
    ("media_server_busy", BUSY),
    ("room_full", BUSY),
];
/// A media node past its capacity; tests/admission.rs loads one and checks its refusals.
const BUSY: &str = "a media server past rooms.max_thread_busy_pct";
/// signaling/tests/jwt_attacks.rs provokes these (with tokens of its own making).
const CLAIMS: &str = "jwt_attacks.rs";

// ---- A client written from the document ----------------------------------------------------

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum Got {
    Msg(Value),
    /// The server's close frame code (None: closed without one).
    Closed(Option<u16>),
}

/// Messages that arrive whenever the call changes, between a request and its answer.
const EVENTS: &str = "lobby_changed members_changed track_published track_ended track_muted \
                      active_speaker quality warning extended chat chat_allowed";

struct Client {
    ws: Ws,
    /// Every message type sent and received, for the checks against the tables.
    sent: BTreeSet<String>,
    received: BTreeSet<String>,
}

impl Client {
    async fn open(h: &Harness) -> Client {
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

    async fn join(h: &Harness, appointment: &str, who: &str) -> (Client, Value) {
        let mut c = Client::open(h).await;
        c.send(join_msg(appointment, &h.token(who))).await;
        let first = c.msg().await;
        (c, first)
    }

    async fn send(&mut self, v: Value) {
        self.sent.extend(v["type"].as_str().map(str::to_owned));
        self.send_raw(Message::Text(v.to_string().into())).await;
    }

    /// Send a message written out as JSON text.
    async fn say(&mut self, text: &str) {
        self.send(serde_json::from_str(text).unwrap()).await;
    }

    /// Send `text` and return the reply.
    async fn ask(&mut self, text: &str) -> Value {
        self.say(text).await;
        self.reply().await
    }

    async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    async fn next(&mut self) -> Got {
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

    async fn msg(&mut self) -> Value {
        match self.next().await {
            Got::Msg(v) => v,
            Got::Closed(code) => panic!("closed ({code:?}) where a message was due"),
        }
    }

    /// The next message that is not an event of the call (nor a `media_lost` of a
    /// connection that cannot connect, as this client's cannot).
    async fn reply(&mut self) -> Value {
        loop {
            let v = self.msg().await;
            let t = v["type"].as_str().unwrap_or_default();
            if !EVENTS.split_whitespace().any(|e| e == t) && v["code"] != "media_lost" {
                return v;
            }
        }
    }

    /// Skip to the next message of type `t`.
    async fn until(&mut self, t: &str) -> Value {
        loop {
            let v = self.msg().await;
            if v["type"] == t {
                return v;
            }
        }
    }

    /// The connection is still usable: a ping gets its pong.
    async fn alive(&mut self) {
        self.say(r#"{"type":"ping"}"#).await;
        assert_eq!(self.reply().await["type"], "pong");
    }

    /// The server closes: its close code (messages before the close skipped).
    async fn closed(&mut self) -> u16 {
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
struct Ledger {
    doc: Doc,
    provoked: BTreeSet<String>,
}

impl Ledger {
    /// The next reply of `c` is `error` `code`, documented; the connection then stays open
    /// (`open`) or closes with a code the table gives.
    async fn refused(&mut self, c: &mut Client, code: &str, open: bool) {
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
    async fn join_refused(&mut self, h: &Harness, join: Value, code: &str) {
        let mut c = Client::open(h).await;
        c.send(join).await;
        self.refused(&mut c, code, false).await;
    }
}

fn join_msg(appointment: &str, token: &str) -> Value {
    json!({"type": "join", "v": 1, "appointment": appointment, "token": token})
}

/// `token` with its header replaced by `header` (the signature no longer matches).
fn reheadered(token: &str, header: Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (_, rest) = token.split_once('.').unwrap();
    format!("{}.{rest}", b64.encode(header.to_string()))
}

/// `token` with one bit of its signature flipped.
fn resigned(token: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (input, signature) = token.rsplit_once('.').unwrap();
    let mut sig = b64.decode(signature).unwrap();
    sig[10] ^= 1;
    format!("{input}.{}", b64.encode(sig))
}

/// Move an appointment's time window by `hours`.
fn shift(a: &mut Value, hours: i64) {
    for key in ["start", "end"] {
        let at = chrono::DateTime::parse_from_rfc3339(a[key].as_str().unwrap()).unwrap();
        let at = at + chrono::Duration::hours(hours);
        a[key] = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).into();
    }
}

/// A copy of the interpreter appointment under another id, changed by `edit`.
fn variant(id: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut a = fixture_now("appointment-telehealth-interpreter", 30);
    a["id"] = id.into();
    edit(&mut a);
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_goes_as_documented() {
    let h = Harness::start().await;
    for resource in [
        fixture_now("appointment-telehealth-interpreter", 30),
        fixture_now("appointment-telehealth-unassigned-interpreter", 30),
        fixture("PractitionerRole-role-5"),
    ] {
        h.fhir.put(resource);
    }
    let doc = doc();
    let appt = "tele-interp-1";

    // A host enters directly: `joined` is the very first message.
    let (mut host, first) = Client::join(&h, appt, "Practitioner/prac-77").await;
    assert_eq!(first["type"], "joined", "{first}");
    assert_eq!(first["role"], "host");
    assert_eq!(host.ask(r#"{"type":"ping"}"#).await["type"], "pong");

    // A companion who publishes a microphone (the load tool's client negotiates media).
    let driver = ClientDriver::start("conformance").unwrap();
    let mut companion = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        appt,
        &h.token("RelatedPerson/rp-3"),
        None,
        ParticipantSpec::new("RelatedPerson/rp-3").with_tone(440),
    )
    .await
    .unwrap();
    assert_eq!(companion.phase(), Phase::Lobby);
    host.say(r#"{"type":"admit","participant":"RelatedPerson/rp-3"}"#)
        .await;
    // Publishers hear of their own tracks too.
    let own = companion
        .wait_for(Duration::from_secs(20), |m| {
            matches!(m, ServerMessage::TrackPublished { participant, .. } if participant == "RelatedPerson/rp-3")
        })
        .await;
    let Some(ServerMessage::TrackPublished { track, .. }) = own else {
        panic!("the companion never heard of its own track");
    };
    let published = host.until("track_published").await;
    assert_eq!(published["track"], track.as_str());

    // A patient waits, then is admitted: `joined` first, then the tracks already
    // published, and only then `members_changed`.
    let (mut patient, first) = Client::join(&h, appt, "Patient/pat-1042").await;
    assert_eq!(first["type"], "lobby", "{first}");
    host.say(r#"{"type":"admit","participant":"Patient/pat-1042"}"#)
        .await;
    let joined = patient.msg().await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let mut before_members = Vec::new();
    loop {
        let m = patient.msg().await;
        if m["type"] == "members_changed" {
            break;
        }
        before_members.push(m);
    }
    assert!(
        before_members
            .iter()
            .any(|m| m["type"] == "track_published" && m["track"] == track.as_str()),
        "the track published before the patient entered: {before_members:?}"
    );

    // Media: an offer (of a data channel only) is answered; candidates get no reply.
    let ice = |candidate: &str| json!({"type": "ice", "candidate": {"candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0}});
    patient
        .send(json!({"type": "sdp", "description": {"type": "offer", "sdp": data_channel_offer()}}))
        .await;
    let answer = patient.reply().await;
    assert_eq!(answer["description"]["type"], "answer", "{answer}");
    patient
        .send(ice("candidate:1 1 udp 2122260223 127.0.0.1 9 typ host"))
        .await;
    patient.send(ice("")).await; // the end of candidates
    patient.alive().await;
    let preference =
        r#"{"type":"video_preference","track":"t999999","max_quality":"low","pinned":true}"#;
    assert_eq!(patient.ask(preference).await["code"], "track_not_found");

    // Host controls, each with its documented effect.
    host.say(r#"{"type":"mute","participant":"Patient/pat-1042","kind":"audio","muted":true}"#)
        .await;
    let muted = patient.reply().await;
    assert_eq!(
        (muted["type"].clone(), muted["muted"].clone()),
        (json!("muted_by_host"), json!(true))
    );
    host.say(r#"{"type":"extend","minutes":5}"#).await;
    assert_eq!(patient.until("extended").await["type"], "extended");
    assert_eq!(host.until("extended").await["type"], "extended");
    // The chat: a line reaches everyone in the call, its sender too; a host stops it.
    patient
        .say(r#"{"type":"chat","text":"Amoxicillin 500 mg"}"#)
        .await;
    let line = host.until("chat").await;
    assert_eq!(
        (&line["from"], &line["role"], &line["text"]),
        (
            &json!("Patient/pat-1042"),
            &json!("patient"),
            &json!("Amoxicillin 500 mg")
        )
    );
    assert!(
        line["sent_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{line}"
    );
    assert_eq!(patient.until("chat").await["text"], "Amoxicillin 500 mg");
    host.say(r#"{"type":"allow_chat","allowed":false}"#).await;
    assert_eq!(patient.until("chat_allowed").await["allowed"], false);
    host.say(r#"{"type":"allow_chat","allowed":true}"#).await;
    assert_eq!(patient.until("chat_allowed").await["allowed"], true);
    // Vitals shared with companions: no reply (PROTOCOL.md, "Vitals").
    host.say(r#"{"type":"share_vitals","companions":true}"#)
        .await;
    host.alive().await;
    host.say(r#"{"type":"return_to_lobby","participant":"Patient/pat-1042"}"#)
        .await;
    assert_eq!(patient.reply().await["type"], "returned_to_lobby");
    let invite = host.ask(r#"{"type":"invite_interpreter"}"#).await;
    assert_eq!(invite["code"], "no_interpreter_slot");
    let (mut other_host, first) =
        Client::join(&h, "tele-interp-open", "Practitioner/prac-12").await;
    assert_eq!(first["type"], "joined");
    let invite = other_host.ask(r#"{"type":"invite_interpreter"}"#).await;
    assert_eq!(invite["type"], "invite", "{invite}");
    assert!(invite["code"].as_str().is_some_and(|c| !c.is_empty()));
    other_host.say(r#"{"type":"leave"}"#).await;
    assert_eq!(other_host.closed().await, 1000);

    // Denied: the interpreter is turned away and disconnected (1008).
    let (mut interpreter, first) = Client::join(&h, appt, "Practitioner/interp-9").await;
    assert_eq!(first["type"], "lobby");
    host.say(r#"{"type":"deny","participant":"Practitioner/interp-9"}"#)
        .await;
    assert_eq!(interpreter.msg().await["code"], "denied_by_host");
    assert_eq!(interpreter.closed().await, 1008);

    // Removed: disconnected (1008), and cannot come back.
    host.say(r#"{"type":"remove","participant":"Patient/pat-1042"}"#)
        .await;
    assert_eq!(patient.until("removed").await["type"], "removed");
    assert_eq!(patient.closed().await, 1008);
    let (mut back, first) = Client::join(&h, appt, "Patient/pat-1042").await;
    assert_eq!(first["code"], "removed_by_host", "{first}");
    assert_eq!(back.closed().await, 1008);

    // The same host on a second connection takes over: the first hears `replaced` (1000).
    let (mut host2, first) = Client::join(&h, appt, "Practitioner/prac-77").await;
    assert_eq!(first["type"], "joined");
    assert_eq!(host.until("replaced").await["type"], "replaced");
    assert_eq!(host.closed().await, 1000);

    // The end: everyone hears `ended` and is closed normally.
    host2.say(r#"{"type":"end"}"#).await;
    let ended = host2.until("ended").await;
    assert_eq!(ended["reason"], "host_ended");
    assert_eq!(host2.closed().await, 1000);
    assert!(
        companion
            .wait_for(T, |m| matches!(m, ServerMessage::Ended { .. }))
            .await
            .is_some()
    );

    // Every documented client message was sent; every server message was documented.
    let clients = [&host, &host2, &patient, &interpreter, &other_host, &back];
    let sent: BTreeSet<&String> = clients.iter().flat_map(|c| &c.sent).collect();
    assert_eq!(
        sent,
        doc.client_types.iter().collect(),
        "sent vs documented"
    );
    for t in clients.iter().flat_map(|c| &c.received) {
        assert!(doc.server_types.contains(t), "{t} is not documented");
    }

    // The web client's icon: linked from the page, and at the address browsers try.
    let get = |path: &str| reqwest::get(format!("{}{path}", h.base));
    let page = get("/").await.unwrap().text().await.unwrap();
    assert!(
        page.contains(r#"<link rel="icon" href="/favicon.svg""#),
        "{page}"
    );
    for path in ["/favicon.ico", "/favicon.svg"] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], "image/svg+xml", "{path}");
        assert!(
            r.headers().contains_key("content-security-policy"),
            "{path}"
        );
    }
}

/// Refused in the call, with these codes; the connection stays open.
#[rustfmt::skip]
const REFUSED_IN_CALL: [(&str, &str); 13] = [
    (r#"{"type":"ice","candidate":{"candidate":"candidate:garbage"}}"#, "invalid_candidate"),
    (r#"{"type":"ice","candidate":null}"#, "bad_message"),
    (r#"{"type":"video_preference","track":"t999999"}"#, "track_not_found"),
    (r#"{"type":"video_preference","track":"nonsense"}"#, "bad_message"),
    // With the last key winning, this would end the consultation.
    (r#"{"type":"ping","type":"end"}"#, "bad_message"),
    (r#"{"type":"extend","minutes":1,"minutes":30}"#, "bad_message"),
    ("{not json", "malformed_json"),
    (r#"{"type":"make_me_host"}"#, "unknown_type"),
    (r#"{"type":"join","v":1,"appointment":"tele-interp-1","token":"x"}"#, "already_joined"),
    (r#"{"type":"admit","participant":"Patient/nobody"}"#, "no_such_participant"),
    (r#"{"type":"mute","participant":"Practitioner/prac-77","kind":"video","muted":true}"#, "wrong_presence"),
    (r#"{"type":"extend","minutes":0}"#, "extension_limit"),
    (r#"{"type":"invite_interpreter"}"#, "no_interpreter_slot"),
];

/// Refused as the first message, with these codes; the connection closes.
#[rustfmt::skip]
const REFUSED_FIRST: [(&str, &str); 5] = [
    (r#"{"type":"ping"}"#, "join_first"),
    (r#"{"type":"join","v":2,"appointment":"tele-interp-1","token":"x"}"#, "unsupported_version"),
    (r#"{"type":"join","v":1,"appointment":"tele-interp-1","token":"x","x":1}"#, "bad_message"),
    (r#"{"type":"hello"}"#, "unknown_type"),
    ("{not json", "malformed_json"),
];

/// Joins refused by the appointment or the policy: (appointment, who, code).
#[rustfmt::skip]
const REFUSED_JOINS: [(&str, &str, &str); 11] = [
    ("no-such-appointment", "Practitioner/prac-77", "appointment_not_found"),
    ("tele-broken", "Practitioner/prac-77", "booking_invalid"),
    ("tele-off", "Practitioner/prac-77", "appointment_status"),
    ("tele-untimed", "Practitioner/prac-77", "no_time_window"),
    ("tele-later", "Practitioner/prac-77", "too_early"),
    ("tele-over", "Practitioner/prac-77", "too_late"),
    ("tele-referred", "Practitioner/prac-77", "unsupported_participant_type"),
    ("tele-interp-1", "Patient/pat-3003", "not_a_participant"),
    ("tele-declined", "Patient/pat-3003", "participant_declined"),
    ("2docs", "Patient/example", "information_only"),
    ("tele-interp-1", "not a reference", "fhir_user_invalid"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_documented_and_closes_as_documented() {
    let mut h = Harness::start_with(|c| {
        c.limits.join_timeout_s = 1;
        // Room for the host's hundred checks; the flood below still outruns it.
        c.limits.message_burst = 200;
    })
    .await;
    let referrer = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "REF"}]}]);
    for appointment in [
        fixture_now("appointment-telehealth-interpreter", 30),
        fixture_now("appointment-telehealth-declined", 30),
        fixture_now("appointment-2docs", 30),
        variant("tele-off", |a| a["status"] = "cancelled".into()),
        variant("tele-untimed", |a| a["start"] = Value::Null),
        variant("tele-later", |a| shift(a, 3)),
        variant("tele-over", |a| shift(a, -3)),
        variant("tele-referred", |a| a["participant"][1]["type"] = referrer),
        variant("tele-nosfu", |_| {}),
        json!({"resourceType": "Appointment", "id": "tele-broken", "status": 7}),
    ] {
        h.fhir.put(appointment);
    }
    let mut l = Ledger {
        doc: doc(),
        provoked: BTreeSet::new(),
    };
    let appt = "tele-interp-1";
    let doctor = h.token("Practitioner/prac-77");

    // In the call. Media first (this client's media never connects, and after 30 s the
    // SFU gives up on it).
    let (mut host, first) = Client::join(&h, appt, "Practitioner/prac-77").await;
    assert_eq!(first["type"], "joined");
    let sdp =
        |kind: &str, sdp: &str| json!({"type": "sdp", "description": {"type": kind, "sdp": sdp}});
    let candidate =
        r#"{"type":"ice","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host"}}"#;
    host.say(candidate).await;
    l.refused(&mut host, "invalid_candidate", true).await; // before any description
    host.send(sdp("offer", "v=0\r\nnot sdp\r\n")).await;
    l.refused(&mut host, "invalid_sdp", true).await;
    host.send(sdp("answer", &data_channel_offer())).await;
    l.refused(&mut host, "no_pending_offer", true).await;
    host.send(sdp("offer", &data_channel_offer())).await;
    assert_eq!(host.reply().await["type"], "sdp");
    for (text, code) in REFUSED_IN_CALL {
        host.send_raw(Message::Text(text.into())).await;
        l.refused(&mut host, code, true).await;
    }
    // Each message type with a field it does not have; a binary frame.
    for t in &l.doc.client_types.clone() {
        let mut m = sample(t);
        m["x"] = 1.into();
        host.send(m).await;
        l.refused(&mut host, "bad_message", true).await;
    }
    host.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    l.refused(&mut host, "bad_message", true).await;

    // Chat lines out of bounds, or while a host stopped the chat.
    host.say(r#"{"type":"chat","text":"  "}"#).await;
    l.refused(&mut host, "chat_invalid", true).await;
    host.send(json!({"type": "chat", "text": "a".repeat(501)}))
        .await;
    l.refused(&mut host, "chat_too_long", true).await;
    host.say(r#"{"type":"allow_chat","allowed":false}"#).await;
    host.say(r#"{"type":"chat","text":"x"}"#).await;
    l.refused(&mut host, "chat_off", true).await;
    host.say(r#"{"type":"allow_chat","allowed":true}"#).await;
    // Ten at once: five pass (the burst), then `chat_rate_limited`.
    for _ in 0..10 {
        host.say(r#"{"type":"chat","text":"x"}"#).await;
    }
    host.say(r#"{"type":"ping"}"#).await;
    let mut codes = Vec::new();
    loop {
        let v = host.reply().await;
        if v["type"] == "pong" {
            break;
        }
        codes.extend(v["code"].as_str().map(str::to_owned));
    }
    assert!(
        codes.iter().all(|c| c == "chat_rate_limited") && codes.len() >= 4,
        "{codes:?}"
    );
    assert!(l.doc.errors["chat_rate_limited"].contains("stays open"));
    l.provoked.insert("chat_rate_limited".into());

    // From the lobby: no media, no host controls.
    let (mut patient, first) = Client::join(&h, appt, "Patient/pat-1042").await;
    assert_eq!(first["type"], "lobby");
    patient
        .say(r#"{"type":"video_preference","track":"t1"}"#)
        .await;
    l.refused(&mut patient, "not_in_call", true).await;
    patient.say(r#"{"type":"end"}"#).await;
    l.refused(&mut patient, "not_host", true).await;

    // A flood: `rate_limited` (once per run of dropped messages), then `flooding`, 1008.
    for _ in 0..600 {
        let ping = Message::Text(r#"{"type":"ping"}"#.into());
        if patient.ws.feed(ping).await.is_err() {
            break;
        }
    }
    let _ = patient.ws.flush().await;
    let mut codes = Vec::new();
    let close = loop {
        match patient.next().await {
            Got::Msg(v) => codes.extend(v["code"].as_str().map(str::to_owned)),
            Got::Closed(code) => break code,
        }
    };
    assert!(codes.contains(&"rate_limited".to_owned()), "{codes:?}");
    assert_eq!(codes.last().unwrap(), "flooding", "{codes:?}");
    assert_eq!(close, Some(1008));
    assert!(l.doc.errors["rate_limited"].contains("stays open"));
    assert!(l.doc.errors["flooding"].contains("closes, 1008"));
    l.provoked
        .extend(["rate_limited".into(), "flooding".into()]);

    // Too large: `message_too_large` and 1009. (Just over the 64 KiB limit: the server
    // reads no further, and a message larger than the socket buffers would keep this
    // client sending, not reading, until the server resets the connection.)
    let (mut big, _) = Client::join(&h, appt, "RelatedPerson/rp-3").await;
    let _ = big
        .ws
        .send(sdp("offer", &"a".repeat(70_000)).to_string().into())
        .await;
    l.refused(&mut big, "message_too_large", false).await;

    // Before the join: the first message must be a join, in time, in this version.
    for (text, code) in REFUSED_FIRST {
        let mut c = Client::open(&h).await;
        c.send_raw(Message::Text(text.into())).await;
        l.refused(&mut c, code, false).await;
    }
    let mut c = Client::open(&h).await;
    l.refused(&mut c, "join_timeout", false).await; // 1 s here

    // Who you are, the appointment, the policy.
    let header = |alg: &str, kid: &str| json!({"alg": alg, "typ": "JWT", "kid": kid});
    for (token, code) in [
        (String::new(), "token_missing"),
        ("not.a.jwt".to_owned(), "token_malformed"),
        (
            reheadered(&doctor, header("HS256", "idp-1")),
            "algorithm_not_allowed",
        ),
        (reheadered(&doctor, header("ES256", "idp-2")), "unknown_key"),
        (resigned(&doctor), "signature_invalid"),
    ] {
        l.join_refused(&h, join_msg(appt, &token), code).await;
    }
    for (appointment, who, code) in REFUSED_JOINS {
        l.join_refused(&h, join_msg(appointment, &h.token(who)), code)
            .await;
    }
    let mut with_invite = join_msg(appt, &h.token("Practitioner/oncall-1"));
    with_invite["invite"] = "no-such-invite".into();
    l.join_refused(&h, with_invite, "invite_invalid").await;
    // A removed patient stays out.
    let (mut patient, first) = Client::join(&h, appt, "Patient/pat-1042").await;
    assert_eq!(first["type"], "lobby");
    host.say(r#"{"type":"remove","participant":"Patient/pat-1042"}"#)
        .await;
    assert_eq!(patient.until("removed").await["type"], "removed");
    let patient_token = h.token("Patient/pat-1042");
    l.join_refused(&h, join_msg(appt, &patient_token), "removed_by_host")
        .await;
    // The services behind: the booking system, then the media server, down.
    h.fhir.set_down(true);
    l.join_refused(&h, join_msg(appt, &doctor), "booking_unavailable")
        .await;
    h.fhir.set_down(false);
    // SAFETY: kill(2) on the SFU process this test started, by its id.
    unsafe { libc::kill(h.sfu.pid() as i32, libc::SIGKILL) };
    let _ = h.sfu.is_alive(); // reaps it
    l.join_refused(&h, join_msg("tele-nosfu", &doctor), "sfu_unavailable")
        .await;

    // Every documented code was provoked, or is named with the reason it was not.
    let mut accounted = l.provoked.clone();
    for (code, why) in ELSEWHERE {
        assert!(!why.is_empty());
        assert!(
            accounted.insert(code.to_owned()),
            "{code} was provoked after all"
        );
    }
    let documented: BTreeSet<String> = l.doc.errors.keys().cloned().collect();
    assert_eq!(accounted, documented, "provoked or named vs PROTOCOL.md");
}
