//! The skeleton fan-out: what a relay *process* costs a paced fan-out on this machine, with
//! the relay's work taken away layer by layer, down to the hops alone.
//!
//! [`crate::floor`] measures the disk alone. This measures the path a message takes in
//! `fanout37`, as bare as it can be made, with the same shape:
//!
//! - a forwarder in a process of its own ([`forward`], run as `hotline-bench
//!   skeleton-forwarder`, on a tokio runtime with a worker a CPU, as the relay's). It reads
//!   each message and sends it on, as it came, to each recipient. No signature, no store.
//!   - Its [`Transport`]: bare UDP datagrams on one socket (`udp`, the default), or QUIC
//!     (`quic`: quinn with the relay's own transport and TLS settings, `hotline-net`, a
//!     connection and a stream a participant, the messages length-prefixed).
//!   - Its [`Shape`] adds, one at a time, the relay's own hand-offs: by default (`bare`) the
//!     task that reads a message sends it to each recipient in turn; `tasks` posts it to a
//!     task a recipient, which sends it (as the relay's sessions do); `thread` hands it to a
//!     thread that posts it to those tasks (as the relay's store writer does).
//! - in this process, one sender, paced as `fanout37` paces (the runtime's timer, a message
//!   when it is due), stamping each message with its send time; and N recipients, each with
//!   a socket (`udp`) or an endpoint and a connection (`quic`, as `fanout37`'s recipients)
//!   and a task of its own, which make each message durable in the shared group log
//!   ([`crate::grouplog`], the one `fanout37`'s recipients use) before reading the next.
//!
//! So with `udp` and `bare`, a delivery's end-to-end time is what the machine's threads,
//! wake-ups, loopback network and disk cost a fan-out of that shape before any of the
//! relay's work: no relay of this shape (a process the recipients reach over the network, N
//! recipients and their durability on the same CPUs and disk) can be faster on the same
//! machine at the same time. Each layer added shows what it costs; `fanout37`'s figures
//! above the fullest skeleton's are what the rest of the relay's work (signatures, the
//! store, the protocol's frames and receipts) adds.
//!
//! A message: a tag byte ([`HELLO`], [`DATA`], [`BYE`], [`SENDER`]), then for data the
//! message's index (`u32`) and its send time (`u64` ns after the run's start), then the
//! body; over QUIC each is preceded by its length (`u32`; integers little-endian). A lost
//! UDP datagram (none is expected on loopback at these rates) is counted, not retried, and
//! so is a message the forwarder dropped because a queue was full ([`QUEUE_MAX`]); the
//! forwarder takes on at most [`RECIPIENTS_MAX`] recipients.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hotline_net::{Fingerprint, RelayIdentity, TransportLimits};
use serde::Serialize;
use tokio::io::AsyncBufReadExt as _;
use tokio::net::UdpSocket;

use crate::client::Durability;
use crate::grouplog::GroupLog;
use crate::stats::{self, CpuMeter, Percentiles, SwitchMeter};
use crate::traffic::{log_label, percentiles_us, saturating_u32, DeliveryTimes, E2eSplit};

/// A recipient's greeting; the forwarder answers it with the same byte once the recipient
/// is on its list.
pub const HELLO: u8 = 0;
/// A message to forward.
pub const DATA: u8 = 1;
/// The end of the run: the forwarder exits.
pub const BYE: u8 = 2;
/// QUIC: the first byte of the sender's stream.
pub const SENDER: u8 = 3;
/// A data message's header: tag, index, send time.
const HEADER: usize = 1 + 4 + 8;
/// QUIC: a message's length prefix.
const PREFIX: usize = 4;
/// The largest message sent (the header and a body just under 64 KiB).
const MESSAGE_MAX: usize = 64 << 10;
/// How long a recipient waits for the forwarder's answer to a greeting, and how often it
/// greets (UDP; over QUIC it waits once, `HELLO_WAIT` times `HELLO_TRIES`).
const HELLO_WAIT: Duration = Duration::from_millis(500);
const HELLO_TRIES: u32 = 10;
/// How long the forwarder process may take to say where it listens, and to exit after
/// [`BYE`].
const CHILD_WAIT: Duration = Duration::from_secs(10);
/// The most recipients a run may have (`hotline-bench skeleton --recipients`), and so the
/// most the forwarder takes on: later greetings are refused, and over QUIC it accepts at
/// most one connection more (the sender's).
pub const RECIPIENTS_MAX: usize = 1_000;
/// Messages that may wait for the posting thread (`thread`), and for each recipient's task
/// (`tasks`, `thread`). A message that finds its queue full is dropped there, as a UDP
/// socket whose buffer is full drops it, and the run counts the deliveries as lost.
const QUEUE_MAX: usize = 4_096;

/// How messages travel between the participants and the forwarder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// UDP datagrams, one a message, all on the forwarder's one socket.
    #[default]
    Udp,
    /// QUIC with the relay's settings: a connection (and an endpoint) a participant, one
    /// stream on each.
    Quic,
}

