//! The running relay's control socket, `admin.sock` in its data directory: what an operator
//! asks of a running relay that changes its queues. Today that is one thing, delivering
//! again what was accepted since a time (`hotline relay redeliver`, after a node was
//! restored from a backup), which before needed the relay stopped, and so every member's
//! link down, for one member's restore.
//!
//! A Unix socket, mode 0600, in the data directory (0700, the service's): only the service's
//! account and root can connect, so it needs no token, and nothing reaches it from the
//! network. One request a connection, one JSON line each way; the request is bounded in size
//! and time, and connections are served one at a time, so the writer's taking a request and
//! answering it are bounded together ([`ANSWER_TIMEOUT`]), and a shutdown ends the wait for
//! the writer to take it. The store writer does the work
//! ([`crate::store::Command::Rewind`]); this task holds only a weak handle on its channel,
//! so it never keeps the writer from stopping at shutdown.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use hotline_proto::ParticipantId;

use crate::store::{Command, Rewound};

/// The socket's file name in the data directory.
pub const SOCKET_FILE: &str = "admin.sock";
/// The most a request line may hold.
const REQUEST_BYTES_MAX: u64 = 4096;
/// The pause after a failed accept.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answer may take, from handing the request to the store writer: the writer
/// takes it once its queue has room, finishes its batch, then moves the queues back and
/// reloads them (about 0.3 s for 100,000 queued messages on the benchmark machine). A
/// writer whose queue stays full this long (a stalled disk) has the request refused,
/// unchanged, rather than hold the socket.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// What an operator asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Deliver again to `to` (every recipient if `None`) each message addressed to it that
    /// the relay accepted at or after `since_ms` ([`crate::store::redeliver_since`]).
    Redeliver {
        /// The participant.
        to: Option<String>,
        /// Milliseconds since the Unix epoch, by the relay's clock.
        since_ms: u64,
    },
}

/// What the relay answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// The queues moved back: what each recipient is now owed. The sessions of those whose
    /// queues grew were closed; their nodes connect again and are delivered again.
    Redelivered {
        /// By recipient.
        rewound: Vec<RewoundQueue>,
    },
    /// Refused, and why; nothing changed (but for a timeout, whose reason says so).
    Refused {
        /// Why.
        error: String,
    },
}

/// One recipient's queue after a redelivery ([`Rewound`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewoundQueue {
    /// The participant.
    pub recipient: String,
    /// Messages it is now owed.
    pub messages: u64,
    /// Its cursor before.
    pub cursor_was: i64,
    /// Its cursor now.
    pub cursor: i64,
    /// Receipts of the messages it sent queued again to be forwarded to it (absent from
    /// the answers of relays before it: 0).
    #[serde(default)]
    pub receipts: u64,
}

/// Binds the socket at `path`, replacing a file left there by a relay that did not stop
/// cleanly (the caller holds the data directory's claim, so no other relay uses it), mode
/// 0600.
pub(crate) fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves requests on `listener` until `shutdown`, then removes the socket file. `db` is
/// the relay's store, which a request reads (read-only) before it gives the writer work.
pub(crate) async fn serve(
    listener: tokio::net::UnixListener,
    path: PathBuf,
    db: PathBuf,
    writer: mpsc::WeakSender<Command>,
    mut shutdown: watch::Receiver<bool>,
) {
    // An accept that fails (out of file descriptors, a connection aborted) is passing:
    // logged at most once every 10 s, retried after a pause.
    let mut failing = hotline_net::Throttle::new(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = async { shutdown.wait_for(|v| *v).await.map(drop) } => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if let Err(e) = answer(stream, &db, &writer, &mut shutdown).await {
                        warn!(error = %e, "admin socket: a request was not answered");
                    }
                }
                Err(e) => {
                    if let Some(n) = failing.tick(1, std::time::Instant::now()) {
                        warn!(error = %e, failures = n, "admin socket: accept failed; retrying");
                    }
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Reads one request from `stream`, has it done, writes the answer.
async fn answer(
    stream: tokio::net::UnixStream,
    db: &Path,
    writer: &mpsc::WeakSender<Command>,
    shutdown: &mut watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut limited = tokio::io::BufReader::new(read.take(REQUEST_BYTES_MAX));
    let read = tokio::time::timeout(REQUEST_TIMEOUT, limited.read_until(b'\n', &mut line)).await;
    let answer = match read {
        Err(_) => Answer::Refused {
            error: format!("no request within {} s", REQUEST_TIMEOUT.as_secs()),
        },
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) if !line.ends_with(b"\n") => Answer::Refused {
            error: format!("a request is one line of at most {REQUEST_BYTES_MAX} bytes"),
        },
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Err(e) => Answer::Refused {
                error: format!("not a request: {e}"),
            },
            Ok(request) => handle(request, db, writer, shutdown, ANSWER_TIMEOUT).await,
        },
    };
    let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
    out.push(b'\n');
    tokio::time::timeout(REQUEST_TIMEOUT, write.write_all(&out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "answer not read"))?
}

