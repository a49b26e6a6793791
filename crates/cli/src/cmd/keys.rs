//! `hotline keygen`: key pair generation.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use hotline_config::keyfile::{self, IfExists};
use hotline_proto::PublicKey;

/// Arguments of `hotline keygen`.
#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// Name of the key pair: a participant id (e.g. KAZ) or another name (e.g.
    /// roster-signing). The files are DIR/ID.key and DIR/ID.pub.
    #[arg(long, value_name = "ID")]
    id: String,

    /// Directory for the key files; created (mode 0700) if missing.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Replace existing key files. The old secret key is lost for good; replacing the roster
    /// key means re-pinning every node and relay (OPERATIONS.md 4.7).
    #[arg(long)]
    force: bool,
}

/// What a refusal to overwrite a key pair adds: how to replace it anyway, and why that is
/// rarely what is wanted.
const REPLACE_HINT: &str = "`--force` replaces it, and its secret key is then lost for \
     good: a participant's messages and log-ins stop verifying until a roster lists the new \
     key, and a new roster key means re-pinning every node and relay (OPERATIONS.md 4.7). \
     To rotate a key, generate the new one into another directory (4.4, 4.7)";

/// Generates a key pair and prints the public key.
pub(crate) fn run(args: KeygenArgs) -> Result<()> {
    // The name is checked before the directory is made, so that a refused one leaves
    // nothing behind: a malformed argument (status 2).
    let (secret, public) =
        keyfile::key_paths(&args.out, &args.id).map_err(|e| super::BadArgument::of("--id", e))?;
    ensure_key_dir(&args.out)?;
    let if_exists = if args.force {
        IfExists::Replace
    } else {
        IfExists::Refuse
    };
    let key = match keyfile::generate_pair(&args.out, &args.id, if_exists) {
        Err(e @ keyfile::KeyFileError::Exists { .. }) => {
            anyhow::bail!("{e}; {REPLACE_HINT}");
        }
        r => r?,
    };
    tracing::info!(
        secret = %secret.display(),
        public = %public.display(),
        "key pair written"
    );
    outln!("{}", PublicKey::of(&key));
    Ok(())
}

/// Creates a directory for key files if it does not exist, readable by its owner only.
pub(crate) fn ensure_key_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("cannot create key directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name that cannot be a key file's (`--id ../x`, a typo) is refused before anything
    /// is made: the missing `--out` directory was created first, and left behind, empty,
    /// by the refusal.
    #[test]
    fn a_bad_name_is_refused_before_the_directory_is_made() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let out = dir.path().join("keys");
        let err = run(KeygenArgs {
            id: "../x".into(),
            out: out.clone(),
            force: false,
        })
        .expect_err("not a key name");
        assert!(err.to_string().contains("\"../x\""), "{err:#}");
        assert!(!out.exists(), "nothing was made");
        // A good name makes the directory and the pair.
        run(KeygenArgs {
            id: "KAZ".into(),
            out: out.clone(),
            force: false,
        })
        .expect("written");
        assert!(out.join("KAZ.key").is_file() && out.join("KAZ.pub").is_file());
    }
}
