//! `hotline relay`: run the Secretariat's relay, or create its certificate.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use hotline_relay::{Relay, RelayConfig};

/// `hotline relay --config FILE` runs the relay; `hotline relay init` creates its certificate.
///
/// `--config` is required unless a subcommand is given, so that `hotline relay` alone (an
/// `ExecStart=` that lost it) is a usage error, exit status 2, which the unit does not
/// restart on, as the man page's EXIT STATUS says of an argument missing.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct RelayArgs {
    /// The relay configuration file (see config/relay.toml).
    #[arg(long, short, required = true)]
    config: Option<PathBuf>,

    /// With `--config`: shut down when standard input closes (for the drill harness; see
    /// `StdinTether`).
    #[arg(long, hide = true)]
    stop_when_stdin_closes: bool,

    #[command(subcommand)]
    command: Option<RelayCommand>,
}

#[derive(Debug, Subcommand)]
enum RelayCommand {
    /// Create a self-signed certificate and key for the relay and print the fingerprint
    /// that nodes pin (`fingerprint` under `[[relays]]` in node.toml). Refused, writing
    /// nothing, if either file exists.
    Init {
        /// Where to write the certificate (PEM).
        #[arg(long, default_value = "relay.crt")]
        cert: PathBuf,
        /// Where to write the private key (PEM, mode 0600).
        #[arg(long, default_value = "relay.key")]
        key: PathBuf,
    },
    /// The network-wide picture from the relay's store: each message accepted in the period,
    /// newest first, with how many of its recipients hold it, how many acknowledged it, and
    /// how many are overdue; with `--id`, one message recipient by recipient. Times are the
    /// recipients' signed receipts' (their clocks). Reads only; safe beside a running relay
    /// (run it as the relay's user, which can read its data directory).
    Report {
        /// The relay configuration file (its `data_dir` holds the store).
        #[arg(long, short)]
        config: PathBuf,
        /// The period: messages accepted in the last this many hours.
        #[arg(long, default_value_t = 24)]
        hours: u64,
        /// At most this many messages, the newest (with `--overdue`, of those with an
        /// overdue recipient). A report cut short by it says so.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        limit: u64,
        /// One message, recipient by recipient.
        #[arg(long, conflicts_with = "overdue")]
        id: Option<String>,
        /// Only messages with a recipient whose acknowledgement is overdue (for a script
        /// that pages the Secretariat's duty officer).
        #[arg(long)]
        overdue: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// For a node restored from a backup: make the relay deliver again to it every message
    /// addressed to it that the relay accepted since a time (take the backup's time, or
    /// earlier). The node keeps what it still holds and stores the rest as new. A running
    /// relay is asked through its control socket (`admin.sock` in its data directory; run
    /// this as the service's account or root) and closes the node's link, so that it
    /// connects again and is delivered again; a stopped relay's store is changed directly,
    /// for its next start.
    Redeliver {
        /// The relay configuration file (its `data_dir` holds the store).
        #[arg(long, short)]
        config: PathBuf,
        /// The participant whose node was restored.
        #[arg(long)]
        to: String,
        /// Messages accepted at or after this time, UTC (`2025-01-01T03:00:00Z`), by the
        /// relay's clock.
        #[arg(long)]
        since: String,
    },
    /// Print the fingerprint of an existing certificate.
    Fingerprint {
        /// The certificate (PEM).
        #[arg(long, default_value = "relay.crt")]
        cert: PathBuf,
        /// Its private key (PEM), checked to load and to be the certificate's.
        #[arg(long, default_value = "relay.key")]
        key: PathBuf,
    },
}

pub(crate) fn run(args: RelayArgs) -> anyhow::Result<()> {
    match (args.command, args.config) {
        (Some(RelayCommand::Init { cert, key }), _) => {
            let fp = hotline_net::tls::write_self_signed(&cert, &key)?;
            outln!("certificate: {}", cert.display());
            outln!("key:         {}", key.display());
            outln!("fingerprint: {fp}");
            Ok(())
        }
        (Some(RelayCommand::Fingerprint { cert, key }), _) => {
            let id = hotline_net::RelayIdentity::load(&cert, &key)?;
            outln!("{}", id.fingerprint());
            Ok(())
        }
        (
            Some(RelayCommand::Report {
                config,
                hours,
                limit,
                id,
                overdue,
                json,
            }),
            _,
        ) => report(
            &config,
            hours,
            usize::try_from(limit).unwrap_or(usize::MAX),
            id.as_deref(),
            overdue,
            json,
        ),
        (Some(RelayCommand::Redeliver { config, to, since }), _) => redeliver(&config, &to, &since),
        (None, Some(config)) => serve(config, args.stop_when_stdin_closes),
        // clap refuses this (`--config` is required without a subcommand): exit status 2.
        (None, None) => anyhow::bail!("give --config FILE to run the relay, or `relay init`"),
    }
}

fn serve(path: PathBuf, tethered: bool) -> anyhow::Result<()> {
    let config = RelayConfig::load(&path).map_err(super::CannotStart::classify)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let mut signals = super::Signals::catch()?;
        let mut tether = super::StdinTether::new(tethered)?;
        let handle = Relay::spawn(config)
            .await
            .map_err(super::CannotStart::classify)?;
        if let Some(m) = handle.metrics_addr() {
            tracing::info!(addr = %m, "metrics on http://{m}/metrics, health on http://{m}/health");
        }
        let stopped = wait_for_signals(&handle, &mut signals, &mut tether).await;
        handle.shutdown().await;
        match stopped? {
            None => Ok(()),
            Some(reason) => anyhow::bail!("the relay stopped on its own: {reason}"),
        }
    })
}

