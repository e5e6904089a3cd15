//! Our SRTP against the WebRTC library's (`rtc::srtp`), both ways and across a sequence
//! number wrap, and against hostile packets.

use super::*;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

const PROFILES: [Profile; 2] = [Profile::AeadAes128Gcm, Profile::Aes128CmHmacSha1_80];

fn master(profile: Profile, seed: u8) -> MasterKey {
    let key: Vec<u8> = (0..16)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i))
        .collect();
    let salt: Vec<u8> = (0..profile.salt_len() as u8)
        .map(|i| seed ^ (i * 7))
        .collect();
    MasterKey::new(profile, &key, &salt).unwrap()
}

fn library_context(key: &MasterKey) -> Context {
    let profile = match key.profile {
        Profile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        Profile::Aes128CmHmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
    };
    let provider = rtc::crypto::default_provider().unwrap();
    Context::new(&key.key, key.salt(), profile, None, None, provider.crypto()).unwrap()
}

/// An RTP packet with a CSRC and a one-byte header extension, so the header length counts.
fn rtp(ssrc: u32, sequence_number: u16, payload_len: usize) -> Vec<u8> {
    let mut packet = vec![0x80 | 0x10 | 1, 96];
    packet.extend_from_slice(&sequence_number.to_be_bytes());
    packet.extend_from_slice(&(u32::from(sequence_number) * 3000).to_be_bytes());
    packet.extend_from_slice(&ssrc.to_be_bytes());
    packet.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    packet.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0x7f, 0, 0]);
    packet.extend((0..payload_len).map(|i| (i as u8).wrapping_mul(13)));
    packet
}

fn protect(sender: &mut SrtpSender, plain: &[u8]) -> Vec<u8> {
    let mut buffer = plain.to_vec();
    buffer.resize(plain.len() + 16, 0);
    let len = sender.protect(&mut buffer, plain.len()).unwrap();
    buffer.truncate(len);
    buffer
}

#[test]
fn what_we_protect_the_library_unprotects_across_a_wrap() {
    for profile in PROFILES {
        let key = master(profile, 1);
        let mut ours = SrtpSender::new(&key).unwrap();
        let mut theirs = library_context(&key);
        for sequence_number in (65_530..=65_535).chain(0..6) {
            let plain = rtp(0x1234_5678, sequence_number, 900);
            let sealed = protect(&mut ours, &plain);
            assert_eq!(sealed.len(), plain.len() + profile.tag_len());
            assert_ne!(
                sealed[24..plain.len()],
                plain[24..],
                "{profile:?} encrypted"
            );
            let opened = theirs.decrypt_rtp(&sealed).unwrap();
            assert_eq!(&opened[..], &plain[..], "{profile:?} seq {sequence_number}");
        }
    }
}

#[test]
fn what_the_library_protects_we_unprotect_across_a_wrap() {
    for profile in PROFILES {
        let key = master(profile, 2);
        let mut theirs = library_context(&key);
        let mut ours = SrtpReceiver::new(&key).unwrap();
        let sequence_numbers = (65_530..=65_535).chain(0..6);
        library_to_ours(&mut theirs, &mut ours, 0xCAFE, sequence_numbers, profile);
    }
}

/// The library protects `ssrc`'s packets with these sequence numbers; we open each and find
/// the plain packet.
fn library_to_ours(
    theirs: &mut Context,
    ours: &mut SrtpReceiver,
    ssrc: u32,
    sequence_numbers: impl IntoIterator<Item = u16>,
    profile: Profile,
) {
    for sequence_number in sequence_numbers {
        let plain = rtp(ssrc, sequence_number, 1100);
        let mut packet = theirs.encrypt_rtp(&plain).unwrap().to_vec();
        let len = ours.unprotect(&mut packet).unwrap();
        assert_eq!(
            &packet[..len],
            &plain[..],
            "{profile:?} seq {sequence_number}"
        );
    }
}

#[test]
fn dtls_roles_pair_each_side_with_the_others_key() {
    for profile in PROFILES {
        let material: Vec<u8> = (0..profile.keying_material_len() as u8).collect();
        let (client_local, client_remote) = keys_from_dtls(profile, &material, true).unwrap();
        let (server_local, server_remote) = keys_from_dtls(profile, &material, false).unwrap();
        for (local, remote) in [(client_local, server_remote), (server_local, client_remote)] {
            let plain = rtp(7, 100, 300);
            let mut packet = protect(&mut SrtpSender::new(&local).unwrap(), &plain);
            let len = SrtpReceiver::new(&remote)
                .unwrap()
                .unprotect(&mut packet)
                .unwrap();
            assert_eq!(&packet[..len], &plain[..]);
        }
        assert_eq!(
            keys_from_dtls(profile, &material[1..], true).err(),
            Some(SrtpError::KeyingMaterial)
        );
    }
}

