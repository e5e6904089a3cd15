//! The SFU's own SRTP for the forwarding fast path: a publisher's packet is decrypted in
//! place once, and each subscriber's copy encrypted in place in the send batch, with no
//! allocation per packet (the WebRTC library's contexts return a fresh buffer each time).
//!
//! Keys come from the DTLS handshake's exported keying material (RFC 5764 §4.2); SRTCP stays
//! with the WebRTC library, which keeps its own contexts for it (SRTCP's index is separate
//! from SRTP's, so both can use the same master keys).

mod cipher;
mod index;
mod kdf;

use cipher::Cipher;
use index::{Replay, ReplayWindow, StreamIndex};

/// Streams one peer connection may carry in one direction: audio, three simulcast layers
/// and their retransmission streams with room to spare. A peer that sends more is refused
/// beyond it, so its state stays bounded.
pub const MAX_STREAMS: usize = 32;

/// The SRTP protection profiles we negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// SRTP_AEAD_AES_128_GCM (RFC 7714): a 16-byte tag, 12-byte salt.
    AeadAes128Gcm,
    /// SRTP_AES128_CM_HMAC_SHA1_80 (RFC 3711): a 10-byte tag, 14-byte salt.
    Aes128CmHmacSha1_80,
}

impl Profile {
    pub fn salt_len(self) -> usize {
        match self {
            Profile::AeadAes128Gcm => 12,
            Profile::Aes128CmHmacSha1_80 => 14,
        }
    }

    /// Bytes the DTLS exporter must produce: a key and a salt for each side.
    pub fn keying_material_len(self) -> usize {
        2 * (16 + self.salt_len())
    }

    /// Bytes the tag adds to each packet.
    pub fn tag_len(self) -> usize {
        match self {
            Profile::AeadAes128Gcm => 16,
            Profile::Aes128CmHmacSha1_80 => 10,
        }
    }
}

/// One direction's master key and salt.
#[derive(Clone)]
pub struct MasterKey {
    profile: Profile,
    key: [u8; 16],
    salt: [u8; 14],
}

impl MasterKey {
    pub fn new(profile: Profile, key: &[u8], salt: &[u8]) -> Result<Self, SrtpError> {
        if key.len() != 16 || salt.len() != profile.salt_len() {
            return Err(SrtpError::KeyingMaterial);
        }
        let mut master = MasterKey {
            profile,
            key: [0; 16],
            salt: [0; 14],
        };
        master.key.copy_from_slice(key);
        master.salt[..salt.len()].copy_from_slice(salt);
        Ok(master)
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    fn salt(&self) -> &[u8] {
        &self.salt[..self.profile.salt_len()]
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a key in a log.
        write!(f, "MasterKey({:?})", self.profile)
    }
}

/// Split DTLS-SRTP keying material (client key, server key, client salt, server salt) into
/// ours, to protect what we send, and the remote's, to unprotect what we receive.
pub fn keys_from_dtls(
    profile: Profile,
    material: &[u8],
    we_are_dtls_client: bool,
) -> Result<(MasterKey, MasterKey), SrtpError> {
    if material.len() != profile.keying_material_len() {
        return Err(SrtpError::KeyingMaterial);
    }
    let salt_len = profile.salt_len();
    let (client_key, rest) = material.split_at(16);
    let (server_key, salts) = rest.split_at(16);
    let (client_salt, server_salt) = salts.split_at(salt_len);
    let client = MasterKey::new(profile, client_key, client_salt)?;
    let server = MasterKey::new(profile, server_key, server_salt)?;
    Ok(if we_are_dtls_client {
        (client, server)
    } else {
        (server, client)
    })
}

/// Why a packet could not be protected or unprotected. `reason` names it for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    #[error("not an RTP packet")]
    Malformed,
    #[error("too short to hold its authentication tag")]
    TooShort,
    #[error("no room in the buffer for the authentication tag")]
    NoRoomForTag,
    #[error("authentication failed")]
    Authentication,
    #[error("a replayed packet")]
    Replayed,
    #[error("older than the replay window")]
    TooOld,
    #[error("more streams than a peer may carry")]
    TooManyStreams,
    #[error("a stream that was retired")]
    Retired,
    #[error("the key has protected all the packets it may")]
    KeyExhausted,
    #[error("keying material of the wrong length")]
    KeyingMaterial,
}

