//! Bounded reads of the small text files a command is pointed at, and what the relay's and
//! the node's configuration files share.
//!
//! Every such file is read with a limit: a path that names something endless
//! (`/dev/zero`) or far too large (a disk image given by mistake) is refused after `max`
//! bytes with an error that says so, instead of being read until memory runs out.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use zeroize::Zeroizing;

use crate::atomic_file::{self, ReadError};
use crate::keyfile::{self, KeyFileError};
use crate::limits::{CONFIG_FILE_BYTES_MAX, TOKEN_FILE_BYTES_MAX};

/// Why a text file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TextFileError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is longer than a file of its kind may be.
    #[error("{path}: {len} bytes or more, more than the {max} allowed")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Bytes found (at least).
        len: u64,
        /// Bytes allowed.
        max: usize,
    },
    /// The file is not UTF-8 text.
    #[error("{path}:{line}:{column}: not UTF-8 text")]
    NotText {
        /// The file.
        path: PathBuf,
        /// 1-based line of the first byte that is not UTF-8.
        line: usize,
        /// 1-based column (in characters) of that byte.
        column: usize,
    },
    /// An API token file that holds no token: anything but one word of visible ASCII (an
    /// empty file, several words, other characters). Its content is never shown: it may be
    /// another file named by mistake (a key, `/etc/shadow`), and an HTTP client's error
    /// would otherwise print it in full.
    #[error(
        "{path}: not an API token (expected one line of visible ASCII with no spaces, such as \
         the 64 hexadecimal digits the node writes; the file's content is not shown)"
    )]
    NotAToken {
        /// The file.
        path: PathBuf,
    },
    /// A secret file read with [`read_secret`] (the relay's TLS private key) that the group
    /// or others may access, refused as a secret key file is: the check and the message,
    /// which names the file, its mode and the `chmod`, are
    /// [`keyfile::check_secret_mode`]'s.
    #[error(transparent)]
    Secret(#[from] KeyFileError),
}

impl TextFileError {
    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Reads the UTF-8 text file at `path`, refusing one longer than `max` bytes.
pub fn read(path: &Path, max: usize) -> Result<String, TextFileError> {
    read_open(path, open(path)?, max)
}

fn open(path: &Path) -> Result<std::fs::File, TextFileError> {
    atomic_file::open_for_read(path).map_err(|source| TextFileError::Io {
        path: path.to_owned(),
        source,
    })
}

/// [`read`] for a secret (the relay's TLS private key): first refuses a file the group or
/// others may access ([`TextFileError::Secret`]), as a secret key file is refused. The
/// text is zeroed when dropped.
pub fn read_secret(path: &Path, max: usize) -> Result<Zeroizing<String>, TextFileError> {
    let f = open(path)?;
    keyfile::check_secret_mode(path, &f)?;
    read_open(path, f, max).map(Zeroizing::new)
}

/// [`read`] of the file `f`, already open, named `path` in errors.
fn read_open(path: &Path, f: std::fs::File, max: usize) -> Result<String, TextFileError> {
    let io = |source| TextFileError::Io {
        path: path.to_owned(),
        source,
    };
    let bytes = atomic_file::read_bounded(f, max).map_err(|e| match e {
        ReadError::Io(source) => io(source),
        ReadError::TooLarge { len } => TextFileError::TooLarge {
            path: path.to_owned(),
            len,
            max,
        },
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        // Valid up to there, by the error's own word.
        let (line, column) = std::str::from_utf8(valid)
            .map_or((1, 1), |v| crate::roster_file::line_column(v, v.len()));
        TextFileError::NotText {
            path: path.to_owned(),
            line,
            column,
        }
    })
}

/// Why a relay's or a node's configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read (see [`TextFileError`]).
    #[error(transparent)]
    Read(#[from] TextFileError),
    /// Not valid TOML, a missing or unknown field, or a wrong type (names line and column).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A field has a value the service cannot use.
    #[error("{path}: field `{field}`: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A directory a field names (`data_dir`) cannot be made: a file is where it, or one of
    /// the directories above it, belongs.
    #[error(
        "{field} {dir}: {file} is a file, not a directory; `{field}` must name a directory, \
         or a path where one can be made"
    )]
    NotADirectory {
        /// The field.
        field: &'static str,
        /// The directory it names.
        dir: PathBuf,
        /// The file in the way: `dir` itself or one above it.
        file: PathBuf,
    },
}

impl ConfigError {
    /// After creating the directory `dir` that `field` names failed: the error if a file is
    /// in the way (`dir` itself, or one of the directories above it, is not a directory),
    /// which stays until someone changes the file or the configuration; `None` if not (a
    /// permission, a full disk), the creation's own error then being the one to report.
    pub fn not_a_directory(field: &'static str, dir: &Path) -> Option<Self> {
        let file = dir.ancestors().find(|a| a.exists() && !a.is_dir())?;
        Some(Self::NotADirectory {
            field,
            dir: dir.to_owned(),
            file: file.to_owned(),
        })
    }