/// How the forwarder passes a message on: the relay's hand-offs, added one at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// The task that reads each message sends it to every recipient in turn.
    #[default]
    Bare,
    /// The reading task posts the message to a task a recipient, each of which sends it
    /// (the relay's sessions).
    Tasks,
    /// The reading task hands the message to a thread, which posts it to the recipients'
    /// tasks (the relay's store writer, then its sessions).
    Thread,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Tasks => "tasks",
            Self::Thread => "thread",
        }
    }
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Quic => "quic",
        }
    }
}

/// Where the forwarder runs.
#[derive(Clone, Debug)]
pub enum Forwarder {
    /// A child process: this program (`hotline-bench`) run as `skeleton-forwarder`.
    Process(PathBuf),
    /// A task in this process (for the smoke test: its CPU is then not its own).
    InProcess,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct SkeletonOptions {
    /// Messages per second.
    pub rate: f64,
    /// How long to send.
    pub duration: Duration,
    /// Recipients of every message.
    pub recipients: usize,
    /// Body bytes of each message.
    pub body_bytes: usize,
    /// `Group` (the shared group log) or `None`.
    pub durability: Durability,
    /// How long to wait for the last deliveries after sending stops.
    pub drain_timeout: Duration,
    /// Where the forwarder runs.
    pub forwarder: Forwarder,
    /// How messages travel.
    pub transport: Transport,
    /// How the forwarder passes a message on.
    pub shape: Shape,
}

/// What the run measured.
#[derive(Clone, Debug, Serialize)]
pub struct SkeletonReport {
    /// Messages per second asked for.
    pub rate_per_s: f64,
    /// Seconds of sending.
    pub duration_s: f64,
    /// Recipients of every message.
    pub recipients: usize,
    /// How messages travelled.
    pub transport: Transport,
    /// How the forwarder passed each message on.
    pub shape: Shape,
    /// Messages sent.
    pub sent: usize,
    /// Deliveries made durable (at most `sent × recipients`).
    pub delivered: usize,
    /// Deliveries that never arrived.
    pub lost: usize,
    /// Send → durable at the recipient, every delivery.
    pub e2e: Percentiles,
    /// The same split at the recipient's read as `fanout37` prints.
    pub e2e_split: E2eSplit,
    /// How recipients made deliveries durable.
    pub durability: Durability,
    /// The group log's syncs a message sent (group durability only).
    pub clients_log_syncs_per_msg: Option<f64>,
    /// A batch's mean wait for the log's thread, ms.
    pub clients_log_wait_ms_mean: Option<f64>,
    /// A group's mean write and sync, ms.
    pub clients_log_sync_ms_mean: Option<f64>,
    /// The forwarder's CPU per message sent, µs (a forwarder process only).
    pub forwarder_us_per_msg: Option<f64>,
    /// The forwarder's voluntary context switches per message sent (a forwarder process
    /// only): each a thread going to sleep, most followed by a wake-up.
    pub forwarder_sleeps_per_msg: Option<f64>,
    /// This process's CPU (the sender, the recipients and their log) per message sent, µs.
    pub bench_us_per_msg: Option<f64>,
    /// The machine's load average (one minute) at the end.
    pub load_avg: f64,
    /// The guest's halt-polling limit, ns ([`stats::guest_halt_poll_ns`]).
    pub guest_halt_poll_ns: Option<u64>,
}

impl SkeletonReport {
    /// One summary line.
    pub fn line(&self) -> String {
        let s = &self.e2e_split;
        let opt = |v: Option<f64>, digits: usize| match v {
            Some(v) => format!("{v:.digits$}"),
            None => "-".into(),
        };
        let log = log_label(
            self.clients_log_syncs_per_msg,
            self.clients_log_wait_ms_mean,
            self.clients_log_sync_ms_mean,
        );
        format!(
            "skeleton{n}{shape} rate={rate}/s {dur:.0}s: e2e ms p50/p99/max {e2e} (read p50/p99 {read}, first read {first}, read to durable {held}) | forwarder {fus} us/msg sleeps/msg {fsl} | bench {bus} us/msg | sent {sent} delivered {del} lost {lost} | durability {d:?}{log} | load {load:.2}{hp}",
            n = self.recipients,
            shape = match (self.transport, self.shape) {
                (Transport::Udp, Shape::Bare) => String::new(),
                (t, s) => format!("+{}+{}", t.name(), s.name()),
            },
            rate = self.rate_per_s,
            dur = self.duration_s,
            e2e = self.e2e.ms(),
            read = s.read.p50_p99_ms(),
            first = s.first_read.p50_p99_ms(),
            held = s.then_durable.p50_p99_ms(),
            fus = opt(self.forwarder_us_per_msg, 0),
            fsl = opt(self.forwarder_sleeps_per_msg, 1),
            bus = opt(self.bench_us_per_msg, 0),
            sent = self.sent,
            del = self.delivered,
            lost = self.lost,
            d = self.durability,
            load = self.load_avg,
            hp = stats::halt_poll_label(self.guest_halt_poll_ns),
        )
    }
}

/// The forwarder: listens on 127.0.0.1, prints `listening ADDR FINGERPRINT` on stdout (the
/// certificate's fingerprint for QUIC, `-` for UDP), and forwards until [`BYE`].
/// Recipients join with [`HELLO`]. Its QUIC certificate is made for the run, in a temporary
/// directory.
pub async fn forward(transport: Transport, shape: Shape) -> anyhow::Result<()> {
    let (listener, addr, fingerprint) = Listener::bind(transport)?;
    match fingerprint {
        Some(fp) => println!("listening {addr} {fp}"),
        None => println!("listening {addr} -"),
    }
    use std::io::Write as _;
    std::io::stdout().flush()?;
    listener.serve(shape).await
}

/// The forwarder's socket or endpoint, bound.
enum Listener {
    Udp(UdpSocket),
    Quic(quinn::Endpoint),
}

impl Listener {
    /// Binds on 127.0.0.1; where, and the fingerprint to pin (QUIC).
    fn bind(transport: Transport) -> anyhow::Result<(Self, SocketAddr, Option<Fingerprint>)> {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        Ok(match transport {
            Transport::Udp => {
                let std_sock = std::net::UdpSocket::bind(any)?;
                std_sock.set_nonblocking(true)?;
                let sock = UdpSocket::from_std(std_sock)?;
                let addr = sock.local_addr()?;
                (Self::Udp(sock), addr, None)
            }
            Transport::Quic => {
                let dir = tempfile::tempdir()?;
                let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
                let fingerprint = hotline_net::tls::write_self_signed(&cert, &key)?;
                let identity = RelayIdentity::load(&cert, &key)?;
                let ep = hotline_net::transport::server_endpoint(
                    any,
                    &identity,
                    &TransportLimits::default(),
                )?;
                let addr = ep.local_addr()?;
                (Self::Quic(ep), addr, Some(fingerprint))
            }
        })
    }

