//! Keys, their public ids, and the keyring that holds them.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{ID_LEN, KEY_ID_CONTEXT, KEY_LEN, MAX_KEYS};

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
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// In hex too (`KeyId(fd7e6646)`), as logs and the CLI show ids.
impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
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

impl KeyId {
    /// The id in `text`, or the id of the key `text` is: what every face
    /// takes to name a key (`tribe keys use`, C, Go, Python).
    pub fn of_key_or_id(text: &str) -> Result<KeyId, KeyError> {
        let text = text.trim();
        text.parse()
            .or_else(|_| SecretKey::from_base64(text).map(|k| k.id()))
            .map_err(|_| KeyError::NotKeyNorId)
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
    /// Neither a key id nor a key.
    #[error("expected a key (base64) or a key id (8 hex digits)")]
    NotKeyNorId,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::testkit::counting_key;

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
        assert_eq!(format!("{:?}", KeyId(0xdeadbeef)), "KeyId(deadbeef)");
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
}
