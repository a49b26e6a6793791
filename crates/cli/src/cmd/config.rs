//! `hotline config check FILE`: validate a relay or node configuration before starting the
//! service, and point at the line to fix.
//!
//! Parsing and the field rules are the services' own (`RelayConfig::parse`,
//! `NodeConfig::parse`), so this command can never accept a file the service refuses, or the
//! reverse. Their syntax and type errors already name line and column; for a field whose
//! value breaks a rule they name the field, and this module finds that field's line in the
//! text. Then it checks the files the configuration names, as far as this user can read them:
//! a present but unusable file (a roster not signed by `roster_key`, a key file others may
//! read, a participant missing from the roster, a node's API token file that holds no token)
//! is an error; a missing or unreadable one is a warning, since the check often runs before
//! the files are in place or as another user (a node's missing API token, which the node
//! creates, only where it cannot: its directory missing, or outside the packaged unit's
//! writable directory). For a configuration where the packaged units read it
//! (`/etc/hotline`), each file is also checked to be readable by their account, `hotline`,
//! since the check runs as root, who reads everything. A
//! node's roster is checked as the node will use it: the newer of the file and the roster
//! its store holds (read-only, so the check runs beside a running node). A store the service
//! would refuse at start, with exit status 78, and that a read can tell (another
//! participant's node store, a newer release's store) is an error too, and so is a data
//! directory its start would refuse before opening the store: a restore's marker left there
//! (`RESTORE-UNFINISHED`), or no store but signs of one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Subcommand, ValueEnum};

use hotline_node::{NodeConfig, StartRoster};
use hotline_proto::{Roster, Verified};
use hotline_relay::RelayConfig;

/// The `config` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Check a relay or node configuration file (exit status 1 if it is unusable).
    ///
    /// Which kind it is comes from its content: a node configuration has `participant`, a
    /// relay configuration has `listen` or `cert`. Errors name the file and line. Files the
    /// configuration names (certificate, keys, roster) are checked too when they exist.
    Check {
        /// The configuration file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Check it as this kind instead of guessing from its content.
        #[arg(long, value_enum)]
        kind: Option<Kind>,
        /// Fail on warnings too (a named file missing or unreadable).
        #[arg(long)]
        strict: bool,
    },
}

/// Which service a configuration file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Kind {
    /// The Secretariat's relay (`hotline relay --config`).
    Relay,
    /// A contact point's node (`hotline node --config`).
    Node,
}

/// Runs a config subcommand.
pub(crate) fn run(command: ConfigCommand) -> Result<()> {
    match command {
        ConfigCommand::Check { file, kind, strict } => check(&file, kind, strict),
    }
}

fn check(path: &Path, kind: Option<Kind>, strict: bool) -> Result<()> {
    let text = hotline_config::text_file::read_config(path)?;
    let kind = match kind.or_else(|| guess_kind(&text)) {
        Some(k) => k,
        None => match (
            RelayConfig::parse(&text, path),
            NodeConfig::parse(&text, path),
        ) {
            (Ok(_), _) => Kind::Relay,
            (_, Ok(_)) => Kind::Node,
            (Err(r), Err(n)) => bail!(
                "{}: neither a relay configuration (it has `listen` or `cert`) nor a node \
                 configuration (it has `participant`); give --kind relay|node.\n\
                 As a relay configuration: {}\nAs a node configuration: {}",
                path.display(),
                with_line(&r.to_string(), r.field(), &text, path),
                with_line(&n.to_string(), n.field(), &text, path),
            ),
        },
    };
    let mut report = Report {
        account: packaged_account(path),
        ..Report::default()
    };
    let headline = match kind {
        Kind::Relay => {
            let config = RelayConfig::parse(&text, path)
                .map_err(|e| anyhow::anyhow!(with_line(&e.to_string(), e.field(), &text, path)))?;
            check_relay_files(&config, &text, path, &mut report);
            "OK: relay configuration".to_owned()
        }
        Kind::Node => {
            let config = NodeConfig::parse(&text, path)
                .map_err(|e| anyhow::anyhow!(with_line(&e.to_string(), e.field(), &text, path)))?;
            check_node_files(&config, &text, path, &mut report);
            format!(
                "OK: node configuration (participant {})",
                config.participant
            )
        }
    };
    for w in &report.warnings {
        errln!("warning: {w}");
    }
    if !report.errors.is_empty() {
        bail!("{}", report.errors.join("\n"));
    }
    if strict && !report.warnings.is_empty() {
        bail!(
            "{}: {} warning(s), refused because of --strict",
            path.display(),
            report.warnings.len()
        );
    }
    outln!("{headline}");
    for note in &report.notes {
        outln!("  {note}");
    }
    Ok(())
}

