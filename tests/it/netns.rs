//! The real relay and two real nodes in separate network namespaces, joined by a veth pair,
//! under packet loss (nftables dropping 20 % of UDP packets) and a partition (the node side's
//! link taken down and brought back).
//!
//! The relay runs in one namespace and listens on its veth address; KAZ and KGZ run in the
//! other, with their APIs on that namespace's loopback, so the test drives them with the
//! `hotline` CLI under `ip netns exec`. It needs root, `ip` (iproute2) and `nft` (nftables);
//! without them it prints `SKIPPED: …` and passes. The addresses (10.231.X.0/30) exist only
//! inside the two namespaces it creates, and a guard deletes both namespaces even when the
//! test fails.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use hotline_exercise::deploy::Deployment;
use hotline_exercise::process::{field, hotline_bin, Proc};
use serde_json::Value;
use tokio::time::Instant;

const TEMPLATE: &str = r#"
network = "NETNS"
version = 1
[[participants]]
id = "SEC"
name = "Secretariat"
role = "secretariat"
[[participants]]
id = "KAZ"
name = "Kazakhstan"
role = "member"
[[participants]]
id = "KGZ"
name = "Kyrgyzstan"
role = "member"
"#;

/// How long a process may take to start, or a link to come back.
const START: Duration = Duration::from_secs(30);
/// How long the messages of one phase may take to arrive: generous, since under 20 % loss
/// in each direction QUIC retransmits, and after a partition the node's reconnect backoff
/// (at most 10 s) comes first.
const ARRIVE: Duration = Duration::from_secs(90);
/// Messages sent under packet loss.
const LOSSY_SENDS: usize = 20;
/// Messages sent across the partition.
const PARTITION_SENDS: usize = 5;
/// The veth interface in each namespace (names are per namespace, so they need no suffix).
const RELAY_IF: &str = "hlr";
const NODE_IF: &str = "hln";

/// Runs a command to completion; its standard output, or an error with its standard error.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why this machine cannot run the test, if it cannot.
fn missing_prerequisite() -> Option<String> {
    let root = run("id", &["-u"]).is_ok_and(|o| o.trim() == "0");
    if !root {
        return Some("network namespaces need root".into());
    }
    for (tool, args) in [("ip", ["-V"]), ("nft", ["--version"])] {
        if run(tool, &args).is_err() {
            return Some(format!(
                "`{tool}` is not installed (apt-get install iproute2 nftables)"
            ));
        }
    }
    None
}

/// Two namespaces joined by a veth pair; deleted (with anything still running in them) when
/// dropped.
struct Namespaces {
    relay: String,
    node: String,
    relay_ip: String,
}

