//! Lightweight protocol clients: real QUIC, real authentication, real signatures, and a
//! recipient's durable store reduced to what durability costs (an fsync'd append, or a
//! SQLite commit, per batch of deliveries).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use hotline_net::{Fingerprint, Session, TransportLimits};
use hotline_node::limits::RECEIPT_PACE_ITEMS;
use hotline_node::pacer::{sign_delivered, ReceiptPacer};
use hotline_proto::frame::RelayToNode;

use crate::network::Peer;

/// How long one connection attempt or authentication may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Receive buffer of each client UDP socket: one socket may carry a thousand connections
/// (the idle workload), whose handshakes would overflow the default buffer.
const UDP_RECV_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// A client QUIC endpoint (one UDP socket) trusting the relay's certificate, configured as
/// a node's (`hotline_net::transport::client_quinn_config`).
pub fn endpoint(fp: Fingerprint) -> anyhow::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
    let udp = quinn::udp::UdpSocketState::new((&socket).into())?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = udp.set_recv_buffer_size((&socket).into(), UDP_RECV_BUFFER_BYTES);
    let runtime = quinn::default_runtime().context("no async runtime")?;
    let mut ep = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)?;
    ep.set_default_client_config(hotline_net::transport::client_quinn_config(
        vec![fp],
        &TransportLimits::default(),
    )?);
    Ok(ep)
}

/// Connects and authenticates as `peer`, saying it holds roster `roster_version`.
pub async fn session(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    peer: &Peer,
    roster_version: u64,
) -> anyhow::Result<Session> {
    let conn = hotline_net::connect(ep, addr, CONNECT_TIMEOUT).await?;
    let s = hotline_net::authenticate(
        conn,
        &peer.id,
        &peer.key,
        roster_version,
        hotline_relay::now_ms(),
        CONNECT_TIMEOUT,
    )
    .await
    .with_context(|| format!("authenticating as {}", peer.id))?;
    Ok(s)
}

/// Reads frames into a channel until the stream ends or fails (the last item is the error).
pub async fn read_frames(
    mut reader: hotline_net::FrameReader,
    tx: tokio::sync::mpsc::Sender<anyhow::Result<RelayToNode>>,
) {
    loop {
        let item = match reader.read::<RelayToNode>().await {
            Ok(Some(f)) => Ok(f),
            Ok(None) => break,
            Err(e) => Err(anyhow::Error::from(e)),
        };
        let stop = item.is_err();
        if tx.send(item).await.is_err() || stop {
            break;
        }
    }
}

/// How a lightweight client makes what it receives durable before it receipts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Write the batch to one log shared by every recipient of the load generator (a ring
    /// of blocks allocated when it is created), durable once an `fdatasync` begun after the
    /// write returns (group commit by one thread, `grouplog.rs`): the 37 recipients stand
    /// for 37 machines syncing in parallel, not 37 syncs on one disk. The default.
    Group,
    /// Append the batch to the recipient's own file and `fdatasync` it, on a blocking thread
    /// (the default before the eighth round).
    Fsync,
    /// Insert the batch into SQLite (WAL, `synchronous=FULL`, as the node's store) and
    /// commit.
    Sqlite,
    /// Nothing (to see what durability costs; not a real recipient).
    None,
}

/// A client's store.
pub enum Store {
    /// The load generator's shared group-committed file.
    Group(std::sync::Arc<crate::grouplog::GroupLog>),
    /// An append-only file.
    File(std::fs::File),
    /// A SQLite database.
    Sqlite(Box<rusqlite::Connection>),
    /// No storage.
    None,
}

