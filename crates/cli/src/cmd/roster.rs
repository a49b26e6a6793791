//! `hotline roster …`: create a roster draft from a template, edit it, sign it, show and
//! verify signed rosters. File formats live in `hotline_config::roster_file`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use hotline_config::keyfile::{self, IfExists};
use hotline_config::roster_file::{self, role_name, Draft, DraftParticipant};
use hotline_config::utc::format_utc;
use hotline_proto::{ParticipantId, PublicKey, Role, Roster, Signed};
use serde::Serialize;

use super::operator::shown_str;

/// Longest participant name shown in full in the `roster show` table.
const SHOW_NAME_CHARS_MAX: usize = 48;

/// Bytes sniffed to tell a signed roster file (binary: its first field is a little-endian
/// u64 length, so it holds NUL bytes) from a TOML draft (text: never holds NUL).
const SNIFF_BYTES: usize = 8;

/// The roster subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum RosterCommand {
    /// Fill a roster template's keys from DIR/<ID>.pub files and write a draft.
    ///
    /// This is how deployments and drills bootstrap: with --generate, a key pair is created
    /// in DIR first (DIR/<ID>.key, mode 0600, and DIR/<ID>.pub) for each participant with
    /// neither a key file in DIR nor a key in the template. A key found in DIR replaces any
    /// keys the template lists for that participant; keys the template lists are kept
    /// otherwise (several, during a key rotation); a participant with neither is an error.
    Create(CreateArgs),
    /// Add a participant to a draft (rewrites it; comments are lost).
    ///
    /// The draft file is rewritten from its parsed contents, so comments in it are not kept.
    Add(AddArgs),
    /// Mark a participant revoked in a draft (rewrites it; comments are lost).
    ///
    /// The draft file is rewritten from its parsed contents, so comments in it are not kept.
    /// The revocation takes effect when a roster with a higher version is signed and
    /// distributed.
    Revoke(RevokeArgs),
    /// Create a group in a draft, or replace its members (rewrites it; comments are lost).
    ///
    /// The draft file is rewritten from its parsed contents, so comments in it are not kept.
    Group(GroupArgs),
    /// Sign a draft with the roster key, writing a signed roster file.
    Sign(SignArgs),
    /// Show a signed roster file or a draft as a table, or as JSON.
    Show(ShowArgs),
    /// Verify a signed roster file against the pinned roster key (exit status 1 if invalid).
    Verify(VerifyArgs),
}

/// Arguments of `hotline roster create`.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// Roster template (a draft whose participants may have `keys = []`).
    #[arg(long, value_name = "TEMPLATE.toml")]
    from: PathBuf,
    /// Directory of public key files named <ID>.pub.
    #[arg(long, value_name = "DIR")]
    keys: PathBuf,
    /// Create a key pair in DIR for each participant with no key file in DIR and no key in
    /// the template.
    #[arg(long)]
    generate: bool,
    /// Draft to write.
    #[arg(long, value_name = "DRAFT.toml")]
    out: PathBuf,
    /// Replace the draft if it exists.
    #[arg(long)]
    force: bool,
}

/// A participant's role, as given on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum RoleArg {
    /// A member state.
    Member,
    /// An observer state or organisation.
    Observer,
    /// The Secretariat.
    Secretariat,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Member => Role::Member,
            RoleArg::Observer => Role::Observer,
            RoleArg::Secretariat => Role::Secretariat,
        }
    }
}

/// Arguments of `hotline roster add`.
#[derive(Debug, Args)]
pub(crate) struct AddArgs {
    /// Draft to edit.
    #[arg(long, value_name = "DRAFT.toml")]
    roster: PathBuf,
    /// Participant id: ISO 3166 alpha-3 for a state, a short code for an organisation.
    #[arg(long)]
    id: ParticipantId,
    /// Official English name.
    #[arg(long)]
    name: String,
    /// Role in CICA.
    #[arg(long, value_enum)]
    role: RoleArg,
    /// The participant's public key: a .pub file or 64 hexadecimal digits.
    #[arg(long, value_name = "FILE.pub")]
    key: String,
}

/// Arguments of `hotline roster revoke`.
#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    /// Draft to edit.
    #[arg(long, value_name = "DRAFT.toml")]
    roster: PathBuf,
    /// Participant to revoke.
    #[arg(long)]
    id: ParticipantId,
}

