//! Limits on the files this crate reads. Units are last in each name.

use hotline_proto::limits::{FRAME_BYTES_MAX, ROSTER_BYTES_MAX};

/// Largest key file read: one line of 64 hexadecimal digits, with room for a CRLF and
/// stray whitespace an editor may add.
pub const KEY_FILE_BYTES_MAX: usize = 256;

/// Largest signed roster file read: the signed roster bytes plus their length prefix, the
/// signing key and the signature, with room to spare.
pub const SIGNED_ROSTER_FILE_BYTES_MAX: usize = ROSTER_BYTES_MAX + 4096;

/// Largest roster draft read. A draft at every protocol limit (256 participants with four
/// keys and a 128-byte name each, 64 groups of 256 members) is well under this.
pub const DRAFT_FILE_BYTES_MAX: usize = 1024 * 1024;

/// Largest service configuration read (a relay's or a node's configuration, an exercise
/// scenario, an exercise's endpoints file): each is a page or two of TOML.
pub const CONFIG_FILE_BYTES_MAX: usize = 1024 * 1024;

/// Largest API token file read: one line of hexadecimal digits (the node writes 64).
pub const TOKEN_FILE_BYTES_MAX: usize = 4096;

/// Largest TLS certificate chain or private key file read (PEM): the relay's self-signed
/// certificate and its key are under 1 KiB each, and a chain of a few CA certificates a few
/// KiB.
pub const TLS_PEM_FILE_BYTES_MAX: usize = 64 * 1024;

/// Age after which a temporary file beside a file this crate writes (`.NAME.tmp.PID.RANDOM`)
/// is taken for the leftover of a write that a crash ended, and removed by the next write
/// of that file: a write takes milliseconds, so one this old belongs to no write still going
/// on, even on a slow disk.
pub const TEMPORARY_FILE_STALE_MS: u64 = 60_000;

/// Permission bits of a secret key file on Unix: owner read and write only.
pub const SECRET_KEY_FILE_MODE: u32 = 0o600;

/// Permission bits that must be clear on a secret key file: any group or other access.
pub const SECRET_KEY_FILE_FORBIDDEN_MODE: u32 = 0o077;

/// Longest key name (the file name stem of a key pair).
pub const KEY_NAME_BYTES_MAX: usize = 64;

/// Hexadecimal digits in a key file: 32 bytes.
pub const KEY_HEX_CHARS: usize = 64;

// A public key file line always fits its own limit.
const _: () = assert!(KEY_HEX_CHARS + 2 <= KEY_FILE_BYTES_MAX);
// The codec refuses to decode more than a frame, so a signed roster file must fit in one.
const _: () = assert!(SIGNED_ROSTER_FILE_BYTES_MAX <= FRAME_BYTES_MAX);
const _: () = assert!(SECRET_KEY_FILE_MODE & SECRET_KEY_FILE_FORBIDDEN_MODE == 0);
