//! On-the-wire envelopes. A datagram is
//! `magic | version | kind | label length | label | body`; kind 0 is
//! plaintext (body = payload), kind 1 is sealed (body = key id | nonce |
//! XChaCha20-Poly1305 ciphertext, with every header byte before the body as
//! associated data, so the cluster label is authenticated). Stream frames are
//! a 4-byte big-endian length and a postcard message (sealed per connection
//! by [`crate::stream`]). Every decoder is total: bad bytes give a
//! [`WireError`], never a panic.

use serde::{Deserialize, Serialize};

use crate::crypto::{self, KeyId, Keyring, OpenError};

/// First bytes of every libtribe datagram.
pub const MAGIC: [u8; 2] = *b"TB";
/// Wire format version.
pub const VERSION: u8 = 3;
/// Datagram kind: plaintext payload.
pub const KIND_PLAIN: u8 = 0;
/// Datagram kind: sealed payload.
pub const KIND_SEALED: u8 = 1;
/// Longest cluster label, in bytes.
pub const MAX_LABEL_LEN: usize = 64;
/// Largest datagram sent or accepted, envelope included.
pub const MAX_DATAGRAM: usize = 1400;
/// Room left in a datagram for the envelope (header, label, key id, nonce, tag).
pub const ENVELOPE_BUDGET: usize = 5 + MAX_LABEL_LEN + crypto::DATAGRAM_OVERHEAD;
/// First frame of a stream (after the hello exchange): anti-entropy sync.
pub const CHANNEL_SYNC: u8 = 0;
/// First frame of a stream: remote calls and artifact transfer.
pub const CHANNEL_RPC: u8 = 1;
/// Length prefix of a stream frame.
pub const FRAME_HEADER: usize = 4;

/// Why bytes from the network were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Too short to hold the envelope.
    #[error("truncated envelope")]
    Truncated,
    /// Larger than the limit.
    #[error("oversized: {0} bytes")]
    Oversized(usize),
    /// Not a libtribe packet.
    #[error("bad magic")]
    BadMagic,
    /// A wire version this build does not speak.
    #[error("wire version {0}, where this build speaks {VERSION}: nodes of two wire versions do not form one cluster (upgrade every node together)")]
    UnsupportedVersion(u8),
    /// A datagram kind this build does not know.
    #[error("unknown datagram kind {0}")]
    UnknownKind(u8),
    /// Sealed with a key this node does not hold (or sealed while this node
    /// has no keyring).
    #[error("sealed with key {0}, which this node does not hold")]
    UnknownKey(KeyId),
    /// Sealed, but authentication failed (tampered or corrupted; another
    /// cluster's label is found before, in the clear header).
    #[error("authentication failed: the datagram was tampered with or corrupted on its way")]
    Auth,
    /// Another cluster's label.
    #[error("it carries another cluster label (the sender runs with another --label)")]
    LabelMismatch,
    /// The payload did not decode.
    #[error("malformed payload: {0}")]
    Malformed(String),
}

/// A received datagram's payload and whether it was sealed.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened<'a> {
    /// Sent in plaintext.
    Plain(&'a [u8]),
    /// Sealed, and authentic.
    Sealed(Vec<u8>),
}

fn header(kind: u8, label: &[u8], capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + label.len() + capacity);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
    // Labels are validated to fit in a byte at configuration time.
    out.push(label.len() as u8);
    out.extend_from_slice(label);
    out
}

/// Wraps a gossip payload in plaintext.
pub fn plain_datagram(label: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = header(KIND_PLAIN, label.as_bytes(), payload.len());
    out.extend_from_slice(payload);
    out
}