    async fn serve(self, shape: Shape) -> anyhow::Result<()> {
        match self {
            Self::Udp(sock) => serve_udp(Arc::new(sock), shape).await,
            Self::Quic(ep) => serve_quic(ep, shape).await,
        }
    }
}

/// Where the forwarder sends a recipient's messages.
enum Out {
    Udp(Arc<UdpSocket>, SocketAddr),
    Quic(quinn::SendStream),
}

impl Out {
    async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            Self::Udp(sock, to) => {
                sock.send_to(bytes, *to).await?;
            }
            Self::Quic(send) => send.write_all(bytes).await?,
        }
        Ok(())
    }

    /// Over QUIC, ends the stream (nothing more will be sent).
    fn finish(&mut self) {
        if let Self::Quic(s) = self {
            // Finishing a stream the peer has already closed is harmless.
            let _ = s.finish();
        }
    }
}

/// A message on its way to the recipients' tasks.
type Post = Arc<[u8]>;

/// What the `thread` shape's posting thread is handed.
enum WriterJob {
    /// A recipient's queue, to post to from now on.
    Join(tokio::sync::mpsc::Sender<Post>),
    /// A message to post to every recipient.
    Post(Post),
}

/// How a message reaches the recipients that have joined, by [`Shape`].
enum Route {
    /// The reading task sends to each in turn.
    Bare(Vec<Out>),
    /// The reading task posts to each one's task.
    Tasks(Vec<tokio::sync::mpsc::Sender<Post>>),
    /// The reading task hands to the posting thread, which posts to each one's task.
    Thread(
        std::sync::mpsc::SyncSender<WriterJob>,
        std::thread::JoinHandle<()>,
    ),
}

/// The forwarding: who has joined, and how a message reaches them.
struct Core {
    route: Route,
    /// `tasks` and `thread`: the recipients' tasks.
    senders: tokio::task::JoinSet<anyhow::Result<()>>,
    joined: usize,
}

impl Core {
    fn new(shape: Shape) -> anyhow::Result<Self> {
        let route = match shape {
            Shape::Bare => Route::Bare(Vec::new()),
            Shape::Tasks => Route::Tasks(Vec::new()),
            Shape::Thread => {
                let (tx, rx) = std::sync::mpsc::sync_channel::<WriterJob>(QUEUE_MAX);
                let t = std::thread::Builder::new()
                    .name("skeleton-writer".into())
                    .spawn(move || post_loop(&rx))?;
                Route::Thread(tx, t)
            }
        };
        Ok(Self {
            route,
            senders: tokio::task::JoinSet::new(),
            joined: 0,
        })
    }

