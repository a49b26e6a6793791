//! The relay's configuration file (TOML). Paths are relative to the file's directory.
//!
//! Every field is documented with its default; `config/relay.toml` is the commented example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use hotline_proto::routing::Policy;
use hotline_proto::PublicKey;

use hotline_config::text_file;
pub use hotline_config::ConfigError;

use crate::limits;

/// The `[limits]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections served at once (default 16384; at most 1048576).
    pub connections_max: usize,
    /// Largest signed bytes of a submitted message, bytes; a larger one is refused
    /// `TooLarge` (default 262144, the protocol maximum; at least 1024, which holds any
    /// message without a body to a group or everyone). It bounds messages only: every
    /// frame is read up to the protocol maximum, whatever this says.
    pub frame_bytes_max: usize,
    /// Largest message body, bytes (default 65536, the protocol maximum; at least 1: 0
    /// would refuse every message with a body).
    pub body_bytes_max: usize,
    /// Messages queued per recipient before refusing more (default 1000000; at least 1: 0
    /// would refuse every message as `QueueFull`).
    pub queue_depth_max: u64,
    /// Sustained submissions per second per participant (default 100).
    pub rate_per_sec: u32,
    /// Burst above the sustained rate (default 10000).
    pub rate_burst: u32,
    /// Sustained signed bytes of submissions per second per participant; past it and its
    /// burst a submission is refused `RateLimited`, as past `rate_per_sec` (default 1048576,
    /// 1 MiB; at least 1).
    pub byte_rate_per_sec: u64,
    /// Burst of signed bytes above that rate (default 67108864, 64 MiB; at least 81920, the
    /// largest signed message, which is charged whole).
    pub byte_rate_burst: u64,
    /// Sustained receipts per second read from one participant before reading its
    /// connection pauses (default 1000).
    pub receipt_rate_per_sec: u32,
    /// Burst of receipts above that rate (default 10000).
    pub receipt_rate_burst: u32,
    /// Sustained receipt items (messages named by receipts) per second read from one
    /// participant before reading its connection pauses, as for `receipt_rate_per_sec`
    /// (default 10000; at least 512, the most items one receipt names).
    pub receipt_item_rate_per_sec: u32,
    /// Burst of receipt items above that rate (default 100000).
    pub receipt_item_rate_burst: u32,
    /// Receipts naming only messages this relay does not hold (accepted by another relay)
    /// are forwarded to a sender while fewer than this many receipts wait for it (default
    /// 10000).
    pub forward_foreign_max: u64,
    /// Receipts kept a UTC day for one signer only because they name messages this relay
    /// does not hold; past it such a receipt from that signer is dropped (answered as stored,
    /// so never sent again; neither kept nor forwarded), and the budget starts again at the
    /// next UTC day. 0: none is kept. Counted in the
    /// relay's memory, so a restart starts every budget again (default 10000; at most
    /// 1000000).
    pub foreign_receipts_per_day_max: u64,
    /// Sessions one participant may start at once: past them a login is refused
    /// `LimitExceeded` (it supersedes nothing), until the refill (default 30; at least 1, at
    /// most 100000).
    pub session_burst: u32,
    /// One more session for a participant every this long, once its burst is spent, ms
    /// (default 5000; at least 1, at most 3600000). A reference node waits as long as such a
    /// refusal says (`retry in S.T s`), but 5 min at most: past that it is refused again.
    pub session_refill_ms: u64,
    /// Time to authenticate after connecting, ms (default 5000).
    pub handshake_timeout_ms: u64,
    /// Connections admitted and not yet authenticated, in all, before new ones are refused;
    /// from half of it on, a new connection must first prove its address (default 1024).
    pub handshakes_max: usize,
    /// Connections not yet authenticated from one address (an IPv6 /64) before new ones
    /// from it are refused; 0: no limit (default 64).
    pub handshakes_per_ip_max: usize,
    /// Idle connection timeout, ms (default 6000: three keepalive intervals; at most
    /// 600000).
    pub idle_timeout_ms: u64,
    /// Keepalive interval, ms (default 2000).
    pub keepalive_ms: u64,
    /// Submissions awaiting commit per connection before reading pauses (default 2048; at
    /// most 65536).
    pub inflight_per_connection: usize,
    /// Unreceipted deliveries per node before delivery pauses (default 4096).
    pub delivery_window: usize,
    /// How long a write to a node may make no progress (the node reads none of it) before
    /// the node is closed as a slow consumer, ms (default 10000). A node reading steadily,
    /// however slowly, is not timed out.
    pub write_timeout_ms: u64,
    /// Most items per commit (default 1024; at most 8192, the store writer's queue depth).
    pub commit_batch_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections_max: limits::CONNECTIONS_MAX,
            frame_bytes_max: limits::FRAME_BYTES_MAX,
            body_bytes_max: limits::BODY_BYTES_MAX,
            queue_depth_max: limits::QUEUE_DEPTH_MAX,
            rate_per_sec: limits::RATE_PER_SEC,
            rate_burst: limits::RATE_BURST,
            byte_rate_per_sec: limits::BYTE_RATE_PER_SEC,
            byte_rate_burst: limits::BYTE_RATE_BURST,
            receipt_rate_per_sec: limits::RECEIPT_RATE_PER_SEC,
            receipt_rate_burst: limits::RECEIPT_RATE_BURST,
            receipt_item_rate_per_sec: limits::RECEIPT_ITEM_RATE_PER_SEC,
            receipt_item_rate_burst: limits::RECEIPT_ITEM_RATE_BURST,
            forward_foreign_max: limits::FORWARD_FOREIGN_MAX,
            foreign_receipts_per_day_max: limits::FOREIGN_RECEIPTS_PER_DAY_MAX,
            session_burst: limits::SESSION_BURST,
            session_refill_ms: limits::SESSION_REFILL_MS,
            handshake_timeout_ms: limits::HANDSHAKE_TIMEOUT_MS,
            handshakes_max: limits::HANDSHAKES_MAX,
            handshakes_per_ip_max: limits::HANDSHAKES_PER_IP_MAX,
            idle_timeout_ms: hotline_net::transport::IDLE_TIMEOUT_MS,
            keepalive_ms: hotline_net::transport::KEEPALIVE_MS,
            inflight_per_connection: limits::INFLIGHT_PER_CONNECTION,
            delivery_window: limits::DELIVERY_WINDOW,
            write_timeout_ms: limits::WRITE_TIMEOUT_MS,
            commit_batch_max: limits::COMMIT_BATCH_MAX,
        }
    }
}