/// Seals a gossip payload with the keyring's primary key and a fresh random nonce.
pub fn sealed_datagram(label: &str, ring: &Keyring, nonce: [u8; 24], payload: &[u8]) -> Vec<u8> {
    let mut out = header(
        KIND_SEALED,
        label.as_bytes(),
        crypto::DATAGRAM_OVERHEAD + payload.len(),
    );
    // The header is the associated data; a stack copy avoids an allocation
    // per packet (labels are at most MAX_LABEL_LEN bytes).
    let mut ad = [0u8; 5 + MAX_LABEL_LEN];
    let ad = &mut ad[..out.len()];
    ad.copy_from_slice(&out);
    crypto::seal_datagram(ring, nonce, ad, payload, &mut out);
    out
}

/// The key a sealed datagram names (`None` for plaintext or a short one);
/// read after [`open_datagram`] checked the envelope.
pub fn sealed_key_id(bytes: &[u8]) -> Option<crypto::KeyId> {
    let [_, _, _, kind, label_len, rest @ ..] = bytes else {
        return None;
    };
    if *kind != KIND_SEALED {
        return None;
    }
    crypto::datagram_key_id(rest.get(usize::from(*label_len)..)?)
}

/// Checks the envelope of a received datagram, opens it when sealed, and
/// returns its payload. Whether plaintext is acceptable is the caller's call.
pub fn open_datagram<'a>(
    label: &str,
    ring: Option<&Keyring>,
    bytes: &'a [u8],
) -> Result<Opened<'a>, WireError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(WireError::Oversized(bytes.len()));
    }
    let [m0, m1, version, kind, label_len, rest @ ..] = bytes else {
        return Err(WireError::Truncated);
    };
    if [*m0, *m1] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if *version != VERSION {
        return Err(WireError::UnsupportedVersion(*version));
    }
    let label_len = usize::from(*label_len);
    let (their_label, body) = rest
        .split_at_checked(label_len)
        .ok_or(WireError::Truncated)?;
    if their_label != label.as_bytes() {
        return Err(WireError::LabelMismatch);
    }
    match *kind {
        KIND_PLAIN => Ok(Opened::Plain(body)),
        KIND_SEALED => {
            let ad = &bytes[..bytes.len() - body.len()];
            let Some(ring) = ring else {
                return Err(crypto::datagram_key_id(body)
                    .map(WireError::UnknownKey)
                    .unwrap_or(WireError::Truncated));
            };
            crypto::open_datagram(ring, ad, body)
                .map(Opened::Sealed)
                .map_err(|e| match e {
                    OpenError::UnknownKey(id) => WireError::UnknownKey(id),
                    OpenError::Truncated => WireError::Truncated,
                    _ => WireError::Auth,
                })
        }
        other => Err(WireError::UnknownKind(other)),
    }
}

/// Encodes a stream message as one frame body (without the length prefix).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising our own plain types into a Vec cannot fail.
    postcard::to_allocvec(msg).unwrap_or_default()
}

/// Encodes `msg` (postcard) at the end of `out`, keeping `room` spare bytes
/// after it so that a tag appended later does not move the frame. Large
/// byte fields are appended as whole slices (postcard's `to_extend` copies
/// them byte by byte, several times slower on a 64 KiB payload).
pub fn encode_append<T: Serialize + ?Sized>(
    msg: &T,
    out: Vec<u8>,
    room: usize,
) -> Result<Vec<u8>, WireError> {
    postcard::serialize_with_flavor(msg, Append { out, room })
        .map_err(|e| WireError::Malformed(e.to_string()))
}

/// The postcard output of [`encode_append`].
struct Append {
    out: Vec<u8>,
    room: usize,
}

impl postcard::ser_flavors::Flavor for Append {
    type Output = Vec<u8>;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.out.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.out.reserve(bytes.len() + self.room);
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.out)
    }
}

