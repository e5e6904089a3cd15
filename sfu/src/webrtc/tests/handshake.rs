//! Two peers wired back to back in memory, with time advanced by hand: handshakes under
//! controlled loss, faster than real time.

use super::*;
use std::time::Duration;

fn pair(now: Instant) -> (Peer, Peer) {
    let mut server = server_peer(now);
    let mut client = client_peer(now);
    client
        .add_outbound(Codec::Opus, 1234, "c", "c-audio")
        .unwrap();
    let offer = client.create_offer(now).unwrap();
    let answer = server.accept_offer(now, &offer).unwrap();
    client.accept_answer(now, &answer).unwrap();
    (client, server)
}

/// Run until both are connected or `limit` of simulated time passes. `drop` decides per
/// datagram (direction, its index in that direction, bytes) whether the network loses it.
fn run(
    mut drop: impl FnMut(bool, usize, &[u8]) -> bool,
    limit: Duration,
) -> (ConnectionState, ConnectionState, Duration) {
    let start = Instant::now();
    let mut now = start;
    let (mut client, mut server) = pair(now);
    let (mut c2s, mut s2c) = (0usize, 0usize);
    while now.duration_since(start) < limit {
        while let Some(t) = client.poll_transmit() {
            c2s += 1;
            if !drop(true, c2s, &t.data) {
                server.handle_datagram(now, addr(50000), &t.data);
            }
        }
        while let Some(t) = server.poll_transmit() {
            s2c += 1;
            if !drop(false, s2c, &t.data) {
                client.handle_datagram(now, addr(40000), &t.data);
            }
        }
        while client.poll_output().is_some() {}
        while server.poll_output().is_some() {}
        if client.state() == ConnectionState::Connected
            && server.state() == ConnectionState::Connected
        {
            return (client.state(), server.state(), now.duration_since(start));
        }
        now += Duration::from_millis(10);
        for p in [&mut client, &mut server] {
            if p.next_timeout().is_some_and(|t| t <= now) {
                p.handle_timeout(now);
            }
        }
    }
    (client.state(), server.state(), now.duration_since(start))
}

fn is_dtls(d: &[u8]) -> bool {
    matches!(d.first(), Some(20..=63))
}

#[test]
fn handshakes_complete_under_heavy_random_loss() {
    let mut failed = Vec::new();
    for seed in 1..=50u32 {
        let mut x = seed.wrapping_mul(2654435761);
        let (c, s, took) = run(
            |_, _, _| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x % 100 < 20
            },
            Duration::from_secs(60),
        );
        if (c, s) != (ConnectionState::Connected, ConnectionState::Connected) {
            failed.push((seed, c, s, took));
        }
    }
    assert!(
        failed.is_empty(),
        "handshakes that did not finish under 20% loss: {failed:?}"
    );
}

#[test]
fn a_clean_handshake_connects() {
    let (c, s, took) = run(|_, _, _| false, Duration::from_secs(10));
    assert_eq!(
        (c, s),
        (ConnectionState::Connected, ConnectionState::Connected),
        "after {took:?}"
    );
}

#[test]
fn every_lost_dtls_flight_is_recovered() {
    // Lose, in turn, the n-th DTLS datagram in each direction (each is one flight here).
    let mut stalled = Vec::new();
    for to_server in [true, false] {
        for n in 1..=3 {
            let mut seen = 0;
            let (c, s, _) = run(
                |dir, _, d| {
                    if dir == to_server && is_dtls(d) {
                        seen += 1;
                        return seen == n;
                    }
                    false
                },
                Duration::from_secs(30),
            );
            if (c, s) != (ConnectionState::Connected, ConnectionState::Connected) {
                stalled.push(format!(
                    "datagram {n} {} (client {c:?}, server {s:?})",
                    if to_server {
                        "to the server"
                    } else {
                        "to the client"
                    }
                ));
            }
        }
    }
    assert!(
        stalled.is_empty(),
        "losing these stalls the handshake: {stalled:#?}"
    );
}
