//! Key files.
//!
//! - A **secret key file** holds one line: the 32-byte ed25519 seed as 64 lower-case
//!   hexadecimal digits, then `\n`. On Unix it is created with mode 0600, and a secret key
//!   file that the group or others may access is refused when read.
//! - A **public key file** holds one line: the 32-byte ed25519 public key as 64 lower-case
//!   hexadecimal digits, then `\n`.
//!
//! Readers accept surrounding whitespace (a CRLF, a trailing space an editor added) and
//! upper-case digits; writers always produce the exact form above. Nothing is overwritten
//! unless the caller passes [`IfExists::Replace`].
//!
//! The two kinds have the same contents, so only the file's name tells them apart:
//! `hotline keygen` writes a pair as `NAME.key` (secret, 0600) and `NAME.pub` (public). A
//! file named `*.key` is never read as a public key ([`KeyFileError::SecretNotPublic`]: it
//! would end up in a roster or an error message), and a file named `*.pub` is never read as
//! a secret key ([`KeyFileError::PublicNotSecret`]: anyone holding the public half could
//! sign with it); the extension is compared without regard to case. A file with any other
//! name is taken to be what the caller asks for. No error message holds a key file's
//! contents.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use hotline_proto::PublicKey;
use zeroize::Zeroizing;

use crate::atomic_file::{self, ReadError};
use crate::limits::{
    KEY_FILE_BYTES_MAX, KEY_HEX_CHARS, KEY_NAME_BYTES_MAX, SECRET_KEY_FILE_FORBIDDEN_MODE,
    SECRET_KEY_FILE_MODE,
};

/// File name extension of secret key files.
pub const SECRET_KEY_EXTENSION: &str = "key";

/// File name extension of public key files.
pub const PUBLIC_KEY_EXTENSION: &str = "pub";

/// Mode of a public key file on Unix (before the umask): readable by all.
const PUBLIC_KEY_FILE_MODE: u32 = 0o644;

/// What a writer does when the file already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfExists {
    /// Fail with [`KeyFileError::Exists`] and leave the file as it is.
    Refuse,
    /// Replace the file atomically.
    Replace,
}

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
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
    /// The file is larger than any key file.
    #[error("{path}: {len} bytes is too large for a key file (at most {max})", path = .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The largest key file accepted.
        max: usize,
    },
    /// The contents are not 64 hexadecimal digits.
    #[error("{path}: not a key file: expected one line of 64 hexadecimal digits", path = .path.display())]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// A secret key file may be read by the group or others.
    #[error(
        "{path}: secret key file is accessible to group or others (mode {mode:04o}); \
         refusing to use it — run `chmod 600 {path}` if the key has not leaked",
        path = .path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The public key is not a valid, non-weak ed25519 point.
    #[error("{path}: not a valid ed25519 public key (malformed or weak point)", path = .path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
    },
    /// A key given inline (64 hexadecimal digits) is not a valid, non-weak ed25519 public
    /// key. The digits are not repeated: a secret seed pasted where a public key belongs
    /// must not reach a log or a terminal a second time.
    #[error(
        "64 hexadecimal digits that are not a valid ed25519 public key (malformed or weak \
         point); if they are a secret key, consider it leaked and replace it"
    )]
    BadInlineKey,
    /// A secret key file (named `*.key`) was given where a public key is expected.
    #[error(
        "{path}: a secret key file (named *.{SECRET_KEY_EXTENSION}) where a public key is \
         expected; give the public key file ({public}) instead, and keep this one secret",
        path = .path.display(),
        public = .public.display()
    )]
    SecretNotPublic {
        /// The file.
        path: PathBuf,
        /// The public key file of the same pair, as `hotline keygen` names it.
        public: PathBuf,
    },
    /// A public key file (named `*.pub`) was given where a secret key is expected.
    #[error(
        "{path}: a public key file (named *.{PUBLIC_KEY_EXTENSION}) where a secret key is \
         expected; give the secret key file ({secret}) instead",
        path = .path.display(),
        secret = .secret.display()
    )]
    PublicNotSecret {
        /// The file.
        path: PathBuf,
        /// The secret key file of the same pair, as `hotline keygen` names it.
        secret: PathBuf,
    },
    /// A key name is not usable as a file name stem.
    #[error(
        "key name {0:?} must be 1 to {KEY_NAME_BYTES_MAX} characters of A-Z, a-z, 0-9, `-` \
         and `_`, starting with a letter or digit"
    )]
    BadName(String),
}