/// What the file checks found.
#[derive(Default)]
struct Report {
    /// The service would refuse to start, or would misbehave.
    errors: Vec<String>,
    /// Could not be checked from here (missing, unreadable by this user).
    warnings: Vec<String>,
    /// Facts worth seeing (fingerprint, roster version).
    notes: Vec<String>,
    /// The account the service runs as, when known ([`packaged_account`]): each file is
    /// checked to be readable by it, not only by whoever runs the check (root, as the guide
    /// says, reads everything).
    account: Option<Account>,
}

impl Report {
    /// Records why `file` (named by `field`) could not be checked, if it is missing or
    /// unreadable; returns whether it can be read. A file this user can read but the
    /// service's account cannot (a key `sudo hotline relay init` left owned by root) is an
    /// error: the service would fail to read it at start.
    fn readable(&mut self, field: &str, file: &Path, hint: &str) -> bool {
        // Not `File::open`: a named pipe nothing writes to would hold the check for ever.
        match hotline_config::open_for_read(file) {
            Ok(f) => {
                let (Some(account), Ok(meta)) = (self.account, f.metadata()) else {
                    return true;
                };
                if !account.may_read(&meta) {
                    use std::os::unix::fs::MetadataExt as _;
                    self.errors.push(format!(
                        "{field} {}: the service's account {PACKAGED_ACCOUNT} cannot read it \
                         (owner uid {}, group gid {}, mode {:04o}); the packaged unit runs the \
                         service as {PACKAGED_ACCOUNT}: `chown {PACKAGED_ACCOUNT}:{PACKAGED_ACCOUNT} \
                         {}` for a key (mode 0600), or `chgrp {PACKAGED_ACCOUNT}` and `chmod \
                         0640` for another file (OPERATIONS.md 1)",
                        file.display(),
                        meta.uid(),
                        meta.gid(),
                        meta.mode() & 0o7777,
                        file.display()
                    ));
                }
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.warnings
                    .push(format!("{field} {}: not found{hint}", file.display()));
                false
            }
            Err(e) => {
                self.warnings.push(format!(
                    "{field} {}: not checked ({e}); run the check as the service user",
                    file.display()
                ));
                false
            }
        }
    }
}

fn check_relay_files(config: &RelayConfig, text: &str, path: &Path, report: &mut Report) {
    let init = " (create it with `hotline relay init`)";
    let cert_ok = report.readable("cert", &config.cert, init);
    let key_ok = report.readable("key", &config.key, init);
    if cert_ok && key_ok {
        // Loading builds the TLS configuration, as the relay does (a key that is not the
        // certificate's is refused); then the whole QUIC server configuration is built with
        // the configured limits, as at the relay's start.
        let checked = hotline_net::RelayIdentity::load(&config.cert, &config.key).and_then(|id| {
            hotline_net::transport::check_server_config(&id, &config.transport_limits())?;
            Ok(id)
        });
        match checked {
            Ok(id) => report.notes.push(format!(
                "certificate fingerprint (nodes pin it): {}",
                id.fingerprint()
            )),
            Err(e) => {
                // A key others may read is about the `key` line; the rest (not a pair, not
                // PEM, limits QUIC cannot take) is pointed at `cert`.
                let field = match &e {
                    hotline_net::NetError::TlsFile(hotline_config::TextFileError::Secret(_)) => {
                        "key"
                    }
                    _ => "cert",
                };
                report
                    .errors
                    .push(with_line(&e.to_string(), Some(field), text, path))
            }
        }
    }
    let mut roster = None;
    if report.readable(
        "roster",
        &config.roster,
        " (sign one with `hotline roster sign`)",
    ) {
        match hotline_config::roster_file::read_verified_roster(&config.roster, &config.roster_key)
        {
            Ok(r) => {
                report.notes.push(format!(
                    "roster version {} with {} participants, signed by roster_key",
                    r.version,
                    r.participants.len()
                ));
                roster = Some(r);
            }
            Err(e) => report
                .errors
                .push(with_line(&e.to_string(), Some("roster"), text, path)),
        }
    }
    check_data_dir(Kind::Relay, &config.data_dir, text, path, report);
    check_relay_store(config, roster.as_ref(), text, path, report);
    for (field, warning) in relay_limit_warnings(&config.limits) {
        report
            .warnings
            .push(with_line(&warning, Some(field), text, path));
    }
    report.notes.push(format!("QUIC on {}/udp", config.listen));
}

