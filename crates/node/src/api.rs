//! The local HTTP + JSON API, on a loopback address, behind a bearer token.
//!
//! `docs/API.md` documents it. Errors are `{"error": text, "code": snake_case}` with a
//! fitting status: 400 bad request, 401 missing or wrong token, 404 unknown message, 408 a
//! body that did not come in time, 409 already acknowledged, 413 too large, 500 the store
//! failed, 507 disk full (nothing was written).

use std::convert::Infallible;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{info, warn};

use hotline_proto::routing;
use hotline_proto::{Audience, Kind, MessageId, ParticipantId, Precedence, Status};

use crate::limits::{
    API_BODY_BYTES_MAX, API_BODY_READ_TIMEOUT_MS, API_CONNECTIONS_MAX, API_HEADER_READ_TIMEOUT_MS,
    API_HEAD_BYTES_MAX, API_LIST_MAX, API_LOG_REASON_BYTES_MAX, API_PAGE_BYTES_MAX,
    API_WRITE_STALL_TIMEOUT_MS, IDEMPOTENCY_KEY_BYTES_MAX, IDEMPOTENCY_KEY_KEPT_MS,
    QUARANTINE_DISCARD_BATCH,
};
use crate::store::{AckOutcome, Composed, Draft, Idempotency, InboxMessage, Keyed, SentMessage};
use crate::{now_ms, NodeState, RefusalCode};

type St = Arc<NodeState>;

/// An API error: status, code and message.
pub struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // What [`log_refusals`] logs: without the values a reason quotes (serde's
        // `invalid type: string "…"` quotes the body), and cut short.
        let refusal = Refusal {
            code: self.1,
            reason: bounded(&without_quoted(&self.2), API_LOG_REASON_BYTES_MAX),
        };
        let mut answer = (self.0, Json(json!({"error": self.2, "code": self.1}))).into_response();
        answer.extensions_mut().insert(refusal);
        answer
    }
}

/// An [`ApiError`]'s code and reason, carried on its response to [`log_refusals`].
#[derive(Clone)]
struct Refusal {
    code: &'static str,
    reason: String,
}

/// `text` with what it quotes from a request replaced by `…`: a refusal's reason may quote
/// a value from the request's body, which the log must not repeat (the caller, who sent it,
/// is answered in full). serde quotes a string between double quotes, escaping those inside
/// (`invalid type: string "…"`), and between backticks, as it is, an enumeration value
/// (``unknown variant `…` ``), a field name (``unknown field `…` ``, after the path, which
/// ends with that name: what precedes it goes too) and other values (``invalid value:
/// integer `…` ``). A value between backticks may hold backticks, so the reason is cut there
/// (what follows is serde's list of what it expected); backticks that name a field of ours
/// (``missing field `subject` ``) are kept.
fn without_quoted(text: &str) -> String {
    const QUOTING: [&str; 4] = [
        "unknown variant ",
        "unknown field ",
        "invalid type: ",
        "invalid value: ",
    ];
    // `PATH: unknown field `NAME``: the path ends with the unknown name, which may hold
    // anything (": " too), so all that comes before goes.
    let text = match text.split_once(": unknown field `") {
        Some((_, after)) => format!("…: unknown field `{after}"),
        None => text.to_owned(),
    };
    let mut out = String::with_capacity(text.len());
    // Where the text since the last backtick outside double quotes starts in `out`.
    let mut since = 0;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push_str("\"…\"");
                // Skip to the closing quote; a backslash escapes the character after it.
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '`' if QUOTING.iter().any(|q| out[since..].contains(q)) => {
                out.push_str("`…");
                break;
            }
            '`' => {
                out.push('`');
                since = out.len();
            }
            c => out.push(c),
        }
    }
    out
}

/// Logs every refused request once, whatever refused it (the token check, a body or query
/// string that does not parse, a handler, or the router for a path or method it does not
/// know): bad input gets its answer and a log line. Error for a 5xx; info for an unknown
/// message (404) or one acknowledged before (409), what a mistyped id or two officers
/// acknowledging at once give and no reason to alert anyone; warn for the rest. With the
/// method, the path and the reason, each bounded, never the body or a value it holds.
async fn log_refusals(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    // A `Uri` clone shares its bytes: the path is copied only for a refusal's log line.
    let uri = req.uri().clone();
    let answer = next.run(req).await;
    let status = answer.status();
    if status.is_client_error() || status.is_server_error() {
        let path = bounded(uri.path(), API_LOG_REASON_BYTES_MAX);
        let (code, reason) = match answer.extensions().get::<Refusal>() {
            Some(r) => (r.code, r.reason.as_str()),
            None => ("", status.canonical_reason().unwrap_or("")),
        };
        let status = status.as_u16();
        match status {
            500.. => {
                tracing::error!(%method, path = %path, status, code, error = ?reason, "local API: request failed")
            }
            404 | 409 if !code.is_empty() => {
                info!(%method, path = %path, status, code, error = ?reason, "local API: request refused")
            }
            _ => {
                warn!(%method, path = %path, status, code, error = ?reason, "local API: request refused")
            }
        }
    }
    answer
}

fn bad(code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, code, msg.into())
}

fn store_error(e: hotline_store::StoreError) -> ApiError {
    match e {
        hotline_store::StoreError::DiskFull => ApiError(
            StatusCode::INSUFFICIENT_STORAGE,
            "disk_full",
            "disk full: nothing was written".into(),
        ),
        other => ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            other.to_string(),
        ),
    }
}

/// The token of an `Authorization: Bearer TOKEN` header's value. The scheme's name is
/// matched without regard to case, as HTTP defines it (RFC 9110 11.1): `bearer TOKEN`, which
/// some clients send, was refused as a missing token.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

fn authorise(state: &NodeState, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or("");
    // Compare in constant time so the token cannot be guessed byte by byte.
    let expected = state.token.as_bytes();
    let ok = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if ok {
        Ok(())
    } else {
        // Logged by `log_refusals`, as every refusal is.
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token".into(),
        ))
    }
}

/// Every route is behind the token: a request without it is refused before anything else
/// (its body included) is looked at.
async fn require_token(
    State(state): State<St>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authorise(&state, req.headers())?;
    Ok(next.run(req).await)
}

/// A JSON request body whose refusal (malformed, unknown field, bad value, too large) is an
/// [`ApiError`] in the API's own shape, naming what is wrong, rather than axum's plain text.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // Logged by `log_refusals`, never with the body. A body that does not come in time
        // would hold its connection's place for good (the head's timeout has run by then).
        let within = Duration::from_millis(API_BODY_READ_TIMEOUT_MS);
        match tokio::time::timeout(within, Json::<T>::from_request(req, state)).await {
            Ok(Ok(Json(v))) => Ok(Body(v)),
            Ok(Err(e)) => Err(json_rejection(e)),
            Err(_) => Err(ApiError(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("the request's body did not arrive within {within:?}"),
            )),
        }
    }
}

/// `text` cut to at most `max` bytes at a character boundary, ending `…` when cut.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let cut = (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}…", &text[..cut])
}

/// A query string (`?limit=N`) whose refusal (`limit=abc`, `limit=-1`) is an [`ApiError`]
/// in the API's own shape, `bad_request` naming what is wrong, as [`Body`] does for bodies,
/// rather than axum's plain text.
struct Params<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Params(v)),
            // A parameter the list does not know (a typo: `?limt=5`, `?befor=ID`), which
            // serde names (``unknown field `limt`, expected one of …``): ignored, it gave
            // another page than the one asked for, with no sign. Logged by `log_refusals`.
            Err(e) if e.body_text().contains("unknown field `") => {
                Err(bad("unknown_parameter", e.body_text()))
            }
            // Logged by `log_refusals`.
            Err(e) => Err(bad("bad_request", e.body_text())),
        }
    }
}

/// A path's `{id}` or `{digest}` whose refusal (escaped bytes that are not UTF-8, such as
/// `/v1/messages/%FF`) is an [`ApiError`] in the API's own shape, `bad_request`, as
/// [`Params`] does for query strings, rather than axum's plain text.
struct Segment(String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Segment(v)),
            // Logged by `log_refusals`.
            Err(e) => Err(bad("bad_request", e.body_text())),
        }
    }
}

fn json_rejection(e: JsonRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body over {API_BODY_BYTES_MAX} bytes"),
        );
    }
    // 400 for every other refusal (axum answers 415 / 422 for some): the body is wrong.
    bad("bad_request", e.body_text())
}

/// The API's listener, serving at most `API_CONNECTIONS_MAX` connections at once: past
/// that it accepts nothing until one closes, so the connections wait in the kernel's listen
/// queue, holding none of the node's file descriptors. Logged when the limit is reached, at
/// most once a minute (a client opening connection after connection would otherwise log
/// one line for each).
struct Capped {
    listener: tokio::net::TcpListener,
    permits: Arc<tokio::sync::Semaphore>,
    /// How many places `permits` has.
    max: usize,
    /// How long a connection's write may wait for its client ([`CappedIo`]).
    stall: Duration,
    /// The line saying the limit was reached: once a minute at most.
    logged: hotline_net::Throttle,
}

impl Capped {
    /// `listener`, serving at most `max` connections at once, each closed once its client
    /// has taken nothing of an answer for `stall`.
    fn new(listener: tokio::net::TcpListener, max: usize, stall: Duration) -> Self {
        Self {
            listener,
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            stall,
            logged: hotline_net::Throttle::new(Duration::from_secs(60)),
        }
    }

    /// The next connection, once one of the places is free. Cancel-safe: a place taken
    /// for a connection not yet accepted is given back.
    async fn accept(&mut self) -> (CappedIo, std::net::SocketAddr) {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if let Some(times) = self.logged.tick(1, std::time::Instant::now()) {
                    warn!(
                        connections = self.max,
                        times,
                        "local API: connection limit reached; further connections wait until \
                         one closes"
                    );
                }
                // The semaphore is never closed.
                match self.permits.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => std::future::pending().await,
                }
            }
        };
        let (io, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        (
            CappedIo {
                io,
                _permit: permit,
                stall: self.stall,
                stalled: None,
            },
            addr,
        )
    }
}

/// A connection of [`Capped`], which frees its place when dropped, and fails a write the
/// client has taken nothing of for `stall` (`API_WRITE_STALL_TIMEOUT_MS`), which closes it:
/// a client that never reads its answer would otherwise hold the place for good.
struct CappedIo {
    io: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
    stall: Duration,
    /// Since the socket last refused bytes, running until it takes some.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl CappedIo {
    /// What a write the socket answered with `written` gives: itself, once bytes were
    /// taken (or it failed); while none are, pending until `stall` has passed since the
    /// socket first refused them, then a `TimedOut` error.
    fn unless_stalled<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        written: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::future::Future;
        if written.is_ready() {
            self.stalled = None;
            return written;
        }
        let stall = self.stall;
        let clock = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match clock.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client took nothing of its answer for {stall:?}"),
            ))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl tokio::io::AsyncRead for CappedIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CappedIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.unless_stalled(cx, written)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let flushed = std::pin::Pin::new(&mut self.io).poll_flush(cx);
        self.unless_stalled(cx, flushed)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.unless_stalled(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The API's routes, behind the token check and the refusal log.
pub(crate) fn router(state: St) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/messages", post(send).get(sent_list))
        .route("/v1/messages/{id}", get(show))
        .route("/v1/messages/{id}/ack", post(ack))
        .route("/v1/messages/{id}/reply", post(reply))
        .route("/v1/inbox", get(inbox))
        .route("/v1/quarantine", get(quarantine))
        .route("/v1/quarantine/{digest}/discard", post(discard))
        .route("/v1/quarantine/discard-all", post(discard_all))
        .route("/v1/events", get(events))
        .layer(DefaultBodyLimit::max(API_BODY_BYTES_MAX))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(middleware::from_fn(log_refusals))
        .with_state(state)
}

/// Serves the API until shutdown.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: St,
    shutdown: watch::Receiver<bool>,
) {
    let app = router(state);
    let listener = Capped::new(
        listener,
        API_CONNECTIONS_MAX,
        Duration::from_millis(API_WRITE_STALL_TIMEOUT_MS),
    );
    let header_read = Duration::from_millis(API_HEADER_READ_TIMEOUT_MS);
    serve_capped(listener, app, header_read, shutdown).await;
}

/// Serves `app` on `listener`'s connections until shutdown, then waits for those open to
/// finish (each is told to close after its answer in progress).
///
/// The connections are served here rather than by `axum::serve`, which sets no timeout at
/// all: a connection that sent nothing, or half a request head, or was kept alive and left
/// idle, held one of the listener's places for good, so that a local client could keep the
/// operator's commands and the hooks' scripts out. Here each connection has `header_read`
/// to send a request's head (`API_HEADER_READ_TIMEOUT_MS`), counted from its start and,
/// kept alive, from the end of each answer; hyper closes it past that. It does not run once
/// the head is read: an event stream stays open as long as its client keeps it.
async fn serve_capped(
    mut listener: Capped,
    app: Router,
    header_read: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let timeouts = Arc::new(std::sync::Mutex::new(hotline_net::Throttle::new(
        Duration::from_secs(60),
    )));
    let mut connections = tokio::task::JoinSet::new();
    let for_connections = shutdown.clone();
    loop {
        tokio::select! {
            biased;
            // The node is stopping (or gone): take no more connections.
            _ = shutdown.wait_for(|v| *v) => break,
            // A connection ended: forget its task, so that the set holds open ones only.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            // A new connection, once a place is free.
            (io, _) = listener.accept() => {
                connections.spawn(serve_connection(
                    io,
                    app.clone(),
                    header_read,
                    timeouts.clone(),
                    for_connections.clone(),
                ));
            }
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Whether `e` is a write [`CappedIo`] failed for a client that took nothing.
fn timed_out(e: &hyper::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The status hyper answered a request head that does not parse with (`e`, a connection's
/// end), if it was that and hyper answered: 400, or 431 for a head too large
/// (`API_HEAD_BYTES_MAX`) and 414 for a path too long (64 KiB, which a head's bound now
/// refuses first).
fn parse_refusal(e: &hyper::Error) -> Option<u16> {
    if !e.is_parse() || e.is_parse_version_h2() {
        return None;
    }
    if e.is_parse_too_large() {
        return Some(if e.to_string().starts_with("URI too long") {
            414
        } else {
            431
        });
    }
    Some(400)
}

/// Serves one connection of [`serve_capped`] until it closes, or, once the node is stopping,
/// until its answer in progress is written.
async fn serve_connection(
    io: CappedIo,
    app: Router,
    header_read: Duration,
    timeouts: Arc<std::sync::Mutex<hotline_net::Throttle>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read)
        // A head not ended within `API_HEAD_BYTES_MAX` is answered 431 and the connection
        // closed: hyper's own bound let each connection hold about 400 KiB of it, before
        // any token was looked at. The bound is the read buffer's, so a body is read in
        // pieces of at most as much.
        .max_buf_size(API_HEAD_BYTES_MAX);
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = http.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    let stopping = async move {
        // The watch's guard is dropped here, before anything else is awaited.
        let _ = shutdown.wait_for(|v| *v).await;
    };
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    let why = match ended {
        Ok(()) => return,
        // A client that sent no request in time, or took nothing of its answer in time
        // ([`CappedIo`]): logged below.
        Err(e) if e.is_timeout() => "sent no request within the header-read limit",
        Err(e) if timed_out(&e) => "took nothing of its answer in time",
        // A request head that does not parse, which hyper answered with an empty body: a
        // refused request, logged as every other is ([`log_refusals`]), without a method or
        // a path, since none could be read. Not throttled: each closed its connection.
        Err(e) => {
            match parse_refusal(&e) {
                Some(status) => {
                    let error = e.to_string();
                    warn!(method = "", path = "", status, code = "", error = ?error, "local API: request refused");
                }
                // A client gone midway: the connection's own business, nothing for the
                // operator.
                None => tracing::debug!(error = %e, "local API: connection ended"),
            }
            return;
        }
    };
    // At most once a minute (a client could otherwise have the node log a line at will),
    // with how many connections were closed since.
    let times = timeouts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .tick(1, std::time::Instant::now());
    if let Some(times) = times {
        info!(times, "local API: closed a connection whose client {why}");
    }
}

/// `POST /v1/messages` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Participant ids (one of `to`, `group`, `all_members`, `everyone`).
    #[serde(default)]
    pub to: Vec<String>,
    /// A roster group.
    pub group: Option<String>,
    /// Every member state.
    #[serde(default)]
    pub all_members: bool,
    /// Everyone on the roster.
    #[serde(default)]
    pub everyone: bool,
    /// Kind (default `alert`).
    pub kind: Option<Kind>,
    /// Precedence (default `ROUTINE`).
    pub precedence: Option<Precedence>,
    /// Status (default `actual`).
    pub status: Option<Status>,
    /// Category.
    pub category: Option<String>,
    /// Respond-by, ms since the epoch.
    pub respond_by_ms: Option<u64>,
    /// Respond within this many ms from now (alternative to `respond_by_ms`).
    pub respond_within_ms: Option<u64>,
    /// Referenced message ids.
    #[serde(default)]
    pub references: Vec<String>,
    /// Subject.
    pub subject: String,
    /// Body.
    #[serde(default)]
    pub body: String,
}

/// Runs `work` with the node's state off the runtime, and waits for it
/// ([`NodeState::off_runtime`]): what the API does with the store. Each store call takes a
/// lock (the store's, which a link holds while it stores a batch of deliveries, or the
/// reader's) and does SQLite I/O, which a slow or stalled disk makes wait: on a runtime
/// thread, that wait held the thread, and with it the links to the relays, the event
/// streams and every other request. At most `API_CONNECTIONS_MAX` of these wait at once,
/// one per connection, within the blocking pool's 512 threads. `work` runs to its end even
/// if its client goes away meanwhile (hyper then drops the request's future), so what must
/// follow a write (waking the links, an event, a log line) is done in `work` too. One that
/// panics is answered 500 `internal`.
async fn off_runtime<T: Send + 'static>(
    state: &St,
    work: impl FnOnce(&NodeState) -> T + Send + 'static,
) -> Result<T, ApiError> {
    state.off_runtime(work).await.map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the store's work for this request failed: {e}"),
        )
    })
}

fn audience(req: &SendRequest) -> Result<Audience, ApiError> {
    let chosen = [
        !req.to.is_empty(),
        req.group.is_some(),
        req.all_members,
        req.everyone,
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if chosen != 1 {
        return Err(bad(
            "bad_audience",
            "give exactly one of to, group, all_members, everyone",
        ));
    }
    if let Some(g) = &req.group {
        return Ok(Audience::Group(g.clone()));
    }
    if req.all_members {
        return Ok(Audience::AllMembers);
    }
    if req.everyone {
        return Ok(Audience::Everyone);
    }
    let mut ids = Vec::new();
    for t in &req.to {
        let id = ParticipantId::new(t).map_err(|e| bad("bad_recipient", e.to_string()))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(Audience::Participants(ids))
}

async fn send(
    State(state): State<St>,
    Params(NoQuery {}): Params<NoQuery>,
    headers: HeaderMap,
    Body(req): Body<SendRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let key = idempotency_key(&headers)?;
    // A category is shown to the recipients' officers as what the message is about, as its
    // subject is: one with nothing to see in it (spaces, a NUL, zero-width spaces) is
    // refused likewise. Here, not in `submit`: a reply keeps the category of the message it
    // answers as it came, which another node may have taken, so that it can be sent.
    if req.category.as_deref().is_some_and(|c| !visible(c)) {
        return Err(bad("invalid", "category: it holds no visible character"));
    }
    submit(state, req, key, None).await
}

/// The header a client names a send with, so that it can repeat the request safely
/// (draft-ietf-httpapi-idempotency-key-header).
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The request's `Idempotency-Key`, if it has one: 1 to [`IDEMPOTENCY_KEY_BYTES_MAX`]
/// visible ASCII characters other than `"` and `\`, as given or in the double quotes of the
/// draft's Structured Field string (`"KEY"` and `KEY` are one key), or a 400
/// `bad_idempotency_key`: a key given twice, empty, too long, or with a space, a control or
/// a non-ASCII byte. Within that, what a key holds is the client's affair (a UUID, a
/// drill's names): the node only compares it.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut given = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = given.next() else {
        return Ok(None);
    };
    if given.next().is_some() {
        return Err(bad(
            "bad_idempotency_key",
            "Idempotency-Key: given more than once",
        ));
    }
    let raw = value.as_bytes();
    let key = match raw {
        [b'"', key @ .., b'"'] => key,
        _ => raw,
    };
    let fits = |b: &u8| b.is_ascii_graphic() && *b != b'"' && *b != b'\\';
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX || !key.iter().all(fits) {
        return Err(bad(
            "bad_idempotency_key",
            format!(
                "Idempotency-Key: 1 to {IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters, \
                 no space, `\"` or `\\`, optionally in double quotes"
            ),
        ));
    }
    // Visible ASCII: UTF-8 as it is.
    Ok(Some(String::from_utf8_lossy(key).into_owned()))
}

