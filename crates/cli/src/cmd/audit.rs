//! `hotline audit verify`: check a relay's or a node's hash-chained audit journal.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Recompute the journal's hash chain and name the first broken entry; also check, on a
    /// relay store, that every journaled message and receipt matches its stored row and every
    /// stored one is journaled, and on a node store, that every stored message and receipt
    /// is a record its journal holds.
    Verify {
        /// The data directory (holding relay.db or node.db), or the database file itself.
        #[arg(long)]
        data: PathBuf,
    },
}

/// Database files that hold a journal, in the order they are looked for.
const DB_FILES: [&str; 2] = ["relay.db", "node.db"];

/// The store named by `--data`: `relay.db` or `node.db` in a data directory, or the file
/// itself.
pub(crate) fn store_file(data: PathBuf) -> anyhow::Result<PathBuf> {
    if !data.is_dir() {
        return Ok(data);
    }
    DB_FILES
        .iter()
        .map(|f| data.join(f))
        .find(|p| p.exists())
        .with_context(|| format!("{}: no relay.db or node.db here", data.display()))
}

pub(crate) fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify { data } => {
            let db = store_file(data)?;
            let conn = hotline_store::open(&db, false)?;
            let report = hotline_store::verify_journal(&conn)
                .with_context(|| format!("{}: audit journal does not verify", db.display()))?;
            let records = if hotline_relay::store::is_relay_store(&conn)? {
                let n = hotline_relay::store::verify_journaled_records(&conn, &db).with_context(
                    || format!("{}: stored records and journal differ", db.display()),
                )?;
                format!("; {n} stored messages and receipts match their entries")
            } else {
                let n = hotline_node::store::verify_records(&conn, &db).with_context(|| {
                    format!("{}: stored records and journal differ", db.display())
                })?;
                format!("; {n} stored messages and receipts are records of its entries")
            };
            outln!(
                "OK: {} entries, head {}{records}",
                report.entries,
                hex::encode(report.head)
            );
            Ok(())
        }
    }
}
