//! The node's configuration file (TOML). Paths are relative to the file's directory.
//! `config/node.toml` is the commented example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use hotline_net::Fingerprint;
use hotline_proto::{ParticipantId, PublicKey};

use hotline_config::text_file;
pub use hotline_config::ConfigError;

use crate::limits;

/// One relay the node connects to.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    address: SocketAddr,
    fingerprint: String,
}

/// A relay: its address and the pinned SHA-256 fingerprint of its certificate.
#[derive(Clone, Debug)]
pub struct RelayEndpoint {
    /// UDP address.
    pub address: SocketAddr,
    /// Pinned certificate fingerprint.
    pub fingerprint: Fingerprint,
}

/// The `[api]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<SocketAddr>,
    token_file: PathBuf,
}

/// The `[hooks]` table: commands run with an event as JSON on standard input.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hooks {
    /// Run when a message arrives, and again every `paging_interval_ms` for an
    /// unacknowledged FLASH or IMMEDIATE message (program and arguments; default none).
    pub on_message: Option<Vec<String>>,
    /// Run when a sent message passes its respond-by time unacknowledged (default none).
    pub on_overdue: Option<Vec<String>>,
    /// Run when no relay has been reachable for `unreachable_after_ms` (default none).
    pub on_unreachable: Option<Vec<String>>,
    /// Run when a newer roster is installed (default none).
    pub on_roster_changed: Option<Vec<String>>,
    /// A hook still running after this is killed, ms (default 10000; at least 1000
    /// ([`limits::HOOK_TIMEOUT_MIN_MS`]): a hook killed sooner cannot page anyone).
    pub timeout_ms: Option<u64>,
    /// How long without any relay before `on_unreachable` runs, ms (default 60000; at
    /// least 1000 ([`limits::UNREACHABLE_AFTER_MIN_MS`]): less raises the alarm at every
    /// start).
    pub unreachable_after_ms: Option<u64>,
    /// Re-page interval for unacknowledged FLASH / IMMEDIATE messages, ms (default 300000;
    /// at least 1000 ([`limits::PAGING_INTERVAL_MIN_MS`]): less re-pages four times a
    /// second).
    pub paging_interval_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    participant: String,
    key: PathBuf,
    roster: PathBuf,
    roster_key: String,
    data_dir: PathBuf,
    receipt_pace_ms: Option<u64>,
    quarantine_max_bytes: Option<u64>,
    relays: Vec<RawRelay>,
    api: RawApi,
    #[serde(default)]
    hooks: Hooks,
}

/// A checked node configuration with absolute paths.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The participant this node speaks for (e.g. `KAZ`).
    pub participant: ParticipantId,
    /// The participant's secret key file (mode 0600).
    pub key: PathBuf,
    /// The signed roster to start from; newer ones from the relay replace it in the store.
    pub roster: PathBuf,
    /// The pinned Secretariat roster key (hex or path to a `.pub` file).
    pub roster_key: PublicKey,
    /// Directory of the store (`node.db`); created if missing.
    pub data_dir: PathBuf,
    /// Receipt pacing on each relay link, ms (default
    /// [`limits::RECEIPT_PACE_MS`]; 0 receipts every stored batch at once; see
    /// `crate::pacer`).
    pub receipt_pace_ms: u64,
    /// The most the quarantine may hold, in envelope bytes (default
    /// [`limits::QUARANTINE_MAX_BYTES`]); past it a delivery failing its checks is refused
    /// and stays with the relay. 0 holds nothing.
    pub quarantine_max_bytes: u64,
    /// Relays, each with its pinned certificate fingerprint; the node sends through all.
    /// No two have both the same address and the same fingerprint (the two links would log
    /// in as this node and take the session from each other without end); the same address
    /// with two fingerprints is allowed, for a certificate rotation (OPERATIONS.md 5).
    pub relays: Vec<RelayEndpoint>,
    /// Local API address, loopback only (default `127.0.0.1:7500`).
    pub api_listen: SocketAddr,
    /// File holding the API bearer token (created with a random token if missing).
    pub token_file: PathBuf,
    /// Hook commands.
    pub hooks: Hooks,
}

/// Default local API address.
pub const DEFAULT_API: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7500);

