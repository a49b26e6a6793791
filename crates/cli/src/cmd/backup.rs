//! `hotline backup`: a consistent copy of a relay's or a node's store while it runs; and
//! `hotline restore`: such a copy put back in place of a stopped service's store.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

/// `hotline backup --data DIR (--out FILE | --out-dir DIR [--keep N])`.
#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// The data directory (holding relay.db or node.db), or the database file itself.
    #[arg(long)]
    data: PathBuf,
    /// Where to write the copy: a new file (an existing one is never replaced), mode 0600.
    #[arg(long, required_unless_present = "out_dir", conflicts_with = "out_dir")]
    out: Option<PathBuf>,
    /// Or a directory for the copy, named after the store's file (its name without `.db`)
    /// and the time to the millisecond (UTC): `relay-20250101T030000.123Z.db` (or `node-…`;
    /// `relay-replaced-TIME-…` for a store `restore` kept aside). If a copy by that name exists
    /// (another run in the same millisecond), the next free millisecond names it, so that
    /// runs never collide and the names sort in the order the copies were made.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// With `--out-dir`: once the copy is written and checked, keep only the newest N
    /// copies of this store there (named as above, or `relay-20250101T030000Z.db` as
    /// earlier versions named them), removing older ones; never the copy just written.
    #[arg(long, requires = "out_dir", value_parser = clap::value_parser!(u32).range(1..))]
    keep: Option<u32>,
}

pub(crate) fn run(args: BackupArgs) -> anyhow::Result<()> {
    let db = super::audit::store_file(args.data)?;
    // Read first: a restore cut short leaves nothing to copy (hotline_store::backup refuses
    // it too, but only after the store was read).
    let marker = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(hotline_store::RESTORE_MARKER);
    if marker.exists() {
        return Err(hotline_store::StoreError::RestoreUnfinished { path: marker })
            .with_context(|| format!("not backing up {}", db.display()));
    }
    // Refused before it is copied if it is no store; read-only, as the copy is.
    super::audit::store_kind(&db)?;
    let store = db
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("store")
        .to_owned();
    let (out, b) = match (&args.out, &args.out_dir) {
        (Some(out), _) => {
            let b = hotline_store::backup(&db, out)
                .with_context(|| format!("backing up {} to {}", db.display(), out.display()))?;
            (out.clone(), b)
        }
        (None, Some(dir)) if !super::audit::exists(dir)? => anyhow::bail!(
            "{}: no such directory (is the backup disk mounted?); make it first: install -d \
             -m 0700 {}",
            dir.display(),
            dir.display()
        ),
        (None, Some(dir)) => write_named_copy(dir, &store, hotline_node::now_ms(), |out| {
            hotline_store::backup(&db, out)
        })
        .with_context(|| format!("backing up {} into {}", db.display(), dir.display()))?,
        (None, None) => anyhow::bail!("give --out FILE or --out-dir DIR"),
    };
    tracing::info!(db = %db.display(), out = %out.display(), bytes = b.bytes, entries = b.journal.entries, "backup written");
    // Pruned before anything is printed: a closed standard output (`| head -1`) ends the
    // command at its first line, which must not leave the older copies in place.
    let pruned = match (&args.out_dir, args.keep) {
        (Some(dir), Some(keep)) => {
            let written = out.file_name().and_then(|n| n.to_str()).unwrap_or("");
            Some((dir, keep, prune(dir, &store, keep as usize, written)))
        }
        _ => None,
    };
    // The copy is written, and said so; but a pruning that failed is the command's failure,
    // which a reader gone before the "OK" line must not turn into status 0.
    if matches!(pruned, Some((_, _, Err(_)))) {
        crate::EXIT_ON_CLOSED_STDOUT.store(1, std::sync::atomic::Ordering::Relaxed);
    }
    outln!(
        "OK: {} written from {}: {} bytes, checked; journal {} entries, head {}",
        out.display(),
        db.display(),
        b.bytes,
        b.journal.entries,
        hex::encode(b.journal.head)
    );
    if let Some((dir, keep, removed)) = pruned {
        let removed = removed?;
        if !removed.is_empty() {
            tracing::info!(dir = %dir.display(), removed = removed.len(), keep, "older backups removed");
            outln!(
                "removed {} older {store} backup(s), keeping the newest {keep}",
                removed.len()
            );
        }
    }
    Ok(())
}

