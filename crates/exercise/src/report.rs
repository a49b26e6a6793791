//! Scoring and the after-action report: terminal table, JSON, self-contained HTML.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};

use hotline_proto::{MessageId, ParticipantId, Role, Roster};

use crate::deploy::Deployment;
use crate::scenario::{Inject, Scenario};

/// One objective's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct ObjectiveResult {
    /// As in the scenario.
    pub name: String,
    /// Whether it holds.
    pub met: bool,
    /// Recipients in scope.
    pub in_scope: usize,
    /// What fell short, with why: each recipient that did, or the inject itself when its
    /// node refused it (`inject "x" refused by SEC's node: …`), which fails the objective
    /// with no recipient in scope.
    pub failed: Vec<String>,
    /// Recipients in its scope that a drill the harness deploys runs no node for, so that
    /// it could not score them: they neither meet nor fail it, and the report names them
    /// (a scope with none of its recipients on a node is refused before the drill starts).
    /// Always empty in live mode, which scores every recipient from its sender's table.
    pub unscored: Vec<String>,
}

/// One invariant's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Invariant {
    /// What must hold.
    pub name: String,
    /// Whether it does.
    pub held: bool,
    /// Figures.
    pub detail: String,
}

/// One participant's outcome for one inject.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    /// Addressed by the inject.
    pub addressed: bool,
    /// Scenario seconds from send to the recipient holding it (in live mode, for a recipient
    /// the drill has no endpoint for: to the sender holding its delivered receipt).
    pub delivered_s: Option<f64>,
    /// Scenario seconds from send to the sender holding the acknowledgement.
    pub acknowledged_s: Option<f64>,
    /// Scenario seconds from send to the recipient's own node recording its acknowledgement,
    /// where that acknowledgement never reached the sender, whose node a fault kept down to
    /// the end (`acknowledged_s` is then `None`): given, as the invariant "every
    /// acknowledgement required was given" counts it, though the sender never held it.
    pub acknowledged_at_node_s: Option<f64>,
    /// Scenario seconds from send to the sender holding the recipient's first answer (a
    /// message of its referencing the inject).
    pub answered_s: Option<f64>,
    /// Officer who acknowledged.
    pub officer: Option<String>,
    /// The respond-by passed unacknowledged.
    pub overdue: bool,
    /// Scenario seconds from send to the sender's node marking it overdue (its respond-by
    /// passed, unacknowledged), when that node says: where the timeline marks it.
    pub overdue_s: Option<f64>,
}

impl Cell {
    /// What the matrix shows of this cell, in the text summary and the HTML report alike:
    /// `·` when not addressed; else `delivered / acknowledged`, in scenario seconds after
    /// the inject was sent (`-`: never), an acknowledgement given at the recipient's node
    /// that never reached its sender (down at the end) as `6.00s at node`, and `OVERDUE`
    /// after them when the respond-by time passed unacknowledged. The summary showed such
    /// an acknowledgement as `-`, never given, and the HTML report in words of its own.
    pub fn text(&self) -> String {
        if !self.addressed {
            return "·".to_owned();
        }
        let acknowledged = match (self.acknowledged_s, self.acknowledged_at_node_s) {
            (None, Some(t)) => format!("{} at node", fmt_s(Some(t))),
            (a, _) => fmt_s(a),
        };
        format!(
            "{} / {acknowledged}{}",
            fmt_s(self.delivered_s),
            if self.overdue { " OVERDUE" } else { "" }
        )
    }
}

/// One participant's row.
#[derive(Clone, Debug, Serialize)]
pub struct ParticipantRow {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Per inject, in scenario order.
    pub cells: Vec<Cell>,
    /// Every objective that covers this participant holds for it.
    pub objectives_met: bool,
    /// Where its inbox was read from, when not from its node's API at the end: `read from
    /// its store; node down at the end`, `read from its store; its API failed at the end: …`,
    /// or `not read: …` with why its store could not be.
    pub inbox_read: Option<String>,
}

/// One inject's summary.
#[derive(Clone, Debug, Serialize)]
pub struct InjectRow {
    /// Name.
    pub name: String,
    /// Message id.
    pub id: Option<String>,
    /// Sender.
    pub from: String,
    /// Subject.
    pub subject: String,
    /// Precedence.
    pub precedence: String,
    /// Scenario time it was sent; if it was not (`id` is None), the time it was due.
    pub at_s: f64,
    /// State at the end, as the sender's node shows it: `refused` if it refused to send it,
    /// `not sent` if it never was, `unknown` if it was but its node gave no record of it at
    /// the end, or if a send of it got no answer and the drill could not learn whether its
    /// node stored it (`unanswered` says why).
    pub state: String,
    /// Why the sender's node refused to send it, if it did (the API's answer, HTTP 4xx).
    pub refused: Option<String>,
    /// What became of it when a send of it got no answer and the drill never learnt its id:
    /// `not known whether it was sent: its send got no answer (…), and …` (state `unknown`),
    /// or `never sent: …` when its node's store, read at rest, holds nothing under the
    /// send's key (state `not sent`).
    pub unanswered: Option<String>,
    /// Recipients.
    pub recipients: usize,
    /// Delivered count.
    pub delivered: usize,
    /// Acknowledged count.
    pub acknowledged: usize,
}

/// The after-action report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Scenario description.
    pub description: String,
    /// Impairment seed.
    pub seed: u64,
    /// Scenario seconds per wall-clock second.
    pub time_compression: f64,
    /// Wall-clock start, ms since the epoch.
    pub started_at_ms: u64,
    /// Wall-clock duration, s.
    pub wall_s: f64,
    /// Participants with a node in the drill; in live mode, also every recipient an inject
    /// addressed, scored from its sender's delivery table (see `Inputs::live`).
    pub participants: Vec<ParticipantRow>,
    /// Injects.
    pub injects: Vec<InjectRow>,
    /// Messages (injects) a relay accepted.
    pub messages_accepted: usize,
    /// Accepted messages missing from a recipient's inbox at the end.
    pub messages_lost: usize,
    /// Messages shown to an operator more than once.
    pub duplicates_shown: usize,
    /// The drill's messages (its injects, sent as `exercise`) shown with another status in
    /// a recipient's inbox. Other messages there, a live deployment's own traffic, are not
    /// counted.
    pub exercise_shown_as_actual: usize,
    /// Receipts whose signatures were checked / found invalid.
    pub receipts_checked: usize,
    /// Invalid receipts.
    pub receipts_invalid: usize,
    /// Faults applied, in order.
    pub faults: Vec<Value>,
    /// Link impairment counters.
    pub proxies: BTreeMap<String, crate::proxy::ProxyStats>,
    /// Objectives.
    pub objectives: Vec<ObjectiveResult>,
    /// Global invariants.
    pub invariants: Vec<Invariant>,
    /// Every objective and invariant holds.
    pub passed: bool,
    /// Where the files are.
    pub directory: PathBuf,
}

impl Report {
    /// Each node whose inbox the drill read from its store, or could not read at all (down
    /// at the end, or its API failing then), with why: the director needs it beside the
    /// matrix whose cells came from there (the text summary and the HTML report show it).
    pub fn inboxes_not_read_over_api(&self) -> Vec<(&str, &str)> {
        self.participants
            .iter()
            .filter_map(|p| p.inbox_read.as_deref().map(|w| (p.id.as_str(), w)))
            .collect()
    }
}

/// Store checks made after the processes stopped.
pub struct StoreChecks {
    /// Journal (name, entries or error).
    pub journals: Vec<(String, Result<u64, String>)>,
    /// Receipts checked, invalid.
    pub receipts: (usize, usize),
    /// Nodes whose received receipts could not be read, with the error: none of theirs was
    /// checked, which fails the receipt invariant rather than passing unseen.
    pub receipts_unread: Vec<(String, String)>,
    /// Nodes holding deliveries in quarantine at the end, with how many: with an honest relay
    /// and every node on the drill's roster, a genuine message addressed to a node never
    /// fails its checks there.
    pub quarantined: Vec<(String, u64)>,
}

/// Verifies every journal and every received receipt's signature against the roster.
/// Read-only: a check changes nothing in the stores it checks (SQLite may add a `-wal` and
/// `-shm` beside a store that lacked them, which a reader cannot remove; docs/OPERATIONS.md,
/// section 1).
pub fn check_stores(dep: &Deployment) -> anyhow::Result<StoreChecks> {
    let mut journals = Vec::new();
    let relay_db = dep.relay_data.join("relay.db");
    journals.push(("relay".to_owned(), verify_db(&relay_db)));
    let signed_roster = hotline_config::roster_file::read_verified_roster(
        &dep.dir.join("roster.signed"),
        &dep.roster_key,
    )?;
    let (mut checked, mut invalid) = (0, 0);
    let mut quarantined = Vec::new();
    let mut receipts_unread = Vec::new();
    for (id, n) in &dep.nodes {
        let db = n.data_dir.join("node.db");
        journals.push((id.clone(), verify_db(&db)));
        // Read-only, as `verify_db` reads: a read-write open brought an older store to this
        // release's schema, and its close folded the write-ahead log of a node killed at
        // the end into the file, so that the store was no longer what had been checked.
        match hotline_node::store::NodeReader::open(&n.data_dir) {
            Ok(store) => {
                match store.receipts_in() {
                    Ok(receipts) => {
                        for r in receipts {
                            checked += 1;
                            if signed_roster.verify_receipt(&r).is_err() {
                                invalid += 1;
                            }
                        }
                    }
                    Err(e) => receipts_unread.push((id.clone(), e.to_string())),
                }
                match store.quarantine_size() {
                    Ok(q) if q.held > 0 => quarantined.push((id.clone(), q.held)),
                    Ok(_) => {}
                    Err(e) => {
                        journals.push((format!("{id} quarantine"), Err(e.to_string())));
                    }
                }
            }
            Err(e) => journals.push((format!("{id} receipts"), Err(e.to_string()))),
        }
    }
    Ok(StoreChecks {
        journals,
        receipts: (checked, invalid),
        receipts_unread,
        quarantined,
    })
}

/// Which of the messages `ids` the relay's store (in `relay_data`) does not hold, read
/// read-only, as [`check_stores`] reads it. The relay stores a message before it answers
/// *accepted*, and keeps it for good: one it lacks, from a sender whose node is down for
/// good, it never took, and nothing can deliver it any more (provided nothing of that
/// sender's is still on its way to the relay: the caller makes sure of that). Why the store
/// could not be read, if it could not.
pub(crate) fn relay_lacks<'a>(
    relay_data: &Path,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<HashSet<String>, String> {
    let path = relay_data.join("relay.db");
    let conn = hotline_store::open_read_only(&path).map_err(|e| e.to_string())?;
    let mut out = HashSet::new();
    for id in ids {
        let mid: MessageId = id.parse().map_err(|e| format!("message id {id}: {e}"))?;
        let held = hotline_relay::report::track_one(&conn, &mid).map_err(|e| e.to_string())?;
        if held.is_none() {
            out.insert(id.to_owned());
        }
    }
    Ok(out)
}

/// Why a recipient never held a message, and never can: its sender's node went down, to
/// the end, before its relay accepted it ([`Inputs::unrelayed`]). One wording for the
/// objectives, the invariants and the early end's account of it.
pub(crate) fn never_left_why(sender: &str) -> String {
    format!("{sender} went down before its relay accepted it (node down at the end)")
}

/// Why an objective on `recipient`'s acknowledgement is not met though it acknowledged:
/// at its own node, and its sender's node, down at the end, never received it.
fn unreached_why(recipient: &str, sender: &str) -> String {
    format!("{recipient} acknowledged at its node, but it never reached {sender} (node down at the end)")
}

/// Why an `overdue_escalated` objective cannot be met for `recipient`, whose acknowledgement
/// its sender does not hold and which it has not escalated: the sender's node, which alone
/// marks a message overdue and runs its escalation hook, is down at the end, so that
/// nothing could change it before then. Named as unmeetable, not as a shortfall of the
/// system's ("neither acknowledged nor overdue (its respond-by had not passed)").
fn unescalable_why(recipient: &str, sender: &str) -> String {
    format!("{recipient}: unmeetable, as {sender}'s node, which marks a message overdue and runs the escalation hook, is down at the end")
}

/// What `hotline audit verify` checks of a store at rest, through the same functions:
/// SQLite's quick check, a schema this release reads, the journal's hash chain, and the
/// stored records against the journal (on a relay's store, every journaled message and
/// receipt matches its row and every row is journaled; on a node's, every stored message
/// and receipt is a record its journal holds). Read-only. The journal's entry count, or why
/// the store does not verify.
fn verify_db(path: &Path) -> Result<u64, String> {
    use anyhow::Context as _;
    let check = || -> anyhow::Result<u64> {
        let conn = hotline_store::open_read_only(path)?;
        hotline_store::quick_check(&conn, path)?;
        let relay = hotline_relay::store::is_relay_store(&conn)?;
        if relay {
            hotline_relay::store::check_schema_version(&conn, path)?;
        } else {
            hotline_node::store::check_schema_version(&conn, path)?;
        }
        let report =
            hotline_store::verify_journal(&conn).context("audit journal does not verify")?;
        if relay {
            hotline_relay::store::verify_journaled_records(&conn, path)
                .context("stored records and journal differ")?;
        } else {
            hotline_node::store::verify_records(&conn, path)
                .context("stored records and journal differ")?;
        }
        Ok(report.entries)
    };
    check().map_err(|e| format!("{e:#}"))
}

/// Overdue hook runs per sender: (message id, recipient) pairs.
pub fn read_hooks(dep: &Deployment) -> HashMap<String, Vec<(String, String)>> {
    let mut out = HashMap::new();
    for (id, n) in &dep.nodes {
        let text = std::fs::read_to_string(&n.overdue_log).unwrap_or_default();
        let mut runs = Vec::new();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let mid = v["id"].as_str().unwrap_or("").to_owned();
            for r in v["recipients"].as_array().cloned().unwrap_or_default() {
                runs.push((mid.clone(), r.as_str().unwrap_or("").to_owned()));
            }
        }
        out.insert(id.clone(), runs);
    }
    out
}

/// How the report describes an inbox it read from a node's store at rest.
pub(crate) const READ_AT_REST: &str = "read from its store; node down at the end";

/// What the store of a node down at the end holds, as its API would have shown it.
#[derive(Debug, Default)]
pub struct AtRest {
    /// Its inbox, each message as `GET /v1/inbox` shows it.
    pub inbox: Vec<Value>,
    /// Each message it sent, by id, as `GET /v1/messages/{id}` shows it.
    pub sent: HashMap<String, Value>,
}

