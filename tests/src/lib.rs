//! Fixtures for end-to-end tests: a temporary network (keys, signed roster, relay
//! certificate and configuration) and a protocol-level test client over real QUIC.
//!
//! Everything binds 127.0.0.1 port 0. Waiting is always on an event with a timeout.

#![allow(missing_docs, clippy::unwrap_used)]

pub mod powercut;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use hotline_net::{Fingerprint, TransportLimits};
use hotline_proto::frame::{NodeToRelay, RelayToNode};
use hotline_proto::{
    Audience, Envelope, Group, Kind, MessageId, Participant, ParticipantId, Precedence, PublicKey,
    Receipt, ReceiptItem, ReceiptKind, Role, Roster, Seq, Signed, SigningKey, Status,
    PROTOCOL_VERSION,
};

/// How long a test waits for any single expected event.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn now_ms() -> u64 {
    hotline_relay::now_ms()
}

pub fn pid(s: &str) -> ParticipantId {
    ParticipantId::new(s).unwrap()
}

/// A temporary hotline network on disk.
pub struct Net {
    pub dir: tempfile::TempDir,
    pub keys: HashMap<String, SigningKey>,
    pub roster_key: SigningKey,
    pub roster: Roster,
    pub fingerprint: Fingerprint,
    pub relay_config: PathBuf,
}

impl Net {
    /// The Secretariat and two members, KAZ and KGZ, no groups.
    pub fn sec_kaz_kgz() -> Self {
        Self::sec_kaz_kgz_with("")
    }

    /// As `sec_kaz_kgz`, with extra lines appended to relay.toml (e.g. a `[limits]` table).
    pub fn sec_kaz_kgz_with(relay_toml: &str) -> Self {
        Self::with_relay_toml(
            &[
                ("SEC", Role::Secretariat),
                ("KAZ", Role::Member),
                ("KGZ", Role::Member),
            ],
            &[],
            relay_toml,
        )
    }

    /// A network with the given participants (id, role) and groups, roster version 1.
    pub fn new(participants: &[(&str, Role)], groups: &[(&str, &[&str])]) -> Self {
        Self::with_relay_toml(participants, groups, "")
    }

    /// As `new`, with extra lines appended to relay.toml (e.g. a `[limits]` table).
    pub fn with_relay_toml(
        participants: &[(&str, Role)],
        groups: &[(&str, &[&str])],
        extra: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut keys = HashMap::new();
        let mut ps = Vec::new();
        for (i, (id, role)) in participants.iter().enumerate() {
            let mut seed = [0u8; 32];
            seed[0] = 1;
            seed[1] = i as u8;
            let k = SigningKey::from_bytes(&seed);
            ps.push(Participant {
                id: pid(id),
                name: format!("Participant {id}"),
                role: *role,
                keys: vec![PublicKey::of(&k)],
                revoked: false,
            });
            keys.insert(id.to_string(), k);
        }
        let roster = Roster {
            protocol_version: PROTOCOL_VERSION,
            version: 1,
            issued_at_ms: now_ms(),
            network: "TEST".into(),
            participants: ps,
            groups: groups
                .iter()
                .map(|(n, m)| Group {
                    name: n.to_string(),
                    members: m.iter().map(|s| pid(s)).collect(),
                })
                .collect(),
        };
        let roster_key = SigningKey::from_bytes(&[0xAA; 32]);
        let cert = dir.path().join("relay.crt");
        let key = dir.path().join("relay.key");
        let fingerprint = hotline_net::tls::write_self_signed(&cert, &key).unwrap();
        let relay_config = dir.path().join("relay.toml");
        let net = Self {
            dir,
            keys,
            roster_key,
            roster,
            fingerprint,
            relay_config,
        };
        net.write_roster();
        std::fs::write(
            &net.relay_config,
            format!(
                "listen = \"127.0.0.1:0\"\ncert = \"relay.crt\"\nkey = \"relay.key\"\nroster = \"roster.signed\"\nroster_key = \"{}\"\ndata_dir = \"relay-data\"\nmetrics_listen = \"127.0.0.1:0\"\n{extra}\n",
                PublicKey::of(&net.roster_key)
            ),
        )
        .unwrap();
        net
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Signs the current roster and writes it to roster.signed.
    pub fn write_roster(&self) {
        let signed = Signed::sign(&self.roster, &self.roster_key).unwrap();
        hotline_config::roster_file::write_signed_roster(
            &self.path().join("roster.signed"),
            &signed,
        )
        .unwrap();
    }

    /// Edits the roster, bumps its version and writes it.
    pub fn update_roster(&mut self, f: impl FnOnce(&mut Roster)) {
        f(&mut self.roster);
        self.roster.version += 1;
        self.write_roster();
    }

    /// Writes the next roster version, with `id` revoked.
    pub fn revoke(&mut self, id: &str) {
        self.update_roster(|r| {
            r.participants
                .iter_mut()
                .find(|p| p.id.as_str() == id)
                .expect("a participant of the roster")
                .revoked = true;
        });
    }

    pub fn config(&self) -> hotline_relay::RelayConfig {
        hotline_relay::RelayConfig::load(&self.relay_config).unwrap()
    }

    pub async fn relay(&self) -> hotline_relay::RelayHandle {
        hotline_relay::Relay::spawn(self.config()).await.unwrap()
    }

    /// A relay on this network, hosted as `hosting` says (a test seam).
    pub async fn relay_with(&self, hosting: hotline_relay::Hosting) -> hotline_relay::RelayHandle {
        hotline_relay::Relay::spawn_with(self.config(), hosting)
            .await
            .unwrap()
    }

    /// Writes the configuration of a second relay of this network, `name`: a certificate
    /// of its own (NAME.crt, NAME.key), its own store (NAME-data), listening on `listen`,
    /// the same roster. Returns the configuration and its certificate's fingerprint; the
    /// relay starts with `hotline_relay::Relay::spawn(RelayConfig::load(&path)?)`.
    pub fn other_relay_config(&self, name: &str, listen: SocketAddr) -> (PathBuf, Fingerprint) {
        let cert = self.path().join(format!("{name}.crt"));
        let key = self.path().join(format!("{name}.key"));
        let fingerprint = hotline_net::tls::write_self_signed(&cert, &key).unwrap();
        let text = std::fs::read_to_string(&self.relay_config)
            .unwrap()
            .replace("\"relay.crt\"", &format!("\"{name}.crt\""))
            .replace("\"relay.key\"", &format!("\"{name}.key\""))
            .replace("\"relay-data\"", &format!("\"{name}-data\""))
            .replace("\"127.0.0.1:0\"\ncert", &format!("\"{listen}\"\ncert"));
        let path = self.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        (path, fingerprint)
    }

    pub fn key(&self, id: &str) -> SigningKey {
        self.keys[id].clone()
    }

    pub async fn client(&self, addr: SocketAddr, id: &str) -> anyhow::Result<Client> {
        Client::connect(addr, self.fingerprint, id, self.key(id)).await
    }
}

/// A client QUIC endpoint trusting `fp`.
pub fn endpoint(fp: Fingerprint) -> quinn::Endpoint {
    endpoint_on([127, 0, 0, 1], fp)
}

/// A client QUIC endpoint on the loopback address `ip` (any of 127.0.0.0/8: a test's
/// stand-in for another machine), trusting `fp`.
pub fn endpoint_on(ip: [u8; 4], fp: Fingerprint) -> quinn::Endpoint {
    hotline_net::transport::client_endpoint((ip, 0).into(), vec![fp], &TransportLimits::default())
        .unwrap()
}

/// A protocol-level client: what a node does, without the node's storage.
pub struct Client {
    pub id: ParticipantId,
    pub key: SigningKey,
    pub session: hotline_net::Session,
    pub seq: u64,
    _endpoint: quinn::Endpoint,
}

impl Client {
    pub async fn connect(
        addr: SocketAddr,
        fp: Fingerprint,
        id: &str,
        key: SigningKey,
    ) -> anyhow::Result<Self> {
        Self::connect_from([127, 0, 0, 1], addr, fp, id, key).await
    }

