//! The append-only, hash-chained audit journal.
//!
//! Every entry commits to the one before it:
//!
//! ```text
//! hash(n) = SHA-256( "cica-hotline/1/journal\0" || hash(n-1) || u64le(n) || u64le(at_ms)
//!                    || u32le(len kind) || kind || u32le(len subject) || subject
//!                    || u64le(len payload) || payload )
//! ```
//!
//! with `hash(0)` = 32 zero bytes and entries numbered from 1 without gaps. Editing,
//! inserting or deleting any entry breaks every later hash, and `verify` names the first
//! entry that no longer matches. (Cutting entries off the end leaves a valid shorter chain:
//! operators who need to detect that record the head hash elsewhere, e.g. in their logs,
//! where `hotline audit verify` prints it.)

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::db::StoreError;

const DOMAIN: &[u8] = b"cica-hotline/1/journal\0";

/// SQL that creates the journal table; run by each store's schema set-up.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    payload BLOB NOT NULL,
    hash BLOB NOT NULL
);";

/// One journal entry as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// Position, from 1.
    pub seq: u64,
    /// When it was appended, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened, e.g. `message.accepted`, `receipt.stored`.
    pub kind: String,
    /// What it is about, e.g. a message id.
    pub subject: String,
    /// The record itself (e.g. the signed bytes).
    pub payload: Vec<u8>,
    /// This entry's chain hash.
    pub hash: [u8; 32],
}

/// The outcome of a successful verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalReport {
    /// Entries checked.
    pub entries: u64,
    /// Hash of the last entry (zeros if empty), to be recorded elsewhere.
    pub head: [u8; 32],
    /// When the last entry was written, in milliseconds since the Unix epoch (0 if empty):
    /// a store copied later holds nothing after it.
    pub last_at_ms: u64,
}

fn chain_hash(
    prev: &[u8; 32],
    seq: u64,
    at_ms: u64,
    kind: &str,
    subject: &str,
    payload: &[u8],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(prev);
    h.update(seq.to_le_bytes());
    h.update(at_ms.to_le_bytes());
    // Lengths fit: kinds and subjects are short strings chosen by our own code.
    h.update((kind.len() as u32).to_le_bytes());
    h.update(kind.as_bytes());
    h.update((subject.len() as u32).to_le_bytes());
    h.update(subject.as_bytes());
    h.update((payload.len() as u64).to_le_bytes());
    h.update(payload);
    h.finalize().into()
}

/// The writer's handle on the journal: knows the head, appends inside the caller's
/// transaction, and is told whether that transaction committed.
#[derive(Debug)]
pub struct Journal {
    head_seq: u64,
    head_hash: [u8; 32],
    saved: (u64, [u8; 32]),
}

impl Journal {
    /// Reads the head of the journal. The table must exist.
    pub fn load(conn: &Connection) -> Result<Self, StoreError> {
        let head: Option<(u64, Vec<u8>)> = conn
            .query_row(
                "SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (head_seq, head_hash) = match head {
            None => (0, [0u8; 32]),
            Some((seq, hash)) => {
                let hash: [u8; 32] = hash.try_into().map_err(|_| StoreError::JournalBroken {
                    seq,
                    reason: "stored hash is not 32 bytes".into(),
                })?;
                (seq, hash)
            }
        };
        Ok(Self {
            head_seq,
            head_hash,
            saved: (head_seq, head_hash),
        })
    }

    /// Marks the start of a transaction: `rollback` returns here.
    pub fn begin(&mut self) {
        self.saved = (self.head_seq, self.head_hash);
    }

    /// Forgets appends made since `begin`, after the transaction was rolled back.
    pub fn rollback(&mut self) {
        (self.head_seq, self.head_hash) = self.saved;
    }