/// What the node whose store is in `data_dir` holds, read at rest, read-only (its node is
/// down: a fault keeps it so to the end of the drill), every page of each list, not the
/// API's first one alone; or why it could not be read.
pub fn read_at_rest(data_dir: &Path) -> Result<AtRest, String> {
    use hotline_node::limits::API_LIST_MAX;
    // Nothing writes to a store at rest, so a page's last message is there for the next.
    const CHANGED: &str = "the store changed while it was read";
    /// Every page of a list, `page(before)` after page, each item to `each`.
    fn every_page<T>(
        mut page: impl FnMut(Option<&MessageId>) -> anyhow::Result<Option<Vec<T>>>,
        id: impl Fn(&T) -> MessageId,
        mut each: impl FnMut(T) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut before = None;
        loop {
            let Some(items) = page(before.as_ref())? else {
                anyhow::bail!(CHANGED);
            };
            let full = items.len() == API_LIST_MAX;
            before = items.last().map(&id);
            for m in items {
                each(m)?;
            }
            if !full {
                return Ok(());
            }
        }
    }
    let read = || -> anyhow::Result<AtRest> {
        let mut reader = hotline_node::store::NodeReader::open(data_dir)?;
        let mut out = AtRest::default();
        every_page(
            |before| Ok(reader.inbox_page(before, API_LIST_MAX, false)?),
            |m| m.envelope.id,
            |m| {
                out.inbox.push(hotline_node::api::inbox_json(m)?);
                Ok(())
            },
        )?;
        let now = crate::now_ms();
        every_page(
            |before| Ok(reader.sent_page(before, API_LIST_MAX)?),
            |m| m.envelope.id,
            |m| {
                let v = hotline_node::api::sent_json(m, now);
                let id = v["id"].as_str().unwrap_or_default().to_owned();
                out.sent.insert(id, v);
                Ok(())
            },
        )?;
        Ok(out)
    };
    read().map_err(|e| format!("{e:#}"))
}

/// The message that the send with idempotency key `key` stored at the node whose store is
/// in `data_dir`, read at rest, read-only, with when it was stored (ms since the epoch);
/// `None` if the store keeps nothing under the key; or why it could not be read.
pub(crate) fn keyed_at_rest(data_dir: &Path, key: &str) -> Result<Option<(String, u64)>, String> {
    let reader = hotline_node::store::NodeReader::open(data_dir).map_err(|e| e.to_string())?;
    let found = reader.keyed_message(key).map_err(|e| e.to_string())?;
    Ok(found.map(|(id, at_ms)| (id.to_string(), at_ms)))
}

/// Whether the sender's `on_overdue` hook ran for `recipient` of message `id`, as `hooks`
/// (from [`read_hooks`]) record it; `None` when the harness cannot see the hooks (live mode:
/// they run on the operators' machines).
pub(crate) fn hook_ran(
    hooks: Option<&HashMap<String, Vec<(String, String)>>>,
    sender: &str,
    id: &str,
    recipient: &str,
) -> Option<bool> {
    hooks.map(|h| {
        h.get(sender)
            .is_some_and(|runs| runs.iter().any(|(m, r)| m == id && r == recipient))
    })
}

/// Why `recipient` falls short of an `overdue_escalated` objective, or `None` if it meets
/// it. This is the one definition: the report scores it, and the drill's early end
/// (`run::decided`) waits until it holds for every recipient in scope, so the drill never
/// ends on a recipient the report then fails. The objective asks that the sender escalated
/// every recipient in scope that did not acknowledge in time:
/// - one that went overdue (its respond-by passed unacknowledged) meets it once the sender's
///   overdue hook ran for it (`hook`; `None`, unknown in live mode, counts as run), whether
///   or not it acknowledged later;
/// - one that acknowledged before it went overdue meets it: there was nothing to escalate
///   (the invariant on required acknowledgements leaves it out as well);
/// - one neither overdue nor acknowledged (the drill ended before its respond-by) does not.
///
/// The report used to fail every recipient that had acknowledged, in time or late, while the
/// early end counted it as decided: a drill could end early, then fail on it.
pub(crate) fn escalation_shortfall(
    recipient: &str,
    overdue: bool,
    acknowledged: bool,
    hook: Option<bool>,
) -> Option<String> {
    match (overdue, acknowledged, hook) {
        (true, _, Some(false)) => Some(format!(
            "{recipient}: overdue, but the sender's escalation hook never ran for it"
        )),
        (true, _, _) | (false, true, _) => None,
        (false, false, _) => Some(format!(
            "{recipient}: neither acknowledged nor overdue (its respond-by had not passed)"
        )),
    }
}

/// What became of one inject during the drill.
pub(crate) struct Sent {
    /// The inject, as the scenario has it.
    pub(crate) inject: Inject,
    /// Its message id, once its node took it.
    pub(crate) id: Option<String>,
    /// When its node took it, ms since the epoch.
    pub(crate) sent_at_ms: Option<u64>,
    /// Why its node refused it for good, if it did.
    pub(crate) refused: Option<String>,
    /// What the drill learnt of it when a send of it got no answer (`id` is then `None`):
    /// it cannot be said never sent, as its node may have stored it.
    pub(crate) no_answer: Option<NoAnswer>,
}

/// What the drill learnt of an inject with no message id whose send got no answer it could
/// read (no answer in time, a connection dropped, a 5xx:
/// `hotline_node::client::unknown_outcome`), where the node may have stored the message
/// all the same. The drill asks again with the send's `Idempotency-Key` while the node is
/// up, and is answered with that message; once the node is down for good, it reads the
/// key in the node's store at rest instead (`run::learn_unanswered`). One it finds there
/// has its id, and is scored as sent: it is no `NoAnswer`.
#[derive(Clone, Debug)]
pub(crate) enum NoAnswer {
    /// The node's store, read once the node was down for good, keeps no message under the
    /// send's key: the node never stored it, and never can. Never sent.
    NotStored {
        /// The send's error.
        error: String,
    },
    /// Not known whether the node stored it.
    Unknown {
        /// The send's error.
        error: String,
        /// Why the drill could not learn it: `its node went down for good, and its store
        /// could not be read (…)`.
        why: String,
    },
}

impl NoAnswer {
    /// What the report says of it, after the inject's name.
    pub(crate) fn account(&self) -> String {
        match self {
            NoAnswer::NotStored { error } => format!(
                "never sent: its send got no answer ({error}), and its node, down at the end, holds no message under its key"
            ),
            NoAnswer::Unknown { error, why } => format!(
                "not known whether it was sent: its send got no answer ({error}), and {why}"
            ),
        }
    }
}

/// Everything `score` needs.
pub struct Inputs<'a> {
    pub(crate) scenario: &'a Scenario,
    pub(crate) seed: u64,
    pub(crate) dir: &'a Path,
    pub(crate) started_at_ms: u64,
    pub(crate) wall_s: f64,
    /// The participants whose node the drill can read (its inbox): every node it started,
    /// or in live mode those in the endpoints file.
    pub(crate) participants: &'a [String],
    /// Live mode: the drill has endpoints for some nodes only (the Secretariat's alone, at
    /// its simplest), so every recipient an inject addressed is scored, from its sender's
    /// delivery table (the node API's per-recipient matrix: the delivered and acknowledged
    /// receipts that reached the sender) where the drill has no endpoint for it, from its
    /// inbox where it has. Otherwise (a drill the harness deployed) the participants are
    /// every node of the drill, and a recipient the scenario left out of it is not scored.
    pub(crate) live: bool,
    pub(crate) roster: &'a Roster,
    /// Each inject, in scenario order.
    pub(crate) injects: Vec<Sent>,
    pub(crate) sent_views: Vec<Value>,
    /// Each participant's inbox (in `participants`), as its node's API showed it at the
    /// end, or, for one in `at_rest`, as its store held it.
    pub(crate) inboxes: BTreeMap<String, Vec<Value>>,
    /// The participants whose inbox the drill read from their store ([`read_at_rest`]),
    /// with why it could not be read if it could not: those whose node a fault keeps down
    /// at the end, and those whose API failed then (`api_failed`). A message such a store holds was delivered, not lost; one
    /// addressed to a participant whose store could not be read is neither: the report says
    /// it does not know, and the invariant "zero accepted messages lost" fails on it.
    pub(crate) at_rest: BTreeMap<String, Result<(), String>>,
    /// The participants whose node was up at the end but whose API failed when the drill
    /// read their inbox, with the error: the drill read their store instead, as it does a
    /// down node's (their entry in `at_rest`), rather than count their inbox as empty and
    /// every message to them as lost.
    pub(crate) api_failed: BTreeMap<String, String>,
    /// The messages the relay's store did not hold at the end ([`relay_lacks`], read once
    /// the relay had stopped), among those of senders down at the end. One of them that its
    /// sender's record has as not accepted never left its sender: it went down before its
    /// relay accepted it, and nothing can deliver it. A recipient that does not hold it is
    /// named so ([`never_left_why`]) wherever it is scored, rather than as one that never
    /// held, acknowledged or answered a message it could receive; nothing is required of it
    /// in "every acknowledgement required was given", as of an inject never sent. Empty
    /// when not known (live mode, or a relay store that could not be read).
    pub(crate) unrelayed: HashSet<String>,
    pub(crate) shown: HashMap<(String, String), u32>,
    /// Overdue hook runs, when the harness could read them (not in live mode).
    pub(crate) hooks: Option<HashMap<String, Vec<(String, String)>>>,
    pub(crate) faults: Vec<Value>,
    pub(crate) proxies: BTreeMap<String, crate::proxy::ProxyStats>,
    /// Store checks, when the stores were reachable (not in live mode).
    pub(crate) checks: Option<StoreChecks>,
    /// How each relay and node process the harness ran ended, when it ran them (not in live
    /// mode): each one it stopped, at the drill's end or for an `offline` fault, and each
    /// one a `kill_relay`, `restore_relay` or `kill_node` fault killed.
    pub(crate) exits: Option<Vec<ProcessEnd>>,
}

/// How one relay or node process the harness ran ended.
///
/// A process that ends any other way than cleanly (exit code 0 when stopped with SIGTERM)
/// or by a fault's SIGKILL fails the drill: one that exits non-zero, is ended by another
/// signal (a crash), or does not exit within the grace period, at the drill's end or when
/// an `offline` fault stops it, or that had already ended so before the harness stopped or
/// killed it. The invariants "relay shut down cleanly" and "every node shut down cleanly"
/// say which, how and when. A failure, not a remark in the report: in service the same
/// process would be a failed systemd unit (restarted, or paged for), and a crash may
/// leave work undone that the drill's other checks cannot see; the relay's exit has
/// always failed the drill, and a node's now does too, by the same rule.
#[derive(Clone, Debug)]
pub(crate) struct ProcessEnd {
    /// `relay`, or `node KAZ`.
    pub(crate) process: String,
    /// When the harness stopped or killed it: `at the drill's end`, `for its offline fault
    /// at 5.0 s`.
    pub(crate) when: String,
    /// How it ended.
    pub(crate) exit: crate::process::Exit,
    /// It had already ended when the harness came to stop or kill it.
    pub(crate) before: bool,
}

impl ProcessEnd {
    fn describe(&self) -> String {
        if self.before {
            format!(
                "{} had already ended ({}) when the drill came to stop it {}",
                self.process, self.exit, self.when
            )
        } else {
            format!("{}: {} when stopped {}", self.process, self.exit, self.when)
        }
    }
}

