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

    /// The shared group log, for a group store.
    pub fn group_log(&self) -> Option<&std::sync::Arc<crate::grouplog::GroupLog>> {
        match self {
            Self::Group(log) => Some(log),
            _ => None,
        }
    }

    /// Blocking: the file and SQLite stores.
    fn persist_now(&mut self, rows: &Records) -> anyhow::Result<()> {
        match self {
            Self::File(f) => {
                use std::io::Write as _;
                f.write_all(&rows.buf)?;
                f.sync_data()?;
            }
            Self::Sqlite(c) => {
                let tx = c.transaction()?;
                {
                    let mut st = tx.prepare_cached(
                        "INSERT OR IGNORE INTO items (id, bytes) VALUES (?1, ?2)",
                    )?;
                    for (id, bytes) in rows.iter() {
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
    pub async fn persist(mut self, rows: Records) -> (Self, anyhow::Result<std::time::Instant>) {
        if rows.is_empty() || matches!(self, Self::None) {
            return (self, Ok(std::time::Instant::now()));
        }
        if let Self::Group(log) = &self {
            let r = log.append_durable(rows.buf).await;
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

/// A batch of rows to make durable, as appended: per row, its length (`u32`, little
/// endian), its 16-byte key and its bytes. Built in place from the frames read, so that a
/// delivery's bytes are copied once, into the batch, and not first into a row of their own
/// (a 1 KiB allocation and copy per delivery, freed on another thread: 6–7 % of the load
/// generator's CPU at window 64, twelfth round).
#[derive(Debug, Default)]
pub struct Records {
    buf: Vec<u8>,
}

impl Records {
    /// Appends one row.
    pub fn push(&mut self, key: &[u8; 16], bytes: &[u8]) {
        self.buf
            .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(bytes);
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The rows, in order.
    pub fn iter(&self) -> impl Iterator<Item = ([u8; 16], &[u8])> {
        let mut rest = &self.buf[..];
        std::iter::from_fn(move || {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let (key, tail) = tail.split_first_chunk::<16>()?;
            let len = u32::from_le_bytes(*len) as usize;
            let bytes = tail.get(..len)?;
            rest = &tail[len..];
            Some((*key, bytes))
        })
    }
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
    held: Held,
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
    /// stands in for a node on another machine, so it does not. `known` gives a message's
    /// number in the run where the load generator numbers it (it is then remembered by
    /// number, otherwise by id), and its digest where the generator already has it
    /// (otherwise it is computed); see `traffic::Ledger`.
    pub async fn handle(
        &mut self,
        batch: Vec<RelayToNode>,
        known: impl Fn(&hotline_proto::MessageId) -> Option<(usize, Option<hotline_proto::Digest>)>,
    ) -> anyhow::Result<Handled> {
        use hotline_proto::ReceiptItem;

        let mut h = Handled::default();
        let mut items: Vec<ReceiptItem> = Vec::new();
        // The ids receipted in this batch, built only when a delivery repeats one already
        // held (after a reconnect): a message new to this inbox cannot be in it yet.
        let mut in_batch: Option<std::collections::HashSet<hotline_proto::MessageId>> = None;
        let mut rows = Records::default();
        for f in batch {
            match f {
                RelayToNode::Deliver(s) => {
                    // Only the id and author are needed for the receipt: read them from the
                    // start of the bytes instead of decoding (and allocating) the whole
                    // message; the relay has verified it.
                    let (_, id, sender) =
                        hotline_proto::Envelope::head(s.bytes()).context("undecodable delivery")?;
                    let (fresh, digest) = match known(&id) {
                        Some((n, digest)) => (self.held.insert_numbered(n), digest),
                        None => (self.held.insert(id), None),
                    };
                    let digest = digest.unwrap_or_else(|| s.digest());
                    if fresh {
                        rows.push(&id.0, s.bytes());
                        h.fresh.push(id);
                        if let Some(seen) = &mut in_batch {
                            seen.insert(id);
                        }
                    } else {
                        let seen =
                            in_batch.get_or_insert_with(|| items.iter().map(|i| i.id).collect());
                        if !seen.insert(id) {
                            continue;
                        }
                        h.duplicates += 1;
                    }
                    items.push(ReceiptItem { id, sender, digest });
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

/// The messages an inbox holds: by their number in the run where the load generator numbers
/// them (a bit each), by id otherwise. A node looks a delivery up in its store's index; the
/// load generator's 37 recipients share the relay's two cores, and a set of ids per
/// recipient, hashed and grown to the run's tens of thousands of messages, cost 7–8 % of the
/// generator's CPU at window 64 (cache misses on insert; twelfth round).
#[derive(Debug, Default)]
struct Held {
    numbered: Vec<u64>,
    other: std::collections::HashSet<hotline_proto::MessageId>,
}

impl Held {
    /// Records message number `n`; false if it was held already.
    fn insert_numbered(&mut self, n: usize) -> bool {
        let (word, bit) = (n / 64, 1u64 << (n % 64));
        if word >= self.numbered.len() {
            self.numbered.resize(word + 1, 0);
        }
        let fresh = self.numbered[word] & bit == 0;
        self.numbered[word] |= bit;
        fresh
    }

    /// Records `id`; false if it was held already.
    fn insert(&mut self, id: hotline_proto::MessageId) -> bool {
        self.other.insert(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotline_proto::{
        Audience, Envelope, MessageId, ParticipantId, Role, Seq, Signed, SigningKey,
    };

    fn id(n: u8) -> ParticipantId {
        ParticipantId::new(&format!("P{n:03}")).expect("participant id")
    }

    /// A delivery of message `n` from `P001` to `P002`.
    fn delivery(n: u8) -> RelayToNode {
        let env = Envelope {
            seq: Seq(u64::from(n)),
            ..crate::traffic::alert(
                MessageId([n; 16]),
                id(1),
                Audience::Participants(vec![id(2)]),
                "b".repeat(usize::from(n)),
            )
        };
        let signed = Signed::sign(&env, &SigningKey::from_bytes(&[1; 32])).expect("sign");
        RelayToNode::Deliver(signed)
    }

    fn inbox() -> Inbox {
        let peer = Peer {
            id: id(2),
            key: SigningKey::from_bytes(&[2; 32]),
            role: Role::Member,
        };
        Inbox::new(peer, Store::None, Duration::ZERO)
    }

    #[test]
    fn records_give_back_their_rows_in_order() {
        let mut r = Records::default();
        assert!(r.is_empty());
        assert_eq!(r.iter().count(), 0);
        r.push(&[1; 16], b"one");
        r.push(&[2; 16], b"");
        r.push(&[3; 16], &[9; 1500]);
        let rows: Vec<_> = r.iter().collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0], ([1; 16], &b"one"[..]));
        assert_eq!(rows[1], ([2; 16], &b""[..]));
        assert_eq!(rows[2], ([3; 16], &[9u8; 1500][..]));
        assert_eq!(r.buf.len(), 3 * 20 + 3 + 1500);
    }

    #[test]
    fn held_remembers_numbers_and_ids_apart() {
        let mut h = Held::default();
        assert!(h.insert_numbered(0));
        assert!(h.insert_numbered(64 * 1000 + 3));
        assert!(!h.insert_numbered(0));
        assert!(!h.insert_numbered(64 * 1000 + 3));
        assert!(h.insert_numbered(64 * 1000 + 4));
        assert!(h.insert(MessageId([5; 16])));
        assert!(!h.insert(MessageId([5; 16])));
    }

    /// A delivery repeated in one batch is stored and receipted once; one held from an
    /// earlier batch is receipted again but not stored again; numbered and unnumbered
    /// messages alike.
    #[tokio::test]
    async fn repeated_deliveries_are_stored_once_and_receipted_once_a_batch() {
        for numbered in [false, true] {
            let known = |m: &MessageId| numbered.then(|| (usize::from(m.0[0]), None));
            let mut inbox = inbox();
            let h = inbox
                .handle(vec![delivery(1), delivery(2), delivery(1)], known)
                .await
                .expect("first batch");
            assert_eq!(h.fresh, vec![MessageId([1; 16]), MessageId([2; 16])]);
            assert_eq!((h.duplicates, h.receipts, h.items), (0, 1, 2));

            let h = inbox
                .handle(
                    vec![delivery(2), delivery(3), delivery(2), delivery(3)],
                    known,
                )
                .await
                .expect("second batch");
            assert_eq!(h.fresh, vec![MessageId([3; 16])], "numbered: {numbered}");
            assert_eq!((h.duplicates, h.receipts, h.items), (1, 1, 2));
        }
    }
}