/// Arguments of `hotline roster group`.
#[derive(Debug, Args)]
pub(crate) struct GroupArgs {
    /// Draft to edit.
    #[arg(long, value_name = "DRAFT.toml")]
    roster: PathBuf,
    /// Group name, e.g. a CBM area such as `energy-security`.
    #[arg(long)]
    name: String,
    /// Comma-separated participant ids; replaces the group's members if it exists.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    members: Vec<ParticipantId>,
}

/// Arguments of `hotline roster sign`.
#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    /// Draft to sign; every participant must have a key.
    #[arg(long, value_name = "DRAFT.toml")]
    roster: PathBuf,
    /// The roster signing key (secret key file, mode 0600).
    #[arg(long, value_name = "FILE.key")]
    key: PathBuf,
    /// Signed roster file to write (replaced atomically if it exists). Refused if it is
    /// the draft or the key, or is named like a key file (*.key, *.pub).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Roster version to sign, instead of the draft's `version`. Nodes only accept a
    /// roster with a higher version than the one they hold.
    #[arg(long, value_name = "N")]
    version: Option<u64>,
}

/// Arguments of `hotline roster show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// A signed roster file or a TOML draft.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Verify a signed roster against this roster key (64 hex digits or a .pub file;
    /// default: $HOTLINE_ROSTER_KEY, which a draft ignores); without either a signed roster
    /// is shown unverified.
    #[arg(long, value_name = "HEX_OR_PATH")]
    roster_key: Option<String>,
}

/// The environment variable that pins the roster key for `roster show` and `roster verify`
/// (the man page's ENVIRONMENT).
const ROSTER_KEY_ENV: &str = "HOTLINE_ROSTER_KEY";

/// Arguments of `hotline roster verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The signed roster file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The pinned roster key: 64 hexadecimal digits or a .pub file.
    #[arg(long, value_name = "HEX_OR_PATH", env = ROSTER_KEY_ENV)]
    roster_key: String,
}

/// Runs a roster subcommand.
pub(crate) fn run(command: RosterCommand) -> Result<()> {
    match command {
        RosterCommand::Create(a) => create(a),
        RosterCommand::Add(a) => add(a),
        RosterCommand::Revoke(a) => revoke(a),
        RosterCommand::Group(a) => group(a),
        RosterCommand::Sign(a) => sign(a),
        RosterCommand::Show(a) => show(a),
        RosterCommand::Verify(a) => verify(a),
    }
}

fn create(args: CreateArgs) -> Result<()> {
    let mut draft = roster_file::read_draft(&args.from)?;
    check_key_dir(&args.keys, args.generate)?;
    if args.generate {
        super::keys::ensure_key_dir(&args.keys)?;
    }
    let mut missing = Vec::new();
    let mut generated = 0usize;
    for p in &mut draft.participants {
        let (secret, public) = keyfile::key_paths(&args.keys, p.id.as_str())?;
        // `exists` would take a key file this user may not look at (DIR mode 0700, another
        // owner's) for one missing, and report every participant as having none.
        let found = public.try_exists().with_context(|| {
            format!(
                "cannot look for {}.pub in key directory {}",
                p.id,
                args.keys.display()
            )
        })?;
        let key = if found {
            keyfile::read_public(&public)?
        } else if !p.keys.is_empty() {
            // The template's keys stand, with or without --generate: a key generated here
            // would silently take the place of the participant's own (or of both keys of a
            // rotation), and lock its node out of the relays.
            continue;
        } else if !args.generate {
            missing.push(p.id.to_string());
            continue;
        } else if secret.exists() {
            // A secret without its public half: derive the public key rather than replace
            // a key someone may already hold.
            let key = PublicKey::of(&keyfile::read_secret(&secret)?);
            keyfile::write_public(&public, &key, IfExists::Refuse)?;
            tracing::info!(id = %p.id, public = %public.display(), "public key file restored");
            key
        } else {
            let key = keyfile::generate_pair(&args.keys, p.id.as_str(), IfExists::Refuse)?;
            generated += 1;
            tracing::debug!(id = %p.id, secret = %secret.display(), "key pair generated");
            PublicKey::of(&key)
        };
        p.keys = vec![key];
    }
    if !missing.is_empty() {
        bail!(
            "no public key file in {} for {} participant(s): {} (expected <ID>.pub; pass \
             --generate to create missing key pairs)",
            args.keys.display(),
            missing.len(),
            missing.join(", ")
        );
    }
    // Refuse to write a draft that could not be signed.
    draft.to_roster(now_ms()?).with_context(|| {
        format!(
            "{}: the filled draft is not a valid roster",
            args.out.display()
        )
    })?;
    let if_exists = if args.force {
        IfExists::Replace
    } else {
        IfExists::Refuse
    };
    roster_file::write_draft(&args.out, &draft, if_exists)?;
    outln!(
        "wrote {}: {} participants, {} groups, version {} ({generated} key pair(s) generated in {})",
        args.out.display(),
        draft.participants.len(),
        draft.groups.len(),
        draft.version,
        args.keys.display(),
    );
    Ok(())
}