    /// Appends an entry inside the caller's open transaction.
    pub fn append(
        &mut self,
        conn: &Connection,
        at_ms: u64,
        kind: &str,
        subject: &str,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        let seq = self.head_seq + 1;
        let hash = chain_hash(&self.head_hash, seq, at_ms, kind, subject, payload);
        conn.prepare_cached(
            "INSERT INTO journal (seq, at_ms, kind, subject, payload, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![seq, at_ms, kind, subject, payload, &hash[..]])?;
        self.head_seq = seq;
        self.head_hash = hash;
        Ok(())
    }

    /// Entries appended so far (including uncommitted ones since `begin`).
    pub fn len(&self) -> u64 {
        self.head_seq
    }

    /// Whether the journal is empty.
    pub fn is_empty(&self) -> bool {
        self.head_seq == 0
    }
}

/// Walks the whole journal, recomputing every hash; names the first entry that is missing,
/// out of order or altered.
pub fn verify(conn: &Connection) -> Result<JournalReport, StoreError> {
    let mut stmt =
        conn.prepare("SELECT seq, at_ms, kind, subject, payload, hash FROM journal ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    let mut prev = [0u8; 32];
    let mut expected = 1u64;
    let mut last_at_ms = 0;
    while let Some(r) = rows.next()? {
        // Read as SQLite's integer, which `seq` (the rowid) always is: a number below 1
        // (sorted first) is an entry out of place, named as one.
        let seq: i64 = r.get(0)?;
        if seq != expected as i64 {
            return Err(StoreError::JournalBroken {
                seq: expected,
                reason: format!("entry missing (next present entry is {seq})"),
            });
        }
        let seq = expected;
        // SQLite keeps whatever type a value was written with (the `sqlite3` shell writes a
        // quoted value as text, into a BLOB column too): an entry edited so is altered, and
        // named as such, not reported as a storage failure that names no entry.
        let at_ms: u64 = column(r, 1, seq, "at_ms")?;
        let kind: String = column(r, 2, seq, "kind")?;
        let subject: String = column(r, 3, seq, "subject")?;
        let payload: Vec<u8> = column(r, 4, seq, "payload")?;
        let stored: Vec<u8> = column(r, 5, seq, "hash")?;
        let hash = chain_hash(&prev, seq, at_ms, &kind, &subject, &payload);
        if stored[..] != hash[..] {
            return Err(StoreError::JournalBroken {
                seq,
                reason: format!(
                    "hash mismatch ({kind} {subject}): entry or an earlier one was altered"
                ),
            });
        }
        prev = hash;
        last_at_ms = at_ms;
        expected += 1;
    }
    Ok(JournalReport {
        entries: expected - 1,
        head: prev,
        last_at_ms,
    })
}

/// Column `i` (`name`) of entry `seq` as a `T`; a value that is not one (of another type,
/// out of range, text that is not UTF-8) breaks the entry.
fn column<T: rusqlite::types::FromSql>(
    r: &rusqlite::Row<'_>,
    i: usize,
    seq: u64,
    name: &str,
) -> Result<T, StoreError> {
    r.get(i).map_err(|e| match e {
        rusqlite::Error::InvalidColumnType(_, _, found) => StoreError::JournalBroken {
            seq,
            reason: format!("its {name} holds a value of type {found}: the entry was altered"),
        },
        rusqlite::Error::IntegralValueOutOfRange(_, value) => StoreError::JournalBroken {
            seq,
            reason: format!("its {name} is {value}, out of range: the entry was altered"),
        },
        rusqlite::Error::FromSqlConversionFailure(_, _, why) => StoreError::JournalBroken {
            seq,
            reason: format!("its {name} does not read ({why}): the entry was altered"),
        },
        other => other.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = crate::open(&dir.path().join("t.db"), true).expect("open");
        conn.execute_batch(SCHEMA).expect("schema");
        (dir, conn)
    }

    #[test]
    fn chain_verifies_and_names_the_first_altered_entry() {
        let (_d, mut conn) = db();
        let mut j = Journal::load(&conn).expect("load");
        let tx = conn.transaction().expect("tx");
        for i in 0..5u64 {
            j.append(
                &tx,
                1000 + i,
                "message.accepted",
                &format!("m{i}"),
                b"payload",
            )
            .expect("append");
        }
        tx.commit().expect("commit");
        let report = verify(&conn).expect("verifies");
        assert_eq!(report.entries, 5);

        conn.execute("UPDATE journal SET payload = x'00' WHERE seq = 3", [])
            .expect("tamper");
        match verify(&conn) {
            Err(StoreError::JournalBroken { seq, .. }) => assert_eq!(seq, 3),
            other => panic!("expected a broken chain at 3, got {other:?}"),
        }
    }

    #[test]
    fn a_deleted_entry_is_detected() {
        let (_d, mut conn) = db();
        let mut j = Journal::load(&conn).expect("load");
        let tx = conn.transaction().expect("tx");
        for i in 0..3u64 {
            j.append(&tx, i, "k", "s", b"p").expect("append");
        }
        tx.commit().expect("commit");
        conn.execute("DELETE FROM journal WHERE seq = 2", [])
            .expect("delete");
        assert!(matches!(
            verify(&conn),
            Err(StoreError::JournalBroken { seq: 2, .. })
        ));
    }

    /// An entry edited outside the service with a value of another type (the `sqlite3`
    /// shell writes a quoted value as text, and a BLOB column keeps it so) is a broken
    /// entry, named, not a storage failure that names none.
    #[test]
    fn an_entry_altered_to_another_type_is_named() {
        for (seq, edit) in [
            (2, "payload = 'forged'"),
            (3, "hash = 'forged'"),
            (4, "at_ms = -1"),
            (5, "kind = x'ff'"),
            (6, "subject = x'ff'"),
            (1, "seq = -1"),
        ] {
            let (_d, mut conn) = db();
            let mut j = Journal::load(&conn).expect("load");
            let tx = conn.transaction().expect("tx");
            for i in 0..6u64 {
                j.append(&tx, 1000 + i, "message.accepted", "m", b"p")
                    .expect("append");
            }
            tx.commit().expect("commit");
            conn.execute(&format!("UPDATE journal SET {edit} WHERE seq = {seq}"), [])
                .expect("tamper");
            match verify(&conn) {
                Err(StoreError::JournalBroken { seq: at, reason }) => {
                    assert_eq!(at, seq, "{edit}: {reason}")
                }
                other => panic!("{edit}: expected a broken chain at {seq}, got {other:?}"),
            }
        }
    }

    #[test]
    fn rollback_restores_the_head() {
        let (_d, mut conn) = db();
        let mut j = Journal::load(&conn).expect("load");
        j.begin();
        {
            let tx = conn.transaction().expect("tx");
            j.append(&tx, 1, "k", "s", b"p").expect("append");
            // Dropped without commit: rolled back.
        }
        j.rollback();
        let tx = conn.transaction().expect("tx");
        j.append(&tx, 2, "k", "s", b"p").expect("append");
        tx.commit().expect("commit");
        assert_eq!(verify(&conn).expect("verifies").entries, 1);
        assert_eq!(Journal::load(&conn).expect("load").len(), 1);
    }
}

#[cfg(test)]
mod backup_tests {
    use super::*;

    /// A backup taken while a connection holds uncheckpointed commits has all of them, is
    /// private to its owner, and never replaces a file.
    #[test]
    fn a_backup_holds_every_commit_and_refuses_to_overwrite() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("live.db");
        let mut conn = crate::open(&src, true).expect("open");
        conn.execute_batch(SCHEMA).expect("schema");
        // Commits stay in the WAL: the copy must read them from there.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
            .expect("no checkpoints");
        let mut j = Journal::load(&conn).expect("load");
        for i in 0..3u64 {
            let tx = conn.transaction().expect("tx");
            j.append(&tx, 1000 + i, "message.accepted", &format!("m{i}"), b"x")
                .expect("append");
            tx.commit().expect("commit");
        }
        let live = verify(&conn).expect("verifies");

        let out = dir.path().join("copy.db");
        let b = crate::backup(&src, &out).expect("backup");
        assert_eq!(b.journal, live);
        assert_eq!(b.bytes, std::fs::metadata(&out).expect("copy").len());
        let mode = std::fs::metadata(&out).expect("copy").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let copy = rusqlite::Connection::open(&out).expect("opens");
        assert_eq!(verify(&copy).expect("verifies").entries, 3);

        match crate::backup(&src, &out) {
            Err(StoreError::Io { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists)
            }
            other => panic!("expected the existing file refused, got {other:?}"),
        }
        assert_eq!(verify(&copy).expect("still there").entries, 3);
        assert!(crate::backup(&dir.path().join("missing.db"), &dir.path().join("m.db")).is_err());
        assert!(!dir.path().join("m.db").exists(), "nothing left behind");
    }

    /// A store with `n` journal entries, in `dir/relay.db`; the connection is returned open,
    /// its commits in the WAL.
    fn live_store(dir: &std::path::Path, n: u64) -> (Connection, Journal) {
        let mut conn = crate::open(&dir.join("relay.db"), true).expect("open");
        conn.execute_batch(SCHEMA).expect("schema");
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
            .expect("no checkpoints");
        let mut j = Journal::load(&conn).expect("load");
        append(&mut conn, &mut j, n);
        (conn, j)
    }

    fn append(conn: &mut Connection, j: &mut Journal, n: u64) {
        for _ in 0..n {
            let tx = conn.transaction().expect("tx");
            j.append(&tx, 1000 + j.len(), "message.accepted", "m", b"x")
                .expect("append");
            tx.commit().expect("commit");
        }
    }

    /// Run as root (an administrator's `sudo hotline restore`), a restore gives the store
    /// the data directory's owner, so that the service's account can open it.
    #[test]
    fn a_restore_gives_the_store_the_directory_owner() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let (conn, _) = live_store(&data, 1);
        drop(conn);
        let copy = dir.path().join("copy.db");
        crate::backup(&data.join("relay.db"), &copy).expect("backup");
        std::fs::remove_file(data.join("relay.db")).expect("the disk is lost");
        if std::fs::metadata(&copy).expect("copy").uid() != 0 {
            println!("SKIPPED: giving a file to another owner needs root");
            return;
        }
        // The service's account: any uid but root's.
        std::os::unix::fs::chown(&data, Some(65_534), Some(65_534)).expect("chown");
        let r = crate::restore(
            &copy,
            &data,
            "relay.db",
            "aside.db",
            |_, _| Ok(()),
            |_, _| Ok(()),
        )
        .expect("restore");
        assert!(r.set_aside.is_empty());
        let meta = std::fs::metadata(data.join("relay.db")).expect("restored");
        assert_eq!((meta.uid(), meta.gid()), (65_534, 65_534));
        // So is the claim's file, which the service opens at its start.
        let lock = std::fs::metadata(data.join(crate::LOCK_FILE)).expect("claimed");
        assert_eq!((lock.uid(), lock.gid()), (65_534, 65_534));
    }

    /// A restore checks the copy, never changes it, puts it in place of the store and sets
    /// the store it replaces aside whole (with its WAL, still readable); it is refused while
    /// the directory is claimed, and a copy that fails its check, or a name already taken,
    /// leaves the store as it was.
    #[test]
    fn a_restore_replaces_the_store_and_keeps_the_one_it_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let (mut conn, mut j) = live_store(&data, 3);
        let copy = dir.path().join("copy.db");
        let backed_up = crate::backup(&data.join("relay.db"), &copy).expect("backup");
        append(&mut conn, &mut j, 2);
        // The service is killed: its WAL stays.
        std::mem::forget(conn);
        assert!(data.join("relay.db-wal").exists());
        let copy_bytes = std::fs::read(&copy).expect("copy");

        let claim = crate::lock_dir(&data).expect("the service's claim");
        match crate::restore(
            &copy,
            &data,
            "relay.db",
            "relay-aside.db",
            |_, _| Ok(()),
            |_, _| Ok(()),
        ) {
            Err(StoreError::Locked { .. }) => {}
            other => panic!("expected the restore refused while claimed, got {other:?}"),
        }
        drop(claim);

        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![7u8; 8192]).expect("garbage");
        assert!(crate::restore(
            &garbage,
            &data,
            "relay.db",
            "relay-aside.db",
            |_, _| Ok(()),
            |_, _| Ok(())
        )
        .is_err());
        assert!(!data.join("relay-aside.db").exists());
        assert!(
            !data.join(".relay.db.restoring").exists(),
            "nothing left behind"
        );
        let refused = |_: &Connection, path: &std::path::Path| {
            Err(StoreError::Corrupt {
                path: path.to_owned(),
                detail: "records differ".into(),
            })
        };
        match crate::restore(
            &copy,
            &data,
            "relay.db",
            "relay-aside.db",
            refused,
            |_, _| Ok(()),
        ) {
            Err(StoreError::Corrupt { detail, .. }) => assert_eq!(detail, "records differ"),
            other => panic!("expected the check's refusal, got {other:?}"),
        }
        assert!(!data.join("relay-aside.db").exists());
        assert!(!data.join(".relay.db.restoring").exists(), "left behind");