/// Limits that parse but leave the relay open to what they are there to bound: each with
/// the field to point at.
fn relay_limit_warnings(l: &hotline_relay::config::Limits) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if l.handshakes_per_ip_max == 0 {
        out.push((
            "limits.handshakes_per_ip_max",
            "limits.handshakes_per_ip_max = 0: one address may hold every place among the connections not yet logged in, and keep nodes out (0 is meant for benchmarks)".to_owned(),
        ));
    }
    out
}

/// What the node would find in its store at start, when the store exists and can be read
/// (read-only: the node may be running): a store it would refuse, written by a newer release
/// or another participant's, is an error; otherwise the roster the store holds, verified by
/// `roster_key`. A store that cannot be read, or holds no roster, leaves the file's roster
/// the only one; the first is noted.
fn check_node_store(
    config: &NodeConfig,
    text: &str,
    path: &Path,
    report: &mut Report,
) -> Option<Verified<Roster>> {
    let db = config.data_dir.join(hotline_node::store::DB_FILE);
    if !db.exists() {
        return None;
    }
    let read = hotline_store::open_read_only(&db).and_then(|conn| {
        // The schema first: a newer release's store may hold what this one cannot read.
        hotline_node::store::check_schema_version(&conn, &db)?;
        hotline_node::store::check_participant(&conn, &db, &config.participant)?;
        hotline_node::store::stored_roster(&conn)
    });
    match read {
        Ok(signed) => {
            signed.and_then(|s| hotline_proto::verify_roster(&s, &config.roster_key).ok())
        }
        Err(e) => {
            store_unusable(e, text, path, report);
            None
        }
    }
}

/// Reports why a store could not be read: as an error when the service would refuse it at
/// start (exit status 78), which the read-only check can tell; as a note otherwise.
fn store_unusable(e: hotline_store::StoreError, text: &str, path: &Path, report: &mut Report) {
    use hotline_store::StoreError;
    match e {
        StoreError::NewerSchema { .. } | StoreError::OtherParticipant { .. } => report
            .errors
            .push(with_line(&e.to_string(), Some("data_dir"), text, path)),
        e => report.notes.push(format!(
            "the store was not read ({e}): the service checks it when it starts"
        )),
    }
}

/// A relay's store written by a newer release, or keeping a newer roster than the file's
/// `roster` (the relay's last), which the relay would refuse at start
/// (`hotline_relay::check_start_roster`). Other failures to read it are noted: the relay
/// checks its store at start (`quick_check`, the journal), which this does not repeat
/// beside a running relay.
fn check_relay_store(
    config: &RelayConfig,
    roster: Option<&Verified<Roster>>,
    text: &str,
    path: &Path,
    report: &mut Report,
) {
    let db = config.data_dir.join(hotline_relay::store::DB_FILE);
    if !db.exists() {
        return;
    }
    let read = hotline_store::open_read_only(&db).and_then(|conn| {
        hotline_relay::store::check_schema_version(&conn, &db)?;
        hotline_relay::store::kept_roster(&conn, &db, &config.roster_key)
    });
    let kept = match read {
        Ok(kept) => kept,
        Err(e) => return store_unusable(e, text, path, report),
    };
    if let Some(r) = roster {
        if let Err(e) = hotline_relay::check_start_roster(&config.roster, r, &kept, &db) {
            report
                .errors
                .push(with_line(&e.to_string(), Some("roster"), text, path));
        }
    }
}