/// `hotline restore --from COPY --data DIR`.
#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The copy to restore (a file `hotline backup` wrote); it is only read.
    #[arg(long)]
    from: PathBuf,
    /// The stopped service's data directory (`/var/lib/hotline-relay` or
    /// `/var/lib/hotline-node`); it must exist.
    #[arg(long)]
    data: PathBuf,
    /// For a relay's store: deliver again to every recipient what the relay accepted in
    /// this many hours before the copy's newest entry, so that acknowledgements made after
    /// the backup come back (0: none).
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(0..=8760))]
    redeliver_hours: u64,
}

/// Puts a backup in place of the store in a data directory, the service stopped. The
/// copy's kind (relay or node) names the store file; a directory holding the other kind's
/// store is refused. The replaced store is kept as `STORE-replaced-TIME.db` beside it (with
/// its WAL if that could not be folded in), and never deleted: after a crash, not a lost
/// disk, it may hold what the backup lacks. The replacement survives a crash at any point
/// ([`hotline_store::restore`]); one cut short is finished by running this again.
pub(crate) fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let RestoreArgs {
        from,
        data,
        redeliver_hours,
    } = args;
    if !data.is_dir() {
        anyhow::bail!(
            "{}: no such directory; make it as the service's account first (install -d -o \
             hotline -g hotline -m 0700 {})",
            data.display(),
            data.display()
        );
    }
    // For a node's copy, whose store it is (hotline_node::store::store_participant). A copy
    // from a newer relay or node would replace a store this binary opens with one it cannot:
    // refused first, naming the copy given (`StoreError::NewerSchema`, which says it is not
    // damaged), before anything is copied or renamed, and before anything else is read
    // from it in a layout this binary may not know.
    // SQLite opens a directory, and a file that is no database, and only the first read
    // fails, as "disk I/O error" or "storage: file is not a database", naming no file.
    if from.is_dir() {
        anyhow::bail!(
            "{}: a directory; give the copy's file (`hotline backup` writes one, e.g. \
             relay-20250101T030000.123Z.db)",
            from.display()
        );
    }
    // A named pipe given as the copy: SQLite would wait for ever in opening it.
    if let Ok(meta) = std::fs::metadata(&from) {
        super::audit::regular(from.clone(), &meta)?;
    }
    let (is_relay, holder) = {
        let unreadable = || format!("{}: cannot read the copy", from.display());
        let conn = hotline_store::open_read_only(&from).with_context(unreadable)?;
        if hotline_relay::store::is_relay_store(&conn).with_context(unreadable)? {
            hotline_relay::store::check_schema_version(&conn, &from)?;
            (true, None)
        } else if conn
            .prepare("SELECT 1 FROM inbox LIMIT 0")
            .and_then(|_| conn.prepare("SELECT 1 FROM journal LIMIT 0"))
            .is_ok()
        {
            hotline_node::store::check_schema_version(&conn, &from)?;
            (false, hotline_node::store::store_participant(&conn, &from)?)
        } else {
            anyhow::bail!("{}: neither a relay's nor a node's store", from.display());
        }
    };
    let (name, other, kind) = if is_relay {
        (
            hotline_relay::store::DB_FILE,
            hotline_node::store::DB_FILE,
            "relay",
        )
    } else {
        (
            hotline_node::store::DB_FILE,
            hotline_relay::store::DB_FILE,
            "node",
        )
    };
    if data.join(other).exists() {
        anyhow::bail!(
            "{} is a {kind} store, but {} holds {other}: is this the right data directory?",
            from.display(),
            data.display()
        );
    }
    let current = data.join(name);
    if let (Some(holder), true) = (&holder, current.exists()) {
        // A node's copy put in another node's directory would show one member's messages
        // to another; the node refuses such a store at start, and this refuses it now. A
        // current store that cannot be read (the damage a restore is for) tells nothing:
        // the node checks the copy against its configuration when it starts.
        let held = hotline_store::open_read_only(&current)
            .and_then(|conn| hotline_node::store::store_participant(&conn, &current));
        match held {
            Ok(Some(held)) if held != *holder => anyhow::bail!(
                "{} is {holder}'s node store, but {} holds {held}'s: is this the right backup, \
                 and the right data directory? (If the directory holds the wrong store, move \
                 {} and its -wal and -shm aside first.)",
                from.display(),
                data.display(),
                current.display()
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(store = %current.display(), error = %e, "the store to be replaced cannot be read; whose it was is not checked");
            }
        }
    }
    let stem = name.trim_end_matches(".db");
    let aside = copy_name(&format!("{stem}-replaced"), hotline_node::now_ms());
    // A relay's queues are moved back as the restore's last step, under its marker and its
    // claim: a crash or a failure there leaves the marker, and the relay refuses to start
    // until the restore, run again, has done it.
    let mut rewound = None;
    let mut rewind_failed = false;
    let finish = |path: &Path, copy: &hotline_store::Backup| {
        if !is_relay || redeliver_hours == 0 {
            return Ok(());
        }
        let since_ms = copy
            .journal
            .last_at_ms
            .saturating_sub(redeliver_hours.saturating_mul(3_600_000));
        match hotline_relay::store::redeliver_all_since_restored(
            path,
            since_ms,
            hotline_node::now_ms(),
        ) {
            Ok(r) => {
                rewound = Some((since_ms, r));
                Ok(())
            }
            Err(e) => {
                rewind_failed = true;
                Err(e)
            }
        }
    };
    let r = hotline_store::restore(
        &from,
        &data,
        name,
        &aside,
        |conn, path| {
            if is_relay {
                hotline_relay::store::verify_journaled_records(conn, path).map(drop)
            } else {
                hotline_node::store::verify_records(conn, path).map(drop)
            }
        },
        finish,
    )
    .map_err(|e| match e {
        // The claim is the running service's: say what to do, not only what is wrong.
        hotline_store::StoreError::Locked { path } => anyhow::anyhow!(
            "{}: a relay or node already runs on this data directory ({} is locked); stop it \
             first (sudo systemctl stop hotline-{kind}), then run the restore again",
            data.display(),
            path.display()
        ),
        e => {
            let marker = data.join(hotline_store::RESTORE_MARKER);
            let e = anyhow::Error::new(e).context(if rewind_failed {
                format!(
                    "moving the recipients' queues back in {}, restored from {}",
                    current.display(),
                    from.display()
                )
            } else {
                format!("restoring {} to {}", from.display(), data.display())
            });
            if marker.exists() {
                // The copy may be in place, without the work that finishes the restore.
                e.context(format!(
                    "the restore did not finish: {} is left, and the {kind} will not start; \
                     put right what the error below says, then run it again",
                    marker.display()
                ))
            } else {
                e
            }
        }
    })?;
    let newest = hotline_config::utc::format_utc(r.store.journal.last_at_ms);
    tracing::info!(db = %current.display(), from = %from.display(), entries = r.store.journal.entries, set_aside = r.set_aside.len(), "store restored");
    let whose = holder
        .as_ref()
        .map(|h| format!(" ({h}'s)"))
        .unwrap_or_default();
    outln!(
        "OK: {}{whose} restored from {}: {} bytes, checked; journal {} entries, head {}, \
         newest entry {newest}",
        current.display(),
        from.display(),
        r.store.bytes,
        r.store.journal.entries,
        hex::encode(r.store.journal.head)
    );
    match r.set_aside.first() {
        Some(old) => outln!(
            "the store it replaced is kept as {}{}; remove it once the {kind} runs well",
            old.display(),
            if r.set_aside.len() > 1 {
                " (with its WAL)"
            } else {
                ""
            }
        ),
        None => outln!("there was no store to replace"),
    }
    if is_relay {
        if let Some((since_ms, rewound)) = rewound {
            report_rewound(since_ms, redeliver_hours, &rewound);
        }
        outln!(
            "next: start the relay; each node submits again what the relay accepted from it \
             after the backup (OPERATIONS.md 6.5)"
        );
    } else {
        // The command to give, whole: the copy names its participant (but a copy from before
        // stores recorded one, with nothing signed yet, does not).
        let to = holder.map_or_else(|| "ID".to_owned(), |h| h.to_string());
        outln!(
            "next: start the node. What it received after {newest}, and the receipts of what \
             it sent that came since, are not in the copy: on the relay's machine, `sudo -u \
             hotline hotline relay redeliver --config /etc/hotline/relay.toml --to {to} \
             --since {newest}` has the relay send them again (OPERATIONS.md 6.5)"
        );
    }
    Ok(())
}

