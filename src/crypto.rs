//! Symmetric encryption of tribe traffic: the keyring, key ids, datagram
//! sealing (XChaCha20-Poly1305, random nonces) and stream sessions
//! (per-connection keys from HKDF-SHA256, ChaCha20-Poly1305 with counter
//! nonces, so a replayed or reordered frame fails).
//!
//! Wire formats:
//! - datagram: `key id (4, BE) | nonce (24) | ciphertext | tag (16)`;
//! - stream hello: `"TS" | version 1 | key id (4, BE) | salt (32)`;
//! - stream frame: `ciphertext | tag (16)`, nonce `0u32 | counter (u64 BE)`.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

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
const XNONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const SALT_LEN: usize = 32;
/// First two bytes of a [`StreamHello`], so an acceptor can tell a sealed
/// stream from a plaintext one by its first bytes.
pub const HELLO_MAGIC: [u8; 2] = *b"TS";
const HELLO_VERSION: u8 = 1;
const KEY_ID_CONTEXT: &[u8] = b"libtribe key id v1";
const STREAM_INFO: &[u8] = b"libtribe stream v1 ";

/// A 32-byte symmetric key shared by the members of a tribe.
///
/// `Debug` prints only the key id; there is no `Display`, so the bytes reach
/// text only through [`SecretKey::to_base64`]. The bytes are zeroized on drop.
#[derive(Clone)]
pub struct SecretKey {
    bytes: [u8; KEY_LEN],
    // Cached: ring lookups and Debug would otherwise hash on every call.
    id: KeyId,
}

impl SecretKey {
    /// A fresh key from the thread-local CSPRNG, which is seeded by the OS.
    pub fn generate() -> SecretKey {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rand::fill(&mut bytes[..]);
        SecretKey::from_bytes(*bytes)
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SecretKey {
        let id = derive_key_id(&bytes);
        SecretKey { bytes, id }
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// Parses standard base64 with padding, ignoring surrounding whitespace.
    ///
    /// Errors never quote the input, so they are safe to log.
    pub fn from_base64(text: &str) -> Result<SecretKey, KeyError> {
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| KeyError::Base64)?,
        );
        let bytes: [u8; KEY_LEN] = decoded[..]
            .try_into()
            .map_err(|_| KeyError::Length { got: decoded.len() })?;
        let key = SecretKey::from_bytes(bytes);
        // `bytes` is a Copy array: wipe this stack copy too.
        let mut bytes = bytes;
        bytes.zeroize();
        Ok(key)
    }

    /// Standard base64 with padding (44 characters).
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.bytes)
    }

    /// The public id of this key: the first 4 bytes (big-endian) of
    /// `SHA-256("libtribe key id v1" || key)`.
    pub fn id(&self) -> KeyId {
        self.id
    }
}

fn derive_key_id(bytes: &[u8; KEY_LEN]) -> KeyId {
    let digest = Sha256::new()
        .chain_update(KEY_ID_CONTEXT)
        .chain_update(bytes)
        .finalize();
    let mut first = [0u8; ID_LEN];
    first.copy_from_slice(&digest[..ID_LEN]);
    KeyId(u32::from_be_bytes(first))
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &SecretKey) -> bool {
        // No early exit, so timing does not tell how many bytes matched.
        let diff = self
            .bytes
            .iter()
            .zip(other.bytes.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl Eq for SecretKey {}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.id)
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl ZeroizeOnDrop for SecretKey {}

/// Public fingerprint of a key, sent in the clear so a receiver picks the
/// key without trial decryption. Displays as 8 lowercase hex digits.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl FromStr for KeyId {
    type Err = KeyError;

    /// Exactly 8 hex digits, either case.
    fn from_str(s: &str) -> Result<KeyId, KeyError> {
        // from_str_radix alone would accept a sign and shorter strings.
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeyError::BadId);
        }
        u32::from_str_radix(s, 16)
            .map(KeyId)
            .map_err(|_| KeyError::BadId)
    }
}

/// What can go wrong parsing keys or changing a [`Keyring`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not standard padded base64.
    #[error("the key is not valid base64 (standard alphabet, with padding)")]
    Base64,
    /// The text decodes to the wrong number of bytes.
    #[error("a key is {KEY_LEN} bytes, this one decodes to {got}")]
    Length {
        /// How many bytes the text decoded to.
        got: usize,
    },
    /// A key id is not 8 hex digits.
    #[error("a key id is 8 hex digits")]
    BadId,
    /// The keyring already holds [`MAX_KEYS`] keys.
    #[error("the keyring holds {MAX_KEYS} keys already")]
    Full,
    /// No installed key has this id.
    #[error("no key with id {0} is installed")]
    UnknownKey(KeyId),
    /// The primary key cannot be removed.
    #[error("key {0} is the primary key; make another key primary first")]
    IsPrimary(KeyId),
}

