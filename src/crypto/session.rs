//! Stream sessions: the hello each side sends, and the per-connection
//! keys (HKDF-SHA256) that seal frames with counter nonces.

use std::fmt;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::aead::{ChaChaKey, TAG_LEN};
use super::{
    KeyId, OpenError, SecretKey, HELLO_LEN, HELLO_MAGIC, HELLO_VERSION, ID_LEN, KEY_LEN, SALT_LEN,
    STREAM_INFO,
};

/// First message of each side of a stream, in the clear: which key the
/// sender uses and a fresh random salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHello {
    /// Id of the key the sender derives its session from.
    pub key_id: KeyId,
    /// Fresh random bytes, so every connection gets its own keys.
    pub salt: [u8; 32],
}

impl StreamHello {
    /// A hello for `key_id` with a random salt.
    pub fn new(key_id: KeyId) -> StreamHello {
        let mut salt = [0u8; SALT_LEN];
        rand::fill(&mut salt[..]);
        StreamHello { key_id, salt }
    }

    /// `"TS" | version 1 | key id (4, BE) | salt (32)`.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        let (magic, rest) = out.split_at_mut(HELLO_MAGIC.len());
        magic.copy_from_slice(&HELLO_MAGIC);
        let (version, rest) = rest.split_at_mut(1);
        version[0] = HELLO_VERSION;
        let (id, salt) = rest.split_at_mut(ID_LEN);
        id.copy_from_slice(&self.key_id.0.to_be_bytes());
        salt.copy_from_slice(&self.salt);
        out
    }

    /// Parses exactly [`HELLO_LEN`] bytes; a wrong length, magic or version
    /// is [`OpenError::Truncated`].
    pub fn decode(bytes: &[u8]) -> Result<StreamHello, OpenError> {
        let bytes: &[u8; HELLO_LEN] = bytes.try_into().map_err(|_| OpenError::Truncated)?;
        let (magic, rest) = bytes.split_first_chunk::<2>().ok_or(OpenError::Truncated)?;
        let (version, rest) = rest.split_first().ok_or(OpenError::Truncated)?;
        let (id, salt) = rest
            .split_first_chunk::<ID_LEN>()
            .ok_or(OpenError::Truncated)?;
        if *magic != HELLO_MAGIC || *version != HELLO_VERSION {
            return Err(OpenError::Truncated);
        }
        let salt: [u8; SALT_LEN] = salt.try_into().map_err(|_| OpenError::Truncated)?;
        Ok(StreamHello {
            key_id: KeyId(u32::from_be_bytes(*id)),
            salt,
        })
    }
}

/// Which end of a stream this side is: the dialer is the initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Dialed the connection; its salt comes first.
    Initiator,
    /// Accepted the connection.
    Responder,
}

/// One direction pair of a stream's session keys, with the frame counters.
/// `Debug` shows the role and counters, never keys.
pub struct StreamCipher {
    role: Role,
    send: ChaChaKey,
    recv: ChaChaKey,
    sent: u64,
    received: u64,
}

impl StreamCipher {
    /// Derives the session: both sides pass the same key, the same two salts
    /// (initiator's first) and the same label; roles differ.
    ///
    /// HKDF-SHA256 with ikm = key, salt = initiator salt || responder salt,
    /// info = `"libtribe stream v1 " || ("i2r" | "r2i") || label`. The
    /// initiator sends with i2r and receives with r2i; the responder the
    /// reverse. A fresh responder salt means a recorded connection replayed
    /// to a node gets different keys.
    pub fn new(
        key: &SecretKey,
        role: Role,
        initiator_salt: &[u8; 32],
        responder_salt: &[u8; 32],
        label: &[u8],
    ) -> StreamCipher {
        let mut salt = Zeroizing::new([0u8; 2 * SALT_LEN]);
        salt[..SALT_LEN].copy_from_slice(initiator_salt);
        salt[SALT_LEN..].copy_from_slice(responder_salt);
        let hkdf = Hkdf::<Sha256>::new(Some(&salt[..]), key.as_bytes());
        let direction = |dir: &[u8]| {
            let mut okm = Zeroizing::new([0u8; KEY_LEN]);
            if hkdf
                .expand_multi_info(&[STREAM_INFO, dir, label], &mut okm[..])
                .is_err()
            {
                // Cannot fail for 32 bytes; if it did, a random key fails
                // closed (frames do not open) instead of panicking.
                rand::fill(&mut okm[..]);
            }
            ChaChaKey::new(&okm)
        };
        let i2r = direction(b"i2r");
        let r2i = direction(b"r2i");
        let (send, recv) = match role {
            Role::Initiator => (i2r, r2i),
            Role::Responder => (r2i, i2r),
        };
        StreamCipher {
            role,
            send,
            recv,
            sent: 0,
            received: 0,
        }
    }