/// Says what the restore's last step did for a relay: every recipient is delivered again
/// what the relay accepted in the `hours` before the copy's newest journal entry (at most
/// the backup's time), from `since_ms`. An acknowledgement made after the backup, of a
/// message delivered before it, was lost with the relay's store if its sender had not
/// fetched it; the recipient's node offers it again when the message arrives again. Nodes
/// dedup by id and show nothing twice.
fn report_rewound(since_ms: u64, hours: u64, rewound: &hotline_relay::store::RewoundAll) {
    let owed: u64 = rewound.iter().map(|(_, r)| r.messages).sum();
    let recipients = rewound.iter().filter(|(_, r)| r.messages > 0).count();
    tracing::info!(
        since_ms,
        recipients,
        deliveries = owed,
        "queues moved back after a restore"
    );
    outln!(
        "messages accepted since {} ({hours} h before that entry) will be delivered again: {owed} \
         deliveries to {recipients} recipient(s), so that the acknowledgements made after the \
         backup come back; nodes show nothing twice (--redeliver-hours 0: none)",
        hotline_config::utc::format_utc(since_ms)
    );
}

/// How many names after the first [`write_named_copy`] tries: one second's worth of
/// milliseconds. More copies than that in one directory within a second is no schedule.
const NAME_TRIES: u64 = 1_000;

