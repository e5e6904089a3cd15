//! Well-formed packets to start from: STUN as Chromium sends it (with MESSAGE-INTEGRITY and
//! FINGERPRINT), a DTLS ClientHello, RTP with header extensions, RTCP compounds.

use hmac::{Hmac, Mac};

/// The SFU session the demultiplexer targets know (shard 0, as `Shard::new_ufrag` makes them).
pub const LOCAL_UFRAG: &str = "00aa11bb";
/// Its ICE password, and the client's ufrag (as in the seed offers).
pub const LOCAL_PWD: &str = "fuzzfuzzfuzzfuzzfuzzfuzz";
pub const REMOTE_UFRAG: &str = "Wv3q";

fn stun_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn set_stun_len(msg: &mut [u8], body_len: usize) {
    msg[2..4].copy_from_slice(&(body_len as u16).to_be_bytes());
}

/// A STUN message; with `pwd`, MESSAGE-INTEGRITY (short-term) and FINGERPRINT close it.
pub fn stun(kind: u16, txid: u8, attrs: &[(u16, Vec<u8>)], pwd: Option<&str>) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&0x2112_a442u32.to_be_bytes());
    m.extend_from_slice(&[txid; 12]);
    for (k, v) in attrs {
        stun_attr(&mut m, *k, v);
    }
    if let Some(pwd) = pwd {
        let len = m.len() - 20 + 24;
        set_stun_len(&mut m, len);
        let mut mac =
            Hmac::<sha1::Sha1>::new_from_slice(pwd.as_bytes()).expect("HMAC takes any key");
        mac.update(&m);
        let tag = mac.finalize().into_bytes();
        stun_attr(&mut m, 0x0008, &tag);
        let len = m.len() - 20 + 8;
        set_stun_len(&mut m, len);
        let fingerprint = crc32(&m) ^ 0x5354_554e;
        stun_attr(&mut m, 0x8028, &fingerprint.to_be_bytes());
    }
    let len = m.len() - 20;
    set_stun_len(&mut m, len);
    m
}

/// A Binding request as a controlling browser sends it.
pub fn binding_request(local: &str, remote: &str, pwd: &str, txid: u8) -> Vec<u8> {
    stun(
        0x0001,
        txid,
        &[
            (0x0006, format!("{local}:{remote}").into_bytes()),
            (0xc057, vec![0, 1, 0, 10]), // GOOG-NETWORK-INFO
            (0x802a, vec![0x1c, 0x2d, 0, 0, 0, 0, 0, 0x42]), // ICE-CONTROLLING
            (0x0025, vec![]),            // USE-CANDIDATE
            (0x0024, 0x6e7f_1effu32.to_be_bytes().to_vec()), // PRIORITY
        ],
        Some(pwd),
    )
}

/// STUN seeds: requests for our session, for another, malformed usernames, a success
/// response, an indication.
pub fn stun_seeds() -> Vec<Vec<u8>> {
    let xor_mapped = vec![0, 1, 0x21 ^ 0xc3, 0x12 ^ 0x50, 127 ^ 0x21, 0x12, 0xa4, 0x43];
    vec![
        binding_request(LOCAL_UFRAG, REMOTE_UFRAG, LOCAL_PWD, 1),
        binding_request("01cc22dd", "Xy9z", "anotherpasswordanother", 2),
        binding_request("ffffffff", "abcd", "nobody", 3),
        stun(0x0001, 4, &[(0x0006, b"00aa11bb".to_vec())], None),
        stun(0x0101, 5, &[(0x0020, xor_mapped)], Some(LOCAL_PWD)),
        stun(0x0011, 6, &[], None),
        stun(0x0111, 7, &[(0x0009, vec![0, 0, 4, 1, b'x'])], None),
    ]
}

