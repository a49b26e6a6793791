//! A small blocking client for the local API, used by the `hotline` operator commands and by
//! the exercise harness (which drives nodes exactly as an operator would).

use std::io::{BufRead, ErrorKind};
use std::time::Duration;

use serde_json::Value;

use crate::limits::{API_SEND_ATTEMPTS, API_SEND_RETRY_PAUSE_MS};

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing answers at the API address: the node is not running (or not there).
    #[error("no node answering at {0}: is `hotline node` running?")]
    NotRunning(String),
    /// The node answered with an error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error code from the body.
        code: String,
        /// Message from the body.
        message: String,
    },
    /// The node took the request and did not answer in time: it may be hung, or its store
    /// stalled (a failing disk). What was asked may or may not have been done.
    #[error(
        "the node at {base} did not answer within {within:?}: it may be hung or its disk \
         stalled (its log, `journalctl -u hotline-node`, may say why); what was asked may or \
         may not have been done: look (`hotline sent`, `hotline inbox`, `hotline \
         node-status`) before asking again"
    )]
    NoAnswer {
        /// The API's address.
        base: String,
        /// How long the client waited.
        within: Duration,
    },
    /// Anything else (bad response, I/O).
    #[error("{0}")]
    Other(String),
}

/// The node's refusal, with the `error` and `code` of its answer's body (docs/API.md,
/// Errors), so that every command, `hotline watch` included, says what the node said.
fn refusal(status: u16, r: ureq::Response) -> ClientError {
    let v: Value = r.into_json().unwrap_or(Value::Null);
    ClientError::Api {
        status,
        code: v["code"].as_str().unwrap_or("error").to_owned(),
        message: v["error"].as_str().unwrap_or("request failed").to_owned(),
    }
}

/// How long a call waits for the node's answer, in seconds.
const API_ANSWER_S: u64 = 30;

/// A fresh idempotency key for one send: 32 hex digits from the operating system's random
/// source (as a message id's), which no other send takes.
pub fn fresh_idempotency_key() -> String {
    hotline_proto::MessageId::random().to_string()
}

/// Whether `e` leaves it unknown whether the node did what a send asked, so that the send
/// may be asked again with its idempotency key: no answer in time, no connection (a node
/// restarting), a connection dropped or an answer that does not parse, a 5xx. Not a 507
/// (`disk_full`: nothing was written, and a full disk is not freed in seconds) nor a 4xx
/// (refused: asked again, refused again).
pub fn unknown_outcome(e: &ClientError) -> bool {
    match e {
        ClientError::NoAnswer { .. } | ClientError::NotRunning(_) | ClientError::Other(_) => true,
        ClientError::Api { status, .. } => *status >= 500 && *status != 507,
    }
}

/// Whether a transport error is a read that timed out (ureq wraps the `io::Error`, at times
/// twice).
fn timed_out(t: &ureq::Transport) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(t);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock))
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The path of the next page that a list's `Link` header names (`<PATH>; rel="next"`, RFC
/// 8288, as the node writes it), or `None`. Only a path on the same API is taken, never
/// another address.
pub fn next_page(link: &str) -> Option<String> {
    link.split(',').find_map(|entry| {
        let (target, params) = entry.split_once(';')?;
        let next = params.split(';').any(|p| {
            p.trim()
                .strip_prefix("rel=")
                .is_some_and(|r| r.trim_matches('"').eq_ignore_ascii_case("next"))
        });
        let path = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        (next && path.starts_with('/') && !path.starts_with("//")).then(|| path.to_owned())
    })
}

/// A client for one node's API.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    agent: ureq::Agent,
    /// How long a call waits for an answer.
    answer: Duration,
}