/// Has `request` done: the writer must take it and answer within `within`
/// ([`ANSWER_TIMEOUT`]); a `shutdown` while it waits to be taken refuses it.
async fn handle(
    request: Request,
    db: &Path,
    writer: &mpsc::WeakSender<Command>,
    shutdown: &mut watch::Receiver<bool>,
    within: Duration,
) -> Answer {
    let refused = |error: String| Answer::Refused { error };
    let Request::Redeliver { to, since_ms } = request;
    let only = match to.as_deref().map(ParticipantId::new).transpose() {
        Ok(only) => only,
        Err(e) => return refused(format!("to: {e}")),
    };
    info!(to = ?to, since_ms, "admin socket: deliver again requested");
    // The search for the first message and receipt since then reads the history up to
    // there: on a read connection, so that the writer, which every submission waits for,
    // does not.
    let db = db.to_owned();
    let first = tokio::task::spawn_blocking(move || {
        let conn = hotline_store::open_read_only(&db)?;
        crate::store::first_since(&conn, since_ms)
    })
    .await;
    let first = match first {
        Ok(Ok(first)) => first,
        Ok(Err(e)) => return refused(format!("reading the store: {e}")),
        Err(e) => return refused(format!("reading the store: {e}")),
    };
    let (reply, answer) = oneshot::channel();
    let cmd = Command::Rewind {
        only,
        since_ms,
        first,
        reply,
    };
    // Upgraded only to send: the writer stops once every strong sender is gone.
    let Some(tx) = writer.upgrade() else {
        return refused("the relay is stopping".into());
    };
    // One limit for the writer to take the request and to answer it: its queue may stay
    // full (a stalled disk), and this task serves the socket one request at a time.
    let deadline = tokio::time::Instant::now() + within;
    let sent = tokio::select! {
        biased;
        // A send that has not completed has sent nothing (tokio's `Sender::send`).
        _ = async { shutdown.wait_for(|v| *v).await.map(drop) } => {
            return refused("the relay is stopping; nothing changed".into())
        }
        sent = tokio::time::timeout_at(deadline, tx.send(cmd)) => sent,
    };
    drop(tx);
    match sent {
        Err(_) => {
            warn!(
                within_s = within.as_secs(),
                "admin socket: the store writer took no request in time; deliver again refused"
            );
            return refused(format!(
                "the store writer took no request within {} s (it is busy, or its disk is \
                 stalled: see /health); nothing changed, ask again later",
                within.as_secs()
            ));
        }
        Ok(Err(_)) => return refused("the relay is stopping".into()),
        Ok(Ok(())) => {}
    }
    match tokio::time::timeout_at(deadline, answer).await {
        Err(_) => refused(format!(
            "the store writer did not answer within {} s; the queue may still be moved back \
             (the journal's queue.rewound entries say whether it was)",
            within.as_secs()
        )),
        Ok(Err(_)) => refused("the store writer stopped".into()),
        Ok(Ok(Err(e))) => refused(e),
        Ok(Ok(Ok(rewound))) => Answer::Redelivered {
            rewound: rewound
                .into_iter()
                .map(|(who, r): (ParticipantId, Rewound)| RewoundQueue {
                    recipient: who.to_string(),
                    messages: r.messages,
                    cursor_was: r.cursor_was,
                    cursor: r.cursor,
                    receipts: r.receipts,
                })
                .collect(),
        },
    }
}

