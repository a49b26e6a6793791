//! `hotline-store`: how the relay and the node keep data durably.
//!
//! Both keep one SQLite database (bundled library) in WAL mode with `synchronous=FULL`: a
//! transaction that has returned from `COMMIT` survives `kill -9` and power loss, so a
//! service may answer *accepted* (relay) or send a *delivered* receipt (node) right after
//! it. The hash-chained audit journal lives in the same database and is appended in the
//! same transaction as the change it records, so the two never disagree.

#![warn(missing_docs)]

pub mod db;
pub mod journal;

pub use db::{
    backup, check_startable, lock_dir, lock_dir_waiting, open, open_read_only, quick_check,
    restore, Backup, DirLock, Restored, StoreError, CLAIM_WAIT, LOCK_FILE, RESTORE_MARKER,
};
pub use journal::{verify as verify_journal, Journal, JournalEntry, JournalReport};