    /// [`Client::connect`] from the loopback address `ip`.
    pub async fn connect_from(
        ip: [u8; 4],
        addr: SocketAddr,
        fp: Fingerprint,
        id: &str,
        key: SigningKey,
    ) -> anyhow::Result<Self> {
        let ep = endpoint_on(ip, fp);
        let conn = hotline_net::connect(&ep, addr, EVENT_TIMEOUT).await?;
        let session =
            hotline_net::authenticate(conn, &pid(id), &key, 0, now_ms(), EVENT_TIMEOUT).await?;
        let seq = session.welcome.last_seq.0;
        Ok(Self {
            id: pid(id),
            key,
            session,
            seq,
            _endpoint: ep,
        })
    }

    /// A new envelope from this client (next sequence number).
    pub fn envelope(&mut self, audience: Audience, subject: &str) -> Envelope {
        self.seq += 1;
        Envelope {
            version: PROTOCOL_VERSION,
            id: MessageId::random(),
            sender: self.id.clone(),
            seq: Seq(self.seq),
            audience,
            kind: Kind::Alert,
            precedence: Precedence::Flash,
            status: Status::Exercise,
            created_at_ms: now_ms(),
            respond_by_ms: None,
            references: vec![],
            category: None,
            subject: subject.into(),
            body: "body".into(),
        }
    }

    pub fn sign(&self, env: &Envelope) -> Signed<Envelope> {
        Signed::sign(env, &self.key).unwrap()
    }

    pub async fn send(&mut self, f: &NodeToRelay) -> anyhow::Result<()> {
        self.session.writer.write(f).await?;
        Ok(())
    }

    pub async fn submit(&mut self, s: &Signed<Envelope>) -> anyhow::Result<()> {
        self.send(&NodeToRelay::Submit(s.clone())).await
    }

    /// The next frame, or an error after EVENT_TIMEOUT.
    pub async fn next(&mut self) -> anyhow::Result<RelayToNode> {
        match tokio::time::timeout(EVENT_TIMEOUT, self.session.reader.read::<RelayToNode>()).await {
            Ok(Ok(Some(f))) => Ok(f),
            Ok(Ok(None)) => bail!("{}: stream finished", self.id),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("{}: no frame within {:?}", self.id, EVENT_TIMEOUT),
        }
    }

    /// Frames until `pick` returns Some; other frames are skipped (returned in the Vec).
    pub async fn until<T>(
        &mut self,
        mut pick: impl FnMut(&RelayToNode) -> Option<T>,
    ) -> anyhow::Result<(T, Vec<RelayToNode>)> {
        let mut skipped = Vec::new();
        loop {
            let f = self
                .next()
                .await
                .with_context(|| format!("skipped so far: {skipped:?}"))?;
            if let Some(t) = pick(&f) {
                return Ok((t, skipped));
            }
            skipped.push(f);
        }
    }