    /// Seals the next frame in place: `in_out` becomes the ciphertext and
    /// the tag to send after it is returned. The nonce is
    /// `0u32 || send counter (u64 BE)`; the counter then increments.
    ///
    /// Returns [`OpenError::Truncated`] rather than reuse a nonce once
    /// 2^64 - 1 frames were sealed, or for a frame over the cipher's 256 GiB
    /// limit; neither advances the counter.
    pub fn seal_in_place(&mut self, in_out: &mut [u8]) -> Result<[u8; TAG_LEN], OpenError> {
        let next = self.sent.checked_add(1).ok_or(OpenError::Truncated)?;
        let tag = self
            .send
            .seal_in_place(frame_nonce(self.sent), &[], in_out)
            .map_err(|_| OpenError::Truncated)?;
        self.sent = next;
        Ok(tag)
    }

    /// Opens the next frame in place: `sealed` is `ciphertext || tag`, and
    /// on success its first returned-length bytes are the plaintext. The
    /// frame must carry exactly the next receive counter. A replayed,
    /// reordered, skipped or tampered frame fails with [`OpenError::Auth`]
    /// and does not advance the counter (what `sealed` then holds is
    /// meaningless); a frame shorter than a tag is [`OpenError::Truncated`].
    pub fn open_in_place(&mut self, sealed: &mut [u8]) -> Result<usize, OpenError> {
        let (ciphertext, tag) = sealed
            .split_last_chunk_mut::<TAG_LEN>()
            .ok_or(OpenError::Truncated)?;
        let next = self.received.checked_add(1).ok_or(OpenError::Truncated)?;
        self.recv
            .open_in_place(frame_nonce(self.received), &[], ciphertext, tag)
            .map_err(|_| OpenError::Auth)?;
        self.received = next;
        Ok(ciphertext.len())
    }

    /// [`StreamCipher::seal_in_place`] into a new `ciphertext || tag`
    /// (the tests' and benches').
    #[cfg(any(test, feature = "internals"))]
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        let tag = self.seal_in_place(&mut out)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// [`StreamCipher::open_in_place`] on a copy; returns the plaintext
    /// (the tests' and benches').
    #[cfg(any(test, feature = "internals"))]
    pub fn open(&mut self, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut plaintext = sealed.to_vec();
        let len = self.open_in_place(&mut plaintext)?;
        plaintext.truncate(len);
        Ok(plaintext)
    }
}

fn frame_nonce(counter: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    nonce
}