/// Decodes a frame body; trailing bytes are an error.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    let (msg, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Prefixes a frame body with its length.
#[cfg(any(test, feature = "internals"))]
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Reads a frame length prefix and checks it against `max`.
pub fn frame_len(header: [u8; FRAME_HEADER], max: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        Err(WireError::Oversized(len))
    } else {
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;

    #[test]
    fn encode_append_matches_postcard_and_leaves_room() {
        let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let msgs: Vec<(u64, String, serde_bytes::ByteBuf)> = vec![
            (0, String::new(), serde_bytes::ByteBuf::new()),
            (300, "caller".into(), serde_bytes::ByteBuf::from(vec![7; 5])),
            (u64::MAX, "x".repeat(200), serde_bytes::ByteBuf::from(big)),
        ];
        for msg in &msgs {
            let out = encode_append(msg, b"head".to_vec(), 16).unwrap();
            assert_eq!(&out[..4], b"head");
            assert_eq!(out[4..], postcard::to_allocvec(msg).unwrap()[..]);
            if msg.2.len() > 1000 {
                assert!(out.capacity() >= out.len() + 16, "room for the tag");
            }
        }
    }

    fn open_plain<'a>(label: &str, bytes: &'a [u8]) -> Result<Opened<'a>, WireError> {
        open_datagram(label, None, bytes)
    }

    #[test]
    fn plaintext_round_trips_and_checks_the_label() {
        let bytes = plain_datagram("prod", b"hello");
        assert_eq!(open_plain("prod", &bytes).unwrap(), Opened::Plain(b"hello"));
        assert_eq!(open_plain("test", &bytes), Err(WireError::LabelMismatch));
    }

    #[test]
    fn sealed_round_trips_and_authenticates_the_header() {
        let ring = Keyring::new(SecretKey::generate());
        let bytes = sealed_datagram("prod", &ring, [7; 24], b"hello");
        assert_eq!(
            open_datagram("prod", Some(&ring), &bytes).unwrap(),
            Opened::Sealed(b"hello".to_vec())
        );
        // Without the key, or with another, the id names the key needed.
        let other = Keyring::new(SecretKey::generate());
        for ring in [None, Some(&other)] {
            assert_eq!(
                open_datagram("prod", ring, &bytes),
                Err(WireError::UnknownKey(ring_id(&bytes)))
            );
        }
        // No flipped bit yields an authentic payload; flipping the kind to
        // plaintext is a downgrade that the engine refuses when it requires
        // encryption.
        for i in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let opened = open_datagram("prod", Some(&ring), &bad);
            assert!(!matches!(opened, Ok(Opened::Sealed(_))), "bit {i}");
        }
    }

    fn ring_id(bytes: &[u8]) -> KeyId {
        crypto::datagram_key_id(&bytes[5 + 4..]).unwrap()
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        assert_eq!(open_plain("", b""), Err(WireError::Truncated));
        assert_eq!(open_plain("", b"XX\x01\x00\x00"), Err(WireError::BadMagic));
        assert_eq!(
            open_plain("", b"TB\x09\x00\x00"),
            Err(WireError::UnsupportedVersion(9))
        );
        assert_eq!(
            open_plain("", b"TB\x03\x07\x00"),
            Err(WireError::UnknownKind(7))
        );
        // Version 1 named the destination of a gossip header in full;
        // version 2 records had no incarnation (`era`).
        for old in [1u8, 2] {
            assert_eq!(
                open_plain("", &[b'T', b'B', old, 0, 0]),
                Err(WireError::UnsupportedVersion(old))
            );
        }
        assert_eq!(
            open_plain("abc", b"TB\x03\x00\x09ab"),
            Err(WireError::Truncated)
        );
        assert!(matches!(
            open_plain("", &vec![0u8; 5000]),
            Err(WireError::Oversized(5000))
        ));
        let ring = Keyring::new(SecretKey::generate());
        for len in 0..80 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = open_plain("x", &junk);
            let mut sealed_junk = b"TB\x03\x01\x00".to_vec();
            sealed_junk.extend_from_slice(&junk);
            let _ = open_datagram("", Some(&ring), &sealed_junk);
            let _ = decode::<(String, Vec<u64>)>(&junk);
        }
    }
}
