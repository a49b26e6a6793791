//! A fast run of the fan-out workload against an in-process relay: every message is
//! accepted, delivered durably to all 37 recipients, and receipted back to the sender.

use std::time::Duration;

use hotline_bench::client::Durability;
use hotline_bench::Common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout37_delivers_and_receipts_everything() -> anyhow::Result<()> {
    fanout37_at_100(Duration::ZERO).await
}

/// With receipt pacing, deliveries wait for their receipt on a timer: the last ones too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_receipts_still_cover_everything() -> anyhow::Result<()> {
    fanout37_at_100(Duration::from_millis(30)).await
}

async fn fanout37_at_100(receipt_pace: Duration) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let c = Common {
        hotline: None,
        dir: dir.path().to_owned(),
        durability: Durability::Fsync,
        duration: Duration::from_millis(500),
        body_bytes: 1024,
        drain_timeout: Duration::from_secs(30),
        receipt_pace,
    };
    let r = hotline_bench::fanout37(&c, Some(100.0), 64, 0).await?;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.sent, 50, "{}", r.line());
    assert_eq!(r.accepted, r.sent, "{}", r.line());
    assert_eq!(r.deliveries, r.sent * 37, "{}", r.line());
    assert_eq!(
        r.finished,
        r.sent,
        "all 37 receipts back for every message: {}",
        r.line()
    );
    assert_eq!(r.e2e.n as u64, r.deliveries);
    assert_eq!(r.all_receipts.n as u64, r.sent);
    assert!(r.receipts > 0 && r.receipts_per_s > 0.0, "{}", r.line());
    Ok(())
}
