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
internal_mod!(datagram);
internal_mod!(format);
mod keys;
internal_mod!(session);
#[cfg(test)]
mod vectors;

pub use keys::{KeyError, KeyId, Keyring, SecretKey};

// The wire formats are the engine's, not an API: public only with the
// `internals` feature (the crypto benches and the fuzz targets).
#[cfg(feature = "internals")]
#[doc(hidden)]
pub use wire_items::*;
#[cfg(not(feature = "internals"))]
pub(crate) use wire_items::*;

mod wire_items {
    pub use super::aead::TAG_LEN;
    pub use super::datagram::{datagram_key_id, open_datagram, seal_datagram};
    pub use super::format::{OpenError, DATAGRAM_OVERHEAD, FRAME_OVERHEAD, HELLO_LEN, HELLO_MAGIC};
    pub use super::session::{Role, StreamCipher, StreamHello};
}
use format::{HELLO_VERSION, ID_LEN, SALT_LEN};

/// Length of a [`SecretKey`] in bytes.
pub const KEY_LEN: usize = 32;
/// Most keys a [`Keyring`] holds: enough for a rotation with stragglers,
/// few enough that a linear id lookup costs nothing.
pub const MAX_KEYS: usize = 8;
const KEY_ID_CONTEXT: &[u8] = b"libtribe key id v1";
const STREAM_INFO: &[u8] = b"libtribe stream v1 ";

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