/// Up to [`MAX_KEYS`] keys: the primary encrypts, all decrypt.
///
/// Installing a new key everywhere, then making it primary, then removing
/// the old one rotates keys without a window where members disagree.
/// `Debug` shows ids only.
pub struct Keyring {
    // Capacity is always MAX_KEYS so the Vec never reallocates, which would
    // leave unzeroized copies of keys in freed memory.
    keys: Vec<SecretKey>,
    primary: usize,
}

impl Keyring {
    /// A ring holding only `primary`.
    pub fn new(primary: SecretKey) -> Keyring {
        let mut keys = Vec::with_capacity(MAX_KEYS);
        keys.push(primary);
        Keyring { keys, primary: 0 }
    }

    /// Adds a key that can decrypt. `Ok(true)` if added, `Ok(false)` if a key
    /// with its id is already installed (ids pick keys, so two keys with one
    /// id cannot both be used).
    pub fn install(&mut self, key: SecretKey) -> Result<bool, KeyError> {
        if self.position(key.id()).is_some() {
            return Ok(false);
        }
        if self.keys.len() >= MAX_KEYS {
            return Err(KeyError::Full);
        }
        self.keys.push(key);
        Ok(true)
    }

    /// Makes an installed key the one that encrypts.
    pub fn use_key(&mut self, id: KeyId) -> Result<(), KeyError> {
        self.primary = self.position(id).ok_or(KeyError::UnknownKey(id))?;
        Ok(())
    }

    /// Removes a key that is not primary; its bytes are zeroized.
    pub fn remove(&mut self, id: KeyId) -> Result<(), KeyError> {
        let at = self.position(id).ok_or(KeyError::UnknownKey(id))?;
        if at == self.primary {
            return Err(KeyError::IsPrimary(id));
        }
        // Rotate then truncate (not Vec::remove): the key is dropped, hence
        // zeroized, in its slot, and no stale copy stays past the end.
        self.keys[at..].rotate_left(1);
        self.keys.truncate(self.keys.len() - 1);
        if self.primary > at {
            self.primary -= 1;
        }
        Ok(())
    }

    /// The key that encrypts.
    pub fn primary(&self) -> &SecretKey {
        // In bounds: `new` sets 0, `use_key` a found index, `remove` shifts it.
        &self.keys[self.primary]
    }

    /// The id of the key that encrypts.
    pub fn primary_id(&self) -> KeyId {
        self.primary().id()
    }

    /// The installed key with this id.
    pub fn get(&self, id: KeyId) -> Option<&SecretKey> {
        self.keys.iter().find(|k| k.id() == id)
    }

    /// Ids of all installed keys, in install order.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(SecretKey::id).collect()
    }

    /// All installed keys, in install order.
    pub fn keys(&self) -> &[SecretKey] {
        &self.keys
    }

    /// How many keys are installed (at least 1).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a ring holds its primary key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn position(&self, id: KeyId) -> Option<usize> {
        self.keys.iter().position(|k| k.id() == id)
    }
}

impl Clone for Keyring {
    fn clone(&self) -> Keyring {
        // Keep the full capacity; see the field comment.
        let mut keys = Vec::with_capacity(MAX_KEYS);
        keys.extend(self.keys.iter().cloned());
        Keyring {
            keys,
            primary: self.primary,
        }
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary_id())
            .field("ids", &self.ids())
            .finish()
    }
}

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

