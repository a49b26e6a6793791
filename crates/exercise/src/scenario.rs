//! Scenario files (TOML): participants, injects, operator behaviour, faults, objectives.
//!
//! Times are in *scenario* seconds; the harness divides them by `time_compression` to get
//! wall-clock seconds (a 48-hour respond-by with compression 3600 runs as 48 s). Every time
//! (each `*_s` field) is a finite number from 0 to [`SCENARIO_S_MAX`] (366 days), and
//! `time_compression` a finite number of at least [`TIME_COMPRESSION_MIN`]; `parse` refuses
//! anything else, naming the field, faults that take one node (or the relay) down over
//! overlapping spells, an inject or a fault due at or after `end_s` (it would never happen),
//! an inject naming other than exactly one audience or with a `respond_within_s` of 0, an
//! update, cancel or reply without `references` (a reference on any other kind is allowed,
//! as the protocol allows it), and a participant listed twice. The participant ids and groups a scenario names are checked
//! against the roster in force, which is known only once the drill starts, by
//! [`Scenario::check_roster`], before anything is started or sent; so is each objective's
//! scope, which must hold someone.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use serde::Deserialize;

/// The latest scenario time, in scenario seconds (366 days): longer than any drill, and small
/// enough that every time, divided by the smallest compression, is a wall-clock duration the
/// harness can wait for. A larger time is a typing error (`1e20`, `inf`), refused by `parse`.
pub const SCENARIO_S_MAX: f64 = 366.0 * 24.0 * 3600.0;

/// The smallest `time_compression`: a scenario second lasts at most 1,000 wall-clock seconds.
pub const TIME_COMPRESSION_MIN: f64 = 0.001;

/// The largest `delay_ms` and `jitter_ms` an `impair` fault may give: a minute one way, far
/// past any link a node would keep (its idle timeout ends the connection sooner).
pub const IMPAIR_DELAY_MS_MAX: u64 = 60_000;

/// What [`Scenario::wall`] answers for a time that is no wall-clock duration (a scenario
/// built without `parse`, or slowed down past its bounds): ten years, i.e. never.
const WALL_NEVER: std::time::Duration = std::time::Duration::from_secs(10 * 366 * 24 * 3600);

/// Every field the parser accepts, table by table: `""` is the top level, `injects`,
/// `behaviour` (each `[behaviour.ID]`) and `objectives` their tables, `faults.KIND` each
/// fault's (its `kind` included). `docs/SCENARIOS.md` documents each of them in a table of
/// its own; two tests keep the three in step: one probes the parser (`deny_unknown_fields`
/// names what it expected) and fails when a field is added here or there alone, the other
/// checks the document's tables against this list (`docs_scenarios_md_is_true`, lib.rs).
pub const FIELDS: [(&str, &[&str]); 9] = [
    (
        "",
        &[
            "name",
            "description",
            "time_compression",
            "end_s",
            "participants",
            "seed",
            "injects",
            "behaviour",
            "faults",
            "objectives",
        ],
    ),
    (
        "injects",
        &[
            "name",
            "at_s",
            "from",
            "to",
            "group",
            "all_members",
            "everyone",
            "kind",
            "precedence",
            "category",
            "respond_within_s",
            "references",
            "subject",
            "body",
        ],
    ),
    ("behaviour", &["ack_after_s", "never_ack", "reply_after_s"]),
    ("faults.kill_relay", &["kind", "at_s", "restart_after_s"]),
    (
        "faults.restore_relay",
        &["kind", "backup_at_s", "at_s", "restart_after_s"],
    ),
    (
        "faults.kill_node",
        &["kind", "participant", "at_s", "restart_after_s"],
    ),
    ("faults.offline", &["kind", "participant", "from_s", "to_s"]),
    (
        "faults.impair",
        &[
            "kind",
            "participant",
            "loss",
            "delay_ms",
            "jitter_ms",
            "duplicate",
        ],
    ),
    (
        "objectives",
        &[
            "name",
            "inject",
            "expect",
            "within_s",
            "participants",
            "group",
            "except",
        ],
    ),
];

/// A drill.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, e.g. `regional-drill`.
    pub name: String,
    /// What the drill exercises.
    #[serde(default)]
    pub description: String,
    /// Scenario seconds per wall-clock second (default 1; at least [`TIME_COMPRESSION_MIN`]).
    #[serde(default = "one")]
    pub time_compression: f64,
    /// Scenario time at which the drill ends at the latest, if objectives are still open; every
    /// inject, and every fault's start, comes before it (restarts may come after). It
    /// ends sooner once the timeline has run (what is due at or after `end_s` never
    /// happens), every objective is decided (met, or failed for good because its inject was
    /// refused by its node, or, for a recipient a fault keeps down to the end, because
    /// nothing can change its outcome any more), and every acknowledgement an inject
    /// requires (`respond_within_s`) is given, or expected not to be
    /// ([`Scenario::expects_unacknowledged`]). `docs/SCENARIOS.md` has the details.
    pub end_s: f64,
    /// Participant ids to run (default: the whole CICA roster).
    #[serde(default)]
    pub participants: Vec<String>,
    /// Seed for the link impairments (default: random, printed).
    pub seed: Option<u64>,
    /// Messages to send.
    #[serde(default)]
    pub injects: Vec<Inject>,
    /// Operator behaviour: `default` and per participant id (each on the roster,
    /// [`Scenario::check_roster`]).
    #[serde(default)]
    pub behaviour: BTreeMap<String, Behaviour>,
    /// Faults to inject.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// What must hold at the end.
    #[serde(default)]
    pub objectives: Vec<Objective>,
    /// Where it was read from (a file, or a built-in name), for errors found after parsing.
    #[serde(skip)]
    origin: String,
}

fn one() -> f64 {
    1.0
}

/// One message sent during the drill.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inject {
    /// Name, used by objectives and references.
    pub name: String,
    /// When, in scenario seconds from the start.
    pub at_s: f64,
    /// Sender id.
    pub from: String,
    /// Recipients (one of `to`, `group`, `all_members`, `everyone`).
    #[serde(default)]
    pub to: Vec<String>,
    /// A roster group.
    pub group: Option<String>,
    /// Every member state.
    #[serde(default)]
    pub all_members: bool,
    /// Everyone.
    #[serde(default)]
    pub everyone: bool,
    /// Message kind (default alert): `alert`, `update`, `cancel`, `consultation_request`,
    /// `reply`, `communications_check` or `notice`.
    #[serde(default = "alert")]
    pub kind: String,
    /// Precedence (default ROUTINE): `FLASH`, `IMMEDIATE`, `PRIORITY` or `ROUTINE`, in any
    /// case.
    #[serde(default = "routine")]
    pub precedence: String,
    /// Category.
    pub category: Option<String>,
    /// Acknowledgement required within this many scenario seconds. Every recipient must then
    /// have acknowledged it by the end of the drill (an invariant, whatever the objectives
    /// say), unless the scenario expects it not to: see
    /// [`Scenario::expects_unacknowledged`].
    pub respond_within_s: Option<f64>,
    /// Name of an earlier inject this one references: required of an update, cancel or
    /// reply; allowed on any other kind (a notice following up an alert).
    pub references: Option<String>,
    /// Subject.
    pub subject: String,
    /// Body.
    #[serde(default)]
    pub body: String,
}