/// Refuses a `--keys` DIR that is not a directory, or that does not exist without
/// `--generate` (which creates it), naming DIR. A missing DIR was taken for an empty one:
/// "no public key file in DIR for 38 participant(s)", or, with a template listing every
/// key, a draft written from the template's keys, the mistyped DIR unnoticed.
fn check_key_dir(dir: &Path, generate: bool) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!(
            "key directory {} is not a directory (--keys takes the directory holding the <ID>.pub files)",
            dir.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if generate {
                return Ok(());
            }
            bail!(
                "key directory {} does not exist: give the directory holding the participants' <ID>.pub files (for a drill, --generate creates it with new key pairs)",
                dir.display()
            )
        }
        Err(e) => Err(e).with_context(|| format!("cannot look at key directory {}", dir.display())),
    }
}

fn add(args: AddArgs) -> Result<()> {
    let mut draft = roster_file::read_draft(&args.roster)?;
    let key = keyfile::resolve_public(&args.key)?;
    let role = Role::from(args.role);
    draft
        .add_participant(DraftParticipant {
            id: args.id.clone(),
            name: args.name,
            role,
            keys: vec![key],
            revoked: false,
        })
        .with_context(|| format!("{}: cannot add {}", args.roster.display(), args.id))?;
    roster_file::write_draft(&args.roster, &draft, IfExists::Replace)?;
    outln!(
        "added {} ({}) to {}",
        args.id,
        role_name(role),
        args.roster.display()
    );
    Ok(())
}

fn revoke(args: RevokeArgs) -> Result<()> {
    let mut draft = roster_file::read_draft(&args.roster)?;
    draft
        .revoke(&args.id)
        .with_context(|| format!("{}: cannot revoke {}", args.roster.display(), args.id))?;
    roster_file::write_draft(&args.roster, &draft, IfExists::Replace)?;
    outln!(
        "revoked {} in {}; sign and distribute a roster with a higher version for it to take \
         effect",
        args.id,
        args.roster.display()
    );
    Ok(())
}

fn group(args: GroupArgs) -> Result<()> {
    let mut draft = roster_file::read_draft(&args.roster)?;
    draft
        .set_group(&args.name, args.members.clone())
        .with_context(|| {
            format!(
                "{}: cannot set group {:?}",
                args.roster.display(),
                args.name
            )
        })?;
    roster_file::write_draft(&args.roster, &draft, IfExists::Replace)?;
    let members: Vec<&str> = args.members.iter().map(ParticipantId::as_str).collect();
    outln!(
        "group {} = {} in {}",
        args.name,
        members.join(", "),
        args.roster.display()
    );
    Ok(())
}

fn sign(args: SignArgs) -> Result<()> {
    check_sign_out(&args)?;
    let mut draft = roster_file::read_draft(&args.roster)?;
    if let Some(v) = args.version {
        draft.version = v;
    }
    let roster = draft
        .to_roster(now_ms()?)
        .with_context(|| format!("{}: cannot sign", args.roster.display()))?;
    let key = keyfile::read_secret(&args.key)?;
    let roster_key = PublicKey::of(&key);
    if let Some(p) = roster
        .participants
        .iter()
        .find(|p| p.keys.contains(&roster_key))
    {
        tracing::warn!(
            participant = %p.id,
            "the roster signing key is also a participant key; keep the roster key separate"
        );
    }
    warn_if_not_newer(&args.out, &roster);

    let signed = Signed::sign(&roster, &key)
        .with_context(|| format!("{}: cannot sign", args.roster.display()))?;
    roster_file::write_signed_roster(&args.out, &signed)?;
    // Read back what was written, as a node will, before telling anyone to distribute it.
    let verified = roster_file::read_verified_roster(&args.out, &roster_key)?;
    anyhow::ensure!(
        verified.value() == &roster,
        "{}: the written roster does not read back unchanged",
        args.out.display()
    );
    outln!(
        "signed {}: roster version {}, {} participants, {} groups",
        args.out.display(),
        roster.version,
        roster.participants.len(),
        roster.groups.len()
    );
    outln!("roster key (pin on every node): {roster_key}");
    Ok(())
}