impl Namespaces {
    /// Creates `hl-relay-<pid>-<n>` and `hl-node-<pid>-<n>`, the veth pair between them with
    /// 10.231.X.1/30 (relay) and 10.231.X.2/30 (node), and brings every link up.
    fn create() -> anyhow::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // The subnet only has to differ between namespaces this process creates at once.
        let x = (pid + n) % 250;
        let ns = Self {
            relay: format!("hl-relay-{pid}-{n}"),
            node: format!("hl-node-{pid}-{n}"),
            relay_ip: format!("10.231.{x}.1"),
        };
        // From here on, the guard cleans up whatever part was made.
        run("ip", &["netns", "add", &ns.relay])?;
        run("ip", &["netns", "add", &ns.node])?;
        run(
            "ip",
            &[
                "link", "add", RELAY_IF, "netns", &ns.relay, "type", "veth", "peer", "name",
                NODE_IF, "netns", &ns.node,
            ],
        )?;
        for (name, ifname, addr) in [
            (&ns.relay, RELAY_IF, format!("10.231.{x}.1/30")),
            (&ns.node, NODE_IF, format!("10.231.{x}.2/30")),
        ] {
            ns.exec("ip", &["addr", "add", &addr, "dev", ifname], name)?;
            ns.exec("ip", &["link", "set", ifname, "up"], name)?;
            // Loopback carries the relay's metrics listener and the nodes' APIs.
            ns.exec("ip", &["link", "set", "lo", "up"], name)?;
        }
        Ok(ns)
    }

    /// Runs `program args…` inside namespace `name`.
    fn exec(&self, program: &str, args: &[&str], name: &str) -> anyhow::Result<String> {
        let mut all = vec!["netns", "exec", name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs an nft command inside the node namespace.
    fn nft(&self, args: &[&str]) -> anyhow::Result<String> {
        self.exec("nft", args, &self.node)
    }

    /// Sets the node side's veth link up or down.
    fn node_link(&self, up: bool) -> anyhow::Result<()> {
        let state = if up { "up" } else { "down" };
        self.exec("ip", &["link", "set", NODE_IF, state], &self.node)
            .map(drop)
    }

    /// Starts `hotline args…` inside namespace `name`. `ip netns exec` execs the command,
    /// so the process (and the pid that `Proc` kills) is `hotline` itself.
    fn spawn(&self, name: &str, args: &[&str], dir: &Path, log: &str) -> anyhow::Result<Proc> {
        let bin = hotline_bin()?;
        let bin = bin.to_str().context("the hotline path is not UTF-8")?;
        let mut all = vec!["netns", "exec", name, bin];
        all.extend_from_slice(args);
        Proc::spawn(Path::new("ip"), &all, dir, log)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in [&self.relay, &self.node] {
            // Normally empty: every `Proc` has been killed by now. A process left inside
            // would keep the namespace alive after `ip netns del`, so end it first; every
            // process in these namespaces was started by this test.
            if let Ok(pids) = run("ip", &["netns", "pids", name]) {
                for pid in pids.split_whitespace() {
                    let _ = run("kill", &["-9", pid]);
                }
            }
            // Deleting the relay's namespace also deletes the veth pair.
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

/// A node in the node namespace, driven with the `hotline` CLI.
struct Cli<'a> {
    ns: &'a Namespaces,
    api: String,
    token_file: PathBuf,
}

impl Cli<'_> {
    /// `hotline ARGS… --api … --token-file … --json` inside the node namespace, parsed.
    async fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let bin = hotline_bin()?;
        let out = tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.ns.node])
            .arg(&bin)
            .args(args)
            .arg("--api")
            .arg(&self.api)
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--json")
            .env_remove("HOTLINE_NODE_CONFIG")
            .output()
            .await?;
        ensure!(
            out.status.success(),
            "hotline {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        serde_json::from_slice(&out.stdout).context("hotline printed no JSON")
    }

    /// Sends a test message to KGZ; its id and the node's `relays_connected` at the time.
    async fn send(&self, subject: &str) -> anyhow::Result<(String, u64)> {
        let v = self
            .json(&[
                "send",
                "--to",
                "KGZ",
                "--status",
                "test",
                "--subject",
                subject,
                "--body",
                "netns suite",
            ])
            .await?;
        let id = v["id"].as_str().context("send printed no id")?.to_owned();
        let connected = v["relays_connected"].as_u64().context("relays_connected")?;
        Ok((id, connected))
    }

    /// The inbox's message ids, in the order listed.
    async fn inbox_ids(&self) -> anyhow::Result<Vec<String>> {
        let v = self.json(&["inbox"]).await?;
        Ok(v.as_array()
            .context("inbox is not a list")?
            .iter()
            .map(|m| m["id"].as_str().unwrap_or_default().to_owned())
            .collect())
    }
}

/// How often each message id appears in `proc`'s "message received" log lines.
fn received(proc: &Proc) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for line in proc.log().lines() {
        if line.contains("message received") {
            if let Some(id) = field(line, "msg") {
                *seen.entry(id.to_owned()).or_insert(0) += 1;
            }
        }
    }
    seen
}

/// Waits, on the node's log lines, until every id in `want` has been logged as received;
/// fails at `timeout` naming what is missing.
async fn wait_received(
    proc: &mut Proc,
    want: &BTreeSet<String>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        // Take the length first: a line logged after it wakes the wait below at once.
        let len = proc.log_len();
        let seen = received(proc);
        let missing: Vec<&String> = want.iter().filter(|id| !seen.contains_key(*id)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        proc.wait_log_from(len, "message received", left)
            .await
            .with_context(|| {
                format!(
                    "{} of {} not received: {missing:?}",
                    missing.len(),
                    want.len()
                )
            })?;
    }
}