fn alert() -> String {
    "alert".into()
}
fn routine() -> String {
    "ROUTINE".into()
}

/// How a participant's scripted operator behaves.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Behaviour {
    /// Acknowledge each received message this many scenario seconds after it arrives.
    pub ack_after_s: Option<f64>,
    /// Never acknowledge anything. A behaviour that also gives `ack_after_s` is refused.
    #[serde(default)]
    pub never_ack: bool,
    /// Answer each received consultation request this many scenario seconds after it
    /// arrives: a reply to its sender, referencing it, as `hotline reply` sends one.
    pub reply_after_s: Option<f64>,
}

/// A fault.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL the relay at `at_s`, restart it `restart_after_s` later.
    KillRelay {
        /// When.
        at_s: f64,
        /// Restart delay.
        restart_after_s: f64,
    },
    /// Back the relay's store up at `backup_at_s` while it runs (`hotline backup`); at
    /// `at_s` SIGKILL the relay, empty its data directory (its disk was lost) and put that
    /// backup there (`hotline restore`); restart it `restart_after_s` later. What it
    /// accepted in between is gone from it, and must come back from the senders' nodes.
    RestoreRelay {
        /// When the backup is taken.
        backup_at_s: f64,
        /// When the relay is killed and its store replaced.
        at_s: f64,
        /// Restart delay.
        restart_after_s: f64,
    },
    /// SIGKILL a node at `at_s`, restart it `restart_after_s` later.
    KillNode {
        /// Which.
        participant: String,
        /// When.
        at_s: f64,
        /// Restart delay.
        restart_after_s: f64,
    },
    /// A node is switched off (SIGTERM) from `from_s` to `to_s`.
    Offline {
        /// Which.
        participant: String,
        /// From.
        from_s: f64,
        /// To.
        to_s: f64,
    },
    /// A node's link to the relay runs through a lossy user-space UDP proxy all drill long.
    Impair {
        /// Which.
        participant: String,
        /// Probability a datagram is dropped.
        #[serde(default)]
        loss: f64,
        /// Added one-way delay, ms.
        #[serde(default)]
        delay_ms: u64,
        /// Extra random delay up to this, ms (reorders datagrams).
        #[serde(default)]
        jitter_ms: u64,
        /// Probability a datagram is sent twice.
        #[serde(default)]
        duplicate: f64,
    },
}

/// Who an objective is about.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    /// Shown in the report.
    pub name: String,
    /// The inject it scores.
    pub inject: String,
    /// `delivered`, `acknowledged`, `answered` (the recipient's reply, or any message of its
    /// referencing the inject, reached the sender) or `overdue_escalated` (the sender's
    /// overdue hook ran for every recipient in scope whose respond-by passed unacknowledged;
    /// one that acknowledged in time needs none: `report::escalation_shortfall`).
    pub expect: String,
    /// Within this many scenario seconds of the inject (for delivered / acknowledged / answered).
    pub within_s: Option<f64>,
    /// Restrict to these recipients (default: all recipients of the inject). Each must be on
    /// the roster and addressed by the inject ([`Scenario::check_roster`]), and, in a drill
    /// the harness deploys, have a node there.
    #[serde(default)]
    pub participants: Vec<String>,
    /// Restrict to the members of this group.
    pub group: Option<String>,
    /// Leave these recipients out.
    #[serde(default)]
    pub except: Vec<String>,
}

impl Inject {
    /// The recipients `roster` gives this inject, through the protocol's own resolution
    /// (`hotline_proto::routing::recipients`, as the relay resolves it): the participants
    /// named, the group's members, every member or everyone, those not revoked, without the
    /// sender. Names off the roster are left out (the node refuses such an inject; the
    /// report says so), and an unknown group has no one.
    pub fn addressed(&self, roster: &hotline_proto::Roster) -> Vec<String> {
        use hotline_proto::{Audience, ParticipantId};
        let audience = if self.everyone {
            Audience::Everyone
        } else if self.all_members {
            Audience::AllMembers
        } else if let Some(g) = &self.group {
            Audience::Group(g.clone())
        } else {
            Audience::Participants(
                self.to
                    .iter()
                    .filter_map(|t| ParticipantId::new(t).ok())
                    .filter(|id| roster.participant(id).is_some_and(|p| !p.revoked))
                    .collect(),
            )
        };
        hotline_proto::routing::recipients(roster, &audience)
            .unwrap_or_default()
            .into_iter()
            .filter(|id| id.as_str() != self.from)
            .map(|id| id.to_string())
            .collect()
    }
}

impl Objective {
    /// The recipients in this objective's scope, by `roster`: those `inject` (its inject)
    /// addresses ([`Inject::addressed`]) that it [`covers`](Objective::covers). In a drill
    /// the harness deploys, the report scores only those of them that have a node there,
    /// and names the others as not scored (`report::ObjectiveResult::unscored`).
    pub fn scope(&self, inject: &Inject, roster: &hotline_proto::Roster) -> Vec<String> {
        inject
            .addressed(roster)
            .into_iter()
            .filter(|p| self.covers(p, roster))
            .collect()
    }

