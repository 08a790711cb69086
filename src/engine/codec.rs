//! foca's wire codec, with two changes from foca's own postcard codec:
//!
//! - every identity decoded from a gossip packet is screened (see
//!   [`Shared::screen_identity`]) before foca sees it, so a forged generation
//!   never enters the member table;
//! - a header names its destination by fingerprint (8 bytes) instead of by
//!   full identity. The destination is always the receiver, which only needs
//!   to tell "me", "an earlier me" (same name: foca accepts an announce to
//!   it) and "someone else" apart; sending the whole identity in every probe
//!   and ack was a third of the bytes at rest.

use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut};
use foca::{Codec, Header, Member, Message, PostcardCodec};

use super::delta::{lock, Shared};
use super::identity::NodeId;
use super::name_claims::Heard;

/// Why a packet was not decoded.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The bytes do not decode.
    #[error("decode: {0}")]
    Decode(#[from] postcard::Error),
    /// An identity in it was refused.
    #[error("identity refused: {0:?}")]
    Refused(NodeId),
    /// It says this node is down. Such notices never reach foca, which
    /// would renew at once whatever the reason: the engine asks the sender
    /// for its member list instead (see [`super::name_claims`]).
    #[error("a notice that this node is down (asked about, not taken)")]
    DownNotice,
}

/// A destination on the wire (see [`NodeId::dst_print`]).
type DstPrint = [u8; 8];

/// [`PostcardCodec`] for members, the identity screen, and fingerprinted
/// destinations.
pub struct GuardedCodec {
    shared: Arc<Mutex<Shared>>,
    /// Our identity as last seen in `shared`, and its fingerprint.
    own: NodeId,
    own_print: DstPrint,
    /// The sender of the packet being decoded.
    src: Option<std::net::SocketAddr>,
    /// When each identity last spoke to this node itself (engine ms).
    heard: std::collections::HashMap<NodeId, u64>,
}

/// Identities [`GuardedCodec`] remembers having heard; past it, it starts
/// over (a flood of forged senders costs it its memory, nothing else).
const MAX_HEARD: usize = 4096;

impl GuardedCodec {
    /// A codec screening against `shared`.
    pub fn new(shared: Arc<Mutex<Shared>>) -> Self {
        let own = lock(&shared).own.clone();
        let own_print = own.dst_print();
        GuardedCodec {
            shared,
            own,
            own_print,
            src: None,
            heard: std::collections::HashMap::new(),
        }
    }

    fn screen(&self, id: &NodeId, heard: Heard) -> Result<(), GuardError> {
        if lock(&self.shared).screen_identity(id, heard) {
            Ok(())
        } else {
            Err(GuardError::Refused(id.clone()))
        }
    }

    /// The identity a received destination stands for: ours when the whole
    /// fingerprint matches; an earlier us (our name, generation 0) when only
    /// the name does; otherwise one that matches no node.
    fn resolve_dst(&mut self, print: DstPrint) -> NodeId {
        {
            let sh = lock(&self.shared);
            if self.own != sh.own {
                self.own = sh.own.clone();
                self.own_print = self.own.dst_print();
            }
        }
        let own = &self.own;
        if print == self.own_print {
            own.clone()
        } else if print[..4] == self.own_print[..4] {
            NodeId::new(own.name.clone(), own.addr, 0)
        } else {
            NodeId::new("", own.addr, own.generation)
        }
    }
}

/// foca's header as it travels: the destination by fingerprint.
type WireHeader = (NodeId, u16, DstPrint, Message<NodeId>);

/// Serializes postcard into a [`BufMut`], failing when it is full.
struct IntoBuf<B>(B);

