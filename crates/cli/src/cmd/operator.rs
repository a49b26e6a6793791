//! Operator commands on a running node's local API: send, reply, inbox, show, ack, discard,
//! status, sent, node-status, watch. Each takes `--json` for scripts.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::{json, Value};

use hotline_config::text_file;
use hotline_node::client::ApiClient;
use hotline_node::limits::{
    API_BODY_BYTES_MAX, API_LIST_MAX, API_PAGE_BYTES_MAX, API_SEND_ATTEMPTS,
};

/// Where the node's API is: from its configuration file, or given directly.
#[derive(Debug, Args, Clone)]
pub(crate) struct ApiArgs {
    /// The node's configuration file, to find its API address and token
    /// (default: $HOTLINE_NODE_CONFIG, ./node.toml, /etc/hotline/node.toml).
    #[arg(long = "node-config", env = "HOTLINE_NODE_CONFIG", global = true)]
    node_config: Option<PathBuf>,
    /// The API address, HOST:PORT, e.g. 127.0.0.1:7500 (overrides the configuration file).
    #[arg(long, env = "HOTLINE_API", global = true, value_parser = parse_api_addr)]
    api: Option<String>,
    /// File holding the API bearer token (overrides the configuration file).
    #[arg(long, env = "HOTLINE_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

impl ApiArgs {
    fn client(&self) -> anyhow::Result<ApiClient> {
        let (addr, token_file) = match (&self.api, &self.token_file) {
            (Some(a), Some(t)) => (a.clone(), t.clone()),
            _ => {
                let path = match &self.node_config {
                    Some(p) => p.clone(),
                    None => default_node_config()?,
                };
                readable(&path)?;
                let c = hotline_node::NodeConfig::load(&path)?;
                (
                    self.api.clone().unwrap_or_else(|| c.api_listen.to_string()),
                    self.token_file.clone().unwrap_or(c.token_file),
                )
            }
        };
        readable(&token_file)?;
        let token = text_file::read_token(&token_file).context("reading the API token")?;
        Ok(ApiClient::new(&addr, &token))
    }
}

/// An `--api` address: `HOST:PORT`, as the node's `[api] listen` (or `http://HOST:PORT`,
/// which the client takes too). Checked here, so that an empty or cut address (`--api ""`,
/// `HOTLINE_API=` exported empty, `--api 127.0.0.1`) is a malformed argument (status 2)
/// naming the option, rather than "no node answering at http://" after a connection
/// attempt, which sends the operator looking at a node that is running.
fn parse_api_addr(s: &str) -> Result<String, String> {
    hotline_node::client::check_api_addr(s)?;
    Ok(s.to_owned())
}

/// `./node.toml`, else `/etc/hotline/node.toml`. One this user may not look at is named as
/// such, not skipped: the package makes `/etc/hotline` readable by group `hotline` only, so
/// for a duty officer outside the group it is there but out of reach, not missing.
fn default_node_config() -> anyhow::Result<PathBuf> {
    for p in ["node.toml", "/etc/hotline/node.toml"].map(PathBuf::from) {
        match p.try_exists() {
            Ok(true) => return Ok(p),
            Ok(false) => {}
            Err(e) => return Err(unreadable(&p, &e)),
        }
    }
    bail!("no node configuration found: give --node-config FILE (or --api and --token-file)")
}

/// An error naming what to do if this user may not read `path` (the node's configuration or
/// its API token).
fn readable(path: &std::path::Path) -> anyhow::Result<()> {
    // Not `File::open`: a named pipe nothing writes to would wait for ever.
    match hotline_config::open_for_read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(unreadable(path, &e)),
        _ => Ok(()),
    }
}

fn unreadable(path: &std::path::Path, e: &std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: {e}: the node's configuration and API token are readable by group hotline: \
         add this user to it (`sudo adduser NAME hotline`, then log in again; OPERATIONS.md \
         2.9), or use sudo",
        path.display()
    )
}

/// `hotline send`.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Recipients: participant ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    to: Vec<String>,
    /// A roster group, e.g. disaster-management.
    #[arg(long)]
    group: Option<String>,
    /// Every member state.
    #[arg(long)]
    all_members: bool,
    /// Everyone on the roster.
    #[arg(long)]
    everyone: bool,
    /// alert, update, cancel, consultation_request, reply, communications_check, notice.
    #[arg(long, default_value = "alert")]
    kind: String,
    /// FLASH, IMMEDIATE, PRIORITY or ROUTINE.
    #[arg(long, default_value = "ROUTINE")]
    precedence: String,
    /// actual, exercise or test.
    #[arg(long, default_value = "actual")]
    status: String,
    /// Category, e.g. a CBM area.
    #[arg(long)]
    category: Option<String>,
    /// Require acknowledgement within this many seconds.
    #[arg(long)]
    respond_within: Option<u64>,
    /// Message ids this one answers, updates or cancels (comma-separated).
    #[arg(long, value_delimiter = ',')]
    references: Vec<String>,
    /// Subject line.
    #[arg(long)]
    subject: String,
    /// Body text; `-` reads standard input.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// Read the body from a file.
    #[arg(long)]
    body_file: Option<PathBuf>,
}

fn print(json_out: bool, v: &Value, text: impl FnOnce(&Value) -> String) -> anyhow::Result<()> {
    if json_out {
        outln!("{}", serde_json::to_string_pretty(v)?);
    } else {
        outln!("{}", text(v));
    }
    Ok(())
}

pub(crate) fn send(a: SendArgs) -> anyhow::Result<()> {
    let body = read_body(a.body.as_deref(), a.body_file.as_deref())?;
    let req = json!({
        "to": a.to, "group": a.group, "all_members": a.all_members, "everyone": a.everyone,
        "kind": a.kind, "precedence": a.precedence.to_uppercase(), "status": a.status,
        "category": a.category, "respond_within_ms": a.respond_within.map(|s| s.saturating_mul(1000)),
        "references": a.references, "subject": a.subject, "body": body,
    });
    let v = post_send(&a.api.client()?, "/v1/messages", &req)?;
    print(a.api.json, &v, submitted_text)
}

/// Posts a send (`hotline send`, `hotline reply`) with a fresh idempotency key, asked again
/// with that key while the outcome is unknown (no answer, a connection refused or dropped,
/// a 5xx), up to `API_SEND_ATTEMPTS` in all, saying so on standard error: the node stores
/// one message however often it is asked (docs/API.md, Idempotency-Key). When every attempt
/// left the outcome unknown and one of them may have reached the node (not a connection
/// refused), the error says that a new command would be a new message.
fn post_send(client: &ApiClient, path: &str, req: &Value) -> anyhow::Result<Value> {
    use hotline_node::client::{unknown_outcome, ClientError};
    let mut reached = false;
    let answer = client.post_idempotent(path, req, |e, pause| {
        reached |= !matches!(e, ClientError::NotRunning(_));
        errln!(
            "{e}\nasking again in {}s with the same idempotency key, which cannot make a second message",
            pause.as_secs()
        );
    });
    match answer {
        Err(e) if unknown_outcome(&e) && (reached || !matches!(e, ClientError::NotRunning(_))) => {
            Err(anyhow::Error::new(e).context(format!(
                "asked {API_SEND_ATTEMPTS} times with one idempotency key, and no answer said \
                 whether the message was stored (it is stored once at most): look (`hotline \
                 sent`) before sending again, as a new `hotline send` or `hotline reply` is a \
                 new message"
            )))
        }
        answer => Ok(answer?),
    }
}

/// The body of a message to send: `--body TEXT`, `--body -` (standard input) or
/// `--body-file FILE`, or empty.
fn read_body(body: Option<&str>, file: Option<&std::path::Path>) -> anyhow::Result<String> {
    // Read no more than the node's API takes in one request, so that an endless input is
    // refused rather than held in memory. The body's own limit is the node's to enforce
    // (it answers 413 `too_large`), so that there is one rule and one message for it.
    Ok(match (body, file) {
        (Some("-"), _) => {
            let mut s = String::new();
            std::io::stdin()
                .take(API_BODY_BYTES_MAX as u64 + 1)
                .read_to_string(&mut s)
                .context("reading the body from standard input")?;
            if s.len() > API_BODY_BYTES_MAX {
                bail!("the body on standard input is larger than {API_BODY_BYTES_MAX} bytes, more than the node accepts in a request");
            }
            s
        }
        (Some(b), _) => b.to_owned(),
        (None, Some(f)) => text_file::read(f, API_BODY_BYTES_MAX).context("reading the body")?,
        (None, None) => String::new(),
    })
}

/// The node's answer to a message submitted, as text. A repeat the node answered with the
/// message an earlier attempt stored (`repeated`) says so, not "queued".
fn submitted_text(v: &Value) -> String {
    let n = v["recipients"].as_array().map(|r| r.len()).unwrap_or(0);
    let note = v["note"].as_str().unwrap_or("");
    let id = v["id"].as_str().unwrap_or("?");
    if v["repeated"] == true {
        return format!("{id}\nstored once for {n} recipient(s); {note}");
    }
    format!("{id}\nqueued for {n} recipient(s); {note}")
}