/// `hotline relay redeliver`.
fn redeliver(config: &std::path::Path, to: &str, since: &str) -> anyhow::Result<()> {
    // The command line first: a mistake there is a usage error, whatever the configuration.
    let to = hotline_proto::ParticipantId::new(to)
        .map_err(|e| super::BadArgument::of("--to", format_args!("{to}: {e}")))?;
    let since_ms =
        super::roster::parse_utc(since).map_err(|e| super::BadArgument::of("--since", e))?;
    let config = RelayConfig::load(config)?;
    // A participant the relay's roster does not list has no queue there: a mistyped id was
    // answered "nothing to deliver again", exit status 0, as if the restored node were owed
    // nothing. The roster file is the one the relay loads at start and on SIGHUP; if it
    // cannot be read here, the store alone answers.
    match hotline_config::roster_file::read_verified_roster(&config.roster, &config.roster_key) {
        Ok(roster) if roster.participant(&to).is_none() => anyhow::bail!(
            "--to {to}: not on the relay's roster ({}, version {}): check the id (`hotline \
             roster show {}`)",
            config.roster.display(),
            roster.version,
            config.roster.display()
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "the relay's roster was not read: --to is not checked against it")
        }
    }
    if !super::audit::exists(&config.data_dir.join(hotline_relay::store::DB_FILE))? {
        anyhow::bail!(
            "{}: no relay store here (has the relay run?)",
            config.data_dir.display()
        );
    }
    let _claim = match hotline_store::lock_dir(&config.data_dir) {
        Err(hotline_store::StoreError::Locked { .. }) => {
            return redeliver_running(&config.data_dir, &to, since, since_ms)
        }
        other => other?,
    };
    let r = hotline_relay::store::redeliver_since(
        &config.data_dir,
        &to,
        since_ms,
        hotline_node::now_ms(),
    )?;
    tracing::info!(participant = %to, since_ms, messages = r.messages, cursor_was = r.cursor_was, cursor = r.cursor, "queue moved back");
    if r.messages == 0 {
        outln!("nothing to deliver again: no message addressed to {to} was accepted since {since}");
    } else {
        outln!(
            "OK: {} message(s) addressed to {to} will be delivered to it again at its next connection (start the relay)",
            r.messages
        );
    }
    if r.receipts > 0 {
        outln!(
            "OK: {} receipt(s) of messages {to} sent, stored since {since}, will be forwarded to it again at its next connection (start the relay)",
            r.receipts
        );
    }
    Ok(())
}

