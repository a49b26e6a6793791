//! The drill driver: starts the relay and the nodes as processes, plays the timeline
//! (injects, scripted operators, faults) in wall-clock time, then scores the outcome.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use hotline_node::client::ApiClient;

use crate::deploy::Deployment;
use crate::process::{lock, Proc};
use crate::proxy::{Impairment, Proxy};
use crate::report::{self, Report};
use crate::scenario::{Fault, Scenario};

/// `eprintln!` for the drill's progress lines, except that a standard error that cannot be
/// written (`hotline exercise run 2>&1 | head -3`, the reader gone; `2>/dev/full`) is let be:
/// `eprintln!` panicked there, ending the harness (status 101) before or during the drill,
/// whose verdict is its exit status and report, not these lines.
macro_rules! progress {
    () => {{
        let _ = writeln!(std::io::stderr());
    }};
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` with the same rule as [`progress!`] (a progress line rewritten in place).
macro_rules! progress_inline {
    ($($arg:tt)*) => {{
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

/// How long a relay or node has to exit once sent SIGTERM before it is killed (and the
/// drill fails: `report::ProcessEnd`).
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a process has to start (log its readiness line).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often inboxes are swept for messages whose arrival event was missed (e.g. during a
/// node restart) and objectives are re-checked.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// Paging interval given to the drill's nodes (re-run the message hook for unacknowledged
/// FLASH / IMMEDIATE traffic).
const DRILL_PAGING_MS: u64 = 10_000;
/// How long a drill waits for its followers to open the nodes' event streams before the
/// scenario's clock starts.
const FOLLOW_OPEN_WAIT: Duration = Duration::from_secs(10);
/// Buffered events from all nodes' event streams.
const EVENTS_BUFFER: usize = 65_536;

/// How to run a drill.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The `hotline` binary to start.
    pub bin: PathBuf,
    /// Where to keep the deployment, logs and reports (default: a new directory in the
    /// temporary directory, `std::env::temp_dir`: $TMPDIR, else /tmp).
    pub out_dir: Option<PathBuf>,
    /// Impairment seed (default: the scenario's, else random).
    pub seed: Option<u64>,
    /// Multiply the scenario's time compression (e.g. 2 runs it twice as fast).
    pub speedup: f64,
    /// Print a live progress line on standard error.
    pub progress: bool,
    /// Run against an existing deployment instead of starting one (live mode).
    pub live: Option<Live>,
}

/// An existing deployment to drill: its roster and its nodes' APIs. In live mode nothing is
/// started or killed (faults are not injected), nobody acknowledges on the operators'
/// behalf, every inject carries status `exercise`, and the stores are not inspected. Every
/// recipient an inject addresses is scored, whether or not it has a node here: from the
/// sender's delivery table, or its own inbox where it has (`report::Inputs::live`).
#[derive(Clone)]
pub struct Live {
    /// The roster in force (for names, roles and groups).
    pub roster: hotline_proto::Roster,
    /// Node APIs by participant id.
    pub clients: BTreeMap<String, ApiClient>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("roster", &self.roster.version)
            .field("nodes", &self.clients.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The processes of a simulated deployment.
struct Sim {
    dep: Deployment,
    relay: Proc,
    nodes: BTreeMap<String, Proc>,
    proxies: BTreeMap<String, Proxy>,
}

struct Inject {
    id: Option<String>,
    sent_at_ms: Option<u64>,
    /// Why the sender's node refused it for good (an HTTP 4xx answer): not retried.
    refused: Option<String>,
    /// The first error of a send of it that left it unknown whether its node stored the
    /// message (no answer in time, a connection dropped, a 5xx), while it has no id: the
    /// node may hold it under its key ([`learn_unanswered`]).
    unanswered: Option<String>,
}

/// The nodes a fault has taken down for good, as the early end sees them ([`decided`]):
/// as recipients, what of theirs may still be on its way to a sender; as senders, what
/// their stores hold, and the injects they will never send.
#[derive(Debug, Default)]
struct Gone {
    /// Participants whose node is down and that nothing brings back before `end_s`.
    down: HashSet<String>,
    /// (participant, message id): each message its scripted operator was asked to
    /// acknowledge or answer, or that one of its injects references.
    acted: HashSet<(String, String)>,
    /// The stores of nodes in `down`, read at rest once each ([`Gone::read_stores`]): what
    /// each sent, as its API would have shown it. Nothing writes to them while they are
    /// down, so what they hold is what the report reads at the end.
    rest: HashMap<String, report::AtRest>,
    /// Injects still waiting to be sent that never can be before `end_s` ([`unsendable`]):
    /// their sender is in `down`, or they reference one that is never sent.
    unsent: HashSet<usize>,
    /// The senders in `down` whose messages not accepted, as their store at rest has them,
    /// were looked up in the relay's store ([`Gone::read_relay`]): once each, as nothing
    /// of theirs can reach the relay any more.
    relay_read: HashSet<String>,
    /// Of those messages, the ones the relay's store does not hold: they never left their
    /// sender, and nothing can deliver them ([`Gone::never_reaches`]).
    unrelayed: HashSet<String>,
    /// The injects whose send got no answer that were looked up by their key in the store
    /// of their sender, in `down`, and are not there ([`learn_unanswered`]): never sent,
    /// and not looked up again (nothing writes to that store any more).
    keys_read: HashSet<usize>,
}

impl Gone {
    /// Whether `p`'s outcome for message `id` can no longer change before `end_s`, so that
    /// the early end may count it as it stands (delivered if its node stored the message
    /// before it went down, lost if not): its node is down for good, and its scripted
    /// operator was never asked to acknowledge or answer the message, nor sent a message
    /// referencing it. Nothing of its own about the message can then reach the sender any
    /// more (its delivered receipt may, but the report scores delivery from the recipient's
    /// inbox, which for a node down at the end it reads from the node's store at rest, and
    /// nothing writes to that store while the node is down), so the report finds at `end_s`
    /// what it finds now. Once its operator did act, its acknowledgement or answer may still
    /// be on its way through the relay: waited for.
    fn settled(&self, p: &str, id: &str) -> bool {
        self.down.contains(p) && !self.acted.contains(&(p.to_owned(), id.to_owned()))
    }

    /// Whether the message `id` of `sender`, whose recipient's row (in the sender's view,
    /// [`view_at_rest`]) is `row`, can never reach that recipient: `sender` is down for good,
    /// the relay does not hold the message (`unrelayed`), and the recipient does not hold it
    /// either. Its sender went down before its relay accepted it; nothing else can send it.
    /// The report names such a recipient so ([`report::never_left_why`]).
    fn never_reaches(&self, sender: &str, id: &str, row: &Value) -> bool {
        self.down.contains(sender)
            && self.unrelayed.contains(id)
            && !row["delivered_at_ms"].is_u64()
    }

    /// Looks up in the relay's store the messages its store at rest (`rest`) has as not
    /// accepted, of each sender in `down` not looked up yet, once nothing of that sender's
    /// can reach the relay any more: no session of it is live there (`relay`: the running
    /// relay's log lines, None when the relay is down). The relay commits a message it has
    /// read before its session ends (a session outlives the node's last packet by the QUIC
    /// idle timeout), so what its store lacks then it never takes. A message its sender's
    /// store has as not accepted may yet be held by the relay (its sender killed before
    /// the acceptance reached it): only one the relay lacks too is in `unrelayed`. A store
    /// that cannot be read is tried again at the next sweep.
    fn read_relay(&mut self, dep: &Deployment, relay: Option<&[String]>) {
        for p in &self.down {
            if self.relay_read.contains(p) || relay.is_some_and(|l| relay_session_live(l, p)) {
                continue;
            }
            let Some(rest) = self.rest.get(p) else {
                continue;
            };
            let unaccepted = rest
                .sent
                .iter()
                .filter(|(_, v)| !v["accepted_at_ms"].is_u64())
                .map(|(id, _)| id.as_str());
            if let Ok(lacks) = report::relay_lacks(&dep.relay_data, unaccepted) {
                self.unrelayed.extend(lacks);
                self.relay_read.insert(p.clone());
            }
        }
    }

    /// Looks up by its key, in its sender's store, each inject of a sender in `down` whose
    /// send got no answer ([`learn_unanswered`]): one found there is sent (its id is set);
    /// one not there never was, and is not looked up again (`keys_read`). A store that
    /// cannot be read is tried again at the next sweep.
    fn read_keys(
        &mut self,
        injects: &mut [Inject],
        scenario: &Scenario,
        run_key: &str,
        dep: &Deployment,
    ) {
        let look = |i: usize| {
            self.down.contains(&scenario.injects[i].from) && !self.keys_read.contains(&i)
        };
        let learnt = learn_unanswered(injects, scenario, run_key, Some(dep), &self.down, look);
        self.keys_read.extend(
            learnt
                .into_iter()
                .filter(|(_, na)| matches!(na, report::NoAnswer::NotStored { .. }))
                .map(|(i, _)| i),
        );
    }

    /// Reads the store at rest of each node in `down` not read yet. One that cannot be
    /// read is tried again at the next sweep; until it is, its messages are not decided.
    fn read_stores(&mut self, dep: &Deployment) {
        for p in &self.down {
            if self.rest.contains_key(p) {
                continue;
            }
            if let Ok(r) = node_at_rest(Some(dep), p) {
                self.rest.insert(p.clone(), r);
            }
        }
    }
}

/// Whether the relay whose log lines are `lines` has a session of participant `p` live: one
/// it logged as authenticated and not yet as ended (each by its `peer` and `conn` fields).
fn relay_session_live(lines: &[String], p: &str) -> bool {
    let mut live = HashSet::new();
    for l in lines {
        let (Some(peer), Some(conn)) = (
            crate::process::field(l, "peer"),
            crate::process::field(l, "conn"),
        ) else {
            continue;
        };
        if peer != p {
            continue;
        }
        if l.contains("session ended") {
            live.remove(conn);
        } else if l.contains("authenticated") {
            live.insert(conn);
        }
    }
    !live.is_empty()
}

/// The injects among `pending` (waiting to be sent) that can never be sent once the
/// timeline has run: each whose sender is `down` (down for good by then), and each that
/// references one of them, directly or through others, as it waits for that one's message.
fn unsendable(scenario: &Scenario, pending: &[usize], down: &HashSet<String>) -> HashSet<usize> {
    let mut out: HashSet<usize> = pending
        .iter()
        .copied()
        .filter(|i| down.contains(&scenario.injects[*i].from))
        .collect();
    loop {
        let more: Vec<usize> = pending
            .iter()
            .copied()
            .filter(|i| !out.contains(i))
            .filter(|i| {
                scenario.injects[*i].references.as_ref().is_some_and(|r| {
                    scenario
                        .injects
                        .iter()
                        .position(|x| &x.name == r)
                        .is_some_and(|k| out.contains(&k))
                })
            })
            .collect();
        if more.is_empty() {
            return out;
        }
        out.extend(more);
    }
}

enum Action {
    Inject(usize),
    KillRelay,
    StartRelay,
    BackupRelay,
    RestoreRelay,
    KillNode(String),
    StopNode(String),
    StartNode(String),
}

/// The `Idempotency-Key` of inject number `i` of the drill whose own key is `run_key`: the
/// same for every attempt at its send, and no other send's. 32 hex digits and at most 28
/// more characters, within the node's 128.
fn inject_key(run_key: &str, i: usize) -> String {
    format!("drill-{run_key}-inject-{i}")
}

/// The `Idempotency-Key` of the scripted answer to message `id` (each node answers a message
/// once, and keys are a node's own): the same for every attempt.
fn reply_key(run_key: &str, id: &str) -> String {
    format!("drill-{run_key}-reply-{id}")
}

/// Runs `scenario` and returns its report (also written as JSON and HTML).
pub async fn run(mut scenario: Scenario, opts: RunOptions) -> anyhow::Result<Report> {
    // The scenario's own time compression was checked when it was parsed; the speedup
    // scales it, and the product must hold to the same rule (a speedup of 0, NaN or
    // infinity used to be made 0.01 silently, or played everything at once).
    let compression = scenario.time_compression * opts.speedup;
    if !(compression.is_finite() && compression >= crate::scenario::TIME_COMPRESSION_MIN) {
        bail!(
            "speedup {}: the scenario's time_compression {} times it is {compression}, not a finite number of at least {}",
            opts.speedup,
            scenario.time_compression,
            crate::scenario::TIME_COMPRESSION_MIN
        );
    }
    scenario.time_compression = compression;
    let seed = opts.seed.or(scenario.seed).unwrap_or_else(rand::random);
    // A simulated drill writes a deployment whose configurations name paths in its
    // directory: one whose name is not UTF-8 is refused before it is made, not after, which
    // left an empty directory behind (`Deployment::create` refuses it too). A live drill
    // writes only its report there, which any name can hold.
    if opts.live.is_none() {
        let base = opts.out_dir.clone().unwrap_or_else(std::env::temp_dir);
        let base = std::path::absolute(&base)
            .with_context(|| format!("resolving {} to an absolute path", base.display()))?;
        crate::deploy::refuse_non_utf8(&base)?;
    }
    let dir = match &opts.out_dir {
        Some(d) => {
            crate::deploy::create_dir_private(d)?;
            d.clone()
        }
        None => create_run_dir(&std::env::temp_dir(), &scenario.name, crate::now_ms())?,
    };
    // Absolute from here on: the relay and the nodes run with the directory as their working
    // directory, and are given paths in it (their configurations), which a relative `--out`
    // would name twice over (`out/out/relay.toml`).
    let dir = std::path::absolute(&dir)
        .with_context(|| format!("resolving {} to an absolute path", dir.display()))?;
    // The report is written as new files at the end: a directory holding an earlier drill's
    // is refused now, before anything is started or sent, rather than after the drill (a
    // live one has sent its traffic to a real deployment by then), losing its report.
    for file in report::FILES {
        let path = dir.join(file);
        if std::fs::symlink_metadata(&path).is_ok() {
            bail!(
                "{} already holds a drill's report ({}): give another --out, or move it away",
                dir.display(),
                path.display()
            );
        }
    }
    progress!("exercise {}: {}", scenario.name, scenario.description);
    progress!("  directory {}", dir.display());
    progress!(
        "  seed {seed} (rerun exactly with --seed {seed}); time compression {}x",
        scenario.time_compression
    );

    let (mut sim, roster, mut clients, participants) = match opts.live.clone() {
        Some(live) => {
            if !scenario.faults.is_empty() {
                progress!(
                    "  live mode: the scenario's {} faults are not injected",
                    scenario.faults.len()
                );
            }
            let participants = live.clients.keys().cloned().collect::<Vec<_>>();
            scenario.check_roster(&live.roster)?;
            // Faults are not injected in live mode: only the senders need a node.
            check_nodes(&scenario, &participants, false, &live.roster)
                .context("live mode: every sender needs an entry in the endpoints file")?;
            progress!(
                "  live mode: {} nodes; operators acknowledge themselves",
                participants.len()
            );
            (None, live.roster, live.clients, participants)
        }
        None => {
            let (sim, clients, participants) = setup_sim(&scenario, &opts, &dir, seed).await?;
            let roster = sim.dep.roster.clone();
            (Some(sim), roster, clients, participants)
        }
    };

    // One event-stream follower per node, reconnecting across restarts (a restarted node
    // listens on a new port: the followers read its client from `watched`). The clock
    // starts once each has opened its stream (or tried for FOLLOW_OPEN_WAIT), so that the
    // first injects' arrivals are seen.
    let (ev_tx, mut ev_rx) = mpsc::channel::<(String, Value)>(EVENTS_BUFFER);
    let (opened_tx, opened_rx) = std::sync::mpsc::channel::<()>();
    let stop = Arc::new(AtomicBool::new(false));
    let watched = Arc::new(Mutex::new(clients.clone()));
    for id in clients.keys() {
        let (id, watched, tx, stop) = (id.clone(), watched.clone(), ev_tx.clone(), stop.clone());
        let mut opened = Some(opened_tx.clone());
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                let c = lock(&watched).get(&id).cloned();
                if let Some(Ok(events)) = c.map(|c| c.events()) {
                    if let Some(o) = opened.take() {
                        let _ = o.send(());
                    }
                    for ev in events {
                        let Ok(ev) = ev else { break };
                        let _ = tx.blocking_send((id.clone(), ev));
                        if stop.load(Relaxed) {
                            break;
                        }
                    }
                }
                // The node is down (restart or offline fault): try again shortly.
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }
    drop((ev_tx, opened_tx));
    let opened = tokio::task::spawn_blocking({
        let n = clients.len();
        move || {
            let deadline = Instant::now() + FOLLOW_OPEN_WAIT;
            (0..n)
                .take_while(|_| {
                    opened_rx
                        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                        .is_ok()
                })
                .count()
        }
    })
    .await?;
    if opened < clients.len() {
        progress!(
            "  {} of {} nodes' event streams open after {FOLLOW_OPEN_WAIT:?}: the others are followed as they come",
            opened,
            clients.len()
        );
    }

    let mut timeline = timeline(&scenario, sim.is_some());

    let start = Instant::now();
    let started_at_ms = crate::now_ms();
    let end = scenario.wall(scenario.end_s);
    let mut injects: Vec<Inject> = scenario
        .injects
        .iter()
        .map(|_| Inject {
            id: None,
            sent_at_ms: None,
            refused: None,
            unanswered: None,
        })
        .collect();
    let mut pending_injects: Vec<usize> = Vec::new();
    // Each send's `Idempotency-Key` starts with this drill's own, so that a send asked
    // again after a failure that leaves it unknown whether the node stored the message (no
    // answer, a dropped connection, a 5xx) is answered with that message rather than
    // storing a second one ([`inject_key`], [`reply_key`]). Random: a live drill runs on
    // nodes that keep the keys of earlier drills for a day.
    let run_key = hotline_node::client::fresh_idempotency_key();
    // Scripted acknowledgements: (due, participant, message id).
    let mut acks_due: Vec<(Instant, String, String)> = Vec::new();
    let mut acks_scheduled: HashSet<(String, String)> = HashSet::new();
    // Scripted answers: (due, participant, message id).
    let mut replies_due: Vec<(Instant, String, String)> = Vec::new();
    let mut replies_scheduled: HashSet<(String, String)> = HashSet::new();
    let mut shown: HashMap<(String, String), u32> = HashMap::new();
    let mut restarts: HashMap<String, u32> = HashMap::new();
    let mut relay_restarts = 0u32;
    // The relay is down for a fault (killed, its restart not yet due).
    let mut relay_down = false;
    let mut down: HashSet<String> = HashSet::new();
    let mut fault_log: Vec<Value> = Vec::new();
    // How each process the harness stopped or killed ended (`report::ProcessEnd`).
    let mut exits: Vec<report::ProcessEnd> = Vec::new();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut last_progress = String::new();
    let mut last_progress_at = Instant::now();
    // Every objective met, or failed for good (its inject refused): nothing left to wait for.
    let mut objectives_decided = false;
    // Who is down for good, and what their operators did: see `Gone::settled`.
    let mut gone = Gone::default();

    loop {
        let now = start.elapsed();
        // Due timeline actions.
        while timeline.front().is_some_and(|(t, _)| *t <= now) {
            let Some((_, action)) = timeline.pop_front() else {
                break;
            };
            let at_s = now.as_secs_f64() * scenario.time_compression;
            let Some(sim) = sim.as_mut() else {
                if let Action::Inject(i) = action {
                    pending_injects.push(i);
                }
                continue;
            };
            match action {
                Action::Inject(i) => pending_injects.push(i),
                Action::KillRelay => {
                    kill_for_fault(&mut sim.relay, "relay", at_s, &mut exits);
                    relay_down = true;
                    fault_log.push(json!({"at_s": at_s, "fault": "relay killed (SIGKILL)"}));
                    progress!("\n  [{at_s:>7.1}s] relay killed with SIGKILL");
                }
                Action::BackupRelay => {
                    let line = backup_relay(&opts, &sim.dep).await?;
                    fault_log.push(
                        json!({"at_s": at_s, "fault": format!("relay store backed up ({line})")}),
                    );
                    progress!("\n  [{at_s:>7.1}s] relay store backed up while it runs");
                }
                Action::RestoreRelay => {
                    kill_for_fault(&mut sim.relay, "relay", at_s, &mut exits);
                    relay_down = true;
                    let out = restore_relay(&opts, &sim.dep).await?;
                    let line = out.lines().next().unwrap_or_default();
                    fault_log.push(json!({"at_s": at_s, "fault": format!("relay killed (SIGKILL), its disk lost, the backup restored ({line})")}));
                    progress!("\n  [{at_s:>7.1}s] relay killed with SIGKILL; its disk lost, the backup restored");
                }
                Action::StartRelay => {
                    relay_restarts += 1;
                    sim.relay = start_relay(&opts, &sim.dep, relay_restarts).await?;
                    relay_down = false;
                    fault_log.push(json!({"at_s": at_s, "fault": "relay restarted"}));
                    progress!("\n  [{at_s:>7.1}s] relay restarted");
                }
                Action::KillNode(p) => {
                    if let Some(n) = sim.nodes.get_mut(&p) {
                        kill_for_fault(n, &format!("node {p}"), at_s, &mut exits);
                    }
                    down.insert(p.clone());
                    fault_log
                        .push(json!({"at_s": at_s, "fault": format!("node {p} killed (SIGKILL)")}));
                    progress!("\n  [{at_s:>7.1}s] node {p} killed with SIGKILL");
                }
                Action::StopNode(p) => {
                    if let Some(n) = sim.nodes.get_mut(&p) {
                        let (exit, before) = n.stop(STOP_GRACE).await;
                        exits.push(report::ProcessEnd {
                            process: format!("node {p}"),
                            when: format!("for its offline fault at {at_s:.1} s"),
                            exit,
                            before,
                        });
                    }
                    down.insert(p.clone());
                    fault_log.push(json!({"at_s": at_s, "fault": format!("node {p} offline")}));
                    progress!("\n  [{at_s:>7.1}s] node {p} goes offline");
                }
                Action::StartNode(p) => {
                    let r = restarts.entry(p.clone()).or_insert(0);
                    *r += 1;
                    let mut proc_ = spawn_node(&opts, &sim.dep, &p, *r)?;
                    let c = sim
                        .dep
                        .api_client(&p, &mut proc_, START_TIMEOUT)
                        .await
                        .with_context(|| format!("node {p} did not restart"))?;
                    lock(&watched).insert(p.clone(), c.clone());
                    clients.insert(p.clone(), c);
                    sim.nodes.insert(p.clone(), proc_);
                    down.remove(&p);
                    fault_log.push(json!({"at_s": at_s, "fault": format!("node {p} back")}));
                    progress!("\n  [{at_s:>7.1}s] node {p} back");
                }
            }
        }
        // Injects (retried while the sender's node is down).
        let mut still = Vec::new();
        for i in pending_injects.drain(..) {
            let inj = &scenario.injects[i];
            if down.contains(&inj.from) {
                still.push(i);
                continue;
            }
            // One that references another waits for that one's message (its sender down, or
            // its send failed and is retried): sent without it, it referenced nothing, and
            // an update, cancel or reply was refused by its node for the want of one. If the
            // other was refused for good, so is this one: there is nothing to reference.
            if let Some(r) = &inj.references {
                let Some(k) = scenario.injects.iter().position(|x| &x.name == r) else {
                    bail!("inject {}: references unknown inject {r}", inj.name)
                };
                if injects[k].id.is_none() {
                    if injects[k].refused.is_some() {
                        let why = format!("not sent: the inject it references, {r:?}, was refused");
                        progress!("\n  inject {:?} {why}", inj.name);
                        injects[i].refused = Some(why);
                    } else {
                        still.push(i);
                    }
                    continue;
                }
            }
            let mut body = json!({
                "to": inj.to, "group": inj.group, "all_members": inj.all_members, "everyone": inj.everyone,
                "kind": inj.kind, "precedence": inj.precedence.to_uppercase(), "status": "exercise",
                "category": inj.category, "subject": inj.subject, "body": inj.body,
            });
            if let Some(w) = inj.respond_within_s {
                // At least 1 ms: a respond-by that a high compression rounds down to 0 ms
                // is refused by the node (`Scenario::parse` refuses one of 0 s).
                body["respond_within_ms"] = json!((scenario.wall(w).as_millis() as u64).max(1));
            }
            if let Some(r) = &inj.references {
                // Sent: checked above.
                let idx = scenario
                    .injects
                    .iter()
                    .position(|x| &x.name == r)
                    .unwrap_or(i);
                body["references"] = json!(injects[idx].id.iter().collect::<Vec<_>>());
                // An answer, for an `answered` objective, may now be on its way.
                if let Some(id) = &injects[idx].id {
                    gone.acted.insert((inj.from.clone(), id.clone()));
                }
            }
            // `check_nodes` made sure of this before the timeline started.
            let Some(client) = clients.get(&inj.from) else {
                bail!("inject {} from {}: no such node", inj.name, inj.from)
            };
            let c = client.clone();
            let key = inject_key(&run_key, i);
            let res =
                tokio::task::spawn_blocking(move || c.post_keyed("/v1/messages", &body, &key))
                    .await?;
            match res {
                Ok(v) => {
                    injects[i].id = v["id"].as_str().map(str::to_owned);
                    injects[i].sent_at_ms = Some(crate::now_ms());
                    injects[i].unanswered = None;
                    let again = if v["repeated"] == true {
                        ", stored by an earlier attempt whose answer was lost"
                    } else {
                        ""
                    };
                    progress!(
                        "\n  [{:>7.1}s] inject {:?} sent by {} ({}{again})",
                        now.as_secs_f64() * scenario.time_compression,
                        inj.name,
                        inj.from,
                        injects[i].id.as_deref().unwrap_or("?")
                    );
                }
                // Refused for good (the node found the message invalid, e.g. an unknown
                // recipient): the same request would be refused again until the drill ends.
                Err(
                    e @ hotline_node::client::ClientError::Api {
                        status: 400..=499, ..
                    },
                ) => {
                    progress!(
                        "\n  inject {:?} from {} refused by its node, not retried: {e}",
                        inj.name,
                        inj.from
                    );
                    injects[i].refused = Some(format!("refused by {}'s node: {e}", inj.from));
                    // Only this inject's message could meet them: they fail now, and the
                    // drill does not wait for them.
                    for o in scenario.objectives.iter().filter(|o| o.inject == inj.name) {
                        progress!(
                            "\n  objective {:?} failed: its inject {:?} was refused",
                            o.name,
                            inj.name
                        );
                    }
                }
                Err(e) => {
                    progress!(
                        "\n  inject {:?} from {} failed: {e}; retrying with its idempotency key",
                        inj.name,
                        inj.from
                    );
                    // Its node may have stored it (not when nothing was listening: then it
                    // was asked nothing). Should no later attempt be answered, the drill
                    // learns it from the node's store ([`learn_unanswered`]).
                    if hotline_node::client::unknown_outcome(&e)
                        && !matches!(e, hotline_node::client::ClientError::NotRunning(_))
                    {
                        injects[i].unanswered.get_or_insert_with(|| e.to_string());
                    }
                    still.push(i);
                }
            }
        }
        pending_injects = still;
        // Scripted acknowledgements that are due.
        let instant = Instant::now();
        let mut later = Vec::new();
        for (due, p, id) in acks_due.drain(..) {
            if due > instant || down.contains(&p) {
                later.push((due, p, id));
                continue;
            }
            let Some(c) = clients.get(&p).cloned() else {
                continue;
            };
            // Asked, whatever the answer: its acknowledgement may now be on its way.
            gone.acted.insert((p.clone(), id.clone()));
            let (p2, id2) = (p.clone(), id.clone());
            let res = tokio::task::spawn_blocking(move || c.post(&format!("/v1/messages/{id2}/ack"), &json!({"officer": format!("Duty officer {p2}"), "note": "exercise acknowledgement"}))).await?;
            match res {
                Ok(_) => {}
                Err(hotline_node::client::ClientError::Api { status: 409, .. }) => {}
                Err(_) => later.push((instant + Duration::from_millis(200), p, id)),
            }
        }
        acks_due = later;
        // Scripted answers that are due.
        let mut later = Vec::new();
        for (due, p, id) in replies_due.drain(..) {
            if due > instant || down.contains(&p) {
                later.push((due, p, id));
                continue;
            }
            let Some(c) = clients.get(&p).cloned() else {
                continue;
            };
            gone.acted.insert((p.clone(), id.clone()));
            let path = format!("/v1/messages/{id}/reply");
            let body = json!({"body": format!("Exercise answer from {p}.")});
            let key = reply_key(&run_key, &id);
            match tokio::task::spawn_blocking(move || c.post_keyed(&path, &body, &key)).await? {
                Ok(_) => {}
                // Refused for good (the node found the reply invalid): said, not retried.
                Err(
                    e @ hotline_node::client::ClientError::Api {
                        status: 400..=499, ..
                    },
                ) => {
                    progress!("\n  {p}'s scripted answer was refused: {e}");
                }
                Err(_) => later.push((instant + Duration::from_millis(200), p, id)),
            }
        }
        replies_due = later;

        let finished_timeline =
            timeline.is_empty() && pending_injects.iter().all(|i| gone.unsent.contains(i));
        if now >= end || (finished_timeline && objectives_decided) {
            break;
        }
        let line = progress_line(&scenario, now, &injects, &shown, &down, clients.len());
        // One progress line a second at most: rewritten in place on a terminal, appended in a log.
        if opts.progress
            && line != last_progress
            && last_progress_at.elapsed() >= Duration::from_secs(1)
        {
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                progress_inline!("\r{line}");
            } else {
                progress!("{line}");
            }
            let _ = std::io::stderr().flush();
            last_progress = line;
            last_progress_at = Instant::now();
        }

        let next_action = timeline.front().map(|(t, _)| *t).unwrap_or(end);
        let wake = tokio::time::Instant::from_std(start + next_action.min(end));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            Some((p, ev)) = ev_rx.recv() => {
                if ev["type"] == "message_received" && ev["repage"] != json!(true) && ev["recovered"] != json!(true) {
                    if let Some(id) = ev["id"].as_str() {
                        *shown.entry((p.clone(), id.to_owned())).or_insert(0) += 1;
                        if sim.is_some() {
                            schedule_ack(&scenario, &p, id, Instant::now(), &mut acks_due, &mut acks_scheduled);
                            schedule_reply(&scenario, &p, &ev, Instant::now(), &mut replies_due, &mut replies_scheduled);
                        }
                    }
                }
            }
            _ = sweep.tick() => {
                // With the timeline run, a node down is down for good (nothing due before the
                // end brings it back), and its scripted acknowledgements and answers will
                // never be given: they are not waited for.
                let gone_for_good = |(_, p, _): &(Instant, String, String)| down.contains(p);
                if timeline.is_empty() {
                    gone.unsent = unsendable(&scenario, &pending_injects, &down);
                }
                if timeline.is_empty() && pending_injects.iter().all(|i| gone.unsent.contains(i)) && acks_due.iter().all(gone_for_good) && replies_due.iter().all(gone_for_good) {
                    gone.down.clone_from(&down);
                    if let Some(sim) = sim.as_ref() {
                        gone.read_stores(&sim.dep);
                        // A send with no answer that its sender's node, down for good, stored:
                        // sent, and its message waited for as any other of that node's; no
                        // longer waiting to be sent.
                        gone.read_keys(&mut injects, &scenario, &run_key, &sim.dep);
                        pending_injects.retain(|i| injects[*i].id.is_none());
                        // The relay's log is copied only while a node down is still to be
                        // looked up there (once each: it can be long).
                        if gone.down.iter().any(|p| !gone.relay_read.contains(p)) {
                            let relay_log = (!relay_down).then(|| sim.relay.lines());
                            gone.read_relay(&sim.dep, relay_log.as_deref());
                        }
                    }
                    objectives_decided = all_decided(&scenario, &injects, &clients, &roster, sim.as_ref().map(|s| &s.dep), &gone).await;
                }
                // Catch arrivals whose event was missed while a node restarted. Only in a
                // drill the harness deploys (in live mode the operators act themselves), and
                // only on nodes whose scripted operator acts at all.
                for (p, c) in clients.iter().filter(|_| sim.is_some()) {
                    if down.contains(p) || !scripted(&scenario, p) { continue; }
                    let c = c.clone();
                    let Ok(Ok(items)) = tokio::task::spawn_blocking(move || sweep_inbox(|path| c.get_page(path).map_err(|e| e.to_string()))).await else { continue };
                    for m in items {
                        if let (Some(id), false) = (m["id"].as_str(), m["acknowledged"] == json!(true)) {
                            schedule_ack(&scenario, p, id, Instant::now(), &mut acks_due, &mut acks_scheduled);
                        }
                        schedule_reply(&scenario, p, &m, Instant::now(), &mut replies_due, &mut replies_scheduled);
                    }
                }
            }
        }
    }
    if opts.progress {
        progress!();
    }
    let wall_s = start.elapsed().as_secs_f64();
    // The injects whose send got no answer, and that no later attempt was answered for:
    // sent if their node stored them, never sent if it did not, or not known.
    let no_answer = learn_unanswered(
        &mut injects,
        &scenario,
        &run_key,
        sim.as_ref().map(|s| &s.dep),
        &down,
        |_| true,
    );
    for (i, learnt) in &no_answer {
        progress!(
            "  inject {:?} from {}: {}",
            scenario.injects[*i].name,
            scenario.injects[*i].from,
            learnt.account()
        );
    }

    let Picture {
        sent_views,
        inboxes,
        at_rest,
        api_failed,
    } = final_picture(
        &scenario,
        &injects,
        &clients,
        &down,
        sim.as_ref().map(|s| &s.dep),
    )
    .await?;
    let proxy_stats: BTreeMap<String, crate::proxy::ProxyStats> = {
        let mut m = BTreeMap::new();
        for (p, x) in sim.iter().flat_map(|s| s.proxies.iter()) {
            m.insert(p.clone(), x.stats().await);
        }
        m
    };

    // Stop everything, then check the stores at rest.
    stop.store(true, Relaxed);
    let (checks, hooks, exits, unrelayed) = match sim.as_mut() {
        Some(sim) => {
            stop_at_end(
                &mut sim.nodes,
                &mut sim.relay,
                &down,
                relay_down,
                &mut exits,
            )
            .await;
            for e in exits.iter().filter(|e| !e.exit.clean()) {
                progress!(
                    "  {} {}: {}{}",
                    e.process,
                    e.when,
                    e.exit,
                    if e.before {
                        " (it had already ended)"
                    } else {
                        ""
                    }
                );
            }
            // The messages of senders down at the end that the relay, stopped now, never
            // took: the report names them as never having left their sender.
            let of_down = scenario
                .injects
                .iter()
                .zip(&injects)
                .filter(|(s, _)| down.contains(&s.from))
                .filter_map(|(_, i)| i.id.as_deref());
            let unrelayed = report::relay_lacks(&sim.dep.relay_data, of_down).unwrap_or_else(|e| {
                progress!("  the relay's store could not be read for the messages of nodes down at the end: {e}");
                HashSet::new()
            });
            (
                Some(report::check_stores(&sim.dep)?),
                Some(report::read_hooks(&sim.dep)),
                Some(std::mem::take(&mut exits)),
                unrelayed,
            )
        }
        None => (None, None, None, HashSet::new()),
    };

    let report = report::score(report::Inputs {
        scenario: &scenario,
        seed,
        dir: &dir,
        started_at_ms,
        wall_s,
        participants: &participants,
        live: opts.live.is_some(),
        roster: &roster,
        injects: scenario
            .injects
            .iter()
            .zip(&injects)
            .enumerate()
            .map(|(k, (s, i))| report::Sent {
                inject: s.clone(),
                id: i.id.clone(),
                sent_at_ms: i.sent_at_ms,
                refused: i.refused.clone(),
                no_answer: no_answer.get(&k).cloned(),
            })
            .collect(),
        sent_views,
        inboxes,
        at_rest,
        api_failed,
        unrelayed,
        shown,
        hooks,
        faults: fault_log,
        proxies: proxy_stats,
        checks,
        exits,
    })?;
    report::write(&report, &dir)?;
    Ok(report)
}

/// The drill's final picture, from the nodes' own records, read before they are stopped.
struct Picture {
    /// Each inject's message as its sender's node shows it (`Null` if it gives none).
    sent_views: Vec<Value>,
    /// Each node's inbox.
    inboxes: BTreeMap<String, Vec<Value>>,
    /// The nodes whose inbox was read from their store (`report::Inputs::at_rest`).
    at_rest: BTreeMap<String, Result<(), String>>,
    /// The nodes up at the end whose API failed when their inbox was read, with the error
    /// (`report::Inputs::api_failed`).
    api_failed: BTreeMap<String, String>,
}

/// What `p`'s node holds, read from its store ([`report::read_at_rest`]) in a drill the
/// harness deploys (`dep`); or why it cannot be: no such node, or live mode (the drill reads
/// no store of a deployment it did not start).
fn node_at_rest(dep: Option<&Deployment>, p: &str) -> Result<report::AtRest, String> {
    match dep.map(|d| d.nodes.get(p)) {
        Some(Some(n)) => report::read_at_rest(&n.data_dir),
        Some(None) => Err("no such node in the deployment".to_owned()),
        None => {
            Err("live mode: the drill reads no store of a deployment it did not start".to_owned())
        }
    }
}

/// The message that the send with `Idempotency-Key` `key` stored at `p`'s node, read from
/// the node's store, read-only, with when it was stored; `None` if the store keeps nothing
/// under the key; or why it could not be read: no such node, or live mode (the drill reads
/// no store of a deployment it did not start).
fn keyed_in_store(
    dep: Option<&Deployment>,
    p: &str,
    key: &str,
) -> Result<Option<(String, u64)>, String> {
    match dep.map(|d| d.nodes.get(p)) {
        Some(Some(n)) => report::keyed_at_rest(&n.data_dir, key),
        Some(None) => Err("no such node in the deployment".to_owned()),
        None => {
            Err("live mode: the drill reads no store of a deployment it did not start".to_owned())
        }
    }
}

/// What the drill learns of each inject with no id whose send got no answer
/// ([`Inject::unanswered`]) and for which `look` holds, from its sender's node's store,
/// read-only, by the send's `Idempotency-Key` ([`inject_key`]). The node records the key in
/// the transaction that stores the message: a store that keeps it names the message sent;
/// the store of a node down for good (in `down`) that does not keep it holds no message from
/// that send, now or later. One found is sent: its id and time (the key's) are set, and said.
/// Each other one looked up is in the answer, with what is known of it: never sent, or not
/// known (its store could not be read, or its node is up and may store it yet). Its node
/// may have stored and relayed it: it was reported "never sent".
fn learn_unanswered(
    injects: &mut [Inject],
    scenario: &Scenario,
    run_key: &str,
    dep: Option<&Deployment>,
    down: &HashSet<String>,
    look: impl Fn(usize) -> bool,
) -> BTreeMap<usize, report::NoAnswer> {
    let mut out = BTreeMap::new();
    for (i, inj) in injects.iter_mut().enumerate() {
        let Some(error) = inj.unanswered.clone() else {
            continue;
        };
        if inj.id.is_some() || inj.refused.is_some() || !look(i) {
            continue;
        }
        let (name, from) = (&scenario.injects[i].name, &scenario.injects[i].from);
        // Down at the end, or down for good in the early end's sweep: nothing of it writes
        // to its store any more.
        let is_down = down.contains(from);
        let learnt = match keyed_in_store(dep, from, &inject_key(run_key, i)) {
            Ok(Some((id, at_ms))) => {
                progress!("\n  inject {name:?} from {from}: its send got no answer, but its node stored it ({id}), as its store shows under the send's key");
                inj.id = Some(id);
                inj.sent_at_ms = Some(at_ms);
                inj.unanswered = None;
                continue;
            }
            Ok(None) if is_down => report::NoAnswer::NotStored { error },
            Ok(None) => report::NoAnswer::Unknown {
                error,
                why: "its node, up at the end, answered no later attempt, and had stored nothing under the send's key when its store was read".to_owned(),
            },
            Err(e) if is_down => report::NoAnswer::Unknown {
                error,
                why: format!("its node went down for good, and its store could not be read ({e})"),
            },
            Err(e) => report::NoAnswer::Unknown {
                error,
                why: format!("its node answered no later attempt, and its store could not be read ({e})"),
            },
        };
        out.insert(i, learnt);
    }
    out
}

/// Reads the final picture: over each node's API; for one down at the end (`down`), in a
/// drill the harness deploys (`dep`), from its store at rest; for one up whose API fails
/// when its inbox is read, from its store as well, and what it sent with it (asked of its
/// API when its store cannot be read).
async fn final_picture(
    scenario: &Scenario,
    injects: &[Inject],
    clients: &BTreeMap<String, ApiClient>,
    down: &HashSet<String>,
    dep: Option<&Deployment>,
) -> anyhow::Result<Picture> {
    // Final picture, from the nodes' own records. A node a fault keeps down at the end
    // answers nothing: its inbox, read over its API, read as empty, so that every message it
    // had stored before the fault counted as lost to it, and a message it sent as one with
    // no record. Its store at rest, which nothing writes to while it is down, is read
    // instead, read-only; or the report says it could not be.
    let mut rest: BTreeMap<String, Result<report::AtRest, String>> = BTreeMap::new();
    if let Some(dep) = dep {
        for p in clients.keys().filter(|p| down.contains(*p)) {
            let read = node_at_rest(Some(dep), p);
            if let Err(e) = &read {
                progress!("  node {p} is down at the end and its store could not be read: {e}");
            }
            rest.insert(p.clone(), read);
        }
    }
    // An up node whose API fails when its inbox is read at the end (it crashed, or hangs
    // past the client's timeout) had its inbox counted as empty: every message to it
    // "lost", which the drill does not know. Its store is read instead, read-only, as its
    // API's own reader reads it; or, when that cannot be (live mode: the drill reads no
    // store of a deployment it did not start), its deliveries are not known.
    let mut inboxes = BTreeMap::new();
    let mut api_failed = BTreeMap::new();
    for (p, c) in clients {
        if let Some(r) = rest.get(p) {
            let items = r.as_ref().map(|r| r.inbox.clone()).unwrap_or_default();
            inboxes.insert(p.clone(), items);
            continue;
        }
        let c = c.clone();
        let read = tokio::task::spawn_blocking(move || {
            every_page(
                |path| c.get_page(path).map_err(|e| e.to_string()),
                "/v1/inbox",
            )
        })
        .await?;
        let e = match read {
            Ok(items) => {
                inboxes.insert(p.clone(), items);
                continue;
            }
            Err(e) => e.to_string(),
        };
        let read = node_at_rest(dep, p);
        match &read {
            Ok(_) => progress!(
                "  node {p}: its inbox could not be read at the end ({e}): read from its store"
            ),
            Err(s) => progress!(
                "  node {p}: its inbox could not be read at the end ({e}), nor its store ({s})"
            ),
        }
        inboxes.insert(
            p.clone(),
            read.as_ref().map(|r| r.inbox.clone()).unwrap_or_default(),
        );
        rest.insert(p.clone(), read);
        api_failed.insert(p.clone(), e);
    }
    let mut sent_views = Vec::new();
    for (i, inj) in scenario.injects.iter().enumerate() {
        // Asked over the API unless read from the store: that of a node up whose inbox
        // read failed, and whose store could not be read either, is asked too (one call
        // failing does not make the next fail).
        let v = match (&injects[i].id, clients.get(&inj.from), rest.get(&inj.from)) {
            (Some(id), _, Some(Ok(r))) => r.sent.get(id).cloned().unwrap_or(Value::Null),
            (Some(id), Some(c), r) if r.is_none() || api_failed.contains_key(&inj.from) => {
                let (c, id) = (c.clone(), id.clone());
                tokio::task::spawn_blocking(move || c.get(&format!("/v1/messages/{id}")))
                    .await?
                    .unwrap_or(Value::Null)
            }
            _ => Value::Null,
        };
        sent_views.push(v);
    }
    let at_rest = rest.into_iter().map(|(p, r)| (p, r.map(|_| ()))).collect();
    Ok(Picture {
        sent_views,
        inboxes,
        at_rest,
        api_failed,
    })
}

/// The scenario's timeline, in wall-clock offsets from the start, in order: its injects,
/// and, with `faults` (a drill the harness deploys), each fault's actions due before the
/// end.
fn timeline(scenario: &Scenario, faults: bool) -> std::collections::VecDeque<(Duration, Action)> {
    let mut timeline: Vec<(Duration, Action)> = Vec::new();
    for (i, inj) in scenario.injects.iter().enumerate() {
        timeline.push((scenario.wall(inj.at_s), Action::Inject(i)));
    }
    let faults: &[Fault] = if faults { &scenario.faults } else { &[] };
    for f in faults {
        match f {
            Fault::KillRelay {
                at_s,
                restart_after_s,
            } => {
                timeline.push((scenario.wall(*at_s), Action::KillRelay));
                timeline.push((scenario.wall(at_s + restart_after_s), Action::StartRelay));
            }
            Fault::RestoreRelay {
                backup_at_s,
                at_s,
                restart_after_s,
            } => {
                timeline.push((scenario.wall(*backup_at_s), Action::BackupRelay));
                timeline.push((scenario.wall(*at_s), Action::RestoreRelay));
                timeline.push((scenario.wall(at_s + restart_after_s), Action::StartRelay));
            }
            Fault::KillNode {
                participant,
                at_s,
                restart_after_s,
            } => {
                timeline.push((scenario.wall(*at_s), Action::KillNode(participant.clone())));
                timeline.push((
                    scenario.wall(at_s + restart_after_s),
                    Action::StartNode(participant.clone()),
                ));
            }
            Fault::Offline {
                participant,
                from_s,
                to_s,
            } => {
                timeline.push((
                    scenario.wall(*from_s),
                    Action::StopNode(participant.clone()),
                ));
                timeline.push((scenario.wall(*to_s), Action::StartNode(participant.clone())));
            }
            Fault::Impair { .. } => {}
        }
    }
    // What is due at or after the end never happens (the drill has ended): a restart of a
    // node or the relay kept down to the end. Left in, it kept the timeline from running
    // out, and so the drill from ending early, however decided everything was.
    let end = scenario.wall(scenario.end_s);
    timeline.retain(|(t, _)| *t < end);
    timeline.sort_by_key(|(t, _)| *t);
    timeline.into()
}

/// Creates the deployment and starts the relay, the proxies and the nodes.
async fn setup_sim(
    scenario: &Scenario,
    opts: &RunOptions,
    dir: &std::path::Path,
    seed: u64,
) -> anyhow::Result<(Sim, BTreeMap<String, ApiClient>, Vec<String>)> {
    let mut dep = Deployment::create(dir, crate::scenario::CICA_ROSTER)?;
    let participants: Vec<String> = if scenario.participants.is_empty() {
        dep.roster
            .participants
            .iter()
            .map(|p| p.id.to_string())
            .collect()
    } else {
        scenario.participants.clone()
    };
    for p in &participants {
        if dep
            .roster
            .participant(&hotline_proto::ParticipantId::new(p)?)
            .is_none()
        {
            bail!("scenario participant {p} is not on the roster");
        }
    }
    scenario.check_roster(&dep.roster)?;
    check_nodes(scenario, &participants, true, &dep.roster)?;

    // Relay first: nodes need its address.
    let relay = start_relay(opts, &dep, 0).await?;

    let mut proxies = BTreeMap::new();
    for (i, f) in scenario.faults.iter().enumerate() {
        if let Fault::Impair {
            participant,
            loss,
            delay_ms,
            jitter_ms,
            duplicate,
        } = f
        {
            let imp = Impairment {
                loss: *loss,
                delay_ms: *delay_ms,
                jitter_ms: *jitter_ms,
                duplicate: *duplicate,
            };
            let proxy = Proxy::start(dep.relay_addr, imp, seed.wrapping_add(i as u64)).await?;
            progress!("  {participant}'s link impaired: {loss} loss, {delay_ms} ms delay, {jitter_ms} ms jitter, {duplicate} duplication (proxy {})", proxy.listen);
            proxies.insert(participant.clone(), proxy);
        }
    }
    for p in &participants {
        let relay_addr = proxies.get(p).map(|x| x.listen).unwrap_or(dep.relay_addr);
        dep.add_node(p, relay_addr, DRILL_PAGING_MS)?;
    }

    // Nodes, all at once, then wait for each to reach the relay.
    let mut nodes: BTreeMap<String, Proc> = BTreeMap::new();
    for p in &participants {
        nodes.insert(p.clone(), spawn_node(opts, &dep, p, 0)?);
    }
    for (p, proc_) in nodes.iter_mut() {
        proc_
            .wait_log("relay connected", START_TIMEOUT)
            .await
            .with_context(|| format!("node {p} did not connect"))?;
    }
    progress!("  relay and {} nodes up", nodes.len());

    let mut clients = BTreeMap::new();
    for (p, proc_) in nodes.iter_mut() {
        clients.insert(p.clone(), dep.api_client(p, proc_, START_TIMEOUT).await?);
    }

    Ok((
        Sim {
            dep,
            relay,
            nodes,
            proxies,
        },
        clients,
        participants,
    ))
}

/// How many names [`create_run_dir`] tries before it gives up.
const RUN_DIR_ATTEMPTS: usize = 16;

/// Creates the default drill directory in `base` (the temporary directory, which everyone
/// may write to): `hotline-exercise-NAME-MS`, else with a random suffix. It is created
/// exclusively, with mode 0700: a directory or a symbolic link someone put at the
/// predictable name first is left alone and another name tried, so the drill never writes
/// its keys, tokens and configurations where another user can read or replace them. The
/// scenario's `name` is used only as far as `[A-Za-z0-9_-]` goes (others become `_`), so a
/// name like `../..` cannot place the directory elsewhere.
fn create_run_dir(base: &std::path::Path, name: &str, ms: u64) -> anyhow::Result<PathBuf> {
    let name: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut last = None;
    for attempt in 0..RUN_DIR_ATTEMPTS {
        let leaf = match attempt {
            0 => format!("hotline-exercise-{name}-{ms}"),
            _ => format!("hotline-exercise-{name}-{ms}-{:08x}", rand::random::<u32>()),
        };
        let dir = base.join(leaf);
        match crate::deploy::create_dir_new(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(dir),
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!(
        "no new drill directory in {} after {RUN_DIR_ATTEMPTS} names (the last, {}, exists)",
        base.display(),
        last.map(|d| d.display().to_string()).unwrap_or_default()
    )
}

/// Checks, before anything is started or sent, that every inject's sender (and, with
/// `faults`, in a drill the harness deploys, every fault's participant and every
/// participant an objective names, which is scored only if it has a node there) is one of
/// `nodes`, the participants the run has a node for, and that every objective has a
/// recipient in its scope (by `roster`) with a node there; the error lists every one that
/// is not. Were it checked only when due, such an inject would end the drill midway without
/// a report, after real traffic had been sent; and an objective whose recipients all lack a
/// node had no one to score, so that the drill ran to `end_s` and failed it unexplained.
pub(crate) fn check_nodes(
    scenario: &Scenario,
    nodes: &[String],
    faults: bool,
    roster: &hotline_proto::Roster,
) -> anyhow::Result<()> {
    let has = |p: &str| nodes.iter().any(|n| n == p);
    let mut missing: Vec<String> = scenario
        .injects
        .iter()
        .filter(|i| !has(&i.from))
        .map(|i| format!("inject {:?} is sent by {}", i.name, i.from))
        .collect();
    if faults {
        for (n, f) in scenario.faults.iter().enumerate() {
            let (kind, p) = match f {
                Fault::KillNode { participant, .. } => ("kill_node", participant),
                Fault::Offline { participant, .. } => ("offline", participant),
                Fault::Impair { participant, .. } => ("impair", participant),
                Fault::KillRelay { .. } | Fault::RestoreRelay { .. } => continue,
            };
            if !has(p) {
                missing.push(format!("fault {} ({kind}) is on {p}", n + 1));
            }
        }
        for o in &scenario.objectives {
            for p in o.participants.iter().filter(|p| !has(p)) {
                missing.push(format!("objective {:?} names {p}", o.name));
            }
            let Some(inj) = scenario.injects.iter().find(|i| i.name == o.inject) else {
                continue; // `Scenario::parse` refused it.
            };
            let scope = o.scope(inj, roster);
            // Named ones without a node are listed above; `check_roster` refused an empty scope.
            if o.participants.is_empty() && !scope.is_empty() && !scope.iter().any(|p| has(p)) {
                missing.push(format!(
                    "objective {:?} takes in {} alone",
                    o.name,
                    scope.join(", ")
                ));
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "scenario {}: {}, but the drill has no node for {} (its nodes: {})",
        scenario.name,
        missing.join("; "),
        if missing.len() == 1 { "it" } else { "them" },
        nodes.join(", ")
    )
}

/// Whether `p`'s scripted operator does anything with a message it receives (acknowledges
/// it, or answers a consultation request): [`schedule_ack`] and [`schedule_reply`] do
/// nothing for one that does not.
fn scripted(scenario: &Scenario, p: &str) -> bool {
    let b = scenario.behaviour(p);
    (!b.never_ack && b.ack_after_s.is_some()) || b.reply_after_s.is_some()
}

fn schedule_ack(
    scenario: &Scenario,
    p: &str,
    id: &str,
    now: Instant,
    due: &mut Vec<(Instant, String, String)>,
    scheduled: &mut HashSet<(String, String)>,
) {
    let b = scenario.behaviour(p);
    if b.never_ack {
        return;
    }
    let Some(after) = b.ack_after_s else { return };
    if scheduled.insert((p.to_owned(), id.to_owned())) {
        due.push((now + scenario.wall(after), p.to_owned(), id.to_owned()));
    }
}

/// Schedules `p`'s scripted answer to `m` (a received message as events and the inbox show
/// it, with its `id` and `kind`), if `m` is a consultation request and `p`'s behaviour
/// answers them. The node composes the reply (`POST /v1/messages/{id}/reply`).
fn schedule_reply(
    scenario: &Scenario,
    p: &str,
    m: &Value,
    now: Instant,
    due: &mut Vec<(Instant, String, String)>,
    scheduled: &mut HashSet<(String, String)>,
) {
    let Some(after) = scenario.behaviour(p).reply_after_s else {
        return;
    };
    let Some(id) = m["id"].as_str() else { return };
    if m["kind"] == "consultation_request" && scheduled.insert((p.to_owned(), id.to_owned())) {
        due.push((now + scenario.wall(after), p.to_owned(), id.to_owned()));
    }
}

/// Whether every objective is decided ([`decided`]), from the senders' nodes as they are
/// now: each inject's view is fetched once a call (several objectives, and the check of its
/// acknowledgements, look at the same one), and, in a drill the harness deploys (`dep`), the
/// overdue hooks' records are read if an objective needs them.
async fn all_decided(
    scenario: &Scenario,
    injects: &[Inject],
    clients: &BTreeMap<String, ApiClient>,
    roster: &hotline_proto::Roster,
    dep: Option<&Deployment>,
    gone: &Gone,
) -> bool {
    // Cheap test first: every inject sent, or refused for good (its objectives then fail;
    // the drill need not wait for what will never be sent).
    if injects
        .iter()
        .enumerate()
        .any(|(k, i)| i.id.is_none() && i.refused.is_none() && !gone.unsent.contains(&k))
    {
        return false;
    }
    let mut views = Vec::with_capacity(injects.len());
    for (k, inj) in scenario.injects.iter().enumerate() {
        // Every inject sent: the report's invariants want each accepted, and each accepted
        // one held by its recipients ([`decided`]).
        views.push(if injects[k].refused.is_some() {
            None
        } else if gone.down.contains(&inj.from) {
            view_at_rest(clients, gone, &inj.from, &injects[k]).await
        } else {
            sender_view(clients, &inj.from, &injects[k]).await
        });
    }
    let hooks = dep
        .filter(|_| {
            scenario
                .objectives
                .iter()
                .any(|o| o.expect == "overdue_escalated")
        })
        .map(report::read_hooks);
    let nodes = dep.map(|_| clients.keys().cloned().collect::<HashSet<String>>());
    decided(
        scenario,
        injects,
        &views,
        hooks.as_ref(),
        nodes.as_ref(),
        gone,
        roster,
    )
}

/// Whether every objective is decided: met for every recipient in its scope (as far as
/// the senders' `views` show while the drill runs; the report scores times), or failed for
/// good because its inject was refused by its node (HTTP 4xx), so that no message can ever
/// meet it; and every acknowledgement the scenario requires is given, as the report's
/// invariant wants it (a recipient of an inject with `respond_within_s` has acknowledged
/// it, or `Scenario::expects_unacknowledged` says it need not). A recipient is in an
/// objective's scope as the report has it: covered by the objective
/// ([`crate::scenario::Objective::covers`]) and, in a drill the harness deploys (`nodes`:
/// the participants it runs a node for), one with a node there (the report has no row for
/// another). An `overdue_escalated` objective is met by [`report::escalation_shortfall`],
/// the report's own definition, with `hooks` (the overdue hooks' records, in a drill the
/// harness deploys). The drill ends when they are, without waiting for `end_s`: otherwise it
/// could end on its objectives while acknowledgements no objective names were still on their
/// way. It used to wait for every recipient of the inject, in scope or not (so a drill with
/// an objective `except` a silent recipient ran to `end_s`), and to count a recipient that
/// acknowledged as escalated while the report failed it. Every inject sent must also be
/// accepted and delivered to its recipients in the drill, as the report's invariants want.
/// A recipient whose node a fault keeps down to the end is decided as it stands once
/// nothing of its own can change it (`gone`, [`Gone::settled`]): it kept the drill running
/// to `end_s` when everything else was decided. So is a message whose sender's node is down
/// for good (its view then read from its store at rest, [`view_at_rest`]): nothing can reach
/// its sender any more, so its objectives' acknowledgements, answers and escalations stand
/// as they are; an acknowledgement it requires is still waited for at each recipient up,
/// at the recipient's own node, as the report counts it given there; a delivery its relay
/// may still make is waited for at each recipient up, whether or not
/// the sender's store recorded the message as accepted (a sender killed before the
/// acceptance reached it records it as not accepted, though its relay delivers it), unless
/// the relay does not hold it either ([`Gone::never_reaches`]): then it never left its
/// sender, and neither its delivery nor an acknowledgement it requires is waited for. An
/// inject never to be sent (`gone.unsent`) fails its objectives for good, as a refused one
/// does.
fn decided(
    scenario: &Scenario,
    injects: &[Inject],
    views: &[Option<Value>],
    hooks: Option<&HashMap<String, Vec<(String, String)>>>,
    nodes: Option<&HashSet<String>>,
    gone: &Gone,
    roster: &hotline_proto::Roster,
) -> bool {
    let harnessed = nodes.is_some();
    let in_drill = |p: &str| nodes.is_none_or(|n| n.contains(p));
    for o in &scenario.objectives {
        let Some(idx) = scenario.injects.iter().position(|i| i.name == o.inject) else {
            return false;
        };
        if injects[idx].refused.is_some() || gone.unsent.contains(&idx) {
            // Failed: the report says why.
            continue;
        }
        let Some(v) = views.get(idx).and_then(Option::as_ref) else {
            return false;
        };
        let id = injects[idx].id.as_deref().unwrap_or_default();
        let sender = &scenario.injects[idx].from;
        let sender_gone = gone.down.contains(sender);
        let answers = v["answers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let rows: Vec<(&str, &Value)> = v["recipients"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r["recipient"].as_str().map(|p| (p, r)))
            .filter(|(p, _)| in_drill(p) && o.covers(p, roster))
            .collect();
        let done = |p: &str, r: &Value| match o.expect.as_str() {
            "delivered" => r["delivered_at_ms"].is_u64(),
            "acknowledged" => r["acked_at_ms"].is_u64(),
            // The row's time is of all the recipient's answers; the view lists only the
            // first of them.
            "answered" => r["answered_at_ms"].is_u64() || answers.iter().any(|a| a["from"] == p),
            _ => report::escalation_shortfall(
                p,
                r["overdue_at_ms"].is_u64(),
                r["acked_at_ms"].is_u64(),
                report::hook_ran(hooks, sender, id, p),
            )
            .is_none(),
        };
        // A recipient down for good whose outcome can no longer change is decided as it
        // stands ([`Gone::settled`]); not for `overdue_escalated`, which the sender's hook
        // decides whoever is down. With the sender down for good, everything but a
        // delivery its relay may still make is decided as it stands. That is so even of
        // one its store never recorded as accepted: the sender may have been killed
        // between its relay storing the message and the acceptance reaching it, and the
        // relay delivers it all the same (the report scores delivery from the recipient's
        // inbox, so the drill waits for it at each recipient up).
        // Nor is a delivery waited for that can never be made: the sender went down before
        // its relay accepted the message ([`Gone::never_reaches`]).
        let settled = |p: &str, r: &Value| {
            (sender_gone && o.expect != "delivered")
                || (o.expect != "overdue_escalated" && gone.settled(p, id))
                || gone.never_reaches(sender, id, r)
        };
        if rows.is_empty() || !rows.iter().all(|(p, r)| done(p, r) || settled(p, r)) {
            return false;
        }
    }
    // Every inject its node took is accepted, and delivered to each recipient with a node
    // in the drill (its delivered receipt is back at the sender: the recipient's node held
    // it durably first), as the report's invariants want them ("every inject accepted",
    // "zero accepted messages lost", read once the drill ends). Without this a drill
    // whose objectives were met, or that had none, ended while a message was still on its
    // way and failed those invariants.
    for (k, sent) in injects.iter().enumerate() {
        if sent.refused.is_some() || gone.unsent.contains(&k) {
            continue;
        }
        let Some(v) = views.get(k).and_then(Option::as_ref) else {
            return false;
        };
        // Never accepted as its sender's store has it, and its sender's node down for good:
        // the invariants, which count the messages accepted by the sender's record, no
        // longer change with it (a `delivered` objective on it is waited for above).
        if gone.down.contains(&scenario.injects[k].from) && !v["accepted_at_ms"].is_u64() {
            continue;
        }
        let id = sent.id.as_deref().unwrap_or_default();
        let held = |r: &Value| {
            r["delivered_at_ms"].is_u64()
                || r["recipient"]
                    .as_str()
                    .is_some_and(|p| !in_drill(p) || gone.settled(p, id))
        };
        if !v["accepted_at_ms"].is_u64()
            || !v["recipients"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .all(held)
        {
            return false;
        }
    }
    for (k, inj) in scenario.injects.iter().enumerate() {
        if inj.respond_within_s.is_none()
            || injects[k].refused.is_some()
            || gone.unsent.contains(&k)
        {
            continue;
        }
        let Some(v) = views.get(k).and_then(Option::as_ref) else {
            return false;
        };
        let rows = v["recipients"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        // With its sender's node down for good, no acknowledgement can reach it any more,
        // but its recipients up still give theirs, at their own nodes, as the report counts
        // them ([`view_at_rest`] fills them in): each is waited for, unless its recipient is
        // down for good too and nothing of its own is on its way ([`Gone::settled`]), or
        // the message can never reach it ([`Gone::never_reaches`]: nothing is required of
        // it, as the report has it).
        let sender_gone = gone.down.contains(&inj.from);
        let id = injects[k].id.as_deref().unwrap_or_default();
        let given = |r: &Value| {
            r["acked_at_ms"].is_u64()
                || (sender_gone && r["recipient_acked_at_ms"].is_u64())
                || gone.never_reaches(&inj.from, id, r)
                || r["recipient"].as_str().is_some_and(|p| {
                    !in_drill(p)
                        || scenario.expects_unacknowledged(k, p, roster, harnessed)
                        || (sender_gone && gone.settled(p, id))
                })
        };
        if !rows.iter().all(given) {
            return false;
        }
    }
    true
}

/// The view of an inject's message whose sender's node is down for good, from its store at
/// rest (`gone.rest`), as the report reads it at the end: its table stops where its node
/// went down, for no delivered receipt can reach it any more, so a recipient's delivery is
/// filled in from the recipient's own node where it is up and holds the message (the
/// report scores delivery from the recipient's inbox), and so is its acknowledgement, as
/// `recipient_acked_at_ms` (when its node recorded it; the report counts an acknowledgement
/// required of a sender down to the end as given when the recipient's node holds it). None
/// when its store was not read, or holds no such message.
async fn view_at_rest(
    clients: &BTreeMap<String, ApiClient>,
    gone: &Gone,
    from: &str,
    inject: &Inject,
) -> Option<Value> {
    let id = inject.id.as_ref()?;
    let mut v = gone.rest.get(from)?.sent.get(id)?.clone();
    for r in v["recipients"].as_array_mut().into_iter().flatten() {
        if r["delivered_at_ms"].is_u64() && r["acked_at_ms"].is_u64() {
            continue;
        }
        let Some(c) = r["recipient"]
            .as_str()
            .filter(|p| !gone.down.contains(*p))
            .and_then(|p| clients.get(p))
            .cloned()
        else {
            continue;
        };
        let path = format!("/v1/messages/{id}");
        if let Ok(Ok(m)) = tokio::task::spawn_blocking(move || c.get(&path)).await {
            if m["direction"] == "received" && m["received_at_ms"].is_u64() {
                if !r["delivered_at_ms"].is_u64() {
                    r["delivered_at_ms"] = m["received_at_ms"].clone();
                }
                r["recipient_acked_at_ms"] = m["acknowledged_at_ms"].clone();
            }
        }
    }
    Some(v)
}

/// The sender's node's view of an inject's message (`GET /v1/messages/{id}`: its delivery
/// table), or None when the inject has no id yet, the drill has no client for its sender,
/// or the node does not answer.
async fn sender_view(
    clients: &BTreeMap<String, ApiClient>,
    from: &str,
    inject: &Inject,
) -> Option<Value> {
    let (Some(id), Some(c)) = (&inject.id, clients.get(from)) else {
        return None;
    };
    let (c, id) = (c.clone(), id.clone());
    match tokio::task::spawn_blocking(move || c.get(&format!("/v1/messages/{id}"))).await {
        Ok(Ok(v)) => Some(v),
        _ => None,
    }
}

fn progress_line(
    scenario: &Scenario,
    now: Duration,
    injects: &[Inject],
    shown: &HashMap<(String, String), u32>,
    down: &HashSet<String>,
    nodes: usize,
) -> String {
    let t = now.as_secs_f64() * scenario.time_compression;
    let sent = injects.iter().filter(|i| i.id.is_some()).count();
    format!(
        "  scenario t={:>5.0}s ({:02}:{:02})  injects {sent}/{}  messages shown {}  nodes up {}/{nodes}   ",
        t,
        (t / 60.0) as u64,
        (t % 60.0) as u64,
        injects.len(),
        shown.len(),
        nodes - down.len(),
    )
}

/// Stops the nodes, then the relay, at the drill's end, and notes in `exits` how each
/// ended; except those a fault took down and nothing brought back (`down`, `relay_down`),
/// whose end `exits` holds already, as the fault found it. Stopped again, such a process
/// was noted a second time, "had already ended … at the drill's end", as if it had died
/// by itself, and counted twice.
async fn stop_at_end(
    nodes: &mut BTreeMap<String, Proc>,
    relay: &mut Proc,
    down: &HashSet<String>,
    relay_down: bool,
    exits: &mut Vec<report::ProcessEnd>,
) {
    let end = "at the drill's end";
    for (p, n) in nodes.iter_mut().filter(|(p, _)| !down.contains(*p)) {
        let (exit, before) = n.stop(STOP_GRACE).await;
        exits.push(report::ProcessEnd {
            process: format!("node {p}"),
            when: end.to_owned(),
            exit,
            before,
        });
    }
    if relay_down {
        return;
    }
    let (exit, before) = relay.stop(STOP_GRACE).await;
    exits.push(report::ProcessEnd {
        process: "relay".to_owned(),
        when: end.to_owned(),
        exit,
        before,
    });
}

/// SIGKILLs `p` (`process`: `relay`, `node KAZ`) for a fault at scenario time `at_s`, and
/// notes in `exits` how it ended: killed, or, if it had already ended (a crash during the
/// drill), how.
fn kill_for_fault(p: &mut Proc, process: &str, at_s: f64, exits: &mut Vec<report::ProcessEnd>) {
    let before = p.exit();
    // One still there after SIGKILL (stuck in the kernel) is noted so: an unclean end, which
    // fails the drill; `kill9` logged it.
    let killed = p.kill9();
    exits.push(report::ProcessEnd {
        process: process.to_owned(),
        when: format!("for a fault at {at_s:.1} s"),
        exit: before.or_else(|| p.exit()).unwrap_or(match killed {
            Ok(()) => crate::process::Exit::Killed,
            Err(_) => crate::process::Exit::NotGone,
        }),
        before: before.is_some(),
    });
}

/// Starts the relay for the `n`-th time (its log is `relay-{n}.log`).
async fn start_relay(opts: &RunOptions, dep: &Deployment, n: u32) -> anyhow::Result<Proc> {
    dep.start_relay(&opts.bin, &format!("relay-{n}.log"), START_TIMEOUT)
        .await
}

/// Where a `restore_relay` fault keeps its backup, in the drill's directory.
const RELAY_BACKUP: &str = "relay-backup.db";

/// `hotline backup` of the relay's store beside the running relay, as an operator runs it;
/// its line of output.
async fn backup_relay(opts: &RunOptions, dep: &Deployment) -> anyhow::Result<String> {
    let data = dep.relay_data.as_os_str();
    let out = dep.dir.join(RELAY_BACKUP);
    hotline_tool(
        opts,
        &[
            "backup".as_ref(),
            "--data".as_ref(),
            data,
            "--out".as_ref(),
            out.as_os_str(),
        ],
    )
    .await
}

/// The (killed) relay's disk is lost: a new, empty data directory gets the backup, with
/// `hotline restore` as an operator runs it; its output.
async fn restore_relay(opts: &RunOptions, dep: &Deployment) -> anyhow::Result<String> {
    let data = &dep.relay_data;
    std::fs::remove_dir_all(data).with_context(|| format!("removing {}", data.display()))?;
    std::fs::create_dir(data).with_context(|| format!("making {}", data.display()))?;
    let from = dep.dir.join(RELAY_BACKUP);
    hotline_tool(
        opts,
        &[
            "restore".as_ref(),
            "--from".as_ref(),
            from.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
        ],
    )
    .await
}

/// Runs `hotline ARGS` to completion (within [`START_TIMEOUT`]); its standard output, or
/// an error with its standard error.
async fn hotline_tool(opts: &RunOptions, args: &[&std::ffi::OsStr]) -> anyhow::Result<String> {
    let name = args
        .first()
        .map_or_else(String::new, |a| a.to_string_lossy().into_owned());
    let run = tokio::process::Command::new(&opts.bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let done = tokio::time::timeout(START_TIMEOUT, run)
        .await
        .with_context(|| format!("hotline {name} did not finish in time"))?
        .with_context(|| format!("running hotline {name}"))?;
    if !done.status.success() {
        anyhow::bail!(
            "hotline {name} failed ({}): {}",
            done.status,
            String::from_utf8_lossy(&done.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&done.stdout).trim().to_owned())
}

/// Starts node `p` for the `n`-th time (its log is `node-{p}-{n}.log`).
fn spawn_node(opts: &RunOptions, dep: &Deployment, p: &str, n: u32) -> anyhow::Result<Proc> {
    dep.spawn_node(&opts.bin, p, &format!("node-{p}-{n}.log"))
}

/// What the sweep reads of a node's inbox to catch arrivals whose `message_received` event
/// the drill missed (a node's restart, a stream reopened, an announcement `recovered` at
/// start-up): every message not yet acknowledged, page after page. The first page alone,
/// the newest thousand, missed an arrival listed further down: one of a burst of more than
/// a thousand (a node back from a fault, its queue delivered at once before the drill's
/// event stream reopened), or a delivery released from quarantine, listed by when it first
/// arrived. Those acknowledged are left to the store to skip: in a drill the harness
/// deploys only the scripted operators acknowledge, and the harness schedules a message's
/// acknowledgement and answer together ([`schedule_ack`], [`schedule_reply`]), so one
/// acknowledged has had both scheduled, and its sweeps stay as long as what is pending.
fn sweep_inbox<E: From<String>>(get: impl FnMut(&str) -> Result<Page, E>) -> Result<Vec<Value>, E> {
    every_page(get, "/v1/inbox?unacknowledged=true")
}

/// A page of a list as the API answers it ([`hotline_node::client::ApiClient::get_page`]):
/// its items, and the path of the next page while the list goes on.
type Page = (Value, Option<String>);

/// Every item of the list at `path` (newest first), page after page, through `get`,
/// following each page's next (its `Link: rel="next"`) until a page has none: a list
/// answers at most `API_LIST_MAX` items a page, and a final picture read from its first
/// page alone counted the messages beyond it (a drill of more than a thousand messages to
/// one node, a live node's busy inbox) as never held. A page may be shorter than that
/// while more remain (a page stops at `API_PAGE_BYTES_MAX`, about fifteen of the largest
/// messages): one read until a page was short stopped there, and the sweep missed every
/// arrival listed after it. An empty page ends the list whatever it says, so that a next
/// that goes nowhere cannot keep the read going. A node of a release before the pages'
/// `Link` names no next: a full page of `API_LIST_MAX` from it is read on after its last
/// item (`?before=ID`), as it was before (a live drill may drive deployed nodes of another
/// release); from a later node that costs one empty page at most. A page that lists again
/// an item an earlier page listed ends the read with an error: a node that ignores
/// `?before=` (of a release before it, `hotline inbox` knows of them) answers the newest
/// page again after a full one, and a `Link` naming the page it came with, or an earlier
/// one, would do the same; each was read for ever, holding 1,000 more items each time.
fn every_page<E: From<String>>(
    mut get: impl FnMut(&str) -> Result<Page, E>,
    first: &str,
) -> Result<Vec<Value>, E> {
    let mut all = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut path = first.to_owned();
    loop {
        let (page, next) = get(&path)?;
        let page = page.as_array().cloned().unwrap_or_default();
        for id in page.iter().filter_map(|m| m["id"].as_str()) {
            if !seen.insert(id.to_owned()) {
                return Err(E::from(format!(
                    "{path} listed again message {id}, listed on an earlier page (a node \
                     that ignores ?before=, or whose pages' Link goes back): read no further"
                )));
            }
        }
        let full = page.len() >= hotline_node::limits::API_LIST_MAX;
        let last = page
            .last()
            .and_then(|m| m["id"].as_str())
            .map(str::to_owned);
        all.extend(page);
        // A path with a query of its own (`?unacknowledged=true`) takes the cursor after it.
        let sep = if first.contains('?') { '&' } else { '?' };
        match (next, last) {
            (Some(next), Some(_)) => path = next,
            (None, Some(id)) if full => path = format!("{first}{sep}before={id}"),
            _ => return Ok(all),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drill's sends carry keys the node takes (1 to 128 visible ASCII characters), the
    /// same for every attempt at one send, and another for each other send and drill run:
    /// a retry is answered with the message stored, and never stands for another.
    #[test]
    fn a_drills_idempotency_keys_fit_and_name_one_send_each() {
        let (run, other) = (
            hotline_node::client::fresh_idempotency_key(),
            hotline_node::client::fresh_idempotency_key(),
        );
        assert_ne!(run, other);
        let id = "01a24959d3dea751f3ecc15ac117eaf5";
        let keys = [
            inject_key(&run, 0),
            inject_key(&run, usize::MAX),
            inject_key(&other, 0),
            reply_key(&run, id),
            reply_key(&other, id),
        ];
        for k in &keys {
            assert!(
                (1..=hotline_node::limits::IDEMPOTENCY_KEY_BYTES_MAX).contains(&k.len())
                    && k.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'),
                "{k}"
            );
        }
        let distinct: HashSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:?}");
        assert_eq!(inject_key(&run, 0), inject_key(&run, 0));
    }

    /// The final picture reads a list to its end, page after page: 2,345 inbox items are
    /// 2,345, not the first page's 1,000 (the rest counted as never held). And pages cut
    /// short by their bytes (here of 7 items) are followed as long as they name a next one:
    /// a read that stopped at the first short page saw 7 of them.
    #[test]
    fn a_list_is_read_to_its_end_page_after_page() {
        let ids: Vec<String> = (0..2_345).rev().map(|n| format!("{n:032x}")).collect();
        for page in [hotline_node::limits::API_LIST_MAX, 7] {
            let mut asked = Vec::new();
            let all = every_page(
                |path| -> Result<Page, String> {
                    asked.push(path.to_owned());
                    let from = match path.split_once("?before=") {
                        Some((_, id)) => ids.iter().position(|i| i == id).ok_or("no such id")? + 1,
                        None => 0,
                    };
                    let items: Vec<Value> = ids[from..]
                        .iter()
                        .take(page)
                        .map(|id| json!({ "id": id }))
                        .collect();
                    let next = (from + items.len() < ids.len())
                        .then(|| format!("/v1/inbox?before={}", ids[from + items.len() - 1]));
                    Ok((Value::Array(items), next))
                },
                "/v1/inbox",
            )
            .expect("read");
            assert_eq!(all.len(), ids.len());
            assert_eq!(
                all.last().map(|m| m["id"].clone()),
                ids.last().map(|i| json!(i))
            );
            assert_eq!(asked.len(), ids.len().div_ceil(page), "{asked:?}");
        }
        // An error on a page is the read's.
        let mut n = 0;
        let e = every_page(
            |_| {
                n += 1;
                if n == 1 {
                    Ok((
                        Value::Array(vec![json!({"id": "a"})]),
                        Some("/v1/inbox?before=a".to_owned()),
                    ))
                } else {
                    Err("gone".to_owned())
                }
            },
            "/v1/inbox",
        );
        assert_eq!(e, Err("gone".to_owned()));
        // A node from before the pages' `Link` is read on after a full page, and to the end.
        let page = hotline_node::limits::API_LIST_MAX;
        let mut asked = Vec::new();
        let all = every_page(
            |path| -> Result<Page, String> {
                asked.push(path.to_owned());
                let from = match path.split_once("&before=") {
                    Some((_, id)) => ids.iter().position(|i| i == id).ok_or("no such id")? + 1,
                    None => 0,
                };
                let items = ids[from..].iter().take(page).map(|id| json!({ "id": id }));
                Ok((Value::Array(items.collect()), None))
            },
            "/v1/inbox?unacknowledged=true",
        )
        .expect("read");
        assert_eq!(all.len(), ids.len(), "{asked:?}");
        assert_eq!(asked.len(), 3, "{asked:?}");
        // An empty page ends the read, whatever next it names.
        let mut n = 0;
        let all = every_page(
            |_| -> Result<Page, String> {
                n += 1;
                assert!(n < 3, "asked again after an empty page");
                Ok((Value::Array(vec![]), Some("/v1/inbox".to_owned())))
            },
            "/v1/inbox",
        )
        .expect("read");
        assert!(all.is_empty());
    }

    /// A list that gives again what it gave ends the read with an error, never a read
    /// without end: a node whose `Link` names the page it answers, or an earlier one, and a
    /// node of a release before `?before=` on the inbox (which the CLI knows of,
    /// `ignored_cursor`), which ignores it and answers the newest page again after a full
    /// one. Each read the same page of 1,000 for ever, holding more each time.
    #[test]
    fn a_list_that_lists_again_what_it_listed_is_refused_not_read_for_ever() {
        let page = |from: usize, n: usize| -> Value {
            (from..from + n)
                .map(|i| json!({ "id": format!("{i:032x}") }))
                .collect()
        };
        let full = hotline_node::limits::API_LIST_MAX;
        let same = format!("/v1/inbox?before={:032x}", full - 1);
        for (what, next) in [
            ("a Link to the same page", Some(same.as_str())),
            ("a node that ignores ?before=", None),
        ] {
            let mut asked = 0;
            let read = every_page(
                |_| -> Result<Page, String> {
                    asked += 1;
                    if asked > 5 {
                        return Err("asked for ever".to_owned());
                    }
                    Ok((page(0, full), next.map(str::to_owned)))
                },
                "/v1/inbox",
            );
            let e = read.expect_err(what);
            assert!(e.contains("listed again"), "{what}: {e}");
            assert_eq!(asked, 2, "{what}");
        }
        // Two pages naming each other.
        let mut asked = 0;
        let read = every_page(
            |path| -> Result<Page, String> {
                asked += 1;
                if asked > 5 {
                    return Err("asked for ever".to_owned());
                }
                Ok(match path.contains("before=") {
                    false => (page(0, 3), Some("/v1/inbox?before=2".to_owned())),
                    true => (page(3, 3), Some("/v1/inbox".to_owned())),
                })
            },
            "/v1/inbox",
        );
        let e = read.expect_err("a cycle");
        assert!(e.contains("listed again"), "{e}");
        assert_eq!(asked, 3);
    }

    /// An inject whose send got no answer, its sender's node then down for good, is learnt
    /// from that node's store, read-only, by the send's `Idempotency-Key`: SEC's node stored
    /// "a" before its answer was lost, so "a" is sent, with that message's id and time, and
    /// scored as any other (it was reported "never sent", though its node may have relayed
    /// it); it stored nothing under "b"'s key, so "b" was never sent, and the report can say
    /// how it knows; KAZ's store cannot be read (its node never made one), so whether "c"
    /// was sent is not known. In live mode the drill reads no store: not known either.
    #[test]
    fn a_send_with_no_answer_is_learnt_from_its_nodes_store_by_its_key() {
        use hotline_node::store::{Composed, Draft, Idempotency, NodeStore};
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut dep = Deployment::create(&tmp.path().join("dep"), crate::scenario::CICA_ROSTER)
            .expect("deployment");
        for p in ["SEC", "KAZ"] {
            let relay = dep.relay_addr;
            dep.add_node(p, relay, DRILL_PAGING_MS).expect("node");
        }
        let sc = Scenario::parse(
            "name = \"t\"\nend_s = 10.0\n\
             [[injects]]\nname = \"a\"\nat_s = 0.0\nfrom = \"SEC\"\nto = [\"KAZ\"]\nsubject = \"s\"\n\
             [[injects]]\nname = \"b\"\nat_s = 1.0\nfrom = \"SEC\"\nto = [\"KAZ\"]\nsubject = \"s\"\n\
             [[injects]]\nname = \"c\"\nat_s = 1.0\nfrom = \"KAZ\"\nto = [\"SEC\"]\nsubject = \"s\"\n\
             [[objectives]]\nname = \"o\"\ninject = \"a\"\nexpect = \"delivered\"\n",
            "t.toml",
        )
        .expect("parses");
        let kaz = hotline_proto::ParticipantId::new("KAZ").expect("id");
        let id = {
            // As SEC's node made it before it went down (KAZ's never started).
            let data = &dep.nodes["SEC"].data_dir;
            std::fs::create_dir_all(data).expect("data dir");
            let mut store = NodeStore::open(data).expect("store");
            let draft = Draft {
                audience: hotline_proto::Audience::Participants(vec![kaz.clone()]),
                kind: hotline_proto::Kind::Alert,
                precedence: hotline_proto::Precedence::Routine,
                status: hotline_proto::Status::Exercise,
                respond_by_ms: None,
                references: vec![],
                category: None,
                subject: "s".into(),
                body: String::new(),
            };
            let idem = Idempotency {
                key: inject_key("run", 0),
                request: hotline_proto::Digest([1; 32]),
            };
            let me = hotline_proto::ParticipantId::new("SEC").expect("id");
            let key = hotline_proto::SigningKey::from_bytes(&[1; 32]);
            match store.compose_keyed(&me, &key, draft, &[kaz], 1, 5_000, &idem) {
                Ok(Ok(Composed::New(signed))) => {
                    signed.decode_unverified().expect("decodes").id.to_string()
                }
                _ => panic!("composes"),
            }
        };
        let unanswered = || {
            ["a", "b", "c"].map(|_| Inject {
                id: None,
                sent_at_ms: None,
                refused: None,
                unanswered: Some("no answer in time".to_owned()),
            })
        };
        let down = HashSet::from(["SEC".to_owned(), "KAZ".to_owned()]);
        let mut injects = unanswered();
        let learnt = learn_unanswered(&mut injects, &sc, "run", Some(&dep), &down, |_| true);
        assert_eq!(injects[0].id.as_deref(), Some(id.as_str()));
        assert_eq!(injects[0].sent_at_ms, Some(5_000));
        assert!(!learnt.contains_key(&0), "{learnt:?}");
        assert!(
            matches!(learnt.get(&1), Some(report::NoAnswer::NotStored { error }) if error == "no answer in time"),
            "{learnt:?}"
        );
        assert!(
            matches!(learnt.get(&2), Some(report::NoAnswer::Unknown { why, .. })
                if why.starts_with("its node went down for good, and its store could not be read (")),
            "{learnt:?}"
        );
        assert!(injects[1].id.is_none() && injects[2].id.is_none());
        // Only those asked for are looked up.
        let mut injects = unanswered();
        let learnt = learn_unanswered(&mut injects, &sc, "run", Some(&dep), &down, |i| i == 1);
        assert!(injects[0].id.is_none());
        assert_eq!(learnt.keys().copied().collect::<Vec<_>>(), [1]);
        // The early end's sweep, SEC alone down for good: "a" is sent, "b" never was and is
        // not looked up again, KAZ's "c" is not looked up (its node may still answer).
        let mut gone = Gone {
            down: HashSet::from(["SEC".to_owned()]),
            ..Gone::default()
        };
        let mut injects = unanswered();
        gone.read_keys(&mut injects, &sc, "run", &dep);
        assert_eq!(injects[0].id.as_deref(), Some(id.as_str()));
        assert_eq!(gone.keys_read, HashSet::from([1]));
        assert!(injects[2].id.is_none() && injects[2].unanswered.is_some());
        // Live mode: no store is read, and nothing is known.
        let mut injects = unanswered();
        let learnt = learn_unanswered(&mut injects, &sc, "run", None, &down, |_| true);
        assert!(injects[0].id.is_none());
        assert!(
            learnt
                .values()
                .all(|na| matches!(na, report::NoAnswer::Unknown { .. })),
            "{learnt:?}"
        );
    }

    /// A node that is up at the end but whose API fails when the drill reads its inbox
    /// is not counted as holding nothing: its store is read instead, as a down node's is,
    /// and if that cannot be read either, its deliveries are not known. Its inbox was
    /// counted as empty, every message to it "lost", "KAZ never held it".
    #[tokio::test(flavor = "multi_thread")]
    async fn an_up_node_whose_api_fails_at_the_end_has_not_lost_its_messages() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut dep = Deployment::create(&tmp.path().join("dep"), crate::scenario::CICA_ROSTER)
            .expect("deployment");
        for p in ["SEC", "KAZ"] {
            let relay = dep.relay_addr;
            dep.add_node(p, relay, DRILL_PAGING_MS).expect("node");
        }
        // Nothing answers at either node's API: a port bound, then let go.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port");
        let clients: BTreeMap<String, ApiClient> = ["SEC", "KAZ"]
            .map(|p| (p.to_owned(), ApiClient::new(&dead.to_string(), "token")))
            .into();
        let sc = Scenario::parse(
            &referring("[[objectives]]\nname = \"o\"\ninject = \"a\"\nexpect = \"delivered\"\n"),
            "refs.toml",
        )
        .expect("parses");
        let injects = [Inject {
            id: Some("m1".to_owned()),
            sent_at_ms: Some(1000),
            refused: None,
            unanswered: None,
        }];
        // SEC's record of the message, as its node would have shown it: accepted.
        let view = json!({
            "created_at_ms": 1000, "accepted_at_ms": 1001, "state": "accepted",
            "recipients": [{"recipient": "KAZ", "delivered_at_ms": 1500, "acked_at_ms": null, "overdue_at_ms": null}],
            "answers": [], "delivered": 1, "acknowledged": 0,
        });
        let participants = vec!["SEC".to_owned(), "KAZ".to_owned()];
        let score = |picture: Picture| {
            report::score(report::Inputs {
                scenario: &sc,
                seed: 1,
                dir: tmp.path(),
                started_at_ms: 1000,
                wall_s: 1.0,
                participants: &participants,
                live: false,
                roster: &dep.roster,
                injects: vec![report::Sent {
                    inject: sc.injects[0].clone(),
                    id: Some("m1".into()),
                    sent_at_ms: Some(1000),
                    refused: None,
                    no_answer: None,
                }],
                sent_views: vec![view.clone()],
                at_rest: picture.at_rest,
                api_failed: picture.api_failed,
                unrelayed: HashSet::new(),
                inboxes: picture.inboxes,
                shown: HashMap::new(),
                hooks: None,
                faults: vec![],
                proxies: BTreeMap::new(),
                checks: None,
                exits: None,
            })
            .expect("scores")
        };
        let up = HashSet::new();
        let picture = || final_picture(&sc, &injects, &clients, &up, Some(&dep));
        // KAZ's store cannot be read (its node never made one): not known, not lost.
        let r = score(picture().await.expect("read"));
        let summary = report::summary(&r);
        assert_eq!(r.messages_lost, 0, "{summary}");
        let o = &r.objectives[0];
        assert!(
            !o.met
                && o.failed.len() == 1
                && o.failed[0].starts_with("KAZ: not known whether it held it"),
            "{o:?}"
        );
        let kaz = r.participants.iter().find(|p| p.id == "KAZ").expect("KAZ");
        let read = kaz.inbox_read.as_deref().unwrap_or_default();
        assert!(read.contains("its API failed at the end"), "{read}");
        let lost = r
            .invariants
            .iter()
            .find(|x| x.name == "zero accepted messages lost")
            .expect("the invariant");
        assert!(
            !lost.held
                && lost.detail.contains("1 not known")
                && lost.detail.contains("KAZ: its API failed at the end ("),
            "{lost:?}"
        );
        assert!(!r.passed, "{summary}");

        // A store it can read is read: what it holds is what the report finds (here,
        // nothing: lost, and said to have been read from the store).
        let kaz_dir = &dep.nodes["KAZ"].data_dir;
        crate::deploy::create_dir_private(kaz_dir).expect("KAZ's data directory");
        drop(hotline_node::store::NodeStore::open(kaz_dir).expect("an empty store"));
        let r = score(picture().await.expect("read"));
        let kaz = r.participants.iter().find(|p| p.id == "KAZ").expect("KAZ");
        let read = kaz.inbox_read.as_deref().unwrap_or_default();
        assert!(
            read.starts_with("read from its store; its API failed at the end"),
            "{read}"
        );
        assert_eq!(r.messages_lost, 1, "{}", report::summary(&r));
    }

    /// A sender whose API fails when its inbox is read at the end, and whose store cannot
    /// be read instead (live mode here: the drill reads no store), is still asked over its
    /// API for each message it sent, as before: one call failing (a long inbox past the
    /// client's timeout, a node briefly busy) does not make the others fail. What it sent was
    /// dropped unasked, its inject reported `unknown`, "sent, but SEC's node's API failed
    /// at the end", though its node answered for it.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_sender_whose_inbox_read_fails_is_still_asked_what_it_sent() {
        use std::io::{Read as _, Write as _};
        let view = json!({
            "id": "m1", "direction": "sent", "created_at_ms": 1000, "accepted_at_ms": 1001,
            "state": "delivered", "answers": [],
            "recipients": [{"recipient": "KAZ", "delivered_at_ms": 1500, "acked_at_ms": null, "overdue_at_ms": null}],
        });
        // SEC's node: its inbox fails (500), its message is there.
        let api = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = api.local_addr().expect("address").to_string();
        let body = view.to_string();
        std::thread::spawn(move || {
            for s in api.incoming() {
                let Ok(mut s) = s else { return };
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).is_ok_and(|n| n == 1) {
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head);
                let (status, answer) = if head.starts_with("GET /v1/messages/m1 ") {
                    ("200 OK", body.clone())
                } else {
                    (
                        "500 Internal Server Error",
                        r#"{"error":"storage","message":"busy"}"#.to_owned(),
                    )
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        let clients: BTreeMap<String, ApiClient> =
            BTreeMap::from([("SEC".to_owned(), ApiClient::new(&addr, "token"))]);
        let sc = Scenario::parse(&referring(""), "refs.toml").expect("parses");
        let injects = [Inject {
            id: Some("m1".to_owned()),
            sent_at_ms: Some(1000),
            refused: None,
            unanswered: None,
        }];
        let picture = final_picture(&sc, &injects, &clients, &HashSet::new(), None)
            .await
            .expect("read");
        assert!(
            picture.api_failed.contains_key("SEC"),
            "{:?}",
            picture.api_failed
        );
        assert_eq!(picture.sent_views[0], view);
    }

    /// A node's inbox as its API lists it, newest first, a page of at most `page` items at
    /// a time (`API_LIST_MAX`, or fewer as a page cut at its bytes), each naming the next
    /// while more remain: `?before=ID` continues after ID, `unacknowledged=true` keeps those
    /// not yet acknowledged. Each path asked is pushed to `asked`.
    fn inbox_api<'a>(
        items: &'a [Value],
        page: usize,
        asked: &'a mut Vec<String>,
    ) -> impl FnMut(&str) -> Result<Page, String> + 'a {
        move |path| {
            asked.push(path.to_owned());
            let (base, query) = path.split_once('?').unwrap_or((path, ""));
            assert_eq!(base, "/v1/inbox");
            let mut before = None;
            let mut unacked = false;
            for kv in query.split('&').filter(|kv| !kv.is_empty()) {
                match kv.split_once('=') {
                    Some(("before", id)) => before = Some(id.to_owned()),
                    Some(("unacknowledged", "true")) => unacked = true,
                    _ => return Err(format!("unknown parameter {kv}")),
                }
            }
            let from = match before {
                Some(id) => {
                    items
                        .iter()
                        .position(|m| m["id"] == id.as_str())
                        .ok_or("no such id")?
                        + 1
                }
                None => 0,
            };
            let mut listed = items[from..]
                .iter()
                .filter(|m| !unacked || m["acknowledged"] != json!(true));
            let page: Vec<Value> = listed.by_ref().take(page).cloned().collect();
            let more = listed.next().is_some();
            let next = match (more, page.last()) {
                (true, Some(last)) => Some(format!(
                    "/v1/inbox?{}before={}",
                    if unacked { "unacknowledged=true&" } else { "" },
                    last["id"].as_str().ok_or("no id")?
                )),
                _ => None,
            };
            Ok((Value::Array(page), next))
        }
    }

    /// The sweep that catches arrivals whose event the drill missed reads past the inbox's
    /// first page. It read that page alone, the newest thousand messages: an arrival
    /// listed further down was never seen, its scripted acknowledgement never scheduled,
    /// and the drill waited for it to `end_s`, then failed it. Listed further down: one of
    /// a burst of more than a thousand (a node back from a fault, its queue delivered at
    /// once, the first of them announced before the drill's event stream reopened), or a
    /// delivery released from quarantine, listed by when it first arrived.
    ///
    /// A page may be shorter than `API_LIST_MAX` while more remain (cut at its bytes, here
    /// at 300 items): the sweep read on only after a full page, and saw the first 300.
    #[test]
    fn the_sweep_sees_an_arrival_beyond_the_first_page() {
        for page in [hotline_node::limits::API_LIST_MAX, 300] {
            the_sweep_sees_an_arrival_beyond_the_first_page_of(page);
        }
    }

    fn the_sweep_sees_an_arrival_beyond_the_first_page_of(page: usize) {
        let id = |n: usize| format!("{n:032x}");
        // 2,345 messages, newest first; the harness acknowledged all but the oldest, whose
        // event it missed.
        let mut items: Vec<Value> = (1..2_345)
            .rev()
            .map(|n| json!({"id": id(n), "acknowledged": true, "kind": "alert"}))
            .collect();
        items.push(json!({"id": id(0), "acknowledged": false, "kind": "alert"}));
        let mut asked = Vec::new();
        let seen = sweep_inbox(inbox_api(&items, page, &mut asked)).expect("read");
        assert!(
            seen.iter().any(|m| m["id"] == id(0).as_str()),
            "the oldest, unacknowledged, was not seen: asked {asked:?}"
        );
        // A burst of 1,500 arrivals none yet acknowledged: every one is seen, page after page.
        let burst: Vec<Value> = (0..1_500)
            .rev()
            .map(|n| json!({"id": id(n), "acknowledged": false, "kind": "alert"}))
            .collect();
        let mut asked = Vec::new();
        let seen = sweep_inbox(inbox_api(&burst, page, &mut asked)).expect("read");
        assert_eq!(seen.len(), burst.len(), "asked {asked:?}");
        assert!(
            asked.len() >= 2 && asked.len() <= 1 + burst.len() / page,
            "{asked:?}"
        );
    }

    /// Two nodes; an inject from a third participant, and faults on participants with and
    /// without a node.
    const STRAYS: &str = r#"
name = "strays"
end_s = 5.0
participants = ["SEC", "KAZ"]
[[injects]]
name = "a"
at_s = 0.5
from = "SEC"
to = ["KAZ"]
subject = "s"
[[injects]]
name = "b"
at_s = 0.0
from = "KGZ"
to = ["SEC"]
subject = "s"
[[faults]]
kind = "kill_node"
participant = "TJK"
at_s = 1.0
restart_after_s = 1.0
[[faults]]
kind = "offline"
participant = "KAZ"
from_s = 1.0
to_s = 2.0
[[faults]]
kind = "impair"
participant = "UZB"
loss = 0.1
[[objectives]]
name = "o"
inject = "a"
expect = "delivered"
"#;

    fn options(dir: &std::path::Path, live: Option<Live>) -> RunOptions {
        RunOptions {
            // Never started: the drill must be refused before it starts anything.
            bin: dir.join("no-such-hotline"),
            out_dir: Some(dir.join("out")),
            seed: Some(1),
            speedup: 1.0,
            progress: false,
            live,
        }
    }

    /// Every inject's sender and every fault's participant needs a node, checked before the
    /// relay starts; it used to be checked when the inject was due, ending the drill midway.
    #[tokio::test]
    async fn a_drill_naming_participants_without_nodes_is_refused_before_it_starts() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sc = Scenario::parse(STRAYS, "strays.toml").expect("parses");
        let e = run(sc, options(tmp.path(), None))
            .await
            .expect_err("refused");
        let e = format!("{e:#}");
        for part in [
            "inject \"b\" is sent by KGZ",
            "fault 1 (kill_node) is on TJK",
            "fault 3 (impair) is on UZB",
            "its nodes: SEC, KAZ",
        ] {
            assert!(e.contains(part), "{part}: {e}");
        }
        assert!(!e.contains("(offline)"), "KAZ has a node: {e}");
        assert!(!tmp.path().join("out/relay-0.log").exists(), "{e}");
    }

    /// In live mode a sender without an entry in the endpoints file is refused before any
    /// node is called: nothing is sent, nothing even connects. Faults are not injected there,
    /// so their participants need no entry.
    #[tokio::test]
    async fn a_live_drill_with_a_sender_without_an_endpoint_sends_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let roster = Deployment::create(&tmp.path().join("dep"), crate::scenario::CICA_ROSTER)
            .expect("deployment")
            .roster;
        // SEC's "node": a socket that would see any call the harness made to it.
        let api = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        api.set_nonblocking(true).expect("nonblocking");
        let addr = api.local_addr().expect("address").to_string();
        let live = Live {
            roster,
            clients: BTreeMap::from([("SEC".to_owned(), ApiClient::new(&addr, "token"))]),
        };
        let sc = Scenario::parse(STRAYS, "strays.toml").expect("parses");
        let e = run(sc, options(tmp.path(), Some(live)))
            .await
            .expect_err("refused");
        let e = format!("{e:#}");
        assert!(e.contains("endpoints file"), "{e}");
        assert!(e.contains("inject \"b\" is sent by KGZ"), "{e}");
        assert!(e.contains("its nodes: SEC"), "{e}");
        assert!(
            !e.contains("TJK"),
            "faults are not checked in live mode: {e}"
        );
        assert!(
            matches!(api.accept(), Err(ref x) if x.kind() == std::io::ErrorKind::WouldBlock),
            "the harness called SEC's node before refusing the drill"
        );
    }

    /// A directory holding an earlier drill's report is refused before anything is sent:
    /// the report is written as new files at the end, so a live drill sent all its traffic
    /// to the deployment, then failed to write its report, and lost it.
    #[tokio::test]
    async fn a_directory_holding_a_report_is_refused_before_the_drill() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let roster = Deployment::create(&tmp.path().join("dep"), crate::scenario::CICA_ROSTER)
            .expect("deployment")
            .roster;
        // SEC's node: a socket that would see any call the harness made to it.
        let api = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        api.set_nonblocking(true).expect("nonblocking");
        let addr = api.local_addr().expect("address").to_string();
        let live = Live {
            roster,
            clients: BTreeMap::from([("SEC".to_owned(), ApiClient::new(&addr, "token"))]),
        };
        let opts = options(tmp.path(), Some(live));
        let out = opts.out_dir.clone().expect("an --out");
        std::fs::create_dir_all(&out).expect("out");
        std::fs::write(out.join("report.json"), "{}").expect("an earlier report");
        let sc = Scenario::parse(&referring(""), "refs.toml").expect("parses");
        let e = format!("{:#}", run(sc, opts).await.expect_err("refused"));
        assert!(
            e.contains("already holds a drill's report") && e.contains("report.json"),
            "{e}"
        );
        assert!(
            matches!(api.accept(), Err(ref x) if x.kind() == std::io::ErrorKind::WouldBlock),
            "the harness called SEC's node before refusing the drill"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("report.json")).expect("kept"),
            "{}"
        );
    }

    /// `--out` a directory whose name is not UTF-8, for a simulated drill: the deployment
    /// refused it, but only after the drill had made it, so an empty directory was left
    /// behind by a refusal that says "nothing was written". It is refused before it is made.
    #[tokio::test]
    async fn a_drill_directory_whose_name_is_not_utf8_is_refused_before_it_is_made() {
        use std::os::unix::ffi::OsStrExt as _;
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut opts = options(tmp.path(), None);
        let out = tmp.path().join(std::ffi::OsStr::from_bytes(b"drill\xff"));
        opts.out_dir = Some(out.clone());
        let sc = Scenario::parse(&referring(""), "refs.toml").expect("parses");
        let e = format!("{:#}", run(sc, opts).await.expect_err("refused"));
        assert!(e.contains("not UTF-8"), "{e}");
        assert!(!out.exists(), "the refused directory was made: {e}");
    }

    /// The default drill directory is made anew with mode 0700: a symbolic link or a
    /// directory planted at its predictable name is left alone and another name used, and a
    /// scenario name cannot lead out of the temporary directory.
    #[test]
    fn the_drill_directory_is_new_private_and_never_a_planted_one() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().expect("tempdir");
        let victim = tmp.path().join("victim");
        std::fs::create_dir(&victim).expect("victim");
        let planted = tmp.path().join("hotline-exercise-drill-7");
        std::os::unix::fs::symlink(&victim, &planted).expect("link");

        let dir = create_run_dir(tmp.path(), "drill", 7).expect("created");
        assert_ne!(dir, planted);
        assert_eq!(dir.parent(), Some(tmp.path()));
        let meta = std::fs::symlink_metadata(&dir).expect("metadata");
        assert!(meta.is_dir(), "a directory, not a link");
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::read_dir(&victim).expect("victim").count(), 0);
        // A directory already there (another run's, or someone else's) is not reused.
        let again = create_run_dir(tmp.path(), "drill", 7).expect("created");
        assert!(again != dir && again != planted, "{}", again.display());

        let odd = create_run_dir(tmp.path(), "../../etc/x y", 7).expect("created");
        assert_eq!(odd.parent(), Some(tmp.path()));
        assert_eq!(
            odd.file_name().and_then(|n| n.to_str()),
            Some("hotline-exercise-______etc_x_y-7")
        );
    }

    /// SEC asks KAZ and KGZ to acknowledge within 10 s; every other recipient is to
    /// acknowledge, and every one not acknowledging in time to be escalated (the shape of
    /// the built-in `silent-member`).
    const SILENT: &str = r#"
name = "silent"
end_s = 60.0
participants = ["SEC", "KAZ", "KGZ"]
[[injects]]
name = "alert"
at_s = 0.0
from = "SEC"
to = ["KAZ", "KGZ"]
subject = "s"
respond_within_s = 10.0
[[objectives]]
name = "acknowledged"
inject = "alert"
expect = "acknowledged"
except = ["KGZ"]
[[objectives]]
name = "escalated"
inject = "alert"
expect = "overdue_escalated"
"#;

    /// A drill with no objective left to decide ends early only once every inject its node
    /// took is accepted and delivered to its recipients in the drill: it ended as soon as
    /// the last one was sent, and the report, read then, failed "every inject accepted" (the
    /// sender's node had not heard the relay's answer yet) or "zero accepted messages lost"
    /// (a recipient's node had not received it yet).
    #[test]
    fn the_early_end_waits_for_every_inject_to_be_accepted_and_delivered() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let roster = Deployment::create(&tmp.path().join("dep"), crate::scenario::CICA_ROSTER)
            .expect("deployment")
            .roster;
        let sc = Scenario::parse(
            "name = \"plain\"\nend_s = 60.0\nparticipants = [\"SEC\", \"KAZ\", \"KGZ\"]\n\
             [[injects]]\nname = \"alert\"\nat_s = 0.0\nfrom = \"SEC\"\nto = [\"KAZ\", \"KGZ\"]\nsubject = \"s\"\n",
            "plain.toml",
        )
        .expect("parses");
        let nodes: HashSet<String> = ["SEC", "KAZ"].map(String::from).into_iter().collect();
        let injects = [Inject {
            id: Some("m1".to_owned()),
            sent_at_ms: Some(1000),
            refused: None,
            unanswered: None,
        }];
        // KGZ has no node in this drill: its row is not waited for.
        let view = |accepted: Option<u64>, kaz: Option<u64>| {
            json!({
                "created_at_ms": 1000, "accepted_at_ms": accepted,
                "recipients": [
                    {"recipient": "KAZ", "delivered_at_ms": kaz},
                    {"recipient": "KGZ", "delivered_at_ms": null},
                ],
            })
        };
        for (v, want) in [
            (None, false),
            (Some(view(None, None)), false),
            (Some(view(Some(1001), None)), false),
            (Some(view(Some(1001), Some(1500))), true),
        ] {
            let case = format!("{v:?}");
            let early = decided(
                &sc,
                &injects,
                &[v],
                None,
                Some(&nodes),
                &Gone::default(),
                &roster,
            );
            assert_eq!(early, want, "{case}");
        }
        // A refused inject is decided: it will never be accepted.
        let refused = [Inject {
            id: None,
            sent_at_ms: None,
            refused: Some("HTTP 400".to_owned()),
            unanswered: None,
        }];
        assert!(decided(
            &sc,
            &refused,
            &[None],
            None,
            Some(&nodes),
            &Gone::default(),
            &roster
        ));
    }

    /// The drill ends early exactly when the report would find every objective met: both
    /// read the same rows by one definition. For `overdue_escalated`, the early end counted
    /// a recipient that acknowledged as done, and an overdue one whose hook had not run
    /// yet, while the report failed the first and the second; and it waited for recipients
    /// outside an objective's scope (KGZ, left out of "acknowledged", kept the drill to its
    /// end).
    #[test]
    fn the_early_end_and_the_report_agree_on_every_objective() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let roster = Deployment::create(&tmp.path().join("dep"), crate::scenario::CICA_ROSTER)
            .expect("deployment")
            .roster;
        let sc = Scenario::parse(SILENT, "silent.toml").expect("parses");
        let participants: Vec<String> = ["SEC", "KAZ", "KGZ"].map(String::from).to_vec();
        let nodes: HashSet<String> = participants.iter().cloned().collect();
        let hooked =
            || HashMap::from([("SEC".to_owned(), vec![("m1".to_owned(), "KGZ".to_owned())])]);
        let unhooked = || HashMap::from([("SEC".to_owned(), vec![])]);
        // KGZ's row: (acked_at_ms, overdue_at_ms), and the sender's hook records.
        for (kgz_acked, kgz_overdue, hooks, met) in [
            (None, Some(11_000u64), hooked(), true),
            (Some(12_000u64), Some(11_000), hooked(), true),
            (Some(5_000), None, unhooked(), true),
            (None, Some(11_000), unhooked(), false),
            (None, None, unhooked(), false),
        ] {
            let view = json!({
                "created_at_ms": 1000, "accepted_at_ms": 1001, "state": "accepted",
                "recipients": [
                    {"recipient": "KAZ", "delivered_at_ms": 1500, "acked_at_ms": 3000, "overdue_at_ms": null},
                    {"recipient": "KGZ", "delivered_at_ms": 1600, "acked_at_ms": kgz_acked, "overdue_at_ms": kgz_overdue},
                ],
                "answers": [],
            });
            let case = format!("KGZ acked {kgz_acked:?} overdue {kgz_overdue:?} hooks {hooks:?}");
            let injects = [Inject {
                id: Some("m1".to_owned()),
                sent_at_ms: Some(1000),
                refused: None,
                unanswered: None,
            }];
            let early = decided(
                &sc,
                &injects,
                &[Some(view.clone())],
                Some(&hooks),
                Some(&nodes),
                &Gone::default(),
                &roster,
            );
            let item = |at: u64| json!({"id": "m1", "received_at_ms": at, "status": "exercise", "exercise_or_test": true});
            let r = report::score(report::Inputs {
                scenario: &sc,
                seed: 1,
                dir: tmp.path(),
                started_at_ms: 1000,
                wall_s: 1.0,
                participants: &participants,
                live: false,
                roster: &roster,
                injects: vec![report::Sent {
                    inject: sc.injects[0].clone(),
                    id: Some("m1".into()),
                    sent_at_ms: Some(1000),
                    refused: None,
                    no_answer: None,
                }],
                sent_views: vec![view],
                at_rest: BTreeMap::new(),
                api_failed: BTreeMap::new(),
                unrelayed: HashSet::new(),
                inboxes: BTreeMap::from([
                    ("SEC".to_owned(), vec![]),
                    ("KAZ".to_owned(), vec![item(1500)]),
                    ("KGZ".to_owned(), vec![item(1600)]),
                ]),
                shown: HashMap::new(),
                hooks: Some(hooks),
                faults: vec![],
                proxies: BTreeMap::new(),
                checks: None,
                exits: None,
            })
            .expect("scores");
            let all_met = r.objectives.iter().all(|o| o.met);
            assert_eq!(all_met, met, "{case}: {:?}", r.objectives);
            assert_eq!(
                early, met,
                "{case}: the early end disagrees with the report"
            );
            assert_eq!(r.passed, met, "{case}: {}", report::summary(&r));
        }
    }

    /// A fault that keeps a node down to the end leaves no action in the timeline past
    /// `end_s`: its restart, due after the end, kept the timeline from ever running out, so
    /// the drill never ended early, whatever was decided.
    #[test]
    fn nothing_due_after_the_end_is_in_the_timeline() {
        let sc = Scenario::parse(DOWN_TO_THE_END, "down.toml").expect("parses");
        let end = sc.wall(sc.end_s);
        let t = timeline(&sc, true);
        assert!(
            t.iter().all(|(at, _)| *at < end),
            "an action at or after the end"
        );
        assert!(
            t.iter()
                .any(|(_, a)| matches!(a, Action::StopNode(p) if p == "MNG")),
            "MNG still goes offline"
        );
        assert!(!t.iter().any(|(_, a)| matches!(a, Action::StartNode(_))));
    }

    /// A drill in which MNG goes offline to the end: an alert to KAZ and MNG, to be
    /// delivered and acknowledged.
    const DOWN_TO_THE_END: &str = r#"
name = "down"
end_s = 60.0
participants = ["SEC", "KAZ", "MNG"]
[behaviour.default]
ack_after_s = 1.0
[[injects]]
name = "alert"
at_s = 0.0
from = "SEC"
to = ["KAZ", "MNG"]
subject = "s"
respond_within_s = 10.0
[[faults]]
kind = "offline"
participant = "MNG"
from_s = 1.0
to_s = 60.0
[[objectives]]
name = "delivered"
inject = "alert"
expect = "delivered"
[[objectives]]
name = "acknowledged"
inject = "alert"
expect = "acknowledged"
"#;

    /// A recipient whose node a fault keeps down to the end, and whose operator the harness
    /// never asked to acknowledge or answer the message, is decided as it stands by the
    /// early end: nothing of its own about that message can still reach the sender, and the
    /// report reads its inbox from its store at rest, which nothing changes while it is
    /// down. It kept the drill running to `end_s` when everything else was decided. One
    /// whose operator was asked to acknowledge is still waited for: that acknowledgement may
    /// be on its way. The report agrees: MNG fails both objectives if its store does not
    /// hold the message; if it does, MNG held it (not lost), and fails only the
    /// acknowledgement.
    #[test]
    fn a_recipient_down_for_good_is_decided_as_lost() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let roster = Deployment::create(&tmp.path().join("dep"), crate::scenario::CICA_ROSTER)
            .expect("deployment")
            .roster;
        let sc = Scenario::parse(DOWN_TO_THE_END, "down.toml").expect("parses");
        let participants: Vec<String> = ["SEC", "KAZ", "MNG"].map(String::from).to_vec();
        let nodes: HashSet<String> = participants.iter().cloned().collect();
        let view = json!({
            "created_at_ms": 1000, "accepted_at_ms": 1001, "state": "accepted",
            "recipients": [
                {"recipient": "KAZ", "delivered_at_ms": 1500, "acked_at_ms": 3000, "overdue_at_ms": null},
                {"recipient": "MNG", "delivered_at_ms": null, "acked_at_ms": null, "overdue_at_ms": null},
            ],
            "answers": [],
        });
        let injects = [Inject {
            id: Some("m1".to_owned()),
            sent_at_ms: Some(1000),
            refused: None,
            unanswered: None,
        }];
        let early = |gone: &Gone| {
            decided(
                &sc,
                &injects,
                &[Some(view.clone())],
                None,
                Some(&nodes),
                gone,
                &roster,
            )
        };
        assert!(!early(&Gone::default()), "MNG is up: waited for");
        let mut gone = Gone {
            down: HashSet::from(["MNG".to_owned()]),
            ..Gone::default()
        };
        assert!(early(&gone), "MNG down for good, nothing of its on its way");
        gone.acted.insert(("MNG".to_owned(), "m1".to_owned()));
        assert!(!early(&gone), "its acknowledgement may be on its way");

        let item = json!({"id": "m1", "received_at_ms": 1500, "status": "exercise", "exercise_or_test": true});
        let score = |mng: Vec<Value>| {
            report::score(report::Inputs {
                scenario: &sc,
                seed: 1,
                dir: tmp.path(),
                started_at_ms: 1000,
                wall_s: 1.0,
                participants: &participants,
                live: false,
                roster: &roster,
                injects: vec![report::Sent {
                    inject: sc.injects[0].clone(),
                    id: Some("m1".into()),
                    sent_at_ms: Some(1000),
                    refused: None,
                    no_answer: None,
                }],
                sent_views: vec![view.clone()],
                // MNG's node is down: its inbox is read from its store at rest.
                at_rest: BTreeMap::from([("MNG".to_owned(), Ok(()))]),
                api_failed: BTreeMap::new(),
                unrelayed: HashSet::new(),
                inboxes: BTreeMap::from([
                    ("SEC".to_owned(), vec![]),
                    ("KAZ".to_owned(), vec![item.clone()]),
                    ("MNG".to_owned(), mng),
                ]),
                shown: HashMap::new(),
                hooks: None,
                faults: vec![],
                proxies: BTreeMap::new(),
                checks: None,
                exits: None,
            })
            .expect("scores")
        };
        let r = score(vec![]);
        for o in &r.objectives {
            assert!(
                !o.met && o.failed.iter().all(|f| f.starts_with("MNG never")),
                "{o:?}"
            );
        }
        assert_eq!(r.messages_lost, 1);
        // Its store holds it: delivered, not lost; never acknowledged.
        let r = score(vec![item.clone()]);
        assert_eq!(r.messages_lost, 0);
        assert!(r.objectives[0].met, "{:?}", r.objectives[0]);
        assert_eq!(r.objectives[1].failed, ["MNG never acknowledged"]);
    }

    /// A message whose sender's node a fault keeps down to the end is decided as it
    /// stands, but for a delivery its relay may still make: never accepted, it cannot be
    /// delivered while its sender is down; accepted, it is waited for at each recipient
    /// (the view then fills its deliveries in from the recipients' own nodes); its
    /// acknowledgements can no longer reach the sender, and are not waited for there, but
    /// at each recipient up, at its own node. Such a drill waited for them to `end_s`.
    #[test]
    fn a_message_whose_sender_is_down_for_good_is_decided_as_it_stands() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let roster = Deployment::create(&tmp.path().join("dep"), crate::scenario::CICA_ROSTER)
            .expect("deployment")
            .roster;
        let sc = Scenario::parse(DOWN_TO_THE_END, "down.toml").expect("parses");
        let nodes: HashSet<String> = ["SEC", "KAZ", "MNG"].map(String::from).into();
        let injects = [Inject {
            id: Some("m1".to_owned()),
            sent_at_ms: Some(1000),
            refused: None,
            unanswered: None,
        }];
        let row = |p: &str, delivered: Option<u64>| json!({"recipient": p, "delivered_at_ms": delivered, "acked_at_ms": null, "overdue_at_ms": null});
        let view = |accepted: Option<u64>, kaz: Option<u64>, mng: Option<u64>| {
            json!({
                "created_at_ms": 1000, "accepted_at_ms": accepted, "state": "sent",
                "recipients": [row("KAZ", kaz), row("MNG", mng)], "answers": [],
            })
        };
        let early = |v: Value, gone: &Gone| {
            decided(&sc, &injects, &[Some(v)], None, Some(&nodes), gone, &roster)
        };
        let sec_gone = Gone {
            down: HashSet::from(["SEC".to_owned()]),
            ..Gone::default()
        };
        // Never accepted, as its store has it: its relay may still have it, and deliver it.
        let v = view(None, None, None);
        assert!(!early(v.clone(), &Gone::default()), "SEC up: waited for");
        assert!(
            !early(v, &sec_gone),
            "SEC down for good, never accepted as its store has it: its relay may deliver it"
        );
        // Accepted: MNG's delivery may still come.
        assert!(!early(view(Some(1001), Some(1500), None), &sec_gone));
        // Delivered to both, acknowledged by neither: no acknowledgement can reach SEC, but
        // KAZ (up) still gives the one required at its own node, and is waited for there
        // (MNG is offline to the end: not required).
        let v = view(Some(1001), Some(1500), Some(1600));
        assert!(
            !early(v.clone(), &Gone::default()),
            "SEC up: acknowledgements waited for"
        );
        assert!(
            !early(v.clone(), &sec_gone),
            "KAZ's own acknowledgement waited for"
        );
        let mut v = v;
        v["recipients"][0]["recipient_acked_at_ms"] = json!(3000);
        assert!(early(v, &sec_gone));
        // Never sent, and never to be: failed for good, as a refused inject is.
        let unsent = [Inject {
            id: None,
            sent_at_ms: None,
            refused: None,
            unanswered: None,
        }];
        let never = |gone: &Gone| decided(&sc, &unsent, &[None], None, Some(&nodes), gone, &roster);
        assert!(!never(&sec_gone), "still to be sent: waited for");
        let gone = Gone {
            unsent: HashSet::from([0]),
            ..sec_gone
        };
        assert!(never(&gone));
    }

    /// A message whose sender's node is down for good still requires its recipients'
    /// acknowledgements (the report's invariant counts one given at the recipient's node,
    /// whose receipt can no longer reach the sender): the early end waits, at each recipient
    /// up, for its own node to record it (the view fills it in as `recipient_acked_at_ms`,
    /// [`view_at_rest`]). It ended once the deliveries were in, while KAZ's scripted
    /// acknowledgement was not yet made, and the report failed "KAZ never acknowledged". MNG,
    /// offline to the end, is not required to acknowledge.
    #[test]
    fn a_down_senders_message_waits_for_its_recipients_own_acknowledgements() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let roster = Deployment::create(&tmp.path().join("dep"), crate::scenario::CICA_ROSTER)
            .expect("deployment")
            .roster;
        let sc = Scenario::parse(DOWN_TO_THE_END, "down.toml").expect("parses");
        let nodes: HashSet<String> = ["SEC", "KAZ", "MNG"].map(String::from).into();
        let injects = [Inject {
            id: Some("m1".to_owned()),
            sent_at_ms: Some(1000),
            refused: None,
            unanswered: None,
        }];
        let view = |kaz_acked: Option<u64>| {
            json!({
                "created_at_ms": 1000, "accepted_at_ms": 1001, "state": "sent",
                "recipients": [
                    {"recipient": "KAZ", "delivered_at_ms": 1500, "acked_at_ms": null, "overdue_at_ms": null, "recipient_acked_at_ms": kaz_acked},
                    {"recipient": "MNG", "delivered_at_ms": 1600, "acked_at_ms": null, "overdue_at_ms": null},
                ],
                "answers": [],
            })
        };
        let sec_gone = Gone {
            down: HashSet::from(["SEC".to_owned()]),
            ..Gone::default()
        };
        let early = |v: Value| {
            decided(
                &sc,
                &injects,
                &[Some(v)],
                None,
                Some(&nodes),
                &sec_gone,
                &roster,
            )
        };
        assert!(!early(view(None)), "KAZ is up and may still acknowledge");
        assert!(early(view(Some(4000))), "KAZ acknowledged at its node");
    }

    /// A message its sender's store never recorded as accepted may still be delivered: the
    /// sender can be killed in the instant between its relay storing the message and the
    /// acceptance reaching it, and the relay delivers it all the same. The report scores a
    /// `delivered` objective from the recipients' inboxes, so such a delivery changes the
    /// outcome: the drill waits for it at each recipient whose node is up (the view then
    /// fills it in from the recipient's own node), as it does for one accepted. It ended at
    /// once, and failed "KAZ never held it" for a message KAZ was about to hold.
    #[test]
    fn a_message_never_recorded_accepted_by_a_sender_down_for_good_is_waited_for() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let roster = Deployment::create(&tmp.path().join("dep"), crate::scenario::CICA_ROSTER)
            .expect("deployment")
            .roster;
        let sc = Scenario::parse(DOWN_TO_THE_END, "down.toml").expect("parses");
        let nodes: HashSet<String> = ["SEC", "KAZ", "MNG"].map(String::from).into();
        let injects = [Inject {
            id: Some("m1".to_owned()),
            sent_at_ms: Some(1000),
            refused: None,
            unanswered: None,
        }];
        // Each acknowledged at its own node once it held it (the acknowledgement it requires
        // is waited for there: `a_down_senders_message_waits_for_its_recipients_own_acknowledgements`).
        let row = |p: &str, delivered: Option<u64>| json!({"recipient": p, "delivered_at_ms": delivered, "acked_at_ms": null, "overdue_at_ms": null, "recipient_acked_at_ms": delivered});
        // Never accepted, as SEC's store at rest has it.
        let view = |kaz: Option<u64>, mng: Option<u64>| {
            json!({
                "created_at_ms": 1000, "accepted_at_ms": null, "state": "sent",
                "recipients": [row("KAZ", kaz), row("MNG", mng)], "answers": [],
            })
        };
        let early = |v: Value, gone: &Gone| {
            decided(&sc, &injects, &[Some(v)], None, Some(&nodes), gone, &roster)
        };
        let sec_gone = Gone {
            down: HashSet::from(["SEC".to_owned()]),
            ..Gone::default()
        };
        assert!(
            !early(view(None, None), &sec_gone),
            "KAZ and MNG up, their deliveries may still come"
        );
        assert!(
            !early(view(Some(1500), None), &sec_gone),
            "MNG's delivery may still come"
        );
        assert!(
            early(view(Some(1500), Some(1600)), &sec_gone),
            "both hold it"
        );
        // MNG down for good too, its operator never asked: KAZ's delivery decides.
        let both_gone = Gone {
            down: HashSet::from(["SEC".to_owned(), "MNG".to_owned()]),
            ..Gone::default()
        };
        assert!(!early(view(None, None), &both_gone));
        assert!(early(view(Some(1500), None), &both_gone));
    }

    /// A message that never left its sender (SEC, down for good, went down before its relay
    /// accepted it: its store has it as not accepted, and the relay's store lacks it, read
    /// once no session of SEC's was live there) can never be delivered, nor acknowledged:
    /// neither its `delivered` objective nor the acknowledgement it requires of KAZ, who is
    /// up, is waited for. The drill waited for them to `end_s`, though nothing could send
    /// the message any more. Where the relay did take it, or KAZ holds it (a relay restored
    /// from a backup without it delivered it first), they are waited for, as before.
    #[test]
    fn a_message_that_never_left_a_sender_down_for_good_is_not_waited_for() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let roster = Deployment::create(&tmp.path().join("dep"), crate::scenario::CICA_ROSTER)
            .expect("deployment")
            .roster;
        let nodes: HashSet<String> = ["SEC", "KAZ", "MNG"].map(String::from).into();
        let injects = [Inject {
            id: Some("m1".to_owned()),
            sent_at_ms: Some(1000),
            refused: None,
            unanswered: None,
        }];
        // Never accepted, as SEC's store at rest has it; MNG is offline to the end.
        let view = |kaz: Option<u64>| {
            json!({
                "created_at_ms": 1000, "accepted_at_ms": null, "state": "sent",
                "recipients": [
                    {"recipient": "KAZ", "delivered_at_ms": kaz, "acked_at_ms": null, "overdue_at_ms": null, "recipient_acked_at_ms": null},
                    {"recipient": "MNG", "delivered_at_ms": null, "acked_at_ms": null, "overdue_at_ms": null},
                ],
                "answers": [],
            })
        };
        let mut gone = Gone {
            down: HashSet::from(["SEC".to_owned(), "MNG".to_owned()]),
            ..Gone::default()
        };
        // Its `delivered` objective, and the acknowledgement it requires, each on its own.
        let delivered = DOWN_TO_THE_END.replace(
            "[[objectives]]\nname = \"acknowledged\"\ninject = \"alert\"\nexpect = \"acknowledged\"\n",
            "",
        );
        let required = delivered.replace(
            "[[objectives]]\nname = \"delivered\"\ninject = \"alert\"\nexpect = \"delivered\"\n",
            "",
        );
        assert_ne!(delivered, DOWN_TO_THE_END);
        assert_ne!(required, delivered);
        for text in [&delivered, &required] {
            let sc = Scenario::parse(text, "down.toml").expect("parses");
            let early = |v: Value, gone: &Gone| {
                decided(&sc, &injects, &[Some(v)], None, Some(&nodes), gone, &roster)
            };
            assert!(
                !early(view(None), &gone),
                "the relay not looked up yet (a session of SEC's live there): waited for\n{text}"
            );
            gone.unrelayed.insert("m1".to_owned());
            assert!(
                early(view(None), &gone),
                "the relay lacks it: it can never reach KAZ\n{text}"
            );
            // KAZ holds it (the relay delivered it, then lost it to a restore): KAZ's
            // acknowledgement may still come.
            if text == &required {
                assert!(!early(view(Some(1500)), &gone), "{text}");
            }
            gone.unrelayed.clear();
        }
    }

    /// Whether the relay has a session of a participant live, read from its log: one
    /// authenticated and not yet ended, by connection (a newer one may authenticate before
    /// the older one's end is logged).
    #[test]
    fn a_live_relay_session_is_read_from_the_relay_log() {
        let lines = |ls: &[&str]| ls.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>();
        let auth = |p: &str, c: u32| {
            format!(
                "2026-12-06T02:00:00Z  INFO authenticated peer={p} conn={c} remote=127.0.0.1:4000"
            )
        };
        let ended =
            |p: &str, c: u32| format!("2026-12-06T02:00:01Z  INFO session ended peer={p} conn={c}");
        assert!(!relay_session_live(&[], "SEC"));
        let log = lines(&[&auth("SEC", 1), &auth("KAZ", 2)]);
        assert!(relay_session_live(&log, "SEC"));
        assert!(!relay_session_live(&log, "MNG"));
        let log = lines(&[&auth("SEC", 1), &auth("SEC", 3), &ended("SEC", 1)]);
        assert!(relay_session_live(&log, "SEC"), "conn 3 is live");
        let log = lines(&[
            &auth("SEC", 1),
            &auth("SEC", 3),
            &ended("SEC", 1),
            &ended("SEC", 3),
        ]);
        assert!(!relay_session_live(&log, "SEC"));
        assert!(!relay_session_live(&lines(&[&auth("SECX", 1)]), "SEC"));
    }

    /// An inject waiting for a sender down for good is never sent, nor one that references
    /// it, through others or not; another from a node up is still to be sent.
    #[test]
    fn injects_whose_sender_is_down_for_good_are_never_sent() {
        let text = referring(
            "[[injects]]\nname = \"b\"\nat_s = 1.0\nfrom = \"KAZ\"\nto = [\"SEC\"]\nsubject = \"s\"\nkind = \"update\"\nreferences = \"a\"\n\
             [[injects]]\nname = \"c\"\nat_s = 2.0\nfrom = \"KAZ\"\nto = [\"SEC\"]\nsubject = \"s\"\nkind = \"update\"\nreferences = \"b\"\n\
             [[injects]]\nname = \"d\"\nat_s = 2.0\nfrom = \"KAZ\"\nto = [\"SEC\"]\nsubject = \"s\"\n",
        );
        let sc = Scenario::parse(&text, "refs.toml").expect("parses");
        let down = HashSet::from(["SEC".to_owned()]);
        assert_eq!(
            unsendable(&sc, &[0, 1, 2, 3], &down),
            HashSet::from([0, 1, 2])
        );
        assert_eq!(
            unsendable(&sc, &[1, 3], &down),
            HashSet::new(),
            "a was sent"
        );
        assert_eq!(
            unsendable(&sc, &[0, 1, 2, 3], &HashSet::new()),
            HashSet::new()
        );
    }

    /// An objective with no one in its scope is refused before anything starts, naming it
    /// and how it narrows its inject's recipients: a group none of whom the inject
    /// addresses, an `except` leaving out every recipient, or (in a drill the harness
    /// deploys) recipients none of whom has a node. Such an objective could never be met:
    /// the drill never found it decided, ran to `end_s`, and failed it with no reason given.
    #[tokio::test]
    async fn an_objective_with_no_one_in_scope_is_refused_before_it_starts() {
        let objective = |narrowing: &str| {
            format!("[[objectives]]\nname = \"o\"\ninject = \"a\"\nexpect = \"delivered\"\n{narrowing}\n")
        };
        for (text, wanted) in [
            (
                // The disaster-management coordinator is IRN alone.
                referring(&objective("group = \"disaster-management\"")),
                "scenario refs.toml: objective \"o\": no recipient of inject \"a\" is in its scope (group \"disaster-management\"; the inject addresses KAZ, by the roster, version 1): it could never be met",
            ),
            (
                referring(&objective("except = [\"KAZ\"]")),
                "scenario refs.toml: objective \"o\": no recipient of inject \"a\" is in its scope (except KAZ; the inject addresses KAZ,",
            ),
            (
                referring(&objective("except = [\"KAZ\"]"))
                    .replace("to = [\"KAZ\"]", "to = [\"KAZ\", \"UZB\"]"),
                "scenario refs: objective \"o\" takes in UZB alone, but the drill has no node for it (its nodes: SEC, KAZ)",
            ),
        ] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let sc = Scenario::parse(&text, "refs.toml").expect("parses");
            let e = run(sc, options(tmp.path(), None))
                .await
                .expect_err("refused");
            let e = format!("{e:#}");
            assert!(e.contains(wanted), "{wanted}: {e}");
        }
    }

    /// A node a fault took down for good (offline to the end, or killed and restarted only
    /// after it) is not stopped a second time at the drill's end: its end is noted once,
    /// as the fault found it. It was noted again, "had already ended … when the drill came
    /// to stop it at the drill's end", as if it had died by itself, and counted twice
    /// among the node processes.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_node_down_at_the_end_is_noted_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sh = |exit: u8, log: &str| {
            let script = format!(
                "trap 'kill $!; exit {exit}' TERM; sleep 30 >/dev/null 2>&1 & echo ready >&2; wait"
            );
            Proc::spawn(
                std::path::Path::new("/bin/sh"),
                &["-c", &script],
                tmp.path(),
                log,
            )
            .expect("spawned")
        };
        let ready = Duration::from_secs(10);
        let mut nodes = BTreeMap::new();
        for (id, exit) in [("KAZ", 0), ("MNG", 3), ("THA", 0)] {
            let mut p = sh(exit, &format!("{id}.log"));
            p.wait_log("ready", ready).await.expect("ready");
            nodes.insert(id.to_owned(), p);
        }
        let mut relay = sh(0, "relay.log");
        relay.wait_log("ready", ready).await.expect("ready");
        let mut exits = Vec::new();
        let mut down = HashSet::new();
        // MNG goes offline to the end (and exits 3 when stopped); THA is killed to the end.
        let mng = nodes.get_mut("MNG").expect("MNG");
        let (exit, before) = mng.stop(STOP_GRACE).await;
        exits.push(report::ProcessEnd {
            process: "node MNG".into(),
            when: "for its offline fault at 1.0 s".into(),
            exit,
            before,
        });
        down.insert("MNG".to_owned());
        kill_for_fault(
            nodes.get_mut("THA").expect("THA"),
            "node THA",
            2.0,
            &mut exits,
        );
        down.insert("THA".to_owned());

        stop_at_end(&mut nodes, &mut relay, &down, false, &mut exits).await;
        let seen: Vec<(String, String, bool)> = exits
            .iter()
            .map(|e| (e.process.clone(), e.exit.to_string(), e.before))
            .collect();
        assert_eq!(
            seen,
            [
                ("node MNG", "exit code 3", false),
                ("node THA", "killed by a fault (SIGKILL)", false),
                ("node KAZ", "exit code 0", false),
                ("relay", "exit code 0", false),
            ]
            .map(|(p, e, b)| (p.to_owned(), e.to_owned(), b))
            .to_vec()
        );

        // The relay killed, its restart due after the end.
        let mut relay = sh(0, "relay-1.log");
        relay.wait_log("ready", ready).await.expect("ready");
        let mut exits = Vec::new();
        kill_for_fault(&mut relay, "relay", 3.0, &mut exits);
        stop_at_end(
            &mut BTreeMap::new(),
            &mut relay,
            &HashSet::new(),
            true,
            &mut exits,
        )
        .await;
        assert_eq!(exits.len(), 1, "{:?}", exits);
    }

    /// A two-node drill whose inject goes from SEC to KAZ, with `extra` appended.
    fn referring(extra: &str) -> String {
        format!(
            "name = \"refs\"\nend_s = 5.0\nparticipants = [\"SEC\", \"KAZ\"]\n[[injects]]\nname = \"a\"\nat_s = 0.0\nfrom = \"SEC\"\nto = [\"KAZ\"]\nsubject = \"s\"\n{extra}"
        )
    }

    /// Ids a scenario names are checked against the roster before anything starts, and an
    /// error names the scenario's file, the entry and the id: an objective's participant
    /// that is not on the roster, or that its inject does not address, and a behaviour for
    /// an unknown participant. They were silently dropped (the objective scored on fewer
    /// recipients, the behaviour applied to nobody). So are an objective's group and
    /// `except` (an unknown group left it with no one in scope, unmet with no reason given),
    /// and an inject's `to` and group, which its node refused only once it was due.
    #[tokio::test]
    async fn ids_a_scenario_names_are_checked_against_the_roster_before_it_starts() {
        let objective = |who: &str| {
            format!("[[objectives]]\nname = \"o\"\ninject = \"a\"\nexpect = \"acknowledged\"\nparticipants = [\"KAZ\", \"{who}\"]\n")
        };
        for (extra, wanted) in [
            (
                objective("XYZ"),
                "scenario refs.toml: objective \"o\": participant XYZ is not on the roster",
            ),
            (
                objective("UZB"),
                "scenario refs.toml: objective \"o\": participant UZB is not addressed by inject \"a\"",
            ),
            (
                "[behaviour.XYZ]\nnever_ack = true\n".to_owned(),
                "scenario refs.toml: behaviour.XYZ: XYZ is not on the roster",
            ),
            (
                "[[objectives]]\nname = \"o\"\ninject = \"a\"\nexpect = \"delivered\"\ngroup = \"disaster-managment\"\n".to_owned(),
                "scenario refs.toml: objective \"o\": group \"disaster-managment\" is not a group of the roster",
            ),
            (
                "[[objectives]]\nname = \"o\"\ninject = \"a\"\nexpect = \"delivered\"\nexcept = [\"KZA\"]\n".to_owned(),
                "scenario refs.toml: objective \"o\": except: KZA is not on the roster",
            ),
            (
                "[[injects]]\nname = \"b\"\nat_s = 1.0\nfrom = \"SEC\"\nto = [\"KAZ\", \"XYZ\"]\nsubject = \"s\"\n".to_owned(),
                "scenario refs.toml: inject \"b\": to: XYZ is not on the roster",
            ),
            (
                "[[injects]]\nname = \"b\"\nat_s = 1.0\nfrom = \"SEC\"\ngroup = \"no-such-group\"\nsubject = \"s\"\n".to_owned(),
                "scenario refs.toml: inject \"b\": group \"no-such-group\" is not a group of the roster",
            ),
        ] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let sc = Scenario::parse(&referring(&extra), "refs.toml").expect("parses");
            let e = run(sc, options(tmp.path(), None))
                .await
                .expect_err("refused");
            let e = format!("{e:#}");
            assert!(e.contains(wanted), "{wanted}: {e}");
            assert!(!tmp.path().join("out/relay-0.log").exists(), "{e}");
        }
        // An objective on a recipient the drill runs no node for could not be scored.
        let tmp = tempfile::tempdir().expect("tempdir");
        let sc = Scenario::parse(
            &referring("[[objectives]]\nname = \"o\"\ninject = \"a\"\nexpect = \"delivered\"\nparticipants = [\"UZB\"]\n")
                .replace("to = [\"KAZ\"]", "to = [\"KAZ\", \"UZB\"]"),
            "refs.toml",
        )
        .expect("parses");
        let e = format!(
            "{:#}",
            run(sc, options(tmp.path(), None))
                .await
                .expect_err("refused")
        );
        assert!(e.contains("objective \"o\" names UZB"), "{e}");
    }
}