    /// The field the error is about, when it is about a field's value.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Reads a node's API token file ([`TOKEN_FILE_BYTES_MAX`] at most), without the line end
/// or any surrounding whitespace: one word of visible ASCII (what an HTTP `Authorization`
/// header carries), else [`TextFileError::NotAToken`].
pub fn read_token(path: &Path) -> Result<String, TextFileError> {
    let text = read(path, TOKEN_FILE_BYTES_MAX)?;
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TextFileError::NotAToken {
            path: path.to_owned(),
        });
    }
    Ok(token.to_owned())
}

/// Why a path field of a relay's or a node's configuration given as `""` is refused.
pub const EMPTY_PATH: &str =
    "empty: give a path (a relative one is taken from this file's directory)";

/// Why a `roster_key` given as `""` is refused.
pub const EMPTY_KEY: &str =
    "empty: give the roster key (64 hexadecimal digits) or the path of its .pub file";

/// The first of a configuration's path fields `paths`, or its `roster_key`, given empty,
/// with why it is refused ([`EMPTY_PATH`], [`EMPTY_KEY`]): an empty path would name the
/// configuration's own directory (`/etc/hotline/` as a store or a token) or, for a file in
/// the working directory, nothing at all. Shared by the relay's and the node's parsers.
pub fn empty_field(
    paths: &[(&'static str, &Path)],
    roster_key: &str,
) -> Option<(&'static str, &'static str)> {
    paths
        .iter()
        .find(|(_, p)| p.as_os_str().is_empty())
        .map(|(field, _)| (*field, EMPTY_PATH))
        .or_else(|| {
            roster_key
                .trim()
                .is_empty()
                .then_some(("roster_key", EMPTY_KEY))
        })
}

/// Reads a configuration file's text ([`CONFIG_FILE_BYTES_MAX`] at most): a relay's or a
/// node's, an exercise scenario, an exercise's endpoints file.
pub fn read_config(path: &Path) -> Result<String, ConfigError> {
    Ok(read(path, CONFIG_FILE_BYTES_MAX)?)
}

/// Parses configuration text as TOML into `T`; `path` names it in errors.
pub fn parse_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: without_keys(&e.to_string()),
    })
}