    /// A recipient joins: messages forwarded from now on reach it. Refused past
    /// [`RECIPIENTS_MAX`].
    fn join(&mut self, out: Out) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.joined < RECIPIENTS_MAX,
            "more than {RECIPIENTS_MAX} recipients"
        );
        self.joined += 1;
        // `tasks` and `thread`: a task of its own, fed by a queue.
        let mut task = |out| {
            let (tx, rx) = tokio::sync::mpsc::channel(QUEUE_MAX);
            self.senders.spawn(send_loop(out, rx));
            tx
        };
        match &mut self.route {
            Route::Bare(outs) => outs.push(out),
            Route::Tasks(queues) => queues.push(task(out)),
            Route::Thread(w, _) => w
                .try_send(WriterJob::Join(task(out)))
                .map_err(|_| anyhow::anyhow!("the posting thread's queue is full or gone"))?,
        }
        Ok(())
    }

    /// Passes `bytes` on to every recipient that has joined (dropping it where a queue is
    /// full: [`QUEUE_MAX`]).
    async fn forward(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match &mut self.route {
            Route::Bare(outs) => {
                for o in outs {
                    o.send(bytes).await?;
                }
            }
            Route::Tasks(queues) => post(queues, &Arc::from(bytes)),
            Route::Thread(w, _) => match w.try_send(WriterJob::Post(Arc::from(bytes))) {
                Ok(()) | Err(std::sync::mpsc::TrySendError::Full(_)) => {}
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    bail!("the posting thread has gone")
                }
            },
        }
        Ok(())
    }

    /// Closes the queues, which ends the posting thread and the recipients' tasks, and
    /// waits for them (and for what they had still to send).
    async fn close(self) -> anyhow::Result<()> {
        match self.route {
            Route::Bare(outs) => {
                for mut o in outs {
                    o.finish();
                }
            }
            Route::Tasks(queues) => drop(queues),
            Route::Thread(w, t) => {
                drop(w);
                let _ = t.join();
            }
        }
        let mut senders = self.senders;
        while let Some(r) = senders.join_next().await {
            r??;
        }
        Ok(())
    }
}

/// Posts `p` to each queue that has room.
fn post(queues: &[tokio::sync::mpsc::Sender<Post>], p: &Post) {
    for q in queues {
        let _ = q.try_send(p.clone());
    }
}

/// The posting thread: until the forwarder drops its end.
fn post_loop(rx: &std::sync::mpsc::Receiver<WriterJob>) {
    let mut queues = Vec::new();
    while let Ok(job) = rx.recv() {
        match job {
            WriterJob::Join(q) => queues.push(q),
            WriterJob::Post(p) => post(&queues, &p),
        }
    }
}

/// A recipient's task: sends what is posted to it, until its queue closes.
async fn send_loop(mut out: Out, mut rx: tokio::sync::mpsc::Receiver<Post>) -> anyhow::Result<()> {
    while let Some(p) = rx.recv().await {
        out.send(&p).await?;
    }
    out.finish();
    Ok(())
}

/// The UDP forwarder's loop on `sock`.
async fn serve_udp(sock: Arc<UdpSocket>, shape: Shape) -> anyhow::Result<()> {
    let mut core = Core::new(shape)?;
    let mut joined: Vec<SocketAddr> = Vec::new();
    let mut buf = vec![0u8; MESSAGE_MAX];
    loop {
        let (n, from) = sock.recv_from(&mut buf).await?;
        match buf[..n].first() {
            Some(&DATA) => core.forward(&buf[..n]).await?,
            Some(&HELLO) => {
                if !joined.contains(&from) {
                    if let Err(e) = core.join(Out::Udp(sock.clone(), from)) {
                        eprintln!("skeleton forwarder: {from} not taken on: {e:#}");
                        continue;
                    }
                    joined.push(from);
                }
                sock.send_to(&[HELLO], from).await?;
            }
            Some(&BYE) => break,
            _ => eprintln!("skeleton forwarder: {n}-byte datagram from {from} ignored"),
        }
    }
    core.close().await
}

/// A participant's connection to the QUIC forwarder, accepted: the first byte of its stream
/// (its role, [`HELLO`] or [`SENDER`]) and the stream's two halves.
type Opened = (u8, quinn::SendStream, quinn::RecvStream);

/// Accepts a participant's connection and its stream, and reads its role. The relay's
/// endpoint settings ([`hotline_net::transport::server_endpoint`]) grant a connection 4 KiB
/// of flow control until the relay lifts it at its node's login; the forwarder has no
/// login, so it lifts it at once, as the relay does before `Welcome`: left at 4 KiB, the
/// sender's messages (up to 64 KiB) crossed to the forwarder 4 KiB at a time, a cost no
/// relay session pays, and the skeleton would no longer be the floor it is meant to be.
async fn open(incoming: quinn::Incoming) -> anyhow::Result<Opened> {
    let conn = incoming.await?;
    hotline_net::transport::open_session_window(&conn);
    let (send, mut recv) = conn.accept_bi().await?;
    let mut role = [0u8; PREFIX + 1];
    recv.read_exact(&mut role).await?;
    Ok((role[PREFIX], send, recv))
}

