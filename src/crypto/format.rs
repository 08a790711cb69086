//! The wire formats' sizes and the error of opening what was sealed: the
//! engine's, public only with the `internals` feature.

use super::aead::{TAG_LEN, XNONCE_LEN};
use super::KeyId;

/// Bytes added to a datagram payload: key id (4) + nonce (24) + tag (16).
pub const DATAGRAM_OVERHEAD: usize = ID_LEN + XNONCE_LEN + TAG_LEN;
/// Bytes added to a stream frame: tag (16).
pub const FRAME_OVERHEAD: usize = TAG_LEN;
/// Encoded size of a [`StreamHello`](super::StreamHello): magic (2) + version (1) + key id (4) + salt (32).
pub const HELLO_LEN: usize = HELLO_MAGIC.len() + 1 + ID_LEN + SALT_LEN;

/// Bytes of a key id on the wire.
pub const ID_LEN: usize = 4;
/// Bytes of each side's salt in a stream hello.
pub const SALT_LEN: usize = 32;
/// First two bytes of a [`StreamHello`](super::StreamHello), so an acceptor can tell a sealed
/// stream from a plaintext one by its first bytes.
pub const HELLO_MAGIC: [u8; 2] = *b"TS";
/// The stream hello's version byte.
pub const HELLO_VERSION: u8 = 1;
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
    /// (A frame out of order is one too: counter nonces make it look
    /// tampered with.)
    #[error("the message failed authentication")]
    Auth,
}