/// Why [`ask`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// Nothing listens on the socket (the relay is not running, or runs without it).
    #[error("{path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The exchange failed, or the answer was not one.
    #[error("{path}: {detail}")]
    Exchange {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

/// Asks the relay whose data directory is `data_dir` (a blocking call, for the CLI).
pub fn ask(data_dir: &Path, request: &Request) -> Result<Answer, AskError> {
    let path = data_dir.join(SOCKET_FILE);
    let exchange = |detail: String| AskError::Exchange {
        path: path.clone(),
        detail,
    };
    let mut stream =
        std::os::unix::net::UnixStream::connect(&path).map_err(|source| AskError::Connect {
            path: path.clone(),
            source,
        })?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT + REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .map_err(|e| exchange(e.to_string()))?;
    let mut line = serde_json::to_vec(request).map_err(|e| exchange(e.to_string()))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| exchange(format!("sending the request: {e}")))?;
    let mut answer = Vec::new();
    std::io::BufReader::new(std::io::Read::take(&stream, 1 << 20))
        .read_until(b'\n', &mut answer)
        .map_err(|e| exchange(format!("reading the answer: {e}")))?;
    serde_json::from_slice(&answer).map_err(|e| exchange(format!("not an answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose queue is full (here: held, never read) cannot keep a redelivery
    /// request, and so the control socket, waiting: past the time limit it is refused,
    /// saying so; at a shutdown it is refused at once. Neither leaves the command queued.
    #[tokio::test]
    async fn a_request_the_writer_does_not_take_is_refused_in_time_or_at_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, _conn) = crate::store::open_db(dir.path()).expect("store");
        let (tx, mut rx) = mpsc::channel(1);
        let (filler, _) = oneshot::channel();
        tx.try_send(Command::KeepRoster {
            roster: roster(),
            reply: filler,
        })
        .map_err(drop)
        .expect("fills the queue");
        let request = || Request::Redeliver {
            to: None,
            since_ms: 0,
        };
        // Without a bound these would wait for as long as the queue stays full.
        let bounded = Duration::from_secs(10);

        let (_stop, mut running) = watch::channel(false);
        let a = tokio::time::timeout(
            bounded,
            handle(
                request(),
                &db,
                &tx.downgrade(),
                &mut running,
                Duration::ZERO,
            ),
        )
        .await
        .expect("refused in time, not left waiting");
        let Answer::Refused { error } = a else {
            panic!("{a:?}")
        };
        assert!(error.contains("took no request within 0 s"), "{error}");
        assert!(error.contains("nothing changed"), "{error}");

        let (_stop, mut stopping) = watch::channel(true);
        let a = tokio::time::timeout(
            bounded,
            handle(
                request(),
                &db,
                &tx.downgrade(),
                &mut stopping,
                ANSWER_TIMEOUT,
            ),
        )
        .await
        .expect("refused at shutdown, not left waiting");
        let Answer::Refused { error } = a else {
            panic!("{a:?}")
        };
        assert!(error.contains("the relay is stopping"), "{error}");

        // Only the command that filled the queue is in it.
        assert!(matches!(rx.try_recv(), Ok(Command::KeepRoster { .. })));
        assert!(rx.try_recv().is_err());
    }

    /// A roster of one participant, for a command to fill a queue with.
    fn roster() -> std::sync::Arc<hotline_proto::Verified<hotline_proto::Roster>> {
        use hotline_proto::roster::{Participant, Role};
        use hotline_proto::{PublicKey, Roster, Signed, SigningKey, PROTOCOL_VERSION};
        let key = SigningKey::from_bytes(&[9; 32]);
        let roster = Roster {
            protocol_version: PROTOCOL_VERSION,
            version: 1,
            issued_at_ms: 1_000,
            network: "TEST".into(),
            participants: vec![Participant {
                id: ParticipantId::new("SEC").expect("id"),
                name: "SEC".into(),
                role: Role::Secretariat,
                keys: vec![PublicKey::of(&key)],
                revoked: false,
            }],
            groups: vec![],
        };
        let signed = Signed::sign(&roster, &key).expect("sign");
        std::sync::Arc::new(
            hotline_proto::verify_roster(&signed, &PublicKey::of(&key)).expect("verify"),
        )
    }

    #[test]
    fn requests_and_answers_are_one_json_line_each() {
        let r = Request::Redeliver {
            to: Some("KGZ".into()),
            since_ms: 5,
        };
        let text = serde_json::to_string(&r).expect("encode");
        assert_eq!(text, r#"{"op":"redeliver","to":"KGZ","since_ms":5}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).expect("decode"), r);
        assert!(serde_json::from_str::<Request>(r#"{"op":"drop_all"}"#).is_err());
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"redeliver","since_ms":1,"x":1}"#).is_err()
        );
        let a = Answer::Refused { error: "no".into() };
        let text = serde_json::to_string(&a).expect("encode");
        assert_eq!(text, r#"{"answer":"refused","error":"no"}"#);
    }
}