fn check_node_files(config: &NodeConfig, text: &str, path: &Path, report: &mut Report) {
    let me = &config.participant;
    let mut key = None;
    let keygen = format!(" (the participant key, from `hotline keygen --id {me}`)");
    if report.readable("key", &config.key, &keygen) {
        match hotline_config::keyfile::read_secret(&config.key) {
            Ok(k) => key = Some(hotline_proto::PublicKey::of(&k)),
            Err(e) => report
                .errors
                .push(with_line(&e.to_string(), Some("key"), text, path)),
        }
    }
    let hint = " (the signed roster, from the Secretariat)";
    // The node starts on the newer of the roster file and the roster its store holds (one a
    // relay sent it), so the checks below are made against that one, as the node will.
    let stored = check_node_store(config, text, path, report);
    let from_file = report.readable("roster", &config.roster, hint).then(|| {
        hotline_config::roster_file::read_verified_roster(&config.roster, &config.roster_key)
    });
    // The roster the node starts on, and how to name it: the store's is named as such. A
    // file that could not be read has been reported (`readable`): `Err(None)`.
    let from_file = from_file.map_or(Err(None), |r| r.map_err(Some));
    let roster = match hotline_node::start_roster(from_file, stored) {
        StartRoster::File { roster, .. } => {
            let name = format!("roster version {}", roster.version);
            Some((roster, name))
        }
        StartRoster::Store {
            roster,
            file: Ok(file_version),
        } => {
            let name = format!(
                "roster version {} (the node's store holds it; the file's is {file_version})",
                roster.version
            );
            Some((roster, name))
        }
        StartRoster::Store {
            roster,
            file: Err(e),
        } => {
            if let Some(e) = e {
                report.warnings.push(with_line(
                    &format!(
                        "{e}; the node will start on roster version {} from its store",
                        roster.version
                    ),
                    Some("roster"),
                    text,
                    path,
                ));
            }
            let name = format!(
                "roster version {} (the node's store holds it)",
                roster.version
            );
            Some((roster, name))
        }
        StartRoster::Neither(e) => {
            if let Some(e) = e {
                report
                    .errors
                    .push(with_line(&e.to_string(), Some("roster"), text, path));
            }
            None
        }
    };
    if let Some((r, name)) = roster {
        let error = |what: String| with_line(&what, Some("participant"), text, path);
        match r.participant(me) {
            None => report.errors.push(error(format!(
                "{}: participant {me} is not on {name}",
                path.display()
            ))),
            Some(p) if p.revoked => report.errors.push(error(format!(
                "{}: participant {me} is revoked in {name}",
                path.display()
            ))),
            Some(p) => {
                if let Some(k) = key.filter(|k| !p.keys.contains(k)) {
                    report.warnings.push(format!(
                        "key {}: public key {k} is not one of {me}'s keys in {name} (relays \
                         will refuse this node until a roster listing it arrives)",
                        config.key.display()
                    ));
                }
                report.notes.push(format!(
                    "{name} with {} participants, signed by roster_key",
                    r.participants.len()
                ));
            }
        }
    }
    // The node refuses the same relay listed twice (address and fingerprint). One
    // certificate at two addresses is allowed, as two relays may share one, but if both
    // addresses reach the same relay its two links supersede each other.
    for (i, r) in config.relays.iter().enumerate() {
        let earlier = config.relays[..i]
            .iter()
            .find(|o| o.fingerprint == r.fingerprint && o.address != r.address);
        if let Some(o) = earlier {
            report.warnings.push(with_line(
                &format!(
                    "relays {} and {} pin the same certificate: if both addresses reach one \
                     relay, the node's two links log in as {me} and take the session from each \
                     other without end (relay log `session superseded`); list each relay once, \
                     and give each relay its own certificate (`hotline relay init`)",
                    o.address, r.address
                ),
                Some("relays"),
                text,
                path,
            ));
        }
    }
    check_data_dir(Kind::Node, &config.data_dir, text, path, report);
    check_token_file(config, text, path, report);
    let hooks = &config.hooks;
    for (name, cmd) in [
        ("hooks.on_message", &hooks.on_message),
        ("hooks.on_overdue", &hooks.on_overdue),
        ("hooks.on_unreachable", &hooks.on_unreachable),
        ("hooks.on_roster_changed", &hooks.on_roster_changed),
    ] {
        let Some(program) = cmd.as_ref().and_then(|c| c.first()) else {
            continue;
        };
        let program = Path::new(program);
        if program.is_absolute() && !program.exists() {
            report.warnings.push(with_line(
                &format!("{name}: program {} not found", program.display()),
                Some(name),
                text,
                path,
            ));
        }
    }
    report.notes.push(format!(
        "{} relay(s), local API on {}",
        config.relays.len(),
        config.api_listen
    ));
}

