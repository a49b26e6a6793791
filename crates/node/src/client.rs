//! A small blocking client for the local API, used by the `hotline` operator commands and by
//! the exercise harness (which drives nodes exactly as an operator would).

use std::io::{BufRead, ErrorKind};
use std::time::Duration;

use serde_json::Value;

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
        let url = format!("{}{path}", self.base);
        let req = self
            .agent
            .request(method, &url)
            .set("Authorization", &format!("Bearer {}", self.token));
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