    /// Signs and sends a receipt for `messages`.
    pub async fn receipt(
        &mut self,
        kind: ReceiptKind,
        messages: &[Signed<Envelope>],
    ) -> anyhow::Result<Signed<Receipt>> {
        let items = messages
            .iter()
            .map(|m| {
                let env = m.decode_unverified().unwrap();
                ReceiptItem {
                    id: env.id,
                    sender: env.sender,
                    digest: m.digest(),
                }
            })
            .collect();
        let r = Receipt {
            version: PROTOCOL_VERSION,
            recipient: self.id.clone(),
            kind,
            created_at_ms: now_ms(),
            items,
        };
        let s = Signed::sign(&r, &self.key).unwrap();
        self.send(&NodeToRelay::Receipt(s.clone())).await?;
        Ok(s)
    }
}

/// The `hotline` binary built by cargo (see `hotline_exercise::process::hotline_bin`).
pub fn hotline_bin() -> anyhow::Result<PathBuf> {
    hotline_exercise::process::hotline_bin()
}

/// A `hotline` child process, killed when dropped: the exercise harness's process handle
/// with the tests' event timeout.
pub struct Proc(hotline_exercise::process::Proc);

impl Proc {
    /// Starts `hotline args…` in `dir`, logging to `dir/log_name`.
    pub fn spawn(args: &[&str], dir: &Path, log_name: &str) -> anyhow::Result<Self> {
        Ok(Self(hotline_exercise::process::Proc::spawn(
            &hotline_bin()?,
            args,
            dir,
            log_name,
        )?))
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&mut self) {
        // A test's process still there after SIGKILL is a broken test machine.
        if let Err(e) = self.0.kill9() {
            panic!("{e}");
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// Sends a signal by name (`TERM`, `HUP`…).
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        self.0.signal(sig)
    }

    /// All log lines so far.
    pub fn log(&self) -> String {
        self.0.log()
    }

    /// Waits until a log line (after the first `skip` lines) contains `needle`.
    pub async fn wait_log_from(&mut self, skip: usize, needle: &str) -> anyhow::Result<String> {
        self.0.wait_log_from(skip, needle, EVENT_TIMEOUT).await
    }

    /// Waits until any log line contains `needle`.
    pub async fn wait_log(&mut self, needle: &str) -> anyhow::Result<String> {
        self.0.wait_log(needle, EVENT_TIMEOUT).await
    }

    /// Lines logged so far (to wait only for later ones).
    pub fn log_len(&self) -> usize {
        self.0.log_len()
    }

    /// Waits for the process to exit, at most `timeout`; its exit status.
    pub async fn wait_exit(
        self,
        timeout: Duration,
    ) -> anyhow::Result<(std::process::ExitStatus, Proc)> {
        let (st, p) = self.0.wait_exit(timeout).await?;
        Ok((st, Proc(p)))
    }
}

// ---------------------------------------------------------------------------------------
// Helpers for the relay suite (tests/it/relay*.rs).
// ---------------------------------------------------------------------------------------

use hotline_net::NetError;
use hotline_proto::frame::{Accepted, ErrorCode, RejectCode, Rejected, Subject};

impl Client {
    /// Waits for the relay's answer (`Accepted` or `Rejected`) naming message `id`; other
    /// frames are skipped.
    pub async fn answer(&mut self, id: MessageId) -> anyhow::Result<Result<Accepted, Rejected>> {
        let (a, _) = self
            .until(|f| match f {
                RelayToNode::Accepted(a) if a.id == id => Some(Ok(a.clone())),
                RelayToNode::Rejected(r) if r.subject == Subject::Message(id) => {
                    Some(Err(r.clone()))
                }
                _ => None,
            })
            .await?;
        Ok(a)
    }