/// The QUIC forwarder: every connection opens one stream and says on it who it is. The
/// recipients join first; then the sender's messages are read and forwarded until [`BYE`].
async fn serve_quic(ep: quinn::Endpoint, shape: Shape) -> anyhow::Result<()> {
    // Room for every connection the acceptor lets in (the recipients and the sender).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Opened>(RECIPIENTS_MAX + 1);
    let acceptor = {
        let ep = ep.clone();
        tokio::spawn(async move {
            let mut accepted = 0;
            while let Some(incoming) = ep.accept().await {
                // The recipients and the sender.
                if accepted > RECIPIENTS_MAX {
                    incoming.refuse();
                    continue;
                }
                accepted += 1;
                let tx = tx.clone();
                tokio::spawn(async move {
                    match open(incoming).await {
                        Ok(o) => {
                            let _ = tx.send(o).await;
                        }
                        Err(e) => eprintln!("skeleton forwarder: a connection failed: {e:#}"),
                    }
                });
            }
        })
    };
    let mut core = Core::new(shape)?;
    // The recipients' receiving halves, kept open until the end.
    let mut kept = Vec::new();
    let mut from_sender = loop {
        let (role, mut send, recv) = rx.recv().await.context("the endpoint closed")?;
        match role {
            HELLO => {
                send.write_all(&framed(&[HELLO])).await?;
                core.join(Out::Quic(send))?;
                kept.push(recv);
            }
            SENDER => break recv,
            other => bail!("a stream began with {other}"),
        }
    };
    let mut buf = vec![0u8; PREFIX + MESSAGE_MAX];
    loop {
        let n = read_framed(&mut from_sender, &mut buf).await?;
        match buf[PREFIX] {
            DATA => core.forward(&buf[..PREFIX + n]).await?,
            BYE => break,
            other => bail!("the sender sent a message tagged {other}"),
        }
    }
    core.close().await?;
    acceptor.abort();
    ep.close(0u32.into(), b"bye");
    Ok(())
}

/// `message` with its length before it, as sent over QUIC.
fn framed(message: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    frame_into(&mut v, message);
    v
}

/// Puts `message`, with its length before it, in `buf` (emptied first).
fn frame_into(buf: &mut Vec<u8>, message: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&(message.len() as u32).to_le_bytes());
    buf.extend_from_slice(message);
}

