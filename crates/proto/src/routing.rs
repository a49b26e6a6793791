//! Routing: who an envelope's audience resolves to, and what the roster policy allows.
//!
//! Pure and shared: the relay routes with it and a node uses it to show the expected
//! recipients before the relay answers.

use std::collections::BTreeSet;

use crate::envelope::{Audience, Envelope, Kind};
use crate::frame::RejectCode;
use crate::id::ParticipantId;
use crate::roster::{Role, Roster};

/// What observers may do. The default follows CICA practice: observers receive what is
/// addressed to them (by name, by a group they are in, or to everyone) and may send to the
/// Secretariat, and reply to members who addressed them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Observers may address members (and other observers) freely, not just reply.
    pub observers_may_address_anyone: bool,
}

// Spelled out rather than derived: the default is a policy decision, not an accident of `bool`.
#[allow(clippy::derivable_impls)]
impl Default for Policy {
    fn default() -> Self {
        Self {
            observers_may_address_anyone: false,
        }
    }
}

/// Why an audience could not be routed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// A listed recipient is not on the roster or is revoked.
    #[error("unknown or revoked recipient {0}")]
    UnknownRecipient(ParticipantId),
    /// The addressed group is not on the roster.
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    /// The audience resolves to nobody but the sender.
    #[error("the audience resolves to no recipient")]
    NoRecipients,
    /// The policy forbids this sender to address this recipient.
    #[error("{sender} may not address {recipient}")]
    PolicyDenied {
        /// The sender.
        sender: ParticipantId,
        /// The first recipient refused.
        recipient: ParticipantId,
    },
}

impl RouteError {
    /// The rejection code a relay answers with.
    pub fn reject_code(&self) -> RejectCode {
        match self {
            RouteError::UnknownRecipient(_) => RejectCode::UnknownRecipient,
            RouteError::UnknownGroup(_) => RejectCode::UnknownGroup,
            RouteError::NoRecipients => RejectCode::NoRecipients,
            RouteError::PolicyDenied { .. } => RejectCode::PolicyDenied,
        }
    }
}

/// The participants `roster` gives `audience`: those named (each must be on the roster and
/// not revoked), a group's members, every member or everyone, the revoked left out; the
/// sender among them if the audience takes it in. The first step of [`resolve`], which then
/// takes the sender out and checks that there is someone and the observer policy.
pub fn recipients(
    roster: &Roster,
    audience: &Audience,
) -> Result<BTreeSet<ParticipantId>, RouteError> {
    let active = |id: &ParticipantId| roster.participant(id).filter(|p| !p.revoked);
    let mut out = BTreeSet::new();
    match audience {
        Audience::Participants(ids) => {
            for id in ids {
                if active(id).is_none() {
                    return Err(RouteError::UnknownRecipient(id.clone()));
                }
                out.insert(id.clone());
            }
        }
        Audience::Group(name) => {
            let g = roster
                .group(name)
                .ok_or_else(|| RouteError::UnknownGroup(name.clone()))?;
            out.extend(g.members.iter().filter(|m| active(m).is_some()).cloned());
        }
        Audience::AllMembers => out.extend(
            roster
                .participants
                .iter()
                .filter(|p| p.role == Role::Member && !p.revoked)
                .map(|p| p.id.clone()),
        ),
        Audience::Everyone => out.extend(
            roster
                .participants
                .iter()
                .filter(|p| !p.revoked)
                .map(|p| p.id.clone()),
        ),
    }
    Ok(out)
}

/// Resolves an envelope's audience to its recipients, sorted, without the sender, and checks
/// the observer policy.
///
/// `addressed_by` answers "did `recipient` author a message referenced by this envelope that
/// was addressed to the sender?" — the only way an observer may write to a member under the
/// default policy. The relay answers it from its store.
pub fn resolve(
    roster: &Roster,
    policy: &Policy,
    env: &Envelope,
    addressed_by: impl Fn(&ParticipantId) -> bool,
) -> Result<Vec<ParticipantId>, RouteError> {
    let active = |id: &ParticipantId| roster.participant(id).filter(|p| !p.revoked);
    let mut out = recipients(roster, &env.audience)?;
    out.remove(&env.sender);
    if out.is_empty() {
        return Err(RouteError::NoRecipients);
    }
    let sender_is_observer = roster
        .participant(&env.sender)
        .is_some_and(|p| p.role == Role::Observer);
    if sender_is_observer && !policy.observers_may_address_anyone {
        for r in &out {
            let to_secretariat = active(r).is_some_and(|p| p.role == Role::Secretariat);
            let replying = env.kind == Kind::Reply && addressed_by(r);
            if !to_secretariat && !replying {
                return Err(RouteError::PolicyDenied {
                    sender: env.sender.clone(),
                    recipient: r.clone(),
                });
            }
        }
    }
    Ok(out.into_iter().collect())
}