impl Store {
    /// Opens (creating) the store at `path` (a file name; SQLite adds `.db`; the shared
    /// group log is `group.log` beside it).
    pub fn open(d: Durability, path: &Path) -> anyhow::Result<Self> {
        Ok(match d {
            Durability::Group => {
                let dir = path.parent().unwrap_or(Path::new("."));
                Self::Group(crate::grouplog::GroupLog::shared(&dir.join("group.log"))?)
            }
            Durability::Fsync => Self::File(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("{}", path.display()))?,
            ),
            Durability::Sqlite => {
                let conn = hotline_store::open(&path.with_extension("db"), true)?;
                conn.execute_batch(
                    "CREATE TABLE IF NOT EXISTS items (id BLOB PRIMARY KEY, bytes BLOB NOT NULL)",
                )?;
                Self::Sqlite(Box::new(conn))
            }
            Durability::None => Self::None,
        })
    }

    /// Blocking: the file and SQLite stores.
    fn persist_now(&mut self, rows: &[([u8; 16], Vec<u8>)]) -> anyhow::Result<()> {
        match self {
            Self::File(f) => {
                use std::io::Write as _;
                f.write_all(&records(rows))?;
                f.sync_data()?;
            }
            Self::Sqlite(c) => {
                let tx = c.transaction()?;
                {
                    let mut st = tx.prepare_cached(
                        "INSERT OR IGNORE INTO items (id, bytes) VALUES (?1, ?2)",
                    )?;
                    for (id, bytes) in rows {
                        st.execute(rusqlite::params![&id[..], bytes])?;
                    }
                }
                tx.commit()?;
            }
            Self::Group(_) | Self::None => {}
        }
        Ok(())
    }

    /// Makes `rows` durable (a file or SQLite on a blocking thread, the group log on its
    /// own thread); gives the store back, and the instant the batch became durable (its
    /// sync or commit returned; now, for no rows or no durability).
    pub async fn persist(
        mut self,
        rows: Vec<([u8; 16], Vec<u8>)>,
    ) -> (Self, anyhow::Result<std::time::Instant>) {
        if rows.is_empty() || matches!(self, Self::None) {
            return (self, Ok(std::time::Instant::now()));
        }
        if let Self::Group(log) = &self {
            let r = log.append_durable(records(&rows)).await;
            return (self, r.context("group log"));
        }
        match tokio::task::spawn_blocking(move || {
            let r = self.persist_now(&rows).map(|()| std::time::Instant::now());
            (self, r)
        })
        .await
        {
            Ok(x) => x,
            Err(e) => (Self::None, Err(anyhow::anyhow!("store task failed: {e}"))),
        }
    }
}

/// A batch as appended: per row, its length, id and bytes.
fn records(rows: &[([u8; 16], Vec<u8>)]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(rows.iter().map(|r| r.1.len() + 20).sum());
    for (id, bytes) in rows {
        buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        buf.extend_from_slice(id);
        buf.extend_from_slice(bytes);
    }
    buf
}

/// What a recipient did with one batch of frames.
#[derive(Debug, Default)]
pub struct Handled {
    /// Messages made durable for the first time, in order.
    pub fresh: Vec<hotline_proto::MessageId>,
    /// Deliveries of messages already held (receipted again, not stored again).
    pub duplicates: u64,
    /// The encoded `Receipt` frames to write.
    pub frames: Vec<u8>,
    /// Receipts signed.
    pub receipts: u64,
    /// Messages those receipts cover.
    pub items: u64,
    /// `ReceiptStored` answers seen.
    pub stored: u64,
    /// Refusals seen.
    pub rejections: Vec<String>,
    /// When `fresh` became durable (the sync or commit returned).
    pub durable_at: Option<std::time::Instant>,
}

/// A recipient's inbox: what a node does with deliveries, minus the operator.
pub struct Inbox {
    peer: Peer,
    store: Store,
    held: std::collections::HashSet<hotline_proto::MessageId>,
    /// Deliveries stored durably and not yet covered by a receipt (receipt pacing).
    pacer: ReceiptPacer,
}

