//! Roster files.
//!
//! - A **roster draft** is the unsigned roster as human-editable TOML. The Secretariat edits
//!   it (by hand or with `hotline roster add|revoke|group`) and signs it into a signed
//!   roster file. A draft may list participants without keys (`keys = []`): that is a
//!   template, which `hotline roster create` fills; signing requires every key.
//!
//!   ```toml
//!   network = "CICA"
//!   version = 1
//!
//!   [[participants]]
//!   id = "KAZ"
//!   name = "Republic of Kazakhstan"
//!   role = "member"            # member | observer | secretariat
//!   keys = ["<64 hex digits>"] # 1 to 4 keys; more than one during a rotation
//!   revoked = false            # optional, default false
//!
//!   [[groups]]
//!   name = "human-dimension"
//!   members = ["KAZ", "KGZ"]
//!   ```
//!
//! - A **signed roster file** is exactly the canonical encoding of `Signed<Roster>` (the
//!   roster's canonical bytes with their length, the signing key, the signature), as the
//!   roster travels on the wire. Any changed byte either breaks decoding or the signature.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use hotline_proto::codec::{self, DecodeError, EncodeError};
use hotline_proto::limits::{KEYS_PER_PARTICIPANT_MAX, NAME_BYTES_MAX};
use hotline_proto::{
    verify_roster, Group, Participant, ParticipantId, PublicKey, Role, Roster, Signed,
    SignedPayload, Verified, VerifyError, PROTOCOL_VERSION,
};
use serde::{Deserialize, Serialize};

use crate::atomic_file::{self, ReadError};
use crate::keyfile::IfExists;
use crate::limits::{DRAFT_FILE_BYTES_MAX, SIGNED_ROSTER_FILE_BYTES_MAX};

/// Mode of a draft or signed roster file on Unix (before the umask): the roster is public.
const ROSTER_FILE_MODE: u32 = 0o644;

/// The first lines of every draft this module writes.
const DRAFT_HEADER: &str = "\
# CICA Hotline roster draft: the unsigned roster. Sign it with `hotline roster sign`.
# This file was rewritten by a tool, so any comments it had were dropped.
# role is one of: member, observer, secretariat. revoked defaults to false.

";

/// The unsigned roster, as written in a TOML roster draft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Draft {
    /// The network's name, e.g. `CICA`.
    pub network: String,
    /// Roster version: a node only accepts a roster with a higher version than its own.
    pub version: u64,
    /// Everyone who takes part, in the order they are listed.
    #[serde(default)]
    pub participants: Vec<DraftParticipant>,
    /// Named groups, e.g. the coordinators of a CBM area.
    #[serde(default)]
    pub groups: Vec<DraftGroup>,
}

/// One `[[participants]]` entry of a draft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftParticipant {
    /// Short code: ISO 3166 alpha-3 for states, `UN`, `OSCE`, `SEC`…
    pub id: ParticipantId,
    /// Official English name.
    pub name: String,
    /// `member`, `observer` or `secretariat`.
    pub role: Role,
    /// Public keys as 64 hexadecimal digits; empty only in a template.
    #[serde(default)]
    pub keys: Vec<PublicKey>,
    /// Whether the participant is revoked (default `false`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub revoked: bool,
}

