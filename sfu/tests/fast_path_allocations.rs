//! The forwarding fast path allocates nothing per packet: a counting allocator watches this
//! thread while packets go through it in steady state (after each stream's first packet,
//! which may create its state), on the way in from a publisher and on the way out to a
//! subscriber.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use metaclinic_sfu::srtp::{MasterKey, Profile, SrtpReceiver, SrtpSender};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

fn write_rtp(buffer: &mut [u8], ssrc: u32, sequence_number: u16, payload_len: usize) -> usize {
    buffer[0] = 0x80;
    buffer[1] = 96;
    buffer[2..4].copy_from_slice(&sequence_number.to_be_bytes());
    buffer[4..8].copy_from_slice(&(u32::from(sequence_number) * 3000).to_be_bytes());
    buffer[8..12].copy_from_slice(&ssrc.to_be_bytes());
    buffer[12..12 + payload_len].fill(0xab);
    12 + payload_len
}

#[test]
fn the_counter_sees_an_allocation() {
    assert_eq!(
        allocations_in(|| drop(std::hint::black_box(Box::new(1u64)))),
        1
    );
}

#[test]
fn srtp_protects_and_unprotects_without_allocating() {
    for profile in [Profile::AeadAes128Gcm, Profile::Aes128CmHmacSha1_80] {
        let key = MasterKey::new(profile, &[7; 16], &vec![9; profile.salt_len()]).unwrap();
        let mut sender = SrtpSender::new(&key).unwrap();
        let mut receiver = SrtpReceiver::new(&key).unwrap();
        let mut buffer = [0u8; 1500];
        let mut round_trip = |ssrc: u32, seq: u16| {
            let len = write_rtp(&mut buffer, ssrc, seq, 1100);
            let sealed = sender.protect(&mut buffer, len).unwrap();
            let opened = receiver.unprotect(&mut buffer[..sealed]).unwrap();
            assert_eq!(opened, len);
        };
        // First packets: each stream's state is created.
        for ssrc in 1..=4 {
            round_trip(ssrc, 65_000);
        }
        let allocations = allocations_in(|| {
            for seq in 65_001..=65_535u16 {
                for ssrc in 1..=4 {
                    round_trip(ssrc, seq);
                }
            }
            for seq in 0..1_000u16 {
                for ssrc in 1..=4 {
                    round_trip(ssrc, seq);
                }
            }
        });
        assert_eq!(allocations, 0, "{profile:?}: allocations per packet");
    }
}

mod peers {
    //! A subscriber's connection: the SFU's end sends through the fast path, rtc's client end
    //! receives. Both in memory, on simulated time.

    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use metaclinic_sfu::media::{Codec, RtpPacket};
    use metaclinic_sfu::webrtc::{ConnectionState, OutboundId, Peer, PeerOutput, Side};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Moves datagrams both ways and drains outputs for `steps` of 5 ms.
    fn pump(server: &mut Peer, client: &mut Peer, now: &mut Instant, steps: usize) {
        for _ in 0..steps {
            while let Some(t) = client.poll_transmit() {
                server.handle_datagram(*now, addr(50000), &t.data);
            }
            while let Some(t) = server.poll_transmit() {
                client.handle_datagram(*now, addr(40000), &t.data);
            }
            while client.poll_output().is_some() {}
            while server.poll_output().is_some() {}
            *now += Duration::from_millis(5);
            for p in [&mut *client, &mut *server] {
                if p.next_timeout().is_some_and(|t| t <= *now) {
                    p.handle_timeout(*now);
                }
            }
        }
    }

    fn packet(payload: &Bytes) -> RtpPacket {
        RtpPacket {
            ssrc: 0,
            sequence_number: 0,
            timestamp: 0,
            payload_type: 0,
            marker: true,
            payload: payload.clone(),
            audio_level: Some(40),
        }
    }

    /// The SFU's end (fast path) and a client connected over the client's offer, in which
    /// it publishes `tracks` (codec, SSRC): (server, client, now, the client's tracks).
    fn connected(tracks: &[(Codec, u32)]) -> (Peer, Peer, Instant, Vec<OutboundId>) {
        let mut now = Instant::now();
        let side = Side::Server {
            ufrag: "srvufrag".into(),
            pwd: "serverpasswordserverpass".into(),
            fast_path: true,
        };
        let mut server = Peer::new(side, addr(40000), now).unwrap();
        let mut client = Peer::new(Side::Client, addr(50000), now).unwrap();
        let outbound = tracks
            .iter()
            .map(|&(codec, ssrc)| client.add_outbound(codec, ssrc, "c", &format!("c-{ssrc}")))
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let offer = client.create_offer(now).unwrap();
        let answer = server.accept_offer(now, &offer).unwrap();
        client.accept_answer(now, &answer).unwrap();
        pump(&mut server, &mut client, &mut now, 100);
        assert_eq!(server.state(), ConnectionState::Connected);
        (server, client, now, outbound)
    }

