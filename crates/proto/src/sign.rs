//! Signatures: keys, the signed-bytes carrier, and the `Verified` type that proves a check.
//!
//! A signature always covers `DOMAIN || bytes`, where `DOMAIN` is a fixed ASCII prefix ending
//! in NUL that differs for every signed type, and `bytes` is the canonical encoding carried
//! verbatim on the wire. Carrying the bytes (rather than re-encoding a value) means the relay
//! forwards exactly what the author signed and a recipient checks exactly what was sent.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use bincode::de::Decoder;
use bincode::enc::Encoder;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::codec::{self, DecodeError, EncodeError};

/// Domain-separation prefix of envelope signatures.
pub const DOMAIN_ENVELOPE: &[u8] = b"cica-hotline/1/envelope\0";
/// Domain-separation prefix of receipt signatures.
pub const DOMAIN_RECEIPT: &[u8] = b"cica-hotline/1/receipt\0";
/// Domain-separation prefix of roster signatures.
pub const DOMAIN_ROSTER: &[u8] = b"cica-hotline/1/roster\0";
/// Domain-separation prefix of authentication proofs.
pub const DOMAIN_AUTH: &[u8] = b"cica-hotline/1/auth\0";

/// Why a signed value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The signed bytes do not decode, or break a rule of their type.
    #[error("signed bytes: {0}")]
    Decode(#[from] DecodeError),
    /// The author is not on the roster.
    #[error("unknown signer {0}")]
    UnknownSigner(crate::ParticipantId),
    /// The author is on the roster but revoked.
    #[error("signer {0} is revoked")]
    Revoked(crate::ParticipantId),
    /// The key that signed is not one the roster lists for the author (or not the pinned key).
    #[error("key {0} is not authorised for this signer")]
    KeyNotAuthorised(PublicKey),
    /// The key is not a valid, non-weak ed25519 point.
    #[error("malformed or weak public key")]
    BadKey,
    /// The signature does not verify (strict ed25519) over the domain prefix and bytes.
    #[error("signature does not verify")]
    BadSignature,
}

/// Keys that passed [`PublicKey::to_verifying_key`]'s checks, kept so that a roster key is
/// decompressed and checked once rather than at every signature (about a third of the cost
/// of verifying one). Only keys that passed are kept; a key's validity never changes, and
/// whether it is *authorised* is the roster's question, asked separately every time.
static CHECKED_KEYS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<[u8; 32], VerifyingKey>>,
> = std::sync::LazyLock::new(Default::default);

/// At most this many checked keys are kept (a roster has at most 256 participants, each
/// with a few keys); beyond it the cache starts again.
const CHECKED_KEYS_MAX: usize = 4_096;

fn checked_keys(
) -> std::sync::MutexGuard<'static, std::collections::HashMap<[u8; 32], VerifyingKey>> {
    // Nothing panics while the lock is held; a poisoned map is still a valid cache.
    CHECKED_KEYS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Verifies several decoded values' signatures together (ed25519 batch verification, about
/// half the cost of verifying each), then hands out [`Verified`] values.
///
/// A batch that fails is verified again one by one, so a bad signature is refused by name
/// and the good ones around it are still accepted. A batch that passes accepts what
/// `verify_strict` accepts (weak and non-canonical keys and non-canonical `S` are refused
/// the same way), except signatures that only the key's holder can make: an `R` of small
/// order, or with a small torsion component, which `verify_strict` refuses and the batch
/// equation can miss (docs/PROTOCOL.md, "Batch verification"). Such a signature forges
/// nothing: it is its author's own, and nodes, which verify one by one, quarantine it.
pub fn verify_decoded_batch<T: SignedPayload>(
    items: Vec<(&Signed<T>, T)>,
) -> Vec<Result<Verified<T>, VerifyError>> {
    let one_by_one = |items: Vec<(&Signed<T>, T)>| -> Vec<Result<Verified<T>, VerifyError>> {
        items
            .into_iter()
            .map(|(s, v)| s.verify_decoded(v))
            .collect()
    };
    if items.len() < 2 {
        return one_by_one(items);
    }
    let mut keys = Vec::with_capacity(items.len());
    let mut sigs = Vec::with_capacity(items.len());
    let mut messages = Vec::with_capacity(items.len());
    for (s, _) in &items {
        let Ok(key) = s.key.to_verifying_key() else {
            return one_by_one(items);
        };
        keys.push(key);
        sigs.push(ed25519_dalek::Signature::from_bytes(&s.signature.0));
        messages.push(s.signed_message());
    }
    let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    if ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_err() {
        return one_by_one(items);
    }
    items
        .into_iter()
        .map(|(s, value)| {
            Ok(Verified {
                value,
                signed: s.clone(),
            })
        })
        .collect()
}