/// Reads one length-prefixed message into `buf` (its prefix at the front, the message from
/// [`PREFIX`]); the message's length.
async fn read_framed(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> anyhow::Result<usize> {
    recv.read_exact(&mut buf[..PREFIX]).await?;
    let n = u32::from_le_bytes(buf[..PREFIX].try_into()?) as usize;
    anyhow::ensure!(
        (1..=MESSAGE_MAX).contains(&n),
        "a message of {n} bytes (at most {MESSAGE_MAX})"
    );
    recv.read_exact(&mut buf[PREFIX..PREFIX + n]).await?;
    Ok(n)
}

/// The forwarder's `listening ADDR FINGERPRINT` line ([`forward`]), read back.
fn parse_listening(line: &str) -> anyhow::Result<(SocketAddr, Option<Fingerprint>)> {
    let mut words = line
        .strip_prefix("listening ")
        .context("no `listening`")?
        .split(' ');
    let addr = words.next().context("no address")?.parse()?;
    let fingerprint = match words.next().context("no fingerprint")? {
        "-" => None,
        fp => Some(fp.parse()?),
    };
    Ok((addr, fingerprint))
}

/// The forwarder, started.
struct Running {
    addr: SocketAddr,
    fingerprint: Option<Fingerprint>,
    child: Option<tokio::process::Child>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    async fn start(f: &Forwarder, transport: Transport, shape: Shape) -> anyhow::Result<Self> {
        match f {
            Forwarder::InProcess => {
                let (listener, addr, fingerprint) = Listener::bind(transport)?;
                Ok(Self {
                    addr,
                    fingerprint,
                    child: None,
                    task: Some(tokio::spawn(listener.serve(shape))),
                })
            }
            Forwarder::Process(program) => {
                let mut child = tokio::process::Command::new(program)
                    .args(["skeleton-forwarder", "--transport", transport.name()])
                    .args(["--shape", shape.name()])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| {
                        format!("starting {} skeleton-forwarder", program.display())
                    })?;
                let stdout = child.stdout.take().context("the forwarder's stdout")?;
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                let line = tokio::time::timeout(CHILD_WAIT, lines.next_line())
                    .await
                    .context("the forwarder did not say where it listens")??
                    .context("the forwarder exited before it listened")?;
                let (addr, fingerprint) = parse_listening(&line)
                    .with_context(|| format!("the forwarder said {line:?}"))?;
                Ok(Self {
                    addr,
                    fingerprint,
                    child: Some(child),
                    task: None,
                })
            }
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Waits for the forwarder to end after [`BYE`] (a child that does not is killed).
    async fn wait(mut self) -> anyhow::Result<()> {
        if let Some(t) = self.task.take() {
            return tokio::time::timeout(CHILD_WAIT, t)
                .await
                .context("the forwarder task did not end")??;
        }
        if let Some(mut c) = self.child.take() {
            match tokio::time::timeout(CHILD_WAIT, c.wait()).await {
                Ok(status) => {
                    let status = status?;
                    if !status.success() {
                        bail!("the forwarder exited with {status}");
                    }
                }
                Err(_) => {
                    c.kill().await?;
                    bail!("the forwarder did not exit after BYE; killed");
                }
            }
        }
        Ok(())
    }
}

/// A participant's way to the forwarder.
enum Link {
    /// A socket of its own, and the forwarder's address.
    Udp(UdpSocket, SocketAddr),
    /// An endpoint and connection of its own, the stream's halves, and the sender's
    /// message framed (its buffer reused from one message to the next).
    Quic {
        _endpoint: quinn::Endpoint,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        frame: Vec<u8>,
    },
}

impl Link {
    /// Connects to the forwarder as a recipient ([`HELLO`]) or as the sender ([`SENDER`]),
    /// and, for a recipient, waits until the forwarder has it on its list.
    async fn open(fwd: &Running, role: u8) -> anyhow::Result<Self> {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let Some(pin) = fwd.fingerprint else {
            let sock = UdpSocket::bind(any).await?;
            if role == HELLO {
                greet(&sock, fwd.addr).await?;
            }
            return Ok(Self::Udp(sock, fwd.addr));
        };
        let wait = HELLO_WAIT * HELLO_TRIES;
        let endpoint =
            hotline_net::transport::client_endpoint(any, vec![pin], &TransportLimits::default())?;
        let conn = hotline_net::connect(&endpoint, fwd.addr, wait).await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&framed(&[role])).await?;
        if role == HELLO {
            let mut answer = [0u8; PREFIX + 1];
            tokio::time::timeout(wait, recv.read_exact(&mut answer))
                .await
                .context("the skeleton forwarder did not answer a greeting")??;
            anyhow::ensure!(answer[PREFIX] == HELLO, "the forwarder answered {answer:?}");
        }
        Ok(Self::Quic {
            _endpoint: endpoint,
            send,
            recv,
            frame: Vec::new(),
        })
    }

    /// Sends one message.
    async fn send(&mut self, message: &[u8]) -> anyhow::Result<()> {
        match self {
            Self::Udp(sock, to) => {
                sock.send_to(message, *to).await?;
            }
            Self::Quic { send, frame, .. } => {
                frame_into(frame, message);
                send.write_all(frame).await?;
            }
        }
        Ok(())
    }

    /// Receives one message into `buf`; the range it is in.
    async fn recv(&mut self, buf: &mut [u8]) -> anyhow::Result<std::ops::Range<usize>> {
        match self {
            Self::Udp(sock, _) => Ok(0..sock.recv(buf).await?),
            Self::Quic { recv, .. } => {
                let n = read_framed(recv, buf).await?;
                Ok(PREFIX..PREFIX + n)
            }
        }
    }
}

/// Greets the forwarder from `sock` until it answers.
async fn greet(sock: &UdpSocket, forwarder: SocketAddr) -> anyhow::Result<()> {
    let mut answer = [0u8; 16];
    for _ in 0..HELLO_TRIES {
        sock.send_to(&[HELLO], forwarder).await?;
        if let Ok(r) = tokio::time::timeout(HELLO_WAIT, sock.recv_from(&mut answer)).await {
            let (n, from) = r?;
            if from == forwarder && answer[..n] == [HELLO] {
                return Ok(());
            }
        }
    }
    bail!("the skeleton forwarder at {forwarder} did not answer {HELLO_TRIES} greetings")
}

/// Runs the skeleton fan-out; the group log, if any, is written in `dir` and removed after.
pub async fn run(dir: &Path, o: &SkeletonOptions) -> anyhow::Result<SkeletonReport> {
    anyhow::ensure!(
        o.rate > 0.0 && o.rate.is_finite(),
        "the skeleton needs a positive rate"
    );
    anyhow::ensure!(o.recipients > 0, "the skeleton needs a recipient");
    anyhow::ensure!(
        HEADER + o.body_bytes <= MESSAGE_MAX,
        "a skeleton body is at most {} bytes",
        MESSAGE_MAX - HEADER
    );
    let log = match o.durability {
        Durability::Group => {
            std::fs::create_dir_all(dir)?;
            Some(GroupLog::shared(&dir.join("skeleton-group.log"))?)
        }
        Durability::None => None,
        d => bail!(
            "the skeleton's recipients make deliveries durable with `group` or `none`, not {d:?}"
        ),
    };
    let result = fan_out(o, log.clone()).await;
    drop(log);
    let _ = std::fs::remove_file(dir.join("skeleton-group.log"));
    result
}

async fn fan_out(
    o: &SkeletonOptions,
    log: Option<Arc<GroupLog>>,
) -> anyhow::Result<SkeletonReport> {
    let fwd = Running::start(&o.forwarder, o.transport, o.shape).await?;
    let messages = ((o.rate * o.duration.as_secs_f64()).round() as usize).max(1);
    let mut links = Vec::with_capacity(o.recipients);
    for _ in 0..o.recipients {
        links.push(Link::open(&fwd, HELLO).await?);
    }
    let mut sender = Link::open(&fwd, SENDER).await?;
    let start = Instant::now() + Duration::from_millis(100);
    let deadline = start + o.duration + o.drain_timeout;
    let tasks: Vec<_> = links
        .into_iter()
        .map(|l| tokio::spawn(recipient(l, log.clone(), start, messages, deadline)))
        .collect();
    let pid = fwd.pid();
    let cpu = pid.map(CpuMeter::start);
    let bench_cpu = CpuMeter::start(std::process::id());
    let sleeps = pid.map(|p| SwitchMeter::start(p, None));
    let log_before = log.as_ref().map(|l| l.totals());
    let mut message = vec![0x5Au8; HEADER + o.body_bytes];
    message[0] = DATA;
    for k in 0..messages {
        let due = start + Duration::from_secs_f64(k as f64 / o.rate);
        tokio::time::sleep_until(due.into()).await;
        message[1..5].copy_from_slice(&(k as u32).to_le_bytes());
        let sent_ns = start.elapsed().as_nanos() as u64;
        message[5..HEADER].copy_from_slice(&sent_ns.to_le_bytes());
        sender.send(&message).await?;
    }
    let mut deliveries = Vec::with_capacity(messages * o.recipients);
    let mut first_error = None;
    for t in tasks {
        match t.await? {
            Ok(d) => deliveries.extend(d),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let per_msg = |v: Option<f64>, scale: f64| v.map(|v| v * scale / messages as f64);
    let forwarder_us_per_msg = per_msg(cpu.and_then(|c| c.seconds()), 1e6);
    let bench_us_per_msg = per_msg(bench_cpu.seconds(), 1e6);
    let forwarder_sleeps_per_msg = per_msg(sleeps.and_then(|s| s.count()).map(|n| n as f64), 1.0);
    let log_totals = log
        .as_ref()
        .zip(log_before)
        .map(|(l, before)| l.totals().since(&before));
    sender.send(&[BYE]).await?;
    fwd.wait().await?;
    if let Some(e) = first_error {
        return Err(e.context("a skeleton recipient failed"));
    }
    let e2e = percentiles_us(deliveries.iter().map(|d| d.durable_us));
    Ok(SkeletonReport {
        rate_per_s: o.rate,
        duration_s: o.duration.as_secs_f64(),
        recipients: o.recipients,
        transport: o.transport,
        shape: o.shape,
        sent: messages,
        delivered: deliveries.len(),
        lost: messages * o.recipients - deliveries.len(),
        e2e,
        e2e_split: E2eSplit::of(deliveries.iter(), messages),
        durability: o.durability,
        clients_log_syncs_per_msg: log_totals.map(|t| t.groups as f64 / messages as f64),
        clients_log_wait_ms_mean: log_totals.and_then(|t| t.wait_ms_mean()),
        clients_log_sync_ms_mean: log_totals.and_then(|t| t.sync_ms_mean()),
        forwarder_us_per_msg,
        forwarder_sleeps_per_msg,
        bench_us_per_msg,
        load_avg: stats::load_avg(),
        guest_halt_poll_ns: stats::guest_halt_poll_ns(),
    })
}

/// A recipient: reads each message, makes it durable, and notes its times, until it has
/// all `messages` or `deadline` passes.
async fn recipient(
    mut link: Link,
    log: Option<Arc<GroupLog>>,
    start: Instant,
    messages: usize,
    deadline: Instant,
) -> anyhow::Result<Vec<DeliveryTimes>> {
    let mut got = Vec::with_capacity(messages);
    let mut buf = vec![0u8; PREFIX + MESSAGE_MAX];
    while got.len() < messages {
        let at = match tokio::time::timeout_at(deadline.into(), link.recv(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => break,
        };
        let read = Instant::now();
        let m = &buf[at];
        if m.len() < HEADER || m[0] != DATA {
            continue;
        }
        let message = u32::from_le_bytes(m[1..5].try_into()?);
        let sent = start + Duration::from_nanos(u64::from_le_bytes(m[5..HEADER].try_into()?));
        let durable = match &log {
            Some(l) => l.append_durable(m.to_vec()).await?,
            None => read,
        };
        let us = |t: Instant| {
            saturating_u32(
                u64::try_from(t.saturating_duration_since(sent).as_micros()).unwrap_or(u64::MAX),
            )
        };
        got.push(DeliveryTimes {
            message,
            read_us: us(read),
            durable_us: us(durable),
        });
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(durability: Durability) -> SkeletonOptions {
        SkeletonOptions {
            rate: 200.0,
            duration: Duration::from_millis(100),
            recipients: 3,
            body_bytes: 100,
            durability,
            drain_timeout: Duration::from_secs(10),
            forwarder: Forwarder::InProcess,
            transport: Transport::Udp,
            shape: Shape::Bare,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_message_reaches_every_recipient_durably() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = run(dir.path(), &options(Durability::Group))
            .await
            .expect("run");
        assert_eq!((r.sent, r.delivered, r.lost), (20, 60, 0));
        assert_eq!((r.e2e.n, r.e2e_split.first_read.n), (60, 20));
        assert!(r.e2e.p50_us >= r.e2e_split.read.p50_us, "{r:?}");
        let syncs = r.clients_log_syncs_per_msg.expect("the group log's syncs");
        assert!(syncs > 0.0 && syncs <= 3.0, "{syncs}");
        assert!(
            r.clients_log_sync_ms_mean.is_some_and(|ms| ms > 0.0),
            "{r:?}"
        );
        let line = r.line();
        assert!(
            line.starts_with("skeleton3 rate=200/s 0s: e2e ms"),
            "{line}"
        );
        assert!(line.contains("delivered 60 lost 0"), "{line}");
        // The log is removed; the forwarder has ended (its task answered BYE).
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_durability_a_delivery_is_done_when_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = run(dir.path(), &options(Durability::None))
            .await
            .expect("run");
        assert_eq!(r.delivered, 60);
        assert_eq!(r.e2e_split.then_durable.max_us, 0);
        assert!(r.clients_log_syncs_per_msg.is_none());
    }

    /// Every transport and shape: the same deliveries, and the forwarder still ends on
    /// `BYE` (its thread, tasks and endpoint with it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_transport_and_shape_forwards_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        for transport in [Transport::Udp, Transport::Quic] {
            for shape in [Shape::Bare, Shape::Tasks, Shape::Thread] {
                let o = SkeletonOptions {
                    transport,
                    shape,
                    ..options(Durability::None)
                };
                let r = run(dir.path(), &o).await.expect("run");
                assert_eq!((r.delivered, r.lost), (60, 0), "{transport:?} {shape:?}");
                assert_eq!((r.transport, r.shape), (transport, shape));
                let name = match (transport, shape) {
                    (Transport::Udp, Shape::Bare) => "skeleton3 ".to_owned(),
                    _ => format!("skeleton3+{}+{} ", transport.name(), shape.name()),
                };
                assert!(r.line().starts_with(&name), "{}", r.line());
            }
        }
    }

    /// Over QUIC the forwarder takes a sender's messages as a relay's session does, not
    /// 4 KiB at a time: the relay's endpoint settings, which it shares, grant a connection
    /// 4 KiB of flow control until a login lifts it, and the forwarder, which has none,
    /// lifts it once it has the connection. Here it reads nothing past the role: the whole
    /// of a largest message still crosses (the stream's window, 1.25 MB, holds it).
    #[tokio::test]
    async fn over_quic_the_forwarder_takes_more_than_a_login_window_unread() {
        let (listener, addr, pin) = Listener::bind(Transport::Quic).expect("bind");
        let Listener::Quic(ep) = listener else {
            panic!("a QUIC listener")
        };
        let pin = pin.expect("a fingerprint to pin");
        let forwarder = tokio::spawn(async move {
            let incoming = ep.accept().await.expect("a connection");
            let opened = open(incoming).await.expect("opened");
            // Held, unread, until the test ends.
            (ep, opened)
        });
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let endpoint =
            hotline_net::transport::client_endpoint(any, vec![pin], &TransportLimits::default())
                .expect("client endpoint");
        let wait = Duration::from_secs(10);
        let conn = hotline_net::connect(&endpoint, addr, wait)
            .await
            .expect("connected");
        let (mut send, _recv) = conn.open_bi().await.expect("a stream");
        send.write_all(&framed(&[SENDER])).await.expect("the role");
        let (_ep, (role, _send, _unread)) = forwarder.await.expect("the forwarder's task");
        assert_eq!(role, SENDER);
        let message = vec![DATA; PREFIX + MESSAGE_MAX];
        let written = tokio::time::timeout(wait, send.write_all(&message)).await;
        assert!(
            matches!(written, Ok(Ok(()))),
            "a message of {} bytes did not cross to a forwarder that has not read it: {written:?}",
            message.len()
        );
    }

    #[test]
    fn the_listening_line_reads_back() {
        let (addr, fp) = parse_listening("listening 127.0.0.1:4433 -").expect("udp");
        assert_eq!((addr.port(), fp), (4433, None));
        let hex = "ab".repeat(32);
        let (_, fp) = parse_listening(&format!("listening 127.0.0.1:1 {hex}")).expect("quic");
        assert_eq!(fp.map(|f| f.0), Some([0xab; 32]));
        for bad in [
            "",
            "listening",
            "listening 127.0.0.1:1",
            "listening nowhere -",
        ] {
            assert!(parse_listening(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_forwarder_takes_on_at_most_its_limit_of_recipients() {
        let sock = Arc::new(UdpSocket::bind(("127.0.0.1", 0)).await.expect("socket"));
        let mut core = Core::new(Shape::Bare).expect("core");
        for port in 1..=RECIPIENTS_MAX {
            let to: SocketAddr = ([127, 0, 0, 1], port as u16).into();
            core.join(Out::Udp(sock.clone(), to))
                .expect("within the limit");
        }
        let one_more = Out::Udp(sock.clone(), ([127, 0, 0, 2], 1).into());
        assert!(core.join(one_more).is_err());
    }

    #[tokio::test]
    async fn bad_options_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = options(Durability::None);
        for bad in [
            SkeletonOptions {
                rate: 0.0,
                ..o.clone()
            },
            SkeletonOptions {
                recipients: 0,
                ..o.clone()
            },
            SkeletonOptions {
                body_bytes: MESSAGE_MAX,
                ..o.clone()
            },
            SkeletonOptions {
                durability: Durability::Fsync,
                ..o.clone()
            },
        ] {
            assert!(run(dir.path(), &bad).await.is_err(), "{bad:?}");
        }
    }
}
