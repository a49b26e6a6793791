//! The roster: who takes part, in what role, with which keys, in which groups.
//!
//! It is signed by the Secretariat's roster key, which every node pins. A roster replaces
//! another only if its version is higher. Revoking a key or a participant is a new roster.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::codec::DecodeError;
use crate::envelope::Envelope;
use crate::id::ParticipantId;
use crate::limits::{
    KEYS_PER_PARTICIPANT_MAX, NAME_BYTES_MAX, ROSTER_BYTES_MAX, ROSTER_GROUPS_MAX,
    ROSTER_PARTICIPANTS_MAX,
};
use crate::receipt::Receipt;
use crate::sign::{PublicKey, Signed, SignedPayload, Verified, VerifyError, DOMAIN_ROSTER};
use crate::PROTOCOL_VERSION;

/// A participant's standing in CICA.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    bincode::Encode,
    bincode::Decode,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Role {
    /// Tag 0: a member state.
    Member,
    /// Tag 1: an observer state or organisation.
    Observer,
    /// Tag 2: the Secretariat.
    Secretariat,
}

/// One roster entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Participant {
    /// Short code.
    pub id: ParticipantId,
    /// Display name.
    pub name: String,
    /// Member, observer or Secretariat.
    pub role: Role,
    /// Keys that may sign for this participant (more than one during a rotation).
    pub keys: Vec<PublicKey>,
    /// A revoked participant can neither connect nor send, and its signatures are refused.
    pub revoked: bool,
}

/// A named set of participants, e.g. the coordinators of a CBM area.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Group {
    /// Group name (as addressed in an audience).
    pub name: String,
    /// Member participant ids.
    pub members: Vec<ParticipantId>,
}

/// The network's membership list, as signed by the Secretariat roster key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Roster {
    /// Protocol version.
    pub protocol_version: u16,
    /// Roster version: strictly increasing; a node only accepts a higher one.
    pub version: u64,
    /// When the roster was issued, in milliseconds since the Unix epoch.
    pub issued_at_ms: u64,
    /// The network's name, e.g. `CICA`.
    pub network: String,
    /// Everyone who takes part.
    pub participants: Vec<Participant>,
    /// Named groups.
    pub groups: Vec<Group>,
}

impl Roster {
    /// The entry for `id`, revoked or not.
    pub fn participant(&self, id: &ParticipantId) -> Option<&Participant> {
        self.participants.iter().find(|p| &p.id == id)
    }

    /// The group called `name`.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The entry for `id` if it exists and is not revoked.
    pub fn active(&self, id: &ParticipantId) -> Result<&Participant, VerifyError> {
        let p = self
            .participant(id)
            .ok_or_else(|| VerifyError::UnknownSigner(id.clone()))?;
        if p.revoked {
            return Err(VerifyError::Revoked(id.clone()));
        }
        Ok(p)
    }

    /// Checks that `key` may sign for `id` right now.
    pub fn authorise(&self, id: &ParticipantId, key: &PublicKey) -> Result<(), VerifyError> {
        let p = self.active(id)?;
        if !p.keys.contains(key) {
            return Err(VerifyError::KeyNotAuthorised(*key));
        }
        Ok(())
    }
}

impl SignedPayload for Roster {
    const DOMAIN: &'static [u8] = DOMAIN_ROSTER;
    const BYTES_MAX: usize = ROSTER_BYTES_MAX;