/// Scores a finished drill.
pub fn score(i: Inputs<'_>) -> anyhow::Result<Report> {
    let sc = i.scenario;
    let comp = sc.time_compression;
    let scen_s = |ms: u64, from: u64| (ms.saturating_sub(from)) as f64 / 1000.0 * comp;
    // Recipient inbox entries by (participant, id).
    let mut inbox: HashMap<(String, String), &Value> = HashMap::new();
    let mut inbox_dups = 0;
    // Only the drill's own messages are the harness's to judge: a live deployment's inboxes
    // also hold its real traffic (actual, or `test` for a communications check), which is
    // no exercise message, shown rightly as what it is. Each inject is sent as `exercise`
    // and must be shown so.
    let drill_ids: std::collections::HashSet<&str> =
        i.injects.iter().filter_map(|s| s.id.as_deref()).collect();
    let mut as_actual = 0;
    for (p, items) in &i.inboxes {
        for m in items {
            let id = m["id"].as_str().unwrap_or("").to_owned();
            let drill = drill_ids.contains(id.as_str());
            if inbox.insert((p.clone(), id), m).is_some() {
                inbox_dups += 1;
            }
            if drill && (m["status"] != json!("exercise") || m["exercise_or_test"] != json!(true)) {
                as_actual += 1;
            }
        }
    }
    // Each sent inject's recipients as the roster resolves its audience (the protocol's own
    // resolution, as the relay resolves it), whatever its sender's delivery table says:
    // the sender's node is under test too, and a recipient its table leaves out must be
    // scored (and fail), not dropped from scope.
    let audiences: Vec<Vec<String>> = i
        .injects
        .iter()
        .map(|s| {
            if s.id.is_some() {
                s.inject.addressed(i.roster)
            } else {
                Vec::new()
            }
        })
        .collect();
    // Whose rows the report has: the participants with a node, and in live mode every
    // recipient addressed (roster order, then any the roster does not name).
    let has_node = |p: &str| i.participants.iter().any(|x| x == p);
    let ids: Vec<String> = if i.live {
        let mut addressed: Vec<String> = i
            .sent_views
            .iter()
            .flat_map(|v| v["recipients"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["recipient"].as_str().map(str::to_owned))
            .chain(audiences.iter().flatten().cloned())
            .collect();
        addressed.sort();
        addressed.dedup();
        let wanted = |p: &String| has_node(p) || addressed.contains(p);
        let mut ids: Vec<String> = i
            .roster
            .participants
            .iter()
            .map(|p| p.id.to_string())
            .filter(wanted)
            .collect();
        for p in i.participants.iter().chain(&addressed) {
            if !ids.contains(p) {
                ids.push(p.clone());
            }
        }
        ids
    } else {
        i.participants.to_vec()
    };
    let mut rows: Vec<ParticipantRow> = ids
        .iter()
        .map(|p| {
            let entry = ParticipantId::new(p)
                .ok()
                .and_then(|id| i.roster.participant(&id).cloned());
            ParticipantRow {
                id: p.clone(),
                name: entry.as_ref().map(|e| e.name.clone()).unwrap_or_default(),
                role: entry
                    .map(|e| {
                        match e.role {
                            Role::Member => "member",
                            Role::Observer => "observer",
                            _ => "secretariat",
                        }
                        .to_owned()
                    })
                    .unwrap_or_default(),
                cells: Vec::new(),
                objectives_met: true,
                inbox_read: i.at_rest.get(p).map(|r| match (r, i.api_failed.get(p)) {
                    (Ok(()), None) => READ_AT_REST.to_owned(),
                    (Ok(()), Some(a)) => {
                        format!("read from its store; its API failed at the end: {a}")
                    }
                    (Err(e), None) => {
                        format!("not read: node down at the end, its store unreadable: {e}")
                    }
                    (Err(e), Some(a)) => format!(
                        "not read: its API failed at the end ({a}), its store unreadable: {e}"
                    ),
                }),
            }
        })
        .collect();
    let mut inject_rows = Vec::new();
    let mut accepted = 0;
    let mut lost = 0;
    // Deliveries held by a node whose store was read (down at the end, or its API failing
    // then), by node, as its store shows them.
    let mut held_at_rest: BTreeMap<String, usize> = BTreeMap::new();
    // Deliveries to a node whose store was to be read (down at the end, or its API failing
    // then) but could not be: not known.
    let mut unknown = 0;
    let unreadable = |p: &str| i.at_rest.get(p).and_then(|r| r.as_ref().err());
    // Why the drill read `p`'s store: its node down at the end, or its API failing then.
    let why_store = |p: &str| match i.api_failed.get(p) {
        Some(a) => format!("node's API failed at the end ({a})"),
        None => "node is down at the end".to_owned(),
    };
    // Whether recipient `p` never held inject `k`'s message and never can: its sender's node,
    // down at the end, went down before its relay accepted it ([`Inputs::unrelayed`]).
    let never_left = |k: usize, p: &str| {
        let sent = &i.injects[k];
        sent.id.as_ref().is_some_and(|id| {
            !i.live
                && sc.down_at_end(&sent.inject.from)
                && !i.sent_views[k]["accepted_at_ms"].is_u64()
                && i.unrelayed.contains(id)
                && !inbox.contains_key(&(p.to_owned(), id.clone()))
        })
    };
    let mut refusals = Vec::new();
    // Per inject: the recipients addressed that its sender's table leaves out, and whether
    // the sender's node gave a table at all.
    let mut untabled_by_inject: Vec<(Vec<String>, bool)> = Vec::new();
    for (k, sent) in i.injects.iter().enumerate() {
        let (inj, id, sent_at, refused) = (&sent.inject, &sent.id, &sent.sent_at_ms, &sent.refused);
        let view = &i.sent_views[k];
        let sent_ms = view["created_at_ms"].as_u64().or(*sent_at).unwrap_or(0);
        let state = match (view["state"].as_str(), refused) {
            (Some(s), _) => s.to_owned(),
            (None, Some(why)) => {
                refusals.push(format!("{:?} {why}", inj.name));
                "refused".to_owned()
            }
            // Sent (its node took it and gave an id), but the sender's node gave no view of
            // it at the end (down, or not answering): it was reported as "not sent".
            (None, None) if id.is_some() => {
                refusals.push(match unreadable(&inj.from) {
                    Some(e) => format!(
                        "{:?} sent, but {}'s {} and its store could not be read ({e})",
                        inj.name,
                        inj.from,
                        why_store(&inj.from)
                    ),
                    None => format!(
                        "{:?} sent, but {}'s node gave no record of it at the end",
                        inj.name, inj.from
                    ),
                });
                "unknown".to_owned()
            }
            (None, None) => match &sent.no_answer {
                // Never sent (its sender's node down for good when it was due): said, so
                // that "every inject accepted" does not fail with no reason.
                None => {
                    refusals.push(format!("{:?} never sent", inj.name));
                    "not sent".to_owned()
                }
                // Its send got no answer, and the drill never learnt its id: never sent if
                // its node's store keeps nothing under the send's key, else not known, never
                // "never sent" (its node may have stored and relayed it).
                Some(na) => {
                    refusals.push(format!("{:?} {}", inj.name, na.account()));
                    match na {
                        NoAnswer::NotStored { .. } => "not sent",
                        NoAnswer::Unknown { .. } => "unknown",
                    }
                    .to_owned()
                }
            },
        };
        let matrix: HashMap<String, &Value> = view["recipients"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| (r["recipient"].as_str().unwrap_or("").to_owned(), r))
                    .collect()
            })
            .unwrap_or_default();
        // Addressed, but left out of the sender's table.
        let untabled: Vec<&String> = audiences[k]
            .iter()
            .filter(|r| !matrix.contains_key(*r))
            .collect();
        untabled_by_inject.push((
            untabled
                .iter()
                .map(|r| (*r).clone())
                .collect::<Vec<String>>(),
            view["recipients"].is_array(),
        ));
        let was_accepted = view["accepted_at_ms"].is_u64();
        // A recipient that holds it shows it left (its relay delivered it, and lost it since
        // to a restore from an older backup): then it is only not accepted, as ever.
        if id.as_ref().is_some_and(|id| {
            !was_accepted
                && !i.live
                && sc.down_at_end(&inj.from)
                && i.unrelayed.contains(id)
                && !inbox.keys().any(|(_, held)| held == id)
        }) {
            refusals.push(format!(
                "{:?} never left its sender: {}",
                inj.name,
                never_left_why(&inj.from)
            ));
        }
        if was_accepted {
            accepted += 1;
            let rows_of = matrix
                .iter()
                .map(|(r, row)| (r, Some(*row)))
                .chain(untabled.iter().map(|r| (*r, None)));
            for (r, row) in rows_of {
                // Held, as far as the drill can see: in the recipient's inbox where it has
                // its node; in live mode, else by the sender's table (a delivered receipt).
                let held = if has_node(r) {
                    inbox.contains_key(&(r.clone(), id.clone().unwrap_or_default()))
                } else {
                    !i.live || row.is_some_and(|row| row["delivered_at_ms"].is_u64())
                };
                if held && i.at_rest.contains_key(r) {
                    *held_at_rest.entry(r.clone()).or_default() += 1;
                } else if !held && has_node(r) && unreadable(r).is_some() {
                    unknown += 1;
                } else if !held {
                    lost += 1;
                }
            }
        }
        let answers = view["answers"].as_array().cloned().unwrap_or_default();
        for row in &mut rows {
            let m = matrix.get(&row.id);
            let got = inbox.get(&(row.id.clone(), id.clone().unwrap_or_default()));
            // The recipient's row says when its first answer came, of all its answers: the
            // view lists only the first of them (`answers_total` counts them all), so those
            // listed are looked at only for one the table has no row for.
            let answered_at = m.and_then(|r| r["answered_at_ms"].as_u64()).or_else(|| {
                answers
                    .iter()
                    .filter(|a| a["from"] == row.id.as_str())
                    .filter_map(|a| a["received_at_ms"].as_u64())
                    .min()
            });
            // Where the drill has no node for the recipient (live mode), its delivery is
            // known from the sender's table alone.
            let delivered_at = if has_node(&row.id) {
                got.and_then(|g| g["received_at_ms"].as_u64())
            } else {
                m.and_then(|r| r["delivered_at_ms"].as_u64())
            };
            let acknowledged_s = m
                .and_then(|r| r["acked_at_ms"].as_u64())
                .map(|t| scen_s(t, sent_ms));
            row.cells.push(Cell {
                addressed: m.is_some() || untabled.contains(&&row.id),
                delivered_s: delivered_at.map(|t| scen_s(t, sent_ms)),
                acknowledged_s,
                // Given at the recipient's node, its sender down at the end never held it.
                acknowledged_at_node_s: got
                    .filter(|_| acknowledged_s.is_none() && !i.live && sc.down_at_end(&inj.from))
                    .and_then(|g| g["acknowledged_at_ms"].as_u64())
                    .map(|t| scen_s(t, sent_ms)),
                answered_s: answered_at.map(|t| scen_s(t, sent_ms)),
                officer: m.and_then(|r| r["officer"].as_str().map(str::to_owned)),
                overdue: m.is_some_and(|r| r["overdue_at_ms"].is_u64()),
                overdue_s: m
                    .and_then(|r| r["overdue_at_ms"].as_u64())
                    .map(|t| scen_s(t, sent_ms)),
            });
        }
        inject_rows.push(InjectRow {
            name: inj.name.clone(),
            id: id.clone(),
            from: inj.from.clone(),
            subject: inj.subject.clone(),
            precedence: inj.precedence.clone(),
            at_s: sent_at
                .map(|t| scen_s(t, i.started_at_ms))
                .unwrap_or(inj.at_s),
            state,
            refused: refused.clone(),
            unanswered: sent
                .no_answer
                .as_ref()
                .filter(|_| id.is_none())
                .map(NoAnswer::account),
            recipients: matrix.len(),
            delivered: view["delivered"].as_u64().unwrap_or(0) as usize,
            acknowledged: view["acknowledged"].as_u64().unwrap_or(0) as usize,
        });
    }
    // Objectives.
    let mut objectives = Vec::new();
    for o in &sc.objectives {
        let k = sc
            .injects
            .iter()
            .position(|x| x.name == o.inject)
            .unwrap_or(0);
        let id = &i.injects[k].id;
        let id = id.clone().unwrap_or_default();
        let mut failed = Vec::new();
        if let Some(why) = &i.injects[k].refused {
            failed.push(format!("inject {:?} {why}", o.inject));
        }
        let mut in_scope = 0;
        for row in rows.iter_mut() {
            let cell = &row.cells[k];
            if !cell.addressed || !o.covers(&row.id, i.roster) {
                continue;
            }
            in_scope += 1;
            let limit = o.within_s.unwrap_or(f64::INFINITY);
            let (untabled, tabled) = &untabled_by_inject[k];
            let sender = &sc.injects[k].from;
            let why = match o.expect.as_str() {
                // Whatever the recipient's inbox shows, the sender's record of it is missing.
                _ if untabled.contains(&row.id) && *tabled => {
                    Some(format!("{} not in {sender}'s delivery table", row.id))
                }
                _ if untabled.contains(&row.id) => Some(format!(
                    "{}: {sender}'s node gave no delivery table",
                    row.id
                )),
                // Whatever it expects, it could not be met: the message never left its sender.
                _ if never_left(k, &row.id) => Some(format!(
                    "{} never held it, as {}",
                    row.id,
                    never_left_why(sender)
                )),
                "delivered" => match cell.delivered_s {
                    Some(t) if t <= limit => None,
                    Some(t) => Some(format!("{} held it after {t:.1}s", row.id)),
                    None => Some(match unreadable(&row.id) {
                        Some(e) => format!(
                            "{}: not known whether it held it: its {} and its store could not be read ({e})",
                            row.id,
                            why_store(&row.id)
                        ),
                        None => format!("{} never held it", row.id),
                    }),
                },
                "acknowledged" => match cell.acknowledged_s {
                    Some(t) if t <= limit => None,
                    Some(t) => Some(format!("{} acknowledged after {t:.1}s", row.id)),
                    // The sender could not hold it: named as the reason, not "never".
                    None if !i.live
                        && sc.down_at_end(sender)
                        && acked_at_node(&inbox, &row.id, &id) =>
                    {
                        Some(unreached_why(&row.id, sender))
                    }
                    None => Some(format!("{} never acknowledged", row.id)),
                },
                "answered" => match cell.answered_s {
                    Some(t) if t <= limit => None,
                    Some(t) => Some(format!("{} answered after {t:.1}s", row.id)),
                    None => Some(format!("{} never answered", row.id)),
                },
                // Not met with its sender down at the end, it can no longer be: said so, and
                // why, as for an acknowledgement (the early end does not wait for it).
                _ => escalation_shortfall(
                    &row.id,
                    cell.overdue,
                    cell.acknowledged_s.is_some(),
                    hook_ran(i.hooks.as_ref(), sender, &id, &row.id),
                )
                .map(|short| {
                    if i.live || !sc.down_at_end(sender) {
                        short
                    } else if acked_at_node(&inbox, &row.id, &id) {
                        unreached_why(&row.id, sender)
                    } else {
                        unescalable_why(&row.id, sender)
                    }
                }),
            };
            if let Some(w) = why {
                row.objectives_met = false;
                failed.push(w);
            }
        }
        // Unmet with no one in scope, it says why, rather than "NOT MET" with no reason.
        // (`Scenario::check_roster` and `run::check_nodes` refuse an objective with no one in
        // scope before the drill starts.)
        if in_scope == 0 && failed.is_empty() {
            failed.push(
                if let (None, Some(na)) = (&i.injects[k].id, &i.injects[k].no_answer) {
                    format!("inject {:?}: {}", o.inject, na.account())
                } else if i.injects[k].id.is_none() {
                    format!("inject {:?} was never sent", o.inject)
                } else {
                    format!(
                        "no recipient of inject {:?} in scope ({})",
                        o.inject,
                        o.narrowing()
                    )
                },
            );
        }
        // In scope but without a node (a drill of some participants, an inject to a
        // group or to every member): no row to score. Said, rather than left out unsaid,
        // so that "MET" is not read as holding for them too.
        let unscored: Vec<String> = if i.live {
            Vec::new()
        } else {
            audiences[k]
                .iter()
                .filter(|p| !has_node(p) && o.covers(p, i.roster))
                .cloned()
                .collect()
        };
        objectives.push(ObjectiveResult {
            name: o.name.clone(),
            met: failed.is_empty() && in_scope > 0,
            in_scope,
            failed,
            unscored,
        });
    }
    // Every recipient of an inject that requires acknowledgement has acknowledged it by
    // the end, whatever objectives the author wrote, unless the scenario expects otherwise
    // (`Scenario::expects_unacknowledged`). Faults are injected only when the harness runs
    // the nodes.
    //
    // A fault's node down to the end is the scenario's doing, not the system's, and the
    // invariant says what it changed rather than fail on it or leave it unsaid:
    // - an inject never sent (its sender down when it was due) required nothing: its
    //   message never existed; named as not sent;
    // - one that a sender down to the end did send requires its recipients'
    //   acknowledgements all the same (they are up, and their officers acknowledge), but
    //   their receipts wait at the relay for a sender that never comes back: one recorded
    //   at the recipient's own node is given, and named as never having reached the sender;
    // - one such a sender went down with before its relay accepted it never left it: it
    //   requires nothing of the recipients that do not hold it (they never can), and is
    //   named so, as an inject never sent is ("every inject accepted" fails on it);
    // - a recipient down to the end cannot acknowledge: not required of it, and named so.
    // A sender up at the end that lacks a receipt its recipient's node has given has lost
    // it: missing, as ever.
    let mut acks_required = 0;
    let mut acks_missing = Vec::new();
    let mut acks_unreached = Vec::new();
    let mut acks_of_down: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut acks_unsent = Vec::new();
    let mut acks_never_left = Vec::new();
    for (k, sent) in i.injects.iter().enumerate() {
        if sent.inject.respond_within_s.is_none() {
            continue;
        }
        let Some(id) = &sent.id else {
            acks_unsent.push(format!(
                "not required of {:?}: {}",
                sent.inject.name,
                match (&sent.refused, &sent.no_answer) {
                    (Some(_), _) => "refused".to_owned(),
                    (None, Some(na)) => na.account(),
                    (None, None) => "not sent".to_owned(),
                }
            ));
            continue;
        };
        let sender = &sent.inject.from;
        let sender_down = !i.live && sc.down_at_end(sender);
        for row in &rows {
            let cell = &row.cells[k];
            if !cell.addressed {
                continue;
            }
            if !i.live && sc.down_at_end(&row.id) {
                acks_of_down
                    .entry(&row.id)
                    .or_default()
                    .push(format!("{:?}", sent.inject.name));
                continue;
            }
            if sc.expects_unacknowledged(k, &row.id, i.roster, !i.live) {
                continue;
            }
            if never_left(k, &row.id) {
                acks_never_left.push(format!(
                    "not required of {}: {:?} never reached it, as {}",
                    row.id,
                    sent.inject.name,
                    never_left_why(sender)
                ));
                continue;
            }
            acks_required += 1;
            if cell.acknowledged_s.is_some() {
                continue;
            }
            if sender_down && acked_at_node(&inbox, &row.id, id) {
                acks_unreached.push(format!(
                    "{} acknowledged {:?} at its node; it never reached {sender} (node down at the end)",
                    row.id, sent.inject.name
                ));
                continue;
            }
            acks_missing.push(format!(
                "{} never acknowledged {:?}{}",
                row.id,
                sent.inject.name,
                if cell.overdue { " (overdue)" } else { "" }
            ));
        }
    }
    let acks_unrequired: Vec<String> = acks_of_down
        .iter()
        .map(|(p, names)| {
            format!(
                "not required of {p} (node down at the end): {}",
                names.join(", ")
            )
        })
        .chain(acks_never_left)
        .chain(acks_unsent)
        .collect();
    let duplicates = i.shown.values().filter(|n| **n > 1).count() + inbox_dups;
    let mut invariants = vec![
        Invariant {
            name: "zero accepted messages lost".into(),
            held: lost == 0 && unknown == 0,
            detail: lost_detail(
                lost,
                accepted,
                &held_at_rest,
                unknown,
                &i.at_rest,
                &i.api_failed,
            ),
        },
        Invariant {
            name: "zero duplicates shown to any operator".into(),
            held: duplicates == 0,
            detail: format!("{duplicates} duplicates"),
        },
        Invariant {
            name: "no exercise message shown as actual".into(),
            held: as_actual == 0,
            detail: format!("{as_actual} shown as actual"),
        },
        Invariant {
            name: "every acknowledgement required was given".into(),
            held: acks_missing.is_empty(),
            detail: std::iter::once(if acks_missing.is_empty() {
                format!("{acks_required} of {acks_required} acknowledged")
            } else {
                let shown: Vec<&str> = acks_missing.iter().take(10).map(String::as_str).collect();
                format!(
                    "{} of {acks_required} missing: {}{}",
                    acks_missing.len(),
                    shown.join("; "),
                    if acks_missing.len() > shown.len() {
                        "; …"
                    } else {
                        ""
                    }
                )
            })
            .chain(acks_unreached)
            .chain(acks_unrequired)
            .collect::<Vec<_>>()
            .join("; "),
        },
        Invariant {
            name: "every inject accepted".into(),
            held: accepted == sc.injects.len(),
            detail: std::iter::once(format!("{accepted} of {}", sc.injects.len()))
                .chain(refusals)
                .collect::<Vec<_>>()
                .join("; "),
        },
    ];
    let (mut checked, mut invalid) = (0, 0);
    if let Some(checks) = &i.checks {
        (checked, invalid) = checks.receipts;
        let journal_failures: Vec<String> = checks
            .journals
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
            .collect();
        let journal_entries: u64 = checks
            .journals
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .sum();
        let unread: Vec<String> = checks
            .receipts_unread
            .iter()
            .map(|(id, e)| format!("{id}'s receipts not read: {e}"))
            .collect();
        invariants.push(Invariant {
            name: "every receipt signature valid".into(),
            held: invalid == 0 && checked > 0 && unread.is_empty(),
            detail: std::iter::once(format!("{checked} receipts checked, {invalid} invalid"))
                .chain(unread)
                .collect::<Vec<_>>()
                .join("; "),
        });
        let held: u64 = checks.quarantined.iter().map(|(_, n)| n).sum();
        invariants.push(Invariant {
            name: "nothing quarantined".into(),
            held: held == 0,
            detail: if held == 0 {
                "no node holds a delivery that failed its checks".into()
            } else {
                let nodes: Vec<String> = checks
                    .quarantined
                    .iter()
                    .map(|(id, n)| format!("{id} {n}"))
                    .collect();
                format!(
                    "{held} held: {} (hotline inbox --quarantined)",
                    nodes.join(", ")
                )
            },
        });
        invariants.push(Invariant {
            name: "audit journals verify".into(),
            held: journal_failures.is_empty(),
            detail: if journal_failures.is_empty() {
                format!(
                    "{} journals, {journal_entries} entries",
                    checks.journals.len()
                )
            } else {
                journal_failures.join("; ")
            },
        });
    }
    if let Some(exits) = &i.exits {
        let (relay, nodes): (Vec<&ProcessEnd>, Vec<&ProcessEnd>) =
            exits.iter().partition(|e| e.process == "relay");
        let bad = |of: &[&ProcessEnd]| {
            of.iter()
                .filter(|e| !e.exit.clean())
                .map(|e| e.describe())
                .collect::<Vec<_>>()
        };
        let relay_bad = bad(&relay);
        invariants.push(Invariant {
            name: "relay shut down cleanly".into(),
            held: relay_bad.is_empty(),
            detail: if relay_bad.is_empty() {
                relay
                    .last()
                    .map_or_else(|| "not run".to_owned(), |e| e.exit.to_string())
            } else {
                relay_bad.join("; ")
            },
        });
        let nodes_bad = bad(&nodes);
        invariants.push(Invariant {
            name: "every node shut down cleanly".into(),
            held: nodes_bad.is_empty(),
            detail: if nodes_bad.is_empty() {
                format!(
                    "{} node processes stopped with exit code 0 or killed by a fault",
                    nodes.len()
                )
            } else {
                nodes_bad.join("; ")
            },
        });
    }
    let passed = objectives.iter().all(|o| o.met) && invariants.iter().all(|x| x.held);
    Ok(Report {
        scenario: sc.name.clone(),
        description: sc.description.clone(),
        seed: i.seed,
        time_compression: comp,
        started_at_ms: i.started_at_ms,
        wall_s: i.wall_s,
        participants: rows,
        injects: inject_rows,
        messages_accepted: accepted,
        messages_lost: lost,
        duplicates_shown: duplicates,
        exercise_shown_as_actual: as_actual,
        receipts_checked: checked,
        receipts_invalid: invalid,
        faults: i.faults,
        proxies: i.proxies,
        objectives,
        invariants,
        passed,
        directory: i.dir.to_owned(),
    })
}