impl<B: BufMut> postcard::ser_flavors::Flavor for IntoBuf<B> {
    type Output = ();

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.try_extend(&[byte])
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if self.0.remaining_mut() < data.len() {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.0.put_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// A foca `Ping` from `src` to `dst` with one update piggybacked: `dst`
/// suspected at `incarnation`. `dst` refutes the suspicion before it
/// answers, so its `Ack` carries the refuting incarnation back to `src`
/// (see `buddy.rs`). The sender's incarnation is left at 0: an older
/// incarnation than the receiver knows changes nothing there.
pub fn suspicion_ping(
    src: &NodeId,
    dst: &NodeId,
    incarnation: foca::Incarnation,
) -> Result<Vec<u8>, GuardError> {
    let mut buf = Vec::with_capacity(128);
    let header: (&NodeId, u16, DstPrint, Message<NodeId>) =
        (src, 0, dst.dst_print(), Message::Ping(0));
    postcard::serialize_with_flavor(&header, IntoBuf(&mut buf))?;
    buf.put_u16(1);
    let suspect = Member::new(dst.clone(), incarnation, foca::State::Suspect);
    PostcardCodec.encode_member(&suspect, &mut buf)?;
    Ok(buf)
}

impl Codec<NodeId> for GuardedCodec {
    type Error = GuardError;

    fn encode_header(
        &mut self,
        header: &Header<NodeId>,
        buf: impl BufMut,
    ) -> Result<(), GuardError> {
        let wire = (
            &header.src,
            header.src_incarnation,
            header.dst.dst_print(),
            &header.message,
        );
        Ok(postcard::serialize_with_flavor(&wire, IntoBuf(buf))?)
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<NodeId>, GuardError> {
        // foca hands a contiguous buffer.
        let remaining = buf.remaining();
        let (wire, rest): (WireHeader, &[u8]) = postcard::take_from_bytes(buf.chunk())?;
        let used = remaining - rest.len();
        buf.advance(used);
        let (src, src_incarnation, print, message) = wire;
        let now = {
            let mut sh = lock(&self.shared);
            if !sh.screen_identity(&src, Heard::Speaking) {
                return Err(GuardError::Refused(src));
            }
            sh.last_sender = Some(src.addr);
            sh.now_ms
        };
        self.src = Some(src.addr);
        if self.heard.len() >= MAX_HEARD && !self.heard.contains_key(&src) {
            self.heard.clear();
        }
        self.heard.insert(src.clone(), now);
        if message == Message::TurnUndead {
            let mut sh = lock(&self.shared);
            if !sh.claims.pass_down_notices {
                sh.note_down_notice(src.addr);
                return Err(GuardError::DownNotice);
            }
        }
        Ok(Header {
            src,
            src_incarnation,
            dst: self.resolve_dst(print),
            message,
        })
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
        let heard = Heard::listed(member.state());
        self.screen(member.id(), heard)?;
        if heard == Heard::Down {
            let mut sh = lock(&self.shared);
            if *member.id() == sh.own && !sh.claims.pass_down_notices {
                if let Some(src) = self.src {
                    sh.note_down_notice(src);
                }
                return Err(GuardError::DownNotice);
            }
            // A third party's verdict on a member that spoke to this node
            // itself within a suspicion timeout (so after any suspicion
            // behind the verdict began) is taken as a suspicion, which the
            // member refutes if it lives: a node that could not hear (a
            // one-way cut) or was cut off declared healthy peers down, and
            // foca takes a down notice as final. The member's own goodbye
            // comes from its address and stays one.
            let recent = self
                .heard
                .get(member.id())
                .is_some_and(|&t| sh.now_ms.saturating_sub(t) <= sh.verdict_window_ms);
            if recent && self.src != Some(member.id().addr) {
                if sh.softened.len() < MAX_HEARD {
                    sh.softened.push((member.id().clone(), member.incarnation()));
                }
                return Ok(Member::new(
                    member.id().clone(),
                    member.incarnation(),
                    foca::State::Suspect,
                ));
            }
        }
        Ok(member)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, port: u16, generation: u64) -> NodeId {
        NodeId::new(name, ([127, 0, 0, 1], port).into(), generation)
    }

    fn codec_of(own: NodeId) -> GuardedCodec {
        GuardedCodec::new(crate::engine::delta::tests::shared_of(own))
    }

    fn ping(src: &NodeId, dst: &NodeId) -> Header<NodeId> {
        Header {
            src: src.clone(),
            src_incarnation: 3,
            dst: dst.clone(),
            message: Message::Ping(7),
        }
    }

    fn round_trip(codec: &mut GuardedCodec, header: &Header<NodeId>) -> (usize, Header<NodeId>) {
        let mut buf = Vec::new();
        codec.encode_header(header, &mut buf).unwrap();
        let mut read = &buf[..];
        let decoded = codec.decode_header(&mut read).unwrap();
        assert!(read.is_empty(), "the whole header was read");
        (buf.len(), decoded)
    }

    #[test]
    fn a_suspicion_ping_decodes_at_the_suspect_as_a_ping_carrying_its_suspicion() {
        let me = id("node-b", 40_001, 1_764_590_000_000);
        let peer = id("node-a", 40_000, 1_764_590_000_123);
        let packet = suspicion_ping(&peer, &me, 5).unwrap();
        let mut codec = codec_of(me.clone());
        let mut read = &packet[..];
        let header = codec.decode_header(&mut read).unwrap();
        assert_eq!(
            header,
            Header {
                src: peer,
                src_incarnation: 0,
                dst: me.clone(),
                message: Message::Ping(0),
            }
        );
        assert_eq!(read.get_u16(), 1, "one update piggybacked");
        let update = codec.decode_member(&mut read).unwrap();
        assert_eq!(update, Member::new(me, 5, foca::State::Suspect));
        assert!(read.is_empty());
    }

    #[test]
    fn names_no_node_may_take_are_refused_as_sender_and_as_member() {
        let me = id("node-b", 40_001, 1_764_590_000_000);
        let mut codec = codec_of(me.clone());
        for name in [
            "",
            "a\0b",
            "\u{1b}[31mRED\r\nFAKE",
            "\u{202e}evil",
            &"n".repeat(1200),
        ] {
            let bad = id(name, 40_002, 1_764_590_000_000);
            let mut buf = Vec::new();
            codec.encode_header(&ping(&bad, &me), &mut buf).unwrap();
            assert!(codec.decode_header(&mut &buf[..]).is_err(), "{name:?}");
            let mut buf = Vec::new();
            let member = Member::new(bad, 0, foca::State::Alive);
            codec.encode_member(&member, &mut buf).unwrap();
            assert!(codec.decode_member(&mut &buf[..]).is_err(), "{name:?}");
        }
        let refused = lock(&codec.shared).counters.identities_refused;
        assert_eq!(refused, 10);
    }

    #[test]
    fn a_header_to_us_decodes_to_our_identity_and_is_smaller_than_foca_s() {
        let me = id("node-b", 40_001, 1_764_590_000_000);
        let peer = id("node-a", 40_000, 1_764_590_000_123);
        let mut codec = codec_of(me.clone());
        let header = ping(&peer, &me);
        let (len, decoded) = round_trip(&mut codec, &header);
        assert_eq!(decoded, header);
        let mut foca_bytes = Vec::new();
        PostcardCodec
            .encode_header(&header, &mut foca_bytes)
            .unwrap();
        // The destination travels as 8 bytes instead of a whole identity.
        assert!(len + 10 < foca_bytes.len(), "{len} vs {}", foca_bytes.len());
    }

    #[test]
    fn an_earlier_us_keeps_our_name_and_anyone_else_matches_no_one() {
        let me = id("node-b", 40_001, 1_764_590_000_000);
        let peer = id("node-a", 40_000, 1_764_590_000_123);
        let mut codec = codec_of(me.clone());

        let earlier = NodeId::new(me.name.clone(), me.addr, me.generation - 5);
        let (_, decoded) = round_trip(&mut codec, &ping(&peer, &earlier));
        assert_ne!(decoded.dst, me, "not for this generation");
        assert_eq!(decoded.dst.name, me.name, "but an announce to it is ours");

        let moved = id("node-b", 40_002, me.generation);
        let (_, decoded) = round_trip(&mut codec, &ping(&peer, &moved));
        assert_ne!(decoded.dst, me);

        let (_, decoded) = round_trip(&mut codec, &ping(&peer, &id("node-c", 40_001, 1)));
        assert_ne!(decoded.dst, me);
        assert_ne!(decoded.dst.name, me.name);
    }

    #[test]
    fn the_destination_follows_a_new_generation() {
        let me = id("node-b", 40_001, 1_764_590_000_000);
        let peer = id("node-a", 40_000, 1_764_590_000_123);
        let mut codec = codec_of(me.clone());
        let (_, decoded) = round_trip(&mut codec, &ping(&peer, &me));
        assert_eq!(decoded.dst, me);
        let renewed = NodeId::new(me.name.clone(), me.addr, me.generation + 1);
        lock(&codec.shared).own = renewed.clone();
        let (_, decoded) = round_trip(&mut codec, &ping(&peer, &renewed));
        assert_eq!(decoded.dst, renewed);
        let (_, decoded) = round_trip(&mut codec, &ping(&peer, &me));
        assert_ne!(decoded.dst, renewed);
    }

    #[test]
    fn truncated_or_full_buffers_are_errors() {
        let me = id("node-b", 40_001, 1_764_590_000_000);
        let peer = id("node-a", 40_000, 1_764_590_000_123);
        let mut codec = codec_of(me.clone());
        let mut buf = Vec::new();
        codec.encode_header(&ping(&peer, &me), &mut buf).unwrap();
        for cut in 0..buf.len() {
            assert!(codec.decode_header(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut small = [0u8; 12];
        assert!(codec
            .encode_header(&ping(&peer, &me), &mut small[..])
            .is_err());
    }
}
