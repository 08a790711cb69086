//! On-the-wire envelopes. A datagram is `magic | version | key id | body`;
//! key id 0 means plaintext, whose body is `label length | label | payload`.
//! Stream frames are a 4-byte big-endian length and a postcard message.
//! Every decoder is total: bad bytes give a [`WireError`], never a panic.

use serde::{Deserialize, Serialize};

/// First bytes of every libtribe datagram.
pub const MAGIC: [u8; 2] = *b"TB";
/// Wire format version.
pub const VERSION: u8 = 1;
/// Key id meaning "not encrypted".
pub const PLAINTEXT_KEY_ID: u8 = 0;
/// Longest cluster label, in bytes.
pub const MAX_LABEL_LEN: usize = 64;
/// Largest datagram sent or accepted, envelope included.
pub const MAX_DATAGRAM: usize = 1400;
/// Room left in a datagram for the envelope (header, label or nonce and tag).
pub const ENVELOPE_BUDGET: usize = 4 + 1 + MAX_LABEL_LEN + 8;
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
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// Sealed with a key this node does not have, or sealed when it expects plaintext.
    #[error("unknown key id {0}")]
    UnknownKey(u8),
    /// Plaintext from another cluster.
    #[error("cluster label mismatch")]
    LabelMismatch,
    /// The payload did not decode.
    #[error("malformed payload: {0}")]
    Malformed(String),
}

/// Wraps a gossip payload for sending.
pub fn seal_datagram(label: &str, payload: &[u8]) -> Vec<u8> {
    let label = label.as_bytes();
    let mut out = Vec::with_capacity(5 + label.len() + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(PLAINTEXT_KEY_ID);
    // Labels are validated to fit in a byte at configuration time.
    out.push(label.len() as u8);
    out.extend_from_slice(label);
    out.extend_from_slice(payload);
    out
}

/// Checks the envelope of a received datagram and returns its payload.
pub fn open_datagram<'a>(label: &str, bytes: &'a [u8]) -> Result<&'a [u8], WireError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(WireError::Oversized(bytes.len()));
    }
    let [m0, m1, version, key_id, label_len, rest @ ..] = bytes else {
        return Err(WireError::Truncated);
    };
    if [*m0, *m1] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if *version != VERSION {
        return Err(WireError::UnsupportedVersion(*version));
    }
    if *key_id != PLAINTEXT_KEY_ID {
        return Err(WireError::UnknownKey(*key_id));
    }
    let label_len = usize::from(*label_len);
    let (their_label, payload) = rest
        .split_at_checked(label_len)
        .ok_or(WireError::Truncated)?;
    if their_label != label.as_bytes() {
        return Err(WireError::LabelMismatch);
    }
    Ok(payload)
}

/// Encodes a stream message as one frame body (without the length prefix).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising our own plain types into a Vec cannot fail.
    postcard::to_allocvec(msg).unwrap_or_default()
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

    #[test]
    fn round_trips_and_checks_the_label() {
        let sealed = seal_datagram("prod", b"hello");
        assert_eq!(open_datagram("prod", &sealed).unwrap(), b"hello");
        assert_eq!(
            open_datagram("test", &sealed),
            Err(WireError::LabelMismatch)
        );
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        assert_eq!(open_datagram("", b""), Err(WireError::Truncated));
        assert_eq!(
            open_datagram("", b"XX\x01\x00\x00"),
            Err(WireError::BadMagic)
        );
        assert_eq!(
            open_datagram("", b"TB\x09\x00\x00"),
            Err(WireError::UnsupportedVersion(9))
        );
        assert_eq!(
            open_datagram("abc", b"TB\x01\x00\x09ab"),
            Err(WireError::Truncated)
        );
        assert!(matches!(
            open_datagram("", &vec![0u8; 5000]),
            Err(WireError::Oversized(5000))
        ));
        for len in 0..40 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = open_datagram("x", &junk);
            let _ = decode::<(String, Vec<u64>)>(&junk);
        }
    }
}