/// Whether `recipient`'s own node records its acknowledgement of message `id`, as its
/// inbox (`inbox`, by participant and id) shows it.
fn acked_at_node(inbox: &HashMap<(String, String), &Value>, recipient: &str, id: &str) -> bool {
    inbox
        .get(&(recipient.to_owned(), id.to_owned()))
        .is_some_and(|m| m["acknowledged_at_ms"].is_u64())
}

/// The detail of the invariant "zero accepted messages lost": what is missing, and what
/// of the nodes down at the end, or whose API failed then (`api_failed`), was read from their
/// stores (`at_rest`, `held_at_rest` by node), or could not be.
fn lost_detail(
    lost: usize,
    accepted: usize,
    held_at_rest: &BTreeMap<String, usize>,
    unknown: usize,
    at_rest: &BTreeMap<String, Result<(), String>>,
    api_failed: &BTreeMap<String, String>,
) -> String {
    let mut d = format!("{lost} missing of {accepted} accepted messages' deliveries");
    for api in [false, true] {
        let read: Vec<&str> = at_rest
            .iter()
            .filter(|(p, r)| r.is_ok() && api_failed.contains_key(*p) == api)
            .map(|(p, _)| p.as_str())
            .collect();
        if read.is_empty() {
            continue;
        }
        let held: usize = read.iter().filter_map(|p| held_at_rest.get(*p)).sum();
        let how = if api {
            "read from its store; its API failed at the end"
        } else {
            READ_AT_REST
        };
        let _ = write!(d, "; {held} held by {} ({how})", read.join(", "));
    }
    for (p, r) in at_rest {
        if let Err(e) = r {
            let why = match api_failed.get(p) {
                Some(a) => format!("its API failed at the end ({a})"),
                None => "node down at the end".to_owned(),
            };
            let _ = write!(d, "; {p}: {why} and its store could not be read ({e})");
        }
    }
    if unknown > 0 {
        let _ = write!(
            d,
            "; {unknown} not known, to nodes whose store could not be read"
        );
    }
    d
}

fn fmt_s(v: Option<f64>) -> String {
    v.map(|t| {
        if t < 10.0 {
            format!("{t:.2}s")
        } else {
            format!("{t:.0}s")
        }
    })
    .unwrap_or_else(|| "-".into())
}

/// The terminal summary.
pub fn summary(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nAfter-action summary: {} (time compression {}x, seed {}, {:.1} s wall clock)",
        r.scenario, r.time_compression, r.seed, r.wall_s
    );
    let _ = write!(o, "{:<7} {:<11}", "ID", "ROLE");
    for inj in &r.injects {
        let _ = write!(
            o,
            " | {:<23}",
            format!("{} dlv/ack", truncate(&inj.name, 13))
        );
    }
    let _ = writeln!(o, " | OBJ");
    for p in &r.participants {
        let _ = write!(o, "{:<7} {:<11}", p.id, p.role);
        for c in &p.cells {
            let _ = write!(o, " | {:<23}", c.text());
        }
        let _ = writeln!(o, " | {}", if p.objectives_met { "met" } else { "NOT MET" });
    }
    let unread = r.inboxes_not_read_over_api();
    if !unread.is_empty() {
        let _ = writeln!(o, "\nInboxes not read over their node's API:");
        for (id, why) in unread {
            let _ = writeln!(o, "  {id:<7} {why}");
        }
    }
    let _ = writeln!(o, "\nInjects:");
    for i in &r.injects {
        let _ = writeln!(
            o,
            "  {:<14} {:<9} from {:<5} {:<13} delivered {}/{} acknowledged {}/{}  {}",
            i.name,
            i.precedence,
            i.from,
            i.state,
            i.delivered,
            i.recipients,
            i.acknowledged,
            i.recipients,
            i.subject
        );
        if let Some(why) = i.refused.as_ref().or(i.unanswered.as_ref()) {
            let _ = writeln!(o, "  {:<14} {why}", "");
        }
    }
    let _ = writeln!(o, "\nObjectives:");
    for ob in &r.objectives {
        let _ = writeln!(
            o,
            "  [{}] {} ({} in scope)",
            if ob.met { "MET" } else { "NOT MET" },
            ob.name,
            ob.in_scope
        );
        for f in ob.failed.iter().take(10) {
            let _ = writeln!(o, "        {f}");
        }
        if !ob.unscored.is_empty() {
            let _ = writeln!(o, "        {}", unscored_line(&ob.unscored));
        }
    }
    let _ = writeln!(o, "\nInvariants:");
    for x in &r.invariants {
        let _ = writeln!(
            o,
            "  [{}] {}: {}",
            if x.held { "OK" } else { "FAILED" },
            x.name,
            x.detail
        );
    }
    let _ = writeln!(
        o,
        "\nmessages accepted {}, lost {}, duplicates shown {}",
        r.messages_accepted, r.messages_lost, r.duplicates_shown
    );
    let _ = writeln!(o, "RESULT: {}", if r.passed { "PASSED" } else { "FAILED" });
    o
}