/// `text` with every run of 64 or more hexadecimal digits replaced by a placeholder. The
/// TOML parser's errors quote the line they are about, and a line that does not parse may
/// be a key pasted without its quotes (`roster_key = 4f3a…`), perhaps a secret seed: it
/// must not reach a terminal or a log a second time.
fn without_keys(text: &str) -> String {
    const PLACEHOLDER: &str = "<hexadecimal digits not shown>";
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= crate::limits::KEY_HEX_CHARS {
            out.push_str(PLACEHOLDER);
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_in_a_line_that_does_not_parse_is_not_quoted() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct C {
            roster_key: String,
        }
        let seed = "4f3a".repeat(16);
        for text in [
            format!("roster_key = {seed}\n"),
            format!("roster_key = \"{seed}\"\nroster_key = \"{seed}\"\n"),
        ] {
            let e = parse_toml::<C>(&text, Path::new("node.toml")).expect_err("refused");
            let shown = e.to_string();
            assert!(!shown.contains(&seed), "{shown}");
            assert!(
                shown.contains("not shown") && shown.contains("node.toml"),
                "{shown}"
            );
        }
        // Shorter runs, such as a line number or a port, are left alone.
        assert_eq!(without_keys("line 12: 7400 abc"), "line 12: 7400 abc");
    }

    #[test]
    fn an_endless_file_is_refused_at_the_limit() {
        let e = read(Path::new("/dev/zero"), 1024).expect_err("endless");
        assert!(
            matches!(
                e,
                TextFileError::TooLarge {
                    len: 1025,
                    max: 1024,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("/dev/zero"), "{e}");
    }

    #[test]
    fn text_is_read_whole_and_bad_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.toml");
        std::fs::write(&p, "x = 1\n").expect("write");
        assert_eq!(read(&p, 6).expect("at the limit"), "x = 1\n");
        assert!(matches!(
            read(&p, 5),
            Err(TextFileError::TooLarge { len: 6, .. })
        ));
        std::fs::write(&p, [0xff, 0xfe]).expect("write");
        assert!(matches!(read(&p, 10), Err(TextFileError::NotText { .. })));
        let token = dir.path().join("api.token");
        std::fs::write(&token, "  ab12\n").expect("write");
        assert_eq!(read_token(&token).expect("token"), "ab12", "trimmed");
        // Not a token: refused by name, and what the file holds is not repeated.
        for wrong in [
            "\n",
            "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1\n",
            "two words",
        ] {
            std::fs::write(&token, wrong).expect("write");
            let e = read_token(&token).expect_err(wrong);
            assert!(matches!(e, TextFileError::NotAToken { .. }), "{e:?}");
            let shown = e.to_string();
            assert!(shown.contains("not an API token"), "{shown}");
            assert!(
                !shown.contains("root") && !shown.contains("words"),
                "{shown}"
            );
        }
        let missing = read(&dir.path().join("none"), 10).expect_err("missing");
        assert!(missing.is_not_found(), "{missing:?}");
    }

    /// A configuration that is not UTF-8 (a comment typed in Latin-1: `café` as `caf\xe9`)
    /// is refused naming the line and column of the first byte that is not, as a roster
    /// draft's is, so that the operator need not search a page of TOML for one character.
    #[test]
    fn text_that_is_not_utf8_names_the_line_and_column() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("node.toml");
        std::fs::write(&p, b"x = 1\n# \xc3\xa9t\xc3\xa9, caf\xe9\ny = 2\n").expect("write");
        let e = read(&p, 1024).expect_err("not UTF-8");
        assert!(
            matches!(
                e,
                TextFileError::NotText {
                    line: 2,
                    column: 11,
                    ..
                }
            ),
            "{e:?}"
        );
        let shown = e.to_string();
        assert!(shown.contains("node.toml:2:11: not UTF-8 text"), "{shown}");
        // A configuration too: the same error, through `read_config`.
        let shown = read_config(&p).expect_err("not UTF-8").to_string();
        assert!(shown.contains("node.toml:2:11: not UTF-8 text"), "{shown}");
    }

    /// A named pipe (FIFO) that nothing writes to, where a file belongs, is refused as one,
    /// naming it: opening it for reading waited for a writer for ever, so that a node or a
    /// relay whose configuration named one hung at start, and `hotline config check` with
    /// it. Each reader is run on a thread and waited for with a time limit.
    #[cfg(unix)]
    #[test]
    fn a_named_pipe_nothing_writes_to_is_refused_not_waited_on() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("KAZ.key");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success(), "mkfifo");
        std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        type Reader = fn(&Path) -> Result<(), String>;
        let readers: [(&str, Reader); 5] = [
            ("text", |p| {
                read(p, 1024).map(drop).map_err(|e| e.to_string())
            }),
            ("secret text", |p| {
                read_secret(p, 1024).map(drop).map_err(|e| e.to_string())
            }),
            ("secret key", |p| {
                keyfile::read_secret(p).map(drop).map_err(|e| e.to_string())
            }),
            ("public key", |p| {
                keyfile::read_public(&p.with_extension("hex"))
                    .map(drop)
                    .map_err(|e| e.to_string())
            }),
            ("signed roster", |p| {
                crate::roster_file::read_signed_roster(p)
                    .map(drop)
                    .map_err(|e| e.to_string())
            }),
        ];
        std::fs::hard_link(&fifo, fifo.with_extension("hex")).expect("link");
        for (what, reader) in readers {
            let (tx, rx) = std::sync::mpsc::channel();
            let path = fifo.clone();
            std::thread::spawn(move || {
                let _ = tx.send(reader(&path));
            });
            let e = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("{what}: still waiting for a writer after 10 s"))
                .expect_err(what);
            assert!(
                e.contains("KAZ.") && e.contains("named pipe"),
                "{what}: {e}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_others_may_read_is_refused_as_a_secret_key_file_is() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("relay.key");
        std::fs::write(&p, "-----BEGIN PRIVATE KEY-----\n").expect("write");
        for mode in [0o640, 0o604, 0o644] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let e = read_secret(&p, 1024).expect_err("readable by others");
            assert!(
                matches!(
                    e,
                    TextFileError::Secret(KeyFileError::Permissions { mode: m, .. }) if m == mode
                ),
                "{e:?}"
            );
            let shown = e.to_string();
            assert!(
                shown.contains("relay.key")
                    && shown.contains(&format!("{mode:04o}"))
                    && shown.contains("chmod 600"),
                "{shown}"
            );
            // `read` is for files that are not secret, and does not check.
            assert!(read(&p, 1024).is_ok());
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            read_secret(&p, 1024).expect("owner only").as_str(),
            "-----BEGIN PRIVATE KEY-----\n"
        );
        let e = read_secret(&p, 10).expect_err("too large");
        assert!(matches!(e, TextFileError::TooLarge { .. }), "{e:?}");
        // A directory where the key belongs is refused as a directory, not for its mode.
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).expect("mkdir");
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let e = read_secret(&keys, 1024).expect_err("a directory");
        let shown = e.to_string();
        assert!(
            shown.contains("keys: is a directory") && !shown.contains("chmod"),
            "{shown}"
        );
    }

    #[test]
    fn config_errors_name_the_file_and_the_field() {
        let p = Path::new("relay.toml");
        let e = parse_toml::<std::collections::HashMap<String, u32>>("n = \"x\"", p)
            .expect_err("wrong type");
        assert!(e.to_string().starts_with("relay.toml: "), "{e}");
        assert_eq!(e.field(), None);
        let e = ConfigError::Invalid {
            path: p.to_owned(),
            field: "n",
            reason: "too small".into(),
        };
        assert_eq!(e.field(), Some("n"));
        assert_eq!(e.to_string(), "relay.toml: field `n`: too small");
    }
}
