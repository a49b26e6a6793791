//! Upgrades from earlier builds' stores: the relay and nodes of this build started on the
//! stores an earlier build left (`tests/fixtures/stores/*.tar.gz`, made by `make.sh` there,
//! which says what each holds), with nothing lost and everything still working: the message
//! queued at the relay is delivered, the delivery records and acknowledgements read as before
//! (with the signed times learnt from the kept receipts), new traffic flows both ways, and
//! every journal verifies afterwards. Nothing a node's store held is lost or misread: what
//! each store held before the start (read with SQL: every accepted message and its
//! recipients, every escalated recipient, every quarantined delivery, every received
//! message) is what the nodes' API shows after it, and no escalation is announced again.
//! The other upgrade tests (`relay::store`, `node::store`) rebuild an older schema with SQL;
//! these run on files an older build wrote.

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

/// What a node's store held before this build started on it, read with SQL from the file
/// the earlier build left, so that what this build's API shows afterwards is checked against
/// the store rather than against itself. Ids and digests in lowercase hex, as the API shows
/// them. The columns read are in every node schema (0 on).
struct Held {
    /// Every sent message a relay had accepted, by recipient: (message id, recipient, when
    /// its delivered receipt came, when its acknowledgement came).
    accepted: Vec<Accepted>,
    /// (message id, recipient, `overdue_at_ms`) of every recipient the node escalated.
    overdue: Vec<(String, String, i64)>,
    /// The digests of the deliveries in quarantine.
    quarantined: Vec<String>,
    /// The ids of the received messages.
    inbox: Vec<String>,
    /// How many forwarded receipts the node holds until a roster verifies them; `None`
    /// for a store without `receipts_held` (node schema 2 and before).
    receipts_held: Option<i64>,
}

/// (message id, recipient, `delivered_at_ms`, `acked_at_ms`): a row of a node's matrix.
type Accepted = (String, String, Option<i64>, Option<i64>);

fn held(db: &Path) -> anyhow::Result<Held> {
    let conn = hotline_store::open(db, false)?;
    let mut pairs = conn.prepare(
        "SELECT lower(hex(s.id)), m.recipient, m.delivered_at_ms, m.acked_at_ms \
         FROM sent s JOIN matrix m ON m.id = s.id \
         WHERE s.accepted_at_ms IS NOT NULL ORDER BY s.seq, m.recipient",
    )?;
    let accepted = pairs
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let mut marks = conn.prepare(
        "SELECT lower(hex(id)), recipient, overdue_at_ms FROM matrix \
         WHERE overdue_at_ms IS NOT NULL ORDER BY id, recipient",
    )?;
    let overdue = marks
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let column = |sql: &str| -> anyhow::Result<Vec<String>> {
        let mut q = conn.prepare(sql)?;
        let all = q.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(all)
    };
    let receipts_held = receipts_held(&conn)?;
    Ok(Held {
        receipts_held,
        accepted,
        overdue,
        quarantined: column("SELECT lower(hex(digest)) FROM quarantine ORDER BY digest")?,
        inbox: column("SELECT lower(hex(id)) FROM inbox ORDER BY id")?,
    })
}

/// How many receipts a node store holds in `receipts_held`; `None` without the table.
fn receipts_held(conn: &rusqlite::Connection) -> anyhow::Result<Option<i64>> {
    let table: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'receipts_held')",
        [],
        |r| r.get(0),
    )?;
    if !table {
        return Ok(None);
    }
    Ok(Some(conn.query_row(
        "SELECT COUNT(*) FROM receipts_held",
        [],
        |r| r.get(0),
    )?))
}