/// How the report names an objective's recipients in scope that it could not score.
pub(crate) fn unscored_line(unscored: &[String]) -> String {
    format!("not scored, no node in this drill: {}", unscored.join(", "))
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The files [`write`] writes into a drill's directory.
pub(crate) const FILES: [&str; 2] = ["report.json", "report.html"];

/// Writes `report.json` and `report.html` into `dir`, as new files (never through a link
/// planted in their place).
pub fn write(r: &Report, dir: &Path) -> anyhow::Result<()> {
    use crate::deploy::{write_new, FILE_MODE};
    let [json, html] = FILES;
    write_new(&dir.join(json), &serde_json::to_vec_pretty(r)?, FILE_MODE)?;
    write_new(
        &dir.join(html),
        crate::html::render(r).as_bytes(),
        FILE_MODE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCENARIO: &str = r#"
name = "t"
end_s = 10.0
[[injects]]
name = "check"
at_s = 0.0
from = "SEC"
to = ["KAZ", "KGZ"]
subject = "s"
respond_within_s = 5.0
[[objectives]]
name = "delivered"
inject = "check"
expect = "delivered"
within_s = 2.0
[[objectives]]
name = "acknowledged"
inject = "check"
expect = "acknowledged"
within_s = 5.0
[[objectives]]
name = "KGZ escalated"
inject = "check"
expect = "overdue_escalated"
participants = ["KGZ"]
[[objectives]]
name = "answered"
inject = "check"
expect = "answered"
within_s = 3.0
"#;

    /// SEC, KAZ and KGZ; TJK too (a fourth member) with `tjk`.
    fn roster_of(tjk: bool) -> Roster {
        let mut text = "network = \"T\"\nversion = 1\n[[participants]]\nid = \"SEC\"\nname = \"S\"\nrole = \"secretariat\"\nkeys = [\"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\"]\n[[participants]]\nid = \"KAZ\"\nname = \"K\"\nrole = \"member\"\nkeys = [\"3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c\"]\n[[participants]]\nid = \"KGZ\"\nname = \"G\"\nrole = \"member\"\nkeys = [\"fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025\"]\n".to_owned();
        if tjk {
            let key = hotline_proto::PublicKey::of(&hotline_config::keyfile::generate());
            text.push_str(&format!("[[participants]]\nid = \"TJK\"\nname = \"T\"\nrole = \"member\"\nkeys = [\"{key}\"]\n"));
        }
        let draft =
            hotline_config::roster_file::Draft::parse(&text, Path::new("t.toml")).expect("draft");
        draft.to_roster(0).expect("roster")
    }

    fn roster() -> Roster {
        roster_of(false)
    }

    fn row(r: &str, delivered: Option<u64>, acked: Option<u64>, overdue: Option<u64>) -> Value {
        json!({"recipient": r, "delivered_at_ms": delivered, "acked_at_ms": acked, "overdue_at_ms": overdue})
    }

    fn inbox_item(id: &str, at: u64) -> Value {
        json!({"id": id, "received_at_ms": at, "status": "exercise", "exercise_or_test": true})
    }

    /// A drill the harness ran, as [`score_scenario`] scores it: scenario `text`'s first
    /// inject sent as `m1` at t=1000 ms, with nodes for SEC, KAZ and KGZ. [`Drill::new`] is
    /// [`SCENARIO`] with nothing read yet and clean store checks; a test sets what it is about.
    struct Drill {
        /// The scenario's text.
        text: String,
        /// Each node's inbox, read at the end.
        inboxes: BTreeMap<String, Vec<Value>>,
        /// The sender's delivery table (`row`s).
        matrix: Vec<Value>,
        /// The escalation hook's runs at SEC: (message, recipient).
        hooks: Vec<(String, String)>,
        /// How often a (recipient, message) was shown to its operator, where more than once.
        shown: HashMap<(String, String), u32>,
        /// The store checks after the drill.
        checks: StoreChecks,
    }

    impl Drill {
        /// [`SCENARIO`], no inbox read, no row, hook run or duplicate, and store checks
        /// that found the relay's journal sound and 3 receipts valid.
        fn new() -> Self {
            Drill {
                text: SCENARIO.to_owned(),
                inboxes: BTreeMap::new(),
                matrix: vec![],
                hooks: vec![],
                shown: HashMap::new(),
                checks: StoreChecks {
                    journals: vec![("relay".into(), Ok(3))],
                    receipts: (3, 0),
                    receipts_unread: vec![],
                    quarantined: vec![],
                },
            }
        }

        /// [`Drill::new`] with `inboxes` read and the sender's table `matrix`.
        fn with(inboxes: BTreeMap<String, Vec<Value>>, matrix: Vec<Value>) -> Self {
            Drill {
                inboxes,
                matrix,
                ..Drill::new()
            }
        }

        fn score(self) -> Report {
            score_scenario(
                &self.text,
                self.inboxes,
                self.matrix,
                self.hooks,
                self.shown,
                self.checks,
            )
        }
    }

    /// Scores scenario `text`'s first inject, sent at t=1000 ms, in a drill the harness ran
    /// with nodes for SEC, KAZ and KGZ.
    fn score_scenario(
        text: &str,
        inboxes: BTreeMap<String, Vec<Value>>,
        matrix: Vec<Value>,
        hooks: Vec<(String, String)>,
        shown: HashMap<(String, String), u32>,
        checks: StoreChecks,
    ) -> Report {
        let sc = Scenario::parse(text, "t").expect("scenario");
        let roster = roster();
        let participants = vec!["SEC".to_owned(), "KAZ".to_owned(), "KGZ".to_owned()];
        // KAZ answered twice (the first counts); KGZ did not.
        let answers = json!([{"from": "KAZ", "received_at_ms": 9000}, {"from": "KAZ", "received_at_ms": 2500}]);
        let view = json!({"created_at_ms": 1000, "accepted_at_ms": 1001, "state": "accepted", "recipients": matrix, "answers": answers, "delivered": 0, "acknowledged": 0});
        score(Inputs {
            shown,
            hooks: Some(HashMap::from([("SEC".to_owned(), hooks)])),
            checks: Some(checks),
            exits: Some(vec![ProcessEnd {
                process: "relay".into(),
                when: "at the drill's end".into(),
                exit: crate::process::Exit::Code(0),
                before: false,
            }]),
            ..one_inject(&sc, &roster, &participants, view, inboxes)
        })
        .expect("scores")
    }

    /// Inputs for scenario `sc`'s first inject, sent as `m1` at t=1000 ms, its sender's
    /// view `view`, the nodes `participants` with `inboxes`; nothing else recorded (no
    /// hooks, store checks or relay exit), not live.
    fn one_inject<'a>(
        sc: &'a Scenario,
        roster: &'a Roster,
        participants: &'a [String],
        view: Value,
        inboxes: BTreeMap<String, Vec<Value>>,
    ) -> Inputs<'a> {
        Inputs {
            scenario: sc,
            seed: 1,
            dir: Path::new("/tmp"),
            started_at_ms: 1000,
            wall_s: 1.0,
            participants,
            live: false,
            roster,
            injects: vec![Sent {
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
            inboxes,
            shown: HashMap::new(),
            hooks: None,
            faults: vec![],
            proxies: BTreeMap::new(),
            checks: None,
            exits: None,
        }
    }

    /// The nodes of most drills here: the sender's and both recipients'.
    const SEC_KAZ_KGZ: &[&str] = &["SEC", "KAZ", "KGZ"];

    /// Scores scenario `text`'s first inject as [`one_inject`] has it, with nodes for
    /// `nodes`, once `tweak` has set what else the test is about.
    fn score_one_inject(
        text: &str,
        nodes: &[&str],
        view: Value,
        inboxes: BTreeMap<String, Vec<Value>>,
        tweak: impl FnOnce(&mut Inputs<'_>),
    ) -> Report {
        let sc = Scenario::parse(text, "t").expect("scenario");
        let roster = roster();
        let participants: Vec<String> = nodes.iter().map(|n| (*n).to_owned()).collect();
        let mut inputs = one_inject(&sc, &roster, &participants, view, inboxes);
        tweak(&mut inputs);
        score(inputs).expect("scores")
    }

    /// [`SCENARIO`]'s inject never sent, with nodes for SEC, KAZ and KGZ and nothing read.
    fn scenario_never_sent() -> Report {
        score_one_inject(
            SCENARIO,
            SEC_KAZ_KGZ,
            Value::Null,
            BTreeMap::new(),
            never_sent,
        )
    }

    /// The first inject was never sent: the drill holds no id or send time for it.
    fn never_sent(inputs: &mut Inputs<'_>) {
        inputs.injects[0].id = None;
        inputs.injects[0].sent_at_ms = None;
    }

    fn invariant<'a>(r: &'a Report, name: &str) -> &'a Invariant {
        r.invariants
            .iter()
            .find(|x| x.name == name)
            .expect("invariant")
    }

    fn objective<'a>(r: &'a Report, name: &str) -> &'a ObjectiveResult {
        r.objectives
            .iter()
            .find(|o| o.name == name)
            .expect("objective")
    }

    #[test]
    fn a_clean_drill_passes() {
        let inboxes = BTreeMap::from([
            ("SEC".to_owned(), vec![]),
            ("KAZ".to_owned(), vec![inbox_item("m1", 1500)]),
            ("KGZ".to_owned(), vec![inbox_item("m1", 1600)]),
        ]);
        let matrix = vec![
            row("KAZ", Some(1500), Some(3000), None),
            row("KGZ", Some(1600), None, Some(6000)),
        ];
        let r = Drill {
            hooks: vec![("m1".into(), "KGZ".into())],
            ..Drill::with(inboxes, matrix)
        }
        .score();
        assert!(objective(&r, "delivered").met);
        // KGZ never acknowledged: that objective fails, but the escalation one holds.
        assert!(!objective(&r, "acknowledged").met);
        assert!(objective(&r, "KGZ escalated").met);
        let answered = objective(&r, "answered");
        assert!(!answered.met);
        assert_eq!(answered.failed, vec!["KGZ never answered".to_owned()]);
        let kaz = r.participants.iter().find(|p| p.id == "KAZ").expect("KAZ");
        assert_eq!(kaz.cells[0].answered_s, Some(1.5), "the first answer");
        assert_eq!(r.messages_lost, 0);
        assert!(!r.passed, "an unmet objective fails the drill");
    }

    /// An objective with no one in scope is unmet and says why, rather than "NOT MET"
    /// with nothing under it; one whose inject was never sent says that.
    #[test]
    fn an_objective_with_no_one_in_scope_says_why_it_is_unmet() {
        let text = format!("{SCENARIO}[[objectives]]\nname = \"nobody\"\ninject = \"check\"\nexpect = \"delivered\"\nexcept = [\"KAZ\", \"KGZ\"]\n");
        let inboxes = BTreeMap::from([
            ("KAZ".to_owned(), vec![inbox_item("m1", 1500)]),
            ("KGZ".to_owned(), vec![inbox_item("m1", 1600)]),
        ]);
        let matrix = vec![
            row("KAZ", Some(1500), Some(3000), None),
            row("KGZ", Some(1600), Some(3000), None),
        ];
        let checks = StoreChecks {
            journals: vec![],
            receipts: (1, 0),
            receipts_unread: vec![],
            quarantined: vec![],
        };
        let r = Drill {
            text: text.clone(),
            checks,
            ..Drill::with(inboxes, matrix)
        }
        .score();
        let o = objective(&r, "nobody");
        assert!(!o.met);
        assert_eq!(o.in_scope, 0);
        assert_eq!(
            o.failed,
            vec!["no recipient of inject \"check\" in scope (except KAZ, KGZ)".to_owned()]
        );
        assert!(report_text_has(&r, "no recipient of inject"));

        let r = score_one_inject(
            &text,
            &["SEC", "KAZ"],
            Value::Null,
            BTreeMap::new(),
            never_sent,
        );
        assert_eq!(
            objective(&r, "delivered").failed,
            vec!["inject \"check\" was never sent".to_owned()]
        );
    }

    /// An inject never sent (its sender's node down for good when it was due, the drill
    /// ended without it) fails its objectives as never sent, and the invariant on injects
    /// says so: "every inject accepted" gave "0 of 1" with no reason, where it names a
    /// refused inject and one whose sender gave no record.
    #[test]
    fn an_inject_never_sent_fails_as_never_sent() {
        let r = scenario_never_sent();
        assert_eq!(r.injects[0].state, "not sent");
        for o in &r.objectives {
            assert!(!o.met, "{o:?}");
            assert_eq!(
                o.failed,
                vec!["inject \"check\" was never sent".to_owned()],
                "{o:?}"
            );
        }
        let inv = invariant(&r, "every inject accepted");
        assert_eq!(inv.detail, "0 of 1; \"check\" never sent");
        assert!(report_text_has(&r, "was never sent"));
        assert!(crate::html::render(&r).contains("was never sent"));
    }

    /// An inject whose send got no answer (the node took the request and did not answer in
    /// time), after which its sender's node went down for good, has no message id: the drill
    /// never heard one. Its node may have stored it, and relayed it, all the same; the
    /// report said "never sent" ("not sent", "inject "check" was never sent"). Where the
    /// drill could not read the node's store it does not know: it says so, with why, in the
    /// inject's state, "every inject accepted", the objectives, the acknowledgements
    /// required, and the HTML timeline's mark. Where the store, read at rest, keeps no
    /// message under the send's key, it was never sent, and the report says how it knows.
    #[test]
    fn an_inject_whose_send_got_no_answer_is_not_said_never_sent() {
        let error = "the node at http://127.0.0.1:1 did not answer within 5s".to_owned();
        let with = |no_answer: NoAnswer| {
            score_one_inject(
                SCENARIO,
                SEC_KAZ_KGZ,
                Value::Null,
                BTreeMap::new(),
                |inputs| {
                    never_sent(inputs);
                    inputs.injects[0].no_answer = Some(no_answer);
                },
            )
        };
        let r = with(NoAnswer::Unknown {
            error: error.clone(),
            why: "its node went down for good, and its store could not be read (disk I/O error)"
                .to_owned(),
        });
        let account = format!("not known whether it was sent: its send got no answer ({error}), and its node went down for good, and its store could not be read (disk I/O error)");
        assert_eq!(r.injects[0].state, "unknown");
        assert_eq!(r.injects[0].unanswered.as_deref(), Some(account.as_str()));
        let accepted = invariant(&r, "every inject accepted");
        assert!(!accepted.held);
        assert_eq!(accepted.detail, format!("0 of 1; \"check\" {account}"));
        for o in &r.objectives {
            assert!(!o.met, "{o:?}");
            assert_eq!(o.failed, [format!("inject \"check\": {account}")], "{o:?}");
        }
        assert_eq!(
            acks_invariant(&r).detail,
            format!("0 of 0 acknowledged; not required of \"check\": {account}")
        );
        let text = summary(&r);
        assert!(!text.contains("never sent"), "{text}");
        assert!(text.contains(&account), "{text}");
        let html = crate::html::render(&r);
        assert!(!html.contains("never sent"), "{html}");
        assert!(
            html.contains(&format!("△?<title>check due, {account}, by SEC</title>")),
            "{html}"
        );
        // Its node's store keeps nothing under the send's key: never sent, and why it is known.
        let r = with(NoAnswer::NotStored {
            error: error.clone(),
        });
        assert_eq!(r.injects[0].state, "not sent");
        let account = format!("never sent: its send got no answer ({error}), and its node, down at the end, holds no message under its key");
        assert_eq!(
            objective(&r, "delivered").failed,
            [format!("inject \"check\": {account}")]
        );
        assert!(summary(&r).contains(&account), "{}", summary(&r));
    }

    /// The report says what it knows of each inject, no more: one sent whose sender's node
    /// gave no record of it at the end (it was down) is `unknown`, not "not sent", and the
    /// invariant on injects says why it fails; one never sent is drawn hollow where it was
    /// due on the HTML timeline, not as sent at that time.
    #[test]
    fn an_inject_is_reported_sent_only_if_it_was() {
        let r = score_one_inject(SCENARIO, SEC_KAZ_KGZ, Value::Null, BTreeMap::new(), |_| {});
        assert_eq!(r.injects[0].state, "unknown");
        let inv = invariant(&r, "every inject accepted");
        assert!(!inv.held);
        assert_eq!(
            inv.detail,
            "0 of 1; \"check\" sent, but SEC's node gave no record of it at the end"
        );
        let html = crate::html::render(&r);
        assert!(html.contains("▲<title>check sent by SEC</title>"), "sent");

        let r = scenario_never_sent();
        assert_eq!(r.injects[0].state, "not sent");
        let html = crate::html::render(&r);
        assert!(!html.contains("check sent by"), "drawn as sent");
        assert!(html.contains("△<title>check due, not sent, by SEC</title>"));
    }

    fn report_text_has(r: &Report, what: &str) -> bool {
        summary(r).contains(what)
    }

    #[test]
    fn a_delivery_held_in_quarantine_fails_the_drill() {
        let inboxes = BTreeMap::from([
            ("KAZ".to_owned(), vec![inbox_item("m1", 1500)]),
            ("KGZ".to_owned(), vec![inbox_item("m1", 1600)]),
        ]);
        let matrix = vec![
            row("KAZ", Some(1500), Some(2000), None),
            row("KGZ", Some(1600), Some(2000), None),
        ];
        let mut drill = Drill::with(inboxes, matrix);
        drill.checks.quarantined = vec![("KGZ".into(), 2)];
        let r = drill.score();
        let q = invariant(&r, "nothing quarantined");
        assert!(!q.held);
        assert!(q.detail.contains("KGZ 2"), "{}", q.detail);
        assert!(!r.passed);
    }

    #[test]
    fn a_message_missing_from_an_inbox_is_lost() {
        let inboxes = BTreeMap::from([
            ("KAZ".to_owned(), vec![inbox_item("m1", 1500)]),
            ("KGZ".to_owned(), vec![]),
        ]);
        let matrix = vec![
            row("KAZ", Some(1500), Some(2000), None),
            row("KGZ", None, None, None),
        ];
        let r = Drill::with(inboxes, matrix).score();
        assert_eq!(r.messages_lost, 1);
        assert!(
            !r.invariants
                .iter()
                .find(|i| i.name.contains("lost"))
                .expect("lost invariant")
                .held
        );
        assert!(!r.passed);
    }

    /// The first inject of `SCENARIO` to KAZ and KGZ, KAZ holding it, KGZ's node down at the
    /// end with `kgz_inbox` read from its store, or `at_rest` saying it could not be.
    fn score_kgz_down(kgz_inbox: Vec<Value>, at_rest: Result<(), String>) -> Report {
        // KGZ's delivered receipt never reached SEC: its node went down first.
        let matrix = json!([
            row("KAZ", Some(1500), None, None),
            row("KGZ", None, None, None)
        ]);
        let view = json!({"created_at_ms": 1000, "accepted_at_ms": 1001, "state": "accepted", "recipients": matrix, "delivered": 1, "acknowledged": 0});
        let inboxes = BTreeMap::from([
            ("KAZ".to_owned(), vec![inbox_item("m1", 1500)]),
            ("KGZ".to_owned(), kgz_inbox),
        ]);
        score_one_inject(SCENARIO, SEC_KAZ_KGZ, view, inboxes, |inputs| {
            inputs.at_rest = BTreeMap::from([("KGZ".to_owned(), at_rest)]);
        })
    }

    fn lost_invariant(r: &Report) -> &Invariant {
        r.invariants
            .iter()
            .find(|i| i.name == "zero accepted messages lost")
            .expect("lost invariant")
    }

    /// A message the store of a node down at the end holds was delivered, not lost, and the
    /// report says where that inbox was read from.
    #[test]
    fn a_message_held_in_a_down_nodes_store_is_held_not_lost() {
        let r = score_kgz_down(vec![inbox_item("m1", 1800)], Ok(()));
        assert_eq!(r.messages_lost, 0);
        let kgz = r.participants.iter().find(|p| p.id == "KGZ").expect("KGZ");
        assert_eq!(kgz.cells[0].delivered_s, Some(0.8));
        assert_eq!(kgz.inbox_read.as_deref(), Some(READ_AT_REST));
        let lost = lost_invariant(&r);
        assert!(lost.held, "{}", lost.detail);
        assert!(
            lost.detail
                .contains("1 held by KGZ (read from its store; node down at the end)"),
            "{}",
            lost.detail
        );
        let delivered = r
            .objectives
            .iter()
            .find(|o| o.name == "delivered")
            .expect("delivered");
        assert!(delivered.met, "{:?}", delivered.failed);
        // What its store does not hold, it never held: lost.
        let r = score_kgz_down(vec![], Ok(()));
        assert_eq!(r.messages_lost, 1);
        assert!(!lost_invariant(&r).held);
    }

    /// A down node whose store cannot be read is said to be so: its deliveries are not
    /// known, neither counted lost nor held, and the drill fails on them.
    #[test]
    fn a_down_node_whose_store_cannot_be_read_is_not_known_not_lost() {
        let r = score_kgz_down(vec![], Err("disk I/O error".into()));
        assert_eq!(r.messages_lost, 0);
        let lost = lost_invariant(&r);
        assert!(!lost.held, "{}", lost.detail);
        assert!(
            lost.detail.contains(
                "KGZ: node down at the end and its store could not be read (disk I/O error)"
            ) && lost.detail.contains("1 not known"),
            "{}",
            lost.detail
        );
        let delivered = r
            .objectives
            .iter()
            .find(|o| o.name == "delivered")
            .expect("delivered");
        assert!(
            delivered
                .failed
                .iter()
                .any(|f| f.starts_with("KGZ: not known whether it held it")),
            "{:?}",
            delivered.failed
        );
        let kgz = r.participants.iter().find(|p| p.id == "KGZ").expect("KGZ");
        assert!(kgz
            .inbox_read
            .as_deref()
            .is_some_and(|s| s.starts_with("not read:")));
        assert!(!r.passed);
    }

    #[test]
    fn duplicates_and_actual_status_are_caught() {
        let mut actual = inbox_item("m1", 1600);
        actual["status"] = json!("actual");
        actual["exercise_or_test"] = json!(false);
        let inboxes = BTreeMap::from([
            ("KAZ".to_owned(), vec![inbox_item("m1", 1500)]),
            ("KGZ".to_owned(), vec![actual]),
        ]);
        let matrix = vec![
            row("KAZ", Some(1500), Some(2000), None),
            row("KGZ", Some(1600), Some(2000), None),
        ];
        let shown = HashMap::from([(("KAZ".to_owned(), "m1".to_owned()), 2)]);
        let r = Drill {
            shown,
            ..Drill::with(inboxes, matrix)
        }
        .score();
        assert_eq!(r.duplicates_shown, 1);
        assert_eq!(r.exercise_shown_as_actual, 1);
        assert!(!r.passed);
    }

    /// Only the drill's own messages are checked for their status: a live deployment's
    /// real traffic in the same inboxes (actual, or `test` as OPERATIONS 2.9 has
    /// communications checks sent) changes nothing, while the inject shown as actual still
    /// fails the drill.
    #[test]
    fn only_the_drills_messages_must_be_shown_as_exercise() {
        let inboxes = |kgz: Value| {
            let mut real = inbox_item("r1", 1200);
            real["status"] = json!("actual");
            real["exercise_or_test"] = json!(false);
            let mut check = inbox_item("r2", 1300);
            check["status"] = json!("test");
            BTreeMap::from([
                ("KAZ".to_owned(), vec![real, inbox_item("m1", 1500)]),
                ("KGZ".to_owned(), vec![check, kgz]),
            ])
        };
        let matrix = || {
            vec![
                row("KAZ", Some(1500), Some(2000), None),
                row("KGZ", Some(1600), Some(2000), None),
            ]
        };
        let plain = BTreeMap::from([
            ("KAZ".to_owned(), vec![inbox_item("m1", 1500)]),
            ("KGZ".to_owned(), vec![inbox_item("m1", 1600)]),
        ]);
        let score_inboxes = |inboxes| Drill::with(inboxes, matrix()).score();
        let without = score_inboxes(plain);
        let with = score_inboxes(inboxes(inbox_item("m1", 1600)));
        assert_eq!(with.exercise_shown_as_actual, 0);
        let verdict = |r: &Report| {
            r.invariants
                .iter()
                .map(|x| (x.name.clone(), x.held))
                .collect::<Vec<_>>()
        };
        assert_eq!(verdict(&with), verdict(&without));
        assert_eq!(with.passed, without.passed);

        let mut actual = inbox_item("m1", 1600);
        actual["status"] = json!("actual");
        actual["exercise_or_test"] = json!(false);
        let shown = score_inboxes(inboxes(actual));
        assert_eq!(shown.exercise_shown_as_actual, 1);
        let inv = invariant(&shown, "no exercise message shown as actual");
        assert!(!inv.held);
        assert!(!shown.passed);
    }

    #[test]
    fn late_delivery_and_missing_escalation_fail_their_objectives() {
        let inboxes = BTreeMap::from([
            ("KAZ".to_owned(), vec![inbox_item("m1", 4000)]),
            ("KGZ".to_owned(), vec![inbox_item("m1", 1500)]),
        ]);
        // KGZ overdue but the sender's hook never ran for it.
        let matrix = vec![
            row("KAZ", Some(4000), Some(4500), None),
            row("KGZ", Some(1500), None, Some(6000)),
        ];
        let r = Drill::with(inboxes, matrix).score();
        let d = objective(&r, "delivered");
        assert!(
            !d.met && d.failed.iter().any(|f| f.contains("KAZ")),
            "{d:?}"
        );
        assert!(!objective(&r, "KGZ escalated").met);
    }

    /// A node whose received receipts cannot be read fails the receipt invariant, naming
    /// the error: they used to be read as none, so that node's receipts went unchecked while
    /// the invariant held on the others'.
    #[test]
    fn receipts_that_cannot_be_read_fail_the_drill() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut dep = Deployment::create(&tmp.path().join("dep"), crate::scenario::CICA_ROSTER)
            .expect("deployment");
        let relay = dep.relay_addr;
        dep.add_node("KAZ", relay, 60_000).expect("node");
        let data = dep.nodes["KAZ"].data_dir.clone();
        std::fs::create_dir(&data).expect("data directory");
        drop(hotline_node::store::NodeStore::open(&data).expect("a new store"));
        // A store that opens (and verifies) but whose receipts cannot be listed.
        hotline_store::open(&data.join("node.db"), false)
            .expect("open")
            .execute_batch("ALTER TABLE receipts_in DROP COLUMN received_at_ms")
            .expect("altered");
        let checks = check_stores(&dep).expect("checked");
        let r = Drill {
            checks,
            ..Drill::new()
        }
        .score();
        let inv = invariant(&r, "every receipt signature valid");
        assert!(!inv.held, "{inv:?}");
        assert!(
            inv.detail.contains("KAZ") && inv.detail.contains("received_at_ms"),
            "{inv:?}"
        );
        assert!(!r.passed);
    }

    /// The checks after a drill change nothing in what they check: the store of a node
    /// killed with commits in its write-ahead log (a node down at the end) keeps its file
    /// and its log byte for byte. Opened read-write, as it was, the store was brought to
    /// this release's schema where it lacked it, and its last connection's close folded the
    /// log into the file and removed it: what the journal check had just read was no longer
    /// what lay on disk. SQLite may add the log's index (`node.db-shm`) beside it, which a
    /// reader needs and cannot remove (docs/OPERATIONS.md).
    #[test]
    fn the_store_checks_change_nothing_in_the_stores() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut dep = Deployment::create(&tmp.path().join("dep"), crate::scenario::CICA_ROSTER)
            .expect("deployment");
        let relay = dep.relay_addr;
        dep.add_node("KAZ", relay, 60_000).expect("node");
        let data = dep.nodes["KAZ"].data_dir.clone();
        std::fs::create_dir(&data).expect("data directory");
        let scratch = tmp.path().join("scratch");
        std::fs::create_dir(&scratch).expect("scratch");
        let mut store = hotline_node::store::NodeStore::open(&scratch).expect("a new store");
        let kaz = hotline_proto::ParticipantId::new("KAZ").expect("id");
        // A journaled commit, in the log only (far below SQLite's automatic checkpoint).
        store.claim_participant(&kaz, 1_000).expect("claimed");
        // The files as a SIGKILL leaves them: the log not folded in, not removed.
        for f in ["node.db", "node.db-wal"] {
            std::fs::copy(scratch.join(f), data.join(f)).expect(f);
        }
        drop(store);
        let files = |dir: &Path| -> BTreeMap<String, Vec<u8>> {
            std::fs::read_dir(dir)
                .expect("listed")
                .map(|e| {
                    let e = e.expect("entry");
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, std::fs::read(e.path()).expect("read"))
                })
                .collect()
        };
        let before = files(&data);
        assert!(
            before.get("node.db-wal").is_some_and(|w| !w.is_empty()),
            "commits in the log: {:?}",
            before.keys()
        );
        let checks = check_stores(&dep).expect("checked");
        let kaz_journal = checks.journals.iter().find(|(id, _)| id == "KAZ");
        assert!(
            matches!(kaz_journal, Some((_, Ok(n))) if *n > 0),
            "{:?}",
            checks.journals
        );
        assert!(
            !checks.journals.iter().any(|(id, _)| id == "KAZ receipts"),
            "{:?}",
            checks.journals
        );
        let mut after = files(&data);
        after.remove("node.db-shm");
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>(),
            "the same files"
        );
        for (name, bytes) in &before {
            assert!(after[name] == *bytes, "{name} changed");
        }
    }

    /// The store checks are `hotline audit verify`'s: a relay store whose journal's chain
    /// holds but which stores a message its journal never recorded does not verify (the
    /// chain alone passed it).
    #[test]
    fn a_store_verifies_only_if_its_records_match_its_journal() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("relay.db");
        // The columns `verify_journaled_records` reads, in a relay store's tables.
        hotline_store::open(&path, true)
            .expect("created")
            .execute_batch(&format!(
                "{}
                 CREATE TABLE messages (rseq INTEGER PRIMARY KEY, id BLOB, digest BLOB, key BLOB, sig BLOB);
                 CREATE TABLE receipts (rseq INTEGER PRIMARY KEY, digest BLOB, key BLOB, sig BLOB);",
                hotline_store::journal::SCHEMA
            ))
            .expect("schema");
        assert_eq!(verify_db(&path), Ok(0), "an empty store verifies");
        hotline_store::open(&path, false)
            .expect("open")
            .execute_batch(
                "INSERT INTO messages (id, digest, key, sig) \
                 VALUES (x'0303', zeroblob(32), zeroblob(32), zeroblob(64))",
            )
            .expect("a message row");
        let e = verify_db(&path).expect_err("an unjournaled message");
        assert!(
            e.contains("stored records and journal differ")
                && e.contains("stored message 0303 has no journal entry"),
            "{e}"
        );
    }

    /// A live drill's roll call: the Secretariat to everyone, each to acknowledge.
    const LIVE: &str = r#"
