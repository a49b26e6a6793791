//! `hotline exercise`: run drills.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum ExerciseCommand {
    /// Run a scenario: a built-in name or a TOML file (default: regional-drill).
    Run {
        /// Scenario: `regional-drill`, `comm-check`, `silent-member`, `relay-restore`, or a path.
        #[arg(default_value = "regional-drill")]
        scenario: String,
        /// Seed for link impairments, for an exact rerun (printed by every run).
        #[arg(long)]
        seed: Option<u64>,
        /// Directory for the deployment, logs and reports (default: a new one in $TMPDIR, else
        /// /tmp).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Run this many times faster than the scenario's own time compression (a finite
        /// number above 0; below 1 runs slower).
        #[arg(long, default_value_t = 1.0, value_parser = parse_speedup)]
        speedup: f64,
        /// Print the JSON report on standard output instead of the summary table.
        #[arg(long)]
        json: bool,
    },
    /// Run a scenario against an existing deployment through its nodes' local APIs: nothing
    /// is started or killed, operators acknowledge themselves, every inject is marked
    /// exercise.
    Live {
        /// Scenario: a built-in name or a path.
        scenario: String,
        /// TOML file naming the roster and each node's API address and token file.
        #[arg(long)]
        endpoints: PathBuf,
        /// Directory for the reports (default: a new one in $TMPDIR, else /tmp).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the JSON report on standard output instead of the summary table.
        #[arg(long)]
        json: bool,
    },
    /// List the built-in scenarios.
    List,
}

pub(crate) fn run(cmd: ExerciseCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ExerciseCommand::List => {
            for (name, _) in hotline_exercise::scenario::BUILTIN {
                let s = hotline_exercise::load(name)?;
                outln!("{name:<16} {}", s.description);
            }
            Ok(ExitCode::SUCCESS)
        }
        ExerciseCommand::Live {
            scenario,
            endpoints,
            out,
            json,
        } => {
            let sc = hotline_exercise::load(&scenario)?;
            let live = hotline_exercise::live::load(&endpoints)?;
            let bin = std::env::current_exe().context("locating the hotline binary")?;
            let opts = hotline_exercise::RunOptions {
                bin,
                out_dir: out,
                seed: None,
                speedup: 1.0,
                progress: !json,
                live: Some(live),
            };
            finish(sc, opts, json)
        }
        ExerciseCommand::Run {
            scenario,
            seed,
            out,
            speedup,
            json,
        } => {
            let sc = hotline_exercise::load(&scenario)?;
            let bin = std::env::current_exe().context("locating the hotline binary")?;
            let opts = hotline_exercise::RunOptions {
                bin,
                out_dir: out,
                seed,
                speedup,
                progress: !json,
                live: None,
            };
            finish(sc, opts, json)
        }
    }
}

/// `--speedup`: a finite number above 0. `0` and `nan` were taken for 0.01 without a word
/// (a drill a hundred times slower, which looks like a hang), and `inf` played every inject
/// at once; clap refuses them as malformed (exit status 2), before anything starts.
fn parse_speedup(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(_) => Err("a finite number above 0, e.g. 10 or 0.5".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs the drill, prints the summary (or JSON) and the report paths; exit 0 only if passed.
fn finish(
    sc: hotline_exercise::Scenario,
    opts: hotline_exercise::RunOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        // Caught for as long as the drill runs: a SIGTERM (a service manager, `timeout`), a
        // SIGINT sent to the harness alone, or a SIGHUP (its terminal gone) used to end it by
        // the signal's default action, leaving the relay and every node running, with no
        // one to stop them. Dropping the drill drops the processes it started, and each is
        // killed and reaped as it is (`Proc`'s drop), as on any error.
        let mut signals = super::Signals::catch()?;
        let interrupted = |sig: &str| {
            anyhow::anyhow!(
                "drill interrupted by {sig}: every process it started was stopped; no report was written"
            )
        };
        tokio::select! {
            report = hotline_exercise::run(sc, opts) => report,
            _ = signals.term.recv() => Err(interrupted("SIGTERM")),
            _ = signals.int.recv() => Err(interrupted("SIGINT")),
            _ = signals.hup.recv() => Err(interrupted("SIGHUP")),
        }
    })?;
    if !report.passed {
        // A reader gone before the summary is written does not turn the failure into 0.
        crate::EXIT_ON_CLOSED_STDOUT.store(1, std::sync::atomic::Ordering::Relaxed);
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", hotline_exercise::report::summary(&report));
        outln!(
            "JSON report: {}",
            report.directory.join("report.json").display()
        );
        outln!(
            "HTML report: {}",
            report.directory.join("report.html").display()
        );
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