/// `hotline reply`.
#[derive(Debug, Args)]
pub(crate) struct ReplyArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The received message to answer.
    id: String,
    /// FLASH, IMMEDIATE, PRIORITY or ROUTINE (default: the message's own).
    #[arg(long)]
    precedence: Option<String>,
    /// Subject line (default: "Re: " and the message's subject).
    #[arg(long)]
    subject: Option<String>,
    /// Require acknowledgement within this many seconds.
    #[arg(long)]
    respond_within: Option<u64>,
    /// Body text; `-` reads standard input.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// Read the body from a file.
    #[arg(long)]
    body_file: Option<PathBuf>,
}

/// The API path of message `id` followed by `rest` (`""`, `"/ack"`, `"/reply"`), once `id`
/// is a message id (called first, before the node's configuration is read: a malformed
/// argument, status 2, whatever the configuration): what an operator typed is checked
/// before it becomes part of a URL, where `../status` or `a/b` would name another endpoint
/// (and `hotline show ../status` printed the node's status as an empty message) or only
/// earn an unexplained 404. The refusal is the node's own words for a bad id (`bad_id`).
fn message_path(id: &str, rest: &str) -> anyhow::Result<String> {
    let id: hotline_proto::MessageId = id.parse().map_err(|e| super::BadArgument::of("ID", e))?;
    Ok(format!("/v1/messages/{id}{rest}"))
}

/// `hotline reply ID`: answers a received message (`POST /v1/messages/{id}/reply`): to its
/// sender alone, kind `reply`, referencing it, with its category and status, and unless
/// given its precedence and "Re: " subject.
pub(crate) fn reply(a: ReplyArgs) -> anyhow::Result<()> {
    // The command line first: before the body (standard input, perhaps) is read.
    let path = message_path(&a.id, "/reply")?;
    let body = read_body(a.body.as_deref(), a.body_file.as_deref())?;
    let req = json!({
        "body": body, "subject": a.subject,
        "precedence": a.precedence.map(|p| p.to_uppercase()),
        "respond_within_ms": a.respond_within.map(|s| s.saturating_mul(1000)),
    });
    let v = post_send(&a.api.client()?, &path, &req)?;
    print(a.api.json, &v, submitted_text)
}

/// Another participant's text (`v`, a JSON string) made safe to print on a terminal: control
/// characters, which could move the cursor, recolour or overwrite what is already on the
/// screen, and the bidirectional-override characters, which reorder what follows them, are
/// shown escaped (`\u{1b}`). With `lines`, line breaks and tabs are kept (a body).
pub(crate) fn shown(v: &Value, lines: bool) -> String {
    shown_str(v.as_str().unwrap_or(""), lines)
}

/// [`shown`] for text that is not JSON: a roster's names, which its signer wrote.
pub(crate) fn shown_str(s: &str, lines: bool) -> String {
    let unsafe_char = |c: char| {
        !(lines && (c == '\n' || c == '\t'))
            && (c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'))
    };
    if !s.chars().any(unsafe_char) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if unsafe_char(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A time the API gives (milliseconds since the Unix epoch) as a duty officer reads it: its
/// UTC date and time to the second, RFC 3339 (`2025-01-01T03:00:00Z`), as the node's own
/// messages and `--since` write one; `-` for none. It used to be the time of day alone
/// (`03:00:00.000Z`), which left a respond-by time tomorrow, or a message from last week,
/// reading as today's. The milliseconds went with that: an officer acts on seconds, the
/// lists' order is their own, and `--json` keeps every time to the millisecond.
pub(crate) fn ts(v: &Value) -> String {
    match v.as_u64() {
        None => "-".into(),
        Some(ms) => hotline_config::utc::format_utc(ms),
    }
}

/// How wide a column of [`ts`] times is: `2025-01-01T03:00:00Z`.
pub(crate) const TS_WIDTH: usize = 20;

pub(crate) fn banner(v: &Value) -> &'static str {
    match v["status"].as_str() {
        Some("exercise") => "[EXERCISE] ",
        Some("test") => "[TEST] ",
        _ => "",
    }
}

/// `hotline inbox`.
#[derive(Debug, Args)]
pub(crate) struct InboxArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Only unacknowledged messages.
    #[arg(long, conflicts_with = "quarantined")]
    unacknowledged: bool,
    /// Only the answers to message ID, one this node sent: every received message that
    /// references it (replies, updates, cancellations), where `hotline status ID` lists the
    /// first 64. With `--unacknowledged`, those not yet acknowledged.
    #[arg(long, value_name = "ID", conflicts_with = "quarantined")]
    answers_to: Option<String>,
    /// Instead of messages, the deliveries held in quarantine (they failed verification or
    /// were not addressed to this node, and are never shown as messages), with why.
    #[arg(long)]
    quarantined: bool,
    /// The messages older than message ID, newest first: the next page of a list the node
    /// cut at its limit, ID being the last one it showed (the line under it says so). With
    /// `--quarantined`, the deliveries held before the one whose digest (all 64 digits) is
    /// ID.
    #[arg(long, value_name = "ID")]
    before: Option<String>,
}

pub(crate) fn inbox(a: InboxArgs) -> anyhow::Result<()> {
    if a.quarantined {
        return quarantine(&a.api, a.before.as_deref());
    }
    let before = cursor(a.before.as_deref())?;
    // Checked before it becomes part of a URL, as `--before` is.
    let answers_to: Option<hotline_proto::MessageId> = a
        .answers_to
        .as_deref()
        .map(|id| {
            id.parse()
                .map_err(|e| super::BadArgument::of("--answers-to", e))
        })
        .transpose()?;
    let filter = InboxFilter {
        unacknowledged: a.unacknowledged,
        answers_to,
    };
    // The node picks the unacknowledged ones from its whole inbox: filtered here from the
    // newest 1,000 it lists, one behind 1,000 newer acknowledged messages was never shown.
    // Filtered here too, for a node from before the parameter, which ignores it.
    let mut query = Vec::new();
    if a.unacknowledged {
        query.push("unacknowledged=true".to_owned());
    }
    query.extend(answers_to.map(|id| format!("references={id}")));
    query.extend(before.map(|id| format!("before={id}")));
    let path = match query.is_empty() {
        true => "/v1/inbox".to_owned(),
        false => format!("/v1/inbox?{}", query.join("&")),
    };
    let (v, next) = match (a.api.client()?.get_page(&path), answers_to) {
        (Err(e), Some(id)) => return Err(answers_refused(e, id, before.is_some())),
        (answer, _) => answer?,
    };
    let listed = v.as_array().cloned().unwrap_or_default();
    ignored_cursor(&listed, before)?;
    if let Some(id) = answers_to {
        ignored_answers_to(&listed, id)?;
    }
    let items: Vec<Value> = listed
        .iter()
        .filter(|m| !a.unacknowledged || m["acknowledged"] == json!(false))
        .cloned()
        .collect();
    print(a.api.json, &Value::Array(items.clone()), |_| {
        inbox_text(&items, &listed, filter, before, next.is_some())
    })
}

/// Which received messages `hotline inbox` lists: all of them, or those not yet
/// acknowledged, of the whole inbox or of the answers to one message this node sent.
#[derive(Debug, Clone, Copy, Default)]
struct InboxFilter {
    /// `--unacknowledged`.
    unacknowledged: bool,
    /// `--answers-to ID`.
    answers_to: Option<hotline_proto::MessageId>,
}

impl InboxFilter {
    /// The command that lists them: `hotline inbox`, with the options that chose them.
    fn command(self) -> String {
        let mut command = "hotline inbox".to_owned();
        if let Some(id) = self.answers_to {
            command.push_str(&format!(" --answers-to {id}"));
        }
        if self.unacknowledged {
            command.push_str(" --unacknowledged");
        }
        command
    }
}

/// The node's refusal of `hotline inbox --answers-to ID`, said as what it means for the
/// officer. A `404` about `?references=` (without `--before`, the only one there can be):
/// message ID is not one this node sent, whose answers it could list (a received message's
/// or an unknown id's are not kept apart), which the node's words alone (`references: no
/// sent message …`) left to be worked out. A parameter the node does not know: it is
/// older than this command. Anything else as the node said it.
fn answers_refused(
    e: hotline_node::client::ClientError,
    id: hotline_proto::MessageId,
    before: bool,
) -> anyhow::Error {
    use hotline_node::client::ClientError;
    let said = match &e {
        ClientError::Api {
            status: 404,
            code,
            message,
        } if code == "not_found" && (!before || message.starts_with("references")) => format!(
            "{id} is not a message this node sent, so it has no answers here to list \
             (`hotline sent` lists the messages sent from here)"
        ),
        ClientError::Api { code, message, .. }
            if code == "unknown_parameter" && message.contains("references") =>
        {
            format!(
                "the node does not know --answers-to (it is older than this command): upgrade \
                 it (OPERATIONS.md 8.2), or see the first 64 answers with `hotline status {id}`"
            )
        }
        _ => return e.into(),
    };
    anyhow::Error::new(e).context(said)
}

/// An error if the node listed a message that does not reference `id`: a node from before
/// `?references=` that ignores it lists its whole inbox, which would read as the answers.
fn ignored_answers_to(listed: &[Value], id: hotline_proto::MessageId) -> anyhow::Result<()> {
    let id = id.to_string();
    let answers = |m: &Value| {
        m["references"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r == id.as_str()))
    };
    if listed.iter().all(answers) {
        return Ok(());
    }
    bail!(
        "the node ignored --answers-to (it is older than this command, which lists the \
         answers to a message only with a node of the same release): upgrade it \
         (OPERATIONS.md 8.2), or see the first 64 answers with `hotline status {id}`"
    )
}