name = "live"
end_s = 60.0
[[injects]]
name = "roll-call"
at_s = 0.0
from = "SEC"
everyone = true
kind = "communications_check"
subject = "s"
respond_within_s = 30.0
[[objectives]]
name = "delivered"
inject = "roll-call"
expect = "delivered"
within_s = 5.0
[[objectives]]
name = "acknowledged"
inject = "roll-call"
expect = "acknowledged"
within_s = 30.0
"#;

    /// Scores [`LIVE`] in live mode with endpoints for `nodes` (their inboxes as given) and
    /// the sender's delivery table `matrix`.
    fn score_live(
        nodes: &[&str],
        inboxes: BTreeMap<String, Vec<Value>>,
        matrix: Vec<Value>,
    ) -> Report {
        let sc = Scenario::parse(LIVE, "live.toml").expect("scenario");
        let roster = roster_of(true);
        let participants: Vec<String> = nodes.iter().map(|n| (*n).to_owned()).collect();
        let view = json!({"created_at_ms": 1000, "accepted_at_ms": 1001, "state": "accepted", "recipients": matrix, "answers": [], "delivered": 0, "acknowledged": 0});
        score(Inputs {
            live: true,
            ..one_inject(&sc, &roster, &participants, view, inboxes)
        })
        .expect("scores")
    }

    /// Live mode scores every recipient the inject addressed, from the sender's table,
    /// not only those in the endpoints file: with endpoints for SEC and KAZ, TJK's missing
    /// acknowledgement fails the drill (it passed, KAZ alone in scope).
    #[test]
    fn a_live_drill_scores_every_addressed_recipient() {
        let inboxes = BTreeMap::from([
            ("SEC".to_owned(), vec![]),
            ("KAZ".to_owned(), vec![inbox_item("m1", 1500)]),
        ]);
        let matrix = vec![
            row("KAZ", Some(1600), Some(3000), None),
            row("KGZ", Some(1700), Some(3000), None),
            row("TJK", Some(1800), None, None),
        ];
        let r = score_live(&["SEC", "KAZ"], inboxes, matrix);
        let ack = objective(&r, "acknowledged");
        assert_eq!(ack.in_scope, 3, "{ack:?}");
        assert_eq!(ack.failed, vec!["TJK never acknowledged".to_owned()]);
        let dlv = objective(&r, "delivered");
        assert!(dlv.met && dlv.in_scope == 3, "{dlv:?}");
        let tjk = r
            .participants
            .iter()
            .find(|p| p.id == "TJK")
            .expect("a row");
        assert_eq!(
            tjk.cells[0].delivered_s,
            Some(0.8),
            "from the sender's table"
        );
        assert!(!r.passed);
    }

    /// The Secretariat's natural set-up, its own node alone in the endpoints file: every
    /// recipient is scored from its delivery table, and a roll call all acknowledged meets
    /// the objectives (none was in scope, and every objective failed). A recipient whose
    /// delivered receipt never came counts as missing.
    #[test]
    fn a_live_drill_with_the_senders_node_alone_is_scored_from_its_table() {
        let inboxes = BTreeMap::from([("SEC".to_owned(), vec![])]);
        let matrix = vec![
            row("KAZ", Some(1600), Some(3000), None),
            row("KGZ", Some(1700), Some(3000), None),
            row("TJK", Some(1800), Some(3000), None),
        ];
        let r = score_live(&["SEC"], inboxes, matrix);
        for o in &r.objectives {
            assert!(o.met && o.in_scope == 3, "{o:?}");
        }
        assert_eq!(r.messages_lost, 0);
        assert!(r.passed, "{}", summary(&r));

        let inboxes = BTreeMap::from([("SEC".to_owned(), vec![])]);
        let matrix = vec![
            row("KAZ", Some(1600), Some(3000), None),
            row("KGZ", Some(1700), Some(3000), None),
            row("TJK", None, None, None),
        ];
        let r = score_live(&["SEC"], inboxes, matrix);
        assert_eq!(r.messages_lost, 1);
        assert_eq!(
            objective(&r, "delivered").failed,
            vec!["TJK never held it".to_owned()]
        );
        assert!(!r.passed);
    }

    /// A recipient the inject addressed but its sender's delivery table leaves out is in
    /// scope all the same, and its shortfall is listed: the scope came from that table, so a
    /// sender's node that dropped KGZ from its table (and never sent it the message) passed
    /// the drill, KAZ alone in scope and "0 lost".
    #[test]
    fn a_recipient_missing_from_the_senders_table_is_scored_and_listed() {
        let inboxes = BTreeMap::from([
            ("SEC".to_owned(), vec![]),
            ("KAZ".to_owned(), vec![inbox_item("m1", 1500)]),
            ("KGZ".to_owned(), vec![]),
        ]);
        let matrix = vec![row("KAZ", Some(1500), Some(3000), None)];
        let text = format!(
            "{ACKS}[[objectives]]\nname = \"acknowledged\"\ninject = \"alert\"\nexpect = \"acknowledged\"\n"
        );
        let r = Drill {
            text,
            ..Drill::with(inboxes, matrix)
        }
        .score();
        for name in ["delivered", "acknowledged"] {
            let o = objective(&r, name);
            assert_eq!(o.in_scope, 2, "{o:?}");
            assert!(!o.met, "{o:?}");
            assert!(
                o.failed
                    .iter()
                    .any(|f| f.contains("KGZ") && f.contains("not in SEC's delivery table")),
                "{o:?}"
            );
        }
        assert_eq!(r.messages_lost, 1, "KGZ never held it");
        let kgz = r.participants.iter().find(|p| p.id == "KGZ").expect("KGZ");
        assert!(kgz.cells[0].addressed);
        assert!(!r.passed, "{}", summary(&r));
    }

    /// An objective whose scope is only partly without nodes (KGZ addressed and in scope,
    /// but the drill runs no node for it) scores the recipients with a node, and says which
    /// it could not score: the JSON's `unscored`, and a line under the objective in the
    /// summary. They used to be left out silently: "MET (1 in scope)" read as if the
    /// objective held for every recipient it names.
    #[test]
    fn recipients_in_scope_without_a_node_are_named_as_not_scored() {
        let view = json!({"created_at_ms": 1000, "accepted_at_ms": 1001, "state": "accepted", "recipients": [row("KAZ", Some(1500), Some(2000), None), row("KGZ", None, None, None)], "answers": [], "delivered": 1, "acknowledged": 1});
        let inboxes = BTreeMap::from([
            ("SEC".to_owned(), vec![]),
            ("KAZ".to_owned(), vec![inbox_item("m1", 1500)]),
        ]);
        let r = score_one_inject(ACKS, &["SEC", "KAZ"], view, inboxes, |_| {});
        let o = objective(&r, "delivered");
        assert!(o.met && o.in_scope == 1, "{o:?}");
        let o = serde_json::to_value(o).expect("json");
        assert_eq!(o["unscored"], json!(["KGZ"]), "{o}");
        assert!(
            report_text_has(&r, "not scored, no node in this drill: KGZ"),
            "{}",
            summary(&r)
        );
        assert!(
            crate::html::render(&r).contains("not scored, no node in this drill: KGZ"),
            "the HTML report says it too"
        );
    }

    /// An alert that requires acknowledgement, with an objective on its delivery only.
    const ACKS: &str = r#"
