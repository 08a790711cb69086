//! The one AEAD behind every sealed byte: ChaCha20-Poly1305 (RFC 8439),
//! sealed and opened in place, plus the XChaCha20 nonce extension (an
//! HChaCha20 subkey and the remaining 8 nonce bytes). Everything else in
//! `crypto` goes through this small interface, so the implementation can
//! change without touching the wire format; the known-answer and
//! cross-implementation tests in `crypto::vectors` pin it.
//!
//! Implementation: `ring` (chosen by `benches/crypto.rs`: several times
//! faster per message than the `chacha20poly1305` crate on small messages
//! and about 1.8x on 64 KiB), HChaCha20 from the `chacha20` crate (ring
//! does not expose it). Unlike the keyring's own keys, key material held
//! inside ring is not wiped on drop.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};

/// Length of a Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Length of an XChaCha20 nonce.
pub const XNONCE_LEN: usize = 24;

/// The AEAD refused: authentication failed on open, or the input is over
/// the cipher's length limit on seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AeadError;

/// A ChaCha20-Poly1305 key, kept for as many messages as it seals or opens.
pub struct ChaChaKey(Option<LessSafeKey>);

impl ChaChaKey {
    /// A key from its 32 bytes.
    pub fn new(key: &[u8; 32]) -> ChaChaKey {
        // Cannot fail for a 32-byte key; if it did, the key fails closed
        // (every seal and open errs) instead of panicking.
        ChaChaKey(
            UnboundKey::new(&CHACHA20_POLY1305, key)
                .ok()
                .map(LessSafeKey::new),
        )
    }

    /// Encrypts `in_out` in place and returns the tag over `ad` and the
    /// ciphertext.
    pub fn seal_in_place(
        &self,
        nonce: [u8; 12],
        ad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        let key = self.0.as_ref().ok_or(AeadError)?;
        let tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(ad), in_out)
            .map_err(|_| AeadError)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Checks `tag` and decrypts `in_out` in place. On failure `in_out`
    /// holds no plaintext (ring zeroes it), so callers may drop it as is.
    pub fn open_in_place(
        &self,
        nonce: [u8; 12],
        ad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        let key = self.0.as_ref().ok_or(AeadError)?;
        key.open_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(ad),
            Tag::from(*tag),
            in_out,
            0..,
        )
        .map(|_| ())
        .map_err(|_| AeadError)
    }
}

/// The ChaCha20-Poly1305 key and nonce that XChaCha20-Poly1305 with `key`
/// and the 24-byte `nonce` uses: the subkey is HChaCha20(key, nonce[..16]),
/// the nonce is four zero bytes and nonce[16..].
pub fn xchacha(key: &[u8; 32], nonce: &[u8; XNONCE_LEN]) -> (ChaChaKey, [u8; 12]) {
    let mut input = [0u8; 16];
    input.copy_from_slice(&nonce[..16]);
    let mut subkey: [u8; 32] =
        chacha20::hchacha::<chacha20::R20>(&(*key).into(), &input.into()).into();
    let cipher = ChaChaKey::new(&subkey);
    zeroize::Zeroize::zeroize(&mut subkey);
    let mut short = [0u8; 12];
    short[4..].copy_from_slice(&nonce[16..]);
    (cipher, short)
}