/// A list's `--before`: a message id, checked before it becomes part of a URL.
fn cursor(before: Option<&str>) -> anyhow::Result<Option<hotline_proto::MessageId>> {
    before
        .map(|b| b.parse().map_err(|e| super::BadArgument::of("--before", e)))
        .transpose()
}

/// An error if the node listed message `before` itself: a node from before `?before=`,
/// which ignores it and lists the newest page again (the one that ended with it), which
/// would read as the older ones.
fn ignored_cursor(
    listed: &[Value],
    before: Option<hotline_proto::MessageId>,
) -> anyhow::Result<()> {
    match before {
        Some(id) if listed.iter().any(|m| m["id"] == id.to_string().as_str()) => bail!(
            "the node ignored --before (it is older than this command, which lists older \
             messages only with a node of the same release): upgrade it (OPERATIONS.md 8.2)"
        ),
        _ => Ok(()),
    }
}

/// What to type for the page after `listed`: `command --before ID`, ID the last listed.
fn next_page(command: &str, listed: &[Value]) -> String {
    let last = listed.last().and_then(|m| m["id"].as_str()).unwrap_or("ID");
    format!("`{command} --before {last}` lists the next older ones")
}

/// The received messages `items` as `hotline inbox` lists them, of the `listed` the node
/// gave (more than `items` only from a node that ignores `?unacknowledged`), chosen by
/// `filter`, older than message `before` if given; `more` if the node said the list goes
/// on.
fn inbox_text(
    items: &[Value],
    listed: &[Value],
    filter: InboxFilter,
    before: Option<hotline_proto::MessageId>,
    more: bool,
) -> String {
    let mut out = format!(
        "{:<32}  {:<6}  {:<9}  {:<TS_WIDTH$}  {:<4}  SUBJECT",
        "ID", "FROM", "PREC", "RECEIVED", "ACK"
    );
    for m in items {
        out.push_str(&format!(
            "\n{:<32}  {:<6}  {:<9}  {:<TS_WIDTH$}  {:<4}  {}{}",
            m["id"].as_str().unwrap_or(""),
            m["from"].as_str().unwrap_or(""),
            m["precedence"].as_str().unwrap_or(""),
            ts(&m["received_at_ms"]),
            if m["acknowledged"] == json!(true) {
                "yes"
            } else {
                "NO"
            },
            banner(m),
            shown(&m["subject"], false),
        ));
    }
    let un = if filter.unacknowledged {
        "unacknowledged "
    } else {
        ""
    };
    if items.is_empty() {
        let older = before.map_or(String::new(), |id| format!(" older than {id}"));
        match filter.answers_to {
            Some(of) => out.push_str(&format!("\n(no {un}answers to {of}{older})")),
            None if before.is_some() => out.push_str(&format!("\n(no messages{older})")),
            None => out.push_str("\n(no messages)"),
        }
    }
    let (what, and) = match (filter.unacknowledged, filter.answers_to) {
        (true, Some(_)) => ("unacknowledged answers", String::new()),
        (true, None) => ("unacknowledged messages", String::new()),
        (false, Some(_)) => (
            "answers",
            format!(
                "; `{}` lists the unacknowledged ones from all of them",
                InboxFilter {
                    unacknowledged: true,
                    ..filter
                }
                .command()
            ),
        ),
        (false, None) => (
            "messages",
            "; `hotline inbox --unacknowledged` lists the unacknowledged ones from the whole \
             inbox"
                .to_owned(),
        ),
    };
    out.push_str(&cut_note(
        more,
        listed.len(),
        what,
        &format!("{}{and}", next_page(&filter.command(), listed)),
    ));
    out
}

/// The line under a list the node cut (newest first), or nothing: `cut` when the node's
/// answer names a next page (docs/API.md, Conventions). It cuts a page at `API_LIST_MAX`
/// items or at `API_PAGE_BYTES_MAX` bytes of them, whichever comes first, so a page may be
/// shorter than `API_LIST_MAX` with more to come: counted in items, the note was missing
/// under such a page, which read as all there was. A node of the release before the
/// pages' `Link` names no next page however many remain: a full page of `listed` items
/// (`API_LIST_MAX`) has the note all the same, or with such a node (one still running after
/// the CLI was upgraded) it read as all there was; from a later node whose list ends there,
/// the note costs one command that says so. `more` says how to see the rest (the exact
/// command for the next page).
fn cut_note(cut: bool, listed: usize, what: &str, more: &str) -> String {
    if !cut && listed < API_LIST_MAX {
        return String::new();
    }
    let mib = API_PAGE_BYTES_MAX / (1024 * 1024);
    format!(
        "\n(the node lists at most {API_LIST_MAX} {what}, and {mib} MiB of them, at once: {more})"
    )
}

/// `hotline inbox --quarantined [--before DIGEST]`.
fn quarantine(api: &ApiArgs, before: Option<&str>) -> anyhow::Result<()> {
    // Checked before it becomes part of a URL.
    if let Some(b) = before {
        if b.len() != 64 || !b.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(super::BadArgument::of(
                "--before",
                format_args!("{b:?}: with --quarantined, a digest of 64 hex digits, as the line under `hotline inbox --quarantined` gives it"),
            ));
        }
    }
    let path = match before {
        Some(b) => format!("/v1/quarantine?before={b}"),
        None => "/v1/quarantine".to_owned(),
    };
    let (v, next) = api.client()?.get_page(&path)?;
    // A node from before `?before=` on this list ignored it and listed the newest page
    // again, the one that ended with it, which would read as the older ones.
    if let Some(b) = before {
        let listed = v.as_array().map(Vec::as_slice).unwrap_or_default();
        if listed.iter().any(|q| {
            q["digest"]
                .as_str()
                .is_some_and(|d| d.eq_ignore_ascii_case(b))
        }) {
            bail!(
                "the node ignored --before (it is older than this command, which lists older \
                 quarantined deliveries only with a node of the same release): upgrade it \
                 (OPERATIONS.md 8.2)"
            );
        }
    }
    print(api.json, &v, |v| quarantine_text(v, before, next.is_some()))
}

/// The deliveries held in quarantine (`v`, as `GET /v1/quarantine` gives them, held before
/// the one under digest `before` if given) as `hotline inbox --quarantined` lists them;
/// `more` if the node said the list goes on.
fn quarantine_text(v: &Value, before: Option<&str>, more: bool) -> String {
    let items = v.as_array().cloned().unwrap_or_default();
    let mut out = format!(
        "{:<TS_WIDTH$}  {:<16}  {:<6}  {:<32}  REASON (the sender and subject are the bytes' claim, UNVERIFIED)",
        "RECEIVED", "DIGEST", "FROM?", "SUBJECT?"
    );
    for q in &items {
        let claim = &q["unverified_claim"];
        out.push_str(&format!(
            "\n{:<TS_WIDTH$}  {:<16}  {:<6}  {:<32}  {}",
            ts(&q["received_at_ms"]),
            q["digest"].as_str().unwrap_or("").get(..16).unwrap_or(""),
            claim["from"].as_str().unwrap_or("?"),
            super::roster::shorten(&shown(&claim["subject"], false), 32),
            shown(&q["reason"], false),
        ));
    }
    match (items.is_empty(), before) {
        (true, Some(d)) => out.push_str(&format!("\n(nothing quarantined before {d})")),
        (true, None) => out.push_str("\n(nothing quarantined)"),
        _ => {}
    }
    let last = items
        .last()
        .and_then(|q| q["digest"].as_str())
        .unwrap_or("DIGEST");
    out.push_str(&cut_note(
        more,
        items.len(),
        "held deliveries",
        &format!("`hotline inbox --quarantined --before {last}` lists the next older ones"),
    ));
    out
}

/// `hotline show ID` / `hotline status ID`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Message id.
    id: String,
}

pub(crate) fn show(a: ShowArgs) -> anyhow::Result<()> {
    // The command line first: before the node's configuration is read.
    let path = message_path(&a.id, "")?;
    let v = a.api.client()?.get(&path)?;
    print(a.api.json, &v, show_text)
}