/// One `[[groups]]` entry of a draft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftGroup {
    /// Group name, as an audience addresses it.
    pub name: String,
    /// Participant ids of the members.
    pub members: Vec<ParticipantId>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Why a draft cannot become a roster, or an edit of a draft was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DraftError {
    /// Two entries have the same id.
    #[error("participant {0} is listed twice")]
    DuplicateParticipant(ParticipantId),
    /// An edit or a group names a participant that is not listed.
    #[error("no participant {0} in the roster")]
    UnknownParticipant(ParticipantId),
    /// A participant has no key (allowed only in a template).
    #[error("participant {0} has no keys")]
    NoKeys(ParticipantId),
    /// A participant has more keys than the protocol allows.
    #[error("participant {id} has {count} keys; at most {max} are allowed")]
    TooManyKeys {
        /// The participant.
        id: ParticipantId,
        /// Keys listed.
        count: usize,
        /// Keys allowed.
        max: usize,
    },
    /// A key is not a valid, non-weak ed25519 point.
    #[error("participant {id} has an invalid (malformed or weak) key {key}")]
    BadKey {
        /// The participant.
        id: ParticipantId,
        /// The key.
        key: PublicKey,
    },
    /// One key is listed twice (for one participant or two).
    #[error("key {key} is listed for both {first} and {second}")]
    DuplicateKey {
        /// The key.
        key: PublicKey,
        /// The first participant listing it.
        first: ParticipantId,
        /// The second participant listing it.
        second: ParticipantId,
    },
    /// A name is empty or longer than the protocol allows.
    #[error("{what} name {name:?} is empty or longer than {max} bytes")]
    BadName {
        /// What is named: `participant`, `group` or `network`.
        what: &'static str,
        /// The name (cut short if long).
        name: String,
        /// Longest name allowed.
        max: usize,
    },
    /// Two groups have the same name.
    #[error("group {0:?} is listed twice")]
    DuplicateGroup(String),
    /// A group has no members.
    #[error("group {0:?} has no members")]
    EmptyGroup(String),
    /// A group names one member twice (the protocol refuses such a roster).
    #[error("group {group:?} names {member} twice")]
    DuplicateGroupMember {
        /// The group.
        group: String,
        /// The member named twice.
        member: ParticipantId,
    },
    /// A group names a participant that is not listed.
    #[error("group {group:?} names unknown participant {member}")]
    UnknownGroupMember {
        /// The group.
        group: String,
        /// The unknown member.
        member: ParticipantId,
    },
    /// The roster breaks a protocol rule (as `Roster::check` reports it).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What rule it breaks.
        reason: &'static str,
    },
}

/// Why a roster file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RosterFileError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}", path = .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The file exists and the caller asked not to replace it.
    #[error("{path}: already exists; refusing to overwrite it", path = .path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The file is larger than any roster file of its kind.
    #[error("{path}: {len} bytes is too large (at most {max})", path = .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The largest file accepted.
        max: usize,
    },
    /// A draft is not valid TOML or does not match the draft format.
    #[error("{}", parse_message(path, *line, *column, message))]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error, when known.
        line: Option<usize>,
        /// 1-based column (in characters) of the error, when known.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A draft parses but its contents break a rule.
    #[error("{path}: {source}", path = .path.display())]
    Draft {
        /// The file.
        path: PathBuf,
        /// The rule broken.
        #[source]
        source: DraftError,
    },
    /// A signed roster file does not decode.
    #[error("{path}: not a valid signed roster file: {source}", path = .path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why it does not decode.
        #[source]
        source: DecodeError,
    },
    /// A file offered as a signed roster is empty: a copy that failed, or a disk that was
    /// full when it was written by something other than this crate (whose writes are
    /// atomic).
    #[error(
        "{path}: is empty (0 bytes), not a signed roster file; copy the signed roster file \
         there again",
        path = .path.display()
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A file offered as a signed roster is text (a TOML draft, most likely).
    #[error(
        "{path}: is a text file (a roster draft?), not a signed roster file",
        path = .path.display()
    )]
    NotSigned {
        /// The file.
        path: PathBuf,
    },
    /// A signed roster was signed by another key than the pinned roster key. The pinned
    /// key is not shown: it may be a secret seed pasted where the public key belongs
    /// (see [`RosterFileError::PinnedSecret`] for the one case that can be told).
    #[error(
        "{path}: roster is signed by key {signed_by}, not by the pinned roster key (roster_key)",
        path = .path.display()
    )]
    WrongKey {
        /// The file.
        path: PathBuf,
        /// The key the file carries.
        signed_by: PublicKey,
        /// The key the caller pinned.
        pinned: PublicKey,
    },
    /// The pinned roster key is the secret seed of the key that signed the roster: the
    /// roster key's `.key` file was pasted where its `.pub` belongs.
    #[error(
        "{path}: the pinned roster key (roster_key) is the SECRET seed of the key that signed \
         this roster, not its public key {signed_by}: the roster signing key has leaked into a \
         configuration; remove it from there and change the roster key (OPERATIONS.md 4.7)",
        path = .path.display()
    )]
    PinnedSecret {
        /// The file.
        path: PathBuf,
        /// The public key of the seed that was pinned, which signed the roster.
        signed_by: PublicKey,
    },
    /// A signed roster does not verify against the pinned roster key.
    #[error("{path}: roster does not verify: {source}", path = .path.display())]
    Verify {
        /// The file.
        path: PathBuf,
        /// Why it does not verify.
        #[source]
        source: VerifyError,
    },
    /// A value could not be encoded for writing.
    #[error("{path}: cannot encode: {message}", path = .path.display())]
    Encode {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

fn parse_message(path: &Path, line: Option<usize>, column: Option<usize>, message: &str) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{}:{l}:{c}: {message}", path.display()),
        (Some(l), None) => format!("{}:{l}: {message}", path.display()),
        _ => format!("{}: {message}", path.display()),
    }
}