/// `hotline relay redeliver` on a running relay: asked through its control socket.
fn redeliver_running(
    data_dir: &std::path::Path,
    to: &hotline_proto::ParticipantId,
    since: &str,
    since_ms: u64,
) -> anyhow::Result<()> {
    use hotline_relay::admin::{ask, Answer, Request};
    let request = Request::Redeliver {
        to: Some(to.to_string()),
        since_ms,
    };
    let answer = ask(data_dir, &request).context(
        "the relay is running (its data directory is locked) but its control socket does not \
         answer; run this as the service's account or root (sudo -u hotline …), or stop the \
         relay first",
    )?;
    let rewound = match answer {
        Answer::Redelivered { rewound } => rewound,
        Answer::Refused { error } => anyhow::bail!("the relay refused: {error}"),
    };
    let messages: u64 = rewound
        .iter()
        .filter(|r| r.recipient == to.as_str())
        .map(|r| r.messages)
        .sum();
    tracing::info!(participant = %to, since_ms, messages, "queue moved back by the running relay");
    if messages == 0 {
        outln!("nothing to deliver again: no message addressed to {to} was accepted since {since}");
    } else {
        outln!(
            "OK: {messages} message(s) addressed to {to} are being delivered to it again (the \
             relay closed its link, if it had one; its node connects again)"
        );
    }
    let receipts: u64 = rewound
        .iter()
        .filter(|r| r.recipient == to.as_str())
        .map(|r| r.receipts)
        .sum();
    if receipts > 0 {
        outln!(
            "OK: {receipts} receipt(s) of messages {to} sent, stored since {since}, are being \
             forwarded to it again"
        );
    }
    Ok(())
}