/// Refuses an `--out` that the signed roster would destroy or be mistaken for: the draft
/// or the roster key itself (the key may have no other copy on the offline machine), or a
/// name a key file has (`*.key`, `*.pub`), which `keyfile` would later take for a key.
/// Paths are compared as given and, when both exist, canonicalised, so that `./draft.toml`
/// or a symbolic link to the key is caught too.
fn check_sign_out(args: &SignArgs) -> Result<()> {
    let out = &args.out;
    let same = |other: &Path| {
        out == other
            || matches!(
                (std::fs::canonicalize(out), std::fs::canonicalize(other)),
                (Ok(a), Ok(b)) if a == b
            )
    };
    for (flag, other) in [("--key", &args.key), ("--roster", &args.roster)] {
        if same(other) {
            bail!(
                "--out {} is the {flag} file {}: writing the signed roster there would destroy \
                 it; give another --out, e.g. roster.signed (nothing was written)",
                out.display(),
                other.display()
            );
        }
    }
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or_default();
    if [keyfile::SECRET_KEY_EXTENSION, keyfile::PUBLIC_KEY_EXTENSION]
        .iter()
        .any(|k| ext.eq_ignore_ascii_case(k))
    {
        bail!(
            "--out {}: named like a key file (*.{}, *.{}); a signed roster is not a key: name \
             it e.g. roster.signed (nothing was written)",
            out.display(),
            keyfile::SECRET_KEY_EXTENSION,
            keyfile::PUBLIC_KEY_EXTENSION
        );
    }
    Ok(())
}

/// Warns when `out` already holds a roster whose version is not lower than the new one:
/// nodes that hold it would refuse the new roster.
fn warn_if_not_newer(out: &Path, roster: &Roster) {
    if !out.exists() {
        return;
    }
    let old = roster_file::read_signed_roster(out).and_then(|s| {
        s.decode_unverified()
            .map_err(|source| roster_file::RosterFileError::Decode {
                path: out.to_owned(),
                source,
            })
    });
    if let Ok(old) = old {
        if old.version >= roster.version {
            tracing::warn!(
                old = old.version,
                new = roster.version,
                file = %out.display(),
                "replacing a roster whose version is not lower; nodes holding it will refuse \
                 the new one (use --version)"
            );
        }
    }
}

/// Whether a roster shown was checked, and against which key.
#[derive(Debug, Clone, Copy)]
enum Provenance {
    /// A TOML draft: unsigned.
    Draft,
    /// A signed file whose signature was not checked.
    Unverified(PublicKey),
    /// A signed file verified against the pinned key.
    Verified(PublicKey),
}

/// What `roster show --json` prints.
#[derive(Debug, Serialize)]
struct ShowJson<'a> {
    file: String,
    kind: &'static str,
    verified: bool,
    signed_by: Option<String>,
    network: &'a str,
    version: u64,
    issued_at_ms: Option<u64>,
    participants: Vec<ParticipantJson<'a>>,
    groups: Vec<GroupJson<'a>>,
}

#[derive(Debug, Serialize)]
struct ParticipantJson<'a> {
    id: &'a str,
    name: &'a str,
    role: &'static str,
    keys: Vec<String>,
    revoked: bool,
}

#[derive(Debug, Serialize)]
struct GroupJson<'a> {
    name: &'a str,
    members: Vec<&'a str>,
}

fn is_signed_file(path: &Path) -> Result<bool> {
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    hotline_config::open_for_read(path)
        .and_then(|f| f.take(SNIFF_BYTES as u64).read_to_end(&mut head))
        .with_context(|| format!("cannot read {}", path.display()))?;
    // An empty file is no draft either (a draft names its network): it is read as a signed
    // roster, which refuses it as empty (a copy that failed), as a node or a relay does.
    Ok(head.is_empty() || head.contains(&0))
}