/// The API token file, as the node reads it at start (`hotline_node::ensure_token`): one
/// that is there but holds no token (an empty file, another file named by mistake) or is no
/// file stops the node (exit status 78 for the first), and so is an error here; a missing
/// one the node creates, which it cannot in a directory that does not exist, nor under the
/// packaged unit, which lets it write only its data directory.
fn check_token_file(config: &NodeConfig, text: &str, path: &Path, report: &mut Report) {
    const FIELD: &str = "api.token_file";
    let token = &config.token_file;
    if !token.exists() {
        let dir = parent_dir(token);
        if !dir.is_dir() {
            report.errors.push(with_line(
                &format!(
                    "{FIELD} {}: not found, and the node cannot create it: {} is not a directory",
                    token.display(),
                    dir.display()
                ),
                Some(FIELD),
                text,
                path,
            ));
        } else if packaged_token_unwritable(path, token) {
            report.warnings.push(with_line(
                &format!(
                    "{FIELD} {}: not found, and the packaged systemd unit lets the node write \
                     only {PACKAGED_NODE_DATA_DIR}, so it cannot create it: create it as the \
                     package does (OPERATIONS.md 11.2)",
                    token.display()
                ),
                Some(FIELD),
                text,
                path,
            ));
        } else {
            report.notes.push(format!(
                "api token {} does not exist yet: the node creates it at start, so its \
                 directory must be writable by the service",
                token.display()
            ));
        }
        return;
    }
    if !report.readable(FIELD, token, "") {
        return;
    }
    if let Err(e) = hotline_config::text_file::read_token(token) {
        report
            .errors
            .push(with_line(&e.to_string(), Some(FIELD), text, path));
    }
}

/// The directory holding `path`, `.` for a bare file name.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Where the packaged systemd units let each service write (`StateDirectory=`), for a
/// configuration in [`PACKAGED_CONFIG_DIR`].
const PACKAGED_CONFIG_DIR: &str = "/etc/hotline";
const PACKAGED_RELAY_DATA_DIR: &str = "/var/lib/hotline-relay";
const PACKAGED_NODE_DATA_DIR: &str = "/var/lib/hotline-node";

/// The data directory the packaged unit allows, if `config` is where the package's units
/// read it from and `data_dir` is elsewhere (the service would fail with "read-only file
/// system" under `ProtectSystem=strict`).
fn packaged_data_dir_mismatch(kind: Kind, config: &Path, data_dir: &Path) -> Option<&'static str> {
    let expected = match kind {
        Kind::Relay => PACKAGED_RELAY_DATA_DIR,
        Kind::Node => PACKAGED_NODE_DATA_DIR,
    };
    (packaged_config(config) && data_dir != Path::new(expected)).then_some(expected)
}

/// Whether the node could not create its missing API token `token` under the packaged
/// unit: `config` is where the unit reads it from, and `token` is outside the one directory
/// the unit lets the node write (`/etc/hotline/api.token`, which the package makes, is).
fn packaged_token_unwritable(config: &Path, token: &Path) -> bool {
    packaged_config(config) && !token.starts_with(PACKAGED_NODE_DATA_DIR)
}

/// The account the packaged units run both services as (`User=hotline`, `Group=hotline`).
const PACKAGED_ACCOUNT: &str = "hotline";

/// A service account's user and primary group ids: the package gives `hotline` no other
/// group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Account {
    uid: u32,
    gid: u32,
}

impl Account {
    /// Whether this account may read a file with `meta`'s owner, group and mode.
    fn may_read(self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let mode = meta.mode();
        if meta.uid() == self.uid {
            mode & 0o400 != 0
        } else if meta.gid() == self.gid {
            mode & 0o040 != 0
        } else {
            mode & 0o004 != 0
        }
    }
}

/// The packaged units' account, for a configuration where they read it, if the system has
/// that account (the package makes it); `None` otherwise, and then files are checked as
/// this user only.
fn packaged_account(config: &Path) -> Option<Account> {
    if !packaged_config(config) {
        return None;
    }
    let passwd = hotline_config::text_file::read(Path::new("/etc/passwd"), 16 * 1024 * 1024);
    account_in(&passwd.ok()?, PACKAGED_ACCOUNT)
}