    fn check(&self) -> Result<(), DecodeError> {
        let invalid = |field, reason| DecodeError::Invalid { field, reason };
        if self.protocol_version != PROTOCOL_VERSION {
            return Err(invalid("protocol_version", "unsupported protocol version"));
        }
        if self.version == 0 {
            return Err(invalid("version", "roster versions start at 1"));
        }
        if self.network.is_empty() || self.network.len() > NAME_BYTES_MAX {
            return Err(invalid("network", "empty or too long"));
        }
        if self.participants.is_empty() || self.participants.len() > ROSTER_PARTICIPANTS_MAX {
            return Err(invalid("participants", "must list 1 to 256 participants"));
        }
        let mut ids = BTreeSet::new();
        let mut all_keys = BTreeSet::new();
        for p in &self.participants {
            if !ids.insert(&p.id) {
                return Err(invalid("participants", "participant listed twice"));
            }
            if p.name.is_empty() || p.name.len() > NAME_BYTES_MAX {
                return Err(invalid("name", "empty or longer than 128 bytes"));
            }
            if p.keys.is_empty() || p.keys.len() > KEYS_PER_PARTICIPANT_MAX {
                return Err(invalid("keys", "each participant holds 1 to 4 keys"));
            }
            for k in &p.keys {
                if k.to_verifying_key().is_err() {
                    return Err(invalid("keys", "malformed or weak public key"));
                }
                if !all_keys.insert(*k) {
                    return Err(invalid("keys", "a key is listed twice"));
                }
            }
        }
        if !self
            .participants
            .iter()
            .any(|p| p.role == Role::Secretariat && !p.revoked)
        {
            return Err(invalid("participants", "no active Secretariat"));
        }
        if self.groups.len() > ROSTER_GROUPS_MAX {
            return Err(invalid("groups", "more than 64 groups"));
        }
        let mut names = BTreeSet::new();
        for g in &self.groups {
            if g.name.is_empty() || g.name.len() > NAME_BYTES_MAX {
                return Err(invalid("groups", "group name empty or too long"));
            }
            if !names.insert(&g.name) {
                return Err(invalid("groups", "group listed twice"));
            }
            let distinct: BTreeSet<_> = g.members.iter().collect();
            if distinct.len() != g.members.len() {
                return Err(invalid("groups", "a group lists a participant twice"));
            }
            if g.members.is_empty() || g.members.iter().any(|m| !ids.contains(m)) {
                return Err(invalid(
                    "groups",
                    "group empty or naming an unknown participant",
                ));
            }
        }
        Ok(())
    }
}

impl Verified<Roster> {
    /// Verifies a message against this roster: its author is listed and active, the signing
    /// key is one of the author's, the signature is valid and the fields obey the rules.
    pub fn verify_envelope(&self, s: &Signed<Envelope>) -> Result<Verified<Envelope>, VerifyError> {
        let env = s.decode_unverified()?;
        self.authorise(&env.sender, &s.key())?;
        s.verify_decoded(env)
    }

    /// Verifies several messages against this roster, as [`Self::verify_envelope`] does one,
    /// given their decoded values (a relay has decoded them already, to check who claims
    /// to be the author), checking the signatures as one batch
    /// ([`crate::sign::verify_decoded_batch`]). Answers in the same order.
    pub fn verify_envelopes<'a>(
        &self,
        items: impl IntoIterator<Item = (&'a Signed<Envelope>, Envelope)>,
    ) -> Vec<Result<Verified<Envelope>, VerifyError>> {
        self.verify_batch(items, |e: &Envelope| &e.sender)
    }

    /// Verifies several decoded receipts against this roster, as [`Self::verify_envelopes`]
    /// does messages.
    pub fn verify_receipts<'a>(
        &self,
        items: impl IntoIterator<Item = (&'a Signed<Receipt>, Receipt)>,
    ) -> Vec<Result<Verified<Receipt>, VerifyError>> {
        self.verify_batch(items, |r: &Receipt| &r.recipient)
    }

    fn verify_batch<'a, T: crate::SignedPayload + 'a>(
        &self,
        items: impl IntoIterator<Item = (&'a Signed<T>, T)>,
        author: impl Fn(&T) -> &ParticipantId,
    ) -> Vec<Result<Verified<T>, VerifyError>> {
        let mut out: Vec<Option<Result<Verified<T>, VerifyError>>> = Vec::new();
        let mut batch = Vec::new();
        let mut slots = Vec::new();
        for (i, (s, v)) in items.into_iter().enumerate() {
            match self.authorise(author(&v), &s.key()) {
                Ok(()) => {
                    batch.push((s, v));
                    slots.push(i);
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        for (slot, r) in slots
            .into_iter()
            .zip(crate::sign::verify_decoded_batch(batch))
        {
            out[slot] = Some(r);
        }
        out.into_iter().flatten().collect()
    }

    /// Verifies a receipt against this roster, as [`Self::verify_envelope`] does a message.
    pub fn verify_receipt(&self, s: &Signed<Receipt>) -> Result<Verified<Receipt>, VerifyError> {
        let r = s.decode_unverified()?;
        self.authorise(&r.recipient, &s.key())?;
        s.verify_decoded(r)
    }
}

/// Verifies a roster against the pinned Secretariat roster key.
pub fn verify_roster(
    s: &Signed<Roster>,
    roster_key: &PublicKey,
) -> Result<Verified<Roster>, VerifyError> {
    s.verify_with(roster_key)
}
