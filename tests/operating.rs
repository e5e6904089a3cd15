//! What an operator watches: after a short consultation both processes' `/metrics` carry the
//! families the dashboard plots, and `/readyz` says whether a process takes new work (not
//! while its Redis is unreachable).

mod common;

use std::time::Duration;

use common::cluster::{REDIS_URL, RedisPrefix, get};
use common::signaling::{Harness, fixture_now};
use metaclinic_loadtest::{ClientDriver, ParticipantSpec, Phase, SignalingParticipant};
use metaclinic_signaling::protocol::{ClientMessage, ServerMessage};

const T: Duration = Duration::from_secs(15);
/// Nothing listens on port 1: a Redis that never answers.
const NO_REDIS: &str = "redis://127.0.0.1:1/0";

/// Whether the exposition has a sample of `family` (a histogram's `_count` included).
fn has(exposition: &str, family: &str) -> bool {
    exposition
        .lines()
        .any(|l| !l.starts_with('#') && l.starts_with(family))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_the_families_after_a_short_call() {
    let h = Harness::start().await;
    h.fhir
        .put(fixture_now("appointment-telehealth-interpreter", 30));
    let driver = ClientDriver::start("metrics").unwrap();
    let doctor = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-interp-1",
        &h.token("Practitioner/prac-77"),
        None,
        ParticipantSpec::new("doctor").with_tone(440),
    )
    .await
    .unwrap();
    let mut patient = SignalingParticipant::join(
        &driver,
        &h.ws_url,
        "tele-interp-1",
        &h.token("Patient/pat-1042"),
        None,
        ParticipantSpec::new("patient").with_tone(660),
    )
    .await
    .unwrap();
    assert_eq!(patient.phase(), Phase::Lobby);
    doctor.send(ClientMessage::Admit {
        participant: "Patient/pat-1042".into(),
    });
    let phase = patient
        .wait_phase(T, |p| matches!(p, Phase::InCall(_)))
        .await;
    assert!(matches!(phase, Phase::InCall(_)), "{phase:?}");
    // Two quality reports: round trips are measured by then.
    for _ in 0..2 {
        assert!(
            patient
                .wait_for(
                    T,
                    |m| matches!(m, ServerMessage::Quality(q) if q.rtt_ms.is_some())
                )
                .await
                .is_some()
        );
    }

    let sfu = h.sfu.control.metrics().await.unwrap();
    use common::metric;
    assert_eq!(
        metric(
            &sfu,
            "metaclinic_sfu_rooms_by_kind",
            "kind=\"consultation\""
        ),
        1.0,
        "{sfu}"
    );
    assert_eq!(
        metric(&sfu, "metaclinic_sfu_participants_by_role", "role=\"host\""),
        1.0
    );
    assert_eq!(
        metric(
            &sfu,
            "metaclinic_sfu_participants_by_role",
            "role=\"patient\""
        ),
        1.0
    );
    assert!(metric(&sfu, "metaclinic_sfu_tracks", "kind=\"audio\"") >= 2.0);
    assert!(metric(&sfu, "metaclinic_sfu_rtt_seconds_count", "") >= 1.0);
    assert!(metric(&sfu, "metaclinic_sfu_loss_ratio_count", "direction=\"up\"") >= 1.0);
    assert!(metric(&sfu, "metaclinic_sfu_jitter_seconds_count", "") >= 1.0);
    assert!(metric(&sfu, "metaclinic_sfu_rtp_packets_forwarded_total", "") > 0.0);
    for family in [
        "metaclinic_sfu_received_bytes_total",
        "metaclinic_sfu_sent_bytes_total",
        "metaclinic_sfu_dropped_total",
        "metaclinic_sfu_nacked_packets_total",
        "metaclinic_sfu_retransmissions_total",
        "metaclinic_sfu_mixer_tick_seconds_count",
        "metaclinic_sfu_draining",
    ] {
        assert!(has(&sfu, family), "{family} missing:\n{sfu}");
    }

    let (status, sig) = get(&format!("{}/metrics", h.base)).await;
    assert_eq!(status, 200);
    assert_eq!(metric(&sig, "metaclinic_signaling_ws_sessions", ""), 2.0);
    assert!(
        metric(
            &sig,
            "metaclinic_signaling_joins_total",
            "outcome=\"allow\""
        ) >= 2.0
    );
    assert_eq!(
        metric(&sig, "metaclinic_signaling_lobby_wait_seconds_count", ""),
        1.0
    );
    assert!(
        metric(
            &sig,
            "metaclinic_signaling_booking_lookup_seconds_count",
            ""
        ) >= 2.0
    );
    assert!(metric(&sig, "metaclinic_signaling_jwks_fetches_total", "") >= 1.0);
    assert_eq!(metric(&sig, "metaclinic_signaling_consultations", ""), 1.0);
    assert_eq!(metric(&sig, "metaclinic_signaling_draining", ""), 0.0);
    assert_eq!(
        get(&format!("{}/readyz", h.base)).await,
        (200, "ready\n".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_redis() {
    // Signaling with shared state: ready while its Redis answers, not when it does not.
    let prefix = RedisPrefix::new();
    let with = |url: &'static str| {
        let key_prefix = prefix.prefix.clone();
        move |cfg: &mut metaclinic_signaling::SignalingConfig| {
            cfg.redis.url = url.into();
            cfg.redis.key_prefix = key_prefix;
            cfg.redis.timeout_ms = 300;
            cfg.sfu.nodes.clear();
            cfg.sfu.credential = common::CREDENTIAL.into();
        }
    };
    let up = Harness::start_with(with(REDIS_URL)).await;
    // Ready once it has subscribed to its pipe channel (other replicas' clients), soon.
    let ready_url = format!("{}/readyz", up.base);
    let ready = common::cluster::eventually(T, || async {
        get(&ready_url).await == (200, "ready\n".into())
    })
    .await;
    assert!(ready, "{:?}", get(&ready_url).await);
    let down = Harness::start_with(with(NO_REDIS)).await;
    assert_eq!(
        get(&format!("{}/readyz", down.base)).await,
        (503, "redis_unreachable\n".into())
    );
    assert_eq!(get(&format!("{}/healthz", down.base)).await.0, 200);

    // An SFU node that cannot heartbeat into its registry is not ready either.
    let sfu = common::start_sfu_with(
        1,
        &[
            ("METACLINIC_SFU__REDIS__URL", NO_REDIS),
            ("METACLINIC_SFU__REDIS__HEARTBEAT_INTERVAL_MS", "200"),
            ("METACLINIC_SFU__REDIS__NODE_TTL_MS", "1000"),
        ],
    );
    let url = format!("http://{}/readyz", sfu.control_addr);
    let flipped = common::cluster::eventually(T, || async {
        get(&url).await == (503, "registry_unreachable\n".into())
    })
    .await;
    assert!(flipped, "{:?}", get(&url).await);
}