/// A message as `hotline show` prints it: its header, body, and for a sent one its
/// delivery matrix, for a received one who acknowledged it.
fn show_text(m: &Value) -> String {
    // What the message answers, updates or cancels, and its category, when it has them.
    let mut context = String::new();
    let references: Vec<&str> = m["references"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !references.is_empty() {
        context.push_str(&format!("\nreferences: {}", references.join(", ")));
    }
    if m["category"].is_string() {
        context.push_str(&format!("\ncategory: {}", shown(&m["category"], false)));
    }
    let mut out = format!(
        "{}{} message {}\nfrom: {}  kind: {}  precedence: {}  status: {}\ncreated: {}  respond by: {}{context}\nsubject: {}\n\n{}",
        banner(m),
        m["direction"].as_str().unwrap_or(""),
        m["id"].as_str().unwrap_or(""),
        m["from"].as_str().unwrap_or(""),
        m["kind"].as_str().unwrap_or(""),
        m["precedence"].as_str().unwrap_or(""),
        m["status"].as_str().unwrap_or(""),
        ts(&m["created_at_ms"]),
        ts(&m["respond_by_ms"]),
        shown(&m["subject"], false),
        shown(&m["body"], true),
    );
    if m["direction"] == json!("sent") {
        out.push_str(&format!("\n\n{}", matrix_text(m)));
    } else if m["acknowledged"] == json!(true) {
        out.push_str(&format!(
            "\n\nacknowledged by {} at {}",
            shown(&m["officer"], false),
            ts(&m["acknowledged_at_ms"])
        ));
        if m["note"].as_str().is_some_and(|n| !n.is_empty()) {
            out.push_str(&format!("\nnote: {}", shown(&m["note"], false)));
        }
    } else {
        out.push_str("\n\nNOT ACKNOWLEDGED");
    }
    if m["answered_at_ms"].is_u64() {
        out.push_str(&format!(
            "\nanswered from here at {}",
            ts(&m["answered_at_ms"])
        ));
    }
    out
}

fn matrix_text(m: &Value) -> String {
    let mut out = format!(
        "state: {}  {}",
        m["state"].as_str().unwrap_or(""),
        recipients_text(m, |r| r["overdue_at_ms"].is_u64()
            && !r["acked_at_ms"].is_u64())
    );
    // Why it was refused, under the counts: the node's log is not the duty officer's.
    if m["state"] == "rejected" && m["rejected"].is_object() {
        let why = format!(
            "\nrefused by the relay: {}: {} (OPERATIONS.md 9)",
            m["rejected"]["code"].as_str().unwrap_or("?"),
            shown(&m["rejected"]["detail"], false)
        );
        let at = out.find('\n').unwrap_or(out.len());
        out.insert_str(at, &why);
    }
    // A recipient that acknowledged before the deadline by its own signed word, whose
    // acknowledgement reached this node only after it (a relay or link down meanwhile): the
    // table shows when it arrived, and the node marked the row overdue at the deadline.
    if let Some(by) = m["respond_by_ms"].as_u64() {
        for r in m["recipients"].as_array().into_iter().flatten() {
            let (Some(signed), Some(arrived)) =
                (r["acked_signed_at_ms"].as_u64(), r["acked_at_ms"].as_u64())
            else {
                continue;
            };
            if signed <= by && arrived > by {
                out.push_str(&format!(
                    "\n{} acknowledged at {} by its own clock, before the deadline; its \
                     acknowledgement reached this node at {}, after it",
                    r["recipient"].as_str().unwrap_or(""),
                    ts(&r["acked_signed_at_ms"]),
                    ts(&r["acked_at_ms"]),
                ));
            }
        }
    }
    // The notes the recipients' officers gave with their acknowledgements ("Seen, answer
    // follows"), which the table has no room for: what they wrote to this officer.
    let notes: Vec<&Value> = m["recipients"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["note"].as_str().is_some_and(|n| !n.is_empty()))
        .collect();
    if !notes.is_empty() {
        out.push_str(&format!("\n\nnotes\n{:<8}  NOTE", "FROM"));
        for r in notes {
            out.push_str(&format!(
                "\n{:<8}  {}",
                r["recipient"].as_str().unwrap_or(""),
                shown(&r["note"], false)
            ));
        }
    }
    // Received messages that reference this one: the replies, updates and cancellations.
    // The node lists the first of them and counts them all (`answers_total`; a node of an
    // earlier release lists them all, without the count).
    let answers = m["answers"].as_array().cloned().unwrap_or_default();
    let total = m["answers_total"].as_u64().unwrap_or(answers.len() as u64);
    if !answers.is_empty() {
        out.push_str(&format!(
            "\n\nanswers {}\n{:<8}  {:<TS_WIDTH$}  {:<20}  {:<32}  SUBJECT",
            total, "FROM", "RECEIVED", "KIND", "ID"
        ));
        for a in &answers {
            out.push_str(&format!(
                "\n{:<8}  {:<TS_WIDTH$}  {:<20}  {:<32}  {}",
                a["from"].as_str().unwrap_or(""),
                ts(&a["received_at_ms"]),
                a["kind"].as_str().unwrap_or(""),
                a["id"].as_str().unwrap_or(""),
                super::roster::shorten(&shown(&a["subject"], false), 48),
            ));
        }
        let more = total.saturating_sub(answers.len() as u64);
        if more > 0 {
            out.push_str(&format!(
                "\n… and {more} more: the first {} are listed; `hotline inbox --answers-to {}` \
                 lists them all",
                answers.len(),
                m["id"].as_str().unwrap_or("ID"),
            ));
        }
    }
    out
}

/// A message's counts and its table of recipients (`recipients`: `recipient`,
/// `delivered_at_ms`, `acked_at_ms`, `answered_at_ms`, `officer`), as the sender's node
/// (`hotline status`) and the relay (`hotline relay report --id`) both show them; `overdue`
/// tells a row's state. Answers are counted for a consultation request, or once there is one.
pub(crate) fn recipients_text(m: &Value, overdue: impl Fn(&Value) -> bool) -> String {
    let answered = if m["kind"] == "consultation_request" || m["answered"].as_u64() > Some(0) {
        format!("  answered {}/{}", m["answered"], m["total"])
    } else {
        String::new()
    };
    let mut out =
        format!(
        "delivered {}/{}  acknowledged {}/{}{answered}  overdue {}\n{:<8}  {:<TS_WIDTH$}  {:<TS_WIDTH$}  {:<TS_WIDTH$}  {:<8}  OFFICER",
        m["delivered"], m["total"], m["acknowledged"], m["total"], m["overdue"],
        "TO", "DELIVERED", "ACKNOWLEDGED", "ANSWERED", "OVERDUE"
    );
    for r in m["recipients"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n{:<8}  {:<TS_WIDTH$}  {:<TS_WIDTH$}  {:<TS_WIDTH$}  {:<8}  {}",
            r["recipient"].as_str().unwrap_or(""),
            ts(&r["delivered_at_ms"]),
            ts(&r["acked_at_ms"]),
            ts(&r["answered_at_ms"]),
            if overdue(r) { "OVERDUE" } else { "" },
            shown(&r["officer"], false),
        ));
    }
    out
}

pub(crate) fn status(a: ShowArgs) -> anyhow::Result<()> {
    let path = message_path(&a.id, "")?;
    let v = a.api.client()?.get(&path)?;
    if v["direction"] != json!("sent") {
        bail!("{} is a received message: `hotline show` displays it", a.id);
    }
    print(a.api.json, &v, matrix_text)
}

/// `hotline ack ID --officer NAME [--note TEXT]`.
#[derive(Debug, Args)]
pub(crate) struct AckArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Message id.
    id: String,
    /// Who acknowledges (name or duty position).
    #[arg(long)]
    officer: String,
    /// Optional remark.
    #[arg(long)]
    note: Option<String>,
}

pub(crate) fn ack(a: AckArgs) -> anyhow::Result<()> {
    let path = message_path(&a.id, "/ack")?;
    let v = a
        .api
        .client()?
        .post(&path, &json!({"officer": a.officer, "note": a.note}))?;
    print(a.api.json, &v, |v| {
        format!(
            "acknowledged {} (receipt {})",
            a.id,
            v["receipt"].as_str().unwrap_or("")
        )
    })
}

/// `hotline discard`.
#[derive(Debug, Args)]
pub(crate) struct DiscardArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The quarantined delivery's digest, or the start of it as `hotline inbox
    /// --quarantined` shows it (looked for among all held, page after page).
    #[arg(required_unless_present = "all")]
    digest: Option<String>,
    /// Every delivery the quarantine holds now (each journaled).
    #[arg(long, conflicts_with = "digest")]
    all: bool,
    /// Who decided to discard it (name or duty position); journaled.
    #[arg(long)]
    officer: String,
}

/// `hotline discard DIGEST|--all --officer NAME`: removes deliveries from the quarantine.
pub(crate) fn discard(a: DiscardArgs) -> anyhow::Result<()> {
    // The command line first, before the node's configuration is read: what is not the start
    // of a digest (not hex digits, or more than a digest's 64) is a malformed argument, not
    // a digest to look for through the whole quarantine.
    let prefix = a.digest.as_deref().map(digest_prefix).transpose()?;
    let client = a.api.client()?;
    let Some(prefix) = prefix else {
        let v = client.post("/v1/quarantine/discard-all", &json!({"officer": a.officer}))?;
        return print(a.api.json, &v, |v| {
            format!("discarded {} quarantined deliveries", v["discarded"])
        });
    };
    let digest = if prefix.len() == 64 {
        prefix
    } else {
        held_digest(&prefix, QUARANTINE_PAGE, |path| Ok(client.get_page(path)?))?
    };
    let v = client.post(
        &format!("/v1/quarantine/{digest}/discard"),
        &json!({"officer": a.officer}),
    )?;
    print(a.api.json, &v, |_| {
        format!("discarded quarantined delivery {digest}")
    })
}

