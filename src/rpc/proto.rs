//! Messages of the call channel. One stream carries many calls at once, each
//! tagged with the caller's id, so a slow call never holds up another.

use serde::{Deserialize, Serialize};

use crate::records::PluginKind;
pub use serde_bytes::ByteBuf;

/// Why a host did not hand a call to a handler. Each of these is safe to
/// retry on another host: the call did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The host does not serve that plugin (any more).
    NoSuchPlugin,
    /// The host is at its bound of calls in flight.
    Overloaded,
    /// The host is stopping.
    ShuttingDown,
    /// The payload is over the host's limit.
    TooLarge,
    /// The payload is over the host's limit, which it names (the caller's
    /// own may differ).
    TooLargeFor {
        /// The host's `max_payload`.
        limit: u64,
    },
}

/// One frame of the call channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcMsg {
    /// A call.
    Call {
        /// Caller-chosen id, unique on the stream.
        id: u64,
        /// Calling node.
        caller: String,
        /// Tribe the call was addressed through.
        tribe: String,
        /// Plugin name.
        plugin: String,
        /// Plugin version.
        version: String,
        /// Plugin kind.
        kind: PluginKind,
        /// Milliseconds the caller still waits.
        budget_ms: u32,
        /// Payload.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// The handler's answer.
    Reply {
        /// The call's id.
        id: u64,
        /// Bytes, or the handler's error.
        result: Result<ByteBuf, (String, String)>,
    },
    /// The call did not reach a handler.
    Refused {
        /// The call's id.
        id: u64,
        /// Why.
        why: Refusal,
    },
    /// Bytes of a plugin artifact, asked by hash.
    Fetch {
        /// Caller-chosen id.
        id: u64,
        /// SHA-256 of the artifact.
        sha256: [u8; 32],
        /// First byte wanted.
        offset: u64,
        /// Most bytes wanted.
        len: u32,
    },
    /// An artifact chunk (empty past the end).
    Chunk {
        /// The fetch's id.
        id: u64,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The caller gave up on a call before its deadline: the host stops its
    /// handler (or tells it the call is abandoned) and frees the call's
    /// place at once, and sends no answer.
    Cancel {
        /// The call's id.
        id: u64,
    },
    /// The host ends the stream (its keys changed, or it stops): the caller
    /// puts no new call on it and closes its writing side once what it
    /// queued is out. The host reads every request up to that end, answers
    /// them and the calls it is running, and then closes.
    Goodbye,
}

impl RpcMsg {
    /// The id of the call or fetch the frame belongs to, to change it when
    /// a request is sent again on another stream (`None` for a goodbye).
    pub fn id_mut(&mut self) -> Option<&mut u64> {
        match self {
            RpcMsg::Call { id, .. }
            | RpcMsg::Reply { id, .. }
            | RpcMsg::Refused { id, .. }
            | RpcMsg::Fetch { id, .. }
            | RpcMsg::Chunk { id, .. }
            | RpcMsg::Cancel { id } => Some(id),
            RpcMsg::Goodbye => None,
        }
    }
}