/// The secret and public key file paths for the key called `name` in `dir`:
/// `dir/name.key` and `dir/name.pub`.
///
/// `name` is a participant id (`KAZ`) or another name (`roster-signing`); it is checked so
/// that it cannot leave `dir` or hide the file.
pub fn key_paths(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), KeyFileError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let ok = !name.is_empty()
        && name.len() <= KEY_NAME_BYTES_MAX
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(ok_char);
    if !ok {
        return Err(KeyFileError::BadName(name.chars().take(80).collect()));
    }
    Ok((
        dir.join(format!("{name}.{SECRET_KEY_EXTENSION}")),
        dir.join(format!("{name}.{PUBLIC_KEY_EXTENSION}")),
    ))
}

/// Generates a key pair called `name` in `dir` (see [`key_paths`]), writing the secret key
/// file first. With [`IfExists::Refuse`], fails before writing anything if either file
/// exists. Returns the signing key.
pub fn generate_pair(
    dir: &Path,
    name: &str,
    if_exists: IfExists,
) -> Result<SigningKey, KeyFileError> {
    let (secret, public) = key_paths(dir, name)?;
    if if_exists == IfExists::Refuse {
        for path in [&secret, &public] {
            if path.exists() {
                return Err(KeyFileError::Exists { path: path.clone() });
            }
        }
    }
    let key = generate();
    write_secret(&secret, &key, if_exists)?;
    write_public(&public, &PublicKey::of(&key), if_exists)?;
    Ok(key)
}

/// A fresh signing key from the operating system's random source.
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// Writes `key`'s seed to a secret key file (mode 0600 on Unix).
pub fn write_secret(
    path: &Path,
    key: &SigningKey,
    if_exists: IfExists,
) -> Result<(), KeyFileError> {
    let mut line = Zeroizing::new(hex::encode(key.to_bytes()));
    line.push('\n');
    write(path, line.as_bytes(), SECRET_KEY_FILE_MODE, if_exists)
}

/// Writes a public key file.
pub fn write_public(path: &Path, key: &PublicKey, if_exists: IfExists) -> Result<(), KeyFileError> {
    let line = format!("{key}\n");
    write(path, line.as_bytes(), PUBLIC_KEY_FILE_MODE, if_exists)
}

fn write(path: &Path, bytes: &[u8], mode: u32, if_exists: IfExists) -> Result<(), KeyFileError> {
    let result = match if_exists {
        IfExists::Refuse => atomic_file::write_new(path, bytes, mode),
        IfExists::Replace => atomic_file::write_atomic(path, bytes, mode),
    };
    result.map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            KeyFileError::Exists {
                path: path.to_owned(),
            }
        } else {
            KeyFileError::Io {
                path: path.to_owned(),
                source,
            }
        }
    })
}

/// Which half of a key pair a file holds, as its name says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Named {
    /// `*.key`.
    Secret,
    /// `*.pub`.
    Public,
}

fn named(path: &Path) -> Option<Named> {
    let ext = path.extension()?.to_str()?;
    if ext.eq_ignore_ascii_case(SECRET_KEY_EXTENSION) {
        Some(Named::Secret)
    } else if ext.eq_ignore_ascii_case(PUBLIC_KEY_EXTENSION) {
        Some(Named::Public)
    } else {
        None
    }
}

