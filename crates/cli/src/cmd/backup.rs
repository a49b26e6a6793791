//! `hotline backup`: a consistent copy of a relay's or a node's store while it runs.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

/// `hotline backup --data DIR --out FILE`.
#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// The data directory (holding relay.db or node.db), or the database file itself.
    #[arg(long)]
    data: PathBuf,
    /// Where to write the copy: a new file (an existing one is never replaced), mode 0600.
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn run(args: BackupArgs) -> anyhow::Result<()> {
    let db = super::audit::store_file(args.data)?;
    let b = hotline_store::backup(&db, &args.out)
        .with_context(|| format!("backing up {} to {}", db.display(), args.out.display()))?;
    tracing::info!(db = %db.display(), out = %args.out.display(), bytes = b.bytes, entries = b.journal.entries, "backup written");
    outln!(
        "OK: {} written from {}: {} bytes, checked; journal {} entries, head {}",
        args.out.display(),
        db.display(),
        b.bytes,
        b.journal.entries,
        hex::encode(b.journal.head)
    );
    Ok(())
}
