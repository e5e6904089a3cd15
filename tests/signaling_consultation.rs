//! A consultation through signaling, as users hold it: the doctor enters, the patient waits
//! in the lobby until admitted, both exchange media, the interpreter joins as third, the
//! doctor mutes the patient (the SFU stops forwarding that audio) and ends the call; every
//! step is in the audit log. Then: a cancelled appointment ends a running call, the hard
//! stop, a host's reconnect, and the interpreter invite.

mod common;

use std::time::Duration;

use common::signaling::{Harness, fixture_now};
use metaclinic_loadtest::participant::ParticipantStats;
use metaclinic_loadtest::{ClientDriver, ParticipantSpec, Phase, SignalingParticipant, VideoSpec};
use metaclinic_signaling::protocol::{ClientMessage, EndReason, MediaKind, ServerMessage};

const T: Duration = Duration::from_secs(15);

fn spec(name: &str, hz: u32) -> ParticipantSpec {
    ParticipantSpec::new(name)
        .with_tone(hz)
        .with_video(VideoSpec {
            width: 320,
            height: 240,
            fps: 15,
            kbps: 150,
            keyframe_interval: Duration::from_secs(2),
            ..VideoSpec::default()
        })
}

fn hears(s: &ParticipantStats, from: &str) -> bool {
    s.audio_from(from)
        .is_some_and(|a| a.audio_frames_decoded >= 20)
        && s.video_from(from).is_some_and(|v| v.keyframes >= 1)
}