    /// How this objective narrows its inject's recipients, for errors: `group "g", except
    /// KAZ`, or `every recipient`.
    pub fn narrowing(&self) -> String {
        let mut parts = Vec::new();
        if !self.participants.is_empty() {
            parts.push(format!("participants {}", self.participants.join(", ")));
        }
        if let Some(g) = &self.group {
            parts.push(format!("group {g:?}"));
        }
        if !self.except.is_empty() {
            parts.push(format!("except {}", self.except.join(", ")));
        }
        if parts.is_empty() {
            "every recipient".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// Whether this objective's scope takes in `recipient`, if its inject addressed it: named
    /// by `participants` (or none named), a member of `group` (by `roster`) if one is given,
    /// and not in `except`.
    pub fn covers(&self, recipient: &str, roster: &hotline_proto::Roster) -> bool {
        let named =
            self.participants.is_empty() || self.participants.iter().any(|p| p == recipient);
        let grouped = self.group.as_ref().is_none_or(|g| {
            roster
                .group(g)
                .is_some_and(|g| g.members.iter().any(|m| m.as_str() == recipient))
        });
        named && grouped && !self.except.iter().any(|p| p == recipient)
    }
}

impl Scenario {
    /// Whether the scenario expects `recipient` not to have acknowledged inject `k` (one
    /// requiring acknowledgement) by the end of the drill, so that the invariant "every
    /// acknowledgement required was given" leaves it out, and the drill does not wait for it
    /// before ending early: an `overdue_escalated` objective on that inject covers it (the
    /// deadline passing is then what the drill checks), or, when the drill injects faults,
    /// a fault keeps its node down until `end_s` (`offline` to the end, or `kill_node`
    /// restarting it after the end). Nothing else does: a behaviour of `never_ack` without
    /// such an objective leaves the drill checking nothing of that recipient, and fails it.
    pub fn expects_unacknowledged(
        &self,
        k: usize,
        recipient: &str,
        roster: &hotline_proto::Roster,
        faults: bool,
    ) -> bool {
        let Some(inj) = self.injects.get(k) else {
            return false;
        };
        let escalated = self.objectives.iter().any(|o| {
            o.inject == inj.name && o.expect == "overdue_escalated" && o.covers(recipient, roster)
        });
        escalated || (faults && self.down_at_end(recipient))
    }

    /// Whether a fault keeps `p`'s node down until `end_s`: `offline` to the end, or
    /// `kill_node` restarting it at or after the end. Such a node can neither acknowledge
    /// what is sent to it nor hold the acknowledgements of what it sent (they wait at the
    /// relay). Faults apply only in a drill the harness deploys; the caller says whether
    /// this one is.
    pub fn down_at_end(&self, p: &str) -> bool {
        self.faults.iter().any(|f| match f {
            Fault::Offline {
                participant, to_s, ..
            } => participant == p && *to_s >= self.end_s,
            Fault::KillNode {
                participant,
                at_s,
                restart_after_s,
            } => participant == p && at_s + restart_after_s >= self.end_s,
            _ => false,
        })
    }

    /// Parses a scenario, checking references between its parts.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let mut s: Scenario = toml::from_str(text).with_context(|| format!("scenario {origin}"))?;
        s.origin = origin.to_owned();
        if !(s.time_compression.is_finite() && s.time_compression >= TIME_COMPRESSION_MIN) {
            bail!(
                "scenario {origin}: time_compression must be a finite number of at least {TIME_COMPRESSION_MIN} (got {})",
                s.time_compression
            );
        }
        s.check_times(origin)?;
        s.check_fault_overlaps(origin)?;
        // Both said of one operator: the drill went by `never_ack` and silently ignored the
        // time, so a scenario meant to acknowledge could pass on the other reading.
        for (who, b) in &s.behaviour {
            if b.never_ack && b.ack_after_s.is_some() {
                bail!("scenario {origin}: behaviour.{who}: give never_ack or ack_after_s, not both (never_ack = true never acknowledges, so ack_after_s would be ignored)");
            }
        }
        // A second node for one participant was set up on the first's files: the drill
        // failed midway through its start ("file exists"), the relay already running.
        for (k, p) in s.participants.iter().enumerate() {
            if s.participants[..k].contains(p) {
                bail!("scenario {origin}: participants: {p} is listed twice");
            }
        }
        let names: Vec<&str> = s.injects.iter().map(|i| i.name.as_str()).collect();
        for (i, inj) in s.injects.iter().enumerate() {
            if names[..i].contains(&inj.name.as_str()) {
                bail!("scenario {origin}: inject {:?} is defined twice", inj.name);
            }
            // What the node would refuse with HTTP 400 at every attempt, refused here before
            // the drill starts (the harness sends the precedence in capitals, the kind as is).
            let word = |v: &str| serde_json::Value::String(v.to_owned());
            if let Err(e) = serde_json::from_value::<hotline_proto::Precedence>(word(
                &inj.precedence.to_uppercase(),
            )) {
                bail!("scenario {origin}: inject {:?}: precedence: {e}", inj.name);
            }
            let kind = match serde_json::from_value::<hotline_proto::Kind>(word(&inj.kind)) {
                Ok(kind) => kind,
                Err(e) => bail!("scenario {origin}: inject {:?}: kind: {e}", inj.name),
            };
            // The protocol's rule (`Kind::needs_reference`): the node refused such an
            // inject only once it was due, the drill running, and every objective on it
            // failed. A reference on any other kind is allowed, by the protocol and here.
            if kind.needs_reference() && inj.references.is_none() {
                bail!(
                    "scenario {origin}: inject {:?}: kind {} needs references (the name of an earlier inject it updates, cancels or answers); its node would refuse it without one",
                    inj.name,
                    inj.kind
                );
            }
            // The node takes exactly one audience (HTTP 400 otherwise, at every attempt).
            let audiences = usize::from(!inj.to.is_empty())
                + usize::from(inj.group.is_some())
                + usize::from(inj.all_members)
                + usize::from(inj.everyone);
            if audiences != 1 {
                bail!(
                    "scenario {origin}: inject {:?}: give exactly one of to, group, all_members, everyone (it gives {audiences})",
                    inj.name
                );
            }
            // A respond-by of "now": the node refuses it (HTTP 400) at every attempt.
            if inj.respond_within_s == Some(0.0) {
                bail!(
                    "scenario {origin}: inject {:?}: respond_within_s must be above 0 (the node refuses a respond-by time that has already come)",
                    inj.name
                );
            }
            // Sent when the drill has ended, it would never be sent; nor scored but as missing.
            if inj.at_s >= s.end_s {
                bail!(
                    "scenario {origin}: inject {:?}: at_s ({}) must come before end_s ({})",
                    inj.name,
                    inj.at_s,
                    s.end_s
                );
            }
            if let Some(r) = &inj.references {
                if !names[..i].contains(&r.as_str()) {
                    bail!("scenario {origin}: inject {:?} references {r:?}, which is not an earlier inject", inj.name);
                }
                // Earlier in the file, but due later: the drill would have no message to
                // reference when this one is due (it waits for it: see `run`).
                if let Some(at) = s.injects[..i].iter().find(|x| &x.name == r).map(|x| x.at_s) {
                    if at > inj.at_s {
                        bail!("scenario {origin}: inject {:?} (at_s {}) references {r:?}, which is due later (at_s {at})", inj.name, inj.at_s);
                    }
                }
            }
        }
        for (n, f) in s.faults.iter().enumerate() {
            if let Fault::RestoreRelay {
                backup_at_s, at_s, ..
            } = f
            {
                if backup_at_s >= at_s {
                    bail!("scenario {origin}: restore_relay: backup_at_s ({backup_at_s}) must come before at_s ({at_s})");
                }
            }
            // A fault that would start once the drill has ended never happens: the drill
            // would pass without the fault it was written to survive. (A restart after the
            // end is a node or relay kept down to the end, which is allowed.)
            let starts = match f {
                Fault::KillRelay { at_s, .. }
                | Fault::RestoreRelay { at_s, .. }
                | Fault::KillNode { at_s, .. } => Some(("at_s", *at_s)),
                Fault::Offline { from_s, .. } => Some(("from_s", *from_s)),
                Fault::Impair { .. } => None,
            };
            if let Some((field, t)) = starts {
                if t >= s.end_s {
                    bail!(
                        "scenario {origin}: fault {}: {field} ({t}) must come before end_s ({}), or the fault never happens",
                        n + 1,
                        s.end_s
                    );
                }
            }
        }
        for o in &s.objectives {
            if !names.contains(&o.inject.as_str()) {
                bail!(
                    "scenario {origin}: objective {:?} names unknown inject {:?}",
                    o.name,
                    o.inject
                );
            }
            if !["delivered", "acknowledged", "answered", "overdue_escalated"]
                .contains(&o.expect.as_str())
            {
                bail!("scenario {origin}: objective {:?}: expect must be delivered, acknowledged, answered or overdue_escalated", o.name);
            }
            // The report lists objectives by name: two of one name read as one.
            if s.objectives.iter().filter(|p| p.name == o.name).count() > 1 {
                bail!("scenario {origin}: objective {:?} is named twice", o.name);
            }
            if o.expect == "overdue_escalated" {
                // An escalation comes at the inject's respond-by time, not within a time
                // of the objective's: a `within_s` here was ignored.
                if o.within_s.is_some() {
                    bail!("scenario {origin}: objective {:?}: within_s does not apply to overdue_escalated (the escalation is due at the inject's respond_within_s)", o.name);
                }
                // With no respond-by time nothing is ever escalated: never met.
                let inject = s.injects.iter().find(|i| i.name == o.inject);
                if inject.is_some_and(|i| i.respond_within_s.is_none()) {
                    bail!("scenario {origin}: objective {:?} expects overdue_escalated of inject {:?}, which gives no respond_within_s: nothing would ever be escalated", o.name, o.inject);
                }
            }
        }
        Ok(s)
    }

    /// Checks that every time is a finite number of scenario seconds from 0 to
    /// [`SCENARIO_S_MAX`]; the error names the first that is not.
    fn check_times(&self, origin: &str) -> anyhow::Result<()> {
        let check = |field: &str, v: f64| -> anyhow::Result<()> {
            if v.is_finite() && (0.0..=SCENARIO_S_MAX).contains(&v) {
                Ok(())
            } else {
                bail!("scenario {origin}: {field} must be a finite number of seconds from 0 to {SCENARIO_S_MAX} (got {v})")
            }
        };
        check("end_s", self.end_s)?;
        for inj in &self.injects {
            let field = |f: &str| format!("inject {:?}: {f}", inj.name);
            check(&field("at_s"), inj.at_s)?;
            if let Some(w) = inj.respond_within_s {
                check(&field("respond_within_s"), w)?;
            }
        }
        for (who, b) in &self.behaviour {
            if let Some(a) = b.ack_after_s {
                check(&format!("behaviour.{who}.ack_after_s"), a)?;
            }
            if let Some(r) = b.reply_after_s {
                check(&format!("behaviour.{who}.reply_after_s"), r)?;
            }
        }
        for (n, f) in self.faults.iter().enumerate() {
            let field = |f: &str| format!("fault {}: {f}", n + 1);
            match f {
                Fault::KillRelay {
                    at_s,
                    restart_after_s,
                }
                | Fault::KillNode {
                    at_s,
                    restart_after_s,
                    ..
                } => {
                    check(&field("at_s"), *at_s)?;
                    check(&field("restart_after_s"), *restart_after_s)?;
                }
                Fault::RestoreRelay {
                    backup_at_s,
                    at_s,
                    restart_after_s,
                } => {
                    check(&field("backup_at_s"), *backup_at_s)?;
                    check(&field("at_s"), *at_s)?;
                    check(&field("restart_after_s"), *restart_after_s)?;
                }
                Fault::Offline { from_s, to_s, .. } => {
                    check(&field("from_s"), *from_s)?;
                    check(&field("to_s"), *to_s)?;
                    // Otherwise the node "comes back" while it still runs, and is started
                    // a second time on its data directory.
                    if to_s <= from_s {
                        bail!("scenario {origin}: {}: to_s ({to_s}) must come after from_s ({from_s})", field("offline"));
                    }
                }
                Fault::Impair {
                    participant,
                    loss,
                    duplicate,
                    delay_ms,
                    jitter_ms,
                } => {
                    for (name, p) in [("loss", *loss), ("duplicate", *duplicate)] {
                        // A probability the proxy draws against: NaN panicked its task.
                        if !(0.0..=1.0).contains(&p) {
                            bail!("scenario {origin}: {}: {name} must be a probability from 0 to 1 (got {p})", field(name));
                        }
                    }
                    // The proxy adds the two to each datagram's time: huge values
                    // overflowed and panicked its task.
                    for (name, ms) in [("delay_ms", *delay_ms), ("jitter_ms", *jitter_ms)] {
                        if ms > IMPAIR_DELAY_MS_MAX {
                            bail!("scenario {origin}: {} must be at most {IMPAIR_DELAY_MS_MAX} ms (got {ms})", field(name));
                        }
                    }
                    // One proxy a node: a second impairment replaced the first unsaid.
                    let impairs = |f: &Fault| matches!(f, Fault::Impair { participant: p, .. } if p == participant);
                    if self.faults[..n].iter().any(impairs) {
                        bail!("scenario {origin}: {}: {participant} is impaired twice; give one impair fault a participant, with every effect in it", field("impair"));
                    }
                }
            }
        }
        for o in &self.objectives {
            if let Some(w) = o.within_s {
                check(&format!("objective {:?}: within_s", o.name), w)?;
            }
        }
        Ok(())
    }

    /// Refuses two faults that take one node, or the relay, down over overlapping spells
    /// (each from its start to its restart, ends included): the second restart would start
    /// a second process on the data directory of the one already running (refused by its
    /// claim, which ended the drill without a report), and a kill inside an offline spell
    /// has nothing to kill.
    fn check_fault_overlaps(&self, origin: &str) -> anyhow::Result<()> {
        // (fault number, node or None for the relay, kind, down from, back at).
        let spells: Vec<(usize, Option<&str>, &str, f64, f64)> = self
            .faults
            .iter()
            .enumerate()
            .filter_map(|(n, f)| match f {
                Fault::KillNode {
                    participant,
                    at_s,
                    restart_after_s,
                } => Some((
                    n + 1,
                    Some(participant.as_str()),
                    "kill_node",
                    *at_s,
                    at_s + restart_after_s,
                )),
                Fault::Offline {
                    participant,
                    from_s,
                    to_s,
                } => Some((n + 1, Some(participant.as_str()), "offline", *from_s, *to_s)),
                Fault::KillRelay {
                    at_s,
                    restart_after_s,
                } => Some((n + 1, None, "kill_relay", *at_s, at_s + restart_after_s)),
                Fault::RestoreRelay {
                    at_s,
                    restart_after_s,
                    ..
                } => Some((n + 1, None, "restore_relay", *at_s, at_s + restart_after_s)),
                Fault::Impair { .. } => None,
            })
            .collect();
        for (i, &(n, who, kind, from, to)) in spells.iter().enumerate() {
            for &(m, other, other_kind, other_from, other_to) in &spells[..i] {
                if who == other && from <= other_to && other_from <= to {
                    let whom = who.map_or_else(|| "the relay".to_owned(), |p| format!("node {p}"));
                    bail!(
                        "scenario {origin}: fault {n} ({kind}, {from}–{to} s) and fault {m} ({other_kind}, {other_from}–{other_to} s) both take {whom} down at once; a fault may start only after the last one on it has ended"
                    );
                }
            }
        }
        Ok(())
    }

    /// Checks the participant ids the scenario names against `roster`, the roster in force
    /// (the CICA template's in a drill the harness deploys, the deployment's in live mode),
    /// before anything starts: each `behaviour` key other than `default` is on it, each id in
    /// an inject's `to` and an objective's `except` is on it, each inject's and objective's
    /// `group` is one of its groups, and each of an objective's `participants` is on it and
    /// addressed by the objective's inject, and each objective has someone in its scope
    /// ([`Objective::scope`]).
    /// Left unchecked, such an id was silently dropped: a behaviour applied to nobody, an
    /// objective scored on fewer recipients than it names. The error names the scenario's
    /// file, the entry and the id.
    pub fn check_roster(&self, roster: &hotline_proto::Roster) -> anyhow::Result<()> {
        let origin = &self.origin;
        let on_roster = |id: &str| roster.participants.iter().any(|p| p.id.as_str() == id);
        for who in self.behaviour.keys() {
            if who != "default" && !on_roster(who) {
                bail!(
                    "scenario {origin}: behaviour.{who}: {who} is not on the roster (version {}); `default` applies to everyone without an entry",
                    roster.version
                );
            }
        }
        let group_known = |g: &str| roster.group(g).is_some();
        for inj in &self.injects {
            // What the node would refuse with HTTP 400 once the inject is due, the drill
            // running and earlier injects sent.
            if let Some(p) = inj.to.iter().find(|p| !on_roster(p)) {
                bail!(
                    "scenario {origin}: inject {:?}: to: {p} is not on the roster (version {})",
                    inj.name,
                    roster.version
                );
            }
            if let Some(g) = inj.group.as_deref().filter(|g| !group_known(g)) {
                bail!(
                    "scenario {origin}: inject {:?}: group {g:?} is not a group of the roster (version {})",
                    inj.name,
                    roster.version
                );
            }
        }
        for o in &self.objectives {
            // An unknown group left the objective with no one in scope, and so unmet with no
            // shortfall named; an unknown id in `except` left out no one.
            if let Some(g) = o.group.as_deref().filter(|g| !group_known(g)) {
                bail!(
                    "scenario {origin}: objective {:?}: group {g:?} is not a group of the roster (version {})",
                    o.name,
                    roster.version
                );
            }
            if let Some(p) = o.except.iter().find(|p| !on_roster(p)) {
                bail!(
                    "scenario {origin}: objective {:?}: except: {p} is not on the roster (version {})",
                    o.name,
                    roster.version
                );
            }
            let Some(inj) = self.injects.iter().find(|i| i.name == o.inject) else {
                continue; // `parse` refused it.
            };
            let addressed = inj.addressed(roster);
            for p in &o.participants {
                if !on_roster(p) {
                    bail!(
                        "scenario {origin}: objective {:?}: participant {p} is not on the roster (version {})",
                        o.name,
                        roster.version
                    );
                }
                if !addressed.contains(p) {
                    bail!(
                        "scenario {origin}: objective {:?}: participant {p} is not addressed by inject {:?}",
                        o.name,
                        o.inject
                    );
                }
            }
            // No one in scope: the objective could never be met (the report has no row to
            // score), and the drill, never finding it decided, ran to `end_s` to fail it
            // with no shortfall named.
            if !addressed.iter().any(|p| o.covers(p, roster)) {
                bail!(
                    "scenario {origin}: objective {:?}: no recipient of inject {:?} is in its scope ({}; the inject addresses {}, by the roster, version {}): it could never be met",
                    o.name,
                    o.inject,
                    o.narrowing(),
                    if addressed.is_empty() { "no one".to_owned() } else { addressed.join(", ") },
                    roster.version
                );
            }
        }
        Ok(())
    }

    /// Wall-clock duration of `scenario_s` (0 for a negative time), at most [`WALL_NEVER`].
    /// `parse` bounds the times and the compression, so that cap is only reached by a time
    /// out of bounds set by hand, or a drill slowed down past them: it waits "for ever"
    /// rather than panic here or where the duration is added to an instant.
    pub fn wall(&self, scenario_s: f64) -> std::time::Duration {
        std::time::Duration::try_from_secs_f64((scenario_s / self.time_compression).max(0.0))
            .map_or(WALL_NEVER, |d| d.min(WALL_NEVER))
    }

    /// The behaviour of `id`: its own entry, else `default`, else acknowledge after 2 s.
    pub fn behaviour(&self, id: &str) -> Behaviour {
        self.behaviour
            .get(id)
            .or_else(|| self.behaviour.get("default"))
            .cloned()
            .unwrap_or(Behaviour {
                ack_after_s: Some(2.0),
                never_ack: false,
                reply_after_s: None,
            })
    }
}

/// Scenarios shipped with the binary.
pub const BUILTIN: [(&str, &str); 4] = [
    (
        "regional-drill",
        include_str!("../../../config/exercises/regional-drill.toml"),
    ),
    (
        "comm-check",
        include_str!("../../../config/exercises/comm-check.toml"),
    ),
    (
        "silent-member",
        include_str!("../../../config/exercises/silent-member.toml"),
    ),
    (
        "relay-restore",
        include_str!("../../../config/exercises/relay-restore.toml"),
    ),
];

/// The CICA roster template shipped with the binary.
pub const CICA_ROSTER: &str = include_str!("../../../config/cica-roster.toml");

#[cfg(test)]
mod tests {
    use super::*;

