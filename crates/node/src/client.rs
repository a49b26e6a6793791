//! A small blocking client for the local API, used by the `hotline` operator commands and by
//! the exercise harness (which drives nodes exactly as an operator would).

use std::io::BufRead;
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

/// A client for one node's API.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl ApiClient {
    /// A client for `http://ADDR` with the bearer token.
    pub fn new(addr: &str, token: &str) -> Self {
        let base = if addr.starts_with("http://") {
            addr.trim_end_matches('/').to_owned()
        } else {
            format!("http://{addr}")
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(2))
            .timeout_read(Duration::from_secs(30))
            .build();
        Self {
            base,
            token: token.trim().to_owned(),
            agent,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
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
            Ok(r) => r
                .into_json::<Value>()
                .map_err(|e| ClientError::Other(format!("bad response from {url}: {e}"))),
            Err(ureq::Error::Status(status, r)) => Err(refusal(status, r)),
            Err(ureq::Error::Transport(t)) => {
                if t.kind() == ureq::ErrorKind::ConnectionFailed || t.kind() == ureq::ErrorKind::Dns
                {
                    Err(ClientError::NotRunning(self.base.clone()))
                } else {
                    Err(ClientError::Other(t.to_string()))
                }
            }
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call("GET", path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call("POST", path, Some(body))
    }

    /// Opens `/v1/events`: once this returns, the node has subscribed this stream, so every
    /// event from then on is in it (a caller that must not miss one opens the stream before
    /// acting). Its events, in order, until the stream ends.
    pub fn events(
        &self,
    ) -> Result<impl Iterator<Item = Result<Value, ClientError>> + use<>, ClientError> {
        let url = format!("{}/v1/events", self.base);
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(2))
            .build();
        // The node subscribes before it answers, so the answer's head means subscribed.
        let resp = agent
            .get(&url)
            .set("Authorization", &format!("Bearer {}", self.token))
            .call()
            .map_err(|e| match e {
                ureq::Error::Transport(_) => ClientError::NotRunning(self.base.clone()),
                ureq::Error::Status(status, r) => refusal(status, r),
            })?;
        let lines = std::io::BufReader::new(resp.into_reader()).lines();
        Ok(lines.filter_map(|line| match line {
            Err(e) => Some(Err(ClientError::Other(e.to_string()))),
            Ok(line) => line
                .strip_prefix("data:")
                .and_then(|data| serde_json::from_str::<Value>(data.trim()).ok())
                .map(Ok),
        }))
    }
}