impl Inbox {
    /// An empty inbox for `peer` over `store`, pacing its receipts as the node does
    /// (`hotline_node::pacer`, with `pace` for the node's `receipt_pace_ms`): stored deliveries
    /// wait up to `pace` after the first of them to share one cumulative receipt, none after
    /// a quiet second or once `RECEIPT_PACE_ITEMS` wait. Zero receipts each durable batch at
    /// once.
    pub fn new(peer: Peer, store: Store, pace: Duration) -> Self {
        Self {
            peer,
            store,
            held: Default::default(),
            pacer: ReceiptPacer::new(pace, RECEIPT_PACE_ITEMS),
        }
    }

    /// The recipient this inbox stands for.
    pub fn who(&self) -> &hotline_proto::ParticipantId {
        &self.peer.id
    }

    /// When the pending deliveries are due to be receipted, if any wait.
    pub fn due(&self) -> Option<std::time::Instant> {
        self.pacer.due()
    }

    /// Signs the pending deliveries' receipts into `h` if they are due (or `now` is past
    /// their pace): one cumulative receipt, several if they exceed the item limit.
    pub fn receipt_due(&mut self, h: &mut Handled, now: std::time::Instant) -> anyhow::Result<()> {
        use hotline_proto::frame::{encode_frame, NodeToRelay};

        if !self.pacer.is_due(now) {
            return Ok(());
        }
        let items = self.pacer.take();
        let receipts = sign_delivered(
            &self.peer.id,
            &self.peer.key,
            &items,
            hotline_relay::now_ms(),
        )?;
        h.receipts += receipts.len() as u64;
        h.items += items.len() as u64;
        for signed in receipts {
            h.frames
                .extend_from_slice(&encode_frame(&NodeToRelay::Receipt(signed))?);
        }
        Ok(())
    }

    /// Stores a batch's deliveries in one durable step, then signs one cumulative delivered
    /// receipt for them (several if the batch exceeds the receipt item limit), as the node
    /// does; with a pace ([`Inbox::new`]), only once the oldest waiting one is due. A
    /// node also verifies each message's signature: the relay already has, and this client
    /// stands in for a node on another machine, so it does not. `known` gives a
    /// message's digest when the load generator already has it (see `traffic::Ledger`);
    /// otherwise it is computed.
    pub async fn handle(
        &mut self,
        batch: Vec<RelayToNode>,
        known: impl Fn(&hotline_proto::MessageId) -> Option<hotline_proto::Digest>,
    ) -> anyhow::Result<Handled> {
        use hotline_proto::ReceiptItem;

        let mut h = Handled::default();
        let mut items: Vec<ReceiptItem> = Vec::new();
        let mut in_batch = std::collections::HashSet::new();
        let mut rows = Vec::new();
        for f in batch {
            match f {
                RelayToNode::Deliver(s) => {
                    // Only the id and author are needed for the receipt: read them from the
                    // start of the bytes instead of decoding (and allocating) the whole
                    // message; the relay has verified it.
                    let (_, id, sender) =
                        hotline_proto::Envelope::head(s.bytes()).context("undecodable delivery")?;
                    if !in_batch.insert(id) {
                        continue;
                    }
                    items.push(ReceiptItem {
                        id,
                        sender,
                        digest: known(&id).unwrap_or_else(|| s.digest()),
                    });
                    if self.held.insert(id) {
                        rows.push((id.0, s.bytes().to_vec()));
                        h.fresh.push(id);
                    } else {
                        h.duplicates += 1;
                    }
                }
                RelayToNode::ReceiptStored(_) => h.stored += 1,
                RelayToNode::Rejected(r) => {
                    h.rejections.push(format!("{:?}: {}", r.code, r.detail))
                }
                _ => {}
            }
        }
        if items.is_empty() {
            return Ok(h);
        }
        let store = std::mem::replace(&mut self.store, Store::None);
        let stored_any = !rows.is_empty();
        let (store, r) = store.persist(rows).await;
        self.store = store;
        let durable_at = r?;
        if stored_any {
            h.durable_at = Some(durable_at);
        }
        let now = std::time::Instant::now();
        self.pacer.add(items, now);
        self.receipt_due(&mut h, now)?;
        Ok(h)
    }
}