/// `hotline relay report`.
fn report(
    config: &std::path::Path,
    hours: u64,
    limit: usize,
    id: Option<&str>,
    overdue_only: bool,
    json_out: bool,
) -> anyhow::Result<()> {
    use super::operator::{banner, recipients_text, shown, ts, TS_WIDTH};
    use super::roster::shorten;
    use serde_json::{json, Value};

    // A malformed id is a mistake in the command, not a message the store lacks: said as
    // such, before the store is opened.
    let id = id
        .map(|id| {
            id.parse::<hotline_proto::MessageId>()
                .map_err(|e| super::BadArgument::of("--id", e))
        })
        .transpose()?;
    let config = RelayConfig::load(config)?;
    let db = config.data_dir.join(hotline_relay::store::DB_FILE);
    if !super::audit::exists(&db)? {
        anyhow::bail!("{}: no relay store here (has the relay run?)", db.display());
    }
    let conn = hotline_store::open_read_only(&db)?;
    if !hotline_relay::store::is_relay_store(&conn)? {
        anyhow::bail!("{}: not a relay store", db.display());
    }
    hotline_relay::store::check_schema_version(&conn, &db)?;
    let now = hotline_relay::now_ms();
    let since = now.saturating_sub(hours.saturating_mul(3_600_000));
    let view = |t: &hotline_relay::report::Tracked| {
        let e = &t.envelope;
        json!({
            "id": e.id, "from": e.sender, "kind": e.kind, "precedence": e.precedence,
            "status": e.status, "subject": e.subject, "created_at_ms": e.created_at_ms,
            "accepted_at_ms": t.accepted_at_ms, "respond_by_ms": e.respond_by_ms,
            "total": t.recipients.len(),
            "delivered": t.recipients.iter().filter(|r| r.delivered_at_ms.is_some()).count(),
            "acknowledged": t.recipients.iter().filter(|r| r.acked_at_ms.is_some()).count(),
            "overdue": t.overdue(now).count(),
            "answered": t.recipients.iter().filter(|r| r.answered_at_ms.is_some()).count(),
            "recipients": t.recipients.iter().map(|r| json!({
                "recipient": r.recipient, "delivered_at_ms": r.delivered_at_ms,
                "acked_at_ms": r.acked_at_ms, "officer": r.officer,
                "answered_at_ms": r.answered_at_ms, "overdue": t.is_overdue(r, now),
            })).collect::<Vec<_>>(),
        })
    };
    let reading = || format!("reading {}", db.display());
    if let Some(id) = id {
        let not_found = || format!("no message {id} accepted in the last {hours} h (--hours)");
        let m = hotline_relay::report::track_one(&conn, &id)
            .with_context(reading)?
            .filter(|t| t.accepted_at_ms >= since)
            .with_context(not_found)?;
        let v = view(&m);
        if json_out {
            outln!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        outln!(
            "{}message {} from {}  {}  accepted {}  respond by {}\nsubject: {}\n{}",
            banner(&v),
            id,
            v["from"].as_str().unwrap_or(""),
            v["precedence"].as_str().unwrap_or(""),
            ts(&v["accepted_at_ms"]),
            ts(&v["respond_by_ms"]),
            shown(&v["subject"], false),
            recipients_text(&v, |r| r["overdue"] == true)
        );
        return Ok(());
    }
    // With --overdue, the limit counts overdue messages: taken from the whole period, so
    // that one behind `limit` newer messages is not left out. One more than the limit is
    // read, to tell whether the limit cut the report.
    let read = limit.saturating_add(1);
    let mut tracked = if overdue_only {
        hotline_relay::report::track_overdue(&conn, since, read, now)
    } else {
        hotline_relay::report::track(&conn, since, read)
    }
    .with_context(reading)?;
    let cut = tracked.len() > limit;
    tracked.truncate(limit);
    let all: Vec<Value> = tracked.iter().map(view).collect();
    let of = if overdue_only {
        "messages with an overdue recipient"
    } else {
        "messages"
    };
    let more = format!(
        "the newest {limit} of the {of} accepted in the last {hours} h: there are more \
         (--limit N shows up to N)"
    );
    if json_out {
        if cut {
            errln!("note: {more}");
        }
        outln!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    let headline = if cut {
        more
    } else {
        let which = if overdue_only {
            " with an overdue recipient, of those"
        } else {
            ""
        };
        format!(
            "{} message(s){which} accepted in the last {hours} h",
            all.len()
        )
    };
    let mut out = format!(
        "{headline} (newest first; times UTC, receipts' signing times)\n{:<32}  {:<6}  {:<9}  {:<TS_WIDTH$}  {:>7}  {:>7}  {:>7}  {:>7}  SUBJECT",
        "MESSAGE", "FROM", "PREC", "ACCEPTED", "DLVD", "ACKD", "ANSD", "OVERDUE"
    );
    for v in &all {
        out.push_str(&format!(
            "\n{:<32}  {:<6}  {:<9}  {:<TS_WIDTH$}  {:>7}  {:>7}  {:>7}  {:>7}  {}{}",
            v["id"].as_str().unwrap_or(""),
            v["from"].as_str().unwrap_or(""),
            v["precedence"].as_str().unwrap_or(""),
            ts(&v["accepted_at_ms"]),
            format!("{}/{}", v["delivered"], v["total"]),
            format!("{}/{}", v["acknowledged"], v["total"]),
            // Answers are counted for a consultation request, or once there is one.
            if v["kind"] == "consultation_request" || v["answered"].as_u64() > Some(0) {
                format!("{}/{}", v["answered"], v["total"])
            } else {
                String::new()
            },
            v["overdue"].as_u64().unwrap_or(0),
            banner(v),
            shorten(&shown(&v["subject"], false), 60),
        ));
    }
    outln!("{out}");
    Ok(())
}

/// Waits for SIGTERM or SIGINT, or with `--stop-when-stdin-closes` for standard input to
/// close (shutdown; `None`), or for the relay to stop on its own (its reason); reloads the
/// roster on SIGHUP.
async fn wait_for_signals(
    handle: &hotline_relay::RelayHandle,
    signals: &mut super::Signals,
    tether: &mut super::StdinTether,
) -> anyhow::Result<Option<String>> {
    loop {
        tokio::select! {
            _ = signals.term.recv() => { tracing::info!("SIGTERM: shutting down"); return Ok(None) }
            _ = signals.int.recv() => { tracing::info!("SIGINT: shutting down"); return Ok(None) }
            _ = tether.closed() => { tracing::info!("standard input closed (the drill harness that started this relay is gone): shutting down"); return Ok(None) }
            reason = handle.failed() => return Ok(Some(reason)),
            _ = signals.hup.recv() => match handle.reload_roster().await {
                Ok(v) => tracing::info!(version = v, "SIGHUP: roster reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: roster not reloaded; the previous one stays in force"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A malformed `--id` is reported as such, not as a message the store lacks: before
    /// the configuration or the store is read, so this store-less relay will do.
    #[test]
    fn a_malformed_report_id_is_a_parse_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("relay.toml");
        std::fs::write(
            &config,
            "cert = \"relay.crt\"\nkey = \"relay.key\"\nroster = \"roster.signed\"\n\
             roster_key = \"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\"\n\
             data_dir = \"data\"\n",
        )
        .expect("write");
        let e = report(&config, 24, 10, Some("not-an-id"), false, false).expect_err("refused");
        let shown = format!("{e:#}");
        assert!(
            shown.starts_with("--id: ") && shown.contains("\"not-an-id\" must be 32 hexadecimal"),
            "{shown}"
        );
        assert!(!shown.contains("no message"), "{shown}");
        // A well-formed id goes on to the store, which this relay does not have.
        let id = "00".repeat(16);
        let e = report(&config, 24, 10, Some(&id), false, false).expect_err("no store");
        assert!(format!("{e:#}").contains("no relay store"), "{e:#}");
    }
}