async fn audio_packets(p: &SignalingParticipant, from: &str) -> u64 {
    p.stats()
        .await
        .unwrap()
        .audio_from(from)
        .map_or(0, |a| a.packets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booked_consultation_from_lobby_to_end() {
    let h = Harness::start().await;
    h.fhir
        .put(fixture_now("appointment-telehealth-interpreter", 30));
    let driver = ClientDriver::start("signaling").unwrap();
    const DOCTOR: &str = "Practitioner/prac-77";
    const PATIENT: &str = "Patient/pat-1042";
    const INTERPRETER: &str = "Practitioner/interp-9";

    // The doctor (the appointment's attending practitioner) enters directly.
    let mut doctor = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-interp-1",
        &h.token(DOCTOR),
        None,
        spec(DOCTOR, 440),
    )
    .await
    .unwrap();
    assert!(
        matches!(doctor.phase(), Phase::InCall(_)),
        "{:?}",
        doctor.phase()
    );

    // The patient waits in the lobby; the doctor sees them waiting.
    let mut patient = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-interp-1",
        &h.token(PATIENT),
        None,
        spec(PATIENT, 660),
    )
    .await
    .unwrap();
    assert_eq!(patient.phase(), Phase::Lobby);
    let waiting = doctor
        .wait_for(T, |m| matches!(m, ServerMessage::LobbyChanged { waiting } if waiting.iter().any(|w| w.participant == PATIENT)))
        .await;
    assert!(
        waiting.is_some(),
        "the doctor never saw the patient waiting"
    );
    // A patient cannot admit anyone.
    patient.send(ClientMessage::Admit {
        participant: PATIENT.into(),
    });
    assert!(
        patient
            .wait_for(
                T,
                |m| matches!(m, ServerMessage::Error { code, .. } if code == "not_host")
            )
            .await
            .is_some()
    );

    doctor.send(ClientMessage::Admit {
        participant: PATIENT.into(),
    });
    let phase = patient
        .wait_phase(T, |p| matches!(p, Phase::InCall(_)))
        .await;
    assert!(matches!(phase, Phase::InCall(_)), "{phase:?}");
    let s = patient.wait_media(T, |s| hears(s, DOCTOR)).await.unwrap();
    assert!(hears(&s, DOCTOR), "{s:#?}");
    let s = doctor.wait_media(T, |s| hears(s, PATIENT)).await.unwrap();
    assert!(hears(&s, PATIENT), "{s:#?}");

    // The interpreter joins as the third; lobby, then admitted.
    let mut interpreter = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-interp-1",
        &h.token(INTERPRETER),
        None,
        spec(INTERPRETER, 880),
    )
    .await
    .unwrap();
    assert_eq!(interpreter.phase(), Phase::Lobby);
    doctor.send(ClientMessage::Admit {
        participant: INTERPRETER.into(),
    });
    interpreter
        .wait_phase(T, |p| matches!(p, Phase::InCall(_)))
        .await;
    let s = interpreter
        .wait_media(T, |s| hears(s, DOCTOR) && hears(s, PATIENT))
        .await
        .unwrap();
    assert!(hears(&s, DOCTOR) && hears(&s, PATIENT), "{s:#?}");
    let s = doctor
        .wait_media(T, |s| hears(s, INTERPRETER))
        .await
        .unwrap();
    assert!(hears(&s, INTERPRETER), "{s:#?}");

    // The doctor mutes the patient: the SFU stops forwarding the patient's audio.
    doctor.send(ClientMessage::Mute {
        participant: PATIENT.into(),
        kind: MediaKind::Audio,
        muted: true,
    });
    assert!(
        patient
            .wait_for(T, |m| matches!(
                m,
                ServerMessage::MutedByHost {
                    kind: MediaKind::Audio,
                    muted: true
                }
            ))
            .await
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = audio_packets(&doctor, PATIENT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = audio_packets(&doctor, PATIENT).await;
    assert!(
        after <= before + 1,
        "muted audio still arrives: {before} -> {after}"
    );
    let interp_before = audio_packets(&doctor, INTERPRETER).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        audio_packets(&doctor, INTERPRETER).await > interp_before + 10,
        "the others are not muted"
    );
    // Unmuted, it flows again.
    doctor.send(ClientMessage::Mute {
        participant: PATIENT.into(),
        kind: MediaKind::Audio,
        muted: false,
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        audio_packets(&doctor, PATIENT).await > after + 10,
        "unmuted audio does not come back"
    );

    // The doctor ends it for everyone.
    doctor.send(ClientMessage::End);
    for p in [&mut patient, &mut interpreter] {
        let m = p
            .wait_for(T, |m| matches!(m, ServerMessage::Ended { .. }))
            .await;
        assert_eq!(
            m,
            Some(ServerMessage::Ended {
                reason: EndReason::HostEnded
            })
        );
    }

    // Every step is audited, by reference only, and the chain verifies.
    let audit = h.audit();
    let has = |action: &str, who: &str| {
        audit
            .iter()
            .any(|r| r["action"] == action && r["fhir_user"] == who && r["outcome"] != "deny")
    };
    assert!(
        has("join", DOCTOR) && has("join", PATIENT) && has("join", INTERPRETER),
        "{audit:#?}"
    );
    assert!(has("lobby", PATIENT) && has("enter_call", DOCTOR));
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "admit" && r["target"] == PATIENT && r["outcome"] == "ok")
    );
    assert!(
        audit.iter().any(|r| r["action"] == "admit"
            && r["fhir_user"] == PATIENT
            && r["reason"] == "not_host")
    );
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "mute" && r["target"] == PATIENT)
    );
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "end" && r["reason"] == "host_ended")
    );
    assert!(audit.iter().all(|r| r.get("display").is_none()));
    h.verify_audit().unwrap();
    drop(doctor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_appointment_ends_the_call_and_the_clock_enforces_the_end() {
    let h = Harness::start().await;
    h.fhir
        .put(fixture_now("appointment-telehealth-interpreter", 30));
    let driver = ClientDriver::start("cancel").unwrap();
    let mut doctor = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-interp-1",
        &h.token("Practitioner/prac-77"),
        None,
        spec("Practitioner/prac-77", 440),
    )
    .await
    .unwrap();
    assert!(matches!(doctor.phase(), Phase::InCall(_)));
    // The booking system cancels it: the running call ends within the re-read interval.
    h.fhir.set_status("tele-interp-1", "cancelled");
    let m = doctor
        .wait_for(T, |m| matches!(m, ServerMessage::Ended { .. }))
        .await;
    assert_eq!(
        m,
        Some(ServerMessage::Ended {
            reason: EndReason::Cancelled
        })
    );
    // And nobody gets back in.
    let again = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-interp-1",
        &h.token("Practitioner/prac-77"),
        None,
        spec("x", 440),
    )
    .await
    .unwrap();
    assert_eq!(again.phase(), Phase::Closed("appointment_status".into()));

    // The hard stop: a warning five minutes before end + grace, then the end.
    h.fhir
        .put(fixture_now("appointment-telehealth-declined", 30));
    let mut doctor = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-declined",
        &h.token("Practitioner/prac-77"),
        None,
        spec("Practitioner/prac-77", 440),
    )
    .await
    .unwrap();
    let closes_at = match doctor
        .wait_for(T, |m| matches!(m, ServerMessage::Joined { .. }))
        .await
    {
        Some(ServerMessage::Joined { closes_at, .. }) => {
            chrono::DateTime::parse_from_rfc3339(&closes_at)
                .unwrap()
                .with_timezone(&chrono::Utc)
        }
        other => panic!("no joined message: {other:?}"),
    };
    h.state.clock.set(closes_at - chrono::Duration::minutes(4));
    let warning = doctor
        .wait_for(T, |m| matches!(m, ServerMessage::Warning { .. }))
        .await;
    assert!(
        matches!(warning, Some(ServerMessage::Warning { ref code, .. }) if code == "ending_soon"),
        "{warning:?}"
    );
    // A host extends by ten minutes; then time runs out anyway.
    doctor.send(ClientMessage::Extend { minutes: 10 });
    assert!(
        doctor
            .wait_for(T, |m| matches!(m, ServerMessage::Extended { .. }))
            .await
            .is_some()
    );
    h.state.clock.set(closes_at + chrono::Duration::minutes(11));
    let m = doctor
        .wait_for(T, |m| matches!(m, ServerMessage::Ended { .. }))
        .await;
    assert_eq!(
        m,
        Some(ServerMessage::Ended {
            reason: EndReason::TimeOver
        })
    );
    let audit = h.audit();
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "extend" && r["outcome"] == "ok")
    );
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "end" && r["reason"] == "cancelled")
    );
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "end" && r["reason"] == "time_over")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_reload_keeps_the_call_and_the_host_rights() {
    let h = Harness::start().await;
    h.fhir
        .put(fixture_now("appointment-telehealth-interpreter", 30));
    let driver = ClientDriver::start("reload").unwrap();
    const DOCTOR: &str = "Practitioner/prac-77";
    const PATIENT: &str = "Patient/pat-1042";
    let doctor = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-interp-1",
        &h.token(DOCTOR),
        None,
        spec(DOCTOR, 440),
    )
    .await
    .unwrap();
    let mut patient = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-interp-1",
        &h.token(PATIENT),
        None,
        spec(PATIENT, 660),
    )
    .await
    .unwrap();
    doctor.send(ClientMessage::Admit {
        participant: PATIENT.into(),
    });
    patient
        .wait_phase(T, |p| matches!(p, Phase::InCall(_)))
        .await;
    assert!(
        patient
            .wait_media(T, |s| hears(s, DOCTOR))
            .await
            .is_ok_and(|s| hears(&s, DOCTOR))
    );

    // The doctor's page reloads: the connection drops without a goodbye.
    doctor.disconnect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        matches!(patient.phase(), Phase::InCall(_)),
        "the patient's call ended with the doctor's page"
    );
    let mut doctor = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-interp-1",
        &h.token(DOCTOR),
        None,
        spec(DOCTOR, 440),
    )
    .await
    .unwrap();
    assert!(
        matches!(doctor.phase(), Phase::InCall(_)),
        "{:?}",
        doctor.phase()
    );
    // Host rights are back: the doctor can still act on the patient.
    doctor.send(ClientMessage::ReturnToLobby {
        participant: PATIENT.into(),
    });
    assert!(
        patient
            .wait_for(T, |m| matches!(m, ServerMessage::ReturnedToLobby))
            .await
            .is_some()
    );
    assert!(
        doctor
            .wait_for(
                T,
                |m| matches!(m, ServerMessage::LobbyChanged { waiting } if !waiting.is_empty())
            )
            .await
            .is_some()
    );
    doctor.send(ClientMessage::Admit {
        participant: PATIENT.into(),
    });
    patient
        .wait_phase(T, |p| matches!(p, Phase::InCall(_)))
        .await;
    let s = doctor.wait_media(T, |s| hears(s, PATIENT)).await.unwrap();
    assert!(hears(&s, PATIENT), "{s:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_invites_an_interpreter_into_the_open_slot_once() {
    let h = Harness::start().await;
    h.fhir.put(fixture_now(
        "appointment-telehealth-unassigned-interpreter",
        30,
    ));
    h.fhir
        .put(common::signaling::fixture("PractitionerRole-role-5"));
    let driver = ClientDriver::start("invite").unwrap();
    // The host is booked as PractitionerRole/role-5, which resolves to Practitioner/prac-12.
    let mut doctor = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-interp-open",
        &h.token("Practitioner/prac-12"),
        None,
        spec("Practitioner/prac-12", 440),
    )
    .await
    .unwrap();
    assert!(
        matches!(doctor.phase(), Phase::InCall(_)),
        "{:?}",
        doctor.phase()
    );
    // Without an invite, the on-call interpreter is nobody here.
    let stranger = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-interp-open",
        &h.token("Practitioner/oncall-1"),
        None,
        spec("i", 500),
    )
    .await
    .unwrap();
    assert_eq!(stranger.phase(), Phase::Closed("not_a_participant".into()));
    doctor.send(ClientMessage::InviteInterpreter);
    let code = match doctor
        .wait_for(T, |m| matches!(m, ServerMessage::Invite { .. }))
        .await
    {
        Some(ServerMessage::Invite { code, .. }) => code,
        other => panic!("no invite: {other:?}"),
    };
    let interpreter = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-interp-open",
        &h.token("Practitioner/oncall-1"),
        Some(&code),
        spec("i", 500),
    )
    .await
    .unwrap();
    assert_eq!(interpreter.phase(), Phase::Lobby);
    // Single use: a second person with the same code is refused.
    let second = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-interp-open",
        &h.token("Practitioner/oncall-2"),
        Some(&code),
        spec("j", 500),
    )
    .await
    .unwrap();
    assert_eq!(second.phase(), Phase::Closed("invite_invalid".into()));
    // Its owner's connection drops; the same code lets the same person back in.
    interpreter.disconnect();
    let back = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-interp-open",
        &h.token("Practitioner/oncall-1"),
        Some(&code),
        spec("i2", 500),
    )
    .await
    .unwrap();
    assert_eq!(
        back.phase(),
        Phase::Lobby,
        "the invite's owner may come back"
    );
    let audit = h.audit();
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "invite_interpreter" && r["outcome"] == "ok")
    );
    assert!(audit.iter().any(|r| r["action"] == "join"
        && r["fhir_user"] == "Practitioner/oncall-1"
        && r["role"] == "interpreter"));
}