/// The account `name` in the text of `/etc/passwd` (`name:x:uid:gid:...`).
fn account_in(passwd: &str, name: &str) -> Option<Account> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next() != Some(name) {
            return None;
        }
        let (_, uid, gid) = (fields.next()?, fields.next()?, fields.next()?);
        Some(Account {
            uid: uid.parse().ok()?,
            gid: gid.parse().ok()?,
        })
    })
}

/// Whether `config` is in the directory the packaged units read their configuration from.
fn packaged_config(config: &Path) -> bool {
    std::path::absolute(config)
        .is_ok_and(|config| config.parent() == Some(Path::new(PACKAGED_CONFIG_DIR)))
}

fn check_data_dir(kind: Kind, dir: &Path, text: &str, path: &Path, report: &mut Report) {
    if let Some(expected) = packaged_data_dir_mismatch(kind, path, dir) {
        report.warnings.push(with_line(
            &format!(
                "data_dir {}: the packaged systemd unit lets the service write only {expected}",
                dir.display()
            ),
            Some("data_dir"),
            text,
            path,
        ));
    }
    // The service creates the directory if it is missing, which it cannot below a file:
    // the nearest part of the path that exists must be a directory.
    let existing = dir.ancestors().find(|p| p.exists());
    if let Some(file) = existing.filter(|p| !p.is_dir()) {
        let what = if file == dir {
            format!("data_dir {}: not a directory", dir.display())
        } else {
            format!(
                "data_dir {}: cannot be created: {} is not a directory",
                dir.display(),
                file.display()
            )
        };
        report
            .errors
            .push(with_line(&what, Some("data_dir"), text, path));
    } else {
        report.notes.push(format!("store in {}", dir.display()));
    }
    if dir.is_dir() {
        check_startable(kind, dir, text, path, report);
    }
}

/// What the service's start would refuse in its data directory before it opens its store
/// ([`hotline_store::check_startable`], exit status 78): a restore's marker left there, or
/// no store but signs of one, where an empty store would take the old one's place. Both
/// are errors here too, so that the check agrees with the start. Reads names only.
fn check_startable(kind: Kind, dir: &Path, text: &str, path: &Path, report: &mut Report) {
    use hotline_store::StoreError;
    let name = match kind {
        Kind::Relay => hotline_relay::store::DB_FILE,
        Kind::Node => hotline_node::store::DB_FILE,
    };
    match hotline_store::check_startable(dir, name) {
        Ok(()) => {}
        Err(e @ (StoreError::RestoreUnfinished { .. } | StoreError::StoreMissing { .. })) => report
            .errors
            .push(with_line(&e.to_string(), Some("data_dir"), text, path)),
        Err(e) => report.notes.push(format!(
            "the data directory was not read ({e}): the service checks it when it starts"
        )),
    }
}

/// Fields that name or hold a key, whose line [`with_line`] points at without quoting it.
const KEY_FIELDS: [&str; 2] = ["key", "roster_key"];

/// Appends where `field` is set in `text` to `message`, when it can be found.
fn with_line(message: &str, field: Option<&str>, text: &str, path: &Path) -> String {
    let Some(field) = field else {
        return message.to_owned();
    };
    let lines = locate(text, field);
    match lines.as_slice() {
        [] => message.to_owned(),
        // A key field's line is not quoted: what is wrong there may be a secret seed.
        [n] if KEY_FIELDS.contains(&field) => {
            format!(
                "{message}\n  --> {}:{n}: {field} (value not shown)",
                path.display()
            )
        }
        [n] => format!(
            "{message}\n  --> {}:{n}: {}",
            path.display(),
            text.lines().nth(n - 1).unwrap_or_default().trim()
        ),
        many => {
            let list: Vec<String> = many.iter().map(usize::to_string).collect();
            format!(
                "{message}\n  --> {}: set at lines {}",
                path.display(),
                list.join(", ")
            )
        }
    }
}

