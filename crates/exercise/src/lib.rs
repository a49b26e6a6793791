//! `hotline-exercise`: drills. A scenario (TOML) names participants, injects, scripted
//! operator behaviour, faults and objectives; the harness creates keys, a signed roster, a
//! certificate and configurations in a directory, starts the relay and one node per
//! participant as separate processes of the real `hotline` binary on loopback, drives the
//! nodes through their local APIs as operators would, injects faults, and scores the
//! outcome against the objectives and the global invariants.

#![warn(missing_docs)]

pub mod deploy;
mod html;
pub mod live;
pub mod process;
pub mod proxy;
pub mod report;
pub mod run;
pub mod scenario;

pub use report::Report;
pub use run::{run, Live, RunOptions};
pub use scenario::Scenario;

pub use hotline_net::now_ms;

/// Loads a scenario: a built-in name (`regional-drill`, `comm-check`, `silent-member`, `relay-restore`) or a
/// path to a TOML file.
pub fn load(name_or_path: &str) -> anyhow::Result<Scenario> {
    if let Some((_, text)) = scenario::BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
        return Scenario::parse(text, name_or_path);
    }
    let text = hotline_config::text_file::read_config(std::path::Path::new(name_or_path)).map_err(
        |e| {
            anyhow::anyhow!(
                "scenario {e} (built-in scenarios: regional-drill, comm-check, silent-member, relay-restore)"
            )
        },
    )?;
    Scenario::parse(&text, name_or_path)
}

#[cfg(test)]
mod tests {
    /// Each built-in scenario parses, and the ids it names are on the roster it runs with.
    #[test]
    fn builtin_scenarios_parse() {
        let roster = cica_roster();
        for (name, _) in crate::scenario::BUILTIN {
            let s = crate::load(name).expect(name);
            assert!(!s.objectives.is_empty(), "{name} has objectives");
            s.check_roster(&roster).expect(name);
        }
    }

    /// A restore needs its backup taken first.
    #[test]
    fn a_restore_before_its_backup_is_refused() {
        let text = crate::scenario::BUILTIN
            .iter()
            .find(|(n, _)| *n == "relay-restore")
            .expect("built in")
            .1;
        let late = text.replace("backup_at_s = 60.0", "backup_at_s = 240.0");
        assert_ne!(late, text);
        let e = crate::scenario::Scenario::parse(&late, "late.toml")
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("backup_at_s (240) must come before at_s (240)"),
            "{e}"
        );
    }

    /// The CICA roster template, with a fresh key for each participant.
    fn cica_roster() -> hotline_proto::Roster {
        let mut draft = hotline_config::roster_file::Draft::parse(
            crate::scenario::CICA_ROSTER,
            std::path::Path::new("cica-roster.toml"),
        )
        .expect("template");
        for p in &mut draft.participants {
            p.keys = vec![hotline_proto::PublicKey::of(
                &hotline_config::keyfile::generate(),
            )];
        }
        draft.to_roster(1).expect("roster")
    }

    /// What a fragment in `docs/SCENARIOS.md` is appended to: an alert to every member,
    /// with a respond-by time.
    const FRAGMENT_BASE: &str = "name = \"fragment\"\nend_s = 3600.0\n[[injects]]\nname = \"alert\"\nat_s = 0.0\nfrom = \"SEC\"\nall_members = true\nrespond_within_s = 900.0\nsubject = \"s\"\n";

    /// Whether scenario `text` is accepted, as a drill the harness deploys would take it:
    /// parsed, checked against the roster, and each participant it needs with a node.
    fn accepted(text: &str, roster: &hotline_proto::Roster) -> anyhow::Result<()> {
        let s = crate::Scenario::parse(text, "SCENARIOS.md")?;
        s.check_roster(roster)?;
        let nodes: Vec<String> = if s.participants.is_empty() {
            roster
                .participants
                .iter()
                .map(|p| p.id.to_string())
                .collect()
        } else {
            s.participants.clone()
        };
        crate::run::check_nodes(&s, &nodes, true, roster)
    }

    /// `docs/SCENARIOS.md` says what the parser does: each table of fields in it lists
    /// exactly the fields `scenario::FIELDS` has for that table (which a test of its own
    /// keeps equal to what the parser accepts), a ```` ```toml ```` block is a scenario the
    /// harness accepts, a ```` ```toml fragment ```` block is accepted appended to a small
    /// scenario, and a ```` ```toml refused ```` block is refused.
    #[test]
    fn docs_scenarios_md_is_true() {
        let doc = include_str!("../../../docs/SCENARIOS.md");
        let lines: Vec<&str> = doc.lines().collect();
        // Whether each line is inside a fenced block (where `#` starts a TOML comment).
        let mut fenced = false;
        let in_block: Vec<bool> = lines
            .iter()
            .map(|l| {
                if l.starts_with("```") {
                    fenced = !fenced;
                    true
                } else {
                    fenced
                }
            })
            .collect();
        // The lines of the section under `heading`, up to the next heading of its level or
        // above.
        let section = |heading: &str| -> Vec<&str> {
            let Some(at) = lines.iter().position(|l| *l == heading) else {
                panic!("docs/SCENARIOS.md has no heading {heading:?}")
            };
            let level = heading.split(' ').next().unwrap_or_default();
            (at + 1..lines.len())
                .take_while(|&n| {
                    let l = lines[n];
                    in_block[n]
                        || !(l.starts_with('#')
                            && l.split(' ').next().is_some_and(|h| h.len() <= level.len()))
                })
                .map(|n| lines[n])
                .collect()
        };
        for (table, fields) in crate::scenario::FIELDS {
            let heading = match table {
                "" => "## The top level".to_owned(),
                "behaviour" => "## `[behaviour.ID]`".to_owned(),
                t => match t.strip_prefix("faults.") {
                    Some(kind) => format!("### `kind = \"{kind}\"`"),
                    None => format!("## `[[{t}]]`"),
                },
            };
            let mut documented: Vec<&str> = section(&heading)
                .into_iter()
                .filter_map(|l| l.strip_prefix("| `"))
                .filter_map(|l| l.split_once("` |").map(|(f, _)| f))
                .collect();
            let mut want = fields.to_vec();
            documented.sort_unstable();
            want.sort_unstable();
            assert_eq!(documented, want, "the table under {heading}");
        }

        let roster = cica_roster();
        let (mut whole, mut fragments, mut refused) = (0, 0, 0);
        let mut rest = &lines[..];
        while let Some(open) = rest.iter().position(|l| l.starts_with("```toml")) {
            let info = rest[open].trim_start_matches("```toml").trim();
            let len = rest[open + 1..]
                .iter()
                .position(|l| *l == "```")
                .expect("a closed block");
            let block = rest[open + 1..open + 1 + len].join("\n");
            rest = &rest[open + len + 2..];
            match info {
                "" => {
                    whole += 1;
                    accepted(&block, &roster).unwrap_or_else(|e| panic!("{e:#}\n{block}"));
                }
                "fragment" => {
                    fragments += 1;
                    accepted(&format!("{FRAGMENT_BASE}{block}"), &roster)
                        .unwrap_or_else(|e| panic!("{e:#}\n{block}"));
                }
                "refused" => {
                    refused += 1;
                    assert!(accepted(&block, &roster).is_err(), "accepted:\n{block}");
                }
                other => panic!("a ```toml block marked {other:?}"),
            }
        }
        assert!(
            whole >= 2 && fragments >= 3 && refused >= 2,
            "{whole} {fragments} {refused}"
        );
    }
}