/// `hotline discard DIGEST`: a digest, or the start of one (1 to 64 hex digits), in lower
/// case; refused as a malformed argument otherwise.
fn digest_prefix(given: &str) -> anyhow::Result<String> {
    let prefix = given.to_ascii_lowercase();
    if prefix.is_empty() || prefix.len() > 64 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(super::BadArgument::of(
            "DIGEST",
            format_args!(
                "{given:?} is not a digest: 1 to 64 hex digits, as `hotline inbox --quarantined` shows"
            ),
        ));
    }
    Ok(prefix)
}

/// How many held deliveries [`held_digest`] asks the node for at a time: the most a page of
/// `GET /v1/quarantine` holds (API.md, Conventions).
const QUARANTINE_PAGE: usize = 1000;

/// The most pages of the quarantine [`held_digest`] reads before it gives up: more than a
/// full quarantine holds (`quarantine_max_bytes`, 64 MiB by default, of deliveries of a few
/// hundred bytes at least), so that a node answering pages without end cannot keep it
/// looking for ever.
const QUARANTINE_PAGES_MAX: usize = 10_000;

/// The digest of the one delivery held in quarantine whose digest starts with `prefix`
/// (lower-case hex digits), looked for among all of them: `get` (`GET` of a path on the
/// node's API, with the path of the next page its answer names) pages `GET
/// /v1/quarantine`, `page` deliveries at a time at most, following each page's next (the
/// same with `?before=` the last digest of the page before) until a page names none: a page
/// may be shorter than `page` while more remain (it stops at its bytes). A full page that
/// names none is followed all the same (`?before=` its last digest): a node of a release
/// before the pages' `Link` names none however many remain; from a later node that costs
/// one empty page. A prefix that no digest has, or more than one has, is refused once all
/// have been seen.
fn held_digest(
    prefix: &str,
    page: usize,
    get: impl Fn(&str) -> anyhow::Result<(Value, Option<String>)>,
) -> anyhow::Result<String> {
    let mut matching: Vec<String> = Vec::new();
    let mut before: Option<String> = None;
    let mut seen = 0usize;
    let mut path = format!("/v1/quarantine?limit={page}");
    for _ in 0..QUARANTINE_PAGES_MAX {
        let (listed, next) = get(&path).with_context(|| {
            format!("listing the quarantine after the {seen} held deliveries looked at")
        })?;
        let digests: Vec<&str> = listed
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|q| q["digest"].as_str())
            .collect();
        // A node from before `?before=` on this list ignores it and lists the newest page
        // again, the one that ended with it: without this, the same page for ever.
        if let Some(b) = &before {
            if digests.iter().any(|d| d.eq_ignore_ascii_case(b)) {
                bail!(
                    "the node ignored ?before= (it is older than this command, which looks \
                     beyond the newest {page} quarantined deliveries only with a node of the \
                     same release): upgrade it (OPERATIONS.md 8.2), or give all 64 digits"
                );
            }
        }
        seen += digests.len();
        for d in &digests {
            if d.starts_with(prefix) && !matching.iter().any(|m| m == d) {
                matching.push((*d).to_owned());
            }
        }
        if matching.len() > 1 {
            bail!(
                "more than one quarantined delivery's digest starts with {prefix} ({} and {}): give more digits",
                matching[0],
                matching[1]
            );
        }
        match (digests.last(), next) {
            (Some(last), Some(next)) => {
                before = Some((*last).to_owned());
                path = next;
            }
            // A node of a release before the pages' `Link` names no next page however many
            // remain: after a full page, the next one is asked for as it was before.
            (Some(last), None) if digests.len() >= page => {
                before = Some((*last).to_owned());
                path = format!("/v1/quarantine?limit={page}&before={last}");
            }
            _ => {
                return match matching.pop() {
                    Some(one) => Ok(one),
                    None => bail!("no quarantined delivery's digest starts with {prefix} (all {seen} held were looked at)"),
                }
            }
        }
    }
    bail!("the quarantine still had more after {QUARANTINE_PAGES_MAX} pages of {page}: give all 64 digits")
}

/// `hotline node-status` / `hotline sent` / `hotline watch`.
#[derive(Debug, Args)]
pub(crate) struct PlainArgs {
    #[command(flatten)]
    api: ApiArgs,
}

pub(crate) fn node_status(a: PlainArgs) -> anyhow::Result<()> {
    let v = a.api.client()?.get("/v1/status")?;
    print(a.api.json, &v, |v| {
        let relays = v["relays"].as_array().cloned().unwrap_or_default();
        let mut out = format!(
            "participant {}  roster v{}  relays connected {}/{}  outbox {}  quarantined {}",
            v["participant"].as_str().unwrap_or(""),
            v["roster_version"],
            v["relays_connected"],
            relays.len(),
            v["outbox"],
            v["quarantined"]
        );
        if v["quarantine_full"].as_bool() == Some(true) {
            out.push_str(" FULL: deliveries failing their checks stay with the relay (hotline inbox --quarantined, hotline discard)");
        } else if v["quarantined"].as_u64().is_some_and(|n| n > 0) {
            out.push_str(" (hotline inbox --quarantined)");
        }
        for (i, r) in relays.iter().enumerate() {
            out.push_str(&format!(
                "\nrelay {i} {}  {}{}",
                r["address"].as_str().unwrap_or(""),
                link_text(r),
                acks_pending_text(r)
            ));
        }
        out
    })
}

/// The acknowledgements signed here that a relay has not yet confirmed storing, from its
/// `/v1/status` entry: `  (2 acknowledgements not yet stored there)`, or nothing.
fn acks_pending_text(r: &Value) -> String {
    match r["acks_pending"].as_u64().unwrap_or(0) {
        0 => String::new(),
        1 => "  (1 acknowledgement not yet stored there)".into(),
        n => format!("  ({n} acknowledgements not yet stored there)"),
    }
}

/// How one relay's link fares, from its `/v1/status` entry: `up since 2025-01-01T19:00:01Z
/// rtt 41.2 ms  lost 12 of 1234 packets (1.0 %)`, or `down since 2025-01-01T19:00:01Z (3
/// failed attempts): why`, with `lasting refusal CODE` among the parentheses when nothing will leave through
/// the relay until someone changes something (a roster, a configuration, a release), or
/// `down (connecting)` before the first attempt has ended.
fn link_text(r: &Value) -> String {
    if r["connected"] != true {
        if r["down_since_ms"].is_null() {
            return "down (connecting)".into();
        }
        let mut notes = match r["failed_attempts"].as_u64().unwrap_or(0) {
            0 => vec![],
            1 => vec!["1 failed attempt".to_owned()],
            n => vec![format!("{n} failed attempts")],
        };
        if let Some(code) = r["refused"]["code"].as_str() {
            notes.push(format!("lasting refusal {code}"));
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join(", "))
        };
        return format!(
            "down since {}{notes}: {}",
            ts(&r["down_since_ms"]),
            r["last_error"].as_str().unwrap_or("reason unknown")
        );
    }
    let (sent, lost) = (
        r["packets_sent"].as_u64().unwrap_or(0),
        r["packets_lost"].as_u64().unwrap_or(0),
    );
    let share = if sent == 0 {
        0.0
    } else {
        100.0 * lost as f64 / sent as f64
    };
    format!(
        "up since {}  rtt {} ms  lost {lost} of {sent} packets ({share:.1} %)",
        ts(&r["connected_since_ms"]),
        r["rtt_ms"]
    )
}

/// `hotline sent`.
#[derive(Debug, Args)]
pub(crate) struct SentArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The messages sent before message ID, newest first: the next page of a list the node
    /// cut at its limit, ID being the last one it showed (the line under it says so).
    #[arg(long, value_name = "ID")]
    before: Option<String>,
}

pub(crate) fn sent(a: SentArgs) -> anyhow::Result<()> {
    let before = cursor(a.before.as_deref())?;
    let path = match before {
        Some(id) => format!("/v1/messages?before={id}"),
        None => "/v1/messages".to_owned(),
    };
    let (v, next) = a.api.client()?.get_page(&path)?;
    ignored_cursor(v.as_array().map_or(&[], Vec::as_slice), before)?;
    print(a.api.json, &v, |v| sent_text(v, before, next.is_some()))
}

/// The sent messages (`v`, as `GET /v1/messages` gives them, sent before message `before`
/// if given) as `hotline sent` lists them; `more` if the node said the list goes on.
fn sent_text(v: &Value, before: Option<hotline_proto::MessageId>, more: bool) -> String {
    let mut out = format!(
        "{:<32}  {:<12}  {:>5}  {:>5}  SUBJECT",
        "ID", "STATE", "DLVD", "ACKD"
    );
    for m in v.as_array().cloned().unwrap_or_default() {
        out.push_str(&format!(
            "\n{:<32}  {:<12}  {:>5}  {:>5}  {}{}",
            m["id"].as_str().unwrap_or(""),
            m["state"].as_str().unwrap_or(""),
            format!("{}/{}", m["delivered"], m["total"]),
            format!("{}/{}", m["acknowledged"], m["total"]),
            banner(&m),
            shown(&m["subject"], false)
        ));
    }
    let listed = v.as_array().map_or(&[][..], Vec::as_slice);
    if let (true, Some(id)) = (listed.is_empty(), before) {
        out.push_str(&format!("\n(no messages sent before {id})"));
    }
    out.push_str(&cut_note(
        more,
        listed.len(),
        "sent messages",
        &format!(
            "{}; `hotline status ID` shows any one by its id",
            next_page("hotline sent", listed)
        ),
    ));
    out
}