#[test]
fn refuses_tampered_replayed_and_late_packets_and_remembers_nothing_of_them() {
    for profile in PROFILES {
        let key = master(profile, 3);
        let mut sender = SrtpSender::new(&key).unwrap();
        let mut receiver = SrtpReceiver::new(&key).unwrap();
        let sealed: Vec<Vec<u8>> = (0..300)
            .map(|seq| protect(&mut sender, &rtp(9, seq, 200)))
            .collect();

        let mut tampered = sealed[0].clone();
        tampered[30] ^= 1;
        assert_eq!(
            receiver.unprotect(&mut tampered),
            Err(SrtpError::Authentication)
        );
        // The forged first packet created no stream: the genuine one is still new.
        assert!(receiver.unprotect(&mut sealed[0].clone()).is_ok());
        assert_eq!(
            receiver.unprotect(&mut sealed[0].clone()),
            Err(SrtpError::Replayed)
        );

        assert!(receiver.unprotect(&mut sealed[299].clone()).is_ok());
        // Out of order but inside the window: accepted once.
        assert!(receiver.unprotect(&mut sealed[250].clone()).is_ok());
        assert_eq!(
            receiver.unprotect(&mut sealed[250].clone()),
            Err(SrtpError::Replayed)
        );
        assert_eq!(
            receiver.unprotect(&mut sealed[100].clone()),
            Err(SrtpError::TooOld)
        );
    }
}

#[test]
fn hostile_packets_are_errors_never_panics() {
    let key = master(Profile::Aes128CmHmacSha1_80, 4);
    let mut receiver = SrtpReceiver::new(&key).unwrap();
    let mut state = 0x9E37_79B9u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    for _ in 0..5_000 {
        let len = (next() % 80) as usize;
        let mut packet: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if let Some(first) = packet.first_mut() {
            *first = 0x80 | (*first & 0x3f);
        }
        assert!(receiver.unprotect(&mut packet).is_err());
    }
    // An extension header that claims more than the packet holds.
    let mut packet = rtp(1, 1, 0);
    packet[18..20].copy_from_slice(&[0xff, 0xff]);
    assert_eq!(receiver.unprotect(&mut packet), Err(SrtpError::Malformed));

    let mut sender = SrtpSender::new(&key).unwrap();
    let plain = rtp(1, 1, 10);
    let mut exact = plain.clone();
    assert_eq!(
        sender.protect(&mut exact, plain.len()),
        Err(SrtpError::NoRoomForTag)
    );
    assert_eq!(
        sender.protect(&mut exact, plain.len() + 1),
        Err(SrtpError::Malformed)
    );
}

#[test]
fn a_peer_cannot_open_unbounded_streams() {
    let key = master(Profile::AeadAes128Gcm, 5);
    let mut sender = SrtpSender::new(&key).unwrap();
    let mut receiver = SrtpReceiver::new(&key).unwrap();
    for ssrc in 0..MAX_STREAMS as u32 {
        let mut packet = protect(&mut sender, &rtp(ssrc, 1, 10));
        assert!(receiver.unprotect(&mut packet).is_ok());
    }
    let mut packet = protect(&mut SrtpSender::new(&key).unwrap(), &rtp(999, 1, 10));
    assert_eq!(
        receiver.unprotect(&mut packet),
        Err(SrtpError::TooManyStreams)
    );
}

#[test]
fn a_retired_stream_makes_room_and_never_comes_back() {
    let key = master(Profile::AeadAes128Gcm, 6);
    let mut sender = SrtpSender::new(&key).unwrap();
    for ssrc in 0..MAX_STREAMS as u32 {
        protect(&mut sender, &rtp(ssrc, 1, 10));
    }
    let mut full = rtp(999, 1, 10);
    full.resize(full.len() + 16, 0);
    let len = full.len() - 16;
    assert_eq!(
        sender.protect(&mut full, len),
        Err(SrtpError::TooManyStreams)
    );
    sender.retire(3);
    assert!(
        sender.protect(&mut full, len).is_ok(),
        "room for a new stream"
    );
    // The retired SSRC would start its packet indices over under the same key.
    let mut again = rtp(3, 2, 10);
    again.resize(again.len() + 16, 0);
    let len = again.len() - 16;
    assert_eq!(sender.protect(&mut again, len), Err(SrtpError::Retired));
}

#[test]
fn a_stream_taken_over_after_a_wrap_keeps_its_rollover_counter() {
    for profile in PROFILES {
        let key = master(profile, 3);
        let mut theirs = library_context(&key);
        let mut ours = SrtpReceiver::new(&key).unwrap();
        // The library opened the stream's first packets, across a wrap; we take over after.
        for sequence_number in [65_534, 65_535, 0] {
            theirs.encrypt_rtp(&rtp(7, sequence_number, 40)).unwrap();
        }
        ours.resume(7, 1 << 16).unwrap();
        library_to_ours(&mut theirs, &mut ours, 7, 1..10, profile);
    }
}