    /// Waits for the answers to several messages, in whatever order the relay sends them
    /// (a rejection written by the session can overtake acceptances from the store);
    /// returned in the order of `ids`.
    pub async fn answers(
        &mut self,
        ids: &[MessageId],
    ) -> anyhow::Result<Vec<Result<Accepted, Rejected>>> {
        let mut got: Vec<Option<Result<Accepted, Rejected>>> = vec![None; ids.len()];
        while got.iter().any(Option::is_none) {
            let ((i, a), _) = self
                .until(|f| match f {
                    RelayToNode::Accepted(a) => ids
                        .iter()
                        .position(|id| *id == a.id)
                        .map(|i| (i, Ok(a.clone()))),
                    RelayToNode::Rejected(r) => ids
                        .iter()
                        .position(|id| r.subject == Subject::Message(*id))
                        .map(|i| (i, Err(r.clone()))),
                    _ => None,
                })
                .await?;
            got[i] = Some(a);
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Waits for `Accepted` for message `id`; a rejection is an error.
    pub async fn accepted(&mut self, id: MessageId) -> anyhow::Result<Accepted> {
        match self.answer(id).await? {
            Ok(a) => Ok(a),
            Err(r) => bail!("{}: message {id} rejected: {r:?}", self.id),
        }
    }

    /// Waits for `Rejected` for message `id` and returns its code; acceptance is an error.
    pub async fn rejected(&mut self, id: MessageId) -> anyhow::Result<RejectCode> {
        match self.answer(id).await? {
            Ok(a) => bail!(
                "{}: message {id} accepted, expected a rejection: {a:?}",
                self.id
            ),
            Err(r) => Ok(r.code),
        }
    }

    /// Submits a signed envelope and waits for its answer.
    pub async fn submit_wait(
        &mut self,
        s: &Signed<Envelope>,
    ) -> anyhow::Result<Result<Accepted, Rejected>> {
        let id = s.decode_unverified()?.id;
        self.submit(s).await?;
        self.answer(id).await
    }

    /// Builds, signs, submits a message to `to` and waits until it is accepted.
    pub async fn send_to(&mut self, to: &str, subject: &str) -> anyhow::Result<Signed<Envelope>> {
        let env = self.envelope(Audience::Participants(vec![pid(to)]), subject);
        let s = self.sign(&env);
        self.submit(&s).await?;
        self.accepted(env.id).await?;
        Ok(s)
    }

    /// The next forwarded `Receipt`, and the frames skipped before it.
    pub async fn next_receipt(&mut self) -> anyhow::Result<(Signed<Receipt>, Vec<RelayToNode>)> {
        self.until(|f| match f {
            RelayToNode::Receipt(s) => Some(s.clone()),
            _ => None,
        })
        .await
    }

    /// The next `Deliver`, and the frames skipped before it.
    pub async fn next_deliver(&mut self) -> anyhow::Result<(Signed<Envelope>, Vec<RelayToNode>)> {
        self.until(|f| match f {
            RelayToNode::Deliver(s) => Some(s.clone()),
            _ => None,
        })
        .await
    }

    /// Sends a receipt for `messages` and waits until the relay has stored it.
    pub async fn receipt_stored(
        &mut self,
        kind: ReceiptKind,
        messages: &[Signed<Envelope>],
    ) -> anyhow::Result<Signed<Receipt>> {
        let r = self.receipt(kind, messages).await?;
        if let Err(x) = self.receipt_answer(r.digest()).await? {
            bail!("{}: receipt rejected: {x:?}", self.id);
        }
        Ok(r)
    }

    /// Waits for the relay's answer to the receipt with digest `d`: stored, or refused.
    pub async fn receipt_answer(
        &mut self,
        d: hotline_proto::Digest,
    ) -> anyhow::Result<Result<(), Rejected>> {
        let (res, _) = self
            .until(|f| match f {
                RelayToNode::ReceiptStored(x) if *x == d => Some(Ok(())),
                RelayToNode::Rejected(x) if x.subject == Subject::Receipt(d) => {
                    Some(Err(x.clone()))
                }
                _ => None,
            })
            .await?;
        Ok(res)
    }

    /// Waits until the relay closes this connection; the hotline close code.
    pub async fn closed_code(&self) -> anyhow::Result<ErrorCode> {
        close_code(&self.session.conn).await
    }

    /// Closes the connection as a node does when it shuts down (code `Normal`).
    pub fn close(self) {
        self.session
            .conn
            .close(ErrorCode::Normal.close_code().into(), b"test client done");
    }
}

/// Waits until `conn` is closed and returns the hotline code the peer closed it with.
pub async fn close_code(conn: &quinn::Connection) -> anyhow::Result<ErrorCode> {
    Ok(close_code_and_reason(conn).await?.0)
}

/// Waits until `conn` is closed and returns the hotline code the peer closed it with, and
/// its reason text.
pub async fn close_code_and_reason(
    conn: &quinn::Connection,
) -> anyhow::Result<(ErrorCode, String)> {
    let e = tokio::time::timeout(EVENT_TIMEOUT, conn.closed())
        .await
        .map_err(|_| anyhow::anyhow!("connection still open after {EVENT_TIMEOUT:?}"))?;
    match NetError::from_connection(e) {
        NetError::Closed { code, reason } => Ok((code, reason)),
        other => bail!("connection ended without a hotline close code: {other}"),
    }
}

/// The hotline code with which a connection attempt was refused.
pub fn refusal_code(r: anyhow::Result<Client>) -> anyhow::Result<ErrorCode> {
    match r {
        Ok(c) => bail!("{} was let in", c.id),
        Err(e) => match e.downcast_ref::<NetError>() {
            Some(NetError::Closed { code, .. }) => Ok(*code),
            _ => bail!("refused without a hotline close code: {e:#}"),
        },
    }
}

/// A QUIC connection to the relay that has not authenticated (with its endpoint, which must
/// outlive it).
pub async fn raw_connect(
    addr: SocketAddr,
    fp: Fingerprint,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    raw_connect_from([127, 0, 0, 1], addr, fp).await
}

/// [`raw_connect`] from the loopback address `ip`.
pub async fn raw_connect_from(
    ip: [u8; 4],
    addr: SocketAddr,
    fp: Fingerprint,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    let ep = endpoint_on(ip, fp);
    let conn = hotline_net::connect(&ep, addr, EVENT_TIMEOUT).await?;
    Ok((ep, conn))
}

/// Sends a message from `a` to `b` and checks that it is accepted, delivered unchanged and
/// receipted: the relay still serves well-behaved clients.
pub async fn assert_flows(a: &mut Client, b: &mut Client, subject: &str) -> anyhow::Result<()> {
    let s = a
        .send_to(b.id.as_str(), subject)
        .await
        .with_context(|| format!("{subject}: {} -> {}", a.id, b.id))?;
    let (got, _) = b
        .until(|f| match f {
            RelayToNode::Deliver(d) if *d == s => Some(d.clone()),
            _ => None,
        })
        .await
        .with_context(|| format!("{subject}: delivery to {}", b.id))?;
    b.receipt_stored(ReceiptKind::Delivered, &[got]).await?;
    Ok(())
}

/// The value of a metric line `name value` (name including any labels).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until the relay's metric `name` (at its metrics address `addr`) satisfies `ok`,
/// and returns its value; an error after EVENT_TIMEOUT. The relay's counters have no change
/// notification, so this reads `/metrics` again every 20 ms: a wait on a condition with a
/// deadline, for facts that no event or log line carries (e.g. what a second relay stored).
pub async fn wait_metric(
    addr: SocketAddr,
    name: &str,
    ok: impl Fn(f64) -> bool,
) -> anyhow::Result<f64> {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut last = None;
    loop {
        tick.tick().await;
        // Each read is bounded by the same deadline, not by a timeout of its own.
        let text = tokio::time::timeout_at(deadline, http_get(addr, "/metrics"))
            .await
            .map_err(|_| anyhow::anyhow!("metric {name} at {addr}: no answer by the deadline"))??;
        last = metric(&text, name).or(last);
        if let Some(v) = last.filter(|v| ok(*v)) {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("metric {name} at {addr}: last value {last:?} after {EVENT_TIMEOUT:?}");
        }
    }
}

/// Plain HTTP/1.1 GET on a TCP address; the whole response (head and body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(EVENT_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow::anyhow!("GET {path}: no response within {EVENT_TIMEOUT:?}"))?
}

/// The socket address in a log line's `addr=` field (e.g. the relay's "relay listening").
pub fn addr_field(line: &str) -> anyhow::Result<SocketAddr> {
    let rest = line
        .split("addr=")
        .nth(1)
        .with_context(|| format!("no addr= in {line:?}"))?;
    let a = rest.split_whitespace().next().unwrap_or_default();
    a.parse()
        .with_context(|| format!("addr={a:?} in {line:?} is not a socket address"))
}

// ---------------------------------------------------------------------------------------
// Helpers for the node suite (tests/it/node.rs): node configurations written into the
// network directory, `hotline node` processes, the operator CLI and the event stream.
// ---------------------------------------------------------------------------------------

/// A loopback UDP address that was free a moment ago: for a relay that must start after
/// the nodes' configurations already name it.
pub fn free_udp_addr() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// A loopback TCP address that was free a moment ago (nothing listens there).
pub fn free_tcp_addr() -> SocketAddr {
    let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// How a node's configuration differs from the plain one (one relay, the network's pins).
#[derive(Clone, Debug, Default)]
pub struct NodeSetup {
    /// The relays' addresses.
    pub relays: Vec<SocketAddr>,
    /// The pinned relay certificate fingerprint (default: the network's relay certificate).
    pub fingerprint: Option<Fingerprint>,
    /// Relays pinned to a certificate of their own rather than `fingerprint`, by address.
    pub pins: Vec<(SocketAddr, Fingerprint)>,
    /// The starting roster file, relative to the network directory (default roster.signed).
    pub roster: Option<String>,
    /// The pinned roster key (default: the network's roster key).
    pub roster_key: Option<PublicKey>,
    /// The body of a `[hooks]` table, if any.
    pub hooks: Option<String>,
    /// `receipt_pace_ms`, if set.
    pub receipt_pace_ms: Option<u64>,
    /// `quarantine_max_bytes`, if set.
    pub quarantine_max_bytes: Option<u64>,
}

/// A `[hooks]` line running hook `name` as a shell command that appends each event it is
/// given (one JSON line) to `file`.
pub fn appending_hook(name: &str, file: &Path) -> String {
    format!("{name} = [\"sh\", \"-c\", \"cat >> '{}'\"]", file.display())
}

impl NodeSetup {
    pub fn relay(addr: SocketAddr) -> Self {
        Self {
            relays: vec![addr],
            ..Self::default()
        }
    }
}

impl Net {
    /// Writes DIR/ID.key and DIR/ID.toml for participant `id` with one relay at `relay`;
    /// returns the configuration's path.
    pub fn node_config(&self, id: &str, relay: SocketAddr) -> PathBuf {
        self.node_config_with(id, &NodeSetup::relay(relay))
    }

    /// Writes DIR/ID.key (if missing) and DIR/ID.toml as `setup` says.
    pub fn node_config_with(&self, id: &str, setup: &NodeSetup) -> PathBuf {
        let key = self.path().join(format!("{id}.key"));
        if !key.exists() {
            hotline_config::keyfile::write_secret(
                &key,
                &self.key(id),
                hotline_config::keyfile::IfExists::Refuse,
            )
            .unwrap();
        }
        let fp = setup.fingerprint.unwrap_or(self.fingerprint);
        let roster = setup.roster.as_deref().unwrap_or("roster.signed");
        let roster_key = setup
            .roster_key
            .unwrap_or_else(|| PublicKey::of(&self.roster_key));
        let mut text = format!(
            "participant = \"{id}\"\nkey = \"{id}.key\"\nroster = \"{roster}\"\nroster_key = \"{roster_key}\"\ndata_dir = \"node-{id}\"\n"
        );
        if let Some(ms) = setup.receipt_pace_ms {
            text.push_str(&format!("receipt_pace_ms = {ms}\n"));
        }
        if let Some(n) = setup.quarantine_max_bytes {
            text.push_str(&format!("quarantine_max_bytes = {n}\n"));
        }
        for r in &setup.relays {
            let fp = setup
                .pins
                .iter()
                .find(|(a, _)| a == r)
                .map_or(fp, |(_, f)| *f);
            text.push_str(&format!(
                "\n[[relays]]\naddress = \"{r}\"\nfingerprint = \"{fp}\"\n"
            ));
        }
        text.push_str(&format!(
            "\n[api]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{id}.token\"\n"
        ));
        if let Some(h) = &setup.hooks {
            text.push_str(&format!("\n[hooks]\n{h}\n"));
        }
        let path = self.path().join(format!("{id}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Makes relay.toml listen on `addr` instead of port 0 (so that a relay restarted, or
    /// started after the nodes, is where their configurations say).
    pub fn set_relay_listen(&self, addr: SocketAddr) {
        let text = std::fs::read_to_string(&self.relay_config).unwrap();
        let mut out = String::new();
        for line in text.lines() {
            if line.starts_with("listen = ") {
                out.push_str(&format!("listen = \"{addr}\""));
            } else {
                out.push_str(line);
            }
            out.push('\n');
        }
        std::fs::write(&self.relay_config, out).unwrap();
    }

    /// Starts `hotline node --config DIR/ID.toml` (written before) and waits for its API.
    pub async fn start_node(&self, id: &str) -> anyhow::Result<NodeProc> {
        NodeProc::start(self.path(), id).await
    }

    /// Writes KAZ's and KGZ's configurations for one relay at `relay`, starts both nodes
    /// and waits until both are connected.
    pub async fn two_nodes(&self, relay: SocketAddr) -> anyhow::Result<(NodeProc, NodeProc)> {
        self.two_nodes_kgz_hooks(relay, None).await
    }

    /// As [`Net::two_nodes`], KGZ with `hooks` (if any) as the body of its `[hooks]` table
    /// (e.g. [`appending_hook`]).
    pub async fn two_nodes_kgz_hooks(
        &self,
        relay: SocketAddr,
        hooks: Option<String>,
    ) -> anyhow::Result<(NodeProc, NodeProc)> {
        self.node_config("KAZ", relay);
        self.node_config_with(
            "KGZ",
            &NodeSetup {
                hooks,
                ..NodeSetup::relay(relay)
            },
        );
        let mut kaz = self.start_node("KAZ").await?;
        let mut kgz = self.start_node("KGZ").await?;
        kaz.connected().await?;
        kgz.connected().await?;
        Ok((kaz, kgz))
    }
}

/// What a `hotline` command printed, and how it ended.
#[derive(Debug)]
pub struct CliOutput {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Standard output as JSON; an error (with both streams) if the command failed.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        if !self.status.success() {
            bail!(
                "command failed ({}): {}{}",
                self.status,
                self.stderr,
                self.stdout
            );
        }
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("not JSON: {:?} (stderr {:?})", self.stdout, self.stderr))
    }
}

/// Starts `hotline ARGS` in `dir` (log `log_name`) on a data directory another process
/// holds, and checks that it is refused at start: it exits with status 1, its log names
/// `lock` as locked by another process, and it never logged `ready`.
pub async fn refused_for_its_lock(
    args: &[&str],
    dir: &Path,
    log_name: &str,
    lock: &str,
    ready: &str,
) {
    let second = Proc::spawn(args, dir, log_name).unwrap();
    let (status, second) = second.wait_exit(EVENT_TIMEOUT).await.unwrap();
    // Status 1, which a systemd unit restarts on (the other process may be on its way
    // out), not 78, which it does not.
    assert_eq!(status.code(), Some(1), "{status}: {}", second.log());
    let log = second.log();
    assert!(
        log.contains(&format!("{lock} is locked by another process")),
        "{log}"
    );
    assert!(!log.contains(ready), "{log}");
}

/// Runs the `hotline` binary to completion in `dir` (at most EVENT_TIMEOUT).
pub async fn hotline_cli(dir: &Path, args: &[&str]) -> anyhow::Result<CliOutput> {
    let mut cmd = tokio::process::Command::new(hotline_bin()?);
    cmd.args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env_remove("HOTLINE_NODE_CONFIG")
        .env_remove("HOTLINE_API")
        .env_remove("HOTLINE_TOKEN_FILE")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(EVENT_TIMEOUT, cmd.output())
        .await
        .map_err(|_| {
            anyhow::anyhow!("hotline {args:?} did not finish within {EVENT_TIMEOUT:?}")
        })??;
    Ok(CliOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A running `hotline node` process and where its local API answers.
pub struct NodeProc {
    pub id: String,
    pub proc: Proc,
    /// The API address the node logged ("local API listening addr=…").
    pub api: SocketAddr,
    pub token_file: PathBuf,
    pub config: PathBuf,
    pub dir: PathBuf,
}

impl NodeProc {
    /// Starts `hotline node --config DIR/ID.toml`; its log goes to DIR/node-ID.log (appended
    /// across restarts).
    pub async fn start(dir: &Path, id: &str) -> anyhow::Result<Self> {
        let config = dir.join(format!("{id}.toml"));
        let mut proc = Proc::spawn(
            &["node", "--config", config.to_str().context("utf-8 path")?],
            dir,
            &format!("node-{id}.log"),
        )?;
        let line = proc.wait_log("local API listening").await?;
        let api = addr_field(&line)?;
        Ok(Self {
            id: id.to_owned(),
            proc,
            api,
            token_file: dir.join(format!("{id}.token")),
            config,
            dir: dir.to_owned(),
        })
    }

    /// Waits until the node logs that a relay link is up.
    pub async fn connected(&mut self) -> anyhow::Result<()> {
        self.proc.wait_log("relay connected").await.map(|_| ())
    }

    /// Runs `hotline ARGS --api ADDR --token-file FILE` against this node.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<CliOutput> {
        let api = self.api.to_string();
        let token = self.token_file.to_str().context("utf-8 path")?.to_owned();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--api", &api, "--token-file", &token]);
        hotline_cli(&self.dir, &all).await
    }

    /// As `cli`, with `--json`; the parsed output, or an error if the command failed.
    pub async fn cli_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.push("--json");
        self.cli(&all)
            .await?
            .json()
            .with_context(|| format!("{}: hotline {args:?}", self.id))
    }

    /// `hotline send --to TO --subject SUBJECT [extra…]` through this node; the new
    /// message's id.
    pub async fn send(&self, to: &str, subject: &str, extra: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["send", "--to", to, "--subject", subject];
        args.extend_from_slice(extra);
        let sent = self.cli_json(&args).await?;
        Ok(sent["id"]
            .as_str()
            .with_context(|| format!("no id in {sent}"))?
            .to_owned())
    }

    /// The API bearer token the node created.
    pub fn token(&self) -> String {
        std::fs::read_to_string(&self.token_file)
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Waits until this node's `/v1/status` satisfies `ok`, and returns it; an error after
    /// EVENT_TIMEOUT. As `wait_metric`, it reads the status again every 20 ms: a wait on a
    /// condition with a deadline, for facts no event or log line carries (e.g. that a relay
    /// confirmed storing an acknowledgement).
    pub async fn wait_status(
        &self,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut last = None;
        // The token file is read once; each read clones the client (its connection pool).
        let client = self.client();
        loop {
            tick.tick().await;
            let client = client.clone();
            let read = tokio::task::spawn_blocking(move || client.get("/v1/status"));
            match tokio::time::timeout_at(deadline, read).await {
                Ok(Ok(Ok(v))) if ok(&v) => return Ok(v),
                Ok(Ok(Ok(v))) => last = Some(v),
                Ok(Ok(Err(e))) => bail!("{}: /v1/status: {e}", self.id),
                Ok(Err(e)) => bail!("{}: /v1/status: {e}", self.id),
                Err(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{}: no {what} within {EVENT_TIMEOUT:?}; last status {last:?}",
                    self.id
                );
            }
        }
    }

    /// A blocking API client (call it from `spawn_blocking` or a thread).
    pub fn client(&self) -> hotline_node::client::ApiClient {
        hotline_node::client::ApiClient::new(&self.api.to_string(), &self.token())
    }

    /// Subscribes to `/v1/events`; returns once the node has answered, so every event
    /// after this call is seen.
    pub async fn events(&self) -> anyhow::Result<Events> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        // The receiver gone: the test is done with this stream.
        follow_events(self.client(), &self.id, move |v| {
            tx.blocking_send(v).is_ok()
        })
        .await?;
        Ok(Events {
            rx,
            seen: Vec::new(),
        })
    }
}

/// Opens `client`'s `/v1/events` (node `who`) and forwards each event to `forward`, on a
/// thread of its own, until `forward` returns false or the stream ends. Returns once the
/// node has subscribed the stream (at most [`EVENT_TIMEOUT`]), so every event after this
/// call is forwarded: a test that opened its streams only on their threads would miss what
/// happens before they connect.
pub async fn follow_events(
    client: hotline_node::client::ApiClient,
    who: &str,
    mut forward: impl FnMut(serde_json::Value) -> bool + Send + 'static,
) -> anyhow::Result<()> {
    let (opened_tx, opened) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let events = match client.events() {
            Ok(events) => {
                let _ = opened_tx.send(Ok(()));
                events
            }
            Err(e) => {
                let _ = opened_tx.send(Err(e));
                return;
            }
        };
        for ev in events {
            let Ok(ev) = ev else { break };
            if !forward(ev) {
                break;
            }
        }
    });
    match tokio::time::timeout(EVENT_TIMEOUT, opened).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => bail!("{who}: /v1/events: {e}"),
        Ok(Err(_)) => bail!("{who}: /v1/events: subscriber thread ended"),
        Err(_) => bail!("{who}: /v1/events: no answer within {EVENT_TIMEOUT:?}"),
    }
}

/// A node's `/v1/events` stream.
pub struct Events {
    rx: tokio::sync::mpsc::Receiver<serde_json::Value>,
    /// Every event received so far, in order.
    pub seen: Vec<serde_json::Value>,
}

impl Events {
    /// Waits (at most EVENT_TIMEOUT) for an event matching `pred`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return Ok(v);
                    }
                }
                Ok(None) => bail!("event stream ended before {what}; seen {:?}", self.seen),
                Err(_) => bail!(
                    "no {what} event within {EVENT_TIMEOUT:?}; seen {:?}",
                    self.seen
                ),
            }
        }
    }
}