/// What decides a message, as the node understood the request that asks for it: what an
/// `Idempotency-Key` is kept with ([`asked_digest`]), so that the key given again with this
/// request is a repeat, and with any other is refused. The respond-by is as the request gave
/// it (`respond_within_ms`, not the time it came to, which a repeat a second later moves).
/// The recipients named in `to` are a set, sorted: routing resolves them to one, and the
/// protocol refuses one listed twice, so their order, or one given twice (taken once),
/// asks for the same message.
#[derive(Serialize)]
struct Asked<'a> {
    /// `send`, or `reply` to the message answered.
    route: &'static str,
    answered: Option<&'a MessageId>,
    audience: &'a Audience,
    kind: Kind,
    precedence: Precedence,
    status: Status,
    respond_by_ms: Option<u64>,
    respond_within_ms: Option<u64>,
    references: &'a [MessageId],
    category: Option<&'a str>,
    subject: &'a str,
    body: &'a str,
}

/// The digest an `Idempotency-Key` is kept with: SHA-256 over a label and [`Asked`] as JSON,
/// for `req` (a send's, or the one a reply to `answered` makes) as `draft` took it.
fn asked_digest(
    answered: Option<&MessageId>,
    req: &SendRequest,
    draft: &Draft,
) -> Result<hotline_proto::Digest, ApiError> {
    // Sorted, as a set: the same `to` in another order was refused as another request. One
    // already in order (a single recipient, or a list a client sorts) digests as it did
    // before, so a key taken before this is still known for it (for one that was not:
    // [`listed_digest`]).
    let sorted;
    let audience = match &draft.audience {
        Audience::Participants(ids) => {
            let mut ids = ids.clone();
            ids.sort();
            ids.dedup();
            sorted = Audience::Participants(ids);
            &sorted
        }
        other => other,
    };
    digest_of(answered, req, draft, audience)
}

/// The digest an earlier release kept an `Idempotency-Key` with, of `to` as listed (taken
/// once each, in the order given), where that is not [`asked_digest`]'s (`to` not in
/// order): a key it took for this request, whose retry comes to this release (the answer
/// lost as the node stopped for its upgrade), is the same request, not another. `None`
/// where the two are one.
fn listed_digest(
    answered: Option<&MessageId>,
    req: &SendRequest,
    draft: &Draft,
) -> Result<Option<hotline_proto::Digest>, ApiError> {
    match &draft.audience {
        Audience::Participants(ids) if !ids.is_sorted() => {
            digest_of(answered, req, draft, &draft.audience).map(Some)
        }
        _ => Ok(None),
    }
}

/// SHA-256 over a label and [`Asked`] as JSON, for `req` as `draft` took it, its audience
/// `audience` ([`asked_digest`], [`listed_digest`]).
fn digest_of(
    answered: Option<&MessageId>,
    req: &SendRequest,
    draft: &Draft,
    audience: &Audience,
) -> Result<hotline_proto::Digest, ApiError> {
    let asked = Asked {
        route: if answered.is_some() { "reply" } else { "send" },
        answered,
        audience,
        kind: draft.kind,
        precedence: draft.precedence,
        status: draft.status,
        respond_by_ms: req.respond_by_ms,
        respond_within_ms: req.respond_within_ms,
        references: &draft.references,
        category: draft.category.as_deref(),
        subject: &draft.subject,
        body: &draft.body,
    };
    let json = serde_json::to_vec(&asked)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(hotline_proto::Digest::of(&[
        b"hotline node idempotency-key request v1\0",
        &json,
    ]))
}

/// Checks `req`, then composes, signs and stores the message off the runtime
/// ([`queue`]): `POST /v1/messages`, and a reply's message (to `answered`). With an
/// idempotency `key`, a request this node took before with that key is answered with the
/// message it stored, and nothing more is stored ([`repeated`]).
async fn submit(
    state: St,
    req: SendRequest,
    key: Option<String>,
    answered: Option<MessageId>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let now = now_ms();
    let respond_by_ms = match (req.respond_by_ms, req.respond_within_ms) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "bad_respond_by",
                "give respond_by_ms or respond_within_ms, not both",
            ))
        }
        (Some(t), None) => Some(t),
        // No time at all to answer: the message would be overdue at once (it used to be
        // taken as 1 ms). A short deadline is the caller's to choose: the exercise harness
        // compresses a drill's minutes into seconds or less.
        (None, Some(0)) => return Err(bad("bad_respond_by", "respond_within_ms: must be above 0")),
        (None, Some(d)) => Some(now.saturating_add(d)),
        (None, None) => None,
    };
    // The protocol takes any 1 to 256 bytes, but a subject with nothing to see in it (spaces,
    // a NUL, zero-width spaces) tells the recipient's officers nothing (an officer's name is
    // refused likewise).
    if !visible(&req.subject) {
        return Err(bad("invalid", "subject: it holds no visible character"));
    }
    let references = req
        .references
        .iter()
        .map(|r| {
            r.parse::<MessageId>()
                .map_err(|e| bad("bad_reference", e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if req.body.len() > hotline_proto::limits::BODY_BYTES_MAX {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "body of {} bytes exceeds {}",
                req.body.len(),
                hotline_proto::limits::BODY_BYTES_MAX
            ),
        ));
    }
    let draft = Draft {
        audience: audience(&req)?,
        kind: req.kind.unwrap_or(Kind::Alert),
        precedence: req.precedence.unwrap_or(Precedence::Routine),
        status: req.status.unwrap_or(Status::Actual),
        respond_by_ms,
        references,
        category: req.category.clone(),
        subject: req.subject.clone(),
        body: req.body.clone(),
    };
    let idem = match key {
        Some(key) => Some(Idempotency {
            key,
            request: asked_digest(answered.as_ref(), &req, &draft)?,
        }),
        None => None,
    };
    let listed = listed_digest(answered.as_ref(), &req, &draft)?;
    if let Some(idem) = idem.clone() {
        // Before the roster's check: a message stored is answered as it was stored, even if
        // the roster has changed since (its recipients are the matrix's, not the roster's).
        // The key is looked up again in the transaction that would compose
        // (`NodeStore::compose_keyed`), for a request with it that came meanwhile.
        let before = off_runtime(&state, move |state| {
            let store = state.store();
            let mut keyed = store.keyed(&idem, now).map_err(store_error)?;
            // Taken by an earlier release with this request, `to` as listed: the same one
            // ([`listed_digest`]). Such a key is older than this node's start, so it is
            // here now, not only in the transaction that would compose.
            if let (Some(Keyed::Other), Some(request)) = (&keyed, listed) {
                let earlier = Idempotency {
                    key: idem.key.clone(),
                    request,
                };
                if let Some(same @ Keyed::Same { .. }) =
                    store.keyed(&earlier, now).map_err(store_error)?
                {
                    keyed = Some(same);
                }
            }
            match keyed {
                Some(keyed) => repeated(state, &store, keyed).map(Some),
                None => Ok(None),
            }
        })
        .await??;
        if let Some(answer) = before {
            return Ok(answer);
        }
    }
    // Route locally first: an unknown recipient is refused before anything is stored.
    let roster = state.roster.borrow().clone();
    let probe = hotline_proto::Envelope {
        version: hotline_proto::PROTOCOL_VERSION,
        id: MessageId([0; 16]),
        sender: state.me.clone(),
        seq: hotline_proto::Seq(1),
        audience: draft.audience.clone(),
        kind: draft.kind,
        precedence: draft.precedence,
        status: draft.status,
        created_at_ms: now,
        respond_by_ms,
        references: draft.references.clone(),
        category: draft.category.clone(),
        subject: draft.subject.clone(),
        body: String::new(),
    };
    // The observer policy is the relay's to apply: its configuration may let observers
    // address anyone, and it answers the reply rule from its store. A local check with the
    // default policy would refuse here what the relay allows, so this one checks only what
    // the roster decides (unknown recipients and groups, an empty audience); a policy
    // refusal comes back from the relay and shows as state `rejected` (`PolicyDenied`).
    let local = routing::Policy {
        observers_may_address_anyone: true,
    };
    let expected = routing::resolve(&roster, &local, &probe, |_| true).map_err(|e| {
        let code = match e {
            routing::RouteError::UnknownRecipient(_) => "unknown_recipient",
            routing::RouteError::UnknownGroup(_) => "unknown_group",
            routing::RouteError::NoRecipients => "no_recipients",
            routing::RouteError::PolicyDenied { .. } => "policy_denied",
            _ => "bad_audience",
        };
        bad(code, e.to_string())
    })?;
    let answer = off_runtime(&state, move |state| {
        queue(state, draft, expected, &roster, now, idem.as_ref())
    });
    answer.await?
}

/// Composes, signs and stores `draft` for `expected` (its recipients by `roster`), wakes the
/// links and logs it: the answer to a send, `201`. With `idem`, unless its key is kept: then
/// nothing is stored, and the answer is [`repeated`]'s. Off the runtime ([`off_runtime`]).
fn queue(
    state: &NodeState,
    draft: Draft,
    expected: Vec<ParticipantId>,
    roster: &hotline_proto::Roster,
    now: u64,
    idem: Option<&Idempotency>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let relays = state.config.relays.len();
    let signed = {
        let mut store = state.store();
        let result = match idem {
            None => store
                .compose(&state.me, &state.key, draft, &expected, relays, now)
                .map(|r| r.map(Composed::New)),
            Some(idem) => {
                store.compose_keyed(&state.me, &state.key, draft, &expected, relays, now, idem)
            }
        };
        match result.map_err(store_error)? {
            Ok(Composed::New(s)) => s,
            Ok(Composed::Before(keyed)) => return repeated(state, &store, keyed),
            Err(e) => return Err(bad("invalid", e.to_string())),
        }
    };
    let env = signed
        .decode_unverified()
        .map_err(|e| bad("invalid", e.to_string()))?;
    state.wake_links();
    let (connected, refused_by, outlook) = way_out(state, roster);
    if outlook.blocked {
        warn!(msg = %env.id, seq = %env.seq, recipients = expected.len(), relays_connected = connected, why = %outlook.note, "message queued, but no relay will take it");
    } else {
        info!(msg = %env.id, seq = %env.seq, recipients = expected.len(), relays_connected = connected, "message queued");
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": env.id,
            "seq": env.seq,
            "state": "queued",
            "recipients": expected,
            "relays_connected": connected,
            "blocked": outlook.blocked,
            "refused_by": refused_json(&refused_by),
            "note": outlook.note,
        })),
    ))
}

/// The answer to a request whose `Idempotency-Key` is kept ([`NodeStore::keyed`]), read
/// from `store` (held by the caller, which found the key): for the same request, `200` with
/// the fields of the first answer, for the message that request stored (its recipients as
/// its matrix holds them, its `state` now, the relays as they are now), `repeated: true`
/// and a note saying so; for another request, a 422 `idempotency_key_reused`.
///
/// [`NodeStore::keyed`]: crate::store::NodeStore::keyed
fn repeated(
    state: &NodeState,
    store: &crate::store::NodeStore,
    keyed: Keyed,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (id, created_at_ms) = match keyed {
        Keyed::Same { id, created_at_ms } => (id, created_at_ms),
        Keyed::Other => {
            return Err(ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                format!(
                    "this Idempotency-Key came with another request within the last {} h: \
                     nothing was stored; a new message takes a new key",
                    IDEMPOTENCY_KEY_KEPT_MS / 3_600_000
                ),
            ))
        }
    };
    let Some(sent) = store.sent_message(&id).map_err(store_error)? else {
        return Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            format!("the message {id} this Idempotency-Key names is not in the store"),
        ));
    };
    let seq = sent.envelope.seq;
    let recipients: Vec<ParticipantId> = sent.matrix.iter().map(|r| r.recipient.clone()).collect();
    let now_state = state_of(&sent);
    let roster = state.roster.borrow().clone();
    let (connected, refused_by, outlook) = way_out(state, &roster);
    let mut note = format!(
        "a repeat of a request this node took at {} with this Idempotency-Key: nothing more \
         was stored; this is the message it stored, {} now",
        hotline_config::utc::format_utc(created_at_ms),
        now_state,
    );
    if outlook.blocked {
        note.push_str("; ");
        note.push_str(&outlook.note);
    }
    info!(msg = %id, seq = %seq, "send repeated with its idempotency key: answered with the message it stored");
    Ok((
        StatusCode::OK,
        Json(json!({
            "id": id,
            "seq": seq,
            "state": now_state,
            "recipients": recipients,
            "relays_connected": connected,
            "blocked": outlook.blocked,
            "refused_by": refused_json(&refused_by),
            "note": note,
            "repeated": true,
        })),
    ))
}

/// The relays' `refused_by` in an answer to a send.
fn refused_json(refused_by: &[RefusedBy]) -> Vec<Value> {
    refused_by
        .iter()
        .map(|r| {
            json!({
                "relay": r.relay,
                "address": r.address,
                "code": r.refusal.code.name(),
                "reason": r.refusal.reason,
            })
        })
        .collect()
}

/// The way out for a message now: how many relays are connected, those down for a lasting
/// refusal, and the [`Outlook`] with this node's own `roster`.
fn way_out(state: &NodeState, roster: &hotline_proto::Roster) -> (usize, Vec<RefusedBy>, Outlook) {
    let relays = state.config.relays.len();
    let connected = state.relays_connected();
    let refused_by: Vec<RefusedBy> = state
        .config
        .relays
        .iter()
        .enumerate()
        .filter_map(|(relay, r)| match state.link(relay) {
            crate::Link::Down(crate::LinkDown {
                refused: Some(refusal),
                ..
            }) => Some(RefusedBy {
                relay,
                address: r.address.to_string(),
                refusal,
            }),
            _ => None,
        })
        .collect();
    let own = own_roster_refusal(roster, &state.me, &hotline_proto::PublicKey::of(&state.key));
    let outlook = outlook(connected, relays, &refused_by, own.as_ref());
    (connected, refused_by, outlook)
}

/// A relay whose link is down for a lasting refusal: it refused this node itself, or this
/// node refused its certificate.
#[derive(Debug)]
struct RefusedBy {
    /// Its index in the configuration.
    relay: usize,
    address: String,
    refusal: crate::RelayRefusal,
}

/// Why this node's own roster says no relay will take what it signs, if it does: its
/// participant missing (`UnknownParticipant`) or revoked, or its key not listed
/// (`Revoked`), as a relay holding that roster would refuse it.
fn own_roster_refusal(
    roster: &hotline_proto::Roster,
    me: &ParticipantId,
    key: &hotline_proto::PublicKey,
) -> Option<(RefusalCode, String)> {
    use hotline_proto::VerifyError;
    let v = roster.version;
    match roster.authorise(me, key) {
        Ok(()) => None,
        Err(VerifyError::UnknownSigner(_)) => Some((
            RefusalCode::UnknownParticipant,
            format!("{me} is not on this node's roster (version {v})"),
        )),
        Err(VerifyError::Revoked(_)) => Some((
            RefusalCode::Revoked,
            format!("this node's roster (version {v}) marks {me} revoked"),
        )),
        Err(VerifyError::KeyNotAuthorised(k)) => Some((
            RefusalCode::Revoked,
            format!(
                "this node's roster (version {v}) does not list its key {} for {me}",
                k.short()
            ),
        )),
        Err(e) => Some((
            RefusalCode::Revoked,
            format!("this node's roster (version {v}): {e}"),
        )),
    }
}

/// What the answer to a message submitted says of its way out.
#[derive(Debug, PartialEq, Eq)]
struct Outlook {
    /// No relay will take it as things stand: every relay's link is down for a lasting
    /// refusal, or this node's own roster says they will refuse it.
    blocked: bool,
    /// The answer's `note`, for a person.
    note: String,
}

/// The outlook of a message just queued, with `connected` of `relays` links up, those in
/// `refused_by` down for a lasting refusal, and `own` the reason this node's roster gives
/// against it, if any.
///
/// A message is always accepted and queued (201), never refused for this: a refusal often
/// ends (a key rotation done in the wrong order, a revocation undone, a relay's roster
/// brought up to date, a fingerprint corrected, a release upgraded), and then the message
/// leaves with the rest of the outbox without anyone typing it again in a crisis; and what
/// an officer tried to send, and when, is on record. But a message that cannot leave must
/// not read as if it will: the note says so plainly, and why, with what to do for each kind
/// of refusal, and `blocked` says it to a program. Only refusals that last until someone
/// changes something count (`RelayRefusal::of`); a relay merely unreachable may take it
/// when it is back.
fn outlook(
    connected: usize,
    relays: usize,
    refused_by: &[RefusedBy],
    own: Option<&(RefusalCode, String)>,
) -> Outlook {
    if connected > 0 {
        return Outlook {
            blocked: false,
            note: "sent to the relay; waiting for acceptance".into(),
        };
    }
    let mut why: Vec<String> = refused_by
        .iter()
        .map(|r| {
            let reason = &r.refusal.reason;
            let reason = if reason.is_empty() {
                String::new()
            } else {
                format!(" ({reason})")
            };
            let code = r.refusal.code;
            match code {
                RefusalCode::PinMismatch => format!(
                    "this node refused relay {} ({}): {}{reason}",
                    r.relay,
                    r.address,
                    code.name()
                ),
                _ => format!(
                    "relay {} ({}) refused this node: {}{reason}",
                    r.relay,
                    r.address,
                    code.name()
                ),
            }
        })
        .collect();
    let blocked = own.is_some() || (relays > 0 && refused_by.len() == relays);
    if !blocked {
        let mut note =
            "no relay reachable: the message is queued and will be sent when one is".to_owned();
        for w in &why {
            note.push_str("; ");
            note.push_str(w);
        }
        return Outlook {
            blocked: false,
            note,
        };
    }
    why.extend(own.map(|(_, w)| w.clone()));
    // The relays refused for `code`, by index.
    let by = |code: RefusalCode| -> Vec<usize> {
        refused_by
            .iter()
            .filter(|r| r.refusal.code == code)
            .map(|r| r.relay)
            .collect()
    };
    let mut hints = Vec::new();
    let own_code = own.map(|(c, _)| *c);
    if own_code == Some(RefusalCode::Revoked) || !by(RefusalCode::Revoked).is_empty() {
        hints.push(
            "This participant or its key is revoked on the roster, or its key is not (yet) \
             listed (OPERATIONS.md 4.5; 4.4 for a key rotation). "
                .to_owned(),
        );
    }
    if own_code == Some(RefusalCode::UnknownParticipant)
        || !by(RefusalCode::UnknownParticipant).is_empty()
    {
        hints.push(
            "This participant is not on the roster: check the node's `participant`, or the \
             relay's roster is old (OPERATIONS.md section 9). "
                .to_owned(),
        );
    }
    let version = by(RefusalCode::UnsupportedVersion);
    if !version.is_empty() {
        hints.push(format!(
            "This node and {} speak different protocol versions: upgrade the older \
             (OPERATIONS.md 8.1, 8.2). ",
            named(&version).0
        ));
    }
    let auth = by(RefusalCode::AuthFailed);
    if !auth.is_empty() {
        hints.push(format!(
            "{} could not verify this node's log-in proof (its signature, or its binding to \
             the connection's TLS session; the relay does not check the node's clock): a node \
             and relay of incompatible releases, or something tampering with the connection. \
             Compare both releases (OPERATIONS.md 8.2) and read the relay's log \
             (OPERATIONS.md section 9). ",
            capitalised(&named(&auth).0)
        ));
    }
    let pin = by(RefusalCode::PinMismatch);
    if !pin.is_empty() {
        let (relays, many) = named(&pin);
        let (certificate, does, fingerprint) = if many {
            ("certificates", "do", "fingerprints")
        } else {
            ("certificate", "does", "fingerprint")
        };
        hints.push(format!(
            "The {certificate} of {relays} {does} not match the {fingerprint} pinned in this \
             node's configuration (`fingerprint` in its `[[relays]]` table): compare with \
             `hotline relay fingerprint` on the relay; its certificate may have been rotated \
             (OPERATIONS.md section 5), or something else answers at its address. "
        ));
    }
    Outlook {
        blocked: true,
        note: format!(
            "no relay will take it: {}. {}The message stays in the outbox and leaves only once \
             this is put right; meanwhile, use another channel",
            why.join("; "),
            hints.concat()
        ),
    }
}

/// `relay 0`, `relays 0 and 1`, `relays 0, 1 and 2`; and whether more than one.
fn named(relays: &[usize]) -> (String, bool) {
    match relays {
        [one] => (format!("relay {one}"), false),
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(ToString::to_string).collect();
            (format!("relays {} and {last}", init.join(", ")), true)
        }
        [] => (String::new(), false),
    }
}

/// `s` with its first letter upper-case.
fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// A received message as the API shows it.
#[derive(Serialize)]
struct InboxItem {
    id: MessageId,
    from: ParticipantId,
    kind: Kind,
    precedence: Precedence,
    status: Status,
    /// Always true for exercise or test traffic, so it can never be mistaken for actual.
    exercise_or_test: bool,
    category: Option<String>,
    subject: String,
    body: String,
    created_at_ms: u64,
    received_at_ms: u64,
    respond_by_ms: Option<u64>,
    references: Vec<MessageId>,
    acknowledged: bool,
    acknowledged_at_ms: Option<u64>,
    officer: Option<String>,
    note: Option<String>,
    answered_at_ms: Option<u64>,
}

/// A received message as `GET /v1/inbox` shows it, for a reader of a store at rest (the
/// drill harness reads the inbox of a node a fault keeps down to the end from its store, and
/// scores it as it would the API's answer).
pub fn inbox_json(m: InboxMessage) -> serde_json::Result<serde_json::Value> {
    serde_json::to_value(inbox_item(m))
}