name = "acks"
end_s = 60.0
[[injects]]
name = "alert"
at_s = 0.0
from = "SEC"
to = ["KAZ", "KGZ"]
subject = "s"
respond_within_s = 10.0
[[objectives]]
name = "delivered"
inject = "alert"
expect = "delivered"
"#;

    /// [`ACKS`] with an `overdue_escalated` objective over every recipient of its inject.
    fn escalated_for_all() -> String {
        format!("{ACKS}[[objectives]]\nname = \"escalated\"\ninject = \"alert\"\nexpect = \"overdue_escalated\"\n")
    }

    /// `overdue_escalated` asks that every recipient in scope whose respond-by passed
    /// unacknowledged was escalated: KAZ, which acknowledged in time, has nothing to
    /// escalate, and KGZ, escalated, may acknowledge late. Both failed it ("overdue false
    /// acknowledged true"), while the drill's early end counted them as done.
    #[test]
    fn a_recipient_that_acknowledged_meets_overdue_escalated() {
        let run = |kgz_acked: Option<u64>, hooks: Vec<(String, String)>| {
            let inboxes = BTreeMap::from([
                ("KAZ".to_owned(), vec![inbox_item("m1", 1500)]),
                ("KGZ".to_owned(), vec![inbox_item("m1", 1600)]),
            ]);
            let matrix = vec![
                row("KAZ", Some(1500), Some(3000), None),
                row("KGZ", Some(1600), kgz_acked, Some(11_000)),
            ];
            Drill {
                text: escalated_for_all(),
                hooks,
                ..Drill::with(inboxes, matrix)
            }
            .score()
        };
        let hook = || vec![("m1".to_owned(), "KGZ".to_owned())];
        let r = run(None, hook());
        let o = objective(&r, "escalated");
        assert!(o.met && o.in_scope == 2, "{o:?}");
        assert!(r.passed, "{}", summary(&r));
        // KGZ acknowledged after it was escalated: still escalated.
        let r = run(Some(12_000), hook());
        assert!(objective(&r, "escalated").met, "{}", summary(&r));
        assert!(r.passed, "{}", summary(&r));
        // Overdue without the hook: not escalated, acknowledged late or not.
        for acked in [None, Some(12_000)] {
            let r = run(acked, vec![]);
            let o = objective(&r, "escalated");
            assert_eq!(
                o.failed,
                vec!["KGZ: overdue, but the sender's escalation hook never ran for it".to_owned()],
                "{o:?}"
            );
            assert!(!r.passed);
        }
    }

    /// The one definition, case by case.
    #[test]
    fn escalation_shortfall_is_what_the_objective_says() {
        let short = |overdue, acked, hook| escalation_shortfall("KGZ", overdue, acked, hook);
        assert_eq!(short(true, false, Some(true)), None);
        assert_eq!(short(true, true, Some(true)), None, "acknowledged late");
        assert_eq!(
            short(true, false, None),
            None,
            "live mode: overdue suffices"
        );
        assert_eq!(
            short(false, true, Some(false)),
            None,
            "acknowledged in time"
        );
        assert_eq!(short(false, true, None), None);
        assert!(short(true, false, Some(false)).is_some_and(|w| w.contains("never ran")));
        assert!(short(true, true, Some(false)).is_some());
        assert!(short(false, false, Some(true)).is_some_and(|w| w.contains("neither")));
        assert!(short(false, false, None).is_some());
    }

    /// Every recipient of an inject that requires acknowledgement must have acknowledged
    /// it by the end, whatever objectives the author wrote: KGZ overdue and silent, with no
    /// objective on acknowledgement, fails the drill (it passed on "delivered"). An
    /// `overdue_escalated` objective covering KGZ, or a fault keeping KGZ's node down to the
    /// end, says the scenario expects it, and the drill passes.
    #[test]
    fn an_acknowledgement_required_and_never_given_fails_the_drill() {
        let run = |text: &str, hooks: Vec<(String, String)>| {
            let inboxes = BTreeMap::from([
                ("KAZ".to_owned(), vec![inbox_item("m1", 1500)]),
                ("KGZ".to_owned(), vec![inbox_item("m1", 1600)]),
            ]);
            let matrix = vec![
                row("KAZ", Some(1500), Some(3000), None),
                row("KGZ", Some(1600), None, Some(11_000)),
            ];
            Drill {
                text: text.to_owned(),
                hooks,
                ..Drill::with(inboxes, matrix)
            }
            .score()
        };
        let r = run(ACKS, vec![]);
        assert!(objective(&r, "delivered").met);
        assert!(!r.passed, "{}", summary(&r));
        let inv = acks_invariant(&r);
        assert!(!inv.held, "{inv:?}");
        assert!(
            inv.detail
                .contains("KGZ never acknowledged \"alert\" (overdue)"),
            "{inv:?}"
        );
        assert!(!inv.detail.contains("KAZ"), "{inv:?}");

        let escalated = format!(
            "{ACKS}[[objectives]]\nname = \"KGZ escalated\"\ninject = \"alert\"\nexpect = \"overdue_escalated\"\nparticipants = [\"KGZ\"]\n"
        );
        let r = run(&escalated, vec![("m1".into(), "KGZ".into())]);
        assert!(acks_invariant(&r).held, "{:?}", acks_invariant(&r));
        assert!(r.passed, "{}", summary(&r));

        let offline = format!(
            "{ACKS}[[faults]]\nkind = \"offline\"\nparticipant = \"KGZ\"\nfrom_s = 5.0\nto_s = 60.0\n"
        );
        let r = run(&offline, vec![]);
        assert!(acks_invariant(&r).held, "{:?}", acks_invariant(&r));
        assert!(r.passed, "{}", summary(&r));
        // Back before the end: it is expected to acknowledge.
        let r = run(&offline.replace("to_s = 60.0", "to_s = 30.0"), vec![]);
        assert!(!acks_invariant(&r).held);
    }

    /// The invariant "every acknowledgement required was given", found in `r`.
    fn acks_invariant(r: &Report) -> Invariant {
        r.invariants
            .iter()
            .find(|x| x.name == "every acknowledgement required was given")
            .cloned()
            .expect("the invariant")
    }

    /// [`ACKS`], with an `acknowledged` objective, and a fault `fault` (`kind`, then its
    /// fields) appended.
    fn acks_with_fault(fault: &str) -> String {
        format!(
            "{ACKS}[[objectives]]\nname = \"acknowledged\"\ninject = \"alert\"\nexpect = \"acknowledged\"\n[[faults]]\n{fault}\n"
        )
    }

    /// A recipient's inbox item for `m1`, received at 1500 ms, acknowledged at its own node
    /// at `acked` if given.
    fn acked_item(acked: Option<u64>) -> Value {
        let mut m = inbox_item("m1", 1500);
        m["acknowledged"] = json!(acked.is_some());
        m["acknowledged_at_ms"] = json!(acked);
        m
    }

    /// The fault that kills SEC's node at 5 s and keeps it down to the end (60 s).
    const KILL_SEC_AT_5S: &str =
        "kind = \"kill_node\"\nparticipant = \"SEC\"\nat_s = 5.0\nrestart_after_s = 100.0";

    /// [`ACKS`] with an `acknowledged` objective, SEC's node killed at 5 s and down to the
    /// end; "alert" delivered to KAZ and KGZ at 0.5 s. KAZ acknowledged at 2 s, before the
    /// kill, and SEC holds it; KGZ's item is acknowledged at its own node at `kgz_acked` if
    /// given, and SEC holds no acknowledgement of KGZ's.
    fn sec_killed_at_5s(kgz_acked: Option<u64>) -> Drill {
        Drill {
            text: acks_with_fault(KILL_SEC_AT_5S),
            inboxes: BTreeMap::from([
                ("SEC".to_owned(), vec![]),
                ("KAZ".to_owned(), vec![acked_item(Some(3000))]),
                ("KGZ".to_owned(), vec![acked_item(kgz_acked)]),
            ]),
            matrix: vec![
                row("KAZ", Some(1500), Some(3000), None),
                row("KGZ", Some(1500), None, None),
            ],
            ..Drill::new()
        }
    }

    impl Drill {
        /// The same drill with SEC's node restarted 10 s after its kill: up at the end.
        fn sec_back_before_the_end(mut self) -> Self {
            assert!(
                self.text.contains("restart_after_s = 100.0"),
                "{}",
                self.text
            );
            self.text = self.text.replace("100.0", "10.0");
            self
        }
    }

    /// SEC's node is killed at 5 s and kept down to the end. KAZ acknowledged before, and
    /// SEC holds it; KGZ acknowledged after, at its own node, and its acknowledgement waits
    /// at the relay for SEC, which never comes back. KGZ gave the acknowledgement required:
    /// the invariant holds and says where it was given. It failed, "KGZ never acknowledged
    /// "alert"", as if KGZ's duty officer had not, or the system had lost it. The
    /// `acknowledged` objective (the sender holds it) fails, naming SEC's node down as the
    /// reason. With SEC up, the same picture is a receipt lost: it fails.
    #[test]
    fn an_acknowledgement_a_down_sender_could_not_receive_was_given() {
        let r = sec_killed_at_5s(Some(7000)).score();
        let inv = acks_invariant(&r);
        assert!(inv.held, "{inv:?}");
        assert!(
            inv.detail.starts_with("2 of 2 acknowledged")
                && inv.detail.contains(
                    "KGZ acknowledged \"alert\" at its node; it never reached SEC (node down at the end)"
                ),
            "{inv:?}"
        );
        assert_eq!(
            objective(&r, "acknowledged").failed,
            ["KGZ acknowledged at its node, but it never reached SEC (node down at the end)"]
        );
        // KGZ's officer did not acknowledge: missing, as with SEC up.
        let r = sec_killed_at_5s(None).score();
        let inv = acks_invariant(&r);
        assert!(!inv.held, "{inv:?}");
        assert!(
            inv.detail.contains("KGZ never acknowledged \"alert\""),
            "{inv:?}"
        );
        assert_eq!(
            objective(&r, "acknowledged").failed,
            ["KGZ never acknowledged"]
        );
        // SEC back before the end: a receipt that never reached it was lost.
        let r = sec_killed_at_5s(Some(7000))
            .sec_back_before_the_end()
            .score();
        let inv = acks_invariant(&r);
        assert!(!inv.held, "{inv:?}");
        assert!(
            inv.detail.contains("KGZ never acknowledged \"alert\""),
            "{inv:?}"
        );
    }

    /// The matrix's cell of an acknowledgement given at the recipient's node that never
    /// reached its sender (SEC, down at the end) says so, `6.00s at node`, in the text
    /// summary and the HTML report alike; it showed `-`, as if KGZ had never acknowledged,
    /// which only the invariant's detail contradicted. One acknowledged before SEC went
    /// down shows its time, as ever, and with SEC up at the end a receipt it lacks shows
    /// `-`: lost, not given.
    #[test]
    fn the_matrix_shows_an_acknowledgement_that_never_reached_a_down_sender() {
        let r = sec_killed_at_5s(Some(7000)).score();
        let text = summary(&r);
        let html = crate::html::render(&r);
        for (p, cell, class) in [
            ("KAZ", "0.50s / 2.00s", "ok"),
            ("KGZ", "0.50s / 6.00s at node", "late"),
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(p) && l.contains(&format!("| {cell:<23} |"))),
                "{p}: {text}"
            );
            assert!(
                // KAZ's answer follows in the HTML cell (the summary has no room for it).
                html.contains(&format!("<td class=\"{class}\">{cell}<"))
                    || html.contains(&format!("<td class=\"{class}\">{cell} · answered")),
                "{p}: {html}"
            );
        }
        // SEC back before the end: KGZ's receipt never reaching it was lost, not given.
        let r = sec_killed_at_5s(Some(7000))
            .sec_back_before_the_end()
            .score();
        let text = summary(&r);
        assert!(
            text.lines()
                .any(|l| l.starts_with("KGZ") && l.contains(&format!("| {:<23} |", "0.50s / -"))),
            "{text}"
        );
        assert!(!text.contains("at node"), "{text}");
    }

    /// SEC's node killed at 5 s and down to the end; KAZ's acknowledgement reached it, KGZ's
    /// was given at KGZ's node only, at 6 s (its matrix cell `0.50s / 6.00s at node`), and
    /// with `overdue` SEC had marked KGZ overdue at 3 s, before it went down. The report
    /// built from it.
    fn kgz_acked_at_node(overdue: bool) -> Report {
        let mut drill = sec_killed_at_5s(Some(7000));
        drill.matrix[1] = row("KGZ", Some(1500), None, overdue.then_some(4000));
        drill.score()
    }

    /// The HTML timeline draws an acknowledgement given at the recipient's node that never
    /// reached its sender (down at the end), hollow, where it was given, and says so in its
    /// title and the legend: the matrix cell said `6.00s at node` and the timeline had no
    /// mark of it, as if KGZ had never acknowledged. KAZ's, which SEC holds, is drawn
    /// filled, as ever.
    #[test]
    fn the_timeline_draws_an_acknowledgement_given_at_the_recipients_node() {
        let html = crate::html::render(&kgz_acked_at_node(false));
        assert!(
            html.contains("<title>KAZ acknowledged alert at +2.0s</title></rect>"),
            "{html}"
        );
        let mark = html
            .split("<rect ")
            .find(|r| r.contains("<title>KGZ acknowledged alert at its node at +6.0s"))
            .unwrap_or_else(|| panic!("no mark of KGZ's acknowledgement: {html}"));
        assert!(
            mark.contains("fill=\"#fff\"")
                && mark.contains("never reached SEC (node down at the end)</title>"),
            "hollow, saying why: {mark}"
        );
        assert!(
            html.contains("□ acknowledged at the recipient's node only"),
            "the legend names it: {html}"
        );
    }

    /// The timeline marks an overdue recipient where its sender's node marked it overdue
    /// (3.0 s after the send here: between KGZ's delivery at 0.5 s and its acknowledgement at
    /// its node at 6.0 s), not at the right edge of the timeline, where every overdue mark
    /// was drawn whenever its respond-by fell.
    #[test]
    fn the_timeline_marks_overdue_when_it_fell() {
        let html = crate::html::render(&kgz_acked_at_node(true));
        let x_of = |element: &str, attr: &str, title: &str| -> f64 {
            let at = html
                .find(title)
                .unwrap_or_else(|| panic!("no {title:?} in {html}"));
            let start = html[..at]
                .rfind(&format!("<{element} "))
                .expect("its element");
            let rest = &html[start..at];
            let v = rest
                .split(&format!("{attr}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_else(|| panic!("no {attr} in {rest}"));
            v.parse().expect("a number")
        };
        let delivered = x_of("circle", "cx", "<title>KGZ delivered alert at +0.5s");
        let acked = x_of(
            "rect",
            "x",
            "<title>KGZ acknowledged alert at its node at +6.0s",
        );
        let overdue = x_of("text", "x", "<title>KGZ overdue on alert at +3.0s");
        assert!(
            delivered < overdue && overdue < acked,
            "{delivered} < {overdue} < {acked}"
        );
    }

    /// An overdue cell is red, as the legend says, whether or not its recipient acknowledged
    /// at its node later: the respond-by passed with its sender holding no acknowledgement,
    /// which is what red says. One acknowledged at the node and not overdue is yellow. The
    /// cell overdue and acknowledged at the node was yellow while the legend said "red:
    /// overdue".
    #[test]
    fn an_overdue_cell_is_red_as_the_legend_says() {
        let html = crate::html::render(&kgz_acked_at_node(true));
        assert!(
            html.contains("<td class=\"bad\">0.50s / 6.00s at node OVERDUE</td>"),
            "{html}"
        );
        assert!(html.contains("red: overdue"), "{html}");
        let html = crate::html::render(&kgz_acked_at_node(false));
        assert!(
            html.contains("<td class=\"late\">0.50s / 6.00s at node</td>"),
            "{html}"
        );
    }

    /// An `overdue_escalated` objective on a message whose sender's node is down to the end
    /// cannot be met once it is not: only the sender's node marks a message overdue and runs
    /// the escalation hook. The report names it unmeetable, and why (or, for KAZ, who
    /// acknowledged at its node, that its acknowledgement never reached SEC); it failed
    /// "KGZ: neither acknowledged nor overdue (its respond-by had not passed)", a shortfall
    /// the system could have made good. It is still not met. With SEC up at the end, the
    /// shortfall is as before.
    #[test]
    fn an_escalation_a_down_sender_cannot_make_is_named_unmeetable() {
        let drill = || {
            let mut d = sec_killed_at_5s(None);
            d.text = format!("{}[[faults]]\n{KILL_SEC_AT_5S}\n", escalated_for_all());
            // KAZ, too, acknowledged at its node only, after SEC went down.
            d.inboxes
                .insert("KAZ".to_owned(), vec![acked_item(Some(7000))]);
            d.matrix[0] = row("KAZ", Some(1500), None, None);
            d
        };
        let r = drill().score();
        let o = objective(&r, "escalated");
        assert!(!o.met);
        assert_eq!(
            o.failed,
            [
                "KAZ acknowledged at its node, but it never reached SEC (node down at the end)",
                "KGZ: unmeetable, as SEC's node, which marks a message overdue and runs the escalation hook, is down at the end",
            ]
        );
        let r = drill().sec_back_before_the_end().score();
        assert_eq!(
            objective(&r, "escalated").failed[1],
            "KGZ: neither acknowledged nor overdue (its respond-by had not passed)"
        );
    }

    /// A recipient whose node a fault keeps down to the end cannot acknowledge: it is not
    /// required to, as before, and the invariant now names it and why, so that the exercise
    /// director reads "not required of KGZ (node down at the end)" rather than nothing at
    /// all. An inject never sent (its sender down when it was due) required nothing either,
    /// and is named so.
    #[test]
    fn acknowledgements_not_required_are_named_with_why() {
        let text = acks_with_fault(
            "kind = \"offline\"\nparticipant = \"KGZ\"\nfrom_s = 0.5\nto_s = 60.0",
        )
        .replace(
            "[[objectives]]\nname = \"acknowledged\"",
            "[[injects]]\nname = \"late\"\nat_s = 30.0\nfrom = \"SEC\"\nto = [\"KAZ\"]\nsubject = \"s\"\nrespond_within_s = 5.0\n[[objectives]]\nname = \"acknowledged\"",
        );
        let view = json!({"created_at_ms": 1000, "accepted_at_ms": 1001, "state": "accepted", "recipients": [row("KAZ", Some(1500), Some(3000), None), row("KGZ", None, None, None)], "answers": []});
        let inboxes = BTreeMap::from([
            ("SEC".to_owned(), vec![]),
            ("KAZ".to_owned(), vec![acked_item(Some(3000))]),
            ("KGZ".to_owned(), vec![]),
        ]);
        let r = score_one_inject(&text, SEC_KAZ_KGZ, view, inboxes, |inputs| {
            // "late", never sent, after "alert".
            inputs.injects.push(Sent {
                inject: inputs.scenario.injects[1].clone(),
                id: None,
                sent_at_ms: None,
                refused: None,
                no_answer: None,
            });
            inputs.sent_views.push(Value::Null);
            inputs.at_rest = BTreeMap::from([("KGZ".to_owned(), Ok(()))]);
        });
        let inv = acks_invariant(&r);
        assert!(inv.held, "{inv:?}");
        assert_eq!(
            inv.detail,
            "1 of 1 acknowledged; not required of KGZ (node down at the end): \"alert\"; not required of \"late\": not sent"
        );
    }

    /// [`ACKS`] with an `acknowledged` objective, SEC's node killed at 0.5 s, before its
    /// relay's acceptance of "alert" reached it, and down to the end; its record has the
    /// message as sent, not accepted, and delivered to no one; its store was read at rest.
    /// KAZ's inbox is `kaz_inbox`, KGZ's empty, and the relay's store lacks `unrelayed`.
    fn sec_killed_before_acceptance(kaz_inbox: Vec<Value>, unrelayed: &[&str]) -> Report {
        let text = acks_with_fault(
            "kind = \"kill_node\"\nparticipant = \"SEC\"\nat_s = 0.5\nrestart_after_s = 100.0",
        );
        let view = json!({"created_at_ms": 1000, "accepted_at_ms": null, "state": "sent", "recipients": [row("KAZ", None, None, None), row("KGZ", None, None, None)], "answers": []});
        let inboxes = BTreeMap::from([
            ("SEC".to_owned(), vec![]),
            ("KAZ".to_owned(), kaz_inbox),
            ("KGZ".to_owned(), vec![]),
        ]);
        score_one_inject(&text, SEC_KAZ_KGZ, view, inboxes, |inputs| {
            inputs.at_rest = BTreeMap::from([("SEC".to_owned(), Ok(()))]);
            inputs.unrelayed = unrelayed.iter().map(|s| (*s).to_owned()).collect();
        })
    }

    /// SEC's node went down, to the end, before its relay accepted "alert": its record has
    /// the message as not accepted, and the relay's store does not hold it (`unrelayed`).
    /// It never left SEC, and nothing could deliver it: KAZ and KGZ never could hold or
    /// acknowledge it. The report says so, with why, wherever it scores them: the objectives
    /// fail ("KAZ never held it, as SEC went down before its relay accepted it"), "every
    /// inject accepted" fails saying it never left its sender, and nothing is required of them in "every
    /// acknowledgement required was given", as of an inject never sent (the invariant
    /// failed "KAZ never acknowledged", as if its officer had not). The verdict stays
    /// FAILED. Where the relay holds it (SEC killed before the acceptance reached it), or
    /// SEC is up at the end, nothing changes.
    #[test]
    fn a_message_that_never_left_a_sender_down_to_the_end_is_named_so() {
        let run = |unrelayed: &[&str]| sec_killed_before_acceptance(vec![], unrelayed);
        let r = run(&["m1"]);
        let why = "SEC went down before its relay accepted it (node down at the end)";
        let inv = acks_invariant(&r);
        assert!(inv.held, "{inv:?}");
        assert_eq!(
            inv.detail,
            format!("0 of 0 acknowledged; not required of KAZ: \"alert\" never reached it, as {why}; not required of KGZ: \"alert\" never reached it, as {why}")
        );
        for o in ["delivered", "acknowledged"] {
            assert_eq!(
                objective(&r, o).failed,
                [
                    format!("KAZ never held it, as {why}"),
                    format!("KGZ never held it, as {why}")
                ],
                "{o}"
            );
        }
        let accepted = invariant(&r, "every inject accepted");
        assert!(!accepted.held);
        assert_eq!(
            accepted.detail,
            format!("0 of 1; \"alert\" never left its sender: {why}")
        );
        assert!(!r.passed, "{}", summary(&r));
        // The relay holds it: it could have been delivered, and was not.
        let r = run(&[]);
        let inv = acks_invariant(&r);
        assert!(!inv.held, "{inv:?}");
        assert!(
            inv.detail.contains("KAZ never acknowledged \"alert\""),
            "{inv:?}"
        );
        assert_eq!(objective(&r, "delivered").failed[0], "KAZ never held it");
    }

    /// A message its sender's record has as not accepted, that the relay's store lacks at
    /// the end, but that a recipient holds (the relay stored and delivered it, the sender was
    /// killed before the acceptance reached it, and a `restore_relay` put back a backup taken
    /// before it): it did leave its sender. "Every inject accepted" said `"alert" never left
    /// its sender`, beside a matrix showing KAZ holding it. It fails it as not accepted, as
    /// for any message its sender's record has so, and KGZ, which does not hold it and now
    /// never can, is still named so.
    #[test]
    fn a_message_a_recipient_holds_is_not_said_never_to_have_left_its_sender() {
        let r = sec_killed_before_acceptance(vec![acked_item(None)], &["m1"]);
        let accepted = invariant(&r, "every inject accepted");
        assert!(!accepted.held);
        assert!(
            !accepted.detail.contains("never left its sender"),
            "KAZ holds it: {}",
            accepted.detail
        );
        let why = "SEC went down before its relay accepted it (node down at the end)";
        assert_eq!(
            objective(&r, "delivered").failed,
            [format!("KGZ never held it, as {why}")]
        );
        assert!(!r.passed, "{}", summary(&r));
    }

    /// Where a node's inbox was read from, when not from its API at the end, is in the text
    /// summary, under the matrix: a node whose API failed at the end (and why: the exercise
    /// director's first question of a node that stopped answering its operators), one down
    /// at the end, one whose store could not be read either. It was in the JSON report
    /// alone; the summary said "read from its store; its API failed at the end" without the
    /// failure, and nothing when every inbox was read over the API, as here at first.
    #[test]
    fn the_summary_says_whose_inbox_was_not_read_over_its_api() {
        let r = score_kgz_down(vec![inbox_item("m1", 1800)], Ok(()));
        let text = summary(&r);
        assert!(
            text.contains("\nInboxes not read over their node's API:\n  KGZ     read from its store; node down at the end\n"),
            "{text}"
        );
        assert!(!text.contains("  KAZ     read"), "{text}");
        let view = json!({"created_at_ms": 1000, "accepted_at_ms": 1001, "state": "accepted", "recipients": [row("KAZ", Some(1500), None, None), row("KGZ", Some(1600), None, None)]});
        let inboxes = BTreeMap::from([
            ("KAZ".to_owned(), vec![inbox_item("m1", 1500)]),
            ("KGZ".to_owned(), vec![]),
        ]);
        let r = score_one_inject(SCENARIO, SEC_KAZ_KGZ, view, inboxes, |inputs| {
            inputs.at_rest = BTreeMap::from([
                ("KAZ".to_owned(), Ok(())),
                ("KGZ".to_owned(), Err("disk I/O error".to_owned())),
            ]);
            inputs.api_failed =
                BTreeMap::from([("KAZ".to_owned(), "operation timed out".to_owned())]);
        });
        let text = summary(&r);
        for line in [
            "  KAZ     read from its store; its API failed at the end: operation timed out\n",
            "  KGZ     not read: node down at the end, its store unreadable: disk I/O error\n",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
        // Every inbox read over the API: no such section.
        let r = Drill::new().score();
        assert!(!summary(&r).contains("Inboxes not read"), "{}", summary(&r));
    }

    /// The HTML report says whose inbox was not read over its node's API, and why, as the
    /// text summary does (docs/SCENARIOS.md: "the same is in `report.json` and a
    /// self-contained `report.html`"): the director reading the HTML report saw a matrix
    /// row read from a store, or from nothing, with no word of it.
    #[test]
    fn the_html_report_says_whose_inbox_was_not_read_over_its_api() {
        let r = score_kgz_down(vec![inbox_item("m1", 1800)], Ok(()));
        let html = crate::html::render(&r);
        assert!(
            html.contains("<h2>Inboxes not read over their node's API</h2>"),
            "{html}"
        );
        assert!(
            html.contains("<td>KGZ</td><td>read from its store; node down at the end</td>"),
            "{html}"
        );
        let r = Drill::new().score();
        assert!(
            !crate::html::render(&r).contains("Inboxes not read"),
            "every inbox read over the API: no such section"
        );
    }
}