/// Writes a copy of `store` into `dir` with `write`, under [`copy_name`] for `ms`, or, if a
/// file by that name exists (another run in the same millisecond: a timer's and an
/// operator's, or a retry), under the name for the next free millisecond. `write` must
/// refuse an existing file with `AlreadyExists` (as [`hotline_store::backup`] does, creating
/// it with `O_EXCL`), which makes this safe against a run racing it. Returns the path
/// written and what `write` returned.
fn write_named_copy<T>(
    dir: &Path,
    store: &str,
    ms: u64,
    mut write: impl FnMut(&Path) -> Result<T, hotline_store::StoreError>,
) -> anyhow::Result<(PathBuf, T)> {
    for at in (0..NAME_TRIES).map(|i| ms.saturating_add(i)) {
        let out = dir.join(copy_name(store, at));
        match write(&out) {
            Err(hotline_store::StoreError::Io { path, source })
                if source.kind() == std::io::ErrorKind::AlreadyExists && path == out =>
            {
                tracing::info!(taken = %out.display(), "a copy by that name exists; naming this one for the next millisecond");
            }
            r => {
                let written = r.with_context(|| format!("writing {}", out.display()))?;
                return Ok((out, written));
            }
        }
    }
    anyhow::bail!(
        "{}: the names of {NAME_TRIES} copies of {store} from {} on are all taken",
        dir.display(),
        copy_name(store, ms)
    )
}

/// `STORE-YYYYMMDDTHHMMSS.mmmZ.db` for a copy of store `STORE` (`relay`, `node`) at `ms`
/// (UTC, to the millisecond, ISO 8601's basic format). The names of one store's copies are
/// all as long, so that they sort by time, for `--keep` as for `ls`.
fn copy_name(store: &str, ms: u64) -> String {
    let stamp: String = hotline_config::utc::format_utc(ms)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let seconds = stamp.strip_suffix('Z').unwrap_or(&stamp);
    format!("{store}-{seconds}.{:03}Z.db", ms % 1000)
}