impl SrtpError {
    pub fn reason(self) -> &'static str {
        match self {
            SrtpError::Malformed => "malformed",
            SrtpError::TooShort => "too_short",
            SrtpError::NoRoomForTag => "no_room_for_tag",
            SrtpError::Authentication => "authentication",
            SrtpError::Replayed => "replayed",
            SrtpError::TooOld => "too_old",
            SrtpError::TooManyStreams => "too_many_streams",
            SrtpError::Retired => "retired",
            SrtpError::KeyExhausted => "key_exhausted",
            SrtpError::KeyingMaterial => "keying_material",
        }
    }
}

/// SSRCs a sender remembers as retired (see [`SrtpSender::retire`]).
const RETIRED: usize = 64;

/// Protects the RTP we send on one peer connection.
pub struct SrtpSender {
    cipher: Cipher,
    streams: Streams<StreamIndex>,
    /// Recently retired SSRCs, oldest overwritten first.
    retired: [Option<u32>; RETIRED],
    next_retired: usize,
}

impl SrtpSender {
    pub fn new(key: &MasterKey) -> Result<Self, SrtpError> {
        Ok(Self {
            cipher: Cipher::new(key)?,
            streams: Streams::default(),
            retired: [None; RETIRED],
            next_retired: 0,
        })
    }

    /// Forgets a stream we no longer send, making room for another. The SSRC is not taken
    /// again (its packet indices would start over under the same key, which SRTP forbids;
    /// the SFU's SSRCs are random, so a new stream never wants an old one).
    pub fn retire(&mut self, ssrc: u32) {
        if self.streams.remove(ssrc) {
            self.retired[self.next_retired] = Some(ssrc);
            self.next_retired = (self.next_retired + 1) % RETIRED;
        }
    }

    /// Encrypt the RTP packet in `buffer[..len]` in place and append its tag; returns the
    /// protected length. `buffer` must have `tag_len` bytes to spare after `len`.
    pub fn protect(&mut self, buffer: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let header = RtpHeader::parse(buffer.get(..len).ok_or(SrtpError::Malformed)?)?;
        let tagged = len + self.cipher.tag_len();
        if buffer.len() < tagged {
            return Err(SrtpError::NoRoomForTag);
        }
        if self.streams.get(header.ssrc).is_none() && self.retired.contains(&Some(header.ssrc)) {
            return Err(SrtpError::Retired);
        }
        let stream = match self.streams.get(header.ssrc) {
            Some(stream) => stream,
            None => self.streams.insert(
                header.ssrc,
                StreamIndex::starting_at(header.sequence_number),
            )?,
        };
        let index = stream
            .guess(header.sequence_number)
            .ok_or(SrtpError::KeyExhausted)?;
        stream.advance(index);
        self.cipher
            .seal(&mut buffer[..tagged], header.len, len, header.ssrc, index)?;
        Ok(tagged)
    }
}

/// Authenticates and decrypts the RTP we receive on one peer connection.
pub struct SrtpReceiver {
    cipher: Cipher,
    streams: Streams<(StreamIndex, ReplayWindow)>,
}

impl SrtpReceiver {
    pub fn new(key: &MasterKey) -> Result<Self, SrtpError> {
        Ok(Self {
            cipher: Cipher::new(key)?,
            streams: Streams::default(),
        })
    }