impl fmt::Debug for StreamCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamCipher")
            .field("role", &self.role)
            .field("sent", &self.sent)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::testkit::{counting_key, pair, salts};
    use crate::crypto::{Keyring, FRAME_OVERHEAD};

    #[test]
    fn debug_never_shows_key_bytes() {
        let key = SecretKey::generate();
        let mut ring = Keyring::new(key.clone());
        ring.install(SecretKey::generate()).unwrap();
        let secrets = [
            key.to_base64(),
            key.to_base64().trim_end_matches('=').to_string(),
            hex::encode(key.as_bytes()),
            hex::encode_upper(key.as_bytes()),
            format!("{:?}", key.as_bytes()),
        ];
        let shown = [
            format!("{key:?}"),
            format!("{key:#?}"),
            format!("{ring:?}"),
            format!("{ring:#?}"),
        ];
        assert_eq!(shown[0], format!("SecretKey({})", key.id()));
        for s in &shown {
            for secret in &secrets {
                // Any 8-character window of the secret would be a leak.
                for w in 0..secret.len().saturating_sub(8) {
                    assert!(!s.contains(&secret[w..w + 8]), "{s} leaks {secret}");
                }
            }
        }
        let (i, _) = pair(&key, b"x");
        assert!(!format!("{i:?}").contains(&hex::encode(key.as_bytes())[..8]));
    }

    #[test]
    fn hello_roundtrip_and_rejects() {
        let hello = StreamHello::new(KeyId(0x01020304));
        let bytes = hello.encode();
        assert_eq!(bytes.len(), HELLO_LEN);
        assert_eq!(HELLO_LEN, 39);
        assert_eq!(&bytes[..7], b"TS\x01\x01\x02\x03\x04");
        assert_eq!(&bytes[7..], &hello.salt);
        assert_eq!(StreamHello::decode(&bytes), Ok(hello));
        assert_ne!(
            StreamHello::new(KeyId(1)).salt,
            StreamHello::new(KeyId(1)).salt
        );
        for len in 0..HELLO_LEN {
            assert_eq!(
                StreamHello::decode(&bytes[..len]),
                Err(OpenError::Truncated)
            );
        }
        assert_eq!(
            StreamHello::decode(&[&bytes[..], b"x"].concat()),
            Err(OpenError::Truncated)
        );
        for at in 0..3 {
            let mut bad = bytes;
            bad[at] ^= 0x20;
            assert_eq!(StreamHello::decode(&bad), Err(OpenError::Truncated));
        }
    }

    #[test]
    fn stream_known_answer() {
        let key = counting_key();
        let (i, r) = salts();
        let mut init = StreamCipher::new(&key, Role::Initiator, &i, &r, b"tribe-a");
        let mut resp = StreamCipher::new(&key, Role::Responder, &i, &r, b"tribe-a");
        let f0 = init.seal(b"hello").unwrap();
        let f1 = init.seal(b"hello").unwrap();
        let g0 = resp.seal(b"world").unwrap();
        assert_eq!(
            hex::encode(&f0),
            "e27e582142bf029e0718893bdbef83ddaaa988e805"
        );
        assert_eq!(
            hex::encode(&f1),
            "e8ab35c6181132860a7fd635cf9a6ebe990cbdf565"
        );
        assert_eq!(
            hex::encode(&g0),
            "47aadf92a04f606b4493cbf55fb60c9469a4b39197"
        );
        assert_eq!(resp.open(&f0).unwrap(), b"hello");
        assert_eq!(init.open(&g0).unwrap(), b"world");
    }

    #[test]
    fn stream_roundtrip_both_directions() {
        let key = SecretKey::generate();
        let (mut init, mut resp) = pair(&key, b"tribe-a");
        for n in 0..20u32 {
            let msg = format!("frame {n}").repeat(n as usize);
            let sealed = init.seal(msg.as_bytes()).unwrap();
            assert_eq!(sealed.len(), msg.len() + FRAME_OVERHEAD);
            assert_eq!(resp.open(&sealed).unwrap(), msg.as_bytes());
            let back = resp.seal(&sealed).unwrap();
            assert_eq!(init.open(&back).unwrap(), sealed);
        }
        // A side cannot open its own frames: the directions have distinct keys.
        let own = init.seal(b"x").unwrap();
        assert_eq!(init.open(&own), Err(OpenError::Auth));
        assert_eq!(resp.open(&own).unwrap(), b"x");
    }

    #[test]
    fn stream_replay_and_reorder_fail() {
        let (mut init, mut resp) = pair(&SecretKey::generate(), b"");
        let f1 = init.seal(b"one").unwrap();
        let f2 = init.seal(b"two").unwrap();
        let f3 = init.seal(b"three").unwrap();
        // Reordered: 2 before 1.
        assert_eq!(resp.open(&f2), Err(OpenError::Auth));
        assert_eq!(resp.open(&f1).unwrap(), b"one");
        assert_eq!(resp.open(&f2).unwrap(), b"two");
        // Replayed: 1 again after 2.
        assert_eq!(resp.open(&f1), Err(OpenError::Auth));
        assert_eq!(resp.open(&f2), Err(OpenError::Auth));
        assert_eq!(resp.open(&f3).unwrap(), b"three");
        // Dropped then later: 5 opens at 4's turn never, and 4 was lost.
        let _f4 = init.seal(b"four").unwrap();
        let f5 = init.seal(b"five").unwrap();
        assert_eq!(resp.open(&f5), Err(OpenError::Auth));
    }

    #[test]
    fn stream_tampering_does_not_advance() {
        let (mut init, mut resp) = pair(&SecretKey::generate(), b"l");
        let f1 = init.seal(b"genuine frame").unwrap();
        for bit in 0..f1.len() * 8 {
            let mut bad = f1.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(resp.open(&bad), Err(OpenError::Auth), "bit {bit}");
        }
        for len in 0..f1.len() {
            let want = if len < FRAME_OVERHEAD {
                OpenError::Truncated
            } else {
                OpenError::Auth
            };
            assert_eq!(resp.open(&f1[..len]), Err(want), "len {len}");
        }
        assert_eq!(resp.open(&f1).unwrap(), b"genuine frame");
        let f2 = init.seal(b"").unwrap();
        assert_eq!(resp.open(&f2).unwrap(), b"");
    }

    #[test]
    fn stream_replayed_connection_or_other_label_cannot_open() {
        let key = SecretKey::generate();
        let i = StreamHello::new(key.id()).salt;
        let r = StreamHello::new(key.id()).salt;
        let mut init = StreamCipher::new(&key, Role::Initiator, &i, &r, b"tribe-a");
        let frames: Vec<Vec<u8>> = (0..3).map(|_| init.seal(b"join me").unwrap()).collect();

        // The recorded connection replayed to a node that picks a new salt.
        let fresh = StreamHello::new(key.id()).salt;
        let mut victim = StreamCipher::new(&key, Role::Responder, &i, &fresh, b"tribe-a");
        assert_eq!(victim.open(&frames[0]), Err(OpenError::Auth));

        let mut other_label = StreamCipher::new(&key, Role::Responder, &i, &r, b"tribe-b");
        assert_eq!(other_label.open(&frames[0]), Err(OpenError::Auth));

        let mut swapped = StreamCipher::new(&key, Role::Responder, &r, &i, b"tribe-a");
        assert_eq!(swapped.open(&frames[0]), Err(OpenError::Auth));

        let mut other_key =
            StreamCipher::new(&SecretKey::generate(), Role::Responder, &i, &r, b"tribe-a");
        assert_eq!(other_key.open(&frames[0]), Err(OpenError::Auth));

        let mut genuine = StreamCipher::new(&key, Role::Responder, &i, &r, b"tribe-a");
        for f in &frames {
            assert_eq!(genuine.open(f).unwrap(), b"join me");
        }
    }

    #[test]
    fn stream_counter_exhaustion_refuses_without_panic() {
        let (mut init, mut resp) = pair(&SecretKey::generate(), b"");
        init.sent = u64::MAX - 1;
        resp.received = u64::MAX - 1;
        let last = init.seal(b"last").unwrap();
        assert_eq!(init.seal(b"one too many"), Err(OpenError::Truncated));
        assert_eq!(init.sent, u64::MAX);
        assert_eq!(resp.open(&last).unwrap(), b"last");
        assert_eq!(resp.open(&last), Err(OpenError::Truncated));
    }
}