impl Events {
    /// Waits (at most EVENT_TIMEOUT) for an event of type `kind` about message `id`.
    pub async fn wait_about(&mut self, kind: &str, id: &str) -> anyhow::Result<serde_json::Value> {
        self.wait_for(kind, |e| e["type"] == kind && e["id"] == id)
            .await
    }

    /// Waits (at most EVENT_TIMEOUT for each) until an event of type `kind` has been seen
    /// for every message in `ids`, in whatever order they come.
    pub async fn wait_for_each(&mut self, kind: &str, ids: &[String]) -> anyhow::Result<()> {
        let mut waiting: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        while !waiting.is_empty() {
            let e = self
                .wait_for(kind, |e| {
                    e["type"] == kind && e["id"].as_str().is_some_and(|id| waiting.contains(id))
                })
                .await
                .with_context(|| format!("{kind} events still awaited for {waiting:?}"))?;
            waiting.remove(e["id"].as_str().unwrap_or_default());
        }
        Ok(())
    }
}

impl Proc {
    /// Waits until a log line (after the first `skip`) contains every one of `needles`.
    pub async fn wait_line_from(
        &mut self,
        skip: usize,
        needles: &[&str],
    ) -> anyhow::Result<String> {
        self.wait_lines_from(skip, needles, 1)
            .await
            .map(|mut v| v.remove(0))
    }

