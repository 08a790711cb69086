//! Symmetric encryption of tribe traffic: the keyring, key ids, datagram
//! sealing (XChaCha20-Poly1305, random nonces) and stream sessions
//! (per-connection keys from HKDF-SHA256, ChaCha20-Poly1305 with counter
//! nonces, so a replayed or reordered frame fails).
//!
//! Wire formats:
//! - datagram: `key id (4, BE) | nonce (24) | ciphertext | tag (16)`;
//! - stream hello: `"TS" | version 1 | key id (4, BE) | salt (32)`;
//! - stream frame: `ciphertext | tag (16)`, nonce `0u32 | counter (u64 BE)`.
//!
//! The cipher sits behind the small interface of `crypto/aead.rs`; the
//! vectors in `crypto/vectors.rs` (tests) pin the wire format to the RFCs
//! and to the previous implementation, so nodes on either side of an
//! upgrade still talk.

mod aead;
mod datagram;
mod keys;
mod session;
#[cfg(test)]
mod vectors;

pub use aead::TAG_LEN;
pub use datagram::{datagram_key_id, open_datagram, seal_datagram};
pub use keys::{KeyError, KeyId, Keyring, SecretKey};
pub use session::{Role, StreamCipher, StreamHello};

/// Length of a [`SecretKey`] in bytes.
pub const KEY_LEN: usize = 32;
/// Most keys a [`Keyring`] holds: enough for a rotation with stragglers,
/// few enough that a linear id lookup costs nothing.
pub const MAX_KEYS: usize = 8;
/// Bytes added to a datagram payload: key id (4) + nonce (24) + tag (16).
pub const DATAGRAM_OVERHEAD: usize = ID_LEN + XNONCE_LEN + TAG_LEN;
/// Bytes added to a stream frame: tag (16).
pub const FRAME_OVERHEAD: usize = TAG_LEN;
/// Encoded size of a [`StreamHello`]: magic (2) + version (1) + key id (4) + salt (32).
pub const HELLO_LEN: usize = HELLO_MAGIC.len() + 1 + ID_LEN + SALT_LEN;

const ID_LEN: usize = 4;
use aead::XNONCE_LEN;
const SALT_LEN: usize = 32;
/// First two bytes of a [`StreamHello`], so an acceptor can tell a sealed
/// stream from a plaintext one by its first bytes.
pub const HELLO_MAGIC: [u8; 2] = *b"TS";
const HELLO_VERSION: u8 = 1;
const KEY_ID_CONTEXT: &[u8] = b"libtribe key id v1";
const STREAM_INFO: &[u8] = b"libtribe stream v1 ";
/// Why a datagram, hello or frame could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Too short or malformed to parse (or, when sealing, a frame counter
    /// or length limit was reached).
    #[error("the message is truncated or malformed")]
    Truncated,
    /// Sealed with a key this node does not have.
    #[error("sealed with key {0}, which is not in the keyring")]
    UnknownKey(KeyId),
    /// Failed authentication: wrong key or label, tampered, replayed or
    /// reordered.
    #[error("the message failed authentication")]
    Auth,
    /// Reserved for a frame known to be out of order; counter nonces make
    /// that indistinguishable from tampering, so [`OpenError::Auth`] is
    /// returned instead.
    #[error("the frame arrived out of order")]
    OutOfOrder,
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Fixtures shared by the crypto tests.
    use super::*;

    /// Key `00 01 .. 1f`; the known answers in the tests come from an
    /// independent implementation (Python `cryptography` plus a hand-written
    /// HChaCha20).
    pub fn counting_key() -> SecretKey {
        let mut bytes = [0u8; KEY_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        SecretKey::from_bytes(bytes)
    }

    pub fn salts() -> ([u8; 32], [u8; 32]) {
        let mut i = [0u8; 32];
        let mut r = [0u8; 32];
        for n in 0..32 {
            i[n] = 32 + n as u8;
            r[n] = 64 + n as u8;
        }
        (i, r)
    }

    pub fn pair(key: &SecretKey, label: &[u8]) -> (StreamCipher, StreamCipher) {
        let (i, r) = (
            StreamHello::new(key.id()).salt,
            StreamHello::new(key.id()).salt,
        );
        (
            StreamCipher::new(key, Role::Initiator, &i, &r, label),
            StreamCipher::new(key, Role::Responder, &i, &r, label),
        )
    }

    pub fn seal(ring: &Keyring, ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        seal_datagram(ring, rand::random(), ad, plaintext, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::pair;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let ring = Keyring::new(SecretKey::from_bytes([9; KEY_LEN]));
            prop_assert!(open_datagram(&ring, b"", &bytes).is_err());
            let _ = datagram_key_id(&bytes);
            let _ = StreamHello::decode(&bytes);
            let mut hello = bytes.clone();
            hello.resize(HELLO_LEN, 0);
            let _ = StreamHello::decode(&hello);
            let (_, mut resp) = pair(&ring.primary().clone(), b"");
            prop_assert!(resp.open(&bytes).is_err());
        }

        #[test]
        fn datagrams_under_the_real_key_id_never_open(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            let ring = Keyring::new(SecretKey::from_bytes([9; KEY_LEN]));
            let bytes = [&ring.primary_id().0.to_be_bytes()[..], &tail].concat();
            prop_assert!(open_datagram(&ring, b"", &bytes).is_err());
        }
    }
}