/// Appends `key id (4, BE) | nonce (24) | ciphertext | tag (16)` to `out`,
/// sealed with the primary key and `ad` as associated data.
///
/// `nonce` must be fresh random bytes (24 bytes make collisions negligible).
/// A plaintext beyond the cipher's 256 GiB limit appends nothing.
pub fn seal_datagram(
    ring: &Keyring,
    nonce: [u8; 24],
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
    let cipher = XChaCha20Poly1305::new(&key.bytes.into());
    match cipher.encrypt_inout_detached(&XNonce::from(nonce), ad, (&mut out[body..]).into()) {
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
    let cipher = XChaCha20Poly1305::new(&key.bytes.into());
    let mut plaintext = ciphertext.to_vec();
    cipher
        .decrypt_inout_detached(
            &XNonce::from(*nonce),
            ad,
            (&mut plaintext[..]).into(),
            &Tag::from(*tag),
        )
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
    send: ChaCha20Poly1305,
    recv: ChaCha20Poly1305,
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
            ChaCha20Poly1305::new(&(*okm).into())
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

    /// Seals the next frame into `ciphertext || tag`, with nonce
    /// `0u32 || send counter (u64 BE)`; the counter then increments.
    ///
    /// Returns [`OpenError::Truncated`] rather than reuse a nonce once
    /// 2^64 - 1 frames were sealed, or for a frame over the cipher's 256 GiB
    /// limit; neither advances the counter.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, OpenError> {
        let next = self.sent.checked_add(1).ok_or(OpenError::Truncated)?;
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        let tag = self
            .send
            .encrypt_inout_detached(&frame_nonce(self.sent), &[], (&mut out[..]).into())
            .map_err(|_| OpenError::Truncated)?;
        out.extend_from_slice(&tag);
        self.sent = next;
        Ok(out)
    }

    /// Opens the next frame, which must carry exactly the next receive
    /// counter. A replayed, reordered, skipped or tampered frame fails with
    /// [`OpenError::Auth`] and does not advance the counter; a frame shorter
    /// than a tag is [`OpenError::Truncated`].
    pub fn open(&mut self, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let (ciphertext, tag) = sealed
            .split_last_chunk::<TAG_LEN>()
            .ok_or(OpenError::Truncated)?;
        let next = self.received.checked_add(1).ok_or(OpenError::Truncated)?;
        let mut plaintext = ciphertext.to_vec();
        self.recv
            .decrypt_inout_detached(
                &frame_nonce(self.received),
                &[],
                (&mut plaintext[..]).into(),
                &Tag::from(*tag),
            )
            .map_err(|_| OpenError::Auth)?;
        self.received = next;
        Ok(plaintext)
    }
}

