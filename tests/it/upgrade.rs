//! Upgrades from earlier builds' stores: the relay and nodes of this build started on the
//! stores an earlier build left (`tests/fixtures/stores/*.tar.gz`, made by `make.sh` there,
//! which says what each holds), with nothing lost and everything still working: the message
//! queued at the relay is delivered, the delivery records and acknowledgements read as before
//! (with the signed times learnt from the kept receipts), new traffic flows both ways, and
//! every journal verifies afterwards. The other upgrade tests (`relay::store`,
//! `node::store`) rebuild an older schema with SQL; these run on files an older build wrote.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use hotline_e2e::*;
use serde_json::Value;

/// Every fixture, by file name.
fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/stores");
    let mut all: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .collect();
    all.sort();
    all
}

/// `ids.env`'s `KEY=VALUE` lines.
fn ids(dir: &Path) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(dir.join("ids.env"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Runs a `hotline` command that must succeed in `dir`; its standard output.
async fn ok(dir: &Path, args: &[&str]) -> String {
    let out = hotline_cli(dir, args).await.unwrap();
    assert!(out.status.success(), "hotline {args:?}: {out:?}");
    out.stdout
}

/// The schema version a store records.
fn user_version(db: &Path) -> i64 {
    hotline_store::open(db, false)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

/// Waits until `hotline ARGS --json` through `node` gives a value `ok` accepts; an error
/// after EVENT_TIMEOUT with the last value. A read every 50 ms: what is waited for (a
/// receipt back at the sender) is a stored fact, which no log line of the node carries.
async fn wait_json(
    node: &NodeProc,
    args: &[&str],
    ok: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let v = node.cli_json(args).await?;
        if ok(&v) {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("{args:?}: still {v}");
        }
    }
}

/// A recipient's row of a sent message's record.
fn row<'a>(sent: &'a Value, recipient: &str) -> &'a Value {
    sent["recipients"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["recipient"] == recipient))
        .unwrap_or_else(|| panic!("no row for {recipient} in {sent}"))
}