    /// A scenario with every kind of time, each written as a placeholder `@field@`.
    const TIMED: &str = r#"
name = "t"
time_compression = @time_compression@
end_s = @end_s@
[behaviour.KAZ]
ack_after_s = @ack_after_s@
reply_after_s = @reply_after_s@
[[injects]]
name = "a"
at_s = @at_s@
from = "SEC"
to = ["KAZ"]
subject = "s"
respond_within_s = @respond_within_s@
[[faults]]
kind = "kill_relay"
at_s = @kill_at_s@
restart_after_s = @restart_after_s@
[[faults]]
kind = "restore_relay"
backup_at_s = @backup_at_s@
at_s = 100.0
restart_after_s = 1.0
[[faults]]
kind = "offline"
participant = "KAZ"
from_s = @from_s@
to_s = @to_s@
[[objectives]]
name = "o"
inject = "a"
expect = "delivered"
within_s = @within_s@
"#;

    /// Each time's placeholder in `TIMED`, and how an error names it.
    const TIMES: [(&str, &str); 11] = [
        ("end_s", "end_s"),
        ("ack_after_s", "behaviour.KAZ.ack_after_s"),
        ("reply_after_s", "behaviour.KAZ.reply_after_s"),
        ("at_s", "inject \"a\": at_s"),
        ("respond_within_s", "inject \"a\": respond_within_s"),
        ("kill_at_s", "fault 1: at_s"),
        ("restart_after_s", "fault 1: restart_after_s"),
        ("backup_at_s", "fault 2: backup_at_s"),
        ("from_s", "fault 3: from_s"),
        ("to_s", "fault 3: to_s"),
        ("within_s", "objective \"o\": within_s"),
    ];

