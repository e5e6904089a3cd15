//! SRTP key derivation (RFC 3711 §4.3.3, the AES-CM PRF), with the key derivation rate at
//! zero as DTLS-SRTP requires (RFC 5764 §4.1.2): each session key, salt or authentication key
//! is AES-CM keystream over the master salt with its label folded in.

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};

/// The labels of RFC 3711 §4.3.2 (SRTP only: SRTCP stays with the WebRTC library).
pub(super) const LABEL_ENCRYPTION: u8 = 0x00;
pub(super) const LABEL_AUTHENTICATION: u8 = 0x01;
pub(super) const LABEL_SALT: u8 = 0x02;

/// Fill `out` with the key derived for `label` from a 128-bit master key and its salt (14
/// bytes for AES-CM, 12 for AES-GCM: RFC 7714 §11 pads the shorter salt with zeros).
pub(super) fn derive(master_key: &[u8; 16], master_salt: &[u8], label: u8, out: &mut [u8]) {
    let prf = Aes128::new(GenericArray::from_slice(master_key));
    // x = (label || index DIV kdr) XOR master salt, placed in the top 112 bits of the
    // counter block; index DIV kdr is zero.
    let mut x = [0u8; 16];
    x[..master_salt.len()].copy_from_slice(master_salt);
    x[7] ^= label;
    for (i, chunk) in out.chunks_mut(16).enumerate() {
        let mut block = x;
        block[14..].copy_from_slice(&(i as u16).to_be_bytes());
        let mut block = GenericArray::from(block);
        prf.encrypt_block(&mut block);
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The test vectors of RFC 3711, appendix B.3.
    #[test]
    fn derives_rfc3711_appendix_b3_keys() {
        let key: [u8; 16] = hex("E1F97A0D3E018BE0D64FA32C06DE4139").try_into().unwrap();
        let salt = hex("0EC675AD498AFEEBB6960B3AABE6");

        let mut cipher_key = [0u8; 16];
        derive(&key, &salt, LABEL_ENCRYPTION, &mut cipher_key);
        assert_eq!(cipher_key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));

        let mut cipher_salt = [0u8; 14];
        derive(&key, &salt, LABEL_SALT, &mut cipher_salt);
        assert_eq!(cipher_salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));

        let mut auth_key = [0u8; 94];
        derive(&key, &salt, LABEL_AUTHENTICATION, &mut auth_key);
        assert_eq!(
            auth_key[..32].to_vec(),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA48F0A0ACF3C34E2359E6CDBCE")
        );
    }
}