/// If `name` is a name [`copy_name`] gives for `store`, or the name without milliseconds
/// that versions before it gave (`STORE-YYYYMMDDTHHMMSSZ.db`), its time as 17 digits
/// (`YYYYMMDDHHMMSSmmm`, milliseconds 000 in an older name), which sort as the times do.
fn copy_time(name: &str, store: &str) -> Option<String> {
    let stamp = name
        .strip_prefix(store)?
        .strip_prefix('-')?
        .strip_suffix("Z.db")?;
    let (seconds, millis) = match stamp.split_once('.') {
        Some((s, m)) if m.len() == 3 => (s, m),
        Some(_) => return None,
        None => (stamp, "000"),
    };
    let b = seconds.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    (b.len() == 15
        && b[8] == b'T'
        && digits(&b[..8])
        && digits(&b[9..])
        && digits(millis.as_bytes()))
    .then(|| format!("{}{}{millis}", &seconds[..8], &seconds[9..]))
}

/// Of the file names in a directory, the copies of `store` to remove so that the newest
/// `keep` remain (by the time their names give), never `written`, the copy just made: a
/// clock set back since an earlier copy would otherwise have it removed at once.
fn to_remove(names: &[String], store: &str, keep: usize, written: &str) -> Vec<String> {
    let mut copies: Vec<(String, &String)> = names
        .iter()
        .filter_map(|n| Some((copy_time(n, store)?, n)))
        .collect();
    copies.sort();
    if copies.last().is_some_and(|(_, n)| *n != written)
        && copies.iter().any(|(_, n)| *n == written)
    {
        tracing::warn!(
            written,
            "an older copy here is named for a later time than the one just written: has the clock gone back?"
        );
    }
    let excess = copies.len().saturating_sub(keep);
    copies[..excess]
        .iter()
        .filter(|(_, n)| *n != written)
        .map(|(_, n)| (*n).clone())
        .collect()
}