    /// `TIMED` with `field` set to `value`, every other time to 10 s and the compression to 1
    /// (or `value`, if `field` is `time_compression`).
    fn timed(field: &str, value: &str) -> String {
        let mut text = TIMED.to_owned();
        for f in TIMES
            .map(|(f, _)| f)
            .into_iter()
            .chain(["time_compression"])
        {
            let v = match (f == field, f) {
                (true, _) => value,
                (false, "time_compression") => "1.0",
                // After `from_s`: a node comes back after it went.
                (false, "to_s") => "20.0",
                // After every other time: nothing is scheduled past the end.
                (false, "end_s") => "1000.0",
                (false, _) => "10.0",
            };
            text = text.replace(&format!("@{f}@"), v);
        }
        text
    }

    #[test]
    fn sound_times_parse() {
        let s = Scenario::parse(&timed("", ""), "t.toml").expect("parses");
        assert_eq!(s.end_s, 1000.0);
        let s = Scenario::parse(&timed("end_s", &SCENARIO_S_MAX.to_string()), "t.toml")
            .expect("the largest time parses");
        assert!(s.wall(s.end_s) > std::time::Duration::ZERO);
    }

    /// A time that is not a number of seconds a drill can wait for (infinite, not a number,
    /// negative, or past any drill) is refused before anything starts, naming its field; it
    /// used to panic in `Duration::from_secs_f64` once the relay and nodes ran.
    #[test]
    fn times_out_of_range_are_refused_naming_the_field() {
        for (field, name) in TIMES {
            for bad in ["inf", "-inf", "nan", "1e20", "-1.0"] {
                let text = timed(field, bad);
                let e = match Scenario::parse(&text, "t.toml") {
                    Ok(_) => panic!("{field} = {bad} was accepted"),
                    Err(e) => e.to_string(),
                };
                assert!(e.starts_with("scenario t.toml: "), "{e}");
                assert!(
                    e.contains(&format!("{name} must be a finite number")),
                    "{field} = {bad}: {e}"
                );
            }
        }
        for bad in ["inf", "nan", "0.0", "-1.0", "0.0001"] {
            let e = match Scenario::parse(&timed("time_compression", bad), "t.toml") {
                Ok(_) => panic!("time_compression = {bad} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(
                e.contains("time_compression must be a finite number of at least 0.001"),
                "{bad}: {e}"
            );
        }
    }

    /// A node cannot come back before it went offline (it was started a second time while
    /// it ran), and an impairment's probabilities are probabilities (a NaN panicked the
    /// proxy's task).
    #[test]
    fn an_offline_spell_ends_after_it_starts_and_probabilities_are_probabilities() {
        let e = Scenario::parse(&timed("to_s", "10.0"), "t.toml")
            .expect_err("back when it went")
            .to_string();
        assert!(
            e.contains("fault 3: offline: to_s (10) must come after from_s (10)"),
            "{e}"
        );
        let impaired = |line: &str| {
            format!(
                "{}\n[[faults]]\nkind = \"impair\"\nparticipant = \"KAZ\"\n{line}\n",
                timed("", "")
            )
        };
        // Appended at the end of the file: a fourth fault.
        for (line, field) in [
            ("loss = nan", "loss"),
            ("loss = 1.5", "loss"),
            ("duplicate = -0.1", "duplicate"),
        ] {
            let e = Scenario::parse(&impaired(line), "t.toml")
                .expect_err(line)
                .to_string();
            assert!(
                e.contains(&format!("fault 4: {field}: {field} must be a probability")),
                "{line}: {e}"
            );
        }
        Scenario::parse(&impaired("loss = 0.2\nduplicate = 1.0"), "t.toml")
            .expect("probabilities from 0 to 1");
    }

    /// Two faults taking one node (or the relay) down over overlapping spells are refused
    /// when the scenario is parsed, naming both: the second restart started a second node
    /// on the first's data directory, which ended the drill without a report. Spells one
    /// after the other, and overlapping spells on different nodes, are fine.
    #[test]
    fn overlapping_faults_on_one_node_or_the_relay_are_refused() {
        let with = |faults: &str| format!("{}{faults}", timed("", ""));
        let kill = |who: &str, at: &str| {
            format!("[[faults]]\nkind = \"kill_node\"\nparticipant = \"{who}\"\nat_s = {at}\nrestart_after_s = 5.0\n")
        };
        // `TIMED`'s fault 3 keeps KAZ offline from 10 to 20 s.
        let e = Scenario::parse(&with(&kill("KAZ", "15.0")), "t.toml")
            .expect_err("a kill inside an offline spell")
            .to_string();
        assert!(
            e.starts_with("scenario t.toml: fault 4 (kill_node, 15–20 s) and fault 3 (offline, 10–20 s) both take node KAZ down at once"),
            "{e}"
        );
        Scenario::parse(&with(&kill("KAZ", "20.5")), "t.toml").expect("after the spell");
        Scenario::parse(&with(&kill("KGZ", "15.0")), "t.toml").expect("another node");
        // `TIMED`'s fault 1 kills the relay from 10 to 20 s.
        let e = Scenario::parse(
            &with("[[faults]]\nkind = \"kill_relay\"\nat_s = 20.0\nrestart_after_s = 1.0\n"),
            "t.toml",
        )
        .expect_err("the relay killed as it restarts")
        .to_string();
        assert!(
            e.contains("fault 4 (kill_relay, 20–21 s) and fault 1 (kill_relay, 10–20 s) both take the relay down at once"),
            "{e}"
        );
    }

    /// A precedence or kind the node would refuse at every attempt is refused before the
    /// drill starts, naming the inject and what is allowed; the precedence in any case.
    #[test]
    fn unknown_precedences_and_kinds_are_refused() {
        let with = |line: &str| {
            timed("", "").replace("subject = \"s\"", &format!("subject = \"s\"\n{line}"))
        };
        let e = Scenario::parse(&with("precedence = \"URGENT\""), "t.toml")
            .expect_err("URGENT is no precedence")
            .to_string();
        assert!(
            e.starts_with("scenario t.toml: inject \"a\": precedence: unknown variant `URGENT`"),
            "{e}"
        );
        assert!(
            e.contains("`FLASH`") && e.contains("`ROUTINE`"),
            "lists the precedences: {e}"
        );
        let e = Scenario::parse(&with("kind = \"alarm\""), "t.toml")
            .expect_err("alarm is no kind")
            .to_string();
        assert!(
            e.starts_with("scenario t.toml: inject \"a\": kind: unknown variant `alarm`"),
            "{e}"
        );
        assert!(e.contains("`consultation_request`"), "lists the kinds: {e}");
        Scenario::parse(&with("precedence = \"flash\"\nkind = \"notice\""), "t.toml")
            .expect("a precedence in small letters is sent in capitals");
    }

    /// An inject or a fault due once the drill has ended is refused, naming it: the drill
    /// ended first, so the inject was never sent and the fault never happened, and a drill
    /// written to survive a relay crash passed without one. A restart after the end (a node
    /// kept down to the end) is fine.
    #[test]
    fn what_is_due_after_the_end_is_refused() {
        let with = |extra: &str| format!("{}{extra}", timed("", ""));
        for (extra, wanted) in [
            (
                "[[faults]]\nkind = \"kill_relay\"\nat_s = 1000.0\nrestart_after_s = 1.0\n",
                "fault 4: at_s (1000) must come before end_s (1000)",
            ),
            (
                "[[faults]]\nkind = \"kill_node\"\nparticipant = \"KGZ\"\nat_s = 2000.0\nrestart_after_s = 1.0\n",
                "fault 4: at_s (2000) must come before end_s (1000)",
            ),
            (
                "[[faults]]\nkind = \"offline\"\nparticipant = \"KGZ\"\nfrom_s = 1500.0\nto_s = 1600.0\n",
                "fault 4: from_s (1500) must come before end_s (1000)",
            ),
            (
                "[[injects]]\nname = \"late\"\nat_s = 1200.0\nfrom = \"SEC\"\nto = [\"KAZ\"]\nsubject = \"s\"\n",
                "inject \"late\": at_s (1200) must come before end_s (1000)",
            ),
        ] {
            let e = Scenario::parse(&with(extra), "t.toml")
                .expect_err(extra)
                .to_string();
            assert!(e.starts_with("scenario t.toml: "), "{e}");
            assert!(e.contains(wanted), "{wanted}: {e}");
        }
        Scenario::parse(
            &with("[[faults]]\nkind = \"kill_node\"\nparticipant = \"KGZ\"\nat_s = 900.0\nrestart_after_s = 500.0\n"),
            "t.toml",
        )
        .expect("down to the end");
    }

    /// An inject referencing one due after it is refused: when it was due the other had no
    /// message yet, and it went out referencing nothing.
    #[test]
    fn a_reference_to_an_inject_due_later_is_refused() {
        let text = |update_at: f64| {
            format!("name = \"refs\"\nend_s = 60.0\n[[injects]]\nname = \"late\"\nat_s = 10.0\nfrom = \"SEC\"\nto = [\"KAZ\"]\nsubject = \"s\"\n[[injects]]\nname = \"update\"\nat_s = {update_at:?}\nfrom = \"SEC\"\nto = [\"KAZ\"]\nkind = \"update\"\nreferences = \"late\"\nsubject = \"s\"\n")
        };
        let e = Scenario::parse(&text(5.0), "t.toml")
            .expect_err("due before what it references")
            .to_string();
        assert!(
            e.contains(
                "inject \"update\" (at_s 5) references \"late\", which is due later (at_s 10)"
            ),
            "{e}"
        );
        Scenario::parse(&text(10.0), "t.toml").expect("due together, listed after it");
    }

    /// An update, cancel or reply without `references` is refused when the scenario is
    /// parsed, naming the inject, its kind and the missing field: its node refuses such a
    /// message (the protocol requires a reference), which the drill found only once the
    /// inject was due, the drill running. Any other kind may reference an earlier inject
    /// (the protocol allows a reference on every kind; a notice following up an alert is
    /// one), and without one it parses too.
    #[test]
    fn an_update_cancel_or_reply_without_references_is_refused() {
        let text = |kind: &str, references: &str| {
            format!("name = \"refs\"\nend_s = 60.0\n[[injects]]\nname = \"first\"\nat_s = 1.0\nfrom = \"SEC\"\nto = [\"KAZ\"]\nsubject = \"s\"\n[[injects]]\nname = \"second\"\nat_s = 2.0\nfrom = \"KAZ\"\nto = [\"SEC\"]\nkind = \"{kind}\"\n{references}subject = \"s\"\n")
        };
        for kind in ["update", "cancel", "reply"] {
            let e = Scenario::parse(&text(kind, ""), "t.toml")
                .expect_err(kind)
                .to_string();
            assert_eq!(
                e,
                format!("scenario t.toml: inject \"second\": kind {kind} needs references (the name of an earlier inject it updates, cancels or answers); its node would refuse it without one"),
            );
            Scenario::parse(&text(kind, "references = \"first\"\n"), "t.toml").expect(kind);
        }
        for kind in [
            "alert",
            "consultation_request",
            "communications_check",
            "notice",
        ] {
            Scenario::parse(&text(kind, ""), "t.toml").expect(kind);
            let s = Scenario::parse(&text(kind, "references = \"first\"\n"), "t.toml").expect(kind);
            assert_eq!(s.injects[1].references.as_deref(), Some("first"), "{kind}");
        }
    }

    /// Objectives and impairments that could never work as written are refused before the
    /// drill: two objectives of one name (the report lists them by name), an
    /// `overdue_escalated` with a `within_s` (ignored) or on an inject with no respond-by
    /// time (never escalated, so never met), a delay the proxy's clock arithmetic overflowed
    /// on (its task panicked), and a node impaired twice (the second replaced the first).
    #[test]
    fn objectives_and_impairments_that_could_never_work_are_refused() {
        let with = |extra: &str| format!("{}{extra}", timed("", ""));
        let overdue =
            "[[objectives]]\nname = \"late\"\ninject = \"a\"\nexpect = \"overdue_escalated\"\n";
        let impair = |d: u64| {
            format!("[[faults]]\nkind = \"impair\"\nparticipant = \"KGZ\"\ndelay_ms = {d}\n")
        };
        let no_deadline = timed("", "").replace("respond_within_s = 10.0\n", "");
        for (text, wanted) in [
            (
                with("[[objectives]]\nname = \"o\"\ninject = \"a\"\nexpect = \"acknowledged\"\n"),
                "objective \"o\" is named twice".to_owned(),
            ),
            (
                with(&format!("{overdue}within_s = 5.0\n")),
                "objective \"late\": within_s does not apply to overdue_escalated".to_owned(),
            ),
            (
                format!("{no_deadline}{overdue}"),
                "objective \"late\" expects overdue_escalated of inject \"a\", which gives no respond_within_s".to_owned(),
            ),
            (
                with(&impair(i64::MAX as u64)),
                format!("fault 4: delay_ms must be at most {IMPAIR_DELAY_MS_MAX} ms"),
            ),
            (
                with(&format!("{}{}", impair(10), impair(20))),
                "fault 5: impair: KGZ is impaired twice".to_owned(),
            ),
        ] {
            let e = Scenario::parse(&text, "t.toml").expect_err(&wanted).to_string();
            assert!(e.contains(&wanted), "{wanted}: {e}");
        }
        Scenario::parse(&with(overdue), "t.toml")
            .expect("an escalation of an inject with a deadline");
        Scenario::parse(&with(&impair(IMPAIR_DELAY_MS_MAX)), "t.toml").expect("the largest delay");
    }

    /// An inject names exactly one audience, as the node requires (it refused such an
    /// inject with HTTP 400 only once it was due, the drill already running).
    #[test]
    fn an_inject_names_exactly_one_audience() {
        for (audience, n) in [
            ("to = [\"KAZ\"]\nall_members = true", 2),
            ("group = \"g\"\neveryone = true\nto = [\"KAZ\"]", 3),
            ("", 0),
        ] {
            let text = timed("", "").replace("to = [\"KAZ\"]", audience);
            let e = Scenario::parse(&text, "t.toml")
                .expect_err(audience)
                .to_string();
            assert!(
                e.contains(&format!("scenario t.toml: inject \"a\": give exactly one of to, group, all_members, everyone (it gives {n})")),
                "{audience}: {e}"
            );
        }
    }

    /// A participant listed twice, and an inject whose respond-by is "now", are refused
    /// when the scenario is parsed, naming them: the first had a second node set up on the
    /// first's files, which failed the drill midway through its start; the node refused the
    /// second at every attempt, once the drill ran.
    #[test]
    fn a_participant_listed_twice_and_a_respond_by_of_now_are_refused() {
        let text = timed("", "").replace(
            "name = \"t\"\n",
            "name = \"t\"\nparticipants = [\"SEC\", \"KAZ\", \"SEC\"]\n",
        );
        let e = Scenario::parse(&text, "t.toml")
            .expect_err("SEC twice")
            .to_string();
        assert_eq!(e, "scenario t.toml: participants: SEC is listed twice");
        let e = Scenario::parse(&timed("respond_within_s", "0.0"), "t.toml")
            .expect_err("a respond-by of now")
            .to_string();
        assert!(
            e.starts_with("scenario t.toml: inject \"a\": respond_within_s must be above 0"),
            "{e}"
        );
        Scenario::parse(&timed("respond_within_s", "0.5"), "t.toml").expect("half a second");
    }

    /// A behaviour that both never acknowledges and acknowledges after a time says two
    /// things: it is refused when the scenario is parsed, naming the participant and both
    /// fields. It used to be accepted, and `never_ack` silently won.
    #[test]
    fn never_ack_with_ack_after_s_is_refused_naming_the_participant() {
        let text =
            timed("", "").replace("[behaviour.KAZ]\n", "[behaviour.KAZ]\nnever_ack = true\n");
        let e = Scenario::parse(&text, "t.toml")
            .expect_err("never_ack and ack_after_s")
            .to_string();
        assert_eq!(
            e,
            "scenario t.toml: behaviour.KAZ: give never_ack or ack_after_s, not both (never_ack = true never acknowledges, so ack_after_s would be ignored)"
        );
        // Either alone parses; so does `never_ack = false` beside a time.
        let never = text.replace("ack_after_s = 10.0\n", "");
        let s = Scenario::parse(&never, "t.toml").expect("never_ack alone");
        assert!(s.behaviour("KAZ").never_ack);
        let off = text.replace("never_ack = true", "never_ack = false");
        Scenario::parse(&off, "t.toml").expect("never_ack = false with a time");
    }

    /// Bad input in any part of a scenario is an error naming the scenario, never a panic:
    /// each built-in scenario mutated at random (lines dropped, repeated or swapped, numbers
    /// replaced by hostile ones, keys misspelt, strings emptied), then parsed, checked
    /// against the roster and its times converted to wall-clock durations. The seed is
    /// printed; `HOTLINE_SCENARIO_SEED` replays it.
    #[test]
    fn mutated_scenarios_are_refused_or_accepted_never_a_panic() {
        use rand::{Rng, SeedableRng};
        let seed = std::env::var("HOTLINE_SCENARIO_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random::<u64>);
        eprintln!("seed {seed} (HOTLINE_SCENARIO_SEED={seed} replays it)");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut draft = hotline_config::roster_file::Draft::parse(
            CICA_ROSTER,
            std::path::Path::new("cica-roster.toml"),
        )
        .expect("template");
        for p in &mut draft.participants {
            p.keys = vec![hotline_proto::PublicKey::of(
                &hotline_config::keyfile::generate(),
            )];
        }
        let roster = draft.to_roster(1).expect("roster");
        const NUMBERS: [&str; 14] = [
            "-1",
            "-1.0",
            "0",
            "0.0",
            "-0.0",
            "1e400",
            "-1e400",
            "nan",
            "inf",
            "1e-300",
            "18446744073709551616",
            "9223372036854775807",
            "-9223372036854775808",
            "4.5",
        ];
        const LINES: [&str; 6] = [
            "bogus = 1",
            "[[injects]]",
            "[[faults]]\nkind = \"melt_down\"",
            "[[objectives]]",
            "[behaviour.XYZ]",
            "participants = [\"KAZ\", \"XYZ\"]",
        ];
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..2000 {
            let (name, text) = BUILTIN[round % BUILTIN.len()];
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            for _ in 0..rng.gen_range(1..4) {
                let n = rng.gen_range(0..lines.len());
                match rng.gen_range(0..7) {
                    0 => {
                        lines.remove(n);
                    }
                    1 => {
                        let l = lines[n].clone();
                        lines.insert(n, l);
                    }
                    2 => {
                        let m = rng.gen_range(0..lines.len());
                        lines.swap(n, m);
                    }
                    3 | 4 => {
                        // The value of a `key = number` line, if it is one.
                        if let Some((k, v)) = lines[n].split_once(" = ") {
                            if v.parse::<f64>().is_ok() {
                                let new = NUMBERS[rng.gen_range(0..NUMBERS.len())];
                                lines[n] = format!("{k} = {new}");
                            }
                        }
                    }
                    5 => {
                        if let Some((k, v)) = lines[n].split_once(" = ") {
                            lines[n] = if v.starts_with('"') {
                                format!("{k} = \"\"")
                            } else {
                                format!("{k}x = {v}")
                            };
                        }
                    }
                    _ => lines.insert(n, LINES[rng.gen_range(0..LINES.len())].to_owned()),
                }
            }
            let mutated = lines.join("\n");
            let origin = format!("{name}-{round}.toml");
            match Scenario::parse(&mutated, &origin) {
                Ok(s) => {
                    accepted += 1;
                    let _ = s.check_roster(&roster);
                    let now = std::time::Instant::now();
                    let _ = now + s.wall(s.end_s);
                    for i in &s.injects {
                        let _ = now + s.wall(i.at_s) + s.wall(i.respond_within_s.unwrap_or(0.0));
                    }
                }
                Err(e) => {
                    refused += 1;
                    let e = format!("{e:#}");
                    assert!(
                        e.starts_with(&format!("scenario {origin}")),
                        "seed {seed}, round {round}: {e}\n{mutated}"
                    );
                }
            }
        }
        // The mutations are neither all harmless nor all fatal.
        assert!(
            accepted > 0 && refused > 0,
            "{accepted} accepted, {refused} refused"
        );
    }

    /// A scenario built without `parse` gets "never" for a time out of range, not a panic.
    #[test]
    fn wall_never_panics() {
        let mut s: Scenario = toml::from_str(&timed("", "")).expect("toml");
        for t in [f64::INFINITY, 1e20, f64::NAN, -1.0] {
            s.end_s = t;
            assert!(s.wall(s.end_s) <= WALL_NEVER, "{t}");
            // The harness adds it to an instant: that must not overflow either.
            let _ = std::time::Instant::now() + s.wall(s.end_s);
        }
        s.time_compression = 1e-300;
        assert_eq!(s.wall(1.0), WALL_NEVER);
    }

    /// The fields each table of a scenario accepts, as serde names them when it refuses an
    /// unknown one (`expected one of …`), in the order it lists them.
    fn accepted(text: &str) -> Vec<String> {
        let e = match toml::from_str::<Scenario>(text) {
            Ok(_) => panic!("{text}: an unknown field was accepted"),
            Err(e) => e.to_string(),
        };
        let Some((_, expected)) = e.split_once("expected") else {
            panic!("{text}: no list of what was expected: {e}")
        };
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    /// `FIELDS` is every field the parser accepts, no more: a field added to (or taken
    /// from) a table of the scenario without `FIELDS` and `docs/SCENARIOS.md` fails here.
    /// So is a fault kind.
    #[test]
    fn fields_is_what_the_parser_accepts() {
        let probe = "zzz_probe = 1\n";
        let mut kinds = Vec::new();
        for (table, fields) in FIELDS {
            let (text, tagged) = match table {
                "" => (probe.to_owned(), false),
                "behaviour" => (format!("[behaviour.KAZ]\n{probe}"), false),
                t => match t.strip_prefix("faults.") {
                    Some(kind) => {
                        kinds.push(kind.to_owned());
                        (format!("[[faults]]\nkind = \"{kind}\"\n{probe}"), true)
                    }
                    None => (format!("[[{t}]]\n{probe}"), false),
                },
            };
            let mut got = accepted(&text);
            // The tag is read before the variant's fields, which the error lists.
            if tagged {
                got.insert(0, "kind".to_owned());
            }
            let mut want: Vec<String> = fields.iter().map(|f| (*f).to_owned()).collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "table {table:?}");
        }
        let mut got = accepted("[[faults]]\nkind = \"zzz_probe\"\n");
        got.sort();
        kinds.sort();
        assert_eq!(got, kinds, "fault kinds");
    }
}
