//! Pins the wire format: published known answers for the AEAD, and the
//! current implementation against the previous one (the `chacha20poly1305`
//! crate, kept as a dev-dependency) on random inputs, so a node on either
//! side of an upgrade opens what the other seals.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
use hkdf::Hkdf;
use proptest::prelude::*;
use sha2::Sha256;

use super::aead::{self, ChaChaKey};
use super::*;

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    hex::decode(s).expect("test vector hex")
}

/// RFC 8439 section 2.8.2 and the XChaCha draft's appendix A.3.1 share the
/// key, associated data and plaintext.
const SUNSCREEN: &[u8] = b"Ladies and Gentlemen of the class of '99: \
    If I could offer you only one tip for the future, sunscreen would be it.";

fn rfc_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = 0x80 + i as u8;
    }
    key
}

const RFC_AD: &str = "50515253c0c1c2c3c4c5c6c7";

#[test]
fn rfc8439_aead_known_answer() {
    let nonce: [u8; 12] = unhex("070000004041424344454647").try_into().unwrap();
    let want_ct = unhex(
        "d31a8d34648e60db7b86afbc53ef7ec2 a4aded51296e08fea9e2b5a736ee62d6
         3dbea45e8ca9671282fafb69da92728b 1a71de0a9e060b2905d6a5b67ecd3b36
         92ddbd7f2d778b8c9803aee328091b58 fab324e4fad675945585808b4831d7bc
         3ff4def08e4b7a9de576d26586cec64b 6116",
    );
    let want_tag = unhex("1ae10b594f09e26a7e902ecbd0600691");
    let key = ChaChaKey::new(&rfc_key());
    let ad = unhex(RFC_AD);
    let mut buf = SUNSCREEN.to_vec();
    let tag = key.seal_in_place(nonce, &ad, &mut buf).unwrap();
    assert_eq!(buf, want_ct);
    assert_eq!(tag.to_vec(), want_tag);
    key.open_in_place(nonce, &ad, &mut buf, &tag).unwrap();
    assert_eq!(buf, SUNSCREEN);
    // One flipped tag bit and it does not open.
    let mut bad_tag = tag;
    bad_tag[0] ^= 1;
    let mut ct = want_ct.clone();
    assert!(key.open_in_place(nonce, &ad, &mut ct, &bad_tag).is_err());
}

#[test]
fn xchacha_draft_known_answer() {
    // draft-irtf-cfrg-xchacha-03, appendix A.3.1.
    let nonce: [u8; 24] = unhex("404142434445464748494a4b4c4d4e4f5051525354555657")
        .try_into()
        .unwrap();
    let want_ct = unhex(
        "bd6d179d3e83d43b9576579493c0e939 572a1700252bfaccbed2902c21396cbb
         731c7f1b0b4aa6440bf3a82f4eda7e39 ae64c6708c54c216cb96b72e1213b452
         2f8c9ba40db5d945b11b69b982c1bb9e 3f3fac2bc369488f76b2383565d3fff9
         21f9664c97637da9768812f615c68b13 b52e",
    );
    let want_tag = unhex("c0875924c1c7987947deafd8780acf49");
    let ad = unhex(RFC_AD);
    let (key, short) = aead::xchacha(&rfc_key(), &nonce);
    let mut buf = SUNSCREEN.to_vec();
    let tag = key.seal_in_place(short, &ad, &mut buf).unwrap();
    assert_eq!(buf, want_ct);
    assert_eq!(tag.to_vec(), want_tag);

    // The same through the datagram format: id | nonce | ciphertext | tag.
    let ring = Keyring::new(SecretKey::from_bytes(rfc_key()));
    let mut out = Vec::new();
    seal_datagram(&ring, nonce, &ad, SUNSCREEN, &mut out);
    let want = [
        &ring.primary_id().0.to_be_bytes()[..],
        &nonce,
        &want_ct,
        &want_tag,
    ]
    .concat();
    assert_eq!(out, want);
    assert_eq!(open_datagram(&ring, &ad, &out).unwrap(), SUNSCREEN);
}

/// A stream direction's key as the session spec derives it, computed here
/// independently of `StreamCipher`.
fn session_key(key: &[u8; 32], i: &[u8; 32], r: &[u8; 32], dir: &[u8], label: &[u8]) -> [u8; 32] {
    let salt = [&i[..], &r[..]].concat();
    let hkdf = Hkdf::<Sha256>::new(Some(&salt), key);
    let mut okm = [0u8; 32];
    hkdf.expand_multi_info(&[b"libtribe stream v1 ", dir, label], &mut okm)
        .unwrap();
    okm
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn datagrams_match_the_previous_implementation(
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 24]>(),
        ad in proptest::collection::vec(any::<u8>(), 0..80),
        msg in proptest::collection::vec(any::<u8>(), 0..3000),
    ) {
        let ring = Keyring::new(SecretKey::from_bytes(key));
        let mut new = Vec::new();
        seal_datagram(&ring, nonce, &ad, &msg, &mut new);
        let old = XChaCha20Poly1305::new(&key.into())
            .encrypt(&nonce.into(), Payload { msg: &msg, aad: &ad })
            .unwrap();
        prop_assert_eq!(&new[..4], &ring.primary_id().0.to_be_bytes()[..]);
        prop_assert_eq!(&new[4..28], &nonce[..]);
        prop_assert_eq!(&new[28..], &old[..]);
        // Each opens what the other sealed.
        prop_assert_eq!(open_datagram(&ring, &ad, &new).unwrap(), msg.clone());
        let opened = XChaCha20Poly1305::new(&key.into())
            .decrypt(&nonce.into(), Payload { msg: &new[28..], aad: &ad })
            .unwrap();
        prop_assert_eq!(opened, msg);
    }

    #[test]
    fn stream_frames_match_the_previous_implementation(
        key in any::<[u8; 32]>(),
        i in any::<[u8; 32]>(),
        r in any::<[u8; 32]>(),
        label in proptest::collection::vec(any::<u8>(), 0..20),
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2000), 1..5),
    ) {
        let secret = SecretKey::from_bytes(key);
        let mut init = StreamCipher::new(&secret, Role::Initiator, &i, &r, &label);
        let mut resp = StreamCipher::new(&secret, Role::Responder, &i, &r, &label);
        let i2r = ChaCha20Poly1305::new(&session_key(&key, &i, &r, b"i2r", &label).into());
        let r2i = ChaCha20Poly1305::new(&session_key(&key, &i, &r, b"r2i", &label).into());
        for (n, frame) in frames.iter().enumerate() {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&(n as u64).to_be_bytes());
            let new = init.seal(frame).unwrap();
            let old = i2r.encrypt(&nonce.into(), &frame[..]).unwrap();
            prop_assert_eq!(&new, &old);
            prop_assert_eq!(&resp.open(&old).unwrap(), frame);
            let old_back = r2i.encrypt(&nonce.into(), &frame[..]).unwrap();
            prop_assert_eq!(&init.open(&old_back).unwrap(), frame);
            prop_assert_eq!(resp.seal(frame).unwrap(), old_back);
        }
    }
}
