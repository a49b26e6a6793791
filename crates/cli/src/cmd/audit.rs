//! `hotline audit verify`: check a relay's or a node's hash-chained audit journal.

use std::path::{Path, PathBuf};

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
    let meta = match std::fs::metadata(&data) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "{}: no such data directory or store file (a relay's is /var/lib/hotline-relay, a \
             node's /var/lib/hotline-node)",
            data.display()
        ),
        Err(e) => return Err(out_of_reach(&data, &e)),
    };
    if !meta.is_dir() {
        return regular(data, &meta);
    }
    for p in DB_FILES.iter().map(|f| data.join(f)) {
        if exists(&p)? {
            let meta = std::fs::metadata(&p).map_err(|e| out_of_reach(&p, &e))?;
            return regular(p, &meta);
        }
    }
    anyhow::bail!("{}: no relay.db or node.db here", data.display())
}

/// `db` if it is a regular file (`meta`, its metadata): anything else (a named pipe, a
/// device) is refused as no store before anything opens it. Opening a named pipe nothing
/// writes to waits for ever, as SQLite would, and `audit verify` and `backup` hung there.
pub(crate) fn regular(db: PathBuf, meta: &std::fs::Metadata) -> anyhow::Result<PathBuf> {
    if !meta.is_file() {
        anyhow::bail!(
            "{}: not a regular file (a named pipe? a device?), so no store: give the data \
             directory, or its relay.db or node.db, or a copy `hotline backup` wrote",
            db.display()
        );
    }
    Ok(db)
}

/// Whether `db` is a relay's store (`true`) or a node's (`false`), read-only. Anything else
/// (a configuration given by mistake, an empty file, another program's database) is refused
/// naming it, before a command opens it for writing (`hotline backup`'s open set an empty
/// file up as a database) or reports its missing journal as `no such table: journal`.
pub(crate) fn store_kind(db: &Path) -> anyhow::Result<bool> {
    let unreadable = || format!("{}: cannot read it as a store", db.display());
    let conn = hotline_store::open_read_only(db).with_context(unreadable)?;
    if hotline_relay::store::is_relay_store(&conn).with_context(unreadable)? {
        return Ok(true);
    }
    let node = conn
        .prepare("SELECT 1 FROM inbox LIMIT 0")
        .and_then(|_| conn.prepare("SELECT 1 FROM journal LIMIT 0"))
        .is_ok();
    if !node {
        anyhow::bail!(
            "{}: neither a relay's nor a node's store (give the data directory, or its \
             relay.db or node.db, or a copy `hotline backup` wrote)",
            db.display()
        );
    }
    Ok(false)
}

/// The first bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Refuses `db` as no store if it holds bytes but does not start as an SQLite database does
/// (the relay's configuration typed for its data directory): `PRAGMA quick_check` calls such
/// a file a corrupt database, which sends an operator to restore a store that is whole. An
/// empty file is left to [`store_kind`], which names it as no store too.
fn refuse_non_database(db: &Path) -> anyhow::Result<()> {
    use std::io::Read as _;
    let mut head = Vec::with_capacity(SQLITE_HEADER.len());
    std::fs::File::open(db)
        .and_then(|f| f.take(SQLITE_HEADER.len() as u64).read_to_end(&mut head))
        .with_context(|| format!("{}: cannot read it", db.display()))?;
    if !head.is_empty() && head != SQLITE_HEADER {
        anyhow::bail!(
            "{}: neither a relay's nor a node's store (not an SQLite database at all): give \
             the data directory, or its relay.db or node.db, or a copy `hotline backup` wrote",
            db.display()
        );
    }
    Ok(())
}

/// Whether `path` exists. One this user may not look at is an error naming it and saying
/// who may, not a missing file: a service's data directory is its account's alone (the
/// package's are `hotline`'s, mode 0700), and "no store here" would send an operator
/// looking for a store that is there.
pub(crate) fn exists(path: &Path) -> anyhow::Result<bool> {
    path.try_exists().map_err(|e| out_of_reach(path, &e))
}

/// The error for `path`, which this user could not look at (`e`).
fn out_of_reach(path: &Path, e: &std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        anyhow::anyhow!(
            "{}: {e}: a service's data directory is readable by its account only: run this as \
             that account (sudo -u hotline …) or as root",
            path.display()
        )
    } else {
        anyhow::anyhow!("{}: {e}", path.display())
    }
}

pub(crate) fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify { data } => {
            // A file named directly that is no database at all is the wrong file, not a
            // damaged store; a data directory's store that SQLite cannot read is damaged.
            let named = !data.is_dir();
            let db = store_file(data)?;
            if named {
                refuse_non_database(&db)?;
            }
            // Read-only: checking a store (or the only backup) never changes it, not even
            // its journal mode; the service's WAL beside it is read.
            let conn = hotline_store::open_read_only(&db)?;
            hotline_store::quick_check(&conn, &db)?;
            // A newer release's store may hold records this one cannot read: said so, not
            // reported as a journal or record that does not verify.
            let relay = store_kind(&db)?;
            if relay {
                hotline_relay::store::check_schema_version(&conn, &db)?;
            } else {
                hotline_node::store::check_schema_version(&conn, &db)?;
            }
            let report = hotline_store::verify_journal(&conn)
                .with_context(|| format!("{}: audit journal does not verify", db.display()))?;
            let records = if relay {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_is_found_in_its_directory_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let missing = dir.path().join("hotline-relay");
        let err = store_file(missing.clone()).expect_err("a missing directory");
        assert!(
            err.to_string()
                .starts_with(&format!("{}: no such data directory", missing.display())),
            "{err:#}"
        );
        let err = store_file(dir.path().to_owned()).expect_err("no store in it");
        assert!(
            err.to_string().ends_with("no relay.db or node.db here"),
            "{err:#}"
        );
        std::fs::write(dir.path().join("node.db"), b"").expect("write");
        assert_eq!(
            store_file(dir.path().to_owned()).expect("found"),
            dir.path().join("node.db")
        );
        let file = dir.path().join("copy.db");
        std::fs::write(&file, b"").expect("write");
        assert_eq!(store_file(file.clone()).expect("a file as itself"), file);
    }

    /// A named pipe given as the store (or found as one in a data directory) is refused as
    /// no store, naming it: `audit verify` opened it to read its first bytes, and `backup`
    /// had SQLite open it, and both waited for ever for a writer that never came.
    #[test]
    fn a_named_pipe_is_refused_as_no_store_not_opened() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let fifo = dir.path().join("relay.db");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success(), "mkfifo");
        for given in [fifo.clone(), dir.path().to_owned()] {
            let err = store_file(given.clone()).expect_err("a named pipe");
            let shown = format!("{err:#}");
            assert!(
                shown.starts_with(&format!("{}: not a regular file", fifo.display())),
                "{}: {shown}",
                given.display()
            );
        }
    }
}