fn show(args: ShowArgs) -> Result<()> {
    let (draft, issued_at_ms, provenance) = if is_signed_file(&args.file)? {
        let signed = roster_file::read_signed_roster(&args.file)?;
        // The variable is read here, not by clap, so that it applies to signed files only:
        // set once in a shell, it must not stop `roster show DRAFT`, which has nothing to
        // verify (the flag given for a draft is a mistake, refused below). Empty is unset,
        // as clap takes it.
        let from_env = || std::env::var(ROSTER_KEY_ENV).ok().filter(|k| !k.is_empty());
        let (roster, provenance) = match &args.roster_key.clone().or_else(from_env) {
            Some(spec) => {
                let pinned = roster_key(spec)?;
                let v = read_verified_against_flag(&args.file, &pinned)?;
                (v.value().clone(), Provenance::Verified(pinned))
            }
            None => {
                let roster = signed.decode_unverified().map_err(|source| {
                    roster_file::RosterFileError::Decode {
                        path: args.file.clone(),
                        source,
                    }
                })?;
                (roster, Provenance::Unverified(signed.key()))
            }
        };
        (
            Draft::from_roster(&roster),
            Some(roster.issued_at_ms),
            provenance,
        )
    } else {
        if args.roster_key.is_some() {
            bail!(
                "{}: a draft is not signed; --roster-key applies to signed roster files",
                args.file.display()
            );
        }
        (
            roster_file::read_draft(&args.file)?,
            None,
            Provenance::Draft,
        )
    };
    if args.json {
        print_json(&args.file, &draft, issued_at_ms, provenance)
    } else {
        print_table(&args.file, &draft, issued_at_ms, provenance);
        Ok(())
    }
}

fn print_json(
    file: &Path,
    draft: &Draft,
    issued_at_ms: Option<u64>,
    provenance: Provenance,
) -> Result<()> {
    let (kind, verified, signed_by) = match provenance {
        Provenance::Draft => ("draft", false, None),
        Provenance::Unverified(k) => ("signed", false, Some(k.to_string())),
        Provenance::Verified(k) => ("signed", true, Some(k.to_string())),
    };
    let out = ShowJson {
        file: file.display().to_string(),
        kind,
        verified,
        signed_by,
        network: &draft.network,
        version: draft.version,
        issued_at_ms,
        participants: draft
            .participants
            .iter()
            .map(|p| ParticipantJson {
                id: p.id.as_str(),
                name: &p.name,
                role: role_name(p.role),
                keys: p.keys.iter().map(ToString::to_string).collect(),
                revoked: p.revoked,
            })
            .collect(),
        groups: draft
            .groups
            .iter()
            .map(|g| GroupJson {
                name: &g.name,
                members: g.members.iter().map(ParticipantId::as_str).collect(),
            })
            .collect(),
    };
    let text = serde_json::to_string_pretty(&out).context("cannot format JSON")?;
    outln!("{text}");
    Ok(())
}

/// The roster as a table. Its names (network, participants, groups) are shown escaped
/// ([`shown_str`]): a signed roster shown unverified may be anyone's, and a name holding
/// terminal controls must not be able to write over the `NOT VERIFIED` line above it.
fn print_table(file: &Path, draft: &Draft, issued_at_ms: Option<u64>, provenance: Provenance) {
    let status = match provenance {
        Provenance::Draft => "unsigned draft".to_owned(),
        Provenance::Unverified(k) => {
            format!("signed by {k} — NOT VERIFIED (pass --roster-key to verify)")
        }
        Provenance::Verified(k) => format!("signed by {k}, verified"),
    };
    outln!(
        "{}: {} roster version {}",
        file.display(),
        shown_str(&draft.network, false),
        draft.version
    );
    if let Some(ms) = issued_at_ms {
        outln!("issued {}", format_utc(ms));
    }
    outln!("{status}");
    outln!();

    let names: Vec<String> = draft
        .participants
        .iter()
        .map(|p| shorten(&shown_str(&p.name, false), SHOW_NAME_CHARS_MAX))
        .collect();
    let id_w = draft
        .participants
        .iter()
        .map(|p| p.id.as_str().len())
        .max()
        .unwrap_or(0)
        .max("ID".len());
    let name_w = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0)
        .max("NAME".len());
    let role_w = "secretariat".len();
    outln!(
        "{:id_w$}  {:name_w$}  {:role_w$}  {:7}  KEYS",
        "ID",
        "NAME",
        "ROLE",
        "REVOKED"
    );
    for (p, name) in draft.participants.iter().zip(&names) {
        let keys = if p.keys.is_empty() {
            "-".to_owned()
        } else {
            p.keys
                .iter()
                .map(PublicKey::short)
                .collect::<Vec<_>>()
                .join(",")
        };
        // `{:width$}` pads by characters, so names with non-ASCII letters line up.
        outln!(
            "{:id_w$}  {:name_w$}  {:role_w$}  {:7}  {keys}",
            p.id.as_str(),
            name,
            role_name(p.role),
            if p.revoked { "REVOKED" } else { "no" },
        );
    }
    let count = |role: Role| draft.participants.iter().filter(|p| p.role == role).count();
    outln!(
        "{} participants: {} members, {} observers, {} secretariat; {} revoked",
        draft.participants.len(),
        count(Role::Member),
        count(Role::Observer),
        count(Role::Secretariat),
        draft.participants.iter().filter(|p| p.revoked).count()
    );
    outln!();

    let group_names: Vec<String> = draft
        .groups
        .iter()
        .map(|g| shown_str(&g.name, false))
        .collect();
    let group_w = group_names
        .iter()
        .map(|g| g.chars().count())
        .max()
        .unwrap_or(0)
        .max("GROUP".len());
    outln!("{:group_w$}  MEMBERS", "GROUP");
    for (g, name) in draft.groups.iter().zip(&group_names) {
        let members: Vec<&str> = g.members.iter().map(ParticipantId::as_str).collect();
        outln!("{name:group_w$}  {}", members.join(", "));
    }
    outln!("{} groups", draft.groups.len());
}