    #[test]
    fn a_subscriber_s_packets_leave_the_fast_path_without_allocating() {
        let (mut server, mut client, mut now, _) = connected(&[(Codec::Opus, 1)]);
        let audio = server
            .add_outbound(Codec::Opus, 5001, "s", "s-audio")
            .unwrap();
        let video = server
            .add_outbound(Codec::Vp8, 5002, "s", "s-video")
            .unwrap();
        let offer = server.create_offer(now).unwrap();
        let answer = client.accept_offer(now, &offer).unwrap();
        server.accept_answer(now, &answer).unwrap();
        pump(&mut server, &mut client, &mut now, 20);

        // Payloads as the receive side hands them over: shared, one per publisher packet.
        let payloads: Vec<Bytes> = (0..5000u32)
            .map(|i| {
                let b = Bytes::from(vec![(i % 251) as u8; 1100]);
                drop(b.clone());
                b
            })
            .collect();
        let send = |server: &mut Peer, now: Instant, i: u16| {
            let p = packet(&payloads[usize::from(i)]);
            assert!(server.send_rtp(now, audio, &p, i, u32::from(i) * 960));
            assert!(server.send_rtp(now, video, &p, i, u32::from(i) * 3000));
        };
        // Warm up: each stream's state, the resend history's slots, the feedback flowing.
        for i in 0..1000u16 {
            send(&mut server, now, i);
            pump(&mut server, &mut client, &mut now, 1);
        }
        // The measured burst below goes out with no feedback between its packets: the send
        // records grow to their bound for it, once in a connection's life. A burst like it
        // first, then the feedback catches up.
        for i in 1000..3000u16 {
            send(&mut server, now, i);
            while server.poll_transmit().is_some() {}
        }
        pump(&mut server, &mut client, &mut now, 40);
        // What rtc itself has queued (reports on its timers) is not the fast path's.
        while let Some(t) = server.poll_transmit() {
            client.handle_datagram(now, addr(40000), &t.data);
        }
        let mut sent = 0;
        let allocations = super::allocations_in(|| {
            for i in 3000..5000u16 {
                send(&mut server, now, i);
                while let Some(t) = server.poll_transmit() {
                    sent += 1;
                    drop(t);
                }
            }
        });
        assert_eq!(sent, 4000, "one datagram per packet");
        assert_eq!(allocations, 0, "allocations for {sent} packets");
    }

    #[test]
    fn a_publisher_s_packets_come_in_through_the_fast_path_without_allocating() {
        let (mut server, mut client, mut now, tracks) =
            connected(&[(Codec::Opus, 1), (Codec::Vp8, 2)]);
        let (mic, camera) = (tracks[0], tracks[1]);

        // A voice frame and a piece of a camera frame, in their usual sizes.
        let (voice, video) = (Bytes::from(vec![0x10; 100]), Bytes::from(vec![0x10; 1100]));
        let publish = |client: &mut Peer, now: Instant, i: u16| {
            let ts = u32::from(i);
            assert!(client.send_rtp(now, mic, &packet(&voice), i, ts * 960));
            assert!(client.send_rtp(now, camera, &packet(&video), i, ts * 3000));
        };
        // Warm up: each stream's state, the slabs, the output queue.
        for i in 0..1000u16 {
            publish(&mut client, now, i);
            pump(&mut server, &mut client, &mut now, 1);
        }
        // The publisher's next packets, encrypted ahead (its side is not the SFU's).
        let mut datagrams = Vec::new();
        for i in 1000..5000u16 {
            publish(&mut client, now, i);
            while let Some(t) = client.poll_transmit() {
                let rtcp = (192..=223).contains(&t.data[1]);
                if !rtcp {
                    datagrams.push(t.data);
                }
            }
        }
        assert_eq!(datagrams.len(), 8000);
        // What subscribers' resend histories hold: the last 128 video payloads.
        let mut held = std::collections::VecDeque::with_capacity(129);
        let mut received = 0;
        let mut receive = |server: &mut Peer, datagrams: &[bytes::BytesMut]| {
            for d in datagrams {
                server.handle_datagram(now, addr(50000), d);
                while let Some(out) = server.poll_output() {
                    if let PeerOutput::Rtp { packet, .. } = out {
                        received += 1;
                        if packet.ssrc == 2 {
                            held.push_back(packet.payload);
                            if held.len() > 128 {
                                held.pop_front();
                            }
                        }
                    }
                }
            }
        };
        // The first half fills the slabs the held payloads keep; the second is measured.
        let (first, second) = datagrams.split_at(4000);
        receive(&mut server, first);
        let allocations = super::allocations_in(|| receive(&mut server, second));
        assert_eq!(received, 8000, "every packet came out");
        assert_eq!(allocations, 0, "allocations for the last 4000 packets");
    }
}
