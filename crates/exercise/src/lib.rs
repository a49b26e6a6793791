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
        let roster = draft.to_roster(1).expect("roster");
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
}