    /// Waits until a log line (after the first `skip`) contains every needle of one of
    /// `alternatives`; returns the first such line.
    pub async fn wait_any_line_from(
        &mut self,
        skip: usize,
        alternatives: &[&[&str]],
    ) -> anyhow::Result<String> {
        let fits = |l: &String| alternatives.iter().any(|a| a.iter().all(|w| l.contains(w)));
        let what = format!("a line with all of one of {alternatives:?}");
        let lines = self
            .0
            .wait_lines(EVENT_TIMEOUT, &what, |l| l.iter().skip(skip).any(fits))
            .await?;
        Ok(lines.into_iter().skip(skip).find(fits).unwrap_or_default())
    }

    /// Waits until a log line contains every one of `needles`.
    pub async fn wait_line(&mut self, needles: &[&str]) -> anyhow::Result<String> {
        self.wait_line_from(0, needles).await
    }

    /// Waits until `n` log lines (after the first `skip`) each contain every one of
    /// `needles`; returns those lines.
    pub async fn wait_lines_from(
        &mut self,
        skip: usize,
        needles: &[&str],
        n: usize,
    ) -> anyhow::Result<Vec<String>> {
        let pick = |lines: &[String]| -> Vec<String> {
            lines
                .iter()
                .skip(skip)
                .filter(|l| needles.iter().all(|w| l.contains(w)))
                .cloned()
                .collect()
        };
        let what = format!("{n} line(s) with {needles:?}");
        let lines = self
            .0
            .wait_lines(EVENT_TIMEOUT, &what, |l| pick(l).len() >= n)
            .await?;
        Ok(pick(&lines))
    }