/// Line numbers (from 1) where `field` ("name" or "table.name") is set in TOML `text`.
///
/// A line scanner, not a TOML parser: it only runs on text the real parser has accepted, and
/// its answer is a hint appended to the real error. It follows `[table]` and `[[table]]`
/// headers and matches `name = …` inside the table, or a dotted `table.name = …` outside
/// one. For `relays.fingerprint`, which every `[[relays]]` entry sets, it keeps the entries
/// whose value does not parse. If the field itself is not found (an inline table), it looks
/// for its table.
fn locate(text: &str, field: &str) -> Vec<usize> {
    let mut found = Vec::new();
    let mut table = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            let name = line
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or_default();
            table = normalise_key(name);
            if table == field {
                found.push(i + 1);
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = normalise_key(key);
        let full = if table.is_empty() {
            key
        } else {
            format!("{table}.{key}")
        };
        if full == field {
            if field == "relays.fingerprint" && value_parses_as_fingerprint(value) {
                continue;
            }
            found.push(i + 1);
        }
    }
    if found.is_empty() {
        if let Some((parent, _)) = field.rsplit_once('.') {
            return locate(text, parent);
        }
    }
    found
}

/// `a . "b"` → `a.b`: removes spaces and quotes around dotted key parts.
fn normalise_key(key: &str) -> String {
    key.split('.')
        .map(|part| part.trim().trim_matches('"').trim_matches('\''))
        .collect::<Vec<_>>()
        .join(".")
}

fn value_parses_as_fingerprint(value: &str) -> bool {
    let v = value.split('#').next().unwrap_or_default().trim();
    v.trim_matches('"')
        .trim_matches('\'')
        .parse::<hotline_net::Fingerprint>()
        .is_ok()
}