/// Checks a node API address as [`ApiClient::new`] takes it: `HOST:PORT`, as the node's
/// `[api] listen`, or `http://HOST:PORT` (a trailing `/` allowed). An empty or cut address
/// is refused here with what is expected, rather than "no node answering at http://" after
/// a connection attempt, which sends the operator looking at a node that is running. Used
/// for the CLI's `--api` and for the drill harness's endpoints file.
pub fn check_api_addr(s: &str) -> Result<(), String> {
    const EXPECTED: &str =
        "expected HOST:PORT, the node's [api] listen address, e.g. 127.0.0.1:7500";
    let addr = s.strip_prefix("http://").unwrap_or(s);
    let addr = addr.strip_suffix('/').unwrap_or(addr);
    if addr
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.port() != 0)
    {
        return Ok(());
    }
    if addr.is_empty() {
        return Err(format!("empty: {EXPECTED}"));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("no port: {EXPECTED}"));
    };
    if !port.parse::<u16>().is_ok_and(|p| p != 0) {
        return Err(format!(
            "the port is not a number from 1 to 65535: {EXPECTED}"
        ));
    }
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if !host_ok {
        return Err(format!(
            "no host name or address before the port: {EXPECTED}"
        ));
    }
    Ok(())
}

impl ApiClient {
    /// A client for `http://ADDR` with the bearer token.
    pub fn new(addr: &str, token: &str) -> Self {
        Self::answering_within(addr, token, Duration::from_secs(API_ANSWER_S))
    }