fn verify(args: VerifyArgs) -> Result<()> {
    let pinned = roster_key(&args.roster_key)?;
    let verified = read_verified_against_flag(&args.file, &pinned)?;
    outln!(
        "OK: roster version {}, {} participants, signed by {}",
        verified.version,
        verified.participants.len(),
        verified.signed().key()
    );
    Ok(())
}

/// A signed roster file verified against the key given with `--roster-key`. The two
/// errors that name the pinned key say where it came from: the library's name it as a
/// service configuration's `roster_key`, which is not what this command was given.
fn read_verified_against_flag(
    path: &Path,
    pinned: &PublicKey,
) -> Result<hotline_proto::Verified<Roster>> {
    roster_file::read_verified_roster(path, pinned).map_err(|e| match e {
        roster_file::RosterFileError::WrongKey {
            path, signed_by, ..
        } => anyhow!(
            "{}: roster is signed by key {signed_by}, not by the key given with --roster-key",
            path.display()
        ),
        roster_file::RosterFileError::PinnedSecret { path, signed_by } => anyhow!(
            "{}: --roster-key is the SECRET seed of the key that signed this roster, not its \
             public key {signed_by}: give the public key (the .pub file); a seed typed on a \
             command line may be in a shell history, so change the roster key if others can \
             read it (OPERATIONS.md 4.7)",
            path.display()
        ),
        e => e.into(),
    })
}

/// The pinned roster key from `--roster-key`.
fn roster_key(spec: &str) -> Result<PublicKey> {
    // The context does not repeat `spec`: 64 digits given here may be a secret seed pasted
    // by mistake, and a path is named by the error itself.
    keyfile::resolve_public(spec).context(
        "--roster-key: give the roster public key as 64 hexadecimal digits or as the path of \
         its public key file (*.pub)",
    )
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> Result<u64> {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| anyhow!("the system clock is before 1970"))?;
    u64::try_from(d.as_millis()).context("the system clock is past the year 584 million")
}

/// `s` cut to `max` characters, with an ellipsis if cut.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// An RFC 3339 time (`2025-01-01T03:00:00Z`, or with an offset) as milliseconds since the
/// Unix epoch; refused before 1970. The date and time are joined by `T`, as `format_utc`
/// writes them (the parser would also take a space, which a shell splits).
pub(crate) fn parse_utc(s: &str) -> anyhow::Result<u64> {
    let expected = || format!("{s:?}: expected a time such as 2025-01-01T03:00:00Z");
    if s.as_bytes().get(10) != Some(&b'T') {
        anyhow::bail!(expected());
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| anyhow::anyhow!("{} ({e})", expected()))?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| anyhow::anyhow!("{s:?}: before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_parse_back() {
        for ms in [0, 951_782_400_000, 1_735_700_400_000, 4_102_444_799_000] {
            assert_eq!(parse_utc(&format_utc(ms)).expect("parses"), ms, "{ms}");
        }
        for bad in [
            "2025-01-01 03:00:00Z",
            "2025-01-01T03:00:00",
            "2025-04-31T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "2025-01-01T24:00:00Z",
            "2025-+1-01T00:00:00Z",
        ] {
            assert!(parse_utc(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shortening() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "ab…");
    }
}