fn inbox_item(m: InboxMessage) -> InboxItem {
    let e = m.envelope;
    InboxItem {
        id: e.id,
        from: e.sender,
        kind: e.kind,
        precedence: e.precedence,
        exercise_or_test: e.status != Status::Actual,
        status: e.status,
        category: e.category,
        subject: e.subject,
        body: e.body,
        created_at_ms: e.created_at_ms,
        received_at_ms: m.received_at_ms,
        respond_by_ms: e.respond_by_ms,
        references: e.references,
        acknowledged: m.ack.is_some(),
        acknowledged_at_ms: m.ack.as_ref().map(|a| a.0),
        officer: m.ack.as_ref().map(|a| a.1.clone()),
        note: m.ack.and_then(|a| a.2),
        answered_at_ms: m.answered_at_ms,
    }
}

/// How many of a sent message's recipients have it, acknowledged it, are overdue.
#[derive(Debug, Clone, Copy)]
struct Counts {
    total: usize,
    delivered: usize,
    acked: usize,
    overdue: usize,
}

impl Counts {
    /// The counts of sent message `s`'s delivery matrix.
    fn of(s: &SentMessage) -> Self {
        let m = &s.matrix;
        Self {
            total: m.len(),
            delivered: m.iter().filter(|r| r.delivered_at_ms.is_some()).count(),
            acked: m.iter().filter(|r| r.acked_at_ms.is_some()).count(),
            overdue: m
                .iter()
                .filter(|r| r.overdue_at_ms.is_some() && r.acked_at_ms.is_none())
                .count(),
        }
    }
}

/// Sent message `s`'s `state` ([`sent_state`]).
fn state_of(s: &SentMessage) -> &'static str {
    sent_state(
        s.rejected.is_some(),
        s.accepted_at_ms.is_some(),
        Counts::of(s),
    )
}

/// A sent message's `state` (docs/API.md): the first that applies of rejected, queued,
/// acknowledged, overdue, delivered, accepted.
///
/// A recipient's signed receipt shows that a relay took the message even when the relay's
/// acceptance has not reached this node: the relay can go down between forwarding the
/// message and answering the sender, who learns of the acceptance only when it offers the
/// message again. Such a message is not shown as queued (nor as rejected) while its
/// recipients' receipts say otherwise; `accepted_at_ms` stays empty until the acceptance
/// itself arrives.
fn sent_state(rejected: bool, accepted: bool, c: Counts) -> &'static str {
    let taken = accepted || c.delivered > 0 || c.acked > 0;
    if rejected && !taken {
        "rejected"
    } else if !taken {
        "queued"
    } else if c.total > 0 && c.acked == c.total {
        "acknowledged"
    } else if c.overdue > 0 {
        "overdue"
    } else if c.total > 0 && c.delivered == c.total {
        "delivered"
    } else {
        "accepted"
    }
}

/// A sent message as `GET /v1/messages/{id}` shows it (`now`: ms since the epoch), for a
/// reader of a store at rest (the drill harness reads the sent messages of a node a fault
/// keeps down to the end from its store).
pub fn sent_json(s: SentMessage, now: u64) -> Value {
    sent_view(s, now)
}

/// A sent message's view: its `answers` are the first `ANSWERS_LISTED_MAX` (as the store
/// reads them), `answers_total` counts them all, and each recipient's `answered_at_ms`, which
/// `answered` counts, is the store's, of all its answers: read from the listed ones, a
/// recipient whose first answer came after them would show none.
fn sent_view(s: SentMessage, now: u64) -> Value {
    let e = &s.envelope;
    let answered = s
        .matrix
        .iter()
        .filter(|r| r.answered_at_ms.is_some())
        .count();
    let state = state_of(&s);
    let Counts {
        total,
        delivered,
        acked,
        overdue,
    } = Counts::of(&s);
    json!({
        "direction": "sent",
        "id": e.id,
        "from": e.sender,
        "seq": e.seq,
        "audience": e.audience,
        "kind": e.kind,
        "precedence": e.precedence,
        "status": e.status,
        "exercise_or_test": e.status != Status::Actual,
        "category": e.category,
        "subject": e.subject,
        "body": e.body,
        "created_at_ms": e.created_at_ms,
        "respond_by_ms": e.respond_by_ms,
        "overdue_now": e.respond_by_ms.is_some_and(|t| t <= now) && acked < total,
        "references": e.references,
        "state": state,
        "accepted_at_ms": s.accepted_at_ms,
        "rejected": s.rejected.map(|(c, d)| json!({"code": c, "detail": d})),
        "total": total,
        "delivered": delivered,
        "acknowledged": acked,
        "overdue": overdue,
        "answered": answered,
        "recipients": s.matrix,
        "answers": s.answers,
        "answers_total": s.answers_total,
    })
}

/// `GET /v1/quarantine`'s query: a list's `limit`, and the delivery it continues after.
/// Every list's query refuses a parameter it does not know ([`Params`]): `?limt=5` or
/// `?befor=ID`, ignored, gave the first page, which read as the one asked for.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuarantineQuery {
    #[serde(default, deserialize_with = "whole_number")]
    limit: Option<usize>,
    /// The page after the delivery held under this digest, in the list's order: the last
    /// of the page before.
    before: Option<String>,
}

/// `GET /v1/messages`'s query: a list's `limit`, and the message it continues after.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SentQuery {
    #[serde(default, deserialize_with = "whole_number")]
    limit: Option<usize>,
    /// The page after this message, in the list's order: the last of the page before.
    before: Option<String>,
}

/// `GET /v1/inbox`'s query: a list's `limit`, the message it continues after, and whether
/// only unacknowledged messages.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InboxQuery {
    #[serde(default, deserialize_with = "whole_number")]
    limit: Option<usize>,
    /// The page after this message, in the list's order: the last of the page before.
    before: Option<String>,
    /// Only those not yet acknowledged, chosen by the store: filtered from the newest
    /// `limit` by the client, one behind that many newer acknowledged messages was listed
    /// nowhere.
    #[serde(default)]
    unacknowledged: bool,
    /// Only those that reference this message of ours: all its answers, where its view
    /// lists the first `ANSWERS_LISTED_MAX`.
    references: Option<String>,
}

/// A list's `?limit=`: any whole number from 0 up, one past what a `usize` holds taken as
/// the most there is (the list caps it at [`API_LIST_MAX`]): `?limit=99999999999999999999`,
/// a script's "as many as you give", was refused as malformed, though docs/API.md takes any
/// whole number. Anything else is refused, naming what is wrong, as before.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let Some(given) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    match given.parse::<usize>() {
        Ok(n) => Ok(Some(n)),
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Ok(Some(usize::MAX)),
        Err(e) => Err(serde::de::Error::custom(e)),
    }
}

/// The query of an endpoint that takes no parameter (`/v1/status`, `/v1/events`, a message,
/// a send, an acknowledgement, a reply, a discard): empty. A parameter there is refused by
/// name ([`Params`]), as a list refuses one it does not know: ignored, `/v1/events?since=ID`
/// or `/v1/status?relay=1` answered as if it were understood.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoQuery {}

/// A list's `before`: a message id, or a 400 `bad_id`.
fn cursor(before: Option<&str>) -> Result<Option<MessageId>, ApiError> {
    before
        .map(|b| {
            b.parse::<MessageId>()
                .map_err(|e| bad("bad_id", format!("before: {e}")))
        })
        .transpose()
}

/// A digest given by the client (a path's `{digest}`, the quarantine's `?before=`), or a
/// 400 `bad_digest` naming `what` was given.
fn digest(given: &str, what: &str) -> Result<hotline_proto::Digest, ApiError> {
    hex::decode(given)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(hotline_proto::Digest)
        .ok_or_else(|| {
            bad(
                "bad_digest",
                format!("{what}{given:?} is not 64 hex digits"),
            )
        })
}

/// A list's [`Page`] of at most `limit` items, built by `walk`: the store's walk of the
/// list's items after `before`, up to the count it is given (one more than the page, to
/// know whether the list goes on past it), each given to [`Page::take`] as it is read, so
/// that the walk stops once the page is done and reads no more items than it answers, one
/// at a time. The walk answers `None` when `before` names no item of the list (`what`):
/// a 404.
fn list_page<C: std::fmt::Display>(
    limit: usize,
    before: Option<&C>,
    what: &str,
    walk: impl FnOnce(usize, &mut Page) -> Result<Option<()>, hotline_store::StoreError>,
) -> Result<Page, ApiError> {
    let mut out = Page::new(limit, API_PAGE_BYTES_MAX);
    let listed = walk(limit.saturating_add(1), &mut out).map_err(store_error)?;
    if let Some(e) = out.failed.take() {
        return Err(e);
    }
    match (listed, before) {
        (None, Some(id)) => Err(ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("before: no {what} {id}"),
        )),
        // Only a `before` can name nothing.
        _ => Ok(out),
    }
}

/// A list's page as it is answered (docs/API.md, Conventions): its items' JSON, one after
/// the other as they are read, until `limit` items or [`API_PAGE_BYTES_MAX`] bytes. Counted
/// in items alone, a page of 1,000 messages of 64 KiB was 64 MiB of JSON, held until its
/// client read it, and each connection could ask for one. The item that would take the
/// page past its bytes begins the next page, which the answer's `Link: rel="next"` names;
/// the first item is taken whatever its size, so that every item is listed on some page.
/// Built under the API's one read-only store connection ([`NodeState::reader`]), so one
/// page is built at a time.
struct Page {
    /// The JSON array so far, without its closing bracket.
    json: Vec<u8>,
    items: usize,
    limit: usize,
    bytes_max: usize,
    /// The `?before=` of the page after this one: the last item's id or digest.
    last: Option<String>,
    /// Whether the list goes on past this page.
    more: bool,
    /// An item [`Page::take`] could not write, which ended the page.
    failed: Option<ApiError>,
}

impl Page {
    fn new(limit: usize, bytes_max: usize) -> Self {
        Self {
            json: b"[".to_vec(),
            items: 0,
            limit,
            bytes_max,
            last: None,
            more: false,
            failed: None,
        }
    }

    /// [`Page::push`] for a store's walk of its rows, which goes on while it is told
    /// `Continue`: an item that cannot be written ends the walk, kept in `failed`.
    fn take(&mut self, cursor: impl std::fmt::Display, item: &impl Serialize) -> ControlFlow<()> {
        self.push(cursor, item).unwrap_or_else(|e| {
            self.failed = Some(e);
            ControlFlow::Break(())
        })
    }

    /// The item after those taken, named `cursor` in a `?before=`: taken unless the page
    /// holds `limit` items already or would pass its bytes with it, in which case the list
    /// goes on past this page and the page is done (`Break`). An item that cannot be
    /// written as JSON (none can fail: no map with other keys than strings) is an error.
    fn push(
        &mut self,
        cursor: impl std::fmt::Display,
        item: &impl Serialize,
    ) -> Result<ControlFlow<()>, ApiError> {
        if self.items >= self.limit {
            self.more = true;
            return Ok(ControlFlow::Break(()));
        }
        let item = serde_json::to_vec(item).map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("a list's item: {e}"),
            )
        })?;
        // A comma before it, and the closing bracket still to come.
        let bytes = self.json.len() + 1 + item.len() + 1;
        if self.items > 0 && bytes > self.bytes_max {
            self.more = true;
            return Ok(ControlFlow::Break(()));
        }
        if self.items > 0 {
            self.json.push(b',');
        }
        self.json.extend_from_slice(&item);
        self.items += 1;
        self.last = Some(cursor.to_string());
        Ok(ControlFlow::Continue(()))
    }

    /// The answer: the JSON array, with `Link: <PATH?QUERY&before=LAST>; rel="next"` when
    /// the list goes on, `query` being the request's own parameters but `before`.
    fn answer(mut self, path: &str, mut query: Vec<String>) -> Response {
        self.json.push(b']');
        // Growing by doubling may have reserved up to twice the page: held no longer than
        // it is built.
        self.json.shrink_to_fit();
        let mut answer = (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.json,
        )
            .into_response();
        if let (true, Some(last)) = (self.more, self.last) {
            query.push(format!("before={last}"));
            let link = format!("<{path}?{}>; rel=\"next\"", query.join("&"));
            // A path, digits, hex digits, `=`, `&`: always a header value.
            if let Ok(link) = HeaderValue::from_str(&link) {
                answer.headers_mut().insert(header::LINK, link);
            }
        }
        answer
    }
}

/// A list's own parameters, but its cursor, to repeat in its next page's `Link`: its
/// `limit` if given (as capped), and `unacknowledged=true` if asked.
fn page_query(limit: Option<usize>, unacknowledged: bool) -> Vec<String> {
    let mut query = Vec::new();
    if let Some(limit) = limit {
        query.push(format!("limit={}", limit.min(API_LIST_MAX)));
    }
    if unacknowledged {
        query.push("unacknowledged=true".to_owned());
    }
    query
}

/// Received messages, newest first, from the store's read-only connection: a snapshot,
/// without the store's lock, off the runtime ([`off_runtime`]), a [`Page`] at a time.
async fn inbox(
    State(state): State<St>,
    Params(q): Params<InboxQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(API_LIST_MAX).min(API_LIST_MAX);
    let before = cursor(q.before.as_deref())?;
    let unacknowledged = q.unacknowledged;
    let references = q
        .references
        .as_deref()
        .map(|r| {
            r.parse::<MessageId>()
                .map_err(|e| bad("bad_id", format!("references: {e}")))
        })
        .transpose()?;
    let mut query = page_query(q.limit, unacknowledged);
    if let Some(r) = &references {
        query.push(format!("references={r}"));
    }
    let built = off_runtime(&state, move |state| {
        let Some(references) = references else {
            return list_page(limit, before.as_ref(), "received message", |n, out| {
                state
                    .reader()
                    .inbox_each(before.as_ref(), n, unacknowledged, |m| {
                        out.take(m.envelope.id, &inbox_item(m))
                    })
            });
        };
        // Answers to a message this node sent: any other id (one received, one unknown)
        // would list nothing, as if nobody had answered it.
        if !state.reader().sent(&references).map_err(store_error)? {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("references: no sent message {references}"),
            ));
        }
        list_page(limit, before.as_ref(), "received message", |n, out| {
            state
                .reader()
                .answers_each(&references, before.as_ref(), n, unacknowledged, |m| {
                    out.take(m.envelope.id, &inbox_item(m))
                })
        })
    });
    Ok(built.await??.answer("/v1/inbox", query))
}

/// Deliveries held in quarantine, newest first, a page at a time as the other lists: each
/// one's digest, when it arrived, why it is held, and what its bytes claim (sender, id,
/// subject…) if they decode. The claim is **unverified** (that is why it is held) and must
/// not be shown as a message. Read as the other lists are, in a snapshot without the
/// store's lock, off the runtime, a delivery at a time.
async fn quarantine(
    State(state): State<St>,
    Params(q): Params<QuarantineQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(API_LIST_MAX).min(API_LIST_MAX);
    let before = q
        .before
        .as_deref()
        .map(|b| digest(b, "before: "))
        .transpose()?;
    let built = off_runtime(&state, move |state| {
        // A delivery at a time, each up to `ENVELOPE_BYTES_MAX` whole: read together, a
        // page's 1,001 were up to the quarantine's 64 MiB, though their items are small
        // (what the bytes claim, not their body).
        list_page(
            limit,
            before.as_ref(),
            "delivery held in quarantine under",
            |n, out| {
                state.reader().quarantine_each(before.as_ref(), n, |h| {
                    out.take(h.digest, &quarantine_item(h))
                })
            },
        )
    });
    Ok(built
        .await??
        .answer("/v1/quarantine", page_query(q.limit, false)))
}

/// A delivery held in quarantine as its list shows it ([`quarantine`]).
fn quarantine_item(h: crate::store::Quarantined) -> Value {
    let claimed = h.signed.decode_unverified().ok().map(|e| {
        json!({
            "id": e.id,
            "from": e.sender,
            "precedence": e.precedence,
            "status": e.status,
            "subject": e.subject,
            "created_at_ms": e.created_at_ms,
        })
    });
    json!({
        "digest": h.digest.to_string(),
        "received_at_ms": h.received_at_ms,
        "reason": h.reason,
        "unverified_claim": claimed,
    })
}

/// `POST /v1/quarantine/{digest}/discard` and `POST /v1/quarantine/discard-all` body: the
/// officer who decided.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscardRequest {
    officer: String,
}

impl DiscardRequest {
    /// The officer's name, trimmed, or a 400 `invalid`.
    fn officer(&self) -> Result<&str, ApiError> {
        officer_name(&self.officer)
    }
}

/// An officer's name as given to the API (`ack`, `discard`), trimmed of the spaces around
/// it, or a 400 `invalid` when nothing or too much is left. The one place the API checks
/// it: an acknowledgement used to sign and journal the name with its stray spaces, and to
/// refuse a name of spaces alone in other words than a discard did.
fn officer_name(given: &str) -> Result<&str, ApiError> {
    let officer = given.trim();
    let max = hotline_proto::limits::OFFICER_BYTES_MAX;
    if officer.is_empty() || officer.len() > max {
        return Err(bad("invalid", format!("officer: 1 to {max} bytes")));
    }
    // Signed and shown as who acknowledged: a name nobody can see (a NUL, zero-width
    // spaces) names nobody, and an acknowledgement cannot be made again.
    if !visible(officer) {
        return Err(bad("invalid", "officer: it holds no visible character"));
    }
    Ok(officer)
}

/// Whether `text` holds a character a reader can see: not only white space, control
/// characters and the characters Unicode has a display ignore (Default_Ignorable_Code_Point:
/// the soft hyphen, zero-width spaces and joiners, the bidirectional controls, the
/// byte-order mark, variation selectors, tags). A subject, a category or an officer's name
/// of those alone shows as nothing, or as nothing but the CLI's escapes (and a note of them
/// is taken as none).
fn visible(text: &str) -> bool {
    let unseen = |c: char| {
        c.is_whitespace()
            || c.is_control()
            || matches!(
                c,
                '\u{00AD}'
                    | '\u{034F}'
                    | '\u{061C}'
                    | '\u{115F}'..='\u{1160}'
                    | '\u{17B4}'..='\u{17B5}'
                    | '\u{180B}'..='\u{180F}'
                    | '\u{200B}'..='\u{200F}'
                    | '\u{202A}'..='\u{202E}'
                    | '\u{2060}'..='\u{206F}'
                    | '\u{3164}'
                    | '\u{FE00}'..='\u{FE0F}'
                    | '\u{FEFF}'
                    | '\u{FFA0}'
                    | '\u{FFF0}'..='\u{FFF8}'
                    | '\u{1BCA0}'..='\u{1BCA3}'
                    | '\u{1D173}'..='\u{1D17A}'
                    | '\u{E0000}'..='\u{E0FFF}'
            )
    };
    text.chars().any(|c| !unseen(c))
}

/// Discards one quarantined delivery (the quarantine is full, or its content was looked at
/// and is not wanted), journaled with the officer's name. A genuine message held only because
/// this node's roster did not list its sender yet is gone with it: the relay dropped it
/// when this node receipted it.
async fn discard(
    State(state): State<St>,
    Segment(given): Segment,
    Params(NoQuery {}): Params<NoQuery>,
    Body(req): Body<DiscardRequest>,
) -> Result<Json<Value>, ApiError> {
    let d = digest(&given, "")?;
    let officer = req.officer()?.to_owned();
    off_runtime(&state, move |state| discard_one(state, d, &officer)).await?
}

/// Discards the delivery held under `d` for `officer`, logs it and tells the links of the
/// room made: the answer to a discard. Off the runtime ([`off_runtime`]).
fn discard_one(
    state: &NodeState,
    d: hotline_proto::Digest,
    officer: &str,
) -> Result<Json<Value>, ApiError> {
    let n = state
        .store()
        .discard_quarantined(Some(&d), officer, now_ms(), 1)
        .map_err(store_error)?;
    if n == 0 {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("nothing quarantined under {d}"),
        ));
    }
    warn!(digest = %d, officer = ?officer, "quarantined delivery discarded");
    state.quarantine_room.send_modify(|n| *n += 1);
    Ok(Json(json!({"discarded": 1, "digest": d.to_string()})))
}

/// Discards what the quarantine holds when asked, oldest first, `QUARANTINE_DISCARD_BATCH`
/// at a time so that deliveries are stored in between; what arrives meanwhile stays (a relay
/// delivering forgeries would otherwise keep the request going). Answers how many were
/// discarded. A batch that fails after others were committed (a full disk) ends it: those
/// committed stay discarded, so the links are told of the room made and the refusal says
/// how many were (the store's error alone said that nothing was written).
///
/// The batches run off the runtime in a task of their own ([`off_runtime`]), which the
/// request waits for: a client that goes away midway (a 64 MiB quarantine of small
/// forgeries is a hundred batches or more, and a client may time out) has hyper drop the
/// handler, which stopped the loop at its next batch with what it had discarded neither
/// logged nor told to the links.
async fn discard_all(
    State(state): State<St>,
    Params(NoQuery {}): Params<NoQuery>,
    Body(req): Body<DiscardRequest>,
) -> Result<Json<Value>, ApiError> {
    let officer = req.officer()?.to_owned();
    let (total, failed) =
        off_runtime(&state, move |state| discard_batches(state, &officer)).await?;
    let Some(e) = failed else {
        return Ok(Json(json!({"discarded": total})));
    };
    let mut refusal = store_error(e);
    if total > 0 {
        refusal.2 = format!(
            "{total} discarded (each journaled) before the store failed; the rest are kept: {}",
            refusal.2
        );
    }
    Err(refusal)
}