impl NodeConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&text_file::read_config(path)?, path)
    }

    /// Parses configuration text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = text_file::parse_toml(text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let invalid = |field, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            reason,
        };
        let participant = ParticipantId::new(&raw.participant)
            .map_err(|e| invalid("participant", e.to_string()))?;
        if let Some((field, why)) = text_file::empty_field(
            &[
                ("key", raw.key.as_path()),
                ("roster", raw.roster.as_path()),
                ("data_dir", raw.data_dir.as_path()),
                ("api.token_file", raw.api.token_file.as_path()),
            ],
            &raw.roster_key,
        ) {
            return Err(invalid(field, why.into()));
        }
        if hotline_config::keyfile::is_key_hex(raw.key.to_string_lossy().trim()) {
            // Not echoed: it may be the participant's secret seed.
            return Err(invalid(
                "key",
                "64 hexadecimal digits, where the path of the secret key file belongs; keep \
                 the key in a file (`hotline keygen`, mode 0600) and name that file here"
                    .into(),
            ));
        }
        let roster_key = hotline_config::keyfile::resolve_public_in(&raw.roster_key, base)
            .map_err(|e| invalid("roster_key", e.to_string()))?;
        let receipt_pace_ms = raw.receipt_pace_ms.unwrap_or(limits::RECEIPT_PACE_MS);
        if receipt_pace_ms > limits::RECEIPT_PACE_MS_MAX {
            return Err(invalid(
                "receipt_pace_ms",
                format!(
                    "at most {} ms: a sender sees a delivery that much later",
                    limits::RECEIPT_PACE_MS_MAX
                ),
            ));
        }
        let quarantine_max_bytes = raw
            .quarantine_max_bytes
            .unwrap_or(limits::QUARANTINE_MAX_BYTES);
        if raw.relays.is_empty() {
            return Err(invalid("relays", "list at least one relay".into()));
        }
        if raw.relays.len() > limits::RELAYS_MAX {
            return Err(invalid(
                "relays",
                format!("at most {} relays", limits::RELAYS_MAX),
            ));
        }
        let mut relays: Vec<RelayEndpoint> = Vec::new();
        for r in raw.relays {
            let fingerprint = r
                .fingerprint
                .parse()
                .map_err(|e: hotline_net::NetError| invalid("relays.fingerprint", e.to_string()))?;
            // The relay logs a participant in once: a second link to the same relay
            // supersedes the first, which reconnects and supersedes the second, for ever.
            if relays
                .iter()
                .any(|o| o.address == r.address && o.fingerprint == fingerprint)
            {
                return Err(invalid(
                    "relays",
                    format!(
                        "the relay at {} with fingerprint {fingerprint} is listed twice; list \
                         each relay once (the same address may be listed twice only with two \
                         fingerprints, during a certificate rotation)",
                        r.address
                    ),
                ));
            }
            relays.push(RelayEndpoint {
                address: r.address,
                fingerprint,
            });
        }
        let api_listen = raw.api.listen.unwrap_or(DEFAULT_API);
        if !api_listen.ip().is_loopback() {
            return Err(invalid(
                "api.listen",
                "the local API listens on a loopback address only".into(),
            ));
        }
        for (field, value, min) in [
            (
                "hooks.timeout_ms",
                raw.hooks.timeout_ms,
                limits::HOOK_TIMEOUT_MIN_MS,
            ),
            (
                "hooks.unreachable_after_ms",
                raw.hooks.unreachable_after_ms,
                limits::UNREACHABLE_AFTER_MIN_MS,
            ),
            (
                "hooks.paging_interval_ms",
                raw.hooks.paging_interval_ms,
                limits::PAGING_INTERVAL_MIN_MS,
            ),
        ] {
            if value.is_some_and(|v| v < min) {
                return Err(invalid(field, format!("at least {min} ms")));
            }
        }
        let mut hooks = raw.hooks;
        for (field, cmd) in [
            ("hooks.on_message", &mut hooks.on_message),
            ("hooks.on_overdue", &mut hooks.on_overdue),
            ("hooks.on_unreachable", &mut hooks.on_unreachable),
            ("hooks.on_roster_changed", &mut hooks.on_roster_changed),
        ] {
            let Some(program) = cmd.as_mut().map(|c| c.first_mut()) else {
                continue;
            };
            // An empty program name could never run: the hook would fail at every event.
            let Some(program) = program.filter(|p| !p.trim().is_empty()) else {
                return Err(invalid(
                    field,
                    "give a program (and arguments), or leave it out".into(),
                ));
            };
            *program = hook_program(program, base).ok_or_else(|| {
                invalid(
                    field,
                    "this file's directory is not UTF-8: give the hook's program as an \
                     absolute path"
                        .into(),
                )
            })?;
        }
        Ok(Self {
            participant,
            key: abs(raw.key),
            roster: abs(raw.roster),
            roster_key,
            data_dir: abs(raw.data_dir),
            receipt_pace_ms,
            quarantine_max_bytes,
            relays,
            api_listen,
            token_file: abs(raw.api.token_file),
            hooks,
        })
    }

    /// Hook timeout.
    pub fn hook_timeout_ms(&self) -> u64 {
        self.hooks.timeout_ms.unwrap_or(limits::HOOK_TIMEOUT_MS)
    }

    /// Time without any relay before the unreachable hook runs.
    pub fn unreachable_after_ms(&self) -> u64 {
        self.hooks
            .unreachable_after_ms
            .unwrap_or(limits::UNREACHABLE_AFTER_MS)
    }

    /// Re-page interval for unacknowledged urgent messages.
    pub fn paging_interval_ms(&self) -> u64 {
        self.hooks
            .paging_interval_ms
            .unwrap_or(limits::PAGING_INTERVAL_MS)
    }
}

