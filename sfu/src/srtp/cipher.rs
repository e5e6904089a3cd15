//! The two SRTP transforms browsers negotiate, done in place in the caller's buffer:
//! AEAD_AES_128_GCM (RFC 7714; what Chromium prefers) and AES128_CM_HMAC_SHA1_80
//! (RFC 3711; every WebRTC endpoint supports it). Nothing here allocates.

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use subtle::ConstantTimeEq;

use super::kdf::{self, LABEL_AUTHENTICATION, LABEL_ENCRYPTION, LABEL_SALT};
use super::{MasterKey, Profile, SrtpError};

const GCM_TAG_LEN: usize = 16;
const HMAC_TAG_LEN: usize = 10;
/// AES blocks of keystream computed per call: lets AES-NI pipeline them.
const KEYSTREAM_BATCH: usize = 8;

pub(super) enum Cipher {
    Gcm {
        aead: LessSafeKey,
        salt: [u8; 12],
    },
    CmHmac {
        aes: Aes128,
        salt: [u8; 14],
        auth: hmac::Key,
    },
}

impl Cipher {
    pub(super) fn new(master: &MasterKey) -> Result<Self, SrtpError> {
        let mut key = [0u8; 16];
        kdf::derive(&master.key, master.salt(), LABEL_ENCRYPTION, &mut key);
        Ok(match master.profile {
            Profile::AeadAes128Gcm => {
                let mut salt = [0u8; 12];
                kdf::derive(&master.key, master.salt(), LABEL_SALT, &mut salt);
                let key =
                    UnboundKey::new(&AES_128_GCM, &key).map_err(|_| SrtpError::KeyingMaterial)?;
                Cipher::Gcm {
                    aead: LessSafeKey::new(key),
                    salt,
                }
            }
            Profile::Aes128CmHmacSha1_80 => {
                let mut salt = [0u8; 14];
                kdf::derive(&master.key, master.salt(), LABEL_SALT, &mut salt);
                let mut auth = [0u8; 20];
                kdf::derive(&master.key, master.salt(), LABEL_AUTHENTICATION, &mut auth);
                Cipher::CmHmac {
                    aes: Aes128::new(GenericArray::from_slice(&key)),
                    salt,
                    auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &auth),
                }
            }
        })
    }

    pub(super) fn tag_len(&self) -> usize {
        match self {
            Cipher::Gcm { .. } => GCM_TAG_LEN,
            Cipher::CmHmac { .. } => HMAC_TAG_LEN,
        }
    }

    /// Encrypt `packet[header_len..end]` and write the tag at `packet[end..]`; the caller
    /// checked that the buffer has room for it.
    pub(super) fn seal(
        &self,
        packet: &mut [u8],
        header_len: usize,
        end: usize,
        ssrc: u32,
        index: u64,
    ) -> Result<(), SrtpError> {
        match self {
            Cipher::Gcm { aead, salt } => {
                let (header, rest) = packet.split_at_mut(header_len);
                let (payload, tail) = rest.split_at_mut(end - header_len);
                let tag = aead
                    .seal_in_place_separate_tag(
                        gcm_nonce(salt, ssrc, index),
                        Aad::from(&*header),
                        payload,
                    )
                    .map_err(|_| SrtpError::Authentication)?;
                tail[..GCM_TAG_LEN].copy_from_slice(tag.as_ref());
            }
            Cipher::CmHmac { aes, salt, auth } => {
                apply_keystream(aes, cm_iv(salt, ssrc, index), &mut packet[header_len..end]);
                let tag = hmac_tag(auth, &packet[..end], index);
                packet[end..end + HMAC_TAG_LEN].copy_from_slice(&tag.as_ref()[..HMAC_TAG_LEN]);
            }
        }
        Ok(())
    }

    /// Authenticate `packet` (tag last) and decrypt its payload in place; returns where the
    /// plaintext ends. The caller checked that the packet holds a header and a tag.
    pub(super) fn open(
        &self,
        packet: &mut [u8],
        header_len: usize,
        ssrc: u32,
        index: u64,
    ) -> Result<usize, SrtpError> {
        let end = packet.len() - self.tag_len();
        match self {
            Cipher::Gcm { aead, salt } => {
                let (header, sealed) = packet.split_at_mut(header_len);
                aead.open_in_place(gcm_nonce(salt, ssrc, index), Aad::from(&*header), sealed)
                    .map_err(|_| SrtpError::Authentication)?;
            }
            Cipher::CmHmac { aes, salt, auth } => {
                let expected = hmac_tag(auth, &packet[..end], index);
                let received = &packet[end..];
                if !bool::from(received.ct_eq(&expected.as_ref()[..HMAC_TAG_LEN])) {
                    return Err(SrtpError::Authentication);
                }
                apply_keystream(aes, cm_iv(salt, ssrc, index), &mut packet[header_len..end]);
            }
        }
        Ok(end)
    }
}

/// RFC 7714 §8.1: (0x0000 || SSRC || ROC || SEQ) XOR the session salt.
fn gcm_nonce(salt: &[u8; 12], ssrc: u32, index: u64) -> Nonce {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..12].copy_from_slice(&index.to_be_bytes()[2..]);
    for (byte, salt) in iv.iter_mut().zip(salt) {
        *byte ^= salt;
    }
    Nonce::assume_unique_for_key(iv)
}

/// RFC 3711 §4.1.1: (salt * 2^16) XOR (SSRC * 2^64) XOR (index * 2^16); the low 16 bits
/// count the keystream's blocks.
fn cm_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[4..8].copy_from_slice(&ssrc.to_be_bytes());
    iv[8..14].copy_from_slice(&index.to_be_bytes()[2..]);
    for (byte, salt) in iv.iter_mut().zip(salt) {
        *byte ^= salt;
    }
    iv
}

fn apply_keystream(aes: &Aes128, iv: [u8; 16], data: &mut [u8]) {
    let mut counter: u16 = 0;
    for chunk in data.chunks_mut(16 * KEYSTREAM_BATCH) {
        let mut blocks = [GenericArray::from([0u8; 16]); KEYSTREAM_BATCH];
        let used = chunk.len().div_ceil(16);
        for block in &mut blocks[..used] {
            block.copy_from_slice(&iv);
            block[14..].copy_from_slice(&counter.to_be_bytes());
            counter = counter.wrapping_add(1);
        }
        aes.encrypt_blocks(&mut blocks[..used]);
        for (byte, key) in chunk.iter_mut().zip(blocks.iter().flat_map(|b| b.iter())) {
            *byte ^= key;
        }
    }
}

/// HMAC-SHA1 over the packet and its rollover counter (RFC 3711 §4.2).
fn hmac_tag(key: &hmac::Key, packet: &[u8], index: u64) -> hmac::Tag {
    let mut context = hmac::Context::with_key(key);
    context.update(packet);
    context.update(&super::index::rollover(index).to_be_bytes());
    context.sign()
}