    /// [`ApiClient::new`], waiting `answer` for each answer.
    fn answering_within(addr: &str, token: &str, answer: Duration) -> Self {
        let base = if addr.starts_with("http://") {
            addr.trim_end_matches('/').to_owned()
        } else {
            format!("http://{addr}")
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(2))
            .timeout_read(answer)
            .build();
        Self {
            base,
            token: token.trim().to_owned(),
            agent,
            answer,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        self.call_paged(method, path, body).map(|(v, _)| v)
    }

    /// [`ApiClient::call`], with the path of the next page that the answer's `Link: <PATH>;
    /// rel="next"` header names, if any.
    fn call_paged(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(Value, Option<String>), ClientError> {
        self.request(method, path, body, None)
    }

    /// One request, with `Idempotency-Key: "KEY"` if `key` is given.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Result<(Value, Option<String>), ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .agent
            .request(method, &url)
            .set("Authorization", &format!("Bearer {}", self.token));
        if let Some(key) = key {
            req = req.set("Idempotency-Key", &format!("\"{key}\""));
        }
        let resp = match body {
            Some(b) => req.send_json(b.clone()),
            None => req.call(),
        };
        match resp {
            Ok(r) => {
                let next = r.header("link").and_then(next_page);
                let v = r
                    .into_json::<Value>()
                    .map_err(|e| ClientError::Other(format!("bad response from {url}: {e}")))?;
                Ok((v, next))
            }
            Err(ureq::Error::Status(status, r)) => Err(refusal(status, r)),
            Err(ureq::Error::Transport(t)) => Err(self.transport(t, self.answer)),
        }
    }

    /// What a transport error means: nothing listening (the node not running), a node that
    /// took the request and did not answer `within`, or something else.
    fn transport(&self, t: ureq::Transport, within: Duration) -> ClientError {
        if t.kind() == ureq::ErrorKind::ConnectionFailed || t.kind() == ureq::ErrorKind::Dns {
            ClientError::NotRunning(self.base.clone())
        } else if timed_out(&t) {
            ClientError::NoAnswer {
                base: self.base.clone(),
                within,
            }
        } else {
            ClientError::Other(t.to_string())
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call("GET", path, None)
    }

    /// `GET path` of a list (`/v1/inbox`, `/v1/messages`, `/v1/quarantine`): its page, and
    /// the path of the page after it while the list goes on, `None` at its end. A page may
    /// hold fewer items than its `limit` while more remain (it stops at its bytes,
    /// docs/API.md, Conventions): only the absence of a next page ends the list.
    pub fn get_page(&self, path: &str) -> Result<(Value, Option<String>), ClientError> {
        self.call_paged("GET", path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call("POST", path, Some(body))
    }

    /// `POST path` of a send (`/v1/messages`, `/v1/messages/{id}/reply`) with a JSON body
    /// and `Idempotency-Key: "KEY"` (docs/API.md): once, for a caller that asks again
    /// itself (the drill harness), always with the same key.
    pub fn post_keyed(&self, path: &str, body: &Value, key: &str) -> Result<Value, ClientError> {
        self.call_keyed(path, body, key).map(|(v, _)| v)
    }

    /// [`ApiClient::post_keyed`], with a fresh key ([`fresh_idempotency_key`]), asked again
    /// with that key after an answer that leaves it unknown whether the node stored the
    /// message ([`unknown_outcome`]), up to [`API_SEND_ATTEMPTS`] in all, after a pause of
    /// [`API_SEND_RETRY_PAUSE_MS`] doubled each time; `retrying` is told of each such
    /// answer before the pause (the CLI says so). The node stores one message however
    /// often it is asked, and answers the repeat with it (`repeated`). The last error when
    /// every attempt failed.
    pub fn post_idempotent(
        &self,
        path: &str,
        body: &Value,
        mut retrying: impl FnMut(&ClientError, Duration),
    ) -> Result<Value, ClientError> {
        let key = fresh_idempotency_key();
        let mut pause = Duration::from_millis(API_SEND_RETRY_PAUSE_MS);
        let mut attempt = 1;
        loop {
            match self.post_keyed(path, body, &key) {
                Err(e) if attempt < API_SEND_ATTEMPTS && unknown_outcome(&e) => {
                    retrying(&e, pause);
                    std::thread::sleep(pause);
                    pause = pause.saturating_mul(2);
                    attempt += 1;
                }
                answer => return answer,
            }
        }
    }

    /// A `POST` with `Idempotency-Key: key` in the draft's quoted form.
    fn call_keyed(
        &self,
        path: &str,
        body: &Value,
        key: &str,
    ) -> Result<(Value, Option<String>), ClientError> {
        self.request("POST", path, Some(body), Some(key))
    }

    /// Opens `/v1/events`: once this returns, the node has subscribed this stream, so every
    /// event from then on is in it (a caller that must not miss one opens the stream before
    /// acting). Its events, in order, until the stream ends.
    ///
    /// A stream that stays silent for [`crate::limits::EVENTS_SILENCE_MAX_MS`], though the
    /// node sends a keep-alive every [`crate::limits::EVENTS_KEEPALIVE_MS`], ends with an
    /// error: the node is frozen or its machine hung.
    pub fn events(
        &self,
    ) -> Result<impl Iterator<Item = Result<Value, ClientError>> + use<>, ClientError> {
        self.events_unless_silent(Duration::from_millis(crate::limits::EVENTS_SILENCE_MAX_MS))
    }

    /// [`ApiClient::events`], ending with an error after `silence` without a byte.
    fn events_unless_silent(
        &self,
        silence: Duration,
    ) -> Result<impl Iterator<Item = Result<Value, ClientError>> + use<>, ClientError> {
        let url = format!("{}/v1/events", self.base);
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(2))
            .timeout_read(silence)
            .build();
        // The node subscribes before it answers, so the answer's head means subscribed.
        let resp = agent
            .get(&url)
            .set("Authorization", &format!("Bearer {}", self.token))
            .call()
            .map_err(|e| match e {
                ureq::Error::Transport(t) => self.transport(t, silence),
                ureq::Error::Status(status, r) => refusal(status, r),
            })?;
        let lines = std::io::BufReader::new(resp.into_reader()).lines();
        Ok(lines.filter_map(move |line| match line {
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                Some(Err(ClientError::Other(format!(
                    "the node sent nothing, not even a keep-alive, for {silence:?}: it is not answering"
                ))))
            }
            Err(e) => Some(Err(ClientError::Other(e.to_string()))),
            Ok(line) => line
                .strip_prefix("data:")
                .and_then(|data| serde_json::from_str::<Value>(data.trim()).ok())
                .map(Ok),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// The next page is the path a list's `Link` names with `rel="next"`, and nothing else.
    #[test]
    fn the_next_page_is_the_path_a_lists_link_names() {
        assert_eq!(
            next_page("</v1/inbox?unacknowledged=true&before=ab>; rel=\"next\"").as_deref(),
            Some("/v1/inbox?unacknowledged=true&before=ab")
        );
        assert_eq!(
            next_page("</v1/messages?before=ab>;rel=next").as_deref(),
            Some("/v1/messages?before=ab")
        );
        assert_eq!(next_page("</v1/inbox?before=ab>; rel=\"prev\""), None);
        assert_eq!(next_page("<http://192.0.2.1/v1/inbox>; rel=\"next\""), None);
        assert_eq!(next_page("<//192.0.2.1/v1/inbox>; rel=\"next\""), None);
        assert_eq!(next_page("/v1/inbox; rel=\"next\""), None);
        assert_eq!(next_page(""), None);
    }

    /// A node that takes a request and never answers it (its store stalled on a failing
    /// disk, its process frozen) is named as such, and the officer is told that what was
    /// asked may have been done, so that a message is not sent twice in a hurry: the
    /// error was ureq's own text, `Network Error: Network Error: Error encountered in the
    /// status line: timed out reading response`.
    #[test]
    fn a_node_that_does_not_answer_is_told_apart_and_the_request_may_have_been_done() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            // Hung: the requests are read by nobody, and nothing is answered.
            let held: Vec<_> = (0..2).map(|_| listener.accept().expect("accept")).collect();
            let _ = hold_rx.recv();
            drop(held);
        });
        let client =
            ApiClient::answering_within(&addr.to_string(), "token", Duration::from_millis(300));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let sent = client.post("/v1/messages", &serde_json::json!({"subject": "x"}));
            // `hotline watch` too: not "no node answering: is `hotline node` running?".
            let watched = client
                .events_unless_silent(Duration::from_millis(300))
                .map(|_| ());
            let _ = done_tx.send((sent.map(|_| ()), watched));
        });
        let (sent, watched) = done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the calls ended");
        for e in [sent, watched] {
            let e = e.expect_err("no answer");
            let text = e.to_string();
            assert!(
                matches!(e, ClientError::NoAnswer { .. })
                    && text.contains(&format!(
                        "the node at http://{addr} did not answer within 300ms"
                    ))
                    && text.contains("may or may not have been done"),
                "{text}"
            );
        }
        drop(hold_tx);
        server.join().expect("server");
    }

