//! Scenario files (TOML): participants, injects, operator behaviour, faults, objectives.
//!
//! Times are in *scenario* seconds; the harness divides them by `time_compression` to get
//! wall-clock seconds (a 48-hour respond-by with compression 3600 runs as 48 s).

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use serde::Deserialize;

/// A drill.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, e.g. `regional-drill`.
    pub name: String,
    /// What the drill exercises.
    #[serde(default)]
    pub description: String,
    /// Scenario seconds per wall-clock second (default 1).
    #[serde(default = "one")]
    pub time_compression: f64,
    /// Scenario time at which the drill ends at the latest, if objectives are still open.
    pub end_s: f64,
    /// Participant ids to run (default: the whole CICA roster).
    #[serde(default)]
    pub participants: Vec<String>,
    /// Seed for the link impairments (default: random, printed).
    pub seed: Option<u64>,
    /// Messages to send.
    #[serde(default)]
    pub injects: Vec<Inject>,
    /// Operator behaviour: `default` and per participant id.
    #[serde(default)]
    pub behaviour: BTreeMap<String, Behaviour>,
    /// Faults to inject.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// What must hold at the end.
    #[serde(default)]
    pub objectives: Vec<Objective>,
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
    /// Message kind (default alert).
    #[serde(default = "alert")]
    pub kind: String,
    /// Precedence (default ROUTINE).
    #[serde(default = "routine")]
    pub precedence: String,
    /// Category.
    pub category: Option<String>,
    /// Acknowledgement required within this many scenario seconds.
    pub respond_within_s: Option<f64>,
    /// Name of an earlier inject this one references (update, cancel, reply).
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
    /// Never acknowledge anything.
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
    /// overdue hook ran for every recipient in scope that did not acknowledge).
    pub expect: String,
    /// Within this many scenario seconds of the inject (for delivered / acknowledged / answered).
    pub within_s: Option<f64>,
    /// Restrict to these recipients (default: all recipients of the inject).
    #[serde(default)]
    pub participants: Vec<String>,
    /// Restrict to the members of this group.
    pub group: Option<String>,
    /// Leave these recipients out.
    #[serde(default)]
    pub except: Vec<String>,
}

impl Scenario {
    /// Parses a scenario, checking references between its parts.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let s: Scenario = toml::from_str(text).with_context(|| format!("scenario {origin}"))?;
        if s.time_compression.is_nan() || s.time_compression <= 0.0 {
            bail!("scenario {origin}: time_compression must be positive");
        }
        let names: Vec<&str> = s.injects.iter().map(|i| i.name.as_str()).collect();
        for (i, inj) in s.injects.iter().enumerate() {
            if names[..i].contains(&inj.name.as_str()) {
                bail!("scenario {origin}: inject {:?} is defined twice", inj.name);
            }
            if let Some(r) = &inj.references {
                if !names[..i].contains(&r.as_str()) {
                    bail!("scenario {origin}: inject {:?} references {r:?}, which is not an earlier inject", inj.name);
                }
            }
        }
        for f in &s.faults {
            if let Fault::RestoreRelay {
                backup_at_s, at_s, ..
            } = f
            {
                if backup_at_s >= at_s {
                    bail!("scenario {origin}: restore_relay: backup_at_s ({backup_at_s}) must come before at_s ({at_s})");
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
        }
        Ok(s)
    }

    /// Wall-clock seconds for `scenario_s`.
    pub fn wall(&self, scenario_s: f64) -> std::time::Duration {
        std::time::Duration::from_secs_f64((scenario_s / self.time_compression).max(0.0))
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