/// `hotline watch`: the node's events as they happen, until the node ends the stream or
/// the command is stopped. A stream the node ends (it stopped or restarted) is an error, on
/// standard error with exit status 1: it used to end the command silently with status 0, so
/// that an officer at a terminal could miss that alerts were no longer being shown.
pub(crate) fn watch(a: PlainArgs) -> anyhow::Result<()> {
    let client = a.api.client()?;
    let events = client.events()?;
    // Subscribed: every event from now on is in the stream.
    errln!("following the node's events (Ctrl-C to stop)");
    for ev in events {
        let ev = ev.context("the node's event stream broke off: no further events are shown")?;
        if a.api.json {
            outln!("{ev}");
        } else {
            outln!("{}", watch_line(&ev));
        }
    }
    bail!(
        "the node ended the event stream (it stopped or restarted): no further events are \
         shown; run `hotline watch` again once it is back"
    )
}

/// An event as `hotline watch` prints it for a person: its type and its JSON, after
/// `[EXERCISE] ` or `[TEST] ` for a drill's or a check's message, as every other command
/// marks one, and made safe for a terminal as [`shown`] makes another participant's text:
/// JSON escapes the C0 controls but not the C1 ones (`\u{9b}` starts an escape sequence on
/// some terminals) nor the bidirectional overrides, and a subject is another participant's.
fn watch_line(ev: &Value) -> String {
    format!(
        "{}{} {}",
        banner(ev),
        ev["type"].as_str().unwrap_or("event"),
        shown(&Value::String(ev.to_string()), false)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `--api` takes what the node listens on, as the client takes it; anything else is
    /// refused by the parser (a usage error), not tried as an address.
    #[test]
    fn api_addresses_are_host_and_port() {
        for good in [
            "127.0.0.1:7500",
            "[::1]:7500",
            "localhost:7500",
            "http://127.0.0.1:7500",
            "http://127.0.0.1:7500/",
        ] {
            assert_eq!(parse_api_addr(good).as_deref(), Ok(good), "{good}");
        }
        for bad in [
            "",
            "http://",
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:0",
            "127.0.0.1:75000",
            ":7500",
            " 127.0.0.1:7500",
            "127.0.0.1:7500/v1",
            "https://127.0.0.1:7500",
            "::1:7500",
        ] {
            let e = parse_api_addr(bad).expect_err(bad);
            assert!(
                e.contains("127.0.0.1:7500"),
                "{bad:?}: says what is expected: {e}"
            );
        }
    }

    /// A node's quarantine as `GET /v1/quarantine` pages it: `held` newest first, pages of
    /// `?limit=` (and at most `cut`, as a page stopped at its bytes) after the digest
    /// `?before=` names, each naming the next while more remain; 404 for a `before` not
    /// held.
    fn quarantine_pages(
        held: &[String],
        cut: usize,
        path: &str,
    ) -> anyhow::Result<(Value, Option<String>)> {
        let query = path
            .strip_prefix("/v1/quarantine?")
            .expect("the quarantine");
        let (mut limit, mut from) = (1000, 0);
        for kv in query.split('&') {
            match kv.split_once('=').expect("key=value") {
                ("limit", n) => limit = n.parse().expect("a number"),
                ("before", d) => {
                    from = 1 + held
                        .iter()
                        .position(|h| h == d)
                        .ok_or_else(|| anyhow::anyhow!("404 not_found"))?
                }
                (k, _) => panic!("unknown parameter {k}"),
            }
        }
        let from = from.min(held.len());
        let page: Vec<Value> = held[from..]
            .iter()
            .take(limit.min(cut))
            .map(|d| json!({"digest": d}))
            .collect();
        let next = match (from + page.len() < held.len(), page.last()) {
            (true, Some(last)) => Some(format!(
                "/v1/quarantine?limit={limit}&before={}",
                last["digest"].as_str().expect("a digest")
            )),
            _ => None,
        };
        Ok((Value::Array(page), next))
    }

    /// `hotline discard PREFIX` finds the delivery among all those held, page after page,
    /// and refuses a prefix that is nobody's or more than one's only once it has looked at
    /// them all. It used to look among the newest page only (1,000 held): an older
    /// delivery could be discarded only by its 64 digits, and a prefix that was ambiguous
    /// beyond the first page was taken for the one delivery on it that matched.
    #[test]
    fn discard_finds_a_prefix_among_all_held_deliveries() {
        let held: Vec<String> = (0..7u8)
            .map(|n| format!("{n:02x}{}", "0".repeat(62)))
            .chain(["aa".to_owned() + &"1".repeat(62)])
            .chain(["aa".to_owned() + &"2".repeat(62)])
            .collect();
        let get = |path: &str| quarantine_pages(&held, usize::MAX, path);
        // On the first page, and on the last (a page that names no next ends the list).
        assert_eq!(held_digest("00", 3, get).expect("newest"), held[0]);
        assert_eq!(held_digest("06", 3, get).expect("oldest"), held[6]);
        // Ambiguous only with what the first page does not show.
        let e = held_digest("aa", 8, get).expect_err("two").to_string();
        assert!(
            e.contains(&format!("starts with aa ({} and {})", held[7], held[8]))
                && e.ends_with("give more digits"),
            "{e}"
        );
        assert_eq!(held_digest("aa1", 2, get).expect("one"), held[7]);
        let e = held_digest("ff", 3, get).expect_err("none").to_string();
        assert!(
            e.contains("no quarantined delivery's digest starts with ff"),
            "{e}"
        );
        assert!(!e.contains("newest"), "all were looked at: {e}");
        // A list whose length is a multiple of the page ends where the node says.
        assert_eq!(held_digest("aa2", 3, get).expect("last"), held[8]);
        // Pages the node cut short of `?limit=` (at their bytes) are followed while they
        // name a next: the look ended at the first page shorter than the limit, and
        // refused every prefix beyond it as nobody's.
        let short = |path: &str| quarantine_pages(&held, 2, path);
        assert_eq!(held_digest("06", 3, short).expect("oldest"), held[6]);
        let e = held_digest("aa", 3, short).expect_err("two").to_string();
        assert!(e.ends_with("give more digits"), "{e}");
        // A node that ignores `?before=` gives the first page again: refused, not a loop.
        let old_node = |path: &str| {
            let first = path.split('&').next().expect("path").to_owned();
            quarantine_pages(&held, usize::MAX, &first)
        };
        let e = held_digest("06", 3, old_node)
            .expect_err("an old node")
            .to_string();
        assert!(e.contains("ignored"), "{e}");
        // Nodes of the releases before the pages' `Link` name no next page, however many
        // remain: a full page of `?limit=` from one is read on with `?before=` its last
        // digest, as it was before. The look ended at their first page and called each
        // prefix beyond it nobody's ("all 3 held were looked at"), and one that also
        // ignores `?before=` was never told apart.
        let no_link =
            |path: &str| quarantine_pages(&held, usize::MAX, path).map(|(v, _)| (v, None));
        assert_eq!(held_digest("06", 3, no_link).expect("oldest"), held[6]);
        assert_eq!(held_digest("aa2", 3, no_link).expect("last"), held[8]);
        let e = held_digest("aa", 3, no_link).expect_err("two").to_string();
        assert!(e.ends_with("give more digits"), "{e}");
        let e = held_digest("ff", 3, no_link).expect_err("none").to_string();
        assert!(e.contains("all 9 held were looked at"), "{e}");
        let older_node = |path: &str| {
            let first = path.split('&').next().expect("path").to_owned();
            quarantine_pages(&held, usize::MAX, &first).map(|(v, _)| (v, None))
        };
        let e = held_digest("06", 3, older_node)
            .expect_err("an older node")
            .to_string();
        assert!(e.contains("ignored"), "{e}");
    }

    #[test]
    fn another_participants_text_cannot_drive_the_terminal() {
        // Cursor up and erase the line, then a right-to-left override.
        let subject = json!("Border\u{1b}[1A\u{1b}[2K from SEC\u{202e}lamron");
        assert_eq!(
            shown(&subject, false),
            "Border\\u{1b}[1A\\u{1b}[2K from SEC\\u{202e}lamron"
        );
        assert_eq!(shown(&json!("two\nlines\r"), false), "two\\u{a}lines\\u{d}");
        assert_eq!(
            shown(&json!("two\nlines\tok\r"), true),
            "two\nlines\tok\\u{d}"
        );
        assert_eq!(
            shown(&json!("Incident at the border"), false),
            "Incident at the border"
        );
        assert_eq!(
            super::super::roster::shorten("Incident at the border", 9),
            "Incident…"
        );
    }

    #[test]
    fn a_watched_event_is_marked_as_a_drill_and_cannot_drive_the_terminal() {
        let ev = json!({"type": "message_received", "status": "exercise",
            "subject": "Border\u{202e}lamron \u{9b}31m\u{1b}[2K"});
        let line = watch_line(&ev);
        assert!(line.starts_with("[EXERCISE] message_received {"), "{line}");
        assert!(
            line.contains(r"Border\u{202e}lamron \u{9b}31m\u001b[2K"),
            "{line}"
        );
        assert!(!line
            .chars()
            .any(|c| c.is_control()
                || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')));
        let test = json!({"type": "message_received", "status": "test", "subject": "Check"});
        assert!(watch_line(&test).starts_with("[TEST] message_received {"));
        let actual = json!({"type": "message_received", "status": "actual", "subject": "x"});
        assert!(watch_line(&actual).starts_with("message_received {"));
        let up = json!({"type": "relay_up", "relay": 0, "address": "127.0.0.1:7400"});
        assert_eq!(
            watch_line(&up),
            r#"relay_up {"address":"127.0.0.1:7400","relay":0,"type":"relay_up"}"#
        );
    }

    #[test]
    fn an_acknowledgement_signed_in_time_and_received_late_is_told() {
        let row = |who: &str, signed: u64, arrived: u64| {
            json!({"recipient": who, "delivered_at_ms": arrived, "acked_at_ms": arrived,
                "acked_signed_at_ms": signed, "officer": "Desk", "note": null,
                "overdue_at_ms": 5_000})
        };
        let m = json!({"state": "acknowledged", "kind": "alert", "total": 3, "delivered": 3,
            "acknowledged": 3, "overdue": 0, "answered": 0, "answers": [],
            "respond_by_ms": 5_000,
            "recipients": [row("KGZ", 4_000, 9_000), row("TJK", 6_000, 9_000), row("UZB", 1_000, 2_000)]});
        let text = matrix_text(&m);
        assert!(
            text.contains("\nKGZ acknowledged at ")
                && text.contains("by its own clock, before the deadline"),
            "{text}"
        );
        assert!(
            !text.contains("\nTJK acknowledged at"),
            "signed late too: {text}"
        );
        assert!(
            !text.contains("\nUZB acknowledged at"),
            "arrived in time: {text}"
        );
    }

    /// The node lists a message's first answers and counts them all: the status says how
    /// many there are, not how many are listed, and where the rest are.
    #[test]
    fn the_answers_count_all_of_them_and_say_where_the_rest_are() {
        let answer = |id: &str, at: u64| json!({"id": id, "from": "KGZ", "kind": "update", "subject": "Level", "received_at_ms": at});
        let m = json!({"id": "112e2e08d10df574952d0f32e1419492", "state": "acknowledged",
            "kind": "alert", "total": 1, "delivered": 1, "acknowledged": 1, "overdue": 0,
            "answered": 1, "answers": [answer("aa", 1_000), answer("bb", 2_000)],
            "answers_total": 5,
            "recipients": [{"recipient": "KGZ", "delivered_at_ms": 500, "acked_at_ms": 600,
                "answered_at_ms": 1_000}]});
        let text = matrix_text(&m);
        assert!(text.contains("\n\nanswers 5\n"), "{text}");
        assert!(
            text.contains(
                "\n… and 3 more: the first 2 are listed; `hotline inbox --answers-to \
                 112e2e08d10df574952d0f32e1419492` lists them all"
            ),
            "{text}"
        );
        // A node of an earlier release counts none: those listed are all.
        let mut older = m.clone();
        older["answers_total"] = serde_json::Value::Null;
        let text = matrix_text(&older);
        assert!(
            text.contains("\n\nanswers 2\n") && !text.contains("… and"),
            "{text}"
        );
    }

    #[test]
    fn the_recipients_acknowledgement_notes_are_shown_under_the_table() {
        let m = json!({"state": "acknowledged", "kind": "alert", "total": 3, "delivered": 3,
            "acknowledged": 2, "overdue": 0, "answered": 0, "answers": [],
            "recipients": [
                {"recipient": "KGZ", "delivered_at_ms": 1000, "acked_at_ms": 2000,
                 "officer": "Duty officer", "note": "Seen, answer follows"},
                {"recipient": "TJK", "delivered_at_ms": 1000, "acked_at_ms": 2000,
                 "officer": "Desk", "note": ""},
                {"recipient": "UZB", "delivered_at_ms": 1000, "acked_at_ms": null,
                 "officer": null, "note": null}]});
        let text = matrix_text(&m);
        assert!(
            text.ends_with("\n\nnotes\nFROM      NOTE\nKGZ       Seen, answer follows"),
            "{text}"
        );
        let mut m = m;
        m["recipients"][0]["note"] = json!("line\nbreak\u{202e}");
        assert!(
            matrix_text(&m).ends_with("KGZ       line\\u{a}break\\u{202e}"),
            "{}",
            matrix_text(&m)
        );
        m["recipients"][0]["note"] = json!(null);
        assert!(!matrix_text(&m).contains("notes"), "{}", matrix_text(&m));
    }

    #[test]
    fn a_message_id_is_checked_before_it_becomes_a_path() {
        let id = "112e2e08d10df574952d0f32e1419492";
        assert_eq!(
            message_path(id, "/ack").expect("a message id"),
            format!("/v1/messages/{id}/ack")
        );
        assert_eq!(
            message_path(&id.to_uppercase(), "").expect("upper case is read too"),
            format!("/v1/messages/{id}")
        );
        for bad in [
            "../status",
            "a/b",
            "?limit=1",
            "",
            "112e2e08d10df574952d0f32e141949",
        ] {
            let e = message_path(bad, "").expect_err("not an id").to_string();
            assert!(e.contains("must be 32 hexadecimal digits"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_time_is_shown_with_its_date() {
        // 2023-11-14 22:13:20.123 UTC, and the same time of day on the next day: they used
        // to be shown alike, as `22:13:20.123Z`.
        let today = 1_700_000_000_123u64;
        assert_eq!(ts(&json!(today)), "2023-11-14T22:13:20Z");
        assert_eq!(ts(&json!(today + 86_400_000)), "2023-11-15T22:13:20Z");
        assert_eq!(ts(&json!(0)), "1970-01-01T00:00:00Z");
        assert_eq!(ts(&json!(null)), "-");
        assert_eq!(ts(&json!(today)).len(), TS_WIDTH);
        // A received message's deadline, as `hotline show` prints it.
        let m = json!({"direction": "received", "id": "112e2e08d10df574952d0f32e1419492",
            "from": "KAZ", "kind": "alert", "precedence": "FLASH", "status": "actual",
            "created_at_ms": today, "respond_by_ms": today + 86_400_000,
            "subject": "s", "body": "b", "acknowledged": false});
        assert!(
            show_text(&m)
                .contains("\ncreated: 2023-11-14T22:13:20Z  respond by: 2023-11-15T22:13:20Z\n"),
            "{}",
            show_text(&m)
        );
    }

    /// `hotline inbox --unacknowledged`.
    const UNACKNOWLEDGED: InboxFilter = InboxFilter {
        unacknowledged: true,
        answers_to: None,
    };

    /// `hotline inbox --answers-to ID` lists the answers as the inbox lists its messages: a
    /// page the node cut names the command for the next one, its filter kept (the command
    /// without it would page the whole inbox), and an empty list says whose answers it
    /// lacks.
    #[test]
    fn the_answers_to_a_message_page_as_the_inbox_does() {
        let of: hotline_proto::MessageId =
            "112e2e08d10df574952d0f32e1419492".parse().expect("an id");
        let answers: Vec<Value> = (0..15)
            .map(|i| {
                json!({"id": format!("{i:032x}"), "from": "KGZ", "precedence": "ROUTINE",
                "received_at_ms": 1_700_000_000_000u64 - i, "acknowledged": false,
                "status": "actual", "subject": "Level", "references": [of.to_string()]})
            })
            .collect();
        let last = format!("{:032x}", 14);
        let all = InboxFilter {
            unacknowledged: false,
            answers_to: Some(of),
        };
        let waiting = InboxFilter {
            unacknowledged: true,
            ..all
        };
        let text = inbox_text(&answers, &answers, all, None, true);
        assert_eq!(
            text.lines().count(),
            1 + 15 + 1,
            "header, rows, note: {text}"
        );
        assert_eq!(
            text.lines().last(),
            Some(
                format!(
                    "(the node lists at most 1000 answers, and 1 MiB of them, at once: \
                     `hotline inbox --answers-to {of} --before {last}` lists the next older \
                     ones; `hotline inbox --answers-to {of} --unacknowledged` lists the \
                     unacknowledged ones from all of them)"
                )
                .as_str()
            )
        );
        let text = inbox_text(&answers, &answers, waiting, None, true);
        assert!(
            text.ends_with(&format!(
                "(the node lists at most 1000 unacknowledged answers, and 1 MiB of them, at \
                 once: `hotline inbox --answers-to {of} --unacknowledged --before {last}` \
                 lists the next older ones)"
            )),
            "{text}"
        );
        assert!(!inbox_text(&answers, &answers, all, None, false).contains("at most"));
        let id: hotline_proto::MessageId = last.parse().expect("an id");
        assert!(
            inbox_text(&[], &[], all, None, false).ends_with(&format!("\n(no answers to {of})"))
        );
        assert!(
            inbox_text(&[], &[], waiting, Some(id), false).ends_with(&format!(
                "\n(no unacknowledged answers to {of} older than {last})"
            ))
        );
        // A node that ignores `?references=` lists its whole inbox: refused, not shown as
        // the answers.
        assert!(ignored_answers_to(&answers, of).is_ok());
        let mut mixed = answers.clone();
        mixed[3]["references"] = json!([]);
        let e = ignored_answers_to(&mixed, of).expect_err("another message listed");
        assert!(
            e.to_string().contains("the node ignored --answers-to"),
            "{e}"
        );
    }

    /// A list the node cut at its limit says so, and the exact command for the next page:
    /// the same list before its last message. There was no way to see older ones.
    #[test]
    fn a_list_the_node_cut_at_its_limit_names_the_command_for_the_next_page() {
        let received = |n: usize| -> Vec<Value> {
            (0..n)
                .map(|i| {
                    json!({"id": format!("{i:032x}"), "from": "KAZ", "precedence": "ROUTINE",
                    "received_at_ms": 1_700_000_000_000u64 - i as u64, "acknowledged": false,
                    "status": "actual", "subject": "Communications check"})
                })
                .collect()
        };
        let last = format!("{:032x}", API_LIST_MAX - 1);
        let all = received(API_LIST_MAX - 1);
        let text = inbox_text(&all, &all, InboxFilter::default(), None, false);
        assert!(!text.contains("at most"), "{text}");
        let cut = received(API_LIST_MAX);
        let text = inbox_text(&cut, &cut, InboxFilter::default(), None, true);
        let note = text.lines().last().unwrap_or_default().to_owned();
        assert_eq!(
            note,
            format!(
                "(the node lists at most 1000 messages, and 1 MiB of them, at once: `hotline \
                 inbox --before {last}` lists the next older ones; `hotline inbox \
                 --unacknowledged` lists the unacknowledged ones from the whole inbox)"
            )
        );
        assert_eq!(
            text.lines().count(),
            1 + API_LIST_MAX + 1,
            "header, rows, note"
        );
        // A page the node cut at its bytes, short of 1000, says so too: counted in items,
        // it read as all there was.
        let short = received(15);
        let text = inbox_text(&short, &short, InboxFilter::default(), None, true);
        assert!(
            text.contains(&format!("`hotline inbox --before {:032x}`", 14)),
            "{text}"
        );
        // A full page whose node names no next page still has the note: a node of the
        // release before the pages' `Link` (one still running after the CLI was upgraded)
        // names none while more remain, and its full page read as all there was. From a
        // later node whose list ends there, it costs one command that says so.
        let text = inbox_text(&cut, &cut, InboxFilter::default(), None, false);
        assert_eq!(text.lines().last(), Some(note.as_str()), "{text}");
        assert_eq!(
            text.lines().count(),
            1 + API_LIST_MAX + 1,
            "header, rows, note"
        );
        assert!(inbox_text(&cut[..3], &cut, UNACKNOWLEDGED, None, false)
            .contains(&format!("--before {last}`")));
        let text = inbox_text(&cut, &cut, UNACKNOWLEDGED, None, true);
        assert!(
            text.ends_with(&format!(
                "(the node lists at most 1000 unacknowledged messages, and 1 MiB of them, at \
                 once: `hotline inbox --unacknowledged --before {last}` lists the next older \
                 ones)"
            )),
            "{text}"
        );
        // Filtered here from a node that ignores `?unacknowledged`: cut all the same, and
        // the next page starts after the last the node listed.
        assert!(inbox_text(&cut[..3], &cut, UNACKNOWLEDGED, None, true)
            .contains(&format!("--before {last}`")));
        // A page past the last.
        let id: hotline_proto::MessageId = last.parse().expect("an id");
        assert!(
            inbox_text(&[], &[], InboxFilter::default(), Some(id), false)
                .ends_with(&format!("\n(no messages older than {last})"))
        );

        let sent = |n: usize| -> Value {
            (0..n)
                .map(|i| {
                    json!({"id": format!("{i:032x}"), "state": "acknowledged",
                    "delivered": 1, "acknowledged": 1, "total": 1, "status": "actual",
                    "subject": "Notification"})
                })
                .collect()
        };
        assert!(!sent_text(&sent(API_LIST_MAX - 1), None, false).contains("at most"));
        assert!(
            sent_text(&sent(API_LIST_MAX), None, true).ends_with(&format!(
                "\n(the node lists at most 1000 sent messages, and 1 MiB of them, at once: \
             `hotline sent --before {last}` lists the next older ones; `hotline status ID` \
             shows any one by its id)"
            ))
        );
        assert!(sent_text(&sent(7), None, true).contains("`hotline sent --before"));
        assert!(sent_text(&sent(API_LIST_MAX), None, false).contains("`hotline sent --before"));
        assert!(sent_text(&sent(0), Some(id), false)
            .ends_with(&format!("\n(no messages sent before {last})")));

        let held = |n: usize| -> Value {
            (0..n)
                .map(|i| {
                    json!({"digest": format!("{i:064x}"), "received_at_ms": 0,
                    "reason": "bad signature", "unverified_claim": null})
                })
                .collect()
        };
        assert!(!quarantine_text(&held(API_LIST_MAX - 1), None, false).contains("at most"));
        assert!(
            quarantine_text(&held(API_LIST_MAX), None, true).ends_with(&format!(
                "\n(the node lists at most 1000 held deliveries, and 1 MiB of them, at once: \
                 `hotline inbox --quarantined --before {:064x}` lists the next older ones)",
                API_LIST_MAX - 1
            )),
            "the next page's command, with the last digest listed"
        );
        assert!(quarantine_text(&held(API_LIST_MAX), None, false).contains("--before"));
        let d = "ab".repeat(32);
        assert!(quarantine_text(&held(0), Some(&d), false)
            .ends_with(&format!("\n(nothing quarantined before {d})")));
    }

    /// A node from before `?before=` lists the newest page again, the one that ended with
    /// the message given: refused, rather than shown as the older ones.
    #[test]
    fn a_node_that_ignores_before_is_told_apart() {
        let id: hotline_proto::MessageId =
            "112e2e08d10df574952d0f32e1419492".parse().expect("an id");
        let page = [
            json!({"id": "00000000000000000000000000000001"}),
            json!({"id": id.to_string()}),
        ];
        let e = ignored_cursor(&page, Some(id))
            .expect_err("ignored")
            .to_string();
        assert!(e.contains("the node ignored --before"), "{e}");
        assert!(ignored_cursor(&page[..1], Some(id)).is_ok());
        assert!(ignored_cursor(&page, None).is_ok());
        let e = cursor(Some("../status")).expect_err("not an id");
        assert!(
            format!("{e:#}").contains("must be 32 hexadecimal digits"),
            "{e:#}"
        );
    }

    #[test]
    fn a_link_is_told_down_or_with_its_round_trip_and_losses() {
        assert_eq!(
            link_text(&json!({"connected": false, "down_since_ms": null})),
            "down (connecting)"
        );
        let refused = json!({"connected": false, "down_since_ms": 3_723_004u64,
            "last_error": "connection refused", "failed_attempts": 3});
        assert_eq!(
            link_text(&refused),
            "down since 1970-01-01T01:02:03Z (3 failed attempts): connection refused"
        );
        let pinned = json!({"connected": false, "down_since_ms": 3_723_004u64,
            "last_error": "TLS: relay certificate ab… does not match the pinned fingerprint",
            "failed_attempts": 2, "refused": {"code": "PinMismatch", "reason": "…"}});
        assert_eq!(
            link_text(&pinned),
            "down since 1970-01-01T01:02:03Z (2 failed attempts, lasting refusal PinMismatch): TLS: \
             relay certificate ab… does not match the pinned fingerprint"
        );
        let revoked = json!({"connected": false, "down_since_ms": 3_723_004u64,
            "last_error": "link lost: closed by peer: Revoked: KAZ revoked by roster 2",
            "failed_attempts": 0, "refused": {"code": "Revoked", "reason": "…"}});
        assert_eq!(
            link_text(&revoked),
            "down since 1970-01-01T01:02:03Z (lasting refusal Revoked): link lost: closed by peer: \
             Revoked: KAZ revoked by roster 2"
        );
        let lost = json!({"connected": false, "down_since_ms": 3_723_004u64,
            "last_error": "link lost: timed out", "failed_attempts": 0, "refused": null});
        assert_eq!(
            link_text(&lost),
            "down since 1970-01-01T01:02:03Z: link lost: timed out"
        );
        let up = json!({"connected": true, "connected_since_ms": 3_723_004u64, "rtt_ms": 41.2,
            "packets_sent": 1234, "packets_lost": 12});
        assert_eq!(
            link_text(&up),
            "up since 1970-01-01T01:02:03Z  rtt 41.2 ms  lost 12 of 1234 packets (1.0 %)"
        );
        let fresh = json!({"connected": true, "connected_since_ms": 0, "rtt_ms": 0.3,
            "packets_sent": 0, "packets_lost": 0});
        assert!(link_text(&fresh).ends_with("lost 0 of 0 packets (0.0 %)"));
    }

    #[test]
    fn acknowledgements_a_relay_has_not_stored_are_counted() {
        assert_eq!(acks_pending_text(&json!({"acks_pending": 0})), "");
        assert_eq!(
            acks_pending_text(&json!({})),
            "",
            "an older node says nothing"
        );
        assert_eq!(
            acks_pending_text(&json!({"acks_pending": 1})),
            "  (1 acknowledgement not yet stored there)"
        );
        assert_eq!(
            acks_pending_text(&json!({"acks_pending": 3})),
            "  (3 acknowledgements not yet stored there)"
        );
    }
}