/// 1-based line and column (in characters) of a byte offset into `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn cut(name: &str) -> String {
    name.chars().take(40).collect()
}

impl Draft {
    /// Parses a draft from TOML text; `path` names the file in errors. Also checks the
    /// draft's structure ([`Draft::check_structure`]), but allows participants without keys.
    pub fn parse(text: &str, path: &Path) -> Result<Self, RosterFileError> {
        let draft: Draft = toml::from_str(text).map_err(|e| {
            let (line, column) = match e.span() {
                Some(span) => {
                    let (l, c) = line_column(text, span.start);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            RosterFileError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })?;
        draft
            .check_structure()
            .map_err(|source| RosterFileError::Draft {
                path: path.to_owned(),
                source,
            })?;
        Ok(draft)
    }

    /// The draft as TOML, with a header comment.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let body = toml::to_string_pretty(self)?;
        Ok(format!("{DRAFT_HEADER}{body}"))
    }

    /// The draft of an existing roster, e.g. to edit a roster whose draft was lost.
    pub fn from_roster(roster: &Roster) -> Self {
        Self {
            network: roster.network.clone(),
            version: roster.version,
            participants: roster
                .participants
                .iter()
                .map(|p| DraftParticipant {
                    id: p.id.clone(),
                    name: p.name.clone(),
                    role: p.role,
                    keys: p.keys.clone(),
                    revoked: p.revoked,
                })
                .collect(),
            groups: roster
                .groups
                .iter()
                .map(|g| DraftGroup {
                    name: g.name.clone(),
                    members: g.members.clone(),
                })
                .collect(),
        }
    }

    /// The entry for `id`.
    pub fn participant(&self, id: &ParticipantId) -> Option<&DraftParticipant> {
        self.participants.iter().find(|p| &p.id == id)
    }

    /// The entry for `id`, to change it.
    pub fn participant_mut(&mut self, id: &ParticipantId) -> Option<&mut DraftParticipant> {
        self.participants.iter_mut().find(|p| &p.id == id)
    }

    /// Checks what can be checked without keys: names, unique ids and keys, valid keys, and
    /// groups that name listed participants, each once.
    pub fn check_structure(&self) -> Result<(), DraftError> {
        if self.network.is_empty() || self.network.len() > NAME_BYTES_MAX {
            return Err(DraftError::BadName {
                what: "network",
                name: cut(&self.network),
                max: NAME_BYTES_MAX,
            });
        }
        let mut ids = BTreeSet::new();
        let mut keys: BTreeMap<PublicKey, &ParticipantId> = BTreeMap::new();
        for p in &self.participants {
            if !ids.insert(&p.id) {
                return Err(DraftError::DuplicateParticipant(p.id.clone()));
            }
            if p.name.is_empty() || p.name.len() > NAME_BYTES_MAX {
                return Err(DraftError::BadName {
                    what: "participant",
                    name: cut(&p.name),
                    max: NAME_BYTES_MAX,
                });
            }
            if p.keys.len() > KEYS_PER_PARTICIPANT_MAX {
                return Err(DraftError::TooManyKeys {
                    id: p.id.clone(),
                    count: p.keys.len(),
                    max: KEYS_PER_PARTICIPANT_MAX,
                });
            }
            for k in &p.keys {
                if k.to_verifying_key().is_err() {
                    return Err(DraftError::BadKey {
                        id: p.id.clone(),
                        key: *k,
                    });
                }
                if let Some(first) = keys.insert(*k, &p.id) {
                    return Err(DraftError::DuplicateKey {
                        key: *k,
                        first: first.clone(),
                        second: p.id.clone(),
                    });
                }
            }
        }
        let mut names = BTreeSet::new();
        for g in &self.groups {
            if g.name.is_empty() || g.name.len() > NAME_BYTES_MAX {
                return Err(DraftError::BadName {
                    what: "group",
                    name: cut(&g.name),
                    max: NAME_BYTES_MAX,
                });
            }
            if !names.insert(&g.name) {
                return Err(DraftError::DuplicateGroup(g.name.clone()));
            }
            if g.members.is_empty() {
                return Err(DraftError::EmptyGroup(g.name.clone()));
            }
            if let Some(m) = g.members.iter().find(|m| !ids.contains(m)) {
                return Err(DraftError::UnknownGroupMember {
                    group: g.name.clone(),
                    member: m.clone(),
                });
            }
            let mut members = BTreeSet::new();
            if let Some(m) = g.members.iter().find(|m| !members.insert(*m)) {
                return Err(DraftError::DuplicateGroupMember {
                    group: g.name.clone(),
                    member: m.clone(),
                });
            }
        }
        Ok(())
    }

    /// The roster this draft describes, issued at `issued_at_ms` (milliseconds since the
    /// Unix epoch), checked against every protocol rule so that it can be signed.
    pub fn to_roster(&self, issued_at_ms: u64) -> Result<Roster, DraftError> {
        self.check_structure()?;
        if let Some(p) = self.participants.iter().find(|p| p.keys.is_empty()) {
            return Err(DraftError::NoKeys(p.id.clone()));
        }
        let roster = Roster {
            protocol_version: PROTOCOL_VERSION,
            version: self.version,
            issued_at_ms,
            network: self.network.clone(),
            participants: self
                .participants
                .iter()
                .map(|p| Participant {
                    id: p.id.clone(),
                    name: p.name.clone(),
                    role: p.role,
                    keys: p.keys.clone(),
                    revoked: p.revoked,
                })
                .collect(),
            groups: self
                .groups
                .iter()
                .map(|g| Group {
                    name: g.name.clone(),
                    members: g.members.clone(),
                })
                .collect(),
        };
        // The protocol's own rules are the final word (version, counts, an active
        // Secretariat, encoded size is checked when signing).
        roster.check().map_err(|e| match e {
            DecodeError::Invalid { field, reason } => DraftError::Invalid { field, reason },
            _ => DraftError::Invalid {
                field: "roster",
                reason: "breaks a protocol rule",
            },
        })?;
        Ok(roster)
    }

    /// Adds a participant, refusing a duplicate id or key.
    pub fn add_participant(&mut self, p: DraftParticipant) -> Result<(), DraftError> {
        if self.participant(&p.id).is_some() {
            return Err(DraftError::DuplicateParticipant(p.id));
        }
        self.participants.push(p);
        if let Err(e) = self.check_structure() {
            self.participants.pop();
            return Err(e);
        }
        Ok(())
    }

    /// Marks a participant revoked. Revoking a revoked participant changes nothing.
    pub fn revoke(&mut self, id: &ParticipantId) -> Result<(), DraftError> {
        let p = self
            .participant_mut(id)
            .ok_or_else(|| DraftError::UnknownParticipant(id.clone()))?;
        p.revoked = true;
        Ok(())
    }

    /// Creates the group `name` with `members`, or replaces the members of an existing one.
    pub fn set_group(&mut self, name: &str, members: Vec<ParticipantId>) -> Result<(), DraftError> {
        if members.is_empty() {
            return Err(DraftError::EmptyGroup(name.to_owned()));
        }
        if let Some(m) = members.iter().find(|m| self.participant(m).is_none()) {
            return Err(DraftError::UnknownGroupMember {
                group: name.to_owned(),
                member: (*m).clone(),
            });
        }
        let old = self.groups.clone();
        match self.groups.iter_mut().find(|g| g.name == name) {
            Some(g) => g.members = members,
            None => self.groups.push(DraftGroup {
                name: name.to_owned(),
                members,
            }),
        }
        if let Err(e) = self.check_structure() {
            self.groups = old;
            return Err(e);
        }
        Ok(())
    }
}

/// The lower-case name of a role, as a draft writes it.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Member => "member",
        Role::Observer => "observer",
        Role::Secretariat => "secretariat",
        // `Role` is non-exhaustive; a newer protocol crate may add roles.
        _ => "unknown",
    }
}