        let r = crate::restore(
            &copy,
            &data,
            "relay.db",
            "relay-aside.db",
            |_, _| Ok(()),
            |_, _| Ok(()),
        )
        .expect("restore");
        assert_eq!(r.store.journal, backed_up.journal);
        assert_eq!(
            std::fs::read(&copy).expect("copy"),
            copy_bytes,
            "the copy unchanged"
        );
        let restored = crate::open_read_only(&data.join("relay.db")).expect("restored");
        assert_eq!(verify(&restored).expect("verifies").entries, 3);
        // Its WAL folded into its file, the store is kept whole in that file alone.
        assert_eq!(r.set_aside, vec![data.join("relay-aside.db")]);
        assert!(
            !data.join("relay.db-wal").exists(),
            "no stale WAL beside the restored store"
        );
        assert!(!data.join(crate::RESTORE_MARKER).exists(), "finished");
        let aside = crate::open(&data.join("relay-aside.db"), false).expect("set aside");
        assert_eq!(
            verify(&aside).expect("verifies").entries,
            5,
            "what the WAL held came along"
        );
        drop(aside);
        // The first restore's claim ends with it.
        drop(r);

        // A second restore under a name already taken: nothing is replaced, and the names
        // it made are undone (the marker too, so the service may start).
        let mut conn = crate::open(&data.join("relay.db"), false).expect("reopen");
        let mut j = Journal::load(&conn).expect("load");
        append(&mut conn, &mut j, 1);
        std::mem::forget(conn);
        std::fs::write(data.join("relay-aside2.db"), b"taken").expect("taken");
        match crate::restore(
            &copy,
            &data,
            "relay.db",
            "relay-aside2.db",
            |_, _| Ok(()),
            |_, _| Ok(()),
        ) {
            Err(StoreError::Io { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists)
            }
            other => panic!("expected the taken name refused, got {other:?}"),
        }
        assert_eq!(
            std::fs::read(data.join("relay-aside2.db")).expect("taken"),
            b"taken"
        );
        assert!(!data.join(crate::RESTORE_MARKER).exists(), "undone");
        crate::check_startable(&data, "relay.db").expect("the service may start");
        let kept = crate::open(&data.join("relay.db"), false).expect("kept");
        assert_eq!(verify(&kept).expect("verifies").entries, 4);
    }
}