/// An ed25519 public key, as its 32-byte compressed encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, bincode::Encode, bincode::Decode)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The dalek key, refusing invalid encodings and weak (small-order) points.
    pub fn to_verifying_key(&self) -> Result<VerifyingKey, VerifyError> {
        if let Some(k) = checked_keys().get(&self.0) {
            return Ok(*k);
        }
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| VerifyError::BadKey)?;
        // Refuse non-canonical encodings (y >= p), which other implementations reject, so every
        // implementation accepts the same rosters and signatures.
        if key.is_weak() || key.to_edwards().compress().to_bytes() != self.0 {
            return Err(VerifyError::BadKey);
        }
        let mut cache = checked_keys();
        if cache.len() >= CHECKED_KEYS_MAX {
            cache.clear();
        }
        cache.insert(self.0, key);
        Ok(key)
    }

    /// The public half of a signing key.
    pub fn of(key: &SigningKey) -> Self {
        Self(key.verifying_key().to_bytes())
    }

    /// Short fingerprint for logs: the first 8 bytes in hex.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

impl std::str::FromStr for PublicKey {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut b).map_err(|_| DecodeError::Invalid {
            field: "public key",
            reason: "must be 64 hexadecimal digits",
        })?;
        Ok(Self(b))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A 64-byte ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..8]))
    }
}

/// A 32-byte SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, bincode::Encode, bincode::Decode)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// SHA-256 over the concatenation of `parts`.
    pub fn of(parts: &[&[u8]]) -> Self {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        Self(h.finalize().into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({}…)", hex::encode(&self.0[..8]))
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A type that travels signed: its domain prefix, its size limit and its own rules.
pub trait SignedPayload: bincode::Encode + bincode::Decode<()> + Sized {
    /// Domain-separation prefix, distinct per type.
    const DOMAIN: &'static [u8];
    /// Largest canonical encoding accepted.
    const BYTES_MAX: usize;
    /// Checks the type's field rules and limits (called on both encode and decode).
    fn check(&self) -> Result<(), DecodeError>;
}

/// Canonical bytes of a `T`, the key that claims to have signed them, and the signature.
///
/// Nothing here has been checked: use a `verify*` method to get a [`Verified`].
pub struct Signed<T> {
    bytes: Vec<u8>,
    key: PublicKey,
    signature: Signature,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Self {
            bytes: self.bytes.clone(),
            key: self.key,
            signature: self.signature,
            _type: PhantomData,
        }
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes && self.key == other.key && self.signature == other.signature
    }
}
impl<T> Eq for Signed<T> {}

impl<T> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("type", &std::any::type_name::<T>())
            .field("bytes", &self.bytes.len())
            .field("key", &self.key)
            .finish()
    }
}

impl<T: SignedPayload> Signed<T> {
    /// Checks, encodes and signs a value.
    pub fn sign(value: &T, key: &SigningKey) -> Result<Self, EncodeError> {
        value.check()?;
        let bytes = codec::encode(value, T::BYTES_MAX)?;
        let signature = Signature(key.sign(&Self::message(&bytes)).to_bytes());
        Ok(Self {
            bytes,
            key: PublicKey::of(key),
            signature,
            _type: PhantomData,
        })
    }

    /// Reassembles a carrier from its three parts (e.g. read back from a store).
    pub fn from_parts(bytes: Vec<u8>, key: PublicKey, signature: Signature) -> Self {
        Self {
            bytes,
            key,
            signature,
            _type: PhantomData,
        }
    }