/// Removes the copies of `store` in `dir` beyond the newest `keep`, but never `written`;
/// returns their names.
fn prune(dir: &Path, store: &str, keep: usize, written: &str) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        if e.file_type().is_ok_and(|t| t.is_file()) {
            if let Some(n) = e.file_name().to_str() {
                names.push(n.to_owned());
            }
        }
    }
    let old = to_remove(&names, store, keep, written);
    for n in &old {
        let p = dir.join(n);
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn copies_are_named_by_store_and_time_to_the_millisecond() {
        // 2025-01-01T03:00:00.123Z
        let name = copy_name("relay", 1_735_700_400_123);
        assert_eq!(name, "relay-20250101T030000.123Z.db");
        assert_eq!(
            copy_name("node", 1_735_700_400_000),
            "node-20250101T030000.000Z.db"
        );
        assert_eq!(
            copy_time(&name, "relay").as_deref(),
            Some("20250101030000123")
        );
        assert_eq!(copy_time(&name, "node"), None);
        // As versions before named them, to the second.
        assert_eq!(
            copy_time("relay-20250101T030000Z.db", "relay").as_deref(),
            Some("20250101030000000")
        );
        for other in [
            "relay-pre-upgrade.db",
            "relay-20250101T030000.123Z.db-wal",
            "relay-20250101T030000Z.db-wal",
            "relay-2025010XT030000Z.db",
            "relay-20250101T030000.12Z.db",
            "relay-20250101T030000.1234Z.db",
            "relay-20250101T030000.12xZ.db",
            "relay-replaced-20250101T030000.123Z.db",
            "relay.db",
        ] {
            assert_eq!(copy_time(other, "relay"), None, "{other}");
        }
    }

    #[test]
    fn the_oldest_copies_are_pruned_whichever_version_named_them() {
        let names = strings(&[
            "relay-20250101T050000.000Z.db",
            "node-20250101T010000.000Z.db",
            "relay-20250101T030000Z.db",
            "relay-pre-upgrade.db",
            "relay-20250101T040000.999Z.db",
            "relay-20250101T040000Z.db",
            "relay-20250101T050000.001Z.db",
        ]);
        let written = "relay-20250101T050000.001Z.db";
        assert_eq!(
            to_remove(&names, "relay", 2, written),
            strings(&[
                "relay-20250101T030000Z.db",
                "relay-20250101T040000Z.db",
                "relay-20250101T040000.999Z.db"
            ])
        );
        assert!(to_remove(&names, "relay", 5, written).is_empty());
        assert!(to_remove(&names, "node", 1, "node-x.db").is_empty());
    }

    /// A store `restore` kept aside (`relay-replaced-TIME.db`) backed up with `--out-dir` is
    /// named after its file, as OPERATIONS.md 6 says: its copies are never counted or
    /// removed with those of the store in service, nor theirs with its.
    #[test]
    fn copies_of_a_store_kept_aside_are_apart_from_the_store_in_service() {
        let aside = "relay-replaced-20250101T091500.482Z";
        // 2025-01-02T03:00:00.000Z
        let copy = copy_name(aside, 1_735_786_800_000);
        assert_eq!(
            copy,
            "relay-replaced-20250101T091500.482Z-20250102T030000.000Z.db"
        );
        let names = strings(&[
            &copy,
            "relay-20250101T050000.000Z.db",
            "relay-20250101T060000.000Z.db",
        ]);
        assert_eq!(
            to_remove(&names, "relay", 1, "relay-20250101T060000.000Z.db"),
            strings(&["relay-20250101T050000.000Z.db"])
        );
        assert!(to_remove(&names, aside, 1, &copy).is_empty());
        assert!(to_remove(&names, aside, 1, "other.db").is_empty());
        assert_eq!(to_remove(&names, aside, 0, "other.db"), strings(&[&copy]));
    }

    #[test]
    fn the_copy_just_written_is_never_pruned() {
        // The clock was set back an hour after the 05:00 copy.
        let names = strings(&[
            "relay-20250101T050000.000Z.db",
            "relay-20250101T040000.000Z.db",
            "relay-20250101T030000.000Z.db",
        ]);
        assert_eq!(
            to_remove(&names, "relay", 1, "relay-20250101T040000.000Z.db"),
            strings(&["relay-20250101T030000.000Z.db"])
        );
    }

    #[test]
    fn a_name_taken_gives_the_next_free_millisecond() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ms = 1_735_700_400_998;
        let create = |out: &Path| -> Result<(), hotline_store::StoreError> {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(out)
                .map(drop)
                .map_err(|source| hotline_store::StoreError::Io {
                    path: out.to_owned(),
                    source,
                })
        };
        let (first, ()) = write_named_copy(dir.path(), "relay", ms, create).expect("written");
        let (second, ()) = write_named_copy(dir.path(), "relay", ms, create).expect("written");
        let (third, ()) = write_named_copy(dir.path(), "relay", ms, create).expect("written");
        let names: Vec<_> = [&first, &second, &third]
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        assert_eq!(
            names,
            strings(&[
                "relay-20250101T030000.998Z.db",
                "relay-20250101T030000.999Z.db",
                "relay-20250101T030001.000Z.db"
            ])
        );
        // Another failure is the write's own, and ends the attempt.
        let err = write_named_copy(dir.path(), "relay", ms, |_| {
            Err::<(), _>(hotline_store::StoreError::DiskFull)
        })
        .expect_err("the write failed");
        assert!(
            format!("{err:#}")
                .ends_with("relay-20250101T030000.998Z.db: disk full: nothing was written"),
            "{err:#}"
        );
        // A second's worth of names, all taken.
        let err = write_named_copy(dir.path(), "node", ms, |out| {
            Err::<(), _>(hotline_store::StoreError::Io {
                path: out.to_owned(),
                source: std::io::ErrorKind::AlreadyExists.into(),
            })
        })
        .expect_err("no name free");
        assert!(
            err.to_string().contains("the names of 1000 copies of node from node-20250101T030000.998Z.db on are all taken"),
            "{err:#}"
        );
    }
}
