//! The embedded TURN server refuses, and counts with a reason: an expired credential, a
//! wrong HMAC, a credential naming a participant not placed on the node, a permission or a
//! channel to an address that is not the node's media port, allocations beyond the quota
//! per user and on the node, and a flood of unauthenticated requests. Meanwhile a call
//! relayed through the same server (TURN over TLS) goes on undisturbed: its media counters
//! keep growing at the same pace, without loss.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::turn::{
    Answer, RawTurn, TurnPorts, av_spec, credential_for, hears_and_sees, make_cert, relay_spec,
    turn_env,
};
use metaclinic_loadtest::participant::ParticipantStats;
use metaclinic_loadtest::relay::RelayTransport;
use metaclinic_loadtest::{ClientDriver, SfuParticipant};
use metaclinic_sfu::events::Rights;

const T: Duration = Duration::from_secs(20);
const RELAYED: &str = "Patient/relayed";
const DIRECT: &str = "Practitioner/direct";
const EXTRA: &str = "Practitioner/extra";

/// (audio packets, video packets, audio lost) received from `from`.
fn counters(s: &ParticipantStats, from: &str) -> (u64, u64, u64) {
    let a = s.audio_from(from).unwrap();
    let v = s.video_from(from).unwrap();
    (a.packets, v.packets, a.lost)
}