/// A DTLS 1.2 ClientHello as a browser opens the handshake (record, handshake header, body).
pub fn dtls_client_hello() -> Vec<u8> {
    let mut body = vec![0xfe, 0xfd];
    body.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    body.extend_from_slice(&[0, 0]); // session id, cookie
    body.extend_from_slice(&[0, 6, 0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x0a]);
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut ext = Vec::new();
    for (kind, value) in [
        (0x000au16, vec![0, 4, 0, 0x1d, 0, 0x17]), // supported_groups
        (0x000b, vec![1, 0]),                      // ec_point_formats
        (0x000d, vec![0, 4, 4, 3, 8, 4]),          // signature_algorithms
        (0x000e, vec![0, 4, 0, 7, 0, 1, 0]),       // use_srtp
        (0x0017, vec![]),                          // extended_master_secret
        (0xff01, vec![0]),                         // renegotiation_info
    ] {
        ext.extend_from_slice(&kind.to_be_bytes());
        ext.extend_from_slice(&(value.len() as u16).to_be_bytes());
        ext.extend_from_slice(&value);
    }
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let len24 = |n: usize| [(n >> 16) as u8, (n >> 8) as u8, n as u8];
    let mut hs = vec![1];
    hs.extend_from_slice(&len24(body.len()));
    hs.extend_from_slice(&[0, 0, 0, 0, 0]);
    hs.extend_from_slice(&len24(body.len()));
    hs.extend_from_slice(&body);
    let mut rec = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

fn rtp(
    first: u8,
    pt: u8,
    seq: u16,
    ssrc: u32,
    ext: Option<(u16, &[u8])>,
    payload: &[u8],
) -> Vec<u8> {
    let mut p = vec![first, pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    for csrc in 0..u32::from(first & 0x0f) {
        p.extend_from_slice(&(0x1000 + csrc).to_be_bytes());
    }
    if let Some((profile, elements)) = ext {
        let words = elements.len().div_ceil(4);
        p.extend_from_slice(&profile.to_be_bytes());
        p.extend_from_slice(&(words as u16).to_be_bytes());
        p.extend_from_slice(elements);
        p.resize(p.len() + words * 4 - elements.len(), 0);
    }
    p.extend_from_slice(payload);
    p
}

/// RTP seeds: Opus with the audio level, VP8 with CSRCs, a simulcast layer named by MID and
/// RID (one-byte and two-byte extension forms), padding.
pub fn rtp_seeds() -> Vec<Vec<u8>> {
    let opus_payload = [0x78, 0x0b, 0x3c, 0x5a, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66];
    let vp8_payload = [
        0x90, 0x80, 0x81, 0x23, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00,
    ];
    let mut padded = rtp(0xa0, 111, 7, 1001, None, &opus_payload);
    padded.extend_from_slice(&[0, 0, 0, 4]);
    vec![
        rtp(
            0x90,
            111,
            1,
            1001,
            Some((0xbede, &[0x10, 0xaa])),
            &opus_payload,
        ),
        rtp(0x82, 96, 2, 2001, None, &vp8_payload),
        // MID "1" (id 4), RID "q" (id 10): a simulcast layer the seed offer announces.
        rtp(
            0x90,
            96,
            3,
            3001,
            Some((0xbede, &[0x40, b'1', 0xa0, b'q'])),
            &vp8_payload,
        ),
        rtp(
            0x90,
            96,
            4,
            3002,
            Some((0xbede, &[0x40, b'1', 0xa0, b'h', 0xb0, b'f'])),
            &vp8_payload,
        ),
        rtp(
            0x90,
            96,
            5,
            3003,
            Some((0x1000, &[4, 1, b'1', 10, 1, b'f', 0, 0])),
            &vp8_payload,
        ),
        rtp(0x80, 97, 6, 2002, None, &[0x00, 0x02, 0x90, 0x80]),
        padded,
    ]
}

fn rtcp(count: u8, pt: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80 | count, pt];
    p.extend_from_slice(&((body.len() / 4) as u16).to_be_bytes());
    p.extend_from_slice(body);
    p
}

fn words(parts: &[&[u8]]) -> Vec<u8> {
    let mut v: Vec<u8> = parts.concat();
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

/// RTCP seeds: SR+SDES, RR, PLI, FIR, NACK, REMB, transport-wide feedback, BYE.
pub fn rtcp_seeds() -> Vec<Vec<u8>> {
    let me = 0x0000_03e9u32.to_be_bytes();
    let them = 0x0000_07d1u32.to_be_bytes();
    let block: Vec<u8> = words(&[
        &them,
        &[5, 0, 0, 3],
        &[0, 0, 0x10, 0],
        &[0, 0, 0, 9],
        &[1, 2, 3, 4],
        &[0, 0, 0, 100],
    ]);
    let sr = rtcp(
        1,
        200,
        &words(&[
            &me,
            &[0xe9, 0, 0, 0, 0x80, 0, 0, 0],
            &[0, 0, 0x3c, 0],
            &[0, 0, 0, 50],
            &[0, 0, 0x20, 0],
            &block,
        ]),
    );
    let sdes = rtcp(1, 202, &words(&[&me, &[1, 8], b"rT0kq3v9", &[0]]));
    let rr = rtcp(1, 201, &words(&[&me, &block]));
    let pli = rtcp(1, 206, &words(&[&me, &them]));
    let fir = rtcp(4, 206, &words(&[&me, &[0; 4], &them, &[7, 0, 0, 0]]));
    let nack = rtcp(1, 205, &words(&[&me, &them, &[0, 42, 0x80, 0x01]]));
    let remb = rtcp(
        15,
        206,
        &words(&[&me, &[0; 4], b"REMB", &[1, 0x0b, 0xd7, 0x2a], &them]),
    );
    let twcc = rtcp(
        15,
        205,
        &words(&[
            &me,
            &them,
            &[0, 10, 0, 4],
            &[0, 0, 0x40, 1],
            &[0x20, 4],
            &[4, 8, 12, 16],
        ]),
    );
    let bye = rtcp(1, 203, &me);
    vec![
        [sr, sdes.clone()].concat(),
        [rr.clone(), sdes, pli.clone()].concat(),
        rr,
        pli,
        fir,
        nack,
        remb,
        twcc,
        bye,
    ]
}

/// CRC-32 (IEEE), for STUN's FINGERPRINT.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