    /// A request or an answer read whole from `s`: its head, and the body its
    /// `Content-Length` gives (the client's requests and the node's answers have one).
    fn read_http(s: &mut std::net::TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).expect("a head");
            got.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |n| n.trim().parse().expect("a length"));
        let mut body = vec![0u8; length];
        s.read_exact(&mut body).expect("a body");
        got.extend_from_slice(&body);
        got
    }

    /// A send whose answer was lost (the node stored the message, then the connection
    /// dropped before the answer reached the client) is asked again with its idempotency
    /// key, and the node stores one message and answers the repeat with it: the drill
    /// harness and the CLI asked again as a new request, which was a second message.
    #[test]
    fn a_send_whose_answer_was_lost_is_asked_again_and_stored_once() {
        let dir = tempfile::tempdir().expect("a directory");
        let state = crate::test_state(dir.path());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let node = listener.local_addr().expect("address");
        let app = crate::api::router(state.clone());
        rt.spawn(async move { axum::serve(listener, app).await });
        // Passes each request on to the node and its answer back, on a connection of its
        // own; the first answer is read from the node and then lost: the client's
        // connection is closed without it.
        let proxy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = proxy.local_addr().expect("address");
        let (lost_tx, lost_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for (n, conn) in proxy.incoming().enumerate() {
                let Ok(mut client) = conn else { break };
                let request = read_http(&mut client);
                let mut upstream = std::net::TcpStream::connect(node).expect("the node");
                upstream.write_all(&request).expect("passed on");
                let answer = read_http(&mut upstream);
                if n == 0 {
                    let _ = lost_tx.send(answer);
                    continue;
                }
                let _ = client.write_all(&answer);
            }
        });
        let client = ApiClient::new(&addr.to_string(), "token");
        let body = serde_json::json!({"to": ["KGZ"], "subject": "Flooding", "body": "Rising."});
        let mut told = Vec::new();
        let answer = client
            .post_idempotent("/v1/messages", &body, |e, pause| {
                told.push((e.to_string(), pause))
            })
            .expect("answered the second time");
        let lost = lost_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the first answer");
        let lost = String::from_utf8_lossy(&lost).into_owned();
        assert!(lost.starts_with("HTTP/1.1 201"), "{lost}");
        let (_, lost) = lost.split_once("\r\n\r\n").expect("a body");
        let lost: Value = serde_json::from_str(lost).expect("JSON");
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!(told[0].1, Duration::from_millis(API_SEND_RETRY_PAUSE_MS));
        assert_eq!(answer["id"], lost["id"], "{answer}");
        assert_eq!(answer["repeated"], true, "{answer}");
        let sent: i64 = state
            .store()
            .conn_for_tests()
            .query_row("SELECT COUNT(*) FROM sent", [], |r| r.get(0))
            .expect("counted");
        assert_eq!(sent, 1, "one message");
    }

    /// A send is asked again only while its outcome is unknown, and at most
    /// `API_SEND_ATTEMPTS` times in all: a refusal (4xx) or a full disk (507, nothing
    /// written) is final.
    #[test]
    fn only_an_unknown_outcome_is_asked_again() {
        let api = |status: u16| ClientError::Api {
            status,
            code: String::new(),
            message: String::new(),
        };
        assert!(unknown_outcome(&ClientError::NotRunning("x".into())));
        assert!(unknown_outcome(&ClientError::Other("reset".into())));
        assert!(unknown_outcome(&ClientError::NoAnswer {
            base: "x".into(),
            within: Duration::from_secs(30)
        }));
        assert!(unknown_outcome(&api(500)));
        assert!(unknown_outcome(&api(503)));
        for status in [400, 401, 404, 409, 413, 422, 507] {
            assert!(!unknown_outcome(&api(status)), "{status}");
        }
        // A node that answers 500 every time is asked API_SEND_ATTEMPTS times, each with
        // the same key.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = std::thread::spawn(move || {
            let mut keys = Vec::new();
            for _ in 0..API_SEND_ATTEMPTS {
                let (mut s, _) = listener.accept().expect("accept");
                let request = String::from_utf8_lossy(&read_http(&mut s)).into_owned();
                keys.extend(
                    request
                        .lines()
                        .find_map(|l| l.strip_prefix("Idempotency-Key: "))
                        .map(str::to_owned),
                );
                let body = r#"{"error":"the store failed","code":"storage"}"#;
                let _ = write!(
                    s,
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
            keys
        });
        let client = ApiClient::new(&addr.to_string(), "token");
        let mut told = 0;
        let e = client
            .post_idempotent("/v1/messages", &serde_json::json!({}), |_, _| told += 1)
            .expect_err("failed every time");
        assert!(matches!(e, ClientError::Api { status: 500, .. }), "{e}");
        assert_eq!(told, API_SEND_ATTEMPTS - 1);
        let keys = server.join().expect("server");
        assert_eq!(keys.len(), API_SEND_ATTEMPTS as usize, "{keys:?}");
        assert!(keys.iter().all(|k| k == &keys[0]), "{keys:?}");
        assert!(keys[0].starts_with('"') && keys[0].len() == 34, "{keys:?}");
    }

    /// A node that subscribed the stream and then says nothing, not even a keep-alive (its
    /// process frozen), ends the stream with an error rather than leaving `hotline watch`
    /// waiting in silence for good.
    #[test]
    fn an_event_stream_gone_silent_ends_with_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).expect("request head");
                head.push(byte[0]);
            }
            s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n\
                  data: {\"type\":\"relay_up\"}\n\n",
            )
            .expect("answer");
            // Frozen: the connection stays open, and nothing more comes.
            let _ = hold_rx.recv();
        });
        let client = ApiClient::new(&addr.to_string(), "token");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut events = client
                .events_unless_silent(Duration::from_millis(300))
                .expect("subscribed");
            let first = events.next().map(|e| e.map(|v| v["type"].clone()));
            let _ = done_tx.send((first, events.next()));
        });
        let (first, then) = done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the silent stream ended");
        assert_eq!(
            first.map(|e| e.map_err(|e| e.to_string())),
            Some(Ok(Value::from("relay_up")))
        );
        let e = then.expect("an item").expect_err("an error").to_string();
        assert!(e.contains("not even a keep-alive"), "{e}");
        drop(hold_tx);
        server.join().expect("server");
    }
}