/// The `[policy]` table: what observers may do.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Observers may address members and other observers freely, not only reply to them
    /// (default false: observers write to the Secretariat and reply to who addressed them).
    pub observers_may_address_anyone: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<SocketAddr>,
    cert: PathBuf,
    key: PathBuf,
    roster: PathBuf,
    roster_key: String,
    data_dir: PathBuf,
    metrics_listen: Option<String>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    policy: PolicyConfig,
}

/// A checked relay configuration with absolute paths.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// QUIC listen address (default `127.0.0.1:7400`; use `0.0.0.0:7400` to serve a network).
    pub listen: SocketAddr,
    /// Certificate chain, PEM (created by `hotline relay init`).
    pub cert: PathBuf,
    /// Private key, PEM, mode 0600: one the group or others may read is refused at start
    /// (whoever reads it can impersonate the relay).
    pub key: PathBuf,
    /// The signed roster file.
    pub roster: PathBuf,
    /// The Secretariat roster public key the roster must be signed with (hex, or a path to
    /// a `.pub` file).
    pub roster_key: PublicKey,
    /// Directory of the store (`relay.db`); created if missing.
    pub data_dir: PathBuf,
    /// Metrics and health HTTP address, localhost only (default `127.0.0.1:9400`; `""`
    /// disables).
    pub metrics_listen: Option<SocketAddr>,
    /// Limits.
    pub limits: Limits,
    /// Routing policy.
    pub policy: Policy,
}