fn frame_nonce(counter: u64) -> chacha20poly1305::Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    nonce.into()
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
    use proptest::prelude::*;

    /// Key `00 01 .. 1f`; the known answers below come from an independent
    /// implementation (Python `cryptography` plus a hand-written HChaCha20).
    fn counting_key() -> SecretKey {
        let mut bytes = [0u8; KEY_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        SecretKey::from_bytes(bytes)
    }

    fn salts() -> ([u8; 32], [u8; 32]) {
        let mut i = [0u8; 32];
        let mut r = [0u8; 32];
        for n in 0..32 {
            i[n] = 32 + n as u8;
            r[n] = 64 + n as u8;
        }
        (i, r)
    }

    fn pair(key: &SecretKey, label: &[u8]) -> (StreamCipher, StreamCipher) {
        let (i, r) = (
            StreamHello::new(key.id()).salt,
            StreamHello::new(key.id()).salt,
        );
        (
            StreamCipher::new(key, Role::Initiator, &i, &r, label),
            StreamCipher::new(key, Role::Responder, &i, &r, label),
        )
    }

    fn seal(ring: &Keyring, ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        seal_datagram(ring, rand::random(), ad, plaintext, &mut out);
        out
    }

    #[test]
    fn key_id_follows_the_spec() {
        let key = SecretKey::generate();
        let digest = Sha256::digest([KEY_ID_CONTEXT, key.as_bytes()].concat());
        let want = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        assert_eq!(key.id(), KeyId(want));
        assert_eq!(SecretKey::from_bytes(*key.as_bytes()).id(), key.id());
        assert_eq!(counting_key().id(), KeyId(0xda8a3d18));
        assert_eq!(counting_key().id().to_string(), "da8a3d18");
    }

    #[test]
    fn key_id_text_roundtrip_and_errors() {
        for id in [
            KeyId(0),
            KeyId(0xdeadbeef),
            KeyId(u32::MAX),
            KeyId(0x0000_00ff),
        ] {
            assert_eq!(id.to_string().len(), 8);
            assert_eq!(id.to_string().parse::<KeyId>(), Ok(id));
        }
        assert_eq!("DEADBEEF".parse::<KeyId>(), Ok(KeyId(0xdeadbeef)));
        for bad in [
            "",
            "1234567",
            "123456789",
            "+1234567",
            "-1234567",
            "zzzzzzzz",
            " 1234567",
            "éééé",
        ] {
            assert_eq!(bad.parse::<KeyId>(), Err(KeyError::BadId), "{bad:?}");
        }
    }

    #[test]
    fn base64_roundtrip() {
        let key = SecretKey::generate();
        let text = key.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(SecretKey::from_base64(&text), Ok(key.clone()));
        assert_eq!(SecretKey::from_base64(&format!("  {text}\n")), Ok(key));
    }

    #[test]
    fn base64_errors_never_quote_the_input() {
        let key = SecretKey::generate();
        let text = key.to_base64();
        let short = base64::engine::general_purpose::STANDARD.encode(&key.as_bytes()[..31]);
        let long =
            base64::engine::general_purpose::STANDARD.encode([key.as_bytes(), &[7u8][..]].concat());
        let unpadded = text.trim_end_matches('=').to_string();
        let cases = [
            (format!("{}!", &text[..43]), KeyError::Base64),
            (unpadded, KeyError::Base64),
            (text.replace('=', "=="), KeyError::Base64),
            (format!("{text}{text}"), KeyError::Base64),
            (short.clone(), KeyError::Length { got: 31 }),
            (long.clone(), KeyError::Length { got: 33 }),
            (String::new(), KeyError::Length { got: 0 }),
        ];
        for (input, want) in cases {
            let err = SecretKey::from_base64(&input).unwrap_err();
            assert_eq!(err, want, "{input:?}");
            let shown = format!("{err} {err:?}");
            assert!(input.is_empty() || !shown.contains(input.trim()), "{shown}");
            assert!(!shown.contains(&text[..8]), "{shown}");
        }
    }

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
    fn secret_key_equality() {
        let a = SecretKey::generate();
        let mut other = *a.as_bytes();
        other[31] ^= 1;
        assert_eq!(a, a.clone());
        assert_ne!(a, SecretKey::from_bytes(other));
    }

    #[test]
    fn keyring_install_until_full() {
        let first = SecretKey::generate();
        let mut ring = Keyring::new(first.clone());
        let mut ids = vec![first.id()];
        for _ in 1..MAX_KEYS {
            let key = SecretKey::generate();
            ids.push(key.id());
            assert_eq!(ring.install(key), Ok(true));
        }
        assert_eq!(ring.len(), MAX_KEYS);
        assert!(!ring.is_empty());
        assert_eq!(ring.ids(), ids);
        assert_eq!(ring.install(SecretKey::generate()), Err(KeyError::Full));
        // A duplicate is reported as present even when full.
        assert_eq!(ring.install(first.clone()), Ok(false));
        assert_eq!(ring.primary(), &first);
        assert_eq!(
            KeyError::Full.to_string(),
            "the keyring holds 8 keys already"
        );
        assert_eq!(
            KeyError::Length { got: 31 }.to_string(),
            "a key is 32 bytes, this one decodes to 31"
        );
    }

    #[test]
    fn keyring_duplicate_use_and_remove() {
        let a = SecretKey::generate();
        let b = SecretKey::generate();
        let c = SecretKey::generate();
        let mut ring = Keyring::new(a.clone());
        assert_eq!(ring.install(b.clone()), Ok(true));
        assert_eq!(ring.install(b.clone()), Ok(false));
        assert_eq!(ring.install(c.clone()), Ok(true));
        assert_eq!(ring.len(), 3);

        let stranger = SecretKey::generate().id();
        assert_eq!(ring.use_key(stranger), Err(KeyError::UnknownKey(stranger)));
        assert_eq!(ring.remove(stranger), Err(KeyError::UnknownKey(stranger)));
        assert_eq!(ring.remove(a.id()), Err(KeyError::IsPrimary(a.id())));
        assert_eq!(
            KeyError::IsPrimary(a.id()).to_string(),
            format!(
                "key {} is the primary key; make another key primary first",
                a.id()
            )
        );

        // Primary after the removed key: its index shifts.
        ring.use_key(c.id()).unwrap();
        assert_eq!(ring.primary_id(), c.id());
        ring.remove(a.id()).unwrap();
        assert_eq!(ring.get(a.id()), None);
        assert_eq!(ring.primary_id(), c.id());
        assert_eq!(ring.ids(), vec![b.id(), c.id()]);
        assert_eq!(ring.keys(), &[b.clone(), c.clone()]);

        let copy = ring.clone();
        assert_eq!(copy.ids(), ring.ids());
        assert_eq!(copy.primary_id(), c.id());
        assert_eq!(ring.get(b.id()), Some(&b));
    }

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