    /// [`Proc::wait_line`] with a deadline of `timeout` instead of `EVENT_TIMEOUT`, for
    /// what takes longer by design (a backlog of tens of megabytes).
    pub async fn wait_line_within(
        &mut self,
        timeout: Duration,
        needles: &[&str],
    ) -> anyhow::Result<String> {
        let fits = |l: &String| needles.iter().all(|w| l.contains(w));
        let what = format!("a line with {needles:?}");
        let lines = self
            .0
            .wait_lines(timeout, &what, |l| l.iter().any(fits))
            .await?;
        Ok(lines.into_iter().find(fits).unwrap_or_default())
    }

    /// Log lines so far that contain every one of `needles`.
    pub fn count_lines(&self, needles: &[&str]) -> usize {
        self.0
            .lines()
            .iter()
            .filter(|l| needles.iter().all(|w| l.contains(w)))
            .count()
    }
}

// ---------------------------------------------------------------------------------------
// A relay impostor, for what a node does when its relay misbehaves.
// ---------------------------------------------------------------------------------------

/// A hand-driven relay holding the network's relay certificate (as a compromised relay
/// would), with one node connected and greeted: the test reads the node's frames and writes
/// whatever it likes.
pub struct Impostor {
    endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub reader: hotline_net::FrameReader,
    pub writer: hotline_net::FrameWriter,
}

impl Net {
    /// Starts node `id` against an impostor relay, which answers its `Hello` with a
    /// `Welcome` (no roster, `last_seq` 0); both, the node once connected.
    pub async fn node_with_impostor(&self, id: &str) -> anyhow::Result<(Impostor, NodeProc)> {
        self.node_with_impostor_setup(id, NodeSetup::default())
            .await
    }