    fn message(bytes: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(T::DOMAIN.len() + bytes.len());
        m.extend_from_slice(T::DOMAIN);
        m.extend_from_slice(bytes);
        m
    }

    /// Exactly the bytes the signature covers: the domain prefix, then the canonical bytes.
    pub fn signed_message(&self) -> Vec<u8> {
        Self::message(&self.bytes)
    }

    /// The canonical bytes, as carried.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The key that claims to have signed.
    pub fn key(&self) -> PublicKey {
        self.key
    }

    /// The signature.
    pub fn signature(&self) -> Signature {
        self.signature
    }

    /// SHA-256 over exactly what the signature covers; receipts name messages by it.
    pub fn digest(&self) -> Digest {
        Digest::of(&[T::DOMAIN, &self.bytes])
    }

    /// Decodes the payload without checking the signature, to learn who claims to be its
    /// author. The result must not be trusted or shown.
    pub fn decode_unverified(&self) -> Result<T, DecodeError> {
        let value: T = codec::decode(&self.bytes, T::BYTES_MAX)?;
        value.check()?;
        Ok(value)
    }

    /// Verifies the signature (strict ed25519) with `expected`, which must be the carried key.
    pub fn verify_with(&self, expected: &PublicKey) -> Result<Verified<T>, VerifyError> {
        if &self.key != expected {
            return Err(VerifyError::KeyNotAuthorised(self.key));
        }
        let value = self.decode_unverified()?;
        self.verify_decoded(value)
    }

    /// Verifies the signature over already decoded bytes, with the carried key; the caller
    /// has checked that the key is authorised for the author.
    pub(crate) fn verify_decoded(&self, value: T) -> Result<Verified<T>, VerifyError> {
        let key = self.key.to_verifying_key()?;
        let sig = ed25519_dalek::Signature::from_bytes(&self.signature.0);
        key.verify_strict(&self.signed_message(), &sig)
            .map_err(|_| VerifyError::BadSignature)?;
        Ok(Verified {
            value,
            signed: self.clone(),
        })
    }
}

impl<T> bincode::Encode for Signed<T> {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), bincode::error::EncodeError> {
        self.bytes.encode(e)?;
        self.key.encode(e)?;
        self.signature.encode(e)
    }
}

impl<T, C> bincode::Decode<C> for Signed<T> {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, bincode::error::DecodeError> {
        Ok(Self {
            bytes: Vec::<u8>::decode(d)?,
            key: PublicKey::decode(d)?,
            signature: Signature::decode(d)?,
            _type: PhantomData,
        })
    }
}

impl<'de, T, C> bincode::BorrowDecode<'de, C> for Signed<T> {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = C>>(
        d: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        <Self as bincode::Decode<C>>::decode(d)
    }
}

/// A value whose signature has been checked against an authorised key and whose fields obey
/// the protocol's rules. Only this module's `verify*` functions make one.
#[derive(Clone, Debug)]
pub struct Verified<T> {
    value: T,
    signed: Signed<T>,
}

impl<T> Verified<T> {
    /// The signed carrier, to store or forward unchanged.
    pub fn signed(&self) -> &Signed<T> {
        &self.signed
    }

    /// The checked value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// Splits into the value and its carrier.
    pub fn into_parts(self) -> (T, Signed<T>) {
        (self.value, self.signed)
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 19 encodings with y >= p (p = 2^255 - 19) are non-canonical: none may be accepted.
    #[test]
    fn non_canonical_keys_are_refused() {
        let mut decodable = 0;
        for k in 0u8..19 {
            // p + k, little-endian: 0xed + k, then 0xff…, top byte 0x7f.
            let mut b = [0xffu8; 32];
            b[0] = 0xed + k;
            b[31] = 0x7f;
            if VerifyingKey::from_bytes(&b).is_ok() {
                decodable += 1;
            }
            assert_eq!(
                PublicKey(b).to_verifying_key().err(),
                Some(VerifyError::BadKey),
                "y = p + {k}"
            );
        }
        // Some of them are points dalek would otherwise accept.
        assert!(decodable > 0);
    }
}