/// [`discard_all`]'s batches: how many were discarded, and the store's error if a batch
/// failed. Logs what was discarded and tells the links of the room made.
fn discard_batches(state: &NodeState, officer: &str) -> (u64, Option<hotline_store::StoreError>) {
    let held = state.store().quarantine_size().0.held;
    let mut total = 0u64;
    let mut failed = None;
    let mut stopping = false;
    while total < held {
        // The node is stopping: the rest stay held, rather than the task outliving it.
        if *state.shutdown.borrow() {
            stopping = true;
            break;
        }
        let batch = QUARANTINE_DISCARD_BATCH.min((held - total) as usize);
        let n = match state
            .store()
            .discard_quarantined(None, officer, now_ms(), batch)
        {
            Ok(n) => n,
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        total += n;
        if n == 0 {
            break;
        }
    }
    if stopping {
        warn!(discarded = total, officer = ?officer, "quarantine partly emptied: the node is stopping");
    } else if failed.is_none() {
        warn!(discarded = total, officer = ?officer, "quarantine emptied");
    } else if total > 0 {
        warn!(discarded = total, officer = ?officer, "quarantine partly emptied");
    }
    if total > 0 || failed.is_none() {
        state.quarantine_room.send_modify(|n| *n += 1);
    }
    (total, failed)
}

/// Sent messages, newest first, each with its matrix and answers, from the store's
/// read-only connection: one snapshot, read without the store's lock (up to 1,000 messages
/// of three queries each, which the links' writes waited behind), off the runtime.
async fn sent_list(
    State(state): State<St>,
    Params(q): Params<SentQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(API_LIST_MAX).min(API_LIST_MAX);
    let before = cursor(q.before.as_deref())?;
    let built = off_runtime(&state, move |state| {
        let now = now_ms();
        list_page(limit, before.as_ref(), "sent message", |n, out| {
            state.reader().sent_each(before.as_ref(), n, |s| {
                out.take(s.envelope.id, &sent_view(s, now))
            })
        })
    });
    Ok(built
        .await??
        .answer("/v1/messages", page_query(q.limit, false)))
}

async fn show(
    State(state): State<St>,
    Segment(id): Segment,
    Params(NoQuery {}): Params<NoQuery>,
) -> Result<Json<Value>, ApiError> {
    let id: MessageId = id
        .parse()
        .map_err(|e: hotline_proto::IdError| bad("bad_id", e.to_string()))?;
    off_runtime(&state, move |state| {
        let store = state.store();
        if let Some(s) = store.sent_message(&id).map_err(store_error)? {
            return Ok(Json(sent_view(s, now_ms())));
        }
        if let Some(m) = store.inbox_message(&id).map_err(store_error)? {
            let mut v = serde_json::to_value(inbox_item(m)).map_err(|e| {
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
            v["direction"] = json!("received");
            return Ok(Json(v));
        }
        Err(ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no message {id}"),
        ))
    })
    .await?
}

/// `POST /v1/messages/{id}/reply` body: what differs from the message answered.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyRequest {
    /// Body.
    #[serde(default)]
    pub body: String,
    /// Subject (default: "Re: " and the message's subject).
    pub subject: Option<String>,
    /// Precedence (default: the message's).
    pub precedence: Option<Precedence>,
    /// Respond-by, ms since the epoch.
    pub respond_by_ms: Option<u64>,
    /// Respond within this many ms from now (alternative to `respond_by_ms`).
    pub respond_within_ms: Option<u64>,
}

/// Answers a received message: a new message to its sender alone, kind `reply`, referencing
/// it (which lets an observer answer a member who wrote to it), with its category and its
/// status (a reply to exercise or test traffic is exercise or test traffic too, not a
/// choice, so that a drill's answer is never sent as real), and unless given its precedence
/// and its subject after "Re: ". Otherwise as `POST /v1/messages`.
async fn reply(
    State(state): State<St>,
    Segment(id): Segment,
    Params(NoQuery {}): Params<NoQuery>,
    headers: HeaderMap,
    Body(req): Body<ReplyRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id: MessageId = id
        .parse()
        .map_err(|e: hotline_proto::IdError| bad("bad_id", e.to_string()))?;
    let key = idempotency_key(&headers)?;
    let (received, sent) = off_runtime(&state, move |state| {
        let store = state.store();
        let received = store.inbox_message(&id).map_err(store_error)?;
        let sent = received.is_none() && store.sent_message(&id).map_err(store_error)?.is_some();
        Ok::<_, ApiError>((received, sent))
    })
    .await??;
    let Some(m) = received else {
        if sent {
            return Err(bad(
                "not_received",
                format!("{id} is a message this node sent, not one it received: follow it up with a new message referencing it"),
            ));
        }
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no received message {id}"),
        ));
    };
    let e = m.envelope;
    let send_req = SendRequest {
        to: vec![e.sender.to_string()],
        group: None,
        all_members: false,
        everyone: false,
        kind: Some(Kind::Reply),
        precedence: Some(req.precedence.unwrap_or(e.precedence)),
        status: Some(e.status),
        category: e.category,
        respond_by_ms: req.respond_by_ms,
        respond_within_ms: req.respond_within_ms,
        references: vec![id.to_string()],
        subject: req.subject.unwrap_or_else(|| reply_subject(&e.subject)),
        body: req.body,
    };
    submit(state, send_req, key, Some(id)).await
}

/// The subject of a reply to a message with `subject`: "Re: " and the subject (once: a reply
/// to a reply keeps one), cut at a character boundary to `SUBJECT_BYTES_MAX`.
fn reply_subject(subject: &str) -> String {
    let mut s = if subject.starts_with("Re: ") {
        subject.to_owned()
    } else {
        format!("Re: {subject}")
    };
    let max = hotline_proto::limits::SUBJECT_BYTES_MAX;
    if s.len() > max {
        let cut = (0..=max)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        s.truncate(cut);
    }
    s
}

/// `POST /v1/messages/{id}/ack` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckRequest {
    officer: String,
    note: Option<String>,
}

async fn ack(
    State(state): State<St>,
    Segment(id): Segment,
    Params(NoQuery {}): Params<NoQuery>,
    Body(req): Body<AckRequest>,
) -> Result<Json<Value>, ApiError> {
    let id: MessageId = id
        .parse()
        .map_err(|e: hotline_proto::IdError| bad("bad_id", e.to_string()))?;
    let officer = officer_name(&req.officer)?.to_owned();
    // A note is optional: one with nothing to see in it (empty, spaces, invisible
    // characters) is no note, rather than one signed and shown to the sender saying
    // nothing. Not refused: an acknowledgement is not to be held up for its note.
    let note = req.note.filter(|n| visible(n));
    off_runtime(&state, move |state| acknowledge(state, id, &officer, note)).await?
}

/// Acknowledges received message `id` for `officer`, with `note`, wakes the links, logs it
/// and tells the event stream: the answer to an acknowledgement. Off the runtime
/// ([`off_runtime`]).
fn acknowledge(
    state: &NodeState,
    id: MessageId,
    officer: &str,
    note: Option<String>,
) -> Result<Json<Value>, ApiError> {
    let relays = state.config.relays.len();
    let result =
        state
            .store()
            .acknowledge(&state.me, &state.key, &id, officer, note, relays, now_ms());
    match result.map_err(store_error)? {
        Err(e) => Err(bad("invalid", e.to_string())),
        Ok(AckOutcome::NotFound) => Err(ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no received message {id}"),
        )),
        Ok(AckOutcome::Already(at, by)) => Err(ApiError(
            StatusCode::CONFLICT,
            "already_acknowledged",
            match (by.as_str(), hotline_config::utc::format_utc(at)) {
                ("", at) => format!("already acknowledged at {at}"),
                (by, at) => format!("already acknowledged by {by} at {at}"),
            },
        )),
        Ok(AckOutcome::Acked { receipt: r, status }) => {
            state.wake_links();
            info!(msg = %id, status = ?status, officer = ?officer, "acknowledged");
            state.emit(crate::events::Event::AckSent {
                id,
                status,
                officer: officer.to_owned(),
            });
            Ok(Json(
                json!({"id": id, "acknowledged": true, "receipt": r.digest().to_string(), "relays_connected": state.relays_connected()}),
            ))
        }
    }
}

async fn status(
    State(state): State<St>,
    Params(NoQuery {}): Params<NoQuery>,
) -> Result<Json<Value>, ApiError> {
    off_runtime(&state, node_status).await?
}

/// `GET /v1/status`'s answer, off the runtime ([`off_runtime`]): it reads the store.
fn node_status(state: &NodeState) -> Result<Json<Value>, ApiError> {
    let (outbox, (quarantine, quarantine_full), acks_pending) = {
        let store = state.store();
        (
            store.outbox_len().map_err(store_error)?,
            store.quarantine_size(),
            store.pending_receipt_counts().map_err(store_error)?,
        )
    };
    let relays: Vec<Value> = state
        .config
        .relays
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut v = relay_status(&r.address.to_string(), state.link(i));
            v["acks_pending"] = json!(acks_pending.get(&i).copied().unwrap_or(0));
            v
        })
        .collect();
    Ok(Json(json!({
        "participant": state.me,
        "roster_version": state.roster.borrow().version,
        "relays": relays,
        "relays_connected": state.relays_connected(),
        "outbox": outbox,
        "quarantined": quarantine.held,
        "quarantine_bytes": quarantine.bytes,
        "quarantine_full": quarantine_full,
    })))
}

/// One relay's entry in `/v1/status`: whether its link is up and, while it is, how the link
/// fares (QUIC's own figures for the connection: its smoothed round-trip time, and the
/// packets it has sent and declared lost since it was made); while it is down, why, and
/// whether that is a lasting refusal (`refused`, as in a send's `refused_by`).
fn relay_status(address: &str, link: crate::Link) -> Value {
    match link {
        crate::Link::Down(d) => json!({"address": address, "connected": false,
            "connected_since_ms": null, "rtt_ms": null, "packets_sent": null,
            "packets_lost": null, "down_since_ms": d.since_ms, "last_error": d.error,
            "failed_attempts": d.failed_attempts,
            "refused": d.refused.map(|r| json!({"code": r.code.name(), "reason": r.reason}))}),
        crate::Link::Up(up) => {
            let path = up.conn.stats().path;
            let rtt_ms = (up.conn.rtt().as_micros() as f64 / 100.0).round() / 10.0;
            json!({"address": address, "connected": true, "connected_since_ms": up.since_ms,
                "rtt_ms": rtt_ms, "packets_sent": path.sent_packets,
                "packets_lost": path.lost_packets, "down_since_ms": null, "last_error": null,
                "failed_attempts": 0, "refused": null})
        }
    }
}