    /// As `node_with_impostor`, the node's configuration otherwise as `setup` says.
    pub async fn node_with_impostor_setup(
        &self,
        id: &str,
        setup: NodeSetup,
    ) -> anyhow::Result<(Impostor, NodeProc)> {
        self.node_with_impostor_welcoming(id, setup, Impostor::welcome())
            .await
    }

    /// As `node_with_impostor_setup`, the node's `Hello` answered with `welcome`. The
    /// impostor is the node's first relay, before any in `setup.relays`.
    pub async fn node_with_impostor_welcoming(
        &self,
        id: &str,
        setup: NodeSetup,
        welcome: hotline_proto::frame::Welcome,
    ) -> anyhow::Result<(Impostor, NodeProc)> {
        let endpoint = self.impostor_endpoint()?;
        let setup = NodeSetup {
            relays: [vec![endpoint.local_addr()?], setup.relays].concat(),
            ..setup
        };
        self.node_config_with(id, &setup);
        let node = self.start_node(id).await?;
        Ok((Impostor::greet(endpoint, welcome).await?, node))
    }

    /// As `node_with_impostor`, with the node's packets passing through a `DeafLink`.
    pub async fn node_with_impostor_behind_deaf_link(
        &self,
        id: &str,
    ) -> anyhow::Result<(Impostor, NodeProc, DeafLink)> {
        let endpoint = self.impostor_endpoint()?;
        let link = DeafLink::start(endpoint.local_addr()?).await?;
        self.node_config(id, link.listen);
        let node = self.start_node(id).await?;
        Ok((
            Impostor::greet(endpoint, Impostor::welcome()).await?,
            node,
            link,
        ))
    }

    fn impostor_endpoint(&self) -> anyhow::Result<quinn::Endpoint> {
        let config = self.config();
        let identity = hotline_net::RelayIdentity::load(&config.cert, &config.key)?;
        Ok(hotline_net::transport::server_endpoint(
            "127.0.0.1:0".parse()?,
            &identity,
            &TransportLimits::default(),
        )?)
    }
}

/// A UDP forwarder between one node and its relay that can stop passing the relay's
/// datagrams to the node, while the node's still reach the relay: a link gone deaf one way.
pub struct DeafLink {
    /// Where the node sends.
    pub listen: SocketAddr,
    deaf: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl DeafLink {
    async fn start(relay: SocketAddr) -> anyhow::Result<Self> {
        use std::sync::atomic::Ordering::Relaxed;
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        back.connect(relay).await?;
        let listen = front.local_addr()?;
        let deaf = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = deaf.clone();
        let task = tokio::spawn(async move {
            let mut node: Option<SocketAddr> = None;
            let (mut a, mut b) = (vec![0u8; 65_536], vec![0u8; 65_536]);
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { break };
                        node = Some(from);
                        let _ = back.send(&a[..n]).await;
                    }
                    r = back.recv(&mut b) => {
                        let Ok(n) = r else { break };
                        if let (Some(to), false) = (node, d.load(Relaxed)) {
                            let _ = front.send_to(&b[..n], to).await;
                        }
                    }
                }
            }
        });
        Ok(Self { listen, deaf, task })
    }

    /// From now on, the relay's datagrams no longer reach the node.
    pub fn go_deaf(&self) {
        self.deaf.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for DeafLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Impostor {
    /// The `Welcome` an impostor answers with unless told otherwise: its clock, no roster,
    /// `last_seq` 0.
    pub fn welcome() -> hotline_proto::frame::Welcome {
        hotline_proto::frame::Welcome {
            relay_time_ms: now_ms(),
            last_seq: Seq(0),
            roster: None,
        }
    }

    /// Accepts the next connection on `endpoint` and answers its `Hello` with `welcome`.
    async fn greet(
        endpoint: quinn::Endpoint,
        welcome: hotline_proto::frame::Welcome,
    ) -> anyhow::Result<Self> {
        let conn = tokio::time::timeout(EVENT_TIMEOUT, async {
            endpoint
                .accept()
                .await
                .context("no connection")?
                .await
                .map_err(anyhow::Error::from)
        })
        .await
        .context("the node did not connect")??;
        let (send, recv) = conn.accept_bi().await?;
        let mut reader = hotline_net::FrameReader::new(recv);
        let mut writer = hotline_net::FrameWriter::new(send);
        match reader.read::<NodeToRelay>().await? {
            Some(NodeToRelay::Hello(_)) => {}
            other => bail!("expected a Hello, got {other:?}"),
        }
        // As a relay does at a login: its endpoint (the relay's settings) grants a
        // connection 4 KiB of flow control until then. Left so, the node could never have
        // more than 4 KiB unread here, where a relay's session holds a stream's window.
        hotline_net::transport::open_session_window(&conn);
        writer.write(&RelayToNode::Welcome(welcome)).await?;
        Ok(Self {
            endpoint,
            conn,
            reader,
            writer,
        })
    }

    /// Waits for the node's next connection (once this one has ended) and greets it.
    pub async fn next_connection(self) -> anyhow::Result<Self> {
        self.next_connection_welcoming(Self::welcome()).await
    }

    /// As `next_connection`, the node's `Hello` answered with `welcome`.
    pub async fn next_connection_welcoming(
        self,
        welcome: hotline_proto::frame::Welcome,
    ) -> anyhow::Result<Self> {
        Self::greet(self.endpoint, welcome).await
    }

    /// The node's next frame (at most EVENT_TIMEOUT).
    pub async fn next(&mut self) -> anyhow::Result<NodeToRelay> {
        tokio::time::timeout(EVENT_TIMEOUT, self.reader.read::<NodeToRelay>())
            .await
            .context("no frame from the node")??
            .context("the node closed its stream")
    }

    /// Writes frames in one write.
    pub async fn send(&mut self, frames: &[RelayToNode]) -> anyhow::Result<()> {
        let mut buf = Vec::new();
        for f in frames {
            buf.extend(hotline_proto::frame::encode_frame(f)?);
        }
        self.writer.write_raw(&buf).await?;
        Ok(())
    }
}