fn refused(metrics: &str, reason: &str) -> f64 {
    common::metric(
        metrics,
        "metaclinic_sfu_turn_refused_total",
        &format!("reason=\"{reason}\""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_and_leave_a_relayed_call_alone() {
    let cert = make_cert(&["127.0.0.1"]);
    let ports = TurnPorts::free();
    let env = turn_env(
        ports,
        &cert,
        &[
            ("MAX_ALLOCATIONS_PER_USER", "2".into()),
            ("MAX_ALLOCATIONS", "5".into()),
            ("UNAUTHENTICATED_PER_SECOND", "50".into()),
        ],
    );
    let sfu = common::turn::start_sfu_with_turn(&env);
    let control = sfu.control.clone();
    control.create_room("turn-refusals").await.unwrap();
    let turn_udp: SocketAddr = ([127, 0, 0, 1], ports.udp).into();
    let turn_tls: SocketAddr = ([127, 0, 0, 1], ports.tls).into();

    // The relayed call: one side relay-only over TLS, the other direct.
    let driver = ClientDriver::start("turn-refusals").unwrap();
    let direct = SfuParticipant::join(
        &driver,
        &control,
        "turn-refusals",
        None,
        av_spec(DIRECT, 440),
    )
    .await
    .unwrap();
    let mut relayed_spec = av_spec(RELAYED, 660);
    relayed_spec.relay = Some(relay_spec(
        turn_tls,
        RelayTransport::Tls,
        "127.0.0.1",
        &cert.ca_pem,
        RELAYED,
    ));
    let relayed = SfuParticipant::join(&driver, &control, "turn-refusals", None, relayed_spec)
        .await
        .unwrap();
    let r = relayed
        .wait_for(T, |s| hears_and_sees(s, DIRECT, 0))
        .await
        .unwrap();
    assert!(
        hears_and_sees(&r, DIRECT, 0),
        "the relayed side hears the direct one: {r:?}"
    );
    let d = direct
        .wait_for(T, |s| hears_and_sees(s, RELAYED, 0))
        .await
        .unwrap();
    assert!(
        hears_and_sees(&d, RELAYED, 0),
        "the direct side hears the relayed one: {d:?}"
    );
    let m = control.metrics().await.unwrap();
    let relayed_bytes = |m: &str, dir: &str| {
        common::metric(
            m,
            "metaclinic_sfu_turn_relayed_bytes_total",
            &format!("direction=\"{dir}\""),
        )
    };
    assert!(relayed_bytes(&m, "to_peer") > 10_000.0, "{m}");
    assert!(relayed_bytes(&m, "to_client") > 10_000.0, "{m}");
    assert_eq!(
        common::metric(&m, "metaclinic_sfu_turn_allocations", ""),
        1.0
    );

    let before_r = counters(&relayed.stats().await.unwrap(), DIRECT);
    let before_d = counters(&direct.stats().await.unwrap(), RELAYED);
    let started = std::time::Instant::now();

    // The extra participant must be placed for its allocations: it opens a session (no media).
    control
        .open_session("turn-refusals", EXTRA, None, Rights::default())
        .await
        .unwrap();
    // The hostile part runs on a blocking thread (raw sockets), while the call goes on.
    let refusals = tokio::task::spawn_blocking(move || {
        // An expired credential, a wrong HMAC, a participant not on this node.
        let (user, pass) = credential_for(RELAYED, -60);
        assert_eq!(
            RawTurn::new(turn_udp, &user, &pass).allocate(),
            Answer::Error(401)
        );
        let (user, _) = credential_for(RELAYED, 600);
        let wrong = metaclinic_sfu::turn::credential::password(b"not the shared secret!", &user);
        assert_eq!(
            RawTurn::new(turn_udp, &user, &wrong).allocate(),
            Answer::Error(401)
        );
        let (user, pass) = credential_for("Patient/on-another-node", 600);
        assert_eq!(
            RawTurn::new(turn_udp, &user, &pass).allocate(),
            Answer::Error(403)
        );

        // A placed participant's allocation may reach only the node's media ports.
        let (user, pass) = credential_for(DIRECT, 600);
        let mut a = RawTurn::new(turn_udp, &user, &pass);
        assert!(matches!(a.allocate(), Answer::Success(_)));
        assert_eq!(
            a.permission("192.0.2.10:5000".parse().unwrap()),
            Answer::Error(403)
        );
        assert_eq!(
            a.permission("127.0.0.2:5000".parse().unwrap()),
            Answer::Error(403)
        );
        assert_eq!(
            a.channel(0x4000, "192.0.2.10:5000".parse().unwrap()),
            Answer::Error(403)
        );
        // The node's own address, but a port that is no media socket (its control API).
        assert_eq!(
            a.channel(0x4001, "127.0.0.1:9".parse().unwrap()),
            Answer::Error(403)
        );

        // Quotas: two allocations per participant, five on the node.
        let mut b = RawTurn::new(turn_udp, &user, &pass);
        assert!(matches!(b.allocate(), Answer::Success(_)));
        let mut held = vec![a, b];
        for _ in 0..10 {
            assert_eq!(
                RawTurn::new(turn_udp, &user, &pass).allocate(),
                Answer::Error(486)
            );
        }
        let (extra_user, extra_pass) = credential_for(EXTRA, 600);
        for _ in 0..2 {
            let mut e = RawTurn::new(turn_udp, &extra_user, &extra_pass);
            assert!(matches!(e.allocate(), Answer::Success(_)));
            held.push(e);
        }
        let (user, pass) = credential_for(RELAYED, 600);
        for _ in 0..10 {
            assert_eq!(
                RawTurn::new(turn_udp, &user, &pass).allocate(),
                Answer::Error(508)
            );
        }

        // Unauthenticated requests beyond the rate (50 a second, bursts of 100) from one
        // source go unanswered.
        let answered = RawTurn::new(turn_udp, "", "").flood(300);
        drop(held);
        300 - answered
    });
    let silent = refusals.await.unwrap();
    assert!(
        silent >= 100,
        "an unauthenticated flood is cut off: {silent} of 300 unanswered"
    );

    // The relayed call went on meanwhile, at its pace and without loss.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let secs = started.elapsed().as_secs_f64();
    let after_r = counters(&relayed.stats().await.unwrap(), DIRECT);
    let after_d = counters(&direct.stats().await.unwrap(), RELAYED);
    for (before, after, who) in [
        (before_r, after_r, "relayed"),
        (before_d, after_d, "direct"),
    ] {
        let audio = (after.0 - before.0) as f64 / secs;
        assert!(
            audio > 40.0,
            "{who}: {audio:.0} audio packets/s during the attack"
        );
        assert!(
            after.1 > before.1 + 10,
            "{who}: video kept coming: {before:?} -> {after:?}"
        );
        assert!(
            after.2 <= before.2 + 2,
            "{who}: audio lost during the attack: {before:?} -> {after:?}"
        );
    }

    let m = control.metrics().await.unwrap();
    for (reason, at_least) in [
        ("expired_credential", 1.0),
        ("bad_integrity", 1.0),
        ("not_placed", 1.0),
        ("peer_forbidden", 4.0),
        ("user_quota", 10.0),
        ("node_quota", 10.0),
        ("rate_limited", 1.0),
    ] {
        assert!(
            refused(&m, reason) >= at_least,
            "{reason}: {}\n{m}",
            refused(&m, reason)
        );
    }
    assert_eq!(
        common::metric(&m, "metaclinic_sfu_turn_allocations", ""),
        5.0
    );
    relayed.leave().await.unwrap();
    direct.leave().await.unwrap();
}