/// Checks that each of `want` is in the inbox and was logged as received exactly once.
async fn check_exactly_once(
    kgz: &Cli<'_>,
    proc: &Proc,
    want: &BTreeSet<String>,
) -> anyhow::Result<()> {
    let inbox = kgz.inbox_ids().await?;
    let unique: BTreeSet<&String> = inbox.iter().collect();
    ensure!(
        unique.len() == inbox.len(),
        "a message is in KGZ's inbox twice: {inbox:?}"
    );
    for id in want {
        ensure!(unique.contains(id), "{id} is not in KGZ's inbox");
    }
    let seen = received(proc);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(twice.is_empty(), "received more than once: {twice:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_link_and_partition_between_namespaces_lose_and_duplicate_nothing(
) -> anyhow::Result<()> {
    if let Some(why) = missing_prerequisite() {
        println!("SKIPPED: {why}");
        return Ok(());
    }
    let ns = match Namespaces::create() {
        Ok(ns) => ns,
        // A container without CAP_SYS_ADMIN or veth support: the machine, not the code.
        Err(e) => {
            println!("SKIPPED: cannot create network namespaces and a veth pair here: {e:#}");
            return Ok(());
        }
    };
    if let Err(e) = ns.nft(&["add", "table", "inet", "hl"]) {
        println!("SKIPPED: nftables does not work in a network namespace here: {e:#}");
        return Ok(());
    }

    let dir = tempfile::tempdir()?;
    let mut dep = Deployment::create(dir.path(), TEMPLATE)?;
    // The relay listens on its veth address, on the port the deployment chose.
    let loopback_addr = dep.relay_addr;
    dep.relay_addr = format!("{}:{}", ns.relay_ip, loopback_addr.port()).parse()?;
    let relay_toml = std::fs::read_to_string(&dep.relay_config)?;
    let listen = format!("listen = \"{loopback_addr}\"");
    ensure!(
        relay_toml.contains(&listen),
        "unexpected relay.toml:\n{relay_toml}"
    );
    std::fs::write(
        &dep.relay_config,
        relay_toml.replace(&listen, &format!("listen = \"{}\"", dep.relay_addr)),
    )?;
    for id in ["KAZ", "KGZ"] {
        dep.add_node(id, dep.relay_addr, 3_600_000)?;
    }

    let relay_cfg = dep.relay_config.display().to_string();
    let mut relay = ns.spawn(
        &ns.relay,
        &["relay", "--config", &relay_cfg],
        &dep.dir,
        "relay.log",
    )?;
    let line = relay.wait_log("relay listening", START).await?;
    ensure!(
        field(&line, "addr") == Some(&dep.relay_addr.to_string()),
        "relay listens elsewhere: {line}"
    );
    let mut nodes = HashMap::new();
    let mut apis = HashMap::new();
    for id in ["KAZ", "KGZ"] {
        let cfg = dep.nodes[id].config.display().to_string();
        let mut p = ns.spawn(
            &ns.node,
            &["node", "--config", &cfg],
            &dep.dir,
            &format!("node-{id}.log"),
        )?;
        p.wait_log("relay connected", START).await?;
        apis.insert(id, p.wait_api_addr(START).await?);
        nodes.insert(id, p);
    }
    let cli = |id: &str| Cli {
        ns: &ns,
        api: apis[id].clone(),
        token_file: dep.dir.join(format!("{id}.token")),
    };
    let (kaz, kgz) = (cli("KAZ"), cli("KGZ"));

    // (a) 20 % of UDP packets dropped on the node side's veth, in each direction.
    for (chain, side) in [("output", "oifname"), ("input", "iifname")] {
        ns.nft(&[
            "add",
            "chain",
            "inet",
            "hl",
            chain,
            &format!("{{ type filter hook {chain} priority 0; }}"),
        ])?;
        ns.nft(&[
            "add", "rule", "inet", "hl", chain, side, NODE_IF, "meta", "l4proto", "udp", "numgen",
            "random", "mod", "100", "<", "20", "counter", "drop",
        ])?;
    }
    let mut lossy = BTreeSet::new();
    for i in 0..LOSSY_SENDS {
        let (id, _) = kaz.send(&format!("lossy #{i}")).await?;
        lossy.insert(id);
    }
    ensure!(lossy.len() == LOSSY_SENDS, "message ids repeat");
    let kgz_proc = nodes.get_mut("KGZ").context("KGZ")?;
    wait_received(kgz_proc, &lossy, ARRIVE)
        .await
        .context("under 20 % UDP loss")?;
    check_exactly_once(&kgz, kgz_proc, &lossy).await?;
    // The rules' counters (output chain first, as listed): proof that the loss was real.
    let rules = ns.nft(&["list", "table", "inet", "hl"])?;
    let words: Vec<&str> = rules.split_whitespace().collect();
    let dropped: Vec<u64> = words
        .windows(2)
        .filter(|w| w[0] == "packets")
        .filter_map(|w| w[1].parse().ok())
        .collect();
    ensure!(
        dropped.len() == 2 && dropped.iter().all(|n| *n > 0),
        "nftables dropped nothing in one direction:\n{rules}"
    );
    ns.nft(&["delete", "table", "inet", "hl"])?;
    println!(
        "{LOSSY_SENDS} messages under 20 % UDP loss arrived exactly once \
         (UDP packets dropped: {} out, {} in)",
        dropped[0], dropped[1]
    );

    // (b) Partition: the node side's link goes down. Two messages are sent at once (onto a
    // connection that is dead but not yet known to be), the rest after both nodes have
    // noticed, when they can only queue.
    let marks: HashMap<&str, usize> = nodes.iter().map(|(id, p)| (*id, p.log_len())).collect();
    ns.node_link(false)?;
    let mut partitioned = BTreeSet::new();
    for i in 0..2 {
        let (id, _) = kaz.send(&format!("partitioned #{i}")).await?;
        partitioned.insert(id);
    }
    for (id, p) in nodes.iter_mut() {
        p.wait_log_from(marks[id], "relay link lost", START)
            .await
            .with_context(|| format!("{id} did not notice the partition"))?;
    }
    for i in 2..PARTITION_SENDS {
        let (id, connected) = kaz.send(&format!("partitioned #{i}")).await?;
        ensure!(
            connected == 0,
            "KAZ reports a relay connected during the partition"
        );
        partitioned.insert(id);
    }
    let kgz_proc = nodes.get_mut("KGZ").context("KGZ")?;
    ensure!(
        partitioned
            .iter()
            .all(|id| !received(kgz_proc).contains_key(id)),
        "a message crossed the partition"
    );

    // Heal it: both nodes reconnect and the queued messages arrive, once.
    let marks: HashMap<&str, usize> = nodes.iter().map(|(id, p)| (*id, p.log_len())).collect();
    ns.node_link(true)?;
    for (id, p) in nodes.iter_mut() {
        p.wait_log_from(marks[id], "relay connected", START)
            .await
            .with_context(|| format!("{id} did not reconnect after the partition"))?;
    }
    let kgz_proc = nodes.get_mut("KGZ").context("KGZ")?;
    wait_received(kgz_proc, &partitioned, ARRIVE)
        .await
        .context("after the partition healed")?;
    let all: BTreeSet<String> = lossy.union(&partitioned).cloned().collect();
    check_exactly_once(&kgz, kgz_proc, &all).await?;
    ensure!(
        kgz.inbox_ids().await?.len() == LOSSY_SENDS + PARTITION_SENDS,
        "KGZ's inbox holds messages nobody sent"
    );
    println!(
        "{PARTITION_SENDS} messages sent across a partition arrived exactly once after it healed"
    );

    // Processes first (they live in the namespaces), then the namespaces.
    drop(nodes);
    relay.kill9()?;
    drop(ns);
    Ok(())
}
