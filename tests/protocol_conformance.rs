//! The session protocol as documented is the session protocol as built: a client written
//! from signaling/PROTOCOL.md alone gets the answers the document promises. The tables of
//! PROTOCOL.md (client messages, server messages, errors, close codes) are read here, and
//! every documented client message, every error the test can provoke, and an unknown field
//! on every message type are sent over a real WebSocket (loopback, real SFU); each answer
//! (type, error code, whether the connection stays open, close code) is checked against
//! the tables, and the errors left unprovoked are named with the reason.

mod common;
mod conformance;

use conformance::*;

use std::collections::BTreeSet;
use std::time::Duration;

use common::signaling::{Harness, fixture, fixture_now};
use futures_util::SinkExt;
use metaclinic_loadtest::{ClientDriver, ParticipantSpec, Phase, SignalingParticipant};
use metaclinic_signaling::protocol::ServerMessage;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

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
