//! Sealed datagrams: XChaCha20-Poly1305 under the keyring's primary key
//! with a random 24-byte nonce, the key picked on receipt by its id.

use super::aead::{self, TAG_LEN, XNONCE_LEN};
use super::{KeyId, Keyring, OpenError, DATAGRAM_OVERHEAD, ID_LEN};

/// Appends `key id (4, BE) | nonce (24) | ciphertext | tag (16)` to `out`,
/// sealed with the primary key and `ad` as associated data.
///
/// `nonce` must be fresh random bytes (24 bytes make collisions negligible).
/// A plaintext beyond the cipher's 256 GiB limit appends nothing.
pub fn seal_datagram(
    ring: &Keyring,
    nonce: [u8; XNONCE_LEN],
    ad: &[u8],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) {
    let key = ring.primary();
    let start = out.len();
    out.reserve(DATAGRAM_OVERHEAD + plaintext.len());
    out.extend_from_slice(&key.id().0.to_be_bytes());
    out.extend_from_slice(&nonce);
    let body = out.len();
    out.extend_from_slice(plaintext);
    let (cipher, short) = aead::xchacha(key.as_bytes(), &nonce);
    match cipher.seal_in_place(short, ad, &mut out[body..]) {
        Ok(tag) => out.extend_from_slice(&tag),
        // Never leave the plaintext in `out`.
        Err(_) => out.truncate(start),
    }
}

/// Opens what [`seal_datagram`] appended (`sealed` starts at the key id),
/// picking the key by its id.
pub fn open_datagram(ring: &Keyring, ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
    let (id, rest) = sealed
        .split_first_chunk::<ID_LEN>()
        .ok_or(OpenError::Truncated)?;
    let (nonce, rest) = rest
        .split_first_chunk::<XNONCE_LEN>()
        .ok_or(OpenError::Truncated)?;
    let (ciphertext, tag) = rest
        .split_last_chunk::<TAG_LEN>()
        .ok_or(OpenError::Truncated)?;
    let id = KeyId(u32::from_be_bytes(*id));
    let key = ring.get(id).ok_or(OpenError::UnknownKey(id))?;
    let (cipher, short) = aead::xchacha(key.as_bytes(), nonce);
    let mut plaintext = ciphertext.to_vec();
    cipher
        .open_in_place(short, ad, &mut plaintext, tag)
        .map_err(|_| OpenError::Auth)?;
    Ok(plaintext)
}

/// The key id of a sealed datagram, if it is at least 4 bytes long; read
/// without authenticating, so only for error reports.
pub fn datagram_key_id(sealed: &[u8]) -> Option<KeyId> {
    sealed
        .first_chunk::<ID_LEN>()
        .map(|id| KeyId(u32::from_be_bytes(*id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::testkit::{counting_key, seal};
    use crate::crypto::SecretKey;

    #[test]
    fn datagram_roundtrip() {
        let ring = Keyring::new(SecretKey::generate());
        for len in [0, 1, 63, 64, 65, 1400, 70_000] {
            let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = b"header".to_vec();
            seal_datagram(&ring, rand::random(), b"tribe-a", &plaintext, &mut out);
            assert_eq!(out.len(), 6 + DATAGRAM_OVERHEAD + len);
            let sealed = &out[6..];
            assert_eq!(datagram_key_id(sealed), Some(ring.primary_id()));
            if len >= 16 {
                // The payload is not in the clear (a 16-byte match is 2^-128).
                assert_ne!(&sealed[28..44], &plaintext[..16]);
            }
            assert_eq!(open_datagram(&ring, b"tribe-a", sealed).unwrap(), plaintext);
        }
    }

    #[test]
    fn datagram_known_answer() {
        let ring = Keyring::new(counting_key());
        let mut nonce = [0u8; 24];
        for (i, b) in nonce.iter_mut().enumerate() {
            *b = 100 + i as u8;
        }
        let mut out = Vec::new();
        seal_datagram(&ring, nonce, b"ad", b"datagram payload", &mut out);
        assert_eq!(
            hex::encode(&out),
            "da8a3d186465666768696a6b6c6d6e6f707172737475767778797a7b\
             18128dd1985ce8efa740fc46ca00dcad7f606b27eaa1375ba0c6c4126eedf096"
        );
    }

    #[test]
    fn datagram_opens_with_non_primary_key() {
        let old = SecretKey::generate();
        let sender = Keyring::new(old.clone());
        let sealed = seal(&sender, b"", b"hi");
        let mut receiver = Keyring::new(SecretKey::generate());
        assert_eq!(
            open_datagram(&receiver, b"", &sealed),
            Err(OpenError::UnknownKey(old.id()))
        );
        receiver.install(old).unwrap();
        assert_eq!(open_datagram(&receiver, b"", &sealed).unwrap(), b"hi");
    }

    #[test]
    fn datagram_every_bit_flip_fails() {
        let ring = Keyring::new(SecretKey::generate());
        let sealed = seal(&ring, b"ad", b"a gossip message of some length");
        for bit in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let err = open_datagram(&ring, b"ad", &bad).unwrap_err();
            if bit < 32 {
                assert!(
                    matches!(err, OpenError::UnknownKey(_)),
                    "bit {bit}: {err:?}"
                );
            } else {
                assert_eq!(err, OpenError::Auth, "bit {bit}");
            }
        }
    }

    #[test]
    fn datagram_wrong_ad_or_key_fails() {
        let key = SecretKey::generate();
        let ring = Keyring::new(key.clone());
        let sealed = seal(&ring, b"tribe-a", b"x");
        assert_eq!(
            open_datagram(&ring, b"tribe-b", &sealed),
            Err(OpenError::Auth)
        );
        assert_eq!(open_datagram(&ring, b"", &sealed), Err(OpenError::Auth));
        // Right id, wrong bytes: a forged id does not get past the tag.
        let mut forged = sealed.clone();
        forged[..4].copy_from_slice(&0u32.to_be_bytes());
        let mut liar = Keyring::new(SecretKey::generate());
        liar.install(key).unwrap();
        assert!(open_datagram(&liar, b"tribe-a", &forged).is_err());
    }

    #[test]
    fn datagram_truncated_at_every_length() {
        let ring = Keyring::new(SecretKey::generate());
        let sealed = seal(&ring, b"", b"payload");
        for len in 0..sealed.len() {
            let err = open_datagram(&ring, b"", &sealed[..len]).unwrap_err();
            if len < DATAGRAM_OVERHEAD {
                assert_eq!(err, OpenError::Truncated, "len {len}");
            } else {
                assert_eq!(err, OpenError::Auth, "len {len}");
            }
            assert_eq!(datagram_key_id(&sealed[..len]).is_some(), len >= 4);
        }
        // An empty payload is the shortest valid datagram.
        let empty = seal(&ring, b"", b"");
        assert_eq!(empty.len(), DATAGRAM_OVERHEAD);
        assert_eq!(open_datagram(&ring, b"", &empty).unwrap(), b"");
    }
}