/// Whether a received message with this id is in an inbox listing.
fn listed<'a>(inbox: &'a Value, id: &str) -> Option<&'a Value> {
    inbox.as_array()?.iter().find(|m| m["id"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_build_takes_over_an_earlier_builds_stores() {
    let all = fixtures();
    assert!(!all.is_empty(), "no fixtures in tests/fixtures/stores");
    for fixture in all {
        takes_over(&fixture)
            .await
            .with_context(|| format!("{}", fixture.display()))
            .unwrap();
    }
}

async fn takes_over(fixture: &Path) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let st = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(fixture)
        .arg("-C")
        .arg(dir)
        .status()?;
    anyhow::ensure!(st.success(), "tar: {st}");
    let ids = ids(dir);
    let [m1, m2, m3, m4] = ["M1", "M2", "M3", "M4"].map(|k| ids[k].clone());

    // The stores are at the schemas the name says (`relayR-nodeN`): a fixture meant for a
    // schema is not one this build has already taken over, or one from another build.
    let name = fixture
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".tar.gz"))
        .context("fixture name")?;
    let (relay_v, node_v) = name
        .strip_prefix("relay")
        .and_then(|n| n.split_once("-node"))
        .and_then(|(r, n)| Some((r.parse::<i64>().ok()?, n.parse::<i64>().ok()?)))
        .with_context(|| format!("{name}: not relayR-nodeN"))?;
    anyhow::ensure!(
        user_version(&dir.join("relay-data/relay.db")) == relay_v,
        "{name}: relay store at schema {}",
        user_version(&dir.join("relay-data/relay.db"))
    );
    for id in ["KAZ", "KGZ", "TJK"] {
        let v = user_version(&dir.join(format!("node-{id}/node.db")));
        anyhow::ensure!(v == node_v, "{name}: {id}'s store at schema {v}");
    }

    // This build's configurations around the earlier build's keys, roster and certificate.
    let fp = ok(
        dir,
        &[
            "relay",
            "fingerprint",
            "--cert",
            "relay.crt",
            "--key",
            "relay.key",
        ],
    )
    .await;
    let fp = fp.trim();
    let rk = std::fs::read_to_string(dir.join("keys/ROSTER.pub"))?;
    let rk = rk.trim();
    std::fs::write(
        dir.join("relay.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\ncert = \"relay.crt\"\nkey = \"relay.key\"\n\
             roster = \"roster.signed\"\nroster_key = \"{rk}\"\ndata_dir = \"relay-data\"\n\
             metrics_listen = \"\"\n"
        ),
    )?;
    ok(dir, &["config", "check", "relay.toml"]).await;
    let mut relay = Proc::spawn(&["relay", "--config", "relay.toml"], dir, "relay.log")?;
    let addr = addr_field(&relay.wait_log("relay listening").await?)?;
    for id in ["KAZ", "KGZ", "TJK"] {
        std::fs::write(
            dir.join(format!("{id}.toml")),
            format!(
                "participant = \"{id}\"\nkey = \"keys/{id}.key\"\nroster = \"roster.signed\"\n\
                 roster_key = \"{rk}\"\ndata_dir = \"node-{id}\"\n\
                 [[relays]]\naddress = \"{addr}\"\nfingerprint = \"{fp}\"\n\
                 [api]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{id}.token\"\n"
            ),
        )?;
        ok(dir, &["config", "check", &format!("{id}.toml")]).await;
    }
    let kaz = NodeProc::start(dir, "KAZ").await?;
    let kgz = NodeProc::start(dir, "KGZ").await?;
    let tjk = NodeProc::start(dir, "TJK").await?;

    // The message queued at the relay while TJK was away reaches TJK, and its receipt KAZ.
    let inbox = wait_json(&tjk, &["inbox"], |v| listed(v, &m2).is_some()).await?;
    let got = listed(&inbox, &m2).unwrap();
    assert_eq!(got["subject"], "Follow-up", "{got}");
    assert_eq!(got["acknowledged"], false, "{got}");
    let acked_before = listed(&inbox, &m1).context("TJK's inbox kept M1")?;
    assert_eq!(acked_before["acknowledged"], true, "{acked_before}");
    assert_eq!(acked_before["officer"], "Watch officer", "{acked_before}");
    wait_json(&kaz, &["show", &m2], |v| v["delivered"] == 1).await?;

    // KAZ's record of M1 as it was: both delivered and acknowledged, who and what they
    // said, and the times signed in their receipts (learnt from the kept receipts by a
    // store from before those were recorded).
    let sent = kaz.cli_json(&["show", &m1]).await?;
    assert_eq!(
        (sent["total"].clone(), sent["acknowledged"].clone()),
        (2.into(), 2.into()),
        "{sent}"
    );
    let kgz_row = row(&sent, "KGZ");
    assert_eq!(kgz_row["officer"], "Duty officer", "{sent}");
    assert_eq!(kgz_row["note"], "received", "{sent}");
    for r in ["KGZ", "TJK"] {
        let r = row(&sent, r);
        for f in ["delivered_signed_at_ms", "acked_signed_at_ms"] {
            assert!(r[f].as_u64().is_some(), "{f} in {r}");
        }
        assert!(
            r["acked_signed_at_ms"].as_u64() <= r["acked_at_ms"].as_u64(),
            "{r}"
        );
    }
    // KGZ's reply is still an answer to M1 (from a build that had replies: M4 is empty
    // otherwise).
    if !m4.is_empty() {
        let inbox = kaz.cli_json(&["inbox"]).await?;
        assert!(listed(&inbox, &m4).is_some(), "KAZ kept M4");
        assert!(
            row(&sent, "KGZ")["answered_at_ms"].as_u64().is_some(),
            "{sent}"
        );
    }

    // M3, delivered and not acknowledged before: KGZ acknowledges it now, and KAZ hears.
    let m3_before = kaz.cli_json(&["show", &m3]).await?;
    assert_eq!(
        (
            m3_before["delivered"].clone(),
            m3_before["acknowledged"].clone()
        ),
        (1.into(), 0.into()),
        "{m3_before}"
    );
    kgz.cli(&["ack", &m3, "--officer", "Night officer"]).await?;
    wait_json(&kaz, &["show", &m3], |v| v["acknowledged"] == 1).await?;

    // New traffic the other way, acknowledged.
    let fresh = tjk
        .send("KAZ", "After the upgrade", &["--body", "Posts on alert."])
        .await?;
    wait_json(&kaz, &["inbox"], |v| listed(v, &fresh).is_some()).await?;
    let acked = kaz
        .cli(&["ack", &fresh, "--officer", "Duty officer"])
        .await?;
    assert!(acked.status.success(), "{acked:?}");
    wait_json(&tjk, &["show", &fresh], |v| v["acknowledged"] == 1).await?;

    // Stopped cleanly, every store at this build's schema with a journal that verifies.
    for (p, what) in [(kaz.proc, "KAZ"), (kgz.proc, "KGZ"), (tjk.proc, "TJK")] {
        p.signal("TERM")?;
        let (st, p) = p.wait_exit(EVENT_TIMEOUT).await?;
        anyhow::ensure!(st.success(), "{what}: {st}: {}", p.log());
    }
    relay.signal("TERM")?;
    let (st, relay) = relay.wait_exit(EVENT_TIMEOUT).await?;
    anyhow::ensure!(st.success(), "relay: {st}: {}", relay.log());
    for data in ["relay-data", "node-KAZ", "node-KGZ", "node-TJK"] {
        ok(dir, &["audit", "verify", "--data", data]).await;
    }
    assert_eq!(
        user_version(&dir.join("relay-data/relay.db")),
        hotline_relay::store::SCHEMA_VERSION
    );
    for id in ["KAZ", "KGZ", "TJK"] {
        let db = dir.join(format!("node-{id}/node.db"));
        assert_eq!(
            user_version(&db),
            hotline_node::store::SCHEMA_VERSION,
            "{id}"
        );
    }
    Ok(())
}