impl RelayConfig {
    /// The QUIC transport limits of the relay's endpoint.
    pub fn transport_limits(&self) -> hotline_net::TransportLimits {
        hotline_net::TransportLimits {
            idle_timeout_ms: self.limits.idle_timeout_ms,
            keepalive_ms: self.limits.keepalive_ms,
            peer_bidi_streams: 1,
        }
    }
}

/// Default QUIC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
/// Default metrics address.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9400";

impl RelayConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&text_file::read_config(path)?, path)
    }

    /// Parses configuration text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = text_file::parse_toml(text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let invalid = |field, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            reason,
        };
        if let Some((field, why)) = text_file::empty_field(
            &[
                ("cert", raw.cert.as_path()),
                ("key", raw.key.as_path()),
                ("roster", raw.roster.as_path()),
                ("data_dir", raw.data_dir.as_path()),
            ],
            &raw.roster_key,
        ) {
            return Err(invalid(field, why.into()));
        }
        let roster_key = hotline_config::keyfile::resolve_public_in(&raw.roster_key, base)
            .map_err(|e| invalid("roster_key", e.to_string()))?;
        let metrics_listen = match raw.metrics_listen.as_deref() {
            None => Some(
                DEFAULT_METRICS
                    .parse()
                    .map_err(|_| invalid("metrics_listen", "bad default".into()))?,
            ),
            Some("") => None,
            Some(s) => {
                let a: SocketAddr = s
                    .parse()
                    .map_err(|e| invalid("metrics_listen", format!("{s:?}: {e}")))?;
                if !a.ip().is_loopback() {
                    return Err(invalid(
                        "metrics_listen",
                        "metrics are served on a loopback address only".into(),
                    ));
                }
                Some(a)
            }
        };
        let l = &raw.limits;
        // Below the floor the relay would refuse every message, or all but the shortest,
        // as `TooLarge`.
        if l.frame_bytes_max < limits::FRAME_BYTES_FLOOR
            || l.frame_bytes_max > limits::FRAME_BYTES_MAX
        {
            return Err(invalid(
                "limits.frame_bytes_max",
                format!(
                    "must be {}..={} (below {} bytes the relay would refuse messages without a body as too large)",
                    limits::FRAME_BYTES_FLOOR,
                    limits::FRAME_BYTES_MAX,
                    limits::FRAME_BYTES_FLOOR
                ),
            ));
        }
        if l.body_bytes_max > limits::BODY_BYTES_MAX {
            return Err(invalid(
                "limits.body_bytes_max",
                format!("must be at most {}", limits::BODY_BYTES_MAX),
            ));
        }
        if l.idle_timeout_ms > limits::IDLE_TIMEOUT_MAX_MS {
            return Err(invalid(
                "limits.idle_timeout_ms",
                format!(
                    "must be at most {} (10 minutes)",
                    limits::IDLE_TIMEOUT_MAX_MS
                ),
            ));
        }
        if l.keepalive_ms == 0 || l.keepalive_ms >= l.idle_timeout_ms {
            return Err(invalid(
                "limits.keepalive_ms",
                "must be positive and below idle_timeout_ms".into(),
            ));
        }
        for (field, v) in [
            ("limits.connections_max", l.connections_max as u64),
            ("limits.body_bytes_max", l.body_bytes_max as u64),
            ("limits.queue_depth_max", l.queue_depth_max),
            (
                "limits.inflight_per_connection",
                l.inflight_per_connection as u64,
            ),
            ("limits.delivery_window", l.delivery_window as u64),
            ("limits.commit_batch_max", l.commit_batch_max as u64),
            ("limits.rate_per_sec", u64::from(l.rate_per_sec)),
            ("limits.byte_rate_per_sec", l.byte_rate_per_sec),
            (
                "limits.receipt_rate_per_sec",
                u64::from(l.receipt_rate_per_sec),
            ),
            ("limits.session_burst", u64::from(l.session_burst)),
            ("limits.session_refill_ms", l.session_refill_ms),
            ("limits.handshake_timeout_ms", l.handshake_timeout_ms),
            ("limits.handshakes_max", l.handshakes_max as u64),
            ("limits.write_timeout_ms", l.write_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be positive".into()));
            }
        }
        // Past these the relay would panic (tokio's semaphores and channels hold at most
        // `Semaphore::MAX_PERMITS`), allocate without need, or bound nothing worth
        // bounding; each is documented.
        for (field, v, max) in [
            (
                "limits.connections_max",
                l.connections_max as u64,
                limits::CONNECTIONS_MAX_CEILING as u64,
            ),
            (
                "limits.inflight_per_connection",
                l.inflight_per_connection as u64,
                limits::INFLIGHT_PER_CONNECTION_CEILING as u64,
            ),
            (
                "limits.commit_batch_max",
                l.commit_batch_max as u64,
                limits::COMMIT_BATCH_CEILING as u64,
            ),
            (
                "limits.foreign_receipts_per_day_max",
                l.foreign_receipts_per_day_max,
                limits::FOREIGN_RECEIPTS_PER_DAY_CEILING,
            ),
            (
                "limits.session_burst",
                u64::from(l.session_burst),
                u64::from(limits::SESSION_BURST_CEILING),
            ),
            (
                "limits.session_refill_ms",
                l.session_refill_ms,
                limits::SESSION_REFILL_CEILING_MS,
            ),
        ] {
            if v > max {
                return Err(invalid(field, format!("must be at most {max}")));
            }
        }
        // A message is charged to the byte budget whole: below the largest message, the
        // largest would be refused `RateLimited`, and retried by its node, for ever.
        if l.byte_rate_burst < limits::BYTE_RATE_BURST_MIN {
            return Err(invalid(
                "limits.byte_rate_burst",
                format!(
                    "must be at least {} (the largest signed message)",
                    limits::BYTE_RATE_BURST_MIN
                ),
            ));
        }
        // A receipt is charged whole as it is read: below this one receipt could pause
        // reading for longer than a node waits for its write to make progress.
        if l.receipt_item_rate_per_sec < limits::RECEIPT_ITEM_RATE_MIN {
            return Err(invalid(
                "limits.receipt_item_rate_per_sec",
                format!(
                    "must be at least {} (the most items one receipt may name)",
                    limits::RECEIPT_ITEM_RATE_MIN
                ),
            ));
        }
        Ok(Self {
            listen: raw.listen.unwrap_or_else(|| {
                // The constant parses; a test below checks it.
                DEFAULT_LISTEN
                    .parse()
                    .unwrap_or(([127, 0, 0, 1], 7400).into())
            }),
            cert: abs(raw.cert),
            key: abs(raw.key),
            roster: abs(raw.roster),
            roster_key,
            data_dir: abs(raw.data_dir),
            metrics_listen,
            limits: raw.limits,
            policy: Policy {
                observers_may_address_anyone: raw.policy.observers_may_address_anyone,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    /// A fresh self-signed relay certificate and key.
    fn test_identity() -> hotline_net::RelayIdentity {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
        hotline_net::tls::write_self_signed(&cert, &key).expect("init");
        hotline_net::RelayIdentity::load(&cert, &key).expect("load")
    }

    #[test]
    fn defaults_apply_and_paths_are_relative_to_the_file() {
        let text = format!(
            "cert = \"relay.crt\"\nkey = \"relay.key\"\nroster = \"roster.signed\"\nroster_key = \"{KEY}\"\ndata_dir = \"data\"\n"
        );
        let c = RelayConfig::parse(&text, Path::new("/etc/hotline/relay.toml")).expect("valid");
        assert_eq!(
            c.listen,
            DEFAULT_LISTEN.parse::<SocketAddr>().expect("const")
        );
        assert_eq!(c.cert, Path::new("/etc/hotline/relay.crt"));
        assert_eq!(c.limits.frame_bytes_max, limits::FRAME_BYTES_MAX);
        assert!(c.metrics_listen.is_some());
    }

    #[test]
    fn counts_the_relay_cannot_hold_are_refused() {
        let base = format!(
            "cert = \"a\"\nkey = \"b\"\nroster = \"c\"\nroster_key = \"{KEY}\"\ndata_dir = \"d\"\n[limits]\n"
        );
        for (field, max) in [
            ("connections_max", limits::CONNECTIONS_MAX_CEILING),
            (
                "inflight_per_connection",
                limits::INFLIGHT_PER_CONNECTION_CEILING,
            ),
            ("commit_batch_max", limits::COMMIT_BATCH_CEILING),
        ] {
            let at = |v: u64| format!("{base}{field} = {v}\n");
            for v in [max as u64 + 1, i64::MAX as u64] {
                let e = RelayConfig::parse(&at(v), Path::new("r.toml")).expect_err("too many");
                assert_eq!(e.field(), Some(format!("limits.{field}").as_str()), "{e}");
                assert!(e.to_string().contains(&format!("at most {max}")), "{e}");
            }
            RelayConfig::parse(&at(max as u64), Path::new("r.toml")).expect("the maximum");
        }
    }

    /// A zero that would make the relay refuse every message, or every connection, is
    /// refused, naming the field; the rest of the limits' zeros are refused by other tests or
    /// mean something documented (`handshakes_per_ip_max`, `foreign_receipts_per_day_max`).
    #[test]
    fn zeros_that_stop_all_traffic_are_refused() {
        let base = format!(
            "cert = \"a\"\nkey = \"b\"\nroster = \"c\"\nroster_key = \"{KEY}\"\ndata_dir = \"d\"\n[limits]\n"
        );
        for field in [
            "body_bytes_max",
            "queue_depth_max",
            "connections_max",
            "delivery_window",
            "handshake_timeout_ms",
            "write_timeout_ms",
        ] {
            let e = RelayConfig::parse(&format!("{base}{field} = 0\n"), Path::new("r.toml"))
                .expect_err(field);
            assert_eq!(e.field(), Some(format!("limits.{field}").as_str()), "{e}");
            assert!(e.to_string().contains("must be positive"), "{e}");
            RelayConfig::parse(&format!("{base}{field} = 1\n"), Path::new("r.toml")).expect("one");
        }
    }

    /// The byte budget of submissions: 1 MiB/s and 64 MiB by default; a zero rate is
    /// refused as the count budget's is, and a burst below the largest signed message
    /// (which could never pass) is refused naming the field and the minimum.
    #[test]
    fn the_byte_budget_defaults_and_refuses_what_would_stop_a_message_for_ever() {
        let base = format!(
            "cert = \"a\"\nkey = \"b\"\nroster = \"c\"\nroster_key = \"{KEY}\"\ndata_dir = \"d\"\n"
        );
        let parse = |text: &str| RelayConfig::parse(text, Path::new("r.toml"));
        let l = parse(&base).expect("valid").limits;
        assert_eq!(
            (l.byte_rate_per_sec, l.byte_rate_burst),
            (1024 * 1024, 64 * 1024 * 1024)
        );
        let e = parse(&format!("{base}[limits]\nbyte_rate_per_sec = 0\n")).expect_err("zero");
        assert_eq!(e.field(), Some("limits.byte_rate_per_sec"), "{e}");
        assert!(e.to_string().contains("must be positive"), "{e}");
        let min = limits::BYTE_RATE_BURST_MIN;
        for v in [0, min - 1] {
            let e = parse(&format!("{base}[limits]\nbyte_rate_burst = {v}\n")).expect_err("small");
            assert_eq!(e.field(), Some("limits.byte_rate_burst"), "{e}");
            assert!(e.to_string().contains("at least 81920"), "{e}");
        }
        let l = parse(&format!(
            "{base}[limits]\nbyte_rate_per_sec = 1\nbyte_rate_burst = {min}\n"
        ))
        .expect("the smallest")
        .limits;
        assert_eq!((l.byte_rate_per_sec, l.byte_rate_burst), (1, min));
        parse(&format!(
            "{base}[limits]\nbyte_rate_per_sec = {m}\nbyte_rate_burst = {m}\n",
            m = i64::MAX
        ))
        .expect("no ceiling, as for the count budget");
    }

    /// A `frame_bytes_max` below the floor would have the relay refuse every message, or
    /// all but the shortest, as `TooLarge`: refused at load naming the field and the floor;
    /// the floor itself is taken.
    #[test]
    fn a_frame_limit_below_the_floor_is_refused() {
        let base = format!(
            "cert = \"a\"\nkey = \"b\"\nroster = \"c\"\nroster_key = \"{KEY}\"\ndata_dir = \"d\"\n[limits]\n"
        );
        let floor = limits::FRAME_BYTES_FLOOR;
        for v in [0, 1, 100, floor - 1] {
            let e = RelayConfig::parse(
                &format!("{base}frame_bytes_max = {v}\n"),
                Path::new("r.toml"),
            )
            .expect_err("below the floor");
            assert_eq!(e.field(), Some("limits.frame_bytes_max"), "{e}");
            assert!(
                e.to_string().contains(&format!("must be {floor}..=")),
                "{e}"
            );
        }
        let c = RelayConfig::parse(
            &format!("{base}frame_bytes_max = {floor}\n"),
            Path::new("r.toml"),
        )
        .expect("the floor");
        assert_eq!(c.limits.frame_bytes_max, floor);
    }

    /// The floor of `frame_bytes_max` is above the smallest valid signed message, and above
    /// the largest without a body to a group (the longest group name, subject, category,
    /// every reference, the largest numbers), so that a relay at the floor takes them.
    #[test]
    fn the_frame_floor_holds_every_message_without_a_body_to_a_group() {
        use hotline_proto::limits as proto;
        use hotline_proto::{
            Audience, Envelope, Kind, MessageId, ParticipantId, Precedence, Seq, Signed,
            SigningKey, Status, PROTOCOL_VERSION,
        };
        let key = SigningKey::from_bytes(&[4; 32]);
        let smallest = Envelope {
            version: PROTOCOL_VERSION,
            id: MessageId([0; 16]),
            sender: ParticipantId::new("UN").expect("id"),
            seq: Seq(1),
            audience: Audience::Everyone,
            kind: Kind::Alert,
            precedence: Precedence::Routine,
            status: Status::Actual,
            created_at_ms: 0,
            respond_by_ms: None,
            references: vec![],
            category: None,
            subject: "s".into(),
            body: String::new(),
        };
        let largest_headed = Envelope {
            id: MessageId([0xff; 16]),
            sender: ParticipantId::new(&"A".repeat(proto::PARTICIPANT_ID_BYTES_MAX)).expect("id"),
            seq: Seq(proto::SEQ_MAX),
            audience: Audience::Group("g".repeat(proto::NAME_BYTES_MAX)),
            created_at_ms: proto::TIME_MS_MAX - 1,
            respond_by_ms: Some(proto::TIME_MS_MAX),
            references: (0..proto::REFERENCES_MAX)
                .map(|i| MessageId([0x80 | i as u8; 16]))
                .collect(),
            category: Some("c".repeat(proto::CATEGORY_BYTES_MAX)),
            subject: "s".repeat(proto::SUBJECT_BYTES_MAX),
            ..smallest.clone()
        };
        let len = |e: &Envelope| Signed::sign(e, &key).expect("valid").bytes().len();
        let (small, large) = (len(&smallest), len(&largest_headed));
        assert!(small < large, "{small} {large}");
        assert!(
            large <= limits::FRAME_BYTES_FLOOR,
            "the largest message without a body is {large} bytes"
        );
    }

    /// The budget of receipts kept only for messages the relay does not hold: 10,000 a day
    /// by default, any value up to the ceiling (0 keeps none), and past it the file is
    /// refused naming the field and the maximum.
    #[test]
    fn the_budget_of_foreign_receipts_defaults_and_has_a_ceiling() {
        let base = format!(
            "cert = \"a\"\nkey = \"b\"\nroster = \"c\"\nroster_key = \"{KEY}\"\ndata_dir = \"d\"\n"
        );
        let parse = |text: &str| RelayConfig::parse(text, Path::new("r.toml"));
        let budget = |text: &str| {
            parse(text)
                .expect("valid")
                .limits
                .foreign_receipts_per_day_max
        };
        assert_eq!(budget(&base), 10_000);
        assert_eq!(budget(&base), limits::FOREIGN_RECEIPTS_PER_DAY_MAX);
        let at = |v: u64| format!("{base}[limits]\nforeign_receipts_per_day_max = {v}\n");
        for v in [0, 25, limits::FOREIGN_RECEIPTS_PER_DAY_CEILING] {
            assert_eq!(budget(&at(v)), v);
        }
        for v in [
            limits::FOREIGN_RECEIPTS_PER_DAY_CEILING + 1,
            i64::MAX as u64,
        ] {
            let e = parse(&at(v)).expect_err("over the ceiling");
            assert_eq!(
                e.field(),
                Some("limits.foreign_receipts_per_day_max"),
                "{e}"
            );
            assert!(e.to_string().contains("at most 1000000"), "{e}");
        }
        let e = parse(&format!(
            "{base}[limits]\nforeign_receipts_per_day_max = -1\n"
        ))
        .expect_err("negative");
        assert!(e.to_string().contains("line 7"), "{e}");
    }

    /// The budget of sessions a participant may start: 30 at once and one more every 5 s by
    /// default; a zero (which would refuse every login, or refill at no time) and a value
    /// past its ceiling are refused naming the field; the extremes are taken.
    #[test]
    fn the_session_budget_defaults_and_refuses_zeros_and_values_past_its_ceiling() {
        let base = format!(
            "cert = \"a\"\nkey = \"b\"\nroster = \"c\"\nroster_key = \"{KEY}\"\ndata_dir = \"d\"\n"
        );
        let parse = |text: &str| RelayConfig::parse(text, Path::new("r.toml"));
        let l = parse(&base).expect("valid").limits;
        assert_eq!((l.session_burst, l.session_refill_ms), (30, 5000));
        for (field, max) in [
            ("session_burst", u64::from(limits::SESSION_BURST_CEILING)),
            ("session_refill_ms", limits::SESSION_REFILL_CEILING_MS),
        ] {
            let at = |v: u64| format!("{base}[limits]\n{field} = {v}\n");
            let e = parse(&at(0)).expect_err("zero");
            assert_eq!(e.field(), Some(format!("limits.{field}").as_str()), "{e}");
            assert!(e.to_string().contains("must be positive"), "{e}");
            let e = parse(&at(max + 1)).expect_err("past the ceiling");
            assert_eq!(e.field(), Some(format!("limits.{field}").as_str()), "{e}");
            assert!(e.to_string().contains(&format!("at most {max}")), "{e}");
            parse(&at(1)).expect("one");
            parse(&at(max)).expect("the ceiling");
        }
    }

    /// An empty path would name the configuration's own directory (`/etc/hotline/` as the
    /// store), and an empty roster key nothing: each is refused naming its field.
    #[test]
    fn empty_paths_and_keys_are_refused() {
        let text = format!(
            "cert = \"a\"\nkey = \"b\"\nroster = \"c\"\nroster_key = \"{KEY}\"\ndata_dir = \"d\"\n"
        );
        for (field, from) in [
            ("cert", "cert = \"a\""),
            ("key", "key = \"b\""),
            ("roster", "roster = \"c\""),
            ("data_dir", "data_dir = \"d\""),
            ("roster_key", &format!("roster_key = \"{KEY}\"")),
        ] {
            let bad = text.replace(from, &format!("{field} = \"\""));
            assert_ne!(bad, text, "{field}");
            let e =
                RelayConfig::parse(&bad, Path::new("/etc/hotline/relay.toml")).expect_err(field);
            assert_eq!(e.field(), Some(field), "{e}");
            assert!(e.to_string().contains("empty: give"), "{e}");
        }
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let text = format!(
            "cert = \"a\"\nkey = \"b\"\nroster = \"c\"\nroster_key = \"{KEY}\"\ndata_dir = \"d\"\n[limits]\nframe_bytes_max = \"big\"\n"
        );
        let e = RelayConfig::parse(&text, Path::new("r.toml")).expect_err("bad type");
        let msg = e.to_string();
        assert!(msg.contains("r.toml") && msg.contains("line 7"), "{msg}");

        let text = text.replace("\"big\"", "99999999");
        let e = RelayConfig::parse(&text, Path::new("r.toml")).expect_err("too big");
        assert!(e.to_string().contains("limits.frame_bytes_max"), "{e}");

        // A zero receipt rate would stop reading a node for good.
        let text = text.replace("frame_bytes_max = 99999999", "receipt_rate_per_sec = 0");
        let e = RelayConfig::parse(&text, Path::new("r.toml")).expect_err("zero rate");
        assert!(
            e.to_string().contains("limits.receipt_rate_per_sec")
                && e.to_string().contains("must be positive"),
            "{e}"
        );

        // Below one receipt's most items a second, one receipt could pause reading a node
        // for longer than the node waits for its write to move.
        let text = text.replace(
            "receipt_rate_per_sec = 0",
            "receipt_item_rate_per_sec = 511",
        );
        let e = RelayConfig::parse(&text, Path::new("r.toml")).expect_err("slow items");
        assert!(
            e.to_string().contains("limits.receipt_item_rate_per_sec")
                && e.to_string().contains("at least 512"),
            "{e}"
        );
        let floor = text.replace("= 511", "= 512");
        let c = RelayConfig::parse(&floor, Path::new("r.toml")).expect("the floor");
        assert_eq!(c.limits.receipt_item_rate_per_sec, 512);

        // QUIC refuses an idle timeout this long at the relay's start: the parse refuses it.
        let text = text.replace(
            "receipt_item_rate_per_sec = 511",
            "idle_timeout_ms = 9223372036854775807",
        );
        let e = RelayConfig::parse(&text, Path::new("r.toml")).expect_err("endless idle");
        assert!(
            e.to_string().contains("limits.idle_timeout_ms")
                && e.to_string().contains("at most 600000"),
            "{e}"
        );
        let at_most = text.replace("9223372036854775807", "600000");
        let c = RelayConfig::parse(&at_most, Path::new("r.toml")).expect("the maximum");
        hotline_net::transport::check_server_config(&test_identity(), &c.transport_limits())
            .expect("QUIC takes the maximum");

        let e = RelayConfig::parse("cert = \"a\"\nbogus = 1\n", Path::new("r.toml"))
            .expect_err("unknown field");
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    /// `config/relay.toml` says each optional line is "commented out at [its] default value,
    /// so uncommenting a line changes nothing": an operator who uncomments one to edit it
    /// starts from the value the relay runs with. Uncommenting every such line at once
    /// gives the configuration the file gives as it ships.
    #[test]
    fn the_examples_commented_values_are_the_defaults() {
        let example = include_str!("../../../config/relay.toml");
        let path = Path::new("/etc/hotline/relay.toml");
        let uncommented: String = example
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if is_setting(rest) => format!("{rest}\n"),
                _ => format!("{l}\n"),
            })
            .collect();
        assert_ne!(uncommented, example, "the example has commented settings");
        let shipped = RelayConfig::parse(example, path).expect("the example parses");
        let every = RelayConfig::parse(&uncommented, path).expect("uncommented, it parses");
        assert_eq!(format!("{shipped:?}"), format!("{every:?}"));
    }

    /// Whether a comment's text is a setting (`name = value`) rather than prose.
    fn is_setting(text: &str) -> bool {
        text.split_once(" = ").is_some_and(|(name, _)| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
    }
}
