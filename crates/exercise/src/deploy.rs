//! A throw-away deployment on loopback: participant keys, a signed roster, the relay's
//! certificate, and relay and node configuration files — what an installation would have.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use hotline_config::keyfile::{self, IfExists};
use hotline_config::roster_file::{write_new_signed_roster, Draft};
use hotline_node::client::ApiClient;
use hotline_proto::{PublicKey, Roster, Signed};

use crate::process::Proc;

/// One node's files and addresses.
#[derive(Clone, Debug)]
pub struct NodeSetup {
    /// Participant id.
    pub id: String,
    /// Its configuration file. The API listens on a port the node picks (`127.0.0.1:0`); the
    /// harness reads it from the node's "local API listening" log line at every start, so no
    /// port is reserved in advance and none can be taken in between.
    pub config: PathBuf,
    /// Its API token.
    pub token: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where its overdue hook appends events.
    pub overdue_log: PathBuf,
    /// Where its message (paging) hook appends events.
    pub page_log: PathBuf,
}

/// The generated deployment.
pub struct Deployment {
    /// Its directory.
    pub dir: PathBuf,
    /// The signed roster's content.
    pub roster: Roster,
    /// The pinned roster key.
    pub roster_key: PublicKey,
    /// The relay's address.
    pub relay_addr: SocketAddr,
    /// The relay's configuration file.
    pub relay_config: PathBuf,
    /// The relay's data directory.
    pub relay_data: PathBuf,
    /// The relay certificate's fingerprint.
    pub fingerprint: hotline_net::Fingerprint,
    /// Nodes by participant id.
    pub nodes: BTreeMap<String, NodeSetup>,
}

/// Mode of the files holding a secret (API tokens; keys are written by `keyfile`, 0600 too).
const SECRET_FILE_MODE: u32 = 0o600;
/// Mode of the other files the harness writes (configurations, reports).
pub(crate) const FILE_MODE: u32 = 0o644;
/// Mode of the directories the harness creates: only its user may enter them, so no one
/// else can plant a file or a symbolic link where it is about to write.
const DIR_MODE: u32 = 0o700;

/// The files [`Deployment::create`] writes in its directory besides `keys` and `hooks`,
/// which a directory given to it must not hold.
const DEPLOYMENT_FILES: [&str; 4] = ["roster.signed", "relay.crt", "relay.key", "relay.toml"];

/// Writes `contents` to `path`, a file that must not exist yet, created with `mode`
/// (`hotline_config::write_new`). A file already there, or a symbolic link planted there to
/// make the harness write elsewhere, is refused (`create_new` follows no link), naming the
/// path.
pub(crate) fn write_new(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    hotline_config::write_new(path, contents, mode)
        .with_context(|| format!("creating {}", path.display()))
}

/// Creates the directory `path`, which must not exist yet, with mode [`DIR_MODE`]: one
/// already there (or a link planted in its place) is refused rather than written into.
pub(crate) fn create_dir_new(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().mode(DIR_MODE).create(path)
}