/// A hook's program as the node runs it: a relative path (`./page.sh`, `bin/page`) taken
/// from the configuration file's directory, as every other path in the file is, rather than
/// from the node's working directory (`/` under systemd); a bare name (`curl`, no `/`) left
/// for the `PATH` search; an absolute path as it is. `None` if the joined path is not UTF-8.
fn hook_program(program: &str, base: &Path) -> Option<String> {
    let p = Path::new(program);
    if p.is_absolute() || !program.contains('/') {
        return Some(program.to_owned());
    }
    base.join(p).into_os_string().into_string().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn text() -> String {
        format!(
            "participant = \"KAZ\"\nkey = \"KAZ.key\"\nroster = \"roster.signed\"\nroster_key = \"{KEY}\"\ndata_dir = \"data\"\n\n[[relays]]\naddress = \"127.0.0.1:7400\"\nfingerprint = \"{}\"\n\n[api]\ntoken_file = \"api.token\"\n",
            "ab".repeat(32)
        )
    }

    #[test]
    fn a_minimal_config_loads_with_defaults() {
        let c = NodeConfig::parse(&text(), Path::new("/etc/hotline/node.toml")).expect("valid");
        assert_eq!(c.participant.as_str(), "KAZ");
        assert_eq!(c.api_listen, DEFAULT_API);
        assert_eq!(c.token_file, Path::new("/etc/hotline/api.token"));
        assert_eq!(c.relays.len(), 1);
        assert_eq!(c.receipt_pace_ms, limits::RECEIPT_PACE_MS);
        assert_eq!(c.quarantine_max_bytes, limits::QUARANTINE_MAX_BYTES);
        let set = text().replace("data_dir", "quarantine_max_bytes = 0\ndata_dir");
        let c = NodeConfig::parse(&set, Path::new("n.toml")).expect("zero: hold nothing");
        assert_eq!(c.quarantine_max_bytes, 0);
        let bad = text().replace("data_dir", "quarantine_max_bytes = -1\ndata_dir");
        let e = NodeConfig::parse(&bad, Path::new("n.toml")).expect_err("negative");
        assert!(e.to_string().contains("quarantine_max_bytes"), "{e}");
    }

    #[test]
    fn the_receipt_pace_is_bounded() {
        let with =
            |ms: u64| text().replace("data_dir", &format!("receipt_pace_ms = {ms}\ndata_dir"));
        let c = NodeConfig::parse(&with(0), Path::new("n.toml")).expect("zero: no pacing");
        assert_eq!(c.receipt_pace_ms, 0);
        let most = limits::RECEIPT_PACE_MS_MAX;
        let c = NodeConfig::parse(&with(most), Path::new("n.toml")).expect("an hour");
        assert_eq!(c.receipt_pace_ms, most);
        let e = NodeConfig::parse(&with(most + 1), Path::new("n.toml")).expect_err("too long");
        assert!(e.to_string().contains("receipt_pace_ms"), "{e}");
    }

    /// Each of the hooks' times is refused below its minimum, naming the field and the
    /// minimum, and taken at it.
    #[test]
    fn hook_times_below_their_minimum_are_refused() {
        for (name, min) in [
            ("timeout_ms", limits::HOOK_TIMEOUT_MIN_MS),
            ("unreachable_after_ms", limits::UNREACHABLE_AFTER_MIN_MS),
            ("paging_interval_ms", limits::PAGING_INTERVAL_MIN_MS),
        ] {
            let with = |ms: u64| format!("{}\n[hooks]\n{name} = {ms}\n", text());
            for bad in [0, min - 1] {
                let e = NodeConfig::parse(&with(bad), Path::new("n.toml")).expect_err(name);
                let field = format!("hooks.{name}");
                assert_eq!(e.field(), Some(field.as_str()), "{e}");
                assert!(e.to_string().contains(&format!("at least {min} ms")), "{e}");
            }
            let c = NodeConfig::parse(&with(min), Path::new("n.toml")).expect("the minimum");
            let taken = match name {
                "timeout_ms" => c.hook_timeout_ms(),
                "unreachable_after_ms" => c.unreachable_after_ms(),
                _ => c.paging_interval_ms(),
            };
            assert_eq!(taken, min, "{name}");
        }
    }

    /// The same relay listed twice is refused; the same address with two fingerprints (a
    /// certificate rotation) and two addresses are not.
    #[test]
    fn a_relay_listed_twice_is_refused() {
        let relay = |address: &str, fp: &str| {
            format!("\n[[relays]]\naddress = \"{address}\"\nfingerprint = \"{fp}\"\n")
        };
        let (a, b) = ("ab".repeat(32), "cd".repeat(32));
        let with = |extra: &str| text().replace("\n[api]", &format!("{extra}\n[api]"));
        let twice = with(&relay("127.0.0.1:7400", &a));
        let e = NodeConfig::parse(&twice, Path::new("n.toml")).expect_err("listed twice");
        assert_eq!(e.field(), Some("relays"), "{e}");
        assert!(
            e.to_string().contains("listed twice; list each relay once"),
            "{e}"
        );
        // The same fingerprint written another way is the same fingerprint.
        let colons = a
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).expect("hex"))
            .collect::<Vec<_>>()
            .join(":");
        let twice = with(&relay("127.0.0.1:7400", &colons.to_uppercase()));
        NodeConfig::parse(&twice, Path::new("n.toml")).expect_err("the same, with colons");
        let rotation = with(&relay("127.0.0.1:7400", &b));
        let c = NodeConfig::parse(&rotation, Path::new("n.toml")).expect("a rotation");
        assert_eq!(c.relays.len(), 2);
        let another = with(&relay("127.0.0.1:7401", &b));
        NodeConfig::parse(&another, Path::new("n.toml")).expect("another relay");
    }

    /// An empty path would name the configuration's own directory (`/etc/hotline/` as the
    /// store or the token), and an empty roster key or hook program nothing: each is refused
    /// naming its field.
    #[test]
    fn empty_paths_keys_and_programs_are_refused() {
        for (field, from, to) in [
            ("key", "key = \"KAZ.key\"", "key = \"\""),
            ("roster", "roster = \"roster.signed\"", "roster = \"\""),
            ("data_dir", "data_dir = \"data\"", "data_dir = \"\""),
            (
                "api.token_file",
                "token_file = \"api.token\"",
                "token_file = \"\"",
            ),
            (
                "roster_key",
                &format!("roster_key = \"{KEY}\""),
                "roster_key = \" \"",
            ),
        ] {
            let bad = text().replace(from, to);
            assert_ne!(bad, text(), "{field}");
            let e = NodeConfig::parse(&bad, Path::new("/etc/hotline/node.toml")).expect_err(field);
            assert_eq!(e.field(), Some(field), "{e}");
            assert!(e.to_string().contains("empty: give"), "{e}");
        }
        for program in ["[\"\"]", "[\" \", \"-x\"]"] {
            let bad = format!("{}\n[hooks]\non_message = {program}\n", text());
            let e = NodeConfig::parse(&bad, Path::new("n.toml")).expect_err(program);
            assert_eq!(e.field(), Some("hooks.on_message"), "{e}");
        }
    }

    /// A hook's program given as a relative path is taken from the configuration's
    /// directory, as the other paths are, not from the node's working directory (`/` under
    /// systemd, where `./page.sh` named nothing); a bare name is left for the `PATH` search,
    /// an absolute path and the arguments as they are.
    #[test]
    fn a_relative_hook_program_is_taken_from_the_configuration_directory() {
        let with = |hooks: &str| format!("{}\n[hooks]\n{hooks}\n", text());
        let c = NodeConfig::parse(
            &with(
                "on_message = [\"./page.sh\", \"./arg\"]\non_overdue = [\"bin/page\"]\n\
                 on_unreachable = [\"curl\", \"-d\", \"@-\"]\non_roster_changed = [\"/usr/bin/logger\"]",
            ),
            Path::new("/etc/hotline/node.toml"),
        )
        .expect("valid");
        let program = |c: &Option<Vec<String>>| c.as_ref().expect("set").clone();
        assert_eq!(
            program(&c.hooks.on_message),
            ["/etc/hotline/./page.sh", "./arg"]
        );
        assert_eq!(program(&c.hooks.on_overdue), ["/etc/hotline/bin/page"]);
        assert_eq!(program(&c.hooks.on_unreachable), ["curl", "-d", "@-"]);
        assert_eq!(program(&c.hooks.on_roster_changed), ["/usr/bin/logger"]);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let bad = text().replace("address = \"127.0.0.1:7400\"", "address = \"nowhere\"");
        let e = NodeConfig::parse(&bad, Path::new("n.toml")).expect_err("bad address");
        assert!(
            e.to_string().contains("n.toml") && e.to_string().contains("line 8"),
            "{e}"
        );
        let bad = text().replace("\"KAZ\"", "\"kaz\"");
        let e = NodeConfig::parse(&bad, Path::new("n.toml")).expect_err("bad id");
        assert!(e.to_string().contains("participant"), "{e}");
        let bad = text().replace("[api]", "[api]\nlisten = \"0.0.0.0:7500\"");
        let e = NodeConfig::parse(&bad, Path::new("n.toml")).expect_err("not loopback");
        assert!(e.to_string().contains("api.listen"), "{e}");
        let missing = text().replace("data_dir = \"data\"\n", "");
        let e = NodeConfig::parse(&missing, Path::new("n.toml")).expect_err("missing");
        assert!(e.to_string().contains("data_dir"), "{e}");
    }

    /// `config/node.toml` shows each optional setting "commented out at [its] default
    /// value": an operator who uncomments one to edit it starts from the value the node runs
    /// with. The hooks (default: none) show examples, and the second `[[relays]]` table an
    /// example relay, so those are left commented.
    #[test]
    fn the_examples_commented_values_are_the_defaults() {
        let example = include_str!("../../../config/node.toml");
        let path = Path::new("/etc/hotline/node.toml");
        let uncommented: String = example
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if is_default_setting(rest) => format!("{rest}\n"),
                _ => format!("{l}\n"),
            })
            .collect();
        assert_ne!(uncommented, example, "the example has commented settings");
        // The hooks' timings are kept as given (`None` when absent) and resolved by their
        // accessors: compare what the node runs with.
        let effective = |mut c: NodeConfig| {
            c.hooks.timeout_ms = Some(c.hook_timeout_ms());
            c.hooks.unreachable_after_ms = Some(c.unreachable_after_ms());
            c.hooks.paging_interval_ms = Some(c.paging_interval_ms());
            format!("{c:?}")
        };
        let shipped = NodeConfig::parse(example, path).expect("the example parses");
        let every = NodeConfig::parse(&uncommented, path).expect("uncommented, it parses");
        assert_eq!(effective(shipped), effective(every));
    }

    /// Whether a comment's text is a setting at its default (`name = value`), rather than
    /// prose or an example.
    fn is_default_setting(text: &str) -> bool {
        text.split_once(" = ").is_some_and(|(name, _)| {
            !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                && !name.starts_with("on_")
                && !matches!(name, "address" | "fingerprint")
        })
    }
}
