//! `hotline`: the one CICA Hotline binary.
//!
//! `main` parses the command line, installs the log subscriber and dispatches to one module
//! per command group under `cmd/`. Each module owns its clap arguments and its `run`
//! function; adding a command group is a new module and one variant of [`Command`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `println!`, except that it never panics: a closed standard output (`hotline inbox |
/// head`) ends the program quietly, and any other failure to write it (a full disk under
/// `hotline relay report > FILE`) ends it with an error and exit status 1 ([`stdout_failed`]),
/// rather than a success with the output cut short.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::stdout_failed(e);
        }
    }};
}

/// `print!` with the same rules as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout(), $($arg)*) {
            $crate::stdout_failed(e);
        }
    }};
}

/// `eprintln!`, except that a standard error that cannot be written (`hotline config check
/// FILE 2>&1 | head -1`, the reader gone) is let be instead of panicking (exit status 101):
/// what the command has to say is then lost, but its exit status still says how it went.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Writes out what [`out!`] left in standard output's buffer: its failure is the command's
/// too, and the runtime's own flush at exit would pass over it in silence.
fn flush_stdout() {
    if let Err(e) = std::io::Write::flush(&mut std::io::stdout()) {
        stdout_failed(e);
    }
}

/// The exit status that a closed standard output ends the program with ([`stdout_failed`]):
/// 0, since a reader that wants no more is no failure of the command, unless the command has
/// already failed and is only saying so: a drill that failed sets 1 before it prints its
/// summary, so that `hotline exercise run | head` under `pipefail` does not pass it, and a
/// backup whose pruning failed sets 1 before it prints its "OK" line.
static EXIT_ON_CLOSED_STDOUT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Ends the program after standard output failed with `e`: quietly if its reader has gone,
/// as under `| head`, which wants no more (with [`EXIT_ON_CLOSED_STDOUT`]); with the error
/// (status 1) otherwise, so that a script writing the output to a file on a full disk does
/// not take it for whole.
fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(
            EXIT_ON_CLOSED_STDOUT
                .load(std::sync::atomic::Ordering::Relaxed)
                .into(),
        );
    }
    errln!("error: standard output: {e}");
    std::process::exit(1);
}

mod cmd;

/// CICA Hotline: crisis communications for the Conference on Interaction and Confidence
/// Building Measures in Asia.
#[derive(Debug, Parser)]
#[command(name = "hotline", version)]
struct Cli {
    /// Log as JSON lines instead of human-readable text (logs go to standard error).
    #[arg(long, global = true)]
    log_json: bool,

    #[command(subcommand)]
    command: Command,
}