/// The values of field `key` in a JSON list, as strings.
fn field_list(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v[key].as_str().map(str::to_owned))
        .collect()
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
    // M5 (escalated at KAZ), M6 (quarantined at TJK) and M7 (TJK's, whose receipts signed
    // with KGZ's replaced key TJK holds): absent from fixtures made before make.sh staged
    // them.
    let [m5, m6, m7] = ["M5", "M6", "M7"].map(|k| ids.get(k).cloned().unwrap_or_default());

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
    let before: std::collections::BTreeMap<&str, Held> = ["KAZ", "KGZ", "TJK"]
        .into_iter()
        .map(|id| Ok((id, held(&dir.join(format!("node-{id}/node.db")))?)))
        .collect::<anyhow::Result<_>>()?;
    // What make.sh staged is in the stores, so that the checks below cannot pass on
    // nothing.
    if !m5.is_empty() {
        anyhow::ensure!(
            before["KAZ"]
                .overdue
                .iter()
                .any(|(id, r, _)| *id == m5 && r == "KGZ"),
            "{name}: KAZ's store has no escalation of M5"
        );
    }
    // A node before schema 3 has no `receipts_held`: it dropped M7's receipts.
    if !m7.is_empty() && node_v >= 3 {
        anyhow::ensure!(
            before["TJK"].receipts_held == Some(2),
            "{name}: TJK holds {:?} receipts, not M7's two",
            before["TJK"].receipts_held
        );
    }
    if !m6.is_empty() {
        anyhow::ensure!(
            before["TJK"].quarantined.len() == 1,
            "{name}: TJK's store holds {:?} in quarantine",
            before["TJK"].quarantined
        );
    }

    // A drill reads the store of a node down at the end read-only, as an earlier build
    // left it (`HOTLINE_BIN` that build's binary): it cannot bring it to this build's
    // schema, nor add an index that came without a raise of it. Every sent message reads,
    // with its answers counted (`inbox_answering`, named where the store has it: "no such
    // index" failed every one of them).
    if node_v == hotline_node::store::SCHEMA_VERSION {
        for id in ["KAZ", "KGZ", "TJK"] {
            let rest = hotline_exercise::report::read_at_rest(&dir.join(format!("node-{id}")))
                .map_err(|e| anyhow::anyhow!("{name}: {id}'s store read at rest: {e}"))?;
            let held = &before[id];
            anyhow::ensure!(
                rest.inbox.len() == held.inbox.len(),
                "{name}: {id}'s inbox read at rest holds {}, not {}",
                rest.inbox.len(),
                held.inbox.len()
            );
            for (m, _, _, _) in &held.accepted {
                anyhow::ensure!(
                    rest.sent.contains_key(m),
                    "{name}: {id}'s sent message {m} not read at rest"
                );
            }
            // Each sent message's answers, as the earlier build's store holds them.
            let conn = hotline_store::open_read_only(&dir.join(format!("node-{id}/node.db")))?;
            for (m, view) in &rest.sent {
                let answers: u64 = conn.query_row(
                    "SELECT COUNT(*) FROM answers WHERE lower(hex(ref)) = ?1",
                    [m],
                    |r| r.get(0),
                )?;
                anyhow::ensure!(
                    view["answers_total"] == answers,
                    "{name}: {id}'s {m} read at rest: {view}"
                );
            }
        }
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

    // Nothing lost: every message a sender's relay had accepted (M2 was the one still
    // queued) is now in each of its recipients' inboxes, and its sender's matrix reads as the
    // store had it (what was delivered or acknowledged then still is, at the same times);
    // every received message is still in its inbox; the escalations read as marked; the
    // quarantine holds what it held (no roster since has let any out).
    let nodes = [("KAZ", &kaz), ("KGZ", &kgz), ("TJK", &tjk)];
    let mut inboxes = std::collections::BTreeMap::new();
    for (id, node) in nodes {
        inboxes.insert(id, field_list(&node.cli_json(&["inbox"]).await?, "id"));
    }
    for (id, node) in nodes {
        let held = &before[id];
        for m in &held.inbox {
            anyhow::ensure!(inboxes[id].contains(m), "{id} lost received {m}");
        }
        for (m, r, delivered, acked) in &held.accepted {
            let inbox = inboxes
                .get(r.as_str())
                .with_context(|| format!("{id}'s {m} to {r}, not a node of the fixture"))?;
            anyhow::ensure!(inbox.contains(m), "{id}'s {m} is not in {r}'s inbox");
            let sent = node.cli_json(&["show", m]).await?;
            let row = row(&sent, r);
            for (f, was) in [("delivered_at_ms", delivered), ("acked_at_ms", acked)] {
                if let Some(was) = was {
                    assert_eq!(row[f], *was, "{f} of {r} in {sent}");
                }
            }
        }
        for (m, r, at) in &held.overdue {
            let sent = node.cli_json(&["show", m]).await?;
            assert_eq!(row(&sent, r)["overdue_at_ms"], *at, "{sent}");
            assert!(row(&sent, r)["acked_at_ms"].is_null(), "{sent}");
        }
        let quarantine = node.cli_json(&["inbox", "--quarantined"]).await?;
        let mut digests = field_list(&quarantine, "digest");
        digests.sort();
        assert_eq!(digests, held.quarantined, "{id}: {quarantine}");
    }
    if !m5.is_empty() {
        let sent = kaz.cli_json(&["show", &m5]).await?;
        assert_eq!(
            (&sent["state"], &sent["overdue"], &sent["delivered"]),
            (&"overdue".into(), &1.into(), &1.into()),
            "{sent}"
        );
    }
    if !m6.is_empty() {
        let quarantine = tjk.cli_json(&["inbox", "--quarantined"]).await?;
        let q = &quarantine[0];
        assert_eq!(
            (&q["unverified_claim"]["id"], &q["unverified_claim"]["from"]),
            (&m6.as_str().into(), &"UZB".into()),
            "{quarantine}"
        );
        assert!(
            q["reason"].as_str().is_some_and(|r| r.contains("revoked")),
            "{quarantine}"
        );
        assert!(!inboxes["TJK"].contains(&m6), "{:?}", inboxes["TJK"]);
    }
    // KGZ holds M7 (checked above); the receipts TJK holds for it, signed with the key
    // roster 2 replaced, are not believed: M7 reads as delivered to nobody.
    if !m7.is_empty() {
        let sent = tjk.cli_json(&["show", &m7]).await?;
        assert_eq!(
            (&sent["delivered"], &sent["acknowledged"]),
            (&0.into(), &0.into()),
            "{sent}"
        );
    }

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

    // An escalation made before the upgrade is not announced again (checked once all the
    // traffic above has passed, many of the node's 250 ms deadline ticks).
    let log = kaz.proc.log();
    anyhow::ensure!(
        !log.contains("respond-by passed"),
        "KAZ escalated again: {log}"
    );

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
        // The held receipts are still held (none before the table existed), neither
        // dropped nor taken as verified.
        let now = receipts_held(&hotline_store::open(&db, false)?)?;
        assert_eq!(now, Some(before[id].receipts_held.unwrap_or(0)), "{id}");
    }
    Ok(())
}