async fn events(
    State(state): State<St>,
    Params(NoQuery {}): Params<NoQuery>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let rx = state.events.subscribe();
    // Subscribed first: what the node emitted before its API listened comes first, then
    // everything since, neither twice nor with a gap between.
    let early = state.early_events();
    let lagged =
        (early.missed > 0).then(|| json!({"type": "lagged", "missed": early.missed}).to_string());
    // Serialized as they are sent, from the node's one copy.
    let kept = early.events;
    let early = lagged
        .into_iter()
        .chain(
            (0..kept.len())
                .map(move |i| serde_json::to_string(&kept[i]).unwrap_or_else(|_| "{}".into())),
        )
        .map(|data| Ok(SseEvent::default().data(data)));
    let shutdown = state.shutdown.clone();
    let stream =
        futures_util::stream::unfold((rx, shutdown), |(mut rx, mut shutdown)| async move {
            let next = tokio::select! {
                // The node is stopping: end the stream, or the server's graceful shutdown would
                // wait for every follower (`hotline watch`) until the tasks are aborted.
                _ = shutdown.wait_for(|v| *v) => return None,
                r = rx.recv() => r,
            };
            let data = match next {
                Ok(ev) => serde_json::to_string(&ev).unwrap_or_else(|_| "{}".into()),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    json!({"type": "lagged", "missed": n}).to_string()
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            Some((Ok(SseEvent::default().data(data)), (rx, shutdown)))
        });
    let stream = futures_util::StreamExt::chain(futures_util::stream::iter(early), stream);
    Ok(
        Sse::new(stream).keep_alive(KeepAlive::new().interval(std::time::Duration::from_millis(
            crate::limits::EVENTS_KEEPALIVE_MS,
        ))),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn refused(relay: usize, code: RefusalCode, reason: &str) -> RefusedBy {
        RefusedBy {
            relay,
            address: format!("192.0.2.{relay}:7400"),
            refusal: crate::RelayRefusal {
                code,
                reason: reason.into(),
            },
        }
    }

    #[test]
    fn a_recipients_receipt_shows_the_message_was_taken_before_the_acceptance_arrives() {
        let c = |delivered, acked, overdue| Counts {
            total: 2,
            delivered,
            acked,
            overdue,
        };
        assert_eq!(sent_state(false, false, c(0, 0, 0)), "queued");
        assert_eq!(sent_state(true, false, c(0, 0, 0)), "rejected");
        assert_eq!(sent_state(true, true, c(0, 0, 0)), "accepted");
        assert_eq!(sent_state(false, true, c(1, 0, 0)), "accepted");
        assert_eq!(sent_state(false, true, c(2, 0, 0)), "delivered");
        assert_eq!(sent_state(false, true, c(2, 1, 1)), "overdue");
        assert_eq!(sent_state(false, true, c(2, 2, 0)), "acknowledged");
        // No acceptance here yet, but the recipients' receipts say a relay took it.
        assert_eq!(sent_state(false, false, c(1, 0, 0)), "accepted");
        assert_eq!(sent_state(false, false, c(2, 0, 0)), "delivered");
        assert_eq!(sent_state(false, false, c(2, 2, 0)), "acknowledged");
        assert_eq!(sent_state(true, false, c(2, 2, 0)), "acknowledged");
        // No recipients (an empty audience) never counts as acknowledged by all.
        let none = Counts {
            total: 0,
            delivered: 0,
            acked: 0,
            overdue: 0,
        };
        assert_eq!(sent_state(false, true, none), "accepted");
    }

    #[test]
    fn a_message_no_relay_will_take_says_so() {
        let revoked = [refused(0, RefusalCode::Revoked, "KAZ is revoked")];
        let o = outlook(0, 1, &revoked, None);
        assert!(o.blocked);
        assert_eq!(
            o.note,
            "no relay will take it: relay 0 (192.0.2.0:7400) refused this node: Revoked (KAZ is \
             revoked). This participant or its key is revoked on the roster, or its key is not \
             (yet) listed (OPERATIONS.md 4.5; 4.4 for a key rotation). The message stays in the \
             outbox and leaves only once this is put right; meanwhile, use another channel"
        );
        // Every relay must refuse: another, merely unreachable, may take it when it is back.
        let o = outlook(0, 2, &revoked, None);
        assert!(!o.blocked);
        assert_eq!(
            o.note,
            "no relay reachable: the message is queued and will be sent when one is; relay 0 \
             (192.0.2.0:7400) refused this node: Revoked (KAZ is revoked)"
        );
        let both = [
            refused(0, RefusalCode::Revoked, "KAZ is revoked"),
            refused(1, RefusalCode::UnknownParticipant, ""),
        ];
        let o = outlook(0, 2, &both, None);
        assert!(o.blocked);
        assert!(
            o.note.contains(
                "Revoked (KAZ is revoked); relay 1 (192.0.2.1:7400) refused this node: \
                 UnknownParticipant. This participant or its key is revoked"
            ) && o.note.contains("This participant is not on the roster"),
            "{}",
            o.note
        );
        // A relay connected takes it, whatever the others say.
        let o = outlook(1, 2, &revoked, None);
        assert!(!o.blocked);
        assert_eq!(o.note, "sent to the relay; waiting for acceptance");
        // No relay connected, none refused, and the node's own roster lists it: it waits.
        let o = outlook(0, 1, &[], None);
        assert!(!o.blocked);
        assert_eq!(
            o.note,
            "no relay reachable: the message is queued and will be sent when one is"
        );
    }

    /// A relay of another protocol version, one that cannot verify this node's log-in, and
    /// one whose certificate is not the pinned one refuse the node as lastingly as a
    /// revocation: with every relay refused so, nothing leaves, and the note says why and
    /// what to do for each.
    #[test]
    fn lasting_refusals_other_than_the_rosters_block_too() {
        let version = [refused(
            0,
            RefusalCode::UnsupportedVersion,
            "unsupported protocol version",
        )];
        let o = outlook(0, 1, &version, None);
        assert!(o.blocked);
        assert_eq!(
            o.note,
            "no relay will take it: relay 0 (192.0.2.0:7400) refused this node: \
             UnsupportedVersion (unsupported protocol version). This node and relay 0 speak \
             different protocol versions: upgrade the older (OPERATIONS.md 8.1, 8.2). The \
             message stays in the outbox and leaves only once this is put right; meanwhile, \
             use another channel"
        );

        let auth = [refused(
            0,
            RefusalCode::AuthFailed,
            "authentication proof: bad signature",
        )];
        let o = outlook(0, 1, &auth, None);
        assert!(o.blocked);
        assert!(
            o.note.starts_with(
                "no relay will take it: relay 0 (192.0.2.0:7400) refused this node: AuthFailed \
                 (authentication proof: bad signature). Relay 0 could not verify this node's \
                 log-in proof"
            ),
            "{}",
            o.note
        );
        assert!(o.note.contains("OPERATIONS.md 8.2"), "{}", o.note);

        let fp = "ab".repeat(32);
        let reason = format!("relay certificate {fp} does not match the pinned fingerprint");
        let pin = [refused(0, RefusalCode::PinMismatch, &reason)];
        let o = outlook(0, 1, &pin, None);
        assert!(o.blocked);
        assert_eq!(
            o.note,
            format!(
                "no relay will take it: this node refused relay 0 (192.0.2.0:7400): PinMismatch \
                 ({reason}). The certificate of relay 0 does not match the fingerprint pinned \
                 in this node's configuration (`fingerprint` in its `[[relays]]` table): \
                 compare with `hotline relay fingerprint` on the relay; its certificate may have \
                 been rotated (OPERATIONS.md section 5), or something else answers at its \
                 address. The message stays in the outbox and leaves only once this is put \
                 right; meanwhile, use another channel"
            )
        );

        // Two relays, each refused for its own reason: one hint each, in a fixed order.
        let mixed = [
            refused(0, RefusalCode::PinMismatch, &reason),
            refused(1, RefusalCode::UnsupportedVersion, ""),
        ];
        let o = outlook(0, 2, &mixed, None);
        assert!(o.blocked);
        let (v, p) = (
            o.note.find("This node and relay 1 speak").unwrap(),
            o.note.find("The certificate of relay 0 does not").unwrap(),
        );
        assert!(v < p, "{}", o.note);
        // The same refusal of several relays is one hint naming them all.
        let pins = [
            refused(0, RefusalCode::PinMismatch, &reason),
            refused(1, RefusalCode::PinMismatch, &reason),
            refused(2, RefusalCode::PinMismatch, &reason),
        ];
        let o = outlook(0, 3, &pins, None);
        assert!(
            o.note.contains(
                "The certificates of relays 0, 1 and 2 do not match the fingerprints pinned"
            ),
            "{}",
            o.note
        );
        assert_eq!(o.note.matches("The certificate").count(), 1, "{}", o.note);

        // Another relay merely unreachable may take it when it is back.
        let o = outlook(0, 2, &pin, None);
        assert!(!o.blocked);
        assert_eq!(
            o.note,
            format!(
                "no relay reachable: the message is queued and will be sent when one is; this \
                 node refused relay 0 (192.0.2.0:7400): PinMismatch ({reason})"
            )
        );
    }

    #[test]
    fn the_nodes_own_roster_may_say_no_relay_will_take_it() {
        use hotline_proto::{Participant, PublicKey, Role, Roster, SigningKey};
        let me = ParticipantId::new("KAZ").unwrap();
        let (key, other) = (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        );
        let mut roster = Roster {
            protocol_version: hotline_proto::PROTOCOL_VERSION,
            version: 4,
            issued_at_ms: 1,
            network: "CICA".into(),
            participants: vec![Participant {
                id: me.clone(),
                name: "Kazakhstan".into(),
                role: Role::Member,
                keys: vec![PublicKey::of(&key)],
                revoked: false,
            }],
            groups: vec![],
        };
        let mine = PublicKey::of(&key);
        assert_eq!(own_roster_refusal(&roster, &me, &mine), None);
        let stale = own_roster_refusal(&roster, &me, &PublicKey::of(&other)).unwrap();
        assert_eq!(stale.0, RefusalCode::Revoked);
        assert!(
            stale
                .1
                .starts_with("this node's roster (version 4) does not list its key "),
            "{}",
            stale.1
        );
        roster.participants[0].revoked = true;
        let revoked = own_roster_refusal(&roster, &me, &mine).unwrap();
        assert_eq!(
            revoked,
            (
                RefusalCode::Revoked,
                "this node's roster (version 4) marks KAZ revoked".to_owned()
            )
        );
        // Even with no relay's answer yet (still connecting), the send says so.
        let o = outlook(0, 1, &[], Some(&revoked));
        assert!(o.blocked);
        assert!(
            o.note.starts_with(
                "no relay will take it: this node's roster (version 4) marks KAZ revoked. This \
                 participant or its key is revoked"
            ),
            "{}",
            o.note
        );
        roster.participants.clear();
        let unknown = own_roster_refusal(&roster, &me, &mine).unwrap();
        assert_eq!(unknown.0, RefusalCode::UnknownParticipant);
        assert_eq!(unknown.1, "KAZ is not on this node's roster (version 4)");
    }

    #[test]
    fn a_reply_subject_says_re_once_and_fits_the_protocol() {
        assert_eq!(reply_subject("Border incident"), "Re: Border incident");
        assert_eq!(reply_subject("Re: Border incident"), "Re: Border incident");
        let max = hotline_proto::limits::SUBJECT_BYTES_MAX;
        // Two-byte characters: the cut falls inside one and moves back to its start.
        let long = "é".repeat(max / 2);
        let s = reply_subject(&long);
        assert!(s.len() <= max && s.len() >= max - 1, "{}", s.len());
        assert!(s.starts_with("Re: é"));
    }

    #[test]
    fn the_bearer_schemes_name_is_matched_whatever_its_case() {
        for (header, token) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc", Some("abc")),
            ("Basic abc", None),
            ("Bearerabc", None),
            ("abc", None),
            ("Bearer ", Some("")),
        ] {
            assert_eq!(bearer_token(header), token, "{header:?}");
        }
    }

    #[test]
    fn a_logged_reason_keeps_serdes_words_and_our_names_but_not_the_requests_values() {
        let prefix = "Failed to deserialize the JSON body into the target type: ";
        let cases = [
            (
                r#"to: invalid type: string "KGZ", expected a sequence at line 1 column 11"#,
                r#"to: invalid type: string "…", expected a sequence at line 1 column 11"#,
            ),
            (
                r#"to[0]: invalid type: string "a\"b\\", expected a participant id"#,
                r#"to[0]: invalid type: string "…", expected a participant id"#,
            ),
            (
                "kind: unknown variant `bo`gus`, expected one of `alert`, `update`",
                "kind: unknown variant `…",
            ),
            (
                "my secret: unknown field `my secret`, expected `officer` or `note` at line 1",
                "…: unknown field `…",
            ),
            (
                "respond_by_ms: invalid type: floating point `1.5`, expected u64",
                "respond_by_ms: invalid type: floating point `…",
            ),
            (
                "respond_within_ms: invalid value: integer `-5`, expected u64",
                "respond_within_ms: invalid value: integer `…",
            ),
            (
                "missing field `subject` at line 1 column 14",
                "missing field `subject` at line 1 column 14",
            ),
            ("duplicate field `limit`", "duplicate field `limit`"),
            (
                r#"message id "zz" must be 32 hexadecimal digits"#,
                r#"message id "…" must be 32 hexadecimal digits"#,
            ),
        ];
        for (given, logged) in cases {
            assert_eq!(without_quoted(given), logged);
            let prefixed = if logged.starts_with("…: unknown field") {
                logged.to_owned()
            } else {
                format!("{prefix}{logged}")
            };
            assert_eq!(without_quoted(&format!("{prefix}{given}")), prefixed);
        }
        assert_eq!(
            without_quoted("x: y: unknown field `x: y`"),
            "…: unknown field `…",
            "no prefix before the path"
        );
    }

    /// A `tracing` writer that keeps what is written, for a test to read.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    impl Captured {
        /// The `fields` of each JSON log line whose message is `message`.
        fn lines(&self, message: &str) -> Vec<Value> {
            let text = String::from_utf8(self.0.lock().expect("log buffer").clone()).unwrap();
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .filter(|v| v["fields"]["message"] == message)
                .map(|v| v["fields"].clone())
                .collect()
        }
    }

    /// Captures this thread's log as JSON lines until the guard is dropped. The runtime of
    /// a `tokio::test` is its thread alone, so a server's tasks log there too.
    fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
        let logs = Captured::default();
        let guard = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .json()
                .with_writer(logs.clone())
                .finish(),
        );
        (logs, guard)
    }

    /// Serves `app` on a free loopback port: its base URL, and the server's task.
    async fn serve_on_loopback(
        app: Router,
    ) -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        (
            base,
            tokio::spawn(async move { axum::serve(listener, app).await }),
        )
    }

    /// A test state ([`crate::test_state`]) in a new directory, its API served on loopback:
    /// the directory (kept while the test runs), the state, the API's `http://ADDR`, and
    /// the serving task.
    async fn serve_test_state() -> (
        tempfile::TempDir,
        St,
        String,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::test_state(dir.path());
        let (base, server) = serve_on_loopback(router(state.clone())).await;
        (dir, state, base, server)
    }

    /// POSTs `body` as JSON, with the test state's token, from a blocking thread; the status
    /// and the answer's body.
    async fn post_json(url: String, body: String) -> (u16, String) {
        tokio::task::spawn_blocking(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(std::time::Duration::from_secs(10))
                .build();
            match agent
                .post(&url)
                .set("Content-Type", "application/json")
                .set("Authorization", "Bearer token")
                .send_string(&body)
            {
                Ok(r) => (r.status(), r.into_string().unwrap()),
                Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
                Err(e) => panic!("{url}: {e}"),
            }
        })
        .await
        .unwrap()
    }

    /// The lists of sent and received messages are read without the store's lock, which
    /// the links hold to store deliveries and receipts: a list of 1,000 sent messages held
    /// it across some 3,000 queries. Here the lock is held (as by a link's write) while
    /// both lists are asked for; they used to wait for it.
    #[tokio::test]
    async fn the_lists_are_read_without_the_stores_lock() {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::test_state(dir.path());
        let kgz = ParticipantId::new("KGZ").unwrap();
        let mut ids = Vec::new();
        for i in 0..3 {
            let draft = Draft::alert(std::slice::from_ref(&kgz), &format!("Notification {i}"));
            let signed = state
                .store()
                .compose(
                    &state.me,
                    &state.key,
                    draft,
                    std::slice::from_ref(&kgz),
                    1,
                    now_ms(),
                )
                .unwrap()
                .unwrap();
            ids.push(signed.decode_unverified().unwrap().id.to_string());
        }
        let held = state.store();
        let (tx, rx) = std::sync::mpsc::channel();
        let st = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let sent = rt.block_on(sent_list(
                State(st.clone()),
                Params(SentQuery {
                    limit: None,
                    before: None,
                }),
            ));
            let received = rt.block_on(inbox(
                State(st),
                Params(InboxQuery {
                    limit: None,
                    before: None,
                    unacknowledged: false,
                    references: None,
                }),
            ));
            // A list's answer, as JSON.
            let json = |answer: Response| -> Vec<Value> {
                let body = rt
                    .block_on(axum::body::to_bytes(answer.into_body(), usize::MAX))
                    .unwrap();
                serde_json::from_slice(&body).unwrap()
            };
            let _ = tx.send((
                sent.ok().map(|l| {
                    json(l)
                        .iter()
                        .map(|m| m["id"].to_string())
                        .collect::<Vec<_>>()
                }),
                received.ok().map(|l| json(l).len()),
            ));
        });
        let (sent, received) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("listed while the store's lock is held");
        drop(held);
        ids.reverse();
        let quoted: Vec<String> = ids.iter().map(|id| format!("{id:?}")).collect();
        assert_eq!(sent, Some(quoted), "newest first");
        assert_eq!(received, Some(0));
    }

    /// GETs `path` from the API served at `base`, with the test state's token, from a
    /// blocking thread: the status and the answer's body as JSON.
    async fn get_json(base: &str, path: &str) -> (u16, Value) {
        let url = format!("{base}{path}");
        tokio::task::spawn_blocking(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(std::time::Duration::from_secs(10))
                .build();
            let (status, body) = match agent.get(&url).set("Authorization", "Bearer token").call() {
                Ok(r) => (r.status(), r.into_string().unwrap()),
                Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
                Err(e) => panic!("{url}: {e}"),
            };
            let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body:?}"));
            (status, v)
        })
        .await
        .unwrap()
    }

    /// A list's query parameter that the node does not know (an operator's typo) is refused,
    /// by name: ignored, `?limt=1` gave a page of a thousand and `?befor=ID` the first page
    /// again, which read as the next. What the CLI and the harness send is still taken.
    #[tokio::test]
    async fn a_list_refuses_a_query_parameter_it_does_not_know_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (base, _server) = serve_on_loopback(router(crate::test_state(dir.path()))).await;
        let id = "0".repeat(32);
        for (path, name) in [
            ("/v1/inbox?limt=5".to_owned(), "limt"),
            (format!("/v1/inbox?unacknowledged=true&befor={id}"), "befor"),
            (format!("/v1/messages?limit=2&befor={id}"), "befor"),
            ("/v1/quarantine?lmit=1".to_owned(), "lmit"),
        ] {
            let (status, v) = get_json(&base, &path).await;
            assert_eq!(status, 400, "{path}: {v}");
            assert_eq!(v["code"], "unknown_parameter", "{path}: {v}");
            let error = v["error"].as_str().unwrap();
            assert!(error.contains(&format!("`{name}`")), "{path}: {error}");
        }
        for path in [
            "/v1/inbox?limit=5&unacknowledged=true",
            "/v1/inbox?unacknowledged=false",
            "/v1/messages?limit=5",
            "/v1/quarantine?limit=5",
        ] {
            let (status, v) = get_json(&base, path).await;
            assert_eq!(status, 200, "{path}: {v}");
        }
    }

    /// A list's `?limit=` is any whole number from 0 up (docs/API.md, Conventions), capped at
    /// a page's most: one past what a `usize` holds (`?limit=99999999999999999999`, a
    /// script's "all of them") was refused as malformed, `bad_request`. Not a whole number
    /// from 0 up, or given twice, it is still refused.
    #[tokio::test]
    async fn a_lists_limit_is_any_whole_number_from_0_up() {
        let dir = tempfile::tempdir().unwrap();
        let (base, _server) = serve_on_loopback(router(crate::test_state(dir.path()))).await;
        let huge = "9".repeat(40);
        for list in ["/v1/inbox", "/v1/messages", "/v1/quarantine"] {
            for limit in [huge.as_str(), "18446744073709551616", "1001", "0"] {
                let path = format!("{list}?limit={limit}");
                let (status, v) = get_json(&base, &path).await;
                assert_eq!(status, 200, "{path}: {v}");
                assert_eq!(v, json!([]), "{path}");
            }
            for (query, name) in [
                ("limit=-1", "limit"),
                ("limit=1.5", "limit"),
                ("limit=", "limit"),
                ("limit=5&limit=6", "duplicate field `limit`"),
            ] {
                let path = format!("{list}?{query}");
                let (status, v) = get_json(&base, &path).await;
                assert_eq!(status, 400, "{path}: {v}");
                assert_eq!(v["code"], "bad_request", "{path}: {v}");
                assert!(v["error"].as_str().unwrap().contains(name), "{path}: {v}");
            }
        }
    }

    /// A body is taken under any JSON content type (docs/API.md, Conventions: with a charset,
    /// in upper case, `application/…+json`) and refused, `bad_request`, under none or
    /// another, before anything is stored.
    #[tokio::test]
    async fn a_body_is_taken_under_a_json_content_type_only() {
        let (_dir, state, base, _server) = serve_test_state().await;
        let send = |content_type: Option<&'static str>| {
            let url = format!("{base}/v1/messages");
            tokio::task::spawn_blocking(move || {
                let mut r = ureq::post(&url).set("Authorization", "Bearer token");
                if let Some(t) = content_type {
                    r = r.set("Content-Type", t);
                }
                match r.send_string(r#"{"to":["KGZ"],"subject":"Test"}"#) {
                    Ok(r) => (r.status(), r.into_string().unwrap()),
                    Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
                    Err(e) => panic!("{e}"),
                }
            })
        };
        for t in [
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
            "application/problem+json",
        ] {
            let (status, answer) = send(Some(t)).await.unwrap();
            assert_eq!(status, 201, "{t}: {answer}");
        }
        for t in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
        ] {
            let (status, answer) = send(t).await.unwrap();
            assert_eq!(status, 400, "{t:?}: {answer}");
            let v: Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(v["code"], "bad_request", "{t:?}: {v}");
            assert!(v["error"].as_str().unwrap().contains("Content-Type"), "{v}");
        }
        assert_eq!(state.store().outbox_len().unwrap(), 4);
    }

    /// A subject, or an officer's name, with no character a reader can see is refused, as
    /// one of spaces alone is: a subject of a NUL, of zero-width spaces or of bidirectional
    /// controls was sent (and an acknowledgement signed "by" such a name, which the sender
    /// cannot tell from none, and which cannot be made again), though the refusal of spaces
    /// alone already said "it holds no visible character". Such characters among visible
    /// ones are the sender's to choose, and are taken.
    #[tokio::test]
    async fn a_subject_or_officer_with_no_visible_character_is_refused() {
        let (_dir, state, base, _server) = serve_test_state().await;
        let invisible = [
            r"\u0000",
            r"\u200b",
            r"\u202e\u202c",
            r" \u2066\u2069 ",
            r"\ufeff",
            r"\u00ad\u200d\u0009",
            r"\u001b",
        ];
        for subject in invisible {
            let body = format!(r#"{{"to":["KGZ"],"subject":"{subject}"}}"#);
            let (status, answer) = post_json(format!("{base}/v1/messages"), body).await;
            assert_eq!(status, 400, "{subject}: {answer}");
            let v: Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(v["code"], "invalid", "{subject}: {v}");
        }
        assert_eq!(state.store().outbox_len().unwrap(), 0, "nothing was sent");
        // A message from KGZ to acknowledge.
        let env = hotline_proto::Envelope {
            version: hotline_proto::PROTOCOL_VERSION,
            id: MessageId::random(),
            sender: ParticipantId::new("KGZ").unwrap(),
            seq: hotline_proto::Seq(1),
            audience: Audience::Participants(vec![state.me.clone()]),
            kind: Kind::Alert,
            precedence: Precedence::Flash,
            status: Status::Actual,
            created_at_ms: 1_000,
            respond_by_ms: None,
            references: vec![],
            category: None,
            subject: "Flooding".into(),
            body: String::new(),
        };
        let id = env.id;
        let signed =
            hotline_proto::Signed::sign(&env, &hotline_proto::SigningKey::from_bytes(&[2; 32]))
                .unwrap();
        state
            .store()
            .store_deliveries(&[(signed, Ok(env))], 2_000)
            .unwrap();
        for officer in invisible {
            let body = format!(r#"{{"officer":"{officer}"}}"#);
            let (status, answer) = post_json(format!("{base}/v1/messages/{id}/ack"), body).await;
            assert_eq!(status, 400, "{officer}: {answer}");
            let v: Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(v["code"], "invalid", "{officer}: {v}");
            let body = format!(r#"{{"officer":"{officer}"}}"#);
            let (status, answer) =
                post_json(format!("{base}/v1/quarantine/discard-all"), body).await;
            assert_eq!(status, 400, "{officer}: {answer}");
        }
        let m = state.store().inbox_message(&id).unwrap().unwrap();
        assert!(m.ack.is_none(), "not acknowledged");
        // Visible text with such characters in it is taken.
        let body = r#"{"to":["KGZ"],"subject":"\u202eFlooding\u202c \u200b"}"#;
        let (status, answer) = post_json(format!("{base}/v1/messages"), body.into()).await;
        assert_eq!(status, 201, "{answer}");
        let body = r#"{"officer":"\u200bDuty officer\u0000"}"#;
        let (status, answer) = post_json(format!("{base}/v1/messages/{id}/ack"), body.into()).await;
        assert_eq!(status, 200, "{answer}");
    }

    /// A message from KGZ, stored in the inbox of `state`'s node with `category`: its id.
    fn received_from_kgz(state: &NodeState, category: Option<&str>) -> MessageId {
        let env = hotline_proto::Envelope {
            version: hotline_proto::PROTOCOL_VERSION,
            id: MessageId::random(),
            sender: ParticipantId::new("KGZ").unwrap(),
            seq: hotline_proto::Seq(1),
            audience: Audience::Participants(vec![state.me.clone()]),
            kind: Kind::Alert,
            precedence: Precedence::Flash,
            status: Status::Actual,
            created_at_ms: 1_000,
            respond_by_ms: None,
            references: vec![],
            category: category.map(str::to_owned),
            subject: "Flooding".into(),
            body: String::new(),
        };
        let id = env.id;
        let signed =
            hotline_proto::Signed::sign(&env, &hotline_proto::SigningKey::from_bytes(&[2; 32]))
                .unwrap();
        state
            .store()
            .store_deliveries(&[(signed, Ok(env))], 2_000)
            .unwrap();
        id
    }

    /// A category with no character a reader can see is refused, as a subject of them is:
    /// one of a NUL, of zero-width spaces or of bidirectional controls was sent, and shown
    /// to the recipients' officers as nothing. A reply keeps the category of the message it
    /// answers as it came (another node may have taken it), so that it can always be sent.
    /// An acknowledgement's note with nothing visible in it (empty, spaces, invisible
    /// characters) is taken as no note: it was signed and shown to the sender as a note
    /// that says nothing. A note is optional, and an acknowledgement is not refused for it.
    #[tokio::test]
    async fn a_category_needs_a_visible_character_and_a_note_without_one_is_none() {
        let (_dir, state, base, _server) = serve_test_state().await;
        let invisible = [
            r"\u0000",
            r"\u200b",
            r"\u202e\u202c",
            r" \u2066\u2069 ",
            r"\ufeff",
            r"\u00ad\u200d\u0009",
            r"\u001b",
            " ",
        ];
        for category in invisible.iter().chain(&[""]) {
            let body = format!(r#"{{"to":["KGZ"],"subject":"Flooding","category":"{category}"}}"#);
            let (status, answer) = post_json(format!("{base}/v1/messages"), body).await;
            assert_eq!(status, 400, "{category}: {answer}");
            let v: Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(v["code"], "invalid", "{category}: {v}");
            assert!(v["error"].as_str().unwrap().contains("category"), "{v}");
        }
        assert_eq!(state.store().outbox_len().unwrap(), 0, "nothing was sent");
        let body = r#"{"to":["KGZ"],"subject":"Flooding","category":"\u200bmilitary-cbm"}"#;
        let (status, answer) = post_json(format!("{base}/v1/messages"), body.into()).await;
        assert_eq!(status, 201, "{answer}");
        // A reply to a message whose category holds nothing visible keeps it.
        let id = received_from_kgz(&state, Some("\u{200b}"));
        let (status, answer) =
            post_json(format!("{base}/v1/messages/{id}/reply"), "{}".into()).await;
        assert_eq!(status, 201, "{answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        let reply: MessageId = v["id"].as_str().unwrap().parse().unwrap();
        let sent = state.store().sent_message(&reply).unwrap().unwrap();
        assert_eq!(
            sent_view(sent, now_ms())["category"],
            "\u{200b}",
            "as it came"
        );
        // Notes: nothing visible is no note; anything visible is kept as given.
        for note in invisible.iter().chain(&[""]) {
            let id = received_from_kgz(&state, None);
            let body = format!(r#"{{"officer":"Duty officer","note":"{note}"}}"#);
            let (status, answer) = post_json(format!("{base}/v1/messages/{id}/ack"), body).await;
            assert_eq!(status, 200, "{note}: {answer}");
            let m = state.store().inbox_message(&id).unwrap().unwrap();
            let (_, officer, kept) = m.ack.unwrap();
            assert_eq!(officer, "Duty officer");
            assert_eq!(kept, None, "{note:?}");
        }
        let id = received_from_kgz(&state, None);
        let body = r#"{"officer":"Duty officer","note":" Seen,\n answer follows \u200b"}"#;
        let (status, answer) = post_json(format!("{base}/v1/messages/{id}/ack"), body.into()).await;
        assert_eq!(status, 200, "{answer}");
        let m = state.store().inbox_message(&id).unwrap().unwrap();
        assert_eq!(
            m.ack.unwrap().2.as_deref(),
            Some(" Seen,\n answer follows \u{200b}")
        );
    }

    /// What the API does with the store runs off the async runtime: a request waiting for
    /// the store (its lock held by a link storing a batch, or by another request; its disk
    /// stalled) leaves the runtime free for everything else, here an event stream answered
    /// while each waits (a test's runtime has one thread). Every such request took the
    /// store's lock, and did its SQLite I/O, on a runtime thread: one slow write stalled the
    /// node's links, its event streams and every other request with it, here the whole
    /// runtime until the holder gave up after 10 s. Each is answered as before once the
    /// store is free.
    #[tokio::test]
    async fn a_request_waiting_for_the_store_leaves_the_runtime_free() {
        use tokio::io::AsyncWriteExt;
        const WAIT: Duration = Duration::from_secs(10);
        let dir = tempfile::tempdir().unwrap();
        let state = crate::test_state(dir.path());
        let received = received_from_kgz(&state, None);
        let replied = received_from_kgz(&state, None);
        // Says which request is about to be handled, its body read whole: from there its
        // handler runs to the store without waiting on anything else.
        let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel::<String>();
        let app =
            router(state.clone()).layer(middleware::from_fn(move |req: Request, next: Next| {
                let entered = entered_tx.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                    let path = parts.uri.path().to_owned();
                    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
                    entered.send(path).unwrap();
                    next.run(req).await
                }
            }));
        let (base, _server) = serve_on_loopback(app).await;
        let addr = base.trim_start_matches("http://").to_owned();
        let officer = r#"{"officer":"Duty officer"}"#;
        let cases: [(&str, String, Option<&str>, u16); 10] = [
            (
                "POST",
                "/v1/messages".into(),
                Some(r#"{"to":["KGZ"],"subject":"Flooding"}"#),
                201,
            ),
            (
                "POST",
                format!("/v1/messages/{received}/ack"),
                Some(officer),
                200,
            ),
            (
                "POST",
                format!("/v1/messages/{replied}/reply"),
                Some("{}"),
                201,
            ),
            (
                "POST",
                format!("/v1/quarantine/{}/discard", "ab".repeat(32)),
                Some(officer),
                404,
            ),
            (
                "POST",
                "/v1/quarantine/discard-all".into(),
                Some(officer),
                200,
            ),
            ("GET", "/v1/status".into(), None, 200),
            ("GET", format!("/v1/messages/{received}"), None, 200),
            ("GET", "/v1/inbox".into(), None, 200),
            ("GET", "/v1/messages".into(), None, 200),
            ("GET", "/v1/quarantine".into(), None, 200),
        ];
        for (method, path, body, expected) in cases {
            let held = crate::Held::store(&state, true, WAIT);
            let answer = match body {
                Some(b) => tokio::spawn(post_json(format!("{base}{path}"), b.to_owned())),
                None => {
                    let (base, path) = (base.clone(), path.clone());
                    tokio::spawn(async move {
                        let (status, v) = get_json(&base, &path).await;
                        (status, v.to_string())
                    })
                }
            };
            while entered.recv().await.unwrap() != path {}
            // Another request, which needs no store, while that one waits for it.
            let mut events = tokio::net::TcpStream::connect(&addr).await.unwrap();
            events
                .write_all(
                    b"GET /v1/events HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer token\r\n\r\n",
                )
                .await
                .unwrap();
            let head = tokio::time::timeout(WAIT, read_until(&mut events, "\r\n\r\n"))
                .await
                .unwrap_or_else(|_| panic!("{method} {path}: no event stream"));
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(
                !held.release(),
                "{method} {path}: the runtime waited for the store"
            );
            let (status, answer) = answer.await.unwrap();
            assert_eq!(status, expected, "{method} {path}: {answer}");
        }
    }

    /// An endpoint that takes no query parameter refuses one by name, as a list refuses one
    /// it does not know: `/v1/status` and `/v1/events` ignored theirs, so that
    /// `/v1/events?since=ID` streamed from now as if the past had been asked for and given,
    /// and a send or an acknowledgement with a parameter was done as if it had been
    /// understood. Refused before anything is written; without one, each is answered.
    #[tokio::test]
    async fn an_endpoint_without_parameters_refuses_one_by_name() {
        let (_dir, state, base, _server) = serve_test_state().await;
        let id = "ab".repeat(16);
        for (path, name) in [
            ("/v1/status?relay=1".to_owned(), "relay"),
            ("/v1/events?since=1".to_owned(), "since"),
            (format!("/v1/messages/{id}?verbose=1"), "verbose"),
        ] {
            let (status, v) = get_json(&base, &path).await;
            assert_eq!(status, 400, "{path}: {v}");
            assert_eq!(v["code"], "unknown_parameter", "{path}: {v}");
            let error = v["error"].as_str().unwrap();
            assert!(error.contains(&format!("`{name}`")), "{path}: {error}");
        }
        let send = r#"{"to":["KGZ"],"subject":"Test"}"#;
        let officer = r#"{"officer":"Duty officer"}"#;
        for (path, body, name) in [
            ("/v1/messages?dry_run=1".to_owned(), send, "dry_run"),
            (format!("/v1/messages/{id}/ack?as=KGZ"), officer, "as"),
            (format!("/v1/messages/{id}/reply?to=SEC"), "{}", "to"),
            (
                format!("/v1/quarantine/{}/discard?all=1", "ab".repeat(32)),
                officer,
                "all",
            ),
            (
                "/v1/quarantine/discard-all?max=1".to_owned(),
                officer,
                "max",
            ),
        ] {
            let (status, answer) = post_json(format!("{base}{path}"), body.into()).await;
            let v: Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(status, 400, "{path}: {v}");
            assert_eq!(v["code"], "unknown_parameter", "{path}: {v}");
            let error = v["error"].as_str().unwrap();
            assert!(error.contains(&format!("`{name}`")), "{path}: {error}");
        }
        assert_eq!(state.store().outbox_len().unwrap(), 0, "nothing was sent");
        // Without a parameter (or with an empty query string), each is answered.
        for path in ["/v1/status", "/v1/status?"] {
            let (status, v) = get_json(&base, path).await;
            assert_eq!(status, 200, "{path}: {v}");
        }
        let (status, answer) = post_json(format!("{base}/v1/messages"), send.into()).await;
        assert_eq!(status, 201, "{answer}");
        assert_eq!(state.store().outbox_len().unwrap(), 1);
    }

    /// Emptying the quarantine commits a batch at a time; a batch that fails after others
    /// were committed (a full disk) left those discarded unsaid: the answer was the store's
    /// error alone ("disk full: nothing was written"), nothing was logged of the discards,
    /// and a link that had refused deliveries for a full quarantine was not told of the room
    /// made, so the relay kept what it refused until the link next reconnected for another
    /// reason. Here the second batch fails.
    #[tokio::test]
    async fn a_discard_of_all_that_fails_midway_says_what_it_discarded_and_frees_the_room() {
        let (logs, _guard) = capture_logs();
        let dir = tempfile::tempdir().unwrap();
        let state = crate::test_state(dir.path());
        let held = QUARANTINE_DISCARD_BATCH + 5;
        let batch = crate::test_forgeries(&state, held);
        state.store().store_deliveries(&batch, 2_000).unwrap();
        assert_eq!(state.store().quarantine_size().0.held, held as u64);
        // Every delete past the first batch's fails, as on a disk that has filled.
        state
            .store()
            .conn_for_tests()
            .execute_batch(&format!(
                "CREATE TEMP TABLE deleted (n INTEGER NOT NULL);
                 INSERT INTO deleted VALUES (0);
                 CREATE TEMP TRIGGER discard_fails BEFORE DELETE ON main.quarantine
                 BEGIN
                     UPDATE deleted SET n = n + 1;
                     SELECT RAISE(ABORT, 'injected failure')
                         WHERE (SELECT n FROM deleted) > {QUARANTINE_DISCARD_BATCH};
                 END;"
            ))
            .unwrap();
        let mut room = state.quarantine_room.subscribe();
        room.mark_unchanged();
        let (base, _server) = serve_on_loopback(router(state.clone())).await;
        let (status, answer) = post_json(
            format!("{base}/v1/quarantine/discard-all"),
            r#"{"officer":"Duty officer"}"#.into(),
        )
        .await;
        assert_eq!(status, 500, "{answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["code"], "storage", "{v}");
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("{QUARANTINE_DISCARD_BATCH} discarded")),
            "the answer says what was done: {error}"
        );
        assert_eq!(
            state.store().quarantine_size().0.held,
            (held - QUARANTINE_DISCARD_BATCH) as u64
        );
        assert!(
            room.has_changed().unwrap(),
            "the links are told of the room made"
        );
        let lines = logs.lines("quarantine partly emptied");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(
            lines[0]["discarded"], QUARANTINE_DISCARD_BATCH as u64,
            "{lines:?}"
        );
    }

    /// A discard of all whose request goes away midway (its client timed out and closed
    /// the connection, which has hyper drop the handler) still discards all it was asked
    /// to, logs it and frees the room: the handler's loop stopped at its next batch, with
    /// what it had discarded neither logged nor told to the links. Here the handler is
    /// polled once, through its first batch, and dropped.
    #[tokio::test]
    async fn a_discard_of_all_whose_client_goes_away_midway_finishes() {
        let (logs, _guard) = capture_logs();
        let dir = tempfile::tempdir().unwrap();
        let state = crate::test_state(dir.path());
        let held = QUARANTINE_DISCARD_BATCH + 5;
        state
            .store()
            .store_deliveries(&crate::test_forgeries(&state, held), 2_000)
            .unwrap();
        let mut room = state.quarantine_room.subscribe();
        room.mark_unchanged();
        let request = DiscardRequest {
            officer: "Duty officer".into(),
        };
        let handler = discard_all(State(state.clone()), Params(NoQuery {}), Body(request));
        assert!(
            futures_util::FutureExt::now_or_never(handler).is_none(),
            "the handler waits between batches"
        );
        tokio::time::timeout(Duration::from_secs(20), room.changed())
            .await
            .expect("the links are told within 20 s")
            .unwrap();
        assert_eq!(state.store().quarantine_size().0.held, 0, "all discarded");
        let lines = logs.lines("quarantine emptied");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["discarded"], held as u64, "{lines:?}");
    }

    /// GETs `path` from the API served at `base`, with the test state's token: the status,
    /// the answer's length in bytes, its body as JSON, and the path its `Link: rel="next"`
    /// header gives for the rest of the list, if any.
    async fn get_page(base: &str, path: &str) -> (u16, usize, Value, Option<String>) {
        let url = format!("{base}{path}");
        tokio::task::spawn_blocking(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(std::time::Duration::from_secs(10))
                .build();
            let r = match agent.get(&url).set("Authorization", "Bearer token").call() {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(e) => panic!("{url}: {e}"),
            };
            let status = r.status();
            let next = r.header("link").map(|l| {
                let (uri, rel) = l.split_once(';').expect("Link: <URI>; rel=\"next\"");
                assert_eq!(rel.trim(), "rel=\"next\"", "{l}");
                uri.trim()
                    .strip_prefix('<')
                    .and_then(|u| u.strip_suffix('>'))
                    .expect("<URI>")
                    .to_owned()
            });
            let body = r.into_string().unwrap();
            let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body:?}"));
            (status, body.len(), v, next)
        })
        .await
        .unwrap()
    }

    /// A page takes items until its bytes or its count would be passed, and says whether the
    /// list goes on; its first item is taken however large (otherwise an item larger than
    /// a page could never be listed, and paging past it would be impossible).
    #[test]
    fn a_page_holds_at_least_one_item_and_stops_before_its_bytes() {
        let item = |n: usize| json!("x".repeat(n));
        // One item larger than the whole page: alone on its page, and the list goes on.
        let mut p = Page::new(10, 100);
        assert!(p.push("a", &item(500)).ok().unwrap().is_continue());
        assert!(p.push("b", &item(1)).ok().unwrap().is_break());
        assert_eq!((p.items, p.more, p.last.as_deref()), (1, true, Some("a")));
        // Up to the byte: `[` + 3 items of 30 bytes + 2 commas + `]` is 94 bytes; a fourth
        // would pass 100.
        let mut p = Page::new(10, 94);
        for c in ["a", "b", "c"] {
            assert!(p.push(c, &item(28)).ok().unwrap().is_continue());
        }
        assert!(p.push("d", &item(28)).ok().unwrap().is_break());
        assert_eq!((p.items, p.more), (3, true));
        let answer = p.answer("/v1/inbox", page_query(Some(3), true));
        assert_eq!(
            answer.headers()[header::LINK],
            "</v1/inbox?limit=3&unacknowledged=true&before=c>; rel=\"next\""
        );
        // At its count; and a page that ends its list names no next.
        let mut p = Page::new(2, 1000);
        assert!(p.push("a", &item(1)).ok().unwrap().is_continue());
        assert!(p.push("b", &item(1)).ok().unwrap().is_continue());
        assert!(p.push("c", &item(1)).ok().unwrap().is_break());
        assert!(p.more);
        let mut p = Page::new(2, 1000);
        assert!(p.push("a", &item(1)).ok().unwrap().is_continue());
        let answer = p.answer("/v1/messages", page_query(None, false));
        assert!(answer.headers().get(header::LINK).is_none());
        // An empty page (`?limit=0`) has no item to go on from.
        let mut p = Page::new(0, 1000);
        assert!(p.push("a", &item(1)).ok().unwrap().is_break());
        let answer = p.answer("/v1/inbox", page_query(Some(0), false));
        assert!(answer.headers().get(header::LINK).is_none());
    }

    /// A page of a list is bounded in bytes as well as in items: 100 received messages with
    /// bodies of 60 KiB were one answer of 6 MB (a page of 1,000 of them 64 MiB, held until
    /// its client read it, and each of 256 connections could ask for one). A page now stops
    /// before `API_PAGE_BYTES_MAX`, its `Link: rel="next"` names the rest (with the query
    /// asked: `unacknowledged=true` stays), and following it lists every message once, in
    /// the list's order, for the inbox and the sent messages alike; the last page has no
    /// `Link`.
    #[tokio::test]
    async fn a_page_stops_at_its_byte_budget_and_its_next_link_lists_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::test_state(dir.path());
        let kgz = ParticipantId::new("KGZ").unwrap();
        let body = "x".repeat(60 * 1024);
        let mut received = Vec::new();
        for i in 0..100u64 {
            let env = hotline_proto::Envelope {
                version: hotline_proto::PROTOCOL_VERSION,
                id: MessageId::random(),
                sender: kgz.clone(),
                seq: hotline_proto::Seq(i + 1),
                audience: Audience::Participants(vec![state.me.clone()]),
                kind: Kind::Alert,
                precedence: Precedence::Routine,
                status: Status::Actual,
                created_at_ms: 1_000,
                respond_by_ms: None,
                references: vec![],
                category: None,
                subject: format!("Report {i}"),
                body: body.clone(),
            };
            received.push(env.id.to_string());
            let signed =
                hotline_proto::Signed::sign(&env, &hotline_proto::SigningKey::from_bytes(&[2; 32]))
                    .unwrap();
            // Ten a millisecond: those of one arrival time are ordered by row.
            state
                .store()
                .store_deliveries(&[(signed, Ok(env))], 2_000 + i / 10)
                .unwrap();
        }
        let mut sent = Vec::new();
        for i in 0..30u64 {
            let draft = Draft {
                body: body.clone(),
                ..Draft::alert(std::slice::from_ref(&kgz), &format!("Notice {i}"))
            };
            let signed = state
                .store()
                .compose(
                    &state.me,
                    &state.key,
                    draft,
                    std::slice::from_ref(&kgz),
                    1,
                    3_000 + i,
                )
                .unwrap()
                .unwrap();
            sent.push(signed.decode_unverified().unwrap().id.to_string());
        }
        // Newest first.
        received.reverse();
        sent.reverse();
        let (base, _server) = serve_on_loopback(router(state)).await;
        for (first, all) in [
            ("/v1/inbox?limit=1000", &received),
            ("/v1/inbox?unacknowledged=true", &received),
            ("/v1/messages", &sent),
        ] {
            let mut listed: Vec<String> = Vec::new();
            let mut pages = 0;
            let mut path = Some(first.to_owned());
            while let Some(p) = path {
                let (status, bytes, v, next) = get_page(&base, &p).await;
                assert_eq!(status, 200, "{p}: {v}");
                assert!(
                    bytes <= API_PAGE_BYTES_MAX,
                    "{p}: an answer of {bytes} bytes, over the page's {API_PAGE_BYTES_MAX}"
                );
                let items = v.as_array().unwrap();
                assert!(!items.is_empty(), "{p}: an empty page");
                listed.extend(items.iter().map(|m| m["id"].as_str().unwrap().to_owned()));
                if let Some(n) = &next {
                    let base_path = first.split_once('?').map_or(first, |(b, _)| b);
                    assert!(n.starts_with(&format!("{base_path}?")), "{n}");
                    if first.contains("unacknowledged=true") {
                        assert!(n.contains("unacknowledged=true"), "{n}");
                    }
                }
                pages += 1;
                assert!(pages <= all.len(), "paging does not end: {listed:?}");
                path = next;
            }
            assert!(pages > 1, "{first}: one page of {}", all.len());
            assert_eq!(&listed, all, "{first}: each listed once, in order");
        }
    }

    /// The quarantine's list goes on with `?before=DIGEST`, as the inbox's does with
    /// `?before=ID`: a quarantine holding more than a page listed only its newest thousand,
    /// and an officer could see the older ones only by discarding the newer.
    #[tokio::test]
    async fn the_quarantines_list_pages_with_before() {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::test_state(dir.path());
        let kgz = ParticipantId::new("KGZ").unwrap();
        // Five deliveries held, two arriving at the same millisecond (ordered by row then).
        for (i, at) in [10, 20, 20, 30, 40].into_iter().enumerate() {
            let draft = Draft::alert(std::slice::from_ref(&kgz), &format!("Forgery {i}"));
            let mut store = state.store();
            let signed = store
                .compose(
                    &state.me,
                    &state.key,
                    draft,
                    std::slice::from_ref(&kgz),
                    1,
                    at,
                )
                .unwrap()
                .unwrap();
            store
                .store_deliveries(&[(signed, Err("test: not verified".into()))], at)
                .unwrap();
        }
        let (base, _server) = serve_on_loopback(router(state)).await;
        let (status, all) = get_json(&base, "/v1/quarantine").await;
        assert_eq!(status, 200, "{all}");
        let all: Vec<String> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["digest"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(all.len(), 5);
        // Paging on until a page is short lists each delivery once, in the same order.
        let mut paged = Vec::new();
        let mut path = "/v1/quarantine?limit=2".to_owned();
        loop {
            let (status, v) = get_json(&base, &path).await;
            assert_eq!(status, 200, "{path}: {v}");
            let got: Vec<String> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|q| q["digest"].as_str().unwrap().to_owned())
                .collect();
            paged.extend(got.iter().cloned());
            match got.last() {
                Some(last) if got.len() == 2 => {
                    path = format!("/v1/quarantine?limit=2&before={last}");
                }
                _ => break,
            }
            assert!(paged.len() <= 5, "paging does not end: {paged:?}");
        }
        assert_eq!(paged, all);
        // A cursor that is no digest, and one under which nothing is held, are refused.
        let (status, v) = get_json(&base, "/v1/quarantine?before=zz").await;
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some("bad_digest")),
            "{v}"
        );
        let (status, v) =
            get_json(&base, &format!("/v1/quarantine?before={}", "ab".repeat(32))).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (404, Some("not_found")),
            "{v}"
        );
    }

    /// A page of the quarantine reads no more deliveries than it answers: the store's walk
    /// stops once the page's bytes are reached, as the inbox's and the sent list's do. It
    /// read `limit + 1` whole deliveries (1,001 by default, up to the quarantine's 64 MiB
    /// of bytes, held at once) before it cut the page at `API_PAGE_BYTES_MAX`. Here each
    /// delivery's item is some 4 KiB of JSON (a long reason), so a page holds some 250 of
    /// 300, and the oldest delivery, on the next page, is damaged in the store: a page
    /// that reads it fails.
    #[tokio::test]
    async fn a_quarantine_page_reads_no_delivery_past_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::test_state(dir.path());
        let held = 300;
        let reason = format!("test: {}", "r".repeat(4 * 1024));
        let batch: Vec<_> = crate::test_forgeries(&state, held)
            .into_iter()
            .map(|(signed, _)| (signed, Err(reason.clone())))
            .collect();
        state.store().store_deliveries(&batch, 2_000).unwrap();
        // The oldest, listed last (all arrived at once: by row), no longer reads back.
        let damaged = state
            .store()
            .conn_for_tests()
            .execute(
                "UPDATE quarantine SET key = x'00' \
                 WHERE rowid = (SELECT MIN(rowid) FROM quarantine)",
                [],
            )
            .unwrap();
        assert_eq!(damaged, 1);
        let (base, _server) = serve_on_loopback(router(state)).await;
        let (status, bytes, v, next) = get_page(&base, "/v1/quarantine").await;
        assert_eq!(status, 200, "the page read past its bytes: {v}");
        assert!(bytes <= API_PAGE_BYTES_MAX, "{bytes}");
        let items = v.as_array().unwrap().len();
        assert!(items > 1 && items < held, "{items}");
        // The damage is real: the page it is on fails.
        let mut path = next.expect("the list goes on");
        loop {
            let (status, _, v, next) = get_page(&base, &path).await;
            if status != 200 {
                assert_eq!((status, v["code"].as_str()), (500, Some("storage")), "{v}");
                break;
            }
            path = next.expect("the damaged delivery is on a page");
        }
    }

    /// A sent message's view lists its first `ANSWERS_LISTED_MAX` answers, oldest first,
    /// and counts them all (`answers_total`); each recipient's `answered_at_ms` and
    /// `answered` are read from them all, so a recipient whose first answer came after
    /// those listed is still counted. Every answer was read whole (envelope and body), and
    /// all of them at once, for the view of one message and for each of a page of sent
    /// messages: a message to 37 recipients who each replied and updated many times made
    /// one item read without bound. The newest answer here is damaged in the store: a
    /// view that reads it fails.
    #[tokio::test]
    async fn a_sent_message_lists_its_first_answers_and_counts_them_all() {
        use crate::limits::ANSWERS_LISTED_MAX;
        let dir = tempfile::tempdir().unwrap();
        let state = crate::test_state(dir.path());
        let (kgz, sec) = (
            ParticipantId::new("KGZ").unwrap(),
            ParticipantId::new("SEC").unwrap(),
        );
        let to = [kgz.clone(), sec.clone()];
        let sent = state
            .store()
            .compose(
                &state.me,
                &state.key,
                Draft::alert(&to, "Flooding upstream"),
                &to,
                1,
                1_500,
            )
            .unwrap()
            .unwrap()
            .decode_unverified()
            .unwrap()
            .id;
        let answer = |from: &ParticipantId, seq: u64, key: u8| {
            let env = hotline_proto::Envelope {
                version: hotline_proto::PROTOCOL_VERSION,
                id: MessageId::random(),
                sender: from.clone(),
                seq: hotline_proto::Seq(seq),
                audience: Audience::Participants(vec![state.me.clone()]),
                kind: Kind::Update,
                precedence: Precedence::Routine,
                status: Status::Actual,
                created_at_ms: 1_000,
                respond_by_ms: None,
                references: vec![sent],
                category: None,
                subject: format!("Level at gauge {seq}"),
                body: "x".repeat(60 * 1024),
            };
            let signed = hotline_proto::Signed::sign(
                &env,
                &hotline_proto::SigningKey::from_bytes(&[key; 32]),
            )
            .unwrap();
            (signed, env)
        };
        // KGZ answers more often than a view lists, then SEC once: its first answer is past
        // those listed.
        let more = 5;
        let mut kgz_answers = Vec::new();
        for i in 0..(ANSWERS_LISTED_MAX + more) as u64 {
            let (signed, env) = answer(&kgz, i + 1, 2);
            kgz_answers.push(env.id.to_string());
            state
                .store()
                .store_deliveries(&[(signed, Ok(env))], 2_000 + i)
                .unwrap();
        }
        let (signed, env) = answer(&sec, 1, 4);
        let sec_at = 9_000;
        let sec_answer = env.id;
        state
            .store()
            .store_deliveries(&[(signed, Ok(env))], sec_at)
            .unwrap();
        let damaged = state
            .store()
            .conn_for_tests()
            .execute(
                "UPDATE inbox SET key = x'00' WHERE id = ?1",
                [&sec_answer.0[..]],
            )
            .unwrap();
        assert_eq!(damaged, 1);
        let (base, _server) = serve_on_loopback(router(state)).await;
        let (status, one) = get_json(&base, &format!("/v1/messages/{sent}")).await;
        assert_eq!(
            status, 200,
            "the view read past the answers it lists: {one}"
        );
        let (status, _, page, _) = get_page(&base, "/v1/messages").await;
        assert_eq!(
            status, 200,
            "the page read past the answers it lists: {page}"
        );
        for v in [&one, &page[0]] {
            let listed: Vec<&str> = v["answers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["id"].as_str().unwrap())
                .collect();
            assert_eq!(listed, kgz_answers[..ANSWERS_LISTED_MAX], "{v}");
            assert_eq!(
                v["answers_total"],
                json!(ANSWERS_LISTED_MAX + more + 1),
                "{v}"
            );
            assert_eq!(v["answered"], json!(2), "{v}");
            let answered_at: Vec<(&str, &Value)> = v["recipients"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r["recipient"].as_str().unwrap(), &r["answered_at_ms"]))
                .collect();
            assert_eq!(
                answered_at,
                [("KGZ", &json!(2_000)), ("SEC", &json!(sec_at))],
                "{v}"
            );
        }
    }

    /// `GET /v1/inbox?references=ID` lists all the answers to our message ID (its view
    /// lists the first `ANSWERS_LISTED_MAX`), newest first a page at a time as the inbox,
    /// its `Link` keeping the filter, with `unacknowledged=true` too; an id that is not a
    /// message this node sent is a 404, not an empty list that says nobody answered.
    #[tokio::test]
    async fn the_inbox_lists_every_answer_to_a_sent_message() {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::test_state(dir.path());
        let kgz = ParticipantId::new("KGZ").unwrap();
        let to = [kgz.clone()];
        let sent = state
            .store()
            .compose(
                &state.me,
                &state.key,
                Draft::alert(&to, "Flooding"),
                &to,
                1,
                1_500,
            )
            .unwrap()
            .unwrap()
            .decode_unverified()
            .unwrap()
            .id;
        // Answers and other messages, interleaved.
        let mut answers = Vec::new();
        let mut others = Vec::new();
        for i in 0..7u64 {
            let env = hotline_proto::Envelope {
                version: hotline_proto::PROTOCOL_VERSION,
                id: MessageId::random(),
                sender: kgz.clone(),
                seq: hotline_proto::Seq(i + 1),
                audience: Audience::Participants(vec![state.me.clone()]),
                kind: if i % 2 == 0 {
                    Kind::Update
                } else {
                    Kind::Alert
                },
                precedence: Precedence::Routine,
                status: Status::Actual,
                created_at_ms: 1_000,
                respond_by_ms: None,
                references: if i % 2 == 0 { vec![sent] } else { vec![] },
                category: None,
                subject: format!("Level {i}"),
                body: String::new(),
            };
            (if i % 2 == 0 {
                &mut answers
            } else {
                &mut others
            })
            .push(env.id);
            let signed =
                hotline_proto::Signed::sign(&env, &hotline_proto::SigningKey::from_bytes(&[2; 32]))
                    .unwrap();
            state
                .store()
                .store_deliveries(&[(signed, Ok(env))], 2_000 + i)
                .unwrap();
        }
        // The newest answer is acknowledged.
        state
            .store()
            .conn_for_tests()
            .execute(
                "UPDATE inbox SET acked_at_ms = 3000, officer = 'Desk' WHERE id = ?1",
                [&answers[3].0[..]],
            )
            .unwrap();
        answers.reverse();
        let (base, _server) = serve_on_loopback(router(state)).await;
        let all = |first: String| {
            let base = base.clone();
            async move {
                let mut listed = Vec::new();
                let mut links = Vec::new();
                let mut path = Some(first);
                while let Some(p) = path {
                    let (status, _, v, next) = get_page(&base, &p).await;
                    assert_eq!(status, 200, "{p}: {v}");
                    listed.extend(
                        v.as_array()
                            .unwrap()
                            .iter()
                            .map(|m| m["id"].as_str().unwrap().to_owned()),
                    );
                    links.extend(next.clone());
                    path = next;
                }
                (listed, links)
            }
        };
        let ids = |ids: &[MessageId]| ids.iter().map(|i| i.to_string()).collect::<Vec<_>>();
        let (listed, links) = all(format!("/v1/inbox?limit=3&references={sent}")).await;
        assert_eq!(listed, ids(&answers));
        assert_eq!(
            links,
            [format!(
                "/v1/inbox?limit=3&references={sent}&before={}",
                answers[2]
            )]
        );
        let (listed, _) = all(format!("/v1/inbox?references={sent}&unacknowledged=true")).await;
        assert_eq!(listed, ids(&answers[1..]));
        for (wrong, status, code) in [
            (others[0].to_string(), 404, "not_found"),
            (MessageId([7; 16]).to_string(), 404, "not_found"),
            ("nope".to_owned(), 400, "bad_id"),
        ] {
            let (s, v) = get_json(&base, &format!("/v1/inbox?references={wrong}")).await;
            assert_eq!(
                (s, v["code"].as_str()),
                (status, Some(code)),
                "{wrong}: {v}"
            );
        }
    }

    /// A subscriber of `/v1/events` that never reads holds neither the node nor the other
    /// subscribers: the node's sends never wait for it, what is kept for it is bounded
    /// (`EVENTS_BUFFER` events, and the socket's buffers), another subscriber gets every
    /// event in order meanwhile, and when the frozen one reads again it gets a `lagged`
    /// event counting what it missed where it missed it, never a silent gap.
    #[tokio::test]
    async fn a_subscriber_that_reads_nothing_holds_neither_the_node_nor_the_others() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        const WAIT: Duration = Duration::from_secs(30);
        // Far more than the socket buffers on both ends hold, in events of 4 KiB each.
        const EVENTS: usize = 8 * crate::limits::EVENTS_BUFFER;
        let (_dir, state, base, _server) = serve_test_state().await;
        let addr = base.trim_start_matches("http://").to_owned();
        let subscribe = || async {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(
                b"GET /v1/events HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer token\r\n\r\n",
            )
            .await
            .unwrap();
            let mut s = tokio::io::BufReader::new(s);
            // Subscribed once the head has come (docs/API.md).
            let mut line = String::new();
            while line != "\r\n" {
                line.clear();
                s.read_line(&mut line).await.unwrap();
                assert!(!line.is_empty(), "EOF in the head");
            }
            s
        };
        // The next event's `relay` (its number), or the count of a `lagged` one.
        async fn next(s: &mut tokio::io::BufReader<tokio::net::TcpStream>) -> (bool, usize) {
            let mut line = String::new();
            loop {
                line.clear();
                s.read_line(&mut line).await.unwrap();
                assert!(!line.is_empty(), "the stream ended");
                if let Some(data) = line.trim_end().strip_prefix("data: ") {
                    let v: Value = serde_json::from_str(data).unwrap();
                    return match v["type"].as_str() {
                        Some("lagged") => (true, v["missed"].as_u64().unwrap() as usize),
                        _ => (false, v["relay"].as_u64().unwrap() as usize),
                    };
                }
            }
        }
        let mut frozen = subscribe().await;
        let mut live = subscribe().await;
        let error = "x".repeat(4096);
        for batch in 0..EVENTS / 256 {
            for i in batch * 256..(batch + 1) * 256 {
                let _ = state.events.send(crate::events::Event::RelayDown {
                    relay: i,
                    error: error.clone(),
                });
            }
            assert!(state.events.len() <= crate::limits::EVENTS_BUFFER);
            for i in batch * 256..(batch + 1) * 256 {
                let got = tokio::time::timeout(WAIT, next(&mut live))
                    .await
                    .expect("the live subscriber is served");
                assert_eq!(got, (false, i), "in order, none missed");
            }
        }
        // The frozen one, reading at last: every event or a count of those it missed.
        let (mut expected, mut missed) = (0, 0);
        while expected < EVENTS {
            match tokio::time::timeout(WAIT, next(&mut frozen)).await.unwrap() {
                (true, n) => {
                    missed += n;
                    expected += n;
                }
                (false, i) => {
                    assert_eq!(i, expected, "a gap without a `lagged` event");
                    expected += 1;
                }
            }
        }
        assert_eq!(expected, EVENTS);
        assert!(
            missed > 0,
            "the socket's buffers held every event: make them more"
        );
    }

    /// Reads from `s` until `needle` has come, or fails at EOF; what was read.
    async fn read_until(s: &mut tokio::net::TcpStream, needle: &str) -> String {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains(needle) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "EOF before {needle:?}: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// A request whose head does not parse as HTTP (answered 400 by hyper, 431 when too
    /// large) is a refused request, and logged as every other is (docs/API.md, Errors): it
    /// was logged at debug only, so that a client sending the node garbage left no trace at
    /// the levels an operator reads.
    #[tokio::test]
    async fn a_request_head_that_does_not_parse_is_logged_as_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const WAIT: Duration = Duration::from_secs(20);
        let (logs, _guard) = capture_logs();
        let app = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .layer(middleware::from_fn(log_refusals));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stopping) = watch::channel(false);
        let _server = tokio::spawn(serve_capped(
            Capped::new(listener, 4, WAIT),
            app,
            WAIT,
            stopping,
        ));
        let too_large = format!(
            "GET /ok HTTP/1.1\r\nHost: node\r\nX-Filler: {}\r\n\r\n",
            "x".repeat(512 * 1024)
        );
        let cases = [
            (b"GET /ok HTTP/1.1\r\nHost node\r\n\r\n".to_vec(), 400),
            (b"\x01\x02 /ok HTTP/1.1\r\n\r\n".to_vec(), 400),
            (too_large.into_bytes(), 431),
        ];
        for (i, (head, status)) in cases.into_iter().enumerate() {
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            // The node may answer and close before it has read all of a head too large.
            let _ = client.write_all(&head).await;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(WAIT, client.read_to_end(&mut answer))
                .await
                .expect("answered and closed");
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "{i}: {answer}"
            );
            // Logged by the connection's task once it has ended, after the answer.
            let deadline = tokio::time::Instant::now() + WAIT;
            let lines = loop {
                let lines = logs.lines("local API: request refused");
                if lines.len() > i || tokio::time::Instant::now() > deadline {
                    break lines;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            assert_eq!(lines.len(), i + 1, "{i}: {lines:?}");
            assert_eq!(lines[i]["status"], status, "{i}: {lines:?}");
            assert_eq!(lines[i]["code"], "", "{i}: {lines:?}");
        }
        let all = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert!(
            !all.contains("xxxxxxxx"),
            "never the request's bytes: {all}"
        );
    }

    /// A request's head is read to `API_HEAD_BYTES_MAX` bytes at most (docs/API.md, Limits):
    /// one not ended by then is answered 431, logged as refused, and its connection closed,
    /// whether more of it comes or not. hyper's own bound, about 400 KiB, let each
    /// connection hold that much of a head before its token was looked at: a 200 KiB header
    /// line went through to the routes, and a head that never ended was held until the
    /// header-read timeout. The largest legitimate head (a list's query in full, the longest
    /// token a token file holds, an HTTP library's headers) is taken, to the bound's last byte.
    #[tokio::test]
    async fn a_request_head_is_read_to_its_bound_and_no_further() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const WAIT: Duration = Duration::from_secs(20);
        let (logs, _guard) = capture_logs();
        let app = Router::new()
            .route("/v1/inbox", get(|| async { "ok" }))
            .layer(middleware::from_fn(log_refusals));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stopping) = watch::channel(false);
        let _server = tokio::spawn(serve_capped(
            Capped::new(listener, 4, WAIT),
            app,
            WAIT,
            stopping,
        ));
        let token = "t".repeat(hotline_config::limits::TOKEN_FILE_BYTES_MAX);
        let legitimate = format!(
            "GET /v1/inbox?unacknowledged=true&limit=1000&before={} HTTP/1.1\r\n\
             Host: 127.0.0.1:7500\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\
             Connection: close\r\nAuthorization: Bearer {token}\r\n",
            "ab".repeat(16)
        );
        // A head of `bytes` in all: the legitimate one, with a header filling it up.
        let head = |bytes: usize| {
            let filler = bytes - legitimate.len() - "X-Filler: \r\n\r\n".len();
            format!("{legitimate}X-Filler: {}\r\n\r\n", "x".repeat(filler))
        };
        let exact = head(API_HEAD_BYTES_MAX);
        assert_eq!(exact.len(), API_HEAD_BYTES_MAX);
        let over = head(API_HEAD_BYTES_MAX + 1);
        let long_line = head(200 * 1024);
        // Sent, and the connection kept open: the node answers without waiting for its end.
        let unended = long_line[..API_HEAD_BYTES_MAX + 1].to_owned();
        assert!(!unended.contains("\r\n\r\n"));
        let cases = [(exact, 200), (over, 431), (long_line, 431), (unended, 431)];
        for (i, (head, status)) in cases.into_iter().enumerate() {
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            // The node may answer and close before it has read all of a head too large.
            let _ = client.write_all(head.as_bytes()).await;
            let mut answer = Vec::new();
            // Half the header-read timeout: the answer is not that timeout's.
            let _ = tokio::time::timeout(WAIT / 2, client.read_to_end(&mut answer))
                .await
                .unwrap_or_else(|_| panic!("{i}: neither answered nor closed"));
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "{i}: {answer}"
            );
        }
        // Logged by each connection's task once it has ended, after its answer.
        let deadline = tokio::time::Instant::now() + WAIT;
        let lines = loop {
            let lines = logs.lines("local API: request refused");
            if lines.len() >= 3 || tokio::time::Instant::now() > deadline {
                break lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(lines.len(), 3, "{lines:?}");
        for line in &lines {
            assert_eq!(line["status"], 431, "{lines:?}");
        }
        let all = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert!(!all.contains("xxxxxxxx"), "never the request's bytes");
        assert!(!all.contains("tttttttt"), "never the token");
    }

    /// Connections that send no request (nothing, half a head, or nothing more once kept
    /// alive) cannot keep every place: each is closed once it has sent no head for the
    /// header-read timeout, and a client queued behind them is answered. With `axum::serve`
    /// they held the places for good, and the client waited for ever. An event stream open
    /// longer than that timeout is not cut.
    #[tokio::test]
    async fn connections_that_send_no_request_cannot_keep_a_client_out() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const WAIT: Duration = Duration::from_secs(20);
        let (events, _) = tokio::sync::broadcast::channel::<&'static str>(4);
        let stream_events = events.clone();
        let app = Router::new().route("/ok", get(|| async { "ok" })).route(
            "/events",
            get(move || {
                let rx = stream_events.subscribe();
                async move {
                    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                        let data = rx.recv().await.ok().filter(|d| *d != "end")?;
                        Some((Ok::<_, Infallible>(SseEvent::default().data(data)), rx))
                    });
                    Sse::new(stream)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopping) = watch::channel(false);
        let header_read = Duration::from_millis(300);
        let server = tokio::spawn(serve_capped(
            Capped::new(listener, 4, WAIT),
            app,
            header_read,
            stopping,
        ));
        let connect = || tokio::net::TcpStream::connect(addr);

        // The four places: an event stream, answered; then a connection that sends nothing,
        // one that sends half a request head, and one kept alive after its answer.
        let mut stream = connect().await.unwrap();
        stream
            .write_all(b"GET /events HTTP/1.1\r\nHost: node\r\n\r\n")
            .await
            .unwrap();
        let head = tokio::time::timeout(WAIT, read_until(&mut stream, "\r\n\r\n"))
            .await
            .unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let idle = connect().await.unwrap();
        let mut half = connect().await.unwrap();
        half.write_all(b"GET /ok HTTP/1.1\r\nHost: n")
            .await
            .unwrap();
        let mut kept = connect().await.unwrap();
        kept.write_all(b"GET /ok HTTP/1.1\r\nHost: node\r\n\r\n")
            .await
            .unwrap();
        let answer = tokio::time::timeout(WAIT, read_until(&mut kept, "\r\n\r\nok"))
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        // Every place is held (the idle two were accepted before the one answered): this
        // client waits in the listen queue until the node closes one of them.
        let mut client = connect().await.unwrap();
        client
            .write_all(b"GET /ok HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = tokio::time::timeout(WAIT, read_until(&mut client, "\r\n\r\nok"))
            .await
            .expect("answered once the idle connections are closed");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        for (what, mut c) in [("idle", idle), ("half a head", half), ("kept alive", kept)] {
            // Closed by the node: at EOF (half a head is answered 408 first).
            let mut rest = Vec::new();
            tokio::time::timeout(WAIT, c.read_to_end(&mut rest))
                .await
                .unwrap_or_else(|_| panic!("{what}: still open"))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }

        // The stream, open for longer than the timeout by now, still carries events.
        events.send("still here").unwrap();
        let data = tokio::time::timeout(WAIT, read_until(&mut stream, "data: still here"))
            .await
            .unwrap();
        assert!(data.contains("still here"), "{data}");

        // Stopping waits for the stream's answer to end.
        stop.send(true).unwrap();
        events.send("end").unwrap();
        tokio::time::timeout(WAIT, server)
            .await
            .expect("the server stops")
            .unwrap();
    }

    /// A client that asked for a long answer and reads none of it cannot keep its place:
    /// once the node's writes have waited for it for the stall limit, the connection is
    /// closed, and a client queued behind it is answered. It used to wait for good.
    #[tokio::test]
    async fn a_client_that_reads_nothing_of_its_answer_cannot_keep_a_client_out() {
        use tokio::io::AsyncWriteExt;
        const WAIT: Duration = Duration::from_secs(20);
        // Far more than the kernel's buffers on both ends hold.
        let big = vec![b'x'; 64 * 1024 * 1024];
        let app = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route("/big", get(move || std::future::ready(big.clone())));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopping) = watch::channel(false);
        let server = tokio::spawn(serve_capped(
            Capped::new(listener, 1, Duration::from_millis(300)),
            app,
            WAIT,
            stopping,
        ));
        let mut reader = tokio::net::TcpStream::connect(addr).await.unwrap();
        reader
            .write_all(b"GET /big HTTP/1.1\r\nHost: node\r\n\r\n")
            .await
            .unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /ok HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = tokio::time::timeout(WAIT, read_until(&mut client, "\r\n\r\nok"))
            .await
            .expect("answered once the reader's connection is closed");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        stop.send(true).unwrap();
        drop(reader);
        tokio::time::timeout(WAIT, server)
            .await
            .expect("the server stops")
            .unwrap();
    }

    /// A request whose body does not come (its head says 100 bytes, 10 arrive) is answered
    /// `408 timeout` once `API_BODY_READ_TIMEOUT_MS` has passed, and its connection closed:
    /// it used to wait for the rest for good, holding the connection's place (the head's
    /// timeout has run by then).
    #[tokio::test]
    async fn a_body_that_does_not_come_is_answered_408_and_its_connection_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn take(Body(_): Body<AckRequest>) -> StatusCode {
            StatusCode::NO_CONTENT
        }
        let app = Router::new()
            .route("/v1/messages/{id}/ack", post(take))
            .layer(middleware::from_fn(log_refusals));
        let (base, server) = serve_on_loopback(app).await;
        let mut s = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
            .await
            .unwrap();
        s.write_all(
            b"POST /v1/messages/ab/ack HTTP/1.1\r\nHost: node\r\nContent-Type: \
              application/json\r\nContent-Length: 100\r\n\r\n{\"officer\"",
        )
        .await
        .unwrap();
        let within = Duration::from_millis(API_BODY_READ_TIMEOUT_MS) + Duration::from_secs(20);
        let mut answer = Vec::new();
        tokio::time::timeout(within, s.read_to_end(&mut answer))
            .await
            .expect("answered, and the connection closed")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains(r#""code":"timeout""#), "{answer}");
        server.abort();
    }

    /// A path whose `{id}` is escaped bytes that are not UTF-8 is refused in the API's
    /// shape (JSON with a code), as every other bad request is, not in axum's plain text.
    #[tokio::test]
    async fn a_path_that_is_not_utf8_is_refused_in_the_apis_shape() {
        async fn take(Segment(_): Segment) -> StatusCode {
            StatusCode::NO_CONTENT
        }
        let app = Router::new().route("/v1/messages/{id}/ack", post(take));
        let (base, server) = serve_on_loopback(app).await;
        let (status, body) = post_json(format!("{base}/v1/messages/%FF/ack"), "{}".into()).await;
        assert_eq!(status, 400, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(v["code"], "bad_request", "{v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        let (status, _) = post_json(format!("{base}/v1/messages/ab/ack"), "{}".into()).await;
        assert_eq!(status, 204, "a UTF-8 segment is taken");
        server.abort();
    }

    /// Every refusal is logged once, whoever refuses: a handler (warn, with its code), a
    /// failure (error), and the router for a path it does not know.
    #[tokio::test]
    async fn every_refused_request_is_logged_once_with_its_status_and_code() {
        let (logs, _guard) = capture_logs();
        async fn unknown() -> Result<StatusCode, ApiError> {
            Err(ApiError(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such message".into(),
            ))
        }
        async fn full() -> Result<StatusCode, ApiError> {
            Err(store_error(hotline_store::StoreError::DiskFull))
        }
        async fn fine() -> StatusCode {
            StatusCode::NO_CONTENT
        }
        let app = Router::new()
            .route("/unknown", post(unknown))
            .route("/full", post(full))
            .route("/fine", post(fine))
            .layer(middleware::from_fn(log_refusals));
        let (base, server) = serve_on_loopback(app).await;
        let cases = [
            ("/unknown", 404, "not_found", "INFO"),
            ("/full", 507, "disk_full", "ERROR"),
            ("/fine", 204, "", ""),
            ("/no/such/route", 404, "", "WARN"),
        ];
        for (path, status, code, level) in cases {
            let (got, _) = tokio::time::timeout(
                std::time::Duration::from_secs(20),
                post_json(format!("{base}{path}"), "{}".into()),
            )
            .await
            .expect("an answer within 20 s");
            assert_eq!(got, status, "{path}");
            let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .filter(|v| v["fields"]["path"] == path)
                .collect();
            if level.is_empty() {
                assert!(lines.is_empty(), "{path}: {lines:?}");
                continue;
            }
            assert_eq!(lines.len(), 1, "{path}: {lines:?}");
            assert_eq!(lines[0]["level"], level, "{path}: {lines:?}");
            assert_eq!(lines[0]["fields"]["status"], status, "{path}: {lines:?}");
            assert_eq!(lines[0]["fields"]["code"], code, "{path}: {lines:?}");
            assert_eq!(lines[0]["fields"]["method"], "POST", "{path}: {lines:?}");
        }
        server.abort();
    }

    /// A body refused as malformed, of the wrong shape, or too large is answered in the
    /// API's shape and logged at warn with the route and the reason cut short, never with
    /// the body (a refusal's reason can quote it).
    #[tokio::test]
    async fn a_refused_body_is_logged_with_its_route_and_a_bounded_reason_never_the_body() {
        let (logs, _guard) = capture_logs();
        async fn take(Body(_): Body<SendRequest>) -> StatusCode {
            StatusCode::NO_CONTENT
        }
        let app = Router::new()
            .route("/v1/messages/{id}/reply", post(take))
            .layer(DefaultBodyLimit::max(API_BODY_BYTES_MAX))
            .layer(middleware::from_fn(log_refusals));
        let (base, server) = serve_on_loopback(app).await;
        let path = format!("/v1/messages/{}/reply", "ab".repeat(16));
        let url = format!("{base}{path}");
        let secret = "s3cr3t-".repeat(100);
        let cases = [
            ("{not json".to_owned(), 400, "key must be a string"),
            (
                format!(r#"{{"subject":"x","respond_by_ms":"{secret}"}}"#),
                400,
                "respond_by_ms: invalid type: string",
            ),
            (
                format!(r#"{{"subject":"{}"}}"#, "x".repeat(API_BODY_BYTES_MAX)),
                413,
                "request body over",
            ),
            (
                format!(r#"{{"subject":"x","kind":"{secret}"}}"#),
                400,
                "kind: unknown variant",
            ),
            (
                format!(r#"{{"subject":"x","{secret}":1}}"#),
                400,
                "unknown field",
            ),
            (
                r#"{"subject":"x","respond_within_ms":-31337}"#.to_owned(),
                400,
                "respond_within_ms: invalid value: integer",
            ),
        ];
        for (i, (body, status, why)) in cases.into_iter().enumerate() {
            let (got, answer) = tokio::time::timeout(
                std::time::Duration::from_secs(20),
                post_json(url.clone(), body),
            )
            .await
            .expect("an answer within 20 s");
            assert_eq!(got, status, "{answer}");
            let v: Value = serde_json::from_str(&answer).unwrap();
            assert!(v["error"].as_str().unwrap().contains(why), "{v}");
            // The answer was written after the line was logged.
            let lines = logs.lines("local API: request refused");
            assert_eq!(lines.len(), i + 1, "{lines:?}");
            let line = &lines[i];
            assert_eq!(
                line["path"].as_str(),
                url.split_once("127.0.0.1")
                    .and_then(|(_, p)| p.find('/').map(|i| &p[i..])),
                "{line}"
            );
            // Logged with `?`, as a quoted string (JSON's quoting, for this ASCII text).
            let error: String = serde_json::from_str(line["error"].as_str().unwrap()).unwrap();
            assert!(error.contains(why), "{line}");
            assert!(
                error.len() <= API_LOG_REASON_BYTES_MAX + "…".len(),
                "{line}"
            );
        }
        // The caller was told what was wrong, quoting the value; the log was not, not even
        // in part. Looked for in each line less its timestamp, whose fraction of a second can
        // hold any five digits (`…T01:08:03.431337Z` once failed the check for 31337).
        let all = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let all: String = all
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("timestamp");
                v.to_string() + "\n"
            })
            .collect();
        assert!(!all.contains("s3cr3t"), "{all}");
        assert!(!all.contains("31337"), "{all}");
        assert!(!all.contains("xxxxxxxxxxxxxxxx"), "{all}");
        // The warn level, as for a bad query string.
        assert!(all.contains(r#""level":"WARN""#), "{all}");
        server.abort();
    }

    /// How many messages `state`'s node has sent (signed and stored).
    fn sent_count(state: &NodeState) -> i64 {
        state
            .store()
            .conn_for_tests()
            .query_row("SELECT COUNT(*) FROM sent", [], |r| r.get(0))
            .unwrap()
    }

    /// POSTs `body` to `path` of the API at `base` (`http://ADDR`) over a connection of its
    /// own, with the test state's token and, if given, `Idempotency-Key: KEY` as its raw
    /// bytes (which an HTTP client would check, or encode, first): the status and the
    /// answer's body as JSON (`Null` for none).
    async fn post_keyed(base: &str, path: &str, body: &str, key: Option<&[u8]>) -> (u16, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = base.trim_start_matches("http://").to_owned();
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer token\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        )
        .into_bytes();
        if let Some(key) = key {
            head.extend_from_slice(b"Idempotency-Key: ");
            head.extend_from_slice(key);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(body.as_bytes());
        let answer = tokio::time::timeout(Duration::from_secs(20), async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(&head).await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        })
        .await
        .expect("an answer within 20 s");
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {text:?}"));
        let (_, rest) = text.split_once("\r\n\r\n").unwrap();
        // A body without chunked coding (axum's JSON answers carry a length).
        let v = serde_json::from_str(rest).unwrap_or(Value::Null);
        (status, v)
    }

    /// POSTs `body` to `path` under `key`, as [`post_keyed`], and asserts that the node
    /// refuses it `422 idempotency_key_reused`: another request under a key already taken.
    async fn assert_key_reused(base: &str, path: &str, body: &str, key: Option<&[u8]>) {
        let (status, v) = post_keyed(base, path, body, key).await;
        assert_eq!(
            (status, &v["code"]),
            (422, &json!("idempotency_key_reused")),
            "{path} {body}: {v}"
        );
    }

    /// A send repeated with its `Idempotency-Key` (a client whose first request timed out,
    /// or whose connection dropped, after the node stored the message) is answered with the
    /// message the first request stored, `200` and `repeated`, and no second message: a
    /// retry was a second, different crisis message. A `respond_within_ms` is the request's,
    /// not the time it comes to, so the repeat, later, is the same request.
    #[tokio::test]
    async fn a_send_repeated_with_its_idempotency_key_stores_one_message() {
        let (_dir, state, base, _server) = serve_test_state().await;
        let body =
            r#"{"to":["KGZ"],"subject":"Flooding","body":"Rising.","respond_within_ms":60000}"#;
        let key = Some(&b"2f1c0e7a-retry-me"[..]);
        let (status, first) = post_keyed(&base, "/v1/messages", body, key).await;
        assert_eq!(status, 201, "{first}");
        assert_eq!(first.get("repeated"), None, "{first}");
        // The repeat comes later, in a later millisecond: a respond-by computed anew would
        // differ.
        let first_ms = now_ms();
        while now_ms() <= first_ms {
            tokio::task::yield_now().await;
        }
        let (status, again) = post_keyed(&base, "/v1/messages", body, key).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["repeated"], true, "{again}");
        for field in ["id", "seq", "recipients"] {
            assert_eq!(again[field], first[field], "{field}: {first} / {again}");
        }
        assert!(
            again["note"].as_str().unwrap().contains("Idempotency-Key"),
            "{again}"
        );
        // The key in the draft's quoted form (a Structured Field string) is the same key.
        let (status, quoted) = post_keyed(
            &base,
            "/v1/messages",
            body,
            Some(&b"\"2f1c0e7a-retry-me\""[..]),
        )
        .await;
        assert_eq!((status, &quoted["id"]), (200, &first["id"]), "{quoted}");
        assert_eq!(sent_count(&state), 1);
        assert_eq!(state.store().outbox_len().unwrap(), 1);
        // Without a key, or with another, each request is a message of its own.
        let (status, _) = post_keyed(&base, "/v1/messages", body, None).await;
        assert_eq!(status, 201);
        let (status, other) =
            post_keyed(&base, "/v1/messages", body, Some(&b"another-key"[..])).await;
        assert_eq!(status, 201);
        assert_ne!(other["id"], first["id"]);
        assert_eq!(sent_count(&state), 3);
    }

    /// The recipients of a send are a set (routing resolves them to one, sorted, and the
    /// envelope refuses one listed twice): the same send with its `to` in another order, or
    /// with a recipient listed twice (taken once), under its key is the same request, and
    /// answered with the message the first stored. Before, the key's digest was of `to` as
    /// listed, and such a retry was refused `422 idempotency_key_reused`.
    #[tokio::test]
    async fn a_send_repeated_with_its_recipients_in_another_order_is_the_same_request() {
        let (_dir, state, base, _server) = serve_test_state().await;
        let key = Some(&b"order-key"[..]);
        let first = r#"{"to":["KGZ","SEC"],"subject":"Flooding","body":"Rising."}"#;
        let (status, sent) = post_keyed(&base, "/v1/messages", first, key).await;
        assert_eq!(status, 201, "{sent}");
        for again in [
            r#"{"to":["SEC","KGZ"],"subject":"Flooding","body":"Rising."}"#,
            r#"{"to":["KGZ","SEC","KGZ"],"subject":"Flooding","body":"Rising."}"#,
            r#"{"to":["SEC","SEC","KGZ"],"subject":"Flooding","body":"Rising."}"#,
        ] {
            let (status, v) = post_keyed(&base, "/v1/messages", again, key).await;
            assert_eq!((status, &v["id"]), (200, &sent["id"]), "{again}: {v}");
            assert_eq!(v["repeated"], true, "{v}");
        }
        // Another set is still another request.
        let other = r#"{"to":["KGZ"],"subject":"Flooding","body":"Rising."}"#;
        assert_key_reused(&base, "/v1/messages", other, key).await;
        assert_eq!(sent_count(&state), 1, "nothing more was stored");
    }

    /// A key an earlier release took for a send whose `to` was not in order was kept with
    /// the digest of `to` as listed; its retry, the same request, after the node's restart
    /// on this release (the classic retry: the answer lost as the node stopped) is answered
    /// with the message stored, not refused `422 idempotency_key_reused` as another request
    /// (the client, told nothing was stored, would send it again under a new key: twice).
    #[tokio::test]
    async fn a_key_an_earlier_release_took_with_recipients_out_of_order_is_still_known() {
        let (_dir, state, base, _server) = serve_test_state().await;
        let key = Some(&b"upgrade-key"[..]);
        let body = r#"{"to":["SEC","KGZ"],"subject":"Flooding","body":"Rising."}"#;
        let (status, sent) = post_keyed(&base, "/v1/messages", body, key).await;
        assert_eq!(status, 201, "{sent}");
        // The digest as the earlier release made it: `to` as listed.
        let digest = |to: Vec<ParticipantId>| {
            let audience = Audience::Participants(to);
            let asked = Asked {
                route: "send",
                answered: None,
                audience: &audience,
                kind: Kind::Alert,
                precedence: Precedence::Routine,
                status: Status::Actual,
                respond_by_ms: None,
                respond_within_ms: None,
                references: &[],
                category: None,
                subject: "Flooding",
                body: "Rising.",
            };
            hotline_proto::Digest::of(&[
                b"hotline node idempotency-key request v1\0",
                &serde_json::to_vec(&asked).unwrap(),
            ])
        };
        let (kgz, sec) = (
            ParticipantId::new("KGZ").unwrap(),
            ParticipantId::new("SEC").unwrap(),
        );
        {
            let conn = state.store();
            let kept: Vec<u8> = conn
                .conn_for_tests()
                .query_row(
                    "SELECT request FROM idempotency WHERE key = 'upgrade-key'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(
                kept,
                digest(vec![kgz.clone(), sec.clone()]).0,
                "this release's digest"
            );
            conn.conn_for_tests()
                .execute(
                    "UPDATE idempotency SET request = ?1 WHERE key = 'upgrade-key'",
                    [&digest(vec![sec, kgz]).0[..]],
                )
                .unwrap();
        }
        let (status, v) = post_keyed(&base, "/v1/messages", body, key).await;
        assert_eq!((status, &v["id"]), (200, &sent["id"]), "{v}");
        assert_eq!(v["repeated"], true, "{v}");
        // Another request under that key is still another.
        let other = r#"{"to":["SEC"],"subject":"Flooding","body":"Rising."}"#;
        assert_key_reused(&base, "/v1/messages", other, key).await;
        assert_eq!(sent_count(&state), 1, "nothing more was stored");
    }

    /// A key given again with another request (another body, audience, respond-by; a reply
    /// where a message was sent) is refused `422 idempotency_key_reused`, and nothing is
    /// stored: it is a client's mistake, and neither request's answer fits the other.
    #[tokio::test]
    async fn an_idempotency_key_reused_for_another_request_is_refused_and_stores_nothing() {
        let (_dir, state, base, _server) = serve_test_state().await;
        let key = Some(&b"key-1"[..]);
        let first =
            r#"{"to":["KGZ"],"subject":"Flooding","body":"Rising.","respond_within_ms":60000}"#;
        let (status, sent) = post_keyed(&base, "/v1/messages", first, key).await;
        assert_eq!(status, 201, "{sent}");
        let id = received_from_kgz(&state, None);
        for (path, other) in [
            (
                "/v1/messages".to_owned(),
                r#"{"to":["KGZ"],"subject":"Flooding","body":"Falling.","respond_within_ms":60000}"#,
            ),
            (
                "/v1/messages".to_owned(),
                r#"{"to":["KGZ"],"subject":"Flooding","body":"Rising.","respond_within_ms":60001}"#,
            ),
            (
                "/v1/messages".to_owned(),
                r#"{"to":["SEC"],"subject":"Flooding","body":"Rising.","respond_within_ms":60000}"#,
            ),
            (
                "/v1/messages".to_owned(),
                r#"{"to":["KGZ"],"subject":"Flooding","body":"Rising.","respond_within_ms":60000,"precedence":"FLASH"}"#,
            ),
            (format!("/v1/messages/{id}/reply"), r#"{"body":"Rising."}"#),
        ] {
            assert_key_reused(&base, &path, other, key).await;
        }
        assert_eq!(sent_count(&state), 1, "nothing more was stored");
        // A reply's key is checked against the message it answers too.
        let reply_key = Some(&b"reply-key"[..]);
        let path = format!("/v1/messages/{id}/reply");
        let (status, reply) = post_keyed(&base, &path, r#"{"body":"Seen."}"#, reply_key).await;
        assert_eq!(status, 201, "{reply}");
        let (status, again) = post_keyed(&base, &path, r#"{"body":"Seen."}"#, reply_key).await;
        assert_eq!((status, &again["id"]), (200, &reply["id"]), "{again}");
        let other = received_from_kgz(&state, None);
        assert_key_reused(
            &base,
            &format!("/v1/messages/{other}/reply"),
            r#"{"body":"Seen."}"#,
            reply_key,
        )
        .await;
        assert_eq!(sent_count(&state), 2);
    }

    /// An `Idempotency-Key` that is not 1 to 128 visible ASCII characters (after the
    /// draft's optional double quotes) is refused `400 bad_idempotency_key`, before
    /// anything is stored; as is one given twice.
    #[tokio::test]
    async fn a_bad_idempotency_key_is_refused() {
        let (_dir, state, base, _server) = serve_test_state().await;
        let body = r#"{"to":["KGZ"],"subject":"Flooding"}"#;
        let long = "k".repeat(129);
        for key in [
            &b""[..],
            b"\"\"",
            long.as_bytes(),
            b"two words",
            b"caf\xc3\xa9",
            b"\"unclosed",
            b"\"a\\\"b\"",
            b"a\"b",
        ] {
            let (status, v) = post_keyed(&base, "/v1/messages", body, Some(key)).await;
            assert_eq!(status, 400, "{:?}: {v}", String::from_utf8_lossy(key));
            assert_eq!(v["code"], "bad_idempotency_key", "{v}");
        }
        let (status, v) = post_keyed(
            &base,
            "/v1/messages",
            body,
            Some(&b"one\r\nIdempotency-Key: two"[..]),
        )
        .await;
        assert_eq!(
            (status, &v["code"]),
            (400, &json!("bad_idempotency_key")),
            "{v}"
        );
        assert_eq!(sent_count(&state), 0, "nothing was stored");
        let longest = "k".repeat(128);
        let (status, v) = post_keyed(&base, "/v1/messages", body, Some(longest.as_bytes())).await;
        assert_eq!(status, 201, "{v}");
        let (status, v) =
            post_keyed(&base, "/v1/messages", body, Some(&b"!#$%&'()*+,-./~"[..])).await;
        assert_eq!(status, 201, "{v}");
    }

    /// Requests with one key that arrive together (a client retrying while its first request
    /// is still being served) make one message: the key is checked and recorded in the
    /// transaction that stores the message, and all are answered with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn repeats_at_once_make_one_message() {
        let (_dir, state, base, _server) = serve_test_state().await;
        let body = r#"{"to":["KGZ"],"subject":"Flooding"}"#;
        // Held, so that every request is in before the first one stores.
        let held = crate::Held::store(&state, false, Duration::from_secs(20));
        let mut background = state.background.subscribe();
        let requests: Vec<_> = (0..8)
            .map(|_| {
                let base = base.clone();
                tokio::spawn(async move {
                    post_keyed(&base, "/v1/messages", body, Some(&b"at-once"[..])).await
                })
            })
            .collect();
        // Every request waits for the store (each on a blocking thread of its own).
        tokio::time::timeout(Duration::from_secs(20), background.wait_for(|n| *n >= 8))
            .await
            .expect("the requests came in")
            .unwrap();
        assert!(!held.release(), "released before its time ran out");
        let mut answers = Vec::new();
        for r in requests {
            answers.push(r.await.unwrap());
        }
        let created = answers.iter().filter(|(s, _)| *s == 201).count();
        assert_eq!(created, 1, "{answers:?}");
        assert!(
            answers.iter().all(|(s, _)| *s == 201 || *s == 200),
            "{answers:?}"
        );
        let ids: std::collections::HashSet<_> =
            answers.iter().map(|(_, v)| v["id"].to_string()).collect();
        assert_eq!(ids.len(), 1, "{answers:?}");
        assert_eq!(sent_count(&state), 1);
    }
}
