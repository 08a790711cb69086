//! foca's wire codec with a guard: every identity decoded from a gossip
//! packet is screened (see [`Shared::screen_identity`]) before foca sees it,
//! so a forged generation never enters the member table.

use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut};
use foca::{Codec, Header, Member, PostcardCodec};

use super::delta::{lock, Shared};
use super::identity::NodeId;

/// Why a packet was not decoded.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The bytes do not decode.
    #[error("decode: {0}")]
    Decode(#[from] postcard::Error),
    /// An identity in it was refused.
    #[error("identity refused: {0:?}")]
    Refused(NodeId),
}

/// [`PostcardCodec`] plus the identity screen.
pub struct GuardedCodec {
    shared: Arc<Mutex<Shared>>,
}

impl GuardedCodec {
    /// A codec screening against `shared`.
    pub fn new(shared: Arc<Mutex<Shared>>) -> Self {
        GuardedCodec { shared }
    }

    fn screen(&self, id: &NodeId) -> Result<(), GuardError> {
        if lock(&self.shared).screen_identity(id) {
            Ok(())
        } else {
            Err(GuardError::Refused(id.clone()))
        }
    }
}

impl Codec<NodeId> for GuardedCodec {
    type Error = GuardError;

    fn encode_header(
        &mut self,
        header: &Header<NodeId>,
        buf: impl BufMut,
    ) -> Result<(), GuardError> {
        Ok(PostcardCodec.encode_header(header, buf)?)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<NodeId>, GuardError> {
        let header: Header<NodeId> = PostcardCodec.decode_header(buf)?;
        self.screen(&header.src)?;
        Ok(header)
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeId>,
        buf: impl BufMut,
    ) -> Result<(), GuardError> {
        Ok(PostcardCodec.encode_member(member, buf)?)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<NodeId>, GuardError> {
        let member: Member<NodeId> = PostcardCodec.decode_member(buf)?;
        self.screen(member.id())?;
        Ok(member)
    }
}