/// The command groups.
#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a key pair: DIR/ID.key (secret, mode 0600) and DIR/ID.pub.
    Keygen(cmd::keys::KeygenArgs),
    /// Create, edit, sign, show and verify rosters.
    #[command(subcommand)]
    Roster(cmd::roster::RosterCommand),
    /// Run the Secretariat's relay (`--config FILE`), or create its certificate (`init`).
    Relay(cmd::relay::RelayArgs),
    /// Run a contact point's node daemon (`--config FILE`).
    Node(cmd::node::NodeArgs),
    /// Send a message through the local node.
    Send(cmd::operator::SendArgs),
    /// List received messages.
    Inbox(cmd::operator::InboxArgs),
    /// Show one message (received or sent, with its delivery matrix).
    Show(cmd::operator::ShowArgs),
    /// Show a sent message's delivery matrix as a table.
    Status(cmd::operator::ShowArgs),
    /// Acknowledge a received message.
    Ack(cmd::operator::AckArgs),
    /// Reply to a received message: to its sender, referencing it, as exercise or test
    /// traffic if it was.
    Reply(cmd::operator::ReplyArgs),
    /// Discard a quarantined delivery (listed by `hotline inbox --quarantined`).
    Discard(cmd::operator::DiscardArgs),
    /// List sent messages with their state.
    Sent(cmd::operator::SentArgs),
    /// The node's own state: roster, relays, outbox.
    NodeStatus(cmd::operator::PlainArgs),
    /// Follow live events (messages, receipts, overdue, relay up/down).
    Watch(cmd::operator::PlainArgs),
    /// Run drills: scripted scenarios against a real relay and real nodes, scored.
    #[command(subcommand)]
    Exercise(cmd::exercise::ExerciseCommand),
    /// Check an audit journal.
    #[command(subcommand)]
    Audit(cmd::audit::AuditCommand),
    /// Copy a relay's or a node's store while it runs: consistent, checked, mode 0600.
    Backup(cmd::backup::BackupArgs),
    /// Put a backup in place of a stopped relay's or node's store: checked, the replaced one
    /// kept beside it.
    Restore(cmd::backup::RestoreArgs),
    /// Check a relay or node configuration file before starting the service.
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let result = match cli.command {
        Command::Exercise(command) => match cmd::exercise::run(command) {
            Ok(code) => {
                flush_stdout();
                return code;
            }
            Err(e) => Err(e),
        },
        Command::Keygen(args) => cmd::keys::run(args),
        Command::Roster(command) => cmd::roster::run(command),
        Command::Relay(args) => cmd::relay::run(args),
        Command::Audit(command) => cmd::audit::run(command),
        Command::Backup(args) => cmd::backup::run(args),
        Command::Restore(args) => cmd::backup::restore(args),
        Command::Config(command) => cmd::config::run(command),
        Command::Node(args) => cmd::node::run(args),
        Command::Send(args) => cmd::operator::send(args),
        Command::Inbox(args) => cmd::operator::inbox(args),
        Command::Show(args) => cmd::operator::show(args),
        Command::Status(args) => cmd::operator::status(args),
        Command::Ack(args) => cmd::operator::ack(args),
        Command::Reply(args) => cmd::operator::reply(args),
        Command::Discard(args) => cmd::operator::discard(args),
        Command::Sent(args) => cmd::operator::sent(args),
        Command::NodeStatus(args) => cmd::operator::node_status(args),
        Command::Watch(args) => cmd::operator::watch(args),
    };
    match result {
        Ok(()) => {
            flush_stdout();
            ExitCode::SUCCESS
        }
        // The command's own error is the one to report, whatever became of its output.
        Err(e) => {
            errln!("error: {}", report(&e));
            if e.is::<cmd::CannotStart>() {
                errln!("(exit status {}: the service cannot start until this is put right; starting it again will not help)", cmd::EXIT_CANNOT_START);
                ExitCode::from(cmd::EXIT_CANNOT_START)
            } else if e.is::<cmd::BadArgument>() {
                ExitCode::from(cmd::EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the message already
/// holds (many errors print their source as part of their own message).
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Installs the one tracing subscriber: human-readable by default, JSON with `--log-json`,
/// filtered by `RUST_LOG` (default `info`), writing to standard error so that a command's
/// output on standard output stays machine-readable.
fn init_logging(json: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.with_target(false).init();
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn report_skips_repeated_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let inner = anyhow::Error::new(io).context("f.key: gone");
        assert_eq!(
            super::report(&inner.context("cannot sign")),
            "cannot sign: f.key: gone"
        );
    }

    #[test]
    fn command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    /// The man page the package installs (`deploy/debian/hotline.1`) has an entry for every
    /// command and subcommand: an item whose bold text starts with its name (`.BI "roster
    /// sign \-\-roster " DRAFT`), or names it after a comma (`.BR "roster add" ", " ...`).
    /// `reply`, `discard`, `relay report` and `exercise live` were missing from it for a while.
    #[test]
    fn the_man_page_names_every_command() {
        let page = include_str!("../../../deploy/debian/hotline.1");
        // A font macro's line as it prints: its arguments (quoted or not) joined by spaces for
        // `.B`, run together for the alternating `.BI` and `.BR`; escapes dropped.
        let printed = |args: &str, sep: &str| {
            let mut words = Vec::new();
            let mut rest = args.trim();
            while !rest.is_empty() {
                let (word, after) = match rest.strip_prefix('"') {
                    Some(q) => q.split_once('"').unwrap_or((q, "")),
                    None => rest.split_once(' ').unwrap_or((rest, "")),
                };
                words.push(word);
                rest = after.trim_start();
            }
            ["\\fR", "\\fP", "\\fB"]
                .iter()
                .fold(words.join(sep).replace("\\-", "-"), |acc, f| {
                    acc.replace(f, "")
                })
        };
        let items: Vec<String> = page
            .lines()
            .filter_map(|l| {
                let alternating = l.strip_prefix(".BI ").or(l.strip_prefix(".BR "));
                match alternating {
                    Some(args) => Some(printed(args, "")),
                    None => l.strip_prefix(".B ").map(|args| printed(args, " ")),
                }
            })
            .collect();
        let named = |path: &str| {
            items.iter().any(|item| {
                item.split(", ").any(|part| {
                    part.strip_prefix(path)
                        .is_some_and(|after| after.is_empty() || after.starts_with(' '))
                })
            })
        };
        let mut missing = Vec::new();
        let cli = super::Cli::command();
        for cmd in cli.get_subcommands().filter(|c| c.get_name() != "help") {
            let name = cmd.get_name();
            if !named(name) {
                missing.push(name.to_owned());
            }
            for sub in cmd.get_subcommands().filter(|c| c.get_name() != "help") {
                let path = format!("{name} {}", sub.get_name());
                if !named(&path) {
                    missing.push(path);
                }
            }
        }
        assert!(
            missing.is_empty(),
            "deploy/debian/hotline.1 has no entry for: {missing:?}"
        );
    }

    /// Every `hotline …` command line the operator documents show (README.md,
    /// docs/OPERATIONS.md, docs/API.md, docs/SCENARIOS.md: code blocks and inline code alike)
    /// names a command that exists, and each `--option` it gives is one that command takes:
    /// an operator follows them literally, and a renamed or removed option must take its
    /// documents with it.
    #[test]
    fn the_documents_use_only_commands_and_options_that_exist() {
        let documents = [
            ("README.md", include_str!("../../../README.md")),
            (
                "docs/OPERATIONS.md",
                include_str!("../../../docs/OPERATIONS.md"),
            ),
            ("docs/API.md", include_str!("../../../docs/API.md")),
            (
                "docs/SCENARIOS.md",
                include_str!("../../../docs/SCENARIOS.md"),
            ),
        ];
        let cli = super::Cli::command();
        let mut checked = 0;
        let mut wrong = Vec::new();
        for (file, text) in documents {
            // A shell line continued with `\` is one command line.
            let text = text.replace("\\\n", " ");
            for line in text.lines() {
                for (at, _) in line.match_indices("hotline ") {
                    // The program's name as a word: at the line's start, after a space, a
                    // backquote, `(`, `/` (`/usr/bin/hotline`) or `=` (`ExecStart=`).
                    let before = line[..at].chars().next_back();
                    if !matches!(before, None | Some(' ' | '`' | '(' | '/' | '=')) {
                        continue;
                    }
                    // The command line ends where the code or the shell statement does.
                    let rest = &line[at + "hotline ".len()..];
                    let end = rest
                        .find(['`', '#', '|', ';', ')', '>'])
                        .unwrap_or(rest.len());
                    let rest = rest[..end].split("&&").next().unwrap_or("");
                    let words: Vec<&str> = rest.split_whitespace().collect();
                    // Prose that uses the word (`hotline messaging`, `-o hotline -g hotline`)
                    // names no command.
                    let Some(mut cmd) = words.first().and_then(|w| cli.find_subcommand(w)) else {
                        continue;
                    };
                    let mut path = vec![cmd.get_name()];
                    for w in &words[1..] {
                        match cmd.find_subcommand(w) {
                            Some(sub) => {
                                cmd = sub;
                                path.push(cmd.get_name());
                            }
                            None => break,
                        }
                    }
                    checked += 1;
                    for w in &words {
                        let w = w.trim_start_matches('[').trim_end_matches([']', ',', '.']);
                        let Some(option) = w.strip_prefix("--") else {
                            continue;
                        };
                        let option = option.split('=').next().unwrap_or(option);
                        let known = matches!(option, "help" | "log-json")
                            || cmd.get_arguments().any(|a| a.get_long() == Some(option));
                        if !known {
                            wrong.push(format!(
                                "{file}: `hotline {}` takes no --{option}: {}",
                                path.join(" "),
                                line.trim()
                            ));
                        }
                    }
                }
            }
        }
        assert!(checked > 100, "only {checked} command lines found");
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