fn open(path: &Path) -> Result<File, RosterFileError> {
    atomic_file::open_for_read(path).map_err(|source| RosterFileError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_all(path: &Path, max: usize) -> Result<Vec<u8>, RosterFileError> {
    atomic_file::read_bounded(open(path)?, max).map_err(|e| match e {
        ReadError::Io(source) => RosterFileError::Io {
            path: path.to_owned(),
            source,
        },
        ReadError::TooLarge { len } => RosterFileError::TooLarge {
            path: path.to_owned(),
            len,
            max,
        },
    })
}

fn write(path: &Path, bytes: &[u8], if_exists: IfExists) -> Result<(), RosterFileError> {
    let result = match if_exists {
        IfExists::Refuse => atomic_file::write_new(path, bytes, ROSTER_FILE_MODE),
        IfExists::Replace => atomic_file::write_atomic(path, bytes, ROSTER_FILE_MODE),
    };
    result.map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            RosterFileError::Exists {
                path: path.to_owned(),
            }
        } else {
            RosterFileError::Io {
                path: path.to_owned(),
                source,
            }
        }
    })
}

/// Reads and parses a roster draft (templates without keys included).
pub fn read_draft(path: &Path) -> Result<Draft, RosterFileError> {
    let bytes = read_all(path, DRAFT_FILE_BYTES_MAX)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let (line, column) =
            match std::str::from_utf8(&e.as_bytes()[..e.utf8_error().valid_up_to()]) {
                Ok(valid) => {
                    let (l, c) = line_column(valid, valid.len());
                    (Some(l), Some(c))
                }
                Err(_) => (None, None),
            };
        RosterFileError::Parse {
            path: path.to_owned(),
            line,
            column,
            message: "not UTF-8 text".to_owned(),
        }
    })?;
    Draft::parse(&text, path)
}