    /// Takes over a stream whose packets up to `index` (rollover counter and sequence
    /// number) another SRTP context opened: the next packets' indices are guessed from
    /// there, which holds across a sequence number wrap the other context saw. Nothing
    /// changes for a stream this receiver already opened.
    pub fn resume(&mut self, ssrc: u32, index: u64) -> Result<(), SrtpError> {
        if self.streams.get(ssrc).is_none() {
            self.streams.insert(
                ssrc,
                (
                    StreamIndex::resuming_at(index),
                    ReplayWindow::starting_at(index),
                ),
            )?;
        }
        Ok(())
    }

    /// Authenticate the SRTP packet in `packet` and decrypt it in place; returns the length of
    /// the plain RTP packet at its start. Nothing is remembered of a packet that fails.
    pub fn unprotect(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let header = RtpHeader::parse(packet)?;
        if packet.len() < header.len + self.cipher.tag_len() {
            return Err(SrtpError::TooShort);
        }
        let known = self.streams.get(header.ssrc).map(|s| *s);
        let index = match known {
            Some((stream, window)) => {
                let index = stream
                    .guess(header.sequence_number)
                    .ok_or(SrtpError::TooOld)?;
                window.check(index).map_err(|replay| match replay {
                    Replay::Duplicate => SrtpError::Replayed,
                    Replay::TooOld => SrtpError::TooOld,
                })?;
                index
            }
            None => {
                if self.streams.is_full() {
                    return Err(SrtpError::TooManyStreams);
                }
                u64::from(header.sequence_number)
            }
        };
        let end = self.cipher.open(packet, header.len, header.ssrc, index)?;
        match self.streams.get(header.ssrc) {
            Some((stream, window)) => {
                stream.advance(index);
                window.accept(index);
            }
            None => {
                self.streams.insert(
                    header.ssrc,
                    (
                        StreamIndex::starting_at(header.sequence_number),
                        ReplayWindow::starting_at(index),
                    ),
                )?;
            }
        }
        Ok(end)
    }
}

/// What SRTP needs of an RTP header (RFC 3550 §5.1): where the payload starts, the stream
/// and the sequence number.
struct RtpHeader {
    len: usize,
    ssrc: u32,
    sequence_number: u16,
}

impl RtpHeader {
    fn parse(packet: &[u8]) -> Result<Self, SrtpError> {
        if packet.len() < 12 || packet[0] >> 6 != 2 {
            return Err(SrtpError::Malformed);
        }
        let mut len = 12 + 4 * usize::from(packet[0] & 0x0f);
        if packet[0] & 0x10 != 0 {
            let words = packet.get(len + 2..len + 4).ok_or(SrtpError::Malformed)?;
            len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
        }
        if len > packet.len() {
            return Err(SrtpError::Malformed);
        }
        Ok(Self {
            len,
            ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
            sequence_number: u16::from_be_bytes([packet[2], packet[3]]),
        })
    }
}

/// Per-SSRC state, few enough to search in a line.
struct Streams<T> {
    entries: Vec<(u32, T)>,
}

impl<T> Default for Streams<T> {
    fn default() -> Self {
        Self {
            entries: Vec::with_capacity(8),
        }
    }
}

impl<T> Streams<T> {
    fn get(&mut self, ssrc: u32) -> Option<&mut T> {
        self.entries
            .iter_mut()
            .find(|(s, _)| *s == ssrc)
            .map(|(_, state)| state)
    }

    fn is_full(&self) -> bool {
        self.entries.len() >= MAX_STREAMS
    }

    /// Forgets `ssrc`; whether it was there.
    fn remove(&mut self, ssrc: u32) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(s, _)| *s != ssrc);
        self.entries.len() != before
    }

    fn insert(&mut self, ssrc: u32, state: T) -> Result<&mut T, SrtpError> {
        if self.is_full() {
            return Err(SrtpError::TooManyStreams);
        }
        let at = self.entries.len();
        self.entries.push((ssrc, state));
        Ok(&mut self.entries[at].1)
    }
}

#[cfg(test)]
mod tests;