/// Guesses the kind from top-level keys and table headers; `None` if the text has marks of
/// both or of neither.
fn guess_kind(text: &str) -> Option<Kind> {
    const NODE_MARKS: [&str; 4] = ["participant", "[relays]", "[api]", "[hooks]"];
    const RELAY_MARKS: [&str; 5] = ["listen", "cert", "metrics_listen", "[limits]", "[policy]"];
    let mut node = false;
    let mut relay = false;
    let mut in_table = false;
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('[') {
            in_table = true;
            let name = format!(
                "[{}]",
                normalise_key(line.trim_start_matches('[').split(']').next().unwrap_or(""))
            );
            node |= NODE_MARKS.contains(&name.as_str());
            relay |= RELAY_MARKS.contains(&name.as_str());
            continue;
        }
        if in_table || line.starts_with('#') {
            continue;
        }
        if let Some((key, _)) = line.split_once('=') {
            let key = normalise_key(key);
            node |= NODE_MARKS.contains(&key.as_str());
            relay |= RELAY_MARKS.contains(&key.as_str());
        }
    }
    match (relay, node) {
        (true, false) => Some(Kind::Relay),
        (false, true) => Some(Kind::Node),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "participant = \"KAZ\"\nkey = \"KAZ.key\"\n\n[[relays]]\naddress = \"127.0.0.1:7400\"\nfingerprint = \"00\"\n\n[[relays]]\naddress = \"127.0.0.1:7401\"\nfingerprint = \"nothex\"\n\n[api]\ntoken_file = \"api.token\"\n";

    #[test]
    fn locate_follows_tables_and_dotted_keys() {
        assert_eq!(locate(NODE, "key"), vec![2]);
        assert_eq!(
            locate(NODE, "api.listen"),
            vec![12],
            "falls back to the table"
        );
        assert_eq!(locate(NODE, "relays.fingerprint"), vec![6, 10]);
        let good = NODE.replace("\"00\"", &format!("\"{}\"", "ab".repeat(32)));
        assert_eq!(locate(&good, "relays.fingerprint"), vec![10]);
        assert_eq!(
            locate(
                "a = 1\nlimits . \"keepalive_ms\" = 0\n",
                "limits.keepalive_ms"
            ),
            vec![2]
        );
        assert!(locate("a = 1\n", "b").is_empty());
    }

    #[test]
    fn a_data_dir_the_packaged_unit_cannot_write_is_noticed() {
        let etc = Path::new("/etc/hotline/relay.toml");
        let lib = Path::new("/var/lib/hotline-relay");
        assert_eq!(packaged_data_dir_mismatch(Kind::Relay, etc, lib), None);
        assert_eq!(
            packaged_data_dir_mismatch(Kind::Relay, etc, Path::new("/var/lib/hotline/relay")),
            Some("/var/lib/hotline-relay")
        );
        assert_eq!(
            packaged_data_dir_mismatch(Kind::Node, Path::new("/etc/hotline/node.toml"), lib),
            Some("/var/lib/hotline-node")
        );
        // Outside /etc/hotline the packaged units are not involved.
        let here = Path::new("/srv/hotline/relay.toml");
        assert_eq!(
            packaged_data_dir_mismatch(Kind::Relay, here, Path::new("/srv/x")),
            None
        );
    }

    #[test]
    fn the_service_account_is_found_in_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nhotlinex:x:5:5::/:/bin/sh\n\
                      hotline:x:998:997:CICA Hotline:/nonexistent:/usr/sbin/nologin\n";
        assert_eq!(
            account_in(passwd, "hotline"),
            Some(Account { uid: 998, gid: 997 })
        );
        assert_eq!(account_in(passwd, "nobody"), None);
        assert_eq!(account_in("hotline:x:abc:1:\n", "hotline"), None);
    }

    /// A file this user reads but the service's account cannot (a key `sudo hotline relay
    /// init` left owned by root, mode 0600) is an error, as the service would fail to read
    /// it; what the account can read, by owner, group or others, passes.
    #[test]
    fn a_file_the_service_account_cannot_read_is_an_error() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("relay.key");
        std::fs::write(&file, "k").expect("write");
        let meta = std::fs::metadata(&file).expect("stat");
        let (me, my_group) = (meta.uid(), meta.gid());
        let other = Account {
            uid: me.wrapping_add(1),
            gid: my_group.wrapping_add(1),
        };
        let errors = |mode: u32, account: Account| {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let mut report = Report {
                account: Some(account),
                ..Report::default()
            };
            assert!(report.readable("key", &file, ""), "this user reads it");
            report.errors
        };
        let e = errors(0o600, other);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("relay.key: the service's account hotline cannot read it")
                && e[0].contains("mode 0600")
                && e[0].contains("chown hotline:hotline"),
            "{e:?}"
        );
        assert!(errors(0o600, Account { uid: me, ..other }).is_empty());
        assert!(errors(
            0o640,
            Account {
                gid: my_group,
                ..other
            }
        )
        .is_empty());
        assert!(!errors(
            0o600,
            Account {
                gid: my_group,
                ..other
            }
        )
        .is_empty());
        assert!(errors(0o644, other).is_empty());
    }

    #[test]
    fn a_token_the_packaged_unit_cannot_create_is_noticed() {
        let etc = Path::new("/etc/hotline/node.toml");
        assert!(packaged_token_unwritable(
            etc,
            Path::new("/etc/hotline/api.token")
        ));
        assert!(!packaged_token_unwritable(
            etc,
            Path::new("/var/lib/hotline-node/api.token")
        ));
        // Outside /etc/hotline the packaged units are not involved.
        assert!(!packaged_token_unwritable(
            Path::new("/srv/hotline/node.toml"),
            Path::new("/srv/hotline/api.token")
        ));
    }

    #[test]
    fn limits_that_leave_the_relay_open_are_warned_about() {
        let defaults = hotline_relay::config::Limits::default();
        assert!(relay_limit_warnings(&defaults).is_empty());
        // A small relay's own connection limit is not a reason to warn.
        let small = hotline_relay::config::Limits {
            connections_max: 100,
            ..defaults.clone()
        };
        assert!(relay_limit_warnings(&small).is_empty());
        let open = hotline_relay::config::Limits {
            handshakes_per_ip_max: 0,
            ..defaults
        };
        let fields: Vec<&str> = relay_limit_warnings(&open)
            .into_iter()
            .map(|w| w.0)
            .collect();
        assert_eq!(fields, vec!["limits.handshakes_per_ip_max"]);
    }

    #[test]
    fn kind_is_guessed_from_top_level_keys_and_tables() {
        assert_eq!(guess_kind(NODE), Some(Kind::Node));
        assert_eq!(
            guess_kind("listen = \"0.0.0.0:7400\"\n[limits]\n"),
            Some(Kind::Relay)
        );
        assert_eq!(
            guess_kind("# participant = 1\ncert = \"x\"\n"),
            Some(Kind::Relay)
        );
        assert_eq!(guess_kind("[hooks]\ncert = 1\n"), Some(Kind::Node));
        assert_eq!(guess_kind("data_dir = \"x\"\n"), None);
        assert_eq!(guess_kind("participant = 1\ncert = 1\n"), None);
    }
}
