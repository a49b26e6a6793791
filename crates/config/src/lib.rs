//! `hotline-config`: the single owner of the on-disk file formats that the CLI, the relay,
//! the node and the exercise harness share.
//!
//! - [`keyfile`]: secret key files (the 32-byte ed25519 seed as 64 lower-case hexadecimal
//!   digits, mode 0600) and public key files (64 hexadecimal digits).
//! - [`roster_file`]: the human-editable TOML roster draft (the unsigned roster), and the
//!   signed roster file (the canonical encoding of `Signed<Roster>`).
//! - [`text_file`]: bounded reads of the other text files (service configurations, API
//!   tokens, scenarios, message bodies, TLS certificates and keys), and the relay's and
//!   node's [`ConfigError`].
//! - [`utc`]: how a time is written for people (RFC 3339, UTC).
//!
//! Every error names the file it is about. Every file is size-checked before it is read, and
//! opened without waiting for a writer ([`open_for_read`]): a named pipe nothing writes to
//! is refused, not waited on.

#![warn(missing_docs)]

mod atomic_file;
pub mod keyfile;
pub mod limits;
pub mod roster_file;
pub mod text_file;
pub mod utc;

pub use atomic_file::{open_for_read, remove_stale_temporaries, write_new};
pub use keyfile::{IfExists, KeyFileError};
pub use roster_file::{Draft, DraftError, DraftGroup, DraftParticipant, RosterFileError};
pub use text_file::{ConfigError, TextFileError};