/// Creates the directory `path` (and its missing parents) with mode [`DIR_MODE`]; one that
/// exists is kept as it is.
pub(crate) fn create_dir_private(path: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// Refuses `dir` (absolute) as a deployment's directory if its name is not UTF-8: the
/// configurations name paths in it, and TOML holds text only, so such a name would be passed
/// on cut and the relay would not find its configuration. Called before anything is made,
/// by [`Deployment::create`] and by a drill before it makes its `--out` directory.
pub(crate) fn refuse_non_utf8(dir: &Path) -> anyhow::Result<()> {
    if dir.to_str().is_none() {
        anyhow::bail!(
            "{}: the drill's directory name is not UTF-8, which its configurations cannot \
             name: give --out a UTF-8 path (nothing was written)",
            dir.display()
        );
    }
    Ok(())
}

/// A free loopback UDP port (bound and released). Only the relay's address is reserved this
/// way, because the nodes' configurations must name it before it starts and it must keep it
/// across a restart; another socket taking it while the relay is down is possible but rare
/// (one port of the ephemeral range).
pub fn free_udp() -> anyhow::Result<SocketAddr> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

impl Deployment {
    /// Creates keys, roster, certificate and relay configuration in `dir` for the roster
    /// template `template`; nodes are added with [`Deployment::add_node`].
    ///
    /// A relative `dir` is resolved against the working directory at once: every path the
    /// deployment holds, and every path it writes into a configuration, is absolute. The relay
    /// and the nodes run with `dir` as their working directory, and the nodes' hooks run
    /// there too, so a relative path would be named twice over (`out/out/KAZ.toml`).
    pub fn create(dir: &Path, template: &str) -> anyhow::Result<Self> {
        let dir = &std::path::absolute(dir)
            .with_context(|| format!("resolving {} to an absolute path", dir.display()))?;
        refuse_non_utf8(dir)?;
        create_dir_private(dir)?;
        // Each of these is written as a new file below, but not first: a directory that
        // holds one (`--out /etc/hotline`, the production relay's) is refused before
        // anything is written in it, rather than left holding a drill's keys.
        for file in DEPLOYMENT_FILES {
            let path = dir.join(file);
            if std::fs::symlink_metadata(&path).is_ok() {
                anyhow::bail!(
                    "{} already holds {file} (a deployment's, or a drill's): give --out a \
                     directory of its own, or a new one (nothing was written)",
                    dir.display()
                );
            }
        }
        // New, and only ours: a `keys` or `hooks` already there (or a link planted in its
        // place) is refused rather than written into.
        for sub in ["keys", "hooks"] {
            let path = dir.join(sub);
            create_dir_new(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        let mut draft = Draft::parse(template, Path::new("cica-roster.toml"))?;
        for p in &mut draft.participants {
            let (sk, pk) = keyfile::key_paths(&dir.join("keys"), p.id.as_str())?;
            let key = keyfile::generate();
            keyfile::write_secret(&sk, &key, IfExists::Refuse)?;
            let public = PublicKey::of(&key);
            keyfile::write_public(&pk, &public, IfExists::Refuse)?;
            p.keys = vec![public];
        }
        let roster_signing = keyfile::generate();
        let roster_key = PublicKey::of(&roster_signing);
        let roster = draft.to_roster(crate::now_ms())?;
        let signed = Signed::sign(&roster, &roster_signing)
            .map_err(|e| anyhow::anyhow!("signing the roster: {e}"))?;
        write_new_signed_roster(&dir.join("roster.signed"), &signed)?;
        let fingerprint =
            hotline_net::tls::write_self_signed(&dir.join("relay.crt"), &dir.join("relay.key"))?;
        let relay_addr = free_udp()?;
        let relay_config = dir.join("relay.toml");
        write_new(
            &relay_config,
            format!(
                "# Generated by the exercise harness.\nlisten = \"{relay_addr}\"\ncert = \"relay.crt\"\nkey = \"relay.key\"\nroster = \"roster.signed\"\nroster_key = \"{roster_key}\"\ndata_dir = \"relay-data\"\nmetrics_listen = \"127.0.0.1:0\"\n"
            )
            .as_bytes(),
            FILE_MODE,
        )?;
        Ok(Self {
            dir: dir.to_owned(),
            roster,
            roster_key,
            relay_addr,
            relay_config,
            relay_data: dir.join("relay-data"),
            fingerprint,
            nodes: BTreeMap::new(),
        })
    }

    /// Writes a node configuration for `id`, connecting to `relay` (the relay, or a proxy).
    pub fn add_node(
        &mut self,
        id: &str,
        relay: SocketAddr,
        paging_interval_ms: u64,
    ) -> anyhow::Result<()> {
        let token = hex::encode(rand::random::<[u8; 16]>());
        let token_file = self.dir.join(format!("{id}.token"));
        write_new(
            &token_file,
            format!("{token}\n").as_bytes(),
            SECRET_FILE_MODE,
        )?;
        let overdue_log = self.dir.join("hooks").join(format!("{id}-overdue.jsonl"));
        let page_log = self.dir.join("hooks").join(format!("{id}-pages.jsonl"));
        let config = self.dir.join(format!("{id}.toml"));
        let key = self.dir.join("keys").join(format!("{id}.key"));
        write_new(
            &config,
            format!(
                "# Generated by the exercise harness.\nparticipant = \"{id}\"\nkey = \"{}\"\nroster = \"roster.signed\"\nroster_key = \"{}\"\ndata_dir = \"node-{id}\"\n\n[[relays]]\naddress = \"{relay}\"\nfingerprint = \"{}\"\n\n[api]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{id}.token\"\n\n[hooks]\non_overdue = [\"sh\", \"-c\", \"cat >> '{}'\"]\non_message = [\"sh\", \"-c\", \"cat >> '{}'\"]\npaging_interval_ms = {paging_interval_ms}\n",
                key.display(),
                self.roster_key,
                self.fingerprint,
                overdue_log.display(),
                page_log.display(),
            )
            .as_bytes(),
            FILE_MODE,
        )?;
        self.nodes.insert(
            id.to_owned(),
            NodeSetup {
                id: id.to_owned(),
                config,
                token,
                data_dir: self.dir.join(format!("node-{id}")),
                overdue_log,
                page_log,
            },
        );
        Ok(())
    }
}

impl Deployment {
    fn node(&self, id: &str) -> anyhow::Result<&NodeSetup> {
        self.nodes
            .get(id)
            .with_context(|| format!("no node set up for {id}"))
    }

    /// Starts the relay as a process of the `hotline` binary `bin`, in the deployment's
    /// directory, logging to `log_name` there, and waits up to `timeout` for it to log that
    /// it listens (with its address). It is tethered to the harness ([`Proc::spawn_tethered`]):
    /// it stops if the harness is gone.
    pub async fn start_relay(
        &self,
        bin: &Path,
        log_name: &str,
        timeout: std::time::Duration,
    ) -> anyhow::Result<Proc> {
        let cfg = self.relay_config.display().to_string();
        let mut relay = Proc::spawn_tethered(
            bin,
            &["relay", "--config", &cfg, "--stop-when-stdin-closes"],
            &self.dir,
            log_name,
        )?;
        let line = relay
            .wait_log("relay listening", timeout)
            .await
            .context("relay did not start")?;
        if crate::process::field(&line, "addr").is_none() {
            anyhow::bail!("relay did not log its address: {line}");
        }
        Ok(relay)
    }

    /// Starts node `id` as a process of the `hotline` binary `bin`, in the deployment's
    /// directory, logging to `log_name` there (it is not waited for), tethered to the
    /// harness as the relay is.
    pub fn spawn_node(&self, bin: &Path, id: &str, log_name: &str) -> anyhow::Result<Proc> {
        let cfg = self.node(id)?.config.display().to_string();
        Proc::spawn_tethered(
            bin,
            &["node", "--config", &cfg, "--stop-when-stdin-closes"],
            &self.dir,
            log_name,
        )
    }

    /// The API client of started node `id`, at the address it logged ("local API listening
    /// addr=…"; see [`NodeSetup::config`]), waiting up to `timeout` for that line.
    pub async fn api_client(
        &self,
        id: &str,
        node: &mut Proc,
        timeout: std::time::Duration,
    ) -> anyhow::Result<ApiClient> {
        let token = &self.node(id)?.token;
        let addr = node.wait_api_addr(timeout).await?;
        Ok(ApiClient::new(&addr, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relative directory: the deployment's paths, and those its node configuration
    /// names (its key, its hooks' files), are absolute, so they hold wherever the relay, a
    /// node or a hook runs. (A relative path from the working directory to a temporary one
    /// goes by the root, where a path named twice over happens to lead to the same file, so
    /// the test checks that each path is absolute rather than that a process finds it.)
    #[test]
    fn a_relative_directory_gives_absolute_paths_everywhere() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // A relative path to a directory in `tmp` from the working directory, which other
        // tests share and this one leaves alone: up to the root, then down.
        let cwd = std::env::current_dir().expect("working directory");
        let mut rel = PathBuf::new();
        for _ in cwd.components().skip(1) {
            rel.push("..");
        }
        rel.push(tmp.path().strip_prefix("/").expect("an absolute tempdir"));
        rel.push("drill");
        assert!(rel.is_relative(), "{}", rel.display());

        let mut dep = Deployment::create(&rel, crate::scenario::CICA_ROSTER).expect("created");
        let relay = dep.relay_addr;
        dep.add_node("KAZ", relay, 60_000).expect("node added");
        for p in [&dep.dir, &dep.relay_config, &dep.relay_data] {
            assert!(p.is_absolute(), "{}", p.display());
        }
        assert!(dep.relay_config.is_file());
        let kaz = &dep.nodes["KAZ"];
        for p in [&kaz.config, &kaz.data_dir, &kaz.overdue_log, &kaz.page_log] {
            assert!(p.is_absolute(), "{}", p.display());
        }
        // Read as the node reads it: the key it names is there, wherever the node runs.
        let config = hotline_node::NodeConfig::load(&kaz.config).expect("node configuration");
        assert!(config.key.is_absolute(), "{}", config.key.display());
        assert!(config.key.is_file(), "{}", config.key.display());
        // The file a hook appends to, as its command names it (`cat >> 'FILE'`).
        let file = |cmd: &Option<Vec<String>>| {
            let cmd = cmd.as_ref().expect("a hook").join(" ");
            let quoted = cmd.split('\'').nth(1).expect("a quoted file");
            PathBuf::from(quoted)
        };
        for (named, file) in [
            (file(&config.hooks.on_overdue), &kaz.overdue_log),
            (file(&config.hooks.on_message), &kaz.page_log),
        ] {
            assert!(named.is_absolute(), "{}", named.display());
            assert_eq!(&named, file);
        }
        assert!(tmp.path().join("drill").join("relay.toml").is_file());
    }

    /// `hotline exercise run --out /etc/hotline` (or `--out .` there): the deployment's
    /// signed roster was written over the production one (a drill's, signed by a throwaway
    /// key, which the relay and the nodes then refuse at their next start or SIGHUP), and
    /// only then was the relay's certificate found in place and the drill refused, saying
    /// "nothing was written". A directory holding any of the deployment's files is refused
    /// before anything is written in it, and those files are left as they were.
    #[test]
    fn a_directory_holding_a_deployments_files_is_left_as_it_was() {
        for held in ["roster.signed", "relay.crt", "relay.key", "relay.toml"] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = tmp.path();
            std::fs::write(dir.join(held), "production\n").expect("a production file");
            let e = match Deployment::create(dir, crate::scenario::CICA_ROSTER) {
                Ok(_) => panic!("{held}: a deployment was made over it"),
                Err(e) => format!("{e:#}"),
            };
            assert!(e.contains(held), "{held}: {e}");
            assert_eq!(
                std::fs::read_to_string(dir.join(held)).expect("still there"),
                "production\n",
                "{held}"
            );
            let mut left: Vec<_> = std::fs::read_dir(dir)
                .expect("list")
                .map(|e| e.expect("entry").file_name())
                .collect();
            left.sort();
            assert_eq!(left, [held], "{held}: nothing else was written");
        }
    }

    /// `hotline exercise run --out` a directory whose name is not UTF-8: the deployment was
    /// written (38 key pairs, tokens, configurations), and the relay then failed to start,
    /// its configuration's path passed on cut ("relay.toml: No such file or directory", exit
    /// status 78). The configurations name paths in the directory, and TOML holds text
    /// only: such a directory is refused before anything is made.
    #[test]
    fn a_directory_whose_name_is_not_utf8_is_refused_before_anything_is_made() {
        use std::os::unix::ffi::OsStrExt as _;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join(std::ffi::OsStr::from_bytes(b"drill\xff"));
        let e = match Deployment::create(&dir, crate::scenario::CICA_ROSTER) {
            Ok(_) => panic!("a deployment was made in a directory no configuration can name"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains("not UTF-8"), "{e}");
        assert!(!dir.exists(), "nothing was made");
    }

    /// The deployment's files are new files: a symbolic link planted where one goes (by
    /// another user, in a directory they can write to) is refused, not followed, and a
    /// node's API token is readable by its owner only.
    #[test]
    fn a_planted_link_is_not_followed_and_tokens_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().expect("tempdir");
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "untouched\n").expect("victim");
        let untouched = || std::fs::read_to_string(&victim).expect("victim") == "untouched\n";

        let planted = tmp.path().join("planted");
        std::fs::create_dir(&planted).expect("directory");
        std::os::unix::fs::symlink(&victim, planted.join("relay.toml")).expect("link");
        let e = match Deployment::create(&planted, crate::scenario::CICA_ROSTER) {
            Ok(_) => panic!("the relay's configuration was written through a link"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains("relay.toml"), "{e}");
        assert!(untouched());

        let mut dep = Deployment::create(&tmp.path().join("drill"), crate::scenario::CICA_ROSTER)
            .expect("created");
        let relay = dep.relay_addr;
        dep.add_node("KAZ", relay, 60_000).expect("node added");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&dep.dir.join("KAZ.token")), 0o600);
        assert_eq!(mode(&dep.dir.join("keys")), 0o700);
        std::os::unix::fs::symlink(&victim, dep.dir.join("KGZ.token")).expect("link");
        let e = format!(
            "{:#}",
            dep.add_node("KGZ", relay, 60_000)
                .expect_err("a token through a link")
        );
        assert!(e.contains("KGZ.token"), "{e}");
        assert!(untouched());
    }
}