/// Writes a roster draft atomically. Comments in an earlier version of the file are lost.
pub fn write_draft(path: &Path, draft: &Draft, if_exists: IfExists) -> Result<(), RosterFileError> {
    let text = draft.to_toml().map_err(|e| RosterFileError::Encode {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    write(path, text.as_bytes(), if_exists)
}

/// Reads a signed roster file. Nothing is verified: use [`read_verified_roster`] or
/// `hotline_proto::verify_roster` before trusting it.
pub fn read_signed_roster(path: &Path) -> Result<Signed<Roster>, RosterFileError> {
    let bytes = read_all(path, SIGNED_ROSTER_FILE_BYTES_MAX)?;
    // Empty is neither text nor a truncated roster: say so, rather than send the operator
    // looking for a draft.
    if bytes.is_empty() {
        return Err(RosterFileError::Empty {
            path: path.to_owned(),
        });
    }
    codec::decode::<Signed<Roster>>(&bytes, SIGNED_ROSTER_FILE_BYTES_MAX).map_err(|source| {
        // A signed roster starts with a little-endian u64 length, so it holds NUL bytes;
        // text never does. Say so, rather than report a nonsensical length.
        if !bytes.contains(&0) && std::str::from_utf8(&bytes).is_ok() {
            RosterFileError::NotSigned {
                path: path.to_owned(),
            }
        } else {
            RosterFileError::Decode {
                path: path.to_owned(),
                source,
            }
        }
    })
}

/// Reads a signed roster file and verifies it against the pinned roster key.
pub fn read_verified_roster(
    path: &Path,
    roster_key: &PublicKey,
) -> Result<Verified<Roster>, RosterFileError> {
    let signed = read_signed_roster(path)?;
    if &signed.key() != roster_key {
        if PublicKey::of(&ed25519_dalek::SigningKey::from_bytes(&roster_key.0)) == signed.key() {
            return Err(RosterFileError::PinnedSecret {
                path: path.to_owned(),
                signed_by: signed.key(),
            });
        }
        return Err(RosterFileError::WrongKey {
            path: path.to_owned(),
            signed_by: signed.key(),
            pinned: *roster_key,
        });
    }
    verify_roster(&signed, roster_key).map_err(|source| RosterFileError::Verify {
        path: path.to_owned(),
        source,
    })
}

/// Writes a signed roster file atomically (temporary file, fsync, rename, fsync of the
/// directory), replacing any earlier one.
pub fn write_signed_roster(path: &Path, signed: &Signed<Roster>) -> Result<(), RosterFileError> {
    write(path, &encode_signed(path, signed)?, IfExists::Replace)
}

/// [`write_signed_roster`] to a file that must not exist yet
/// ([`RosterFileError::Exists`] if it does): for a roster that must never take the place
/// of another, as a drill's in a directory that may hold a deployment's.
pub fn write_new_signed_roster(
    path: &Path,
    signed: &Signed<Roster>,
) -> Result<(), RosterFileError> {
    write(path, &encode_signed(path, signed)?, IfExists::Refuse)
}

/// The bytes of a signed roster file, to be written at `path`.
fn encode_signed(path: &Path, signed: &Signed<Roster>) -> Result<Vec<u8>, RosterFileError> {
    codec::encode(signed, SIGNED_ROSTER_FILE_BYTES_MAX).map_err(|e: EncodeError| {
        RosterFileError::Encode {
            path: path.to_owned(),
            message: e.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyfile::generate;

    fn key() -> PublicKey {
        PublicKey::of(&generate())
    }

    fn sample() -> String {
        format!(
            r#"network = "CICA"
version = 3

[[participants]]
id = "KAZ"
name = "Republic of Kazakhstan"
role = "member"
keys = ["{}"]

[[participants]]
id = "SEC"
name = "CICA Secretariat"
role = "secretariat"
keys = ["{}"]

[[participants]]
id = "UN"
name = "United Nations"
role = "observer"
keys = ["{}"]
revoked = true

[[groups]]
name = "human-dimension"
members = ["KAZ"]
"#,
            key(),
            key(),
            key()
        )
    }

    #[test]
    fn draft_parses_and_becomes_a_roster() {
        let d = Draft::parse(&sample(), Path::new("d.toml")).expect("parses");
        assert_eq!(d.version, 3);
        let r = d.to_roster(1_700_000_000_000).expect("valid");
        assert_eq!(r.participants.len(), 3);
        assert_eq!(r.participants[1].role, Role::Secretariat);
        assert!(r.participants[2].revoked);
        assert!(!r.participants[0].revoked);
        assert_eq!(r.groups[0].members[0].as_str(), "KAZ");
        assert_eq!(Draft::from_roster(&r), d);
    }

    #[test]
    fn draft_round_trips_through_toml() {
        let d = Draft::parse(&sample(), Path::new("d.toml")).expect("parses");
        let text = d.to_toml().expect("serialises");
        assert!(text.starts_with("# CICA Hotline roster draft"));
        assert_eq!(
            Draft::parse(&text, Path::new("again.toml")).expect("parses"),
            d
        );
    }

    #[test]
    fn parse_error_names_file_line_and_column() {
        let text = sample().replace("version = 3", "version = 3\nbogus = = 1");
        let e = Draft::parse(&text, Path::new("drafts/cica.toml")).expect_err("bad TOML");
        let msg = e.to_string();
        assert!(msg.starts_with("drafts/cica.toml:3:"), "{msg}");
        assert!(
            matches!(e, RosterFileError::Parse { line: Some(3), .. }),
            "{e:?}"
        );
    }

    #[test]
    fn bad_role_names_the_line() {
        let text = sample().replace("role = \"observer\"", "role = \"guest\"");
        let line = text
            .lines()
            .position(|l| l.contains("guest"))
            .expect("replaced")
            + 1;
        let e = Draft::parse(&text, Path::new("r.toml")).expect_err("bad role");
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("r.toml:{line}:")), "{msg}");
        assert!(msg.contains("guest"), "{msg}");
    }

    #[test]
    fn bad_id_key_and_unknown_field_name_the_line() {
        for (from, to, needle) in [
            ("id = \"UN\"", "id = \"un\"", "\"un\""),
            ("keys = [\"", "keys = [\"zz", "zz"),
            ("revoked = true", "revoked = true\nrevokd = 1", "revokd"),
        ] {
            let text = sample().replacen(from, to, 1);
            let line = text
                .lines()
                .position(|l| l.contains(needle))
                .expect("replaced")
                + 1;
            let e = Draft::parse(&text, Path::new("r.toml")).expect_err(to);
            assert!(
                e.to_string().starts_with(&format!("r.toml:{line}:")),
                "{to}: {e}"
            );
        }
    }

    #[test]
    fn structural_errors_name_the_participant() {
        let text = sample().replace("members = [\"KAZ\"]", "members = [\"KAZ\", \"XYZ\"]");
        let e = Draft::parse(&text, Path::new("r.toml")).expect_err("unknown member");
        assert!(e.to_string().contains("XYZ"), "{e}");
        assert!(e.to_string().starts_with("r.toml: "), "{e}");

        let k = key();
        let text = format!(
            "network = \"CICA\"\nversion = 1\n[[participants]]\nid = \"AB\"\nname = \"A\"\nrole = \"member\"\nkeys = [\"{k}\"]\n[[participants]]\nid = \"CD\"\nname = \"C\"\nrole = \"secretariat\"\nkeys = [\"{k}\"]\n"
        );
        let e = Draft::parse(&text, Path::new("r.toml")).expect_err("shared key");
        assert!(
            e.to_string().contains("AB") && e.to_string().contains("CD"),
            "{e}"
        );
    }

    #[test]
    fn template_without_keys_parses_but_does_not_sign() {
        let text = sample().replacen(&format!("keys = [\"{}", ""), "keys = [] #", 1);
        let d = Draft::parse(&text, Path::new("t.toml")).expect("template parses");
        assert_eq!(
            d.to_roster(0),
            Err(DraftError::NoKeys(ParticipantId::new("KAZ").expect("id")))
        );
    }

    #[test]
    fn protocol_rules_report_the_field() {
        let mut d = Draft::parse(&sample(), Path::new("d.toml")).expect("parses");
        d.version = 0;
        assert!(matches!(
            d.to_roster(0),
            Err(DraftError::Invalid {
                field: "version",
                ..
            })
        ));
        d.version = 1;
        d.participants.retain(|p| p.role != Role::Secretariat);
        assert!(matches!(
            d.to_roster(0),
            Err(DraftError::Invalid {
                field: "participants",
                ..
            })
        ));
    }

    /// A group naming a member twice is refused where the draft is made or edited, naming
    /// the group and the member. `roster group --members KAZ,KGZ,KAZ` was written to the
    /// draft, which `roster sign` then refused as `invalid groups: a group lists a
    /// participant twice`, naming neither.
    #[test]
    fn a_group_naming_a_member_twice_is_refused_with_its_name() {
        let mut d = Draft::parse(&sample(), Path::new("d.toml")).expect("parses");
        let before = d.groups.clone();
        let kaz = ParticipantId::new("KAZ").expect("id");
        let e = d
            .set_group("tourism", vec![kaz.clone(), kaz.clone()])
            .expect_err("refused");
        assert_eq!(e.to_string(), "group \"tourism\" names KAZ twice");
        assert_eq!(d.groups, before, "the draft is left as it was");
        // Written by hand into a draft file, it is refused when read, as other mistakes are.
        let text = format!(
            "{}\n[[groups]]\nname = \"twice\"\nmembers = [\"KAZ\", \"KAZ\"]\n",
            sample()
        );
        let e = Draft::parse(&text, Path::new("d.toml")).expect_err("refused");
        assert!(e.to_string().contains("\"twice\" names KAZ twice"), "{e}");
    }

    #[test]
    fn edits() {
        let mut d = Draft::parse(&sample(), Path::new("d.toml")).expect("parses");
        let kgz = ParticipantId::new("KGZ").expect("id");
        let new = DraftParticipant {
            id: kgz.clone(),
            name: "Kyrgyz Republic".into(),
            role: Role::Member,
            keys: vec![key()],
            revoked: false,
        };
        d.add_participant(new.clone()).expect("add");
        assert!(matches!(
            d.add_participant(new),
            Err(DraftError::DuplicateParticipant(_))
        ));
        let dup_key = DraftParticipant {
            id: ParticipantId::new("TJK").expect("id"),
            name: "Republic of Tajikistan".into(),
            role: Role::Member,
            keys: d.participants[0].keys.clone(),
            revoked: false,
        };
        assert!(matches!(
            d.add_participant(dup_key),
            Err(DraftError::DuplicateKey { .. })
        ));
        assert_eq!(d.participants.len(), 4);

        d.revoke(&kgz).expect("revoke");
        assert!(d.participant(&kgz).expect("listed").revoked);
        assert!(d.revoke(&ParticipantId::new("XX").expect("id")).is_err());

        let kaz = ParticipantId::new("KAZ").expect("id");
        d.set_group("human-dimension", vec![kaz.clone(), kgz.clone()])
            .expect("replace");
        d.set_group("tourism", vec![kaz]).expect("create");
        assert_eq!(d.groups.len(), 2);
        assert_eq!(d.groups[0].members.len(), 2);
        assert!(d.set_group("x", vec![]).is_err());
        assert!(d
            .set_group("x", vec![ParticipantId::new("ZZZ").expect("id")])
            .is_err());
        d.to_roster(0).expect("still valid");
    }

    #[test]
    fn signed_roster_file_round_trips_and_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("roster.signed");
        let roster = Draft::parse(&sample(), Path::new("d.toml"))
            .expect("parses")
            .to_roster(42)
            .expect("valid");
        let signing = generate();
        let signed = Signed::sign(&roster, &signing).expect("signs");
        write_signed_roster(&path, &signed).expect("writes");
        assert_eq!(read_signed_roster(&path).expect("reads"), signed);
        let v = read_verified_roster(&path, &PublicKey::of(&signing)).expect("verifies");
        assert_eq!(v.value(), &roster);

        let wrong = key();
        let e = read_verified_roster(&path, &wrong).expect_err("wrong key");
        assert!(matches!(e, RosterFileError::WrongKey { .. }), "{e}");
        assert!(!e.to_string().contains(&wrong.to_string()), "{e}");
        // The signing key's seed pinned as if it were the public key: told, not shown.
        let seed = PublicKey(signing.to_bytes());
        let e = read_verified_roster(&path, &seed).expect_err("a seed");
        assert!(matches!(e, RosterFileError::PinnedSecret { .. }), "{e}");
        assert!(!e.to_string().contains(&seed.to_string()), "{e}");
        assert!(
            e.to_string().contains(&PublicKey::of(&signing).to_string()),
            "{e}"
        );

        let draft_path = dir.path().join("draft.toml");
        std::fs::write(&draft_path, sample()).expect("write");
        let e = read_signed_roster(&draft_path).expect_err("a draft is not signed");
        assert!(matches!(e, RosterFileError::NotSigned { .. }), "{e}");

        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        let e = read_verified_roster(&path, &PublicKey::of(&signing)).expect_err("flipped");
        assert!(e.to_string().contains("roster.signed"), "{e}");
    }

    /// An empty file where the signed roster belongs (a copy that failed, a disk that was
    /// full) is refused as empty, naming the file: not as "a text file (a roster draft?)",
    /// which sent the operator looking for a draft that was never there.
    #[test]
    fn an_empty_signed_roster_file_is_refused_as_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("roster.signed");
        std::fs::write(&path, b"").expect("write");
        let e = read_signed_roster(&path).expect_err("empty");
        assert!(matches!(e, RosterFileError::Empty { .. }), "{e:?}");
        let shown = e.to_string();
        assert!(
            shown.contains("roster.signed") && shown.contains("empty") && !shown.contains("draft"),
            "{shown}"
        );
        let e = read_verified_roster(&path, &key()).expect_err("empty");
        assert!(matches!(e, RosterFileError::Empty { .. }), "{e:?}");
    }

    #[test]
    fn oversized_signed_roster_is_refused_before_reading() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.signed");
        let f = File::create(&path).expect("create");
        f.set_len(SIGNED_ROSTER_FILE_BYTES_MAX as u64 + 1)
            .expect("grow");
        assert!(matches!(
            read_signed_roster(&path),
            Err(RosterFileError::TooLarge { .. })
        ));
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 3), (2, 1));
        assert_eq!(line_column("ab\nçd", 5), (2, 2));
        assert_eq!(line_column("ab", 99), (1, 3));
    }
}