/// Reads a secret key file, refusing a file named `*.pub`, and one the group or others may
/// access (on Unix).
pub fn read_secret(path: &Path) -> Result<SigningKey, KeyFileError> {
    // Before anything else, so that a public key file is never advised to be `chmod 600`ed
    // and then used to sign.
    if named(path) == Some(Named::Public) {
        return Err(KeyFileError::PublicNotSecret {
            path: path.to_owned(),
            secret: path.with_extension(SECRET_KEY_EXTENSION),
        });
    }
    let io_err = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let f = atomic_file::open_for_read(path).map_err(io_err)?;
    check_secret_mode(path, &f)?;
    let bytes = Zeroizing::new(read_key_file(path, f)?);
    let mut seed = Zeroizing::new([0u8; 32]);
    parse_hex(path, &bytes, &mut seed)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Refuses the open secret file `f` (named `path` in errors) if the group or others may
/// access it (on Unix; elsewhere it accepts). [`read_secret`] makes this check, and so does
/// every reader of another secret file (the relay's TLS private key), so that a secret left
/// readable is refused, with the same words, whatever kind it is. Checked on the open
/// handle, so that the file checked is the file read. A directory is refused as one first
/// ([`KeyFileError::Io`], `IsADirectory`): its mode is no secret file's, and `chmod 600`
/// is not the remedy.
pub fn check_secret_mode(path: &Path, f: &File) -> Result<(), KeyFileError> {
    let io_err = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = f.metadata().map_err(io_err)?;
    if meta.is_dir() {
        return Err(io_err(atomic_file::a_directory()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & SECRET_KEY_FILE_FORBIDDEN_MODE != 0 {
            return Err(KeyFileError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    Ok(())
}

/// Reads a public key file, refusing a file named `*.key` and a malformed or weak key.
pub fn read_public(path: &Path) -> Result<PublicKey, KeyFileError> {
    // Before opening it: its contents (a seed, read as a key) must go nowhere.
    if named(path) == Some(Named::Secret) {
        return Err(KeyFileError::SecretNotPublic {
            path: path.to_owned(),
            public: path.with_extension(PUBLIC_KEY_EXTENSION),
        });
    }
    let f = atomic_file::open_for_read(path).map_err(|source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    let bytes = read_key_file(path, f)?;
    let mut key = [0u8; 32];
    parse_hex(path, &bytes, &mut key)?;
    let key = PublicKey(key);
    key.to_verifying_key().map_err(|_| KeyFileError::BadKey {
        path: path.to_owned(),
    })?;
    Ok(key)
}

/// A public key given either as 64 hexadecimal digits or as the path of a public key file.
///
/// Used wherever an operator pins a key on the command line; a path is taken as given
/// (relative to the working directory), and read with [`read_public`], so a secret key
/// file (`*.key`) is refused.
pub fn resolve_public(spec: &str) -> Result<PublicKey, KeyFileError> {
    resolve_public_in(spec, Path::new(""))
}

/// [`resolve_public`] for a key named in a file: a path that is not absolute is taken
/// relative to `base`, the directory of the file that names it.
pub fn resolve_public_in(spec: &str, base: &Path) -> Result<PublicKey, KeyFileError> {
    let trimmed = spec.trim();
    if is_key_hex(trimmed) {
        let mut key = [0u8; 32];
        // Cannot fail: 64 hexadecimal digits were just checked.
        hex::decode_to_slice(trimmed, &mut key).map_err(|_| KeyFileError::BadInlineKey)?;
        let key = PublicKey(key);
        key.to_verifying_key()
            .map_err(|_| KeyFileError::BadInlineKey)?;
        return Ok(key);
    }
    // `Path::new("").join(spec)` is `spec`; an absolute `spec` replaces `base`.
    read_public(&base.join(spec))
}

/// Whether `text` is a key itself (64 hexadecimal digits, as a key file holds), rather
/// than the path of a key file.
pub fn is_key_hex(text: &str) -> bool {
    text.len() == KEY_HEX_CHARS && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn read_key_file(path: &Path, f: File) -> Result<Vec<u8>, KeyFileError> {
    atomic_file::read_bounded(f, KEY_FILE_BYTES_MAX).map_err(|e| match e {
        ReadError::Io(source) => KeyFileError::Io {
            path: path.to_owned(),
            source,
        },
        ReadError::TooLarge { len } => KeyFileError::TooLarge {
            path: path.to_owned(),
            len,
            max: KEY_FILE_BYTES_MAX,
        },
    })
}

fn parse_hex(path: &Path, bytes: &[u8], out: &mut [u8; 32]) -> Result<(), KeyFileError> {
    let format = || KeyFileError::Format {
        path: path.to_owned(),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| format())?.trim();
    if text.len() != KEY_HEX_CHARS {
        return Err(format());
    }
    hex::decode_to_slice(text, out).map_err(|_| format())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_and_public_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = generate();
        let sk = dir.path().join("KAZ.key");
        let pk = dir.path().join("KAZ.pub");
        write_secret(&sk, &key, IfExists::Refuse).expect("write secret");
        write_public(&pk, &PublicKey::of(&key), IfExists::Refuse).expect("write public");

        let text = std::fs::read_to_string(&sk).expect("read");
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        assert!(text[..64]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));

        assert_eq!(
            read_secret(&sk).expect("read secret").to_bytes(),
            key.to_bytes()
        );
        assert_eq!(read_public(&pk).expect("read public"), PublicKey::of(&key));
        let hex = std::fs::read_to_string(&pk).expect("read");
        assert_eq!(resolve_public(&hex).expect("hex"), PublicKey::of(&key));
        assert_eq!(
            resolve_public(pk.to_str().expect("utf-8 path")).expect("path"),
            PublicKey::of(&key)
        );
        // Named in a file: relative to that file's directory; absolute and hex as given.
        let name = pk.file_name().and_then(|n| n.to_str()).expect("name");
        assert_eq!(
            resolve_public_in(name, dir.path()).expect("relative"),
            PublicKey::of(&key)
        );
        let elsewhere = Path::new("/nonexistent-base");
        assert_eq!(
            resolve_public_in(pk.to_str().expect("utf-8 path"), elsewhere).expect("absolute"),
            PublicKey::of(&key)
        );
        assert_eq!(
            resolve_public_in(&hex, elsewhere).expect("hex"),
            PublicKey::of(&key)
        );
        assert!(
            resolve_public_in(name, elsewhere).is_err(),
            "not found there"
        );
        // 64 digits that are no point: refused, and the digits are not repeated.
        let not_a_point = format!("02{}", "0".repeat(62));
        let err = resolve_public(&not_a_point).expect_err("y = 2 is not on the curve");
        assert!(matches!(err, KeyFileError::BadInlineKey), "{err}");
        assert!(!err.to_string().contains(&not_a_point), "{err}");
    }

    /// A directory named where a key file belongs (`key = "keys"` for `keys/KAZ.key`) is
    /// refused as a directory: not as a key file too large (a directory's 4096 bytes), nor,
    /// as a secret, as one others may read with `chmod 600` for a remedy.
    #[cfg(unix)]
    #[test]
    fn a_directory_is_refused_as_one() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("keys");
        std::fs::create_dir(&dir).expect("mkdir");
        let is_a_directory = |e: KeyFileError| {
            let shown = e.to_string();
            assert!(
                matches!(&e, KeyFileError::Io { source, .. } if source.kind() == io::ErrorKind::IsADirectory),
                "{e:?}"
            );
            assert!(
                shown.contains("keys: is a directory")
                    && !shown.contains("chmod")
                    && !shown.contains("too large"),
                "{shown}"
            );
        };
        for mode in [0o700, 0o755] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
            is_a_directory(read_secret(&dir).expect_err("a directory"));
            is_a_directory(read_public(&dir).expect_err("a directory"));
        }
    }

    #[test]
    fn refuses_to_overwrite_unless_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sk = dir.path().join("a.key");
        let first = generate();
        write_secret(&sk, &first, IfExists::Refuse).expect("write");
        let e = write_secret(&sk, &generate(), IfExists::Refuse).expect_err("must refuse");
        assert!(matches!(e, KeyFileError::Exists { .. }), "{e}");
        assert!(e.to_string().contains("a.key"), "{e}");
        assert_eq!(read_secret(&sk).expect("read").to_bytes(), first.to_bytes());

        let second = generate();
        write_secret(&sk, &second, IfExists::Replace).expect("replace");
        assert_eq!(
            read_secret(&sk).expect("read").to_bytes(),
            second.to_bytes()
        );
    }

    #[cfg(unix)]
    #[test]
    fn secret_file_is_0600_even_when_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let sk = dir.path().join("a.key");
        write_secret(&sk, &generate(), IfExists::Refuse).expect("write");
        let mode = std::fs::metadata(&sk).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        write_secret(&sk, &generate(), IfExists::Replace).expect("replace");
        let mode = std::fs::metadata(&sk).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn refuses_group_or_world_readable_secret() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let sk = dir.path().join("loose.key");
        write_secret(&sk, &generate(), IfExists::Refuse).expect("write");
        for mode in [0o644, 0o640, 0o604, 0o601] {
            std::fs::set_permissions(&sk, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let e = read_secret(&sk).expect_err("must refuse");
            assert!(matches!(e, KeyFileError::Permissions { .. }), "{e}");
            assert!(e.to_string().contains("loose.key"), "{e}");
        }
        std::fs::set_permissions(&sk, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        read_secret(&sk).expect("0400 is fine");
    }

    #[test]
    fn refuses_malformed_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("bad.pub");
        for contents in ["", "abc\n", &"g".repeat(64), &"a".repeat(66)] {
            std::fs::write(&p, contents).expect("write");
            let e = read_public(&p).expect_err("must refuse");
            assert!(
                matches!(e, KeyFileError::Format { .. }),
                "{contents:?}: {e}"
            );
            assert!(e.to_string().contains("bad.pub"), "{e}");
        }
        std::fs::write(&p, vec![b'a'; KEY_FILE_BYTES_MAX + 1]).expect("write");
        assert!(matches!(
            read_public(&p),
            Err(KeyFileError::TooLarge { .. })
        ));
        // The identity point is a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        std::fs::write(&p, format!("{}\n", hex::encode(identity))).expect("write");
        assert!(matches!(read_public(&p), Err(KeyFileError::BadKey { .. })));
        let missing = dir.path().join("missing.pub");
        let e = read_public(&missing).expect_err("missing");
        assert!(e.to_string().contains("missing.pub"), "{e}");
    }

    #[test]
    fn key_pairs_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = generate_pair(dir.path(), "roster-signing", IfExists::Refuse).expect("pair");
        let (s, p) = key_paths(dir.path(), "roster-signing").expect("good name");
        assert_eq!(read_secret(&s).expect("secret").to_bytes(), key.to_bytes());
        assert_eq!(read_public(&p).expect("public"), PublicKey::of(&key));
        let e = generate_pair(dir.path(), "roster-signing", IfExists::Refuse).expect_err("exists");
        assert!(matches!(e, KeyFileError::Exists { .. }), "{e}");
        std::fs::remove_file(&s).expect("rm");
        // The public file alone also blocks a new pair, and nothing is written.
        assert!(generate_pair(dir.path(), "roster-signing", IfExists::Refuse).is_err());
        assert!(!s.exists());
        for bad in ["", "../x", ".hidden", "a/b", "-x", "a b", &"a".repeat(65)] {
            assert!(
                matches!(key_paths(dir.path(), bad), Err(KeyFileError::BadName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_secret_key_file_is_never_read_as_a_public_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = generate_pair(dir.path(), "KAZ", IfExists::Refuse).expect("pair");
        let seed = hex::encode(key.to_bytes());
        let (secret, public) = key_paths(dir.path(), "KAZ").expect("good name");
        let upper = dir.path().join("COPY.KEY");
        std::fs::copy(&secret, &upper).expect("copy");
        let by_path = secret.to_str().expect("utf-8 path");
        for e in [
            read_public(&secret).expect_err("a secret key file"),
            read_public(&upper).expect_err("any case"),
            resolve_public(by_path).expect_err("on the command line"),
            resolve_public_in("KAZ.key", dir.path()).expect_err("named in a file"),
        ] {
            assert!(matches!(e, KeyFileError::SecretNotPublic { .. }), "{e}");
            let text = e.to_string();
            assert!(text.contains(".key") && text.contains(".pub"), "{text}");
            assert!(!text.contains(&seed), "the seed is printed: {text}");
        }
        let e = read_public(&secret).expect_err("a secret key file");
        assert!(e.to_string().contains(&*public.to_string_lossy()), "{e}");
        // The same contents under another name are taken as asked.
        let other = dir.path().join("KAZ.hex");
        std::fs::copy(&public, &other).expect("copy");
        assert_eq!(read_public(&other).expect("read"), PublicKey::of(&key));
    }

    #[cfg(unix)]
    #[test]
    fn a_public_key_file_is_never_read_as_a_secret_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        generate_pair(dir.path(), "ROSTER", IfExists::Refuse).expect("pair");
        let (secret, public) = key_paths(dir.path(), "ROSTER").expect("good name");
        // Readable by all, as a public key file is; and even when it is not.
        for mode in [0o644, 0o600] {
            std::fs::set_permissions(&public, std::fs::Permissions::from_mode(mode))
                .expect("chmod");
            let e = read_secret(&public).expect_err("a public key file");
            assert!(matches!(e, KeyFileError::PublicNotSecret { .. }), "{e}");
            let text = e.to_string();
            assert!(!text.contains("chmod"), "advises chmod: {text}");
            assert!(text.contains(&*secret.to_string_lossy()), "{text}");
        }
    }

    #[test]
    fn accepts_crlf_and_upper_case() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k.pub");
        let key = PublicKey::of(&generate());
        std::fs::write(&p, format!("{}\r\n", key.to_string().to_uppercase())).expect("write");
        assert_eq!(read_public(&p).expect("read"), key);
    }
}
