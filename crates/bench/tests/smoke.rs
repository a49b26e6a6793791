//! A fast run of the fan-out workload against an in-process relay: every message is
//! accepted, delivered durably to all 37 recipients, and receipted back to the sender.

use std::time::Duration;

use hotline_bench::client::Durability;
use hotline_bench::traffic::CompleteOn;
use hotline_bench::Common;

/// The default recipients: one group-committed log for all 37.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout37_delivers_and_receipts_everything() -> anyhow::Result<()> {
    fanout37_at_100(Duration::ZERO, Durability::Group).await
}

/// With receipt pacing, deliveries wait for their receipt on a timer: the last ones too.
/// (Recipients with a file each, synced on their own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_receipts_still_cover_everything() -> anyhow::Result<()> {
    fanout37_at_100(Duration::from_millis(30), Durability::Fsync).await
}

fn common(
    dir: &std::path::Path,
    receipt_pace: Duration,
    window_until: CompleteOn,
    durability: Durability,
) -> Common {
    Common {
        hotline: None,
        dir: dir.to_owned(),
        durability,
        duration: Duration::from_millis(500),
        body_bytes: 1024,
        drain_timeout: Duration::from_secs(30),
        receipt_pace,
        window_until,
        deliveries_csv: None,
    }
}

/// At maximum rate with the window closed at "durable at every recipient" (as the peers
/// are counted), every message is finished by that rule, and the receipts still all come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_until_durable_finishes_every_message() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let c = common(
        dir.path(),
        Duration::ZERO,
        CompleteOn::AllDurable,
        Durability::Group,
    );
    let r = hotline_bench::fanout37(&c, None, 8, 40).await?;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.window_until, CompleteOn::AllDurable);
    assert!(r.sent > 0, "{}", r.line());
    assert_eq!(r.accepted, r.sent, "{}", r.line());
    assert_eq!(r.deliveries, r.sent * 37, "{}", r.line());
    assert_eq!(r.finished, r.sent, "{}", r.line());
    assert!(r.line().contains("until durable at all"), "{}", r.line());
    Ok(())
}

async fn fanout37_at_100(receipt_pace: Duration, durability: Durability) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let c = common(
        dir.path(),
        receipt_pace,
        CompleteOn::AllReceipts,
        durability,
    );
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

/// A smaller fan-out (`--recipients 3`): only those three are addressed and connected, and
/// each message is delivered and receipted three times, not 37. Every delivery's times are
/// written (`--deliveries`), and the report's split of the end-to-end time agrees with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smaller_fan_out_reaches_only_its_recipients() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = dir.path().join("deliveries.csv");
    let c = Common {
        deliveries_csv: Some(csv.clone()),
        ..common(
            dir.path(),
            Duration::ZERO,
            CompleteOn::AllReceipts,
            Durability::Group,
        )
    };
    let load = hotline_bench::Load {
        rate: Some(100.0),
        window: 64,
        max_messages: 0,
    };
    let r = hotline_bench::fanout(&c, Some(3), load).await?;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(
        (r.workload.as_str(), r.recipients),
        ("fanout3", 3),
        "{}",
        r.line()
    );
    assert_eq!(r.sent, 50, "{}", r.line());
    assert_eq!(r.accepted, r.sent, "{}", r.line());
    assert_eq!(r.deliveries, r.sent * 3, "{}", r.line());
    assert_eq!(r.finished, r.sent, "all 3 receipts back: {}", r.line());
    assert_eq!(r.all_receipts.n as u64, r.sent);

    let split = &r.e2e_split;
    assert_eq!(
        (split.read.n, split.first_read.n, split.then_durable.n),
        (150, 50, 150),
        "{}",
        r.line()
    );
    assert!(split.first_read.p50_us <= split.read.p50_us, "{}", r.line());
    assert!(split.read.p99_us <= r.e2e.p99_us, "{}", r.line());
    assert!(split.then_durable.max_us <= r.e2e.max_us, "{}", r.line());

    let text = std::fs::read_to_string(&csv)?;
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("message,recipient,sent_us,read_us,durable_us")
    );
    let mut per_message = std::collections::BTreeMap::<u64, Vec<String>>::new();
    let mut durable_us = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 5, "{line}");
        let n = |i: usize| f[i].parse::<u64>().expect(line);
        assert!(n(3) <= n(4), "read after durable: {line}");
        per_message.entry(n(0)).or_default().push(f[1].to_owned());
        durable_us.push(n(4));
    }
    assert_eq!(per_message.len(), 50);
    for (m, who) in &per_message {
        let mut who = who.clone();
        who.sort();
        who.dedup();
        assert_eq!(who.len(), 3, "message {m} reached {who:?}");
    }
    assert_eq!(
        hotline_bench::stats::Percentiles::of(&mut durable_us),
        r.e2e,
        "the file's durable times are the report's end-to-end times"
    );
    Ok(())
}

/// The skeleton through the binary, its forwarder a child process (as `hotline-bench
/// skeleton` runs it), over UDP and over QUIC: every delivery arrives and is durable, the
/// forwarder's CPU and sleeps are measured, and the run ends (the forwarder exits on `BYE`;
/// the run fails if it does not).
#[test]
fn the_skeleton_runs_its_forwarder_as_a_process() -> anyhow::Result<()> {
    for (transport, shape) in [("udp", "bare"), ("quic", "thread")] {
        let dir = tempfile::tempdir()?;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hotline-bench"))
            .args(["--json", "--duration-s", "0.2", "--dir"])
            .arg(dir.path())
            .args(["skeleton", "--rate", "100", "--recipients", "4"])
            .args(["--transport", transport, "--shape", shape])
            .output()?;
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(
            (v["transport"].as_str(), v["shape"].as_str()),
            (Some(transport), Some(shape)),
            "{v}"
        );
        assert_eq!(v["sent"], 20, "{v}");
        assert_eq!(v["delivered"], 80, "{v}");
        assert_eq!(v["lost"], 0, "{v}");
        assert_eq!(v["e2e"]["n"], 80, "{v}");
        // Present only for a forwarder process (CPU is counted in clock ticks, so a run this
        // short may count none).
        assert!(v["forwarder_us_per_msg"].is_number(), "{v}");
        assert!(v["forwarder_sleeps_per_msg"].is_number(), "{v}");
        assert_eq!(
            std::fs::read_dir(dir.path())?.count(),
            0,
            "the log is removed"
        );
    }
    Ok(())
}
