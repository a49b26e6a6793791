//! The node daemon end to end: real `hotline node` processes, a real relay over QUIC on
//! loopback, and the operator CLI (`hotline send`, `inbox`, `ack`, `status`…) as a duty
//! officer uses it. Waiting is on log lines and `/v1/events`, never on sleeps.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hotline_e2e::*;
use hotline_proto::{PublicKey, Role, Signed, SigningKey};
use serde_json::{json, Value};

fn net() -> Net {
    Net::sec_kaz_kgz()
}

/// The message id in a `hotline send --json` answer.
fn id_of(sent: &Value) -> String {
    sent["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {sent}"))
        .to_owned()
}

/// The `msg=` field value a node logs for message `id`.
fn msg(id: &str) -> String {
    format!("msg={id}")
}

/// The `msg=` field of a log line.
fn msg_field(line: &str) -> String {
    line.split("msg=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default()
        .to_owned()
}

/// `hotline send --json` to KGZ from a node no relay will take a message from: the answer,
/// checked to say the message is queued, with no relay connected, and `blocked`.
async fn send_blocked(node: &NodeProc, subject: &str) -> Value {
    let sent = node
        .cli_json(&["send", "--to", "KGZ", "--subject", subject])
        .await
        .unwrap();
    assert_eq!(
        (&sent["state"], &sent["relays_connected"], &sent["blocked"]),
        (&json!("queued"), &json!(0), &json!(true)),
        "{sent}"
    );
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_delivered_acknowledged_and_shown_in_the_senders_matrix() {
    let net = net();
    let relay = net.relay().await;
    let (mut kaz, mut kgz) = net.two_nodes(relay.local_addr()).await.unwrap();
    let mut kaz_events = kaz.events().await.unwrap();

    let before = now_ms();
    let sent = kaz
        .cli_json(&[
            "send",
            "--to",
            "KGZ",
            "--subject",
            "Notification of a military exercise",
            "--body",
            "Exercise STEPPE-24 from 06:00Z.",
            "--precedence",
            "PRIORITY",
        ])
        .await
        .unwrap();
    let id = id_of(&sent);
    assert_eq!(sent["recipients"], json!(["KGZ"]), "{sent}");
    assert_eq!(sent["state"], "queued", "{sent}");
    assert_eq!(sent["relays_connected"], 1, "{sent}");

    kgz.proc
        .wait_line(&["message received", &msg(&id), "from=KAZ"])
        .await
        .unwrap();
    let inbox = kgz.cli_json(&["inbox"]).await.unwrap();
    let items = inbox.as_array().unwrap();
    assert_eq!(items.len(), 1, "{inbox}");
    let m = &items[0];
    assert_eq!(m["id"], id.as_str());
    assert_eq!(m["from"], "KAZ");
    assert_eq!(m["subject"], "Notification of a military exercise");
    assert_eq!(m["body"], "Exercise STEPPE-24 from 06:00Z.");
    assert_eq!(m["precedence"], "PRIORITY");
    assert_eq!(m["status"], "actual");
    assert_eq!(m["exercise_or_test"], false);
    assert_eq!(m["acknowledged"], false);
    let received = m["received_at_ms"].as_u64().unwrap();
    assert!(received >= before && received <= now_ms(), "{m}");

    // The delivered receipt reaches the sender before anyone has read the message.
    kaz_events.wait_about("delivered", &id).await.unwrap();
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(st["state"], "delivered", "{st}");
    assert_eq!(
        (st["delivered"].as_u64(), st["acknowledged"].as_u64()),
        (Some(1), Some(0)),
        "{st}"
    );

    let ack = kgz
        .cli_json(&["ack", &id, "--officer", "Duty officer", "--note", "ok"])
        .await
        .unwrap();
    assert_eq!(ack["acknowledged"], true, "{ack}");

    let ev = kaz_events.wait_about("acknowledged", &id).await.unwrap();
    assert_eq!(ev["by"], "KGZ");
    assert_eq!(ev["officer"], "Duty officer");
    assert_eq!(ev["note"], "ok");
    kaz.proc
        .wait_line(&["acknowledged", &msg(&id), "by=KGZ"])
        .await
        .unwrap();

    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(st["direction"], "sent");
    assert_eq!(st["state"], "acknowledged", "{st}");
    assert_eq!(st["total"], 1);
    assert_eq!(st["delivered"], 1);
    assert_eq!(st["acknowledged"], 1);
    let row = &st["recipients"][0];
    assert_eq!(row["recipient"], "KGZ");
    assert_eq!(row["officer"], "Duty officer");
    assert_eq!(row["note"], "ok");
    assert!(
        row["delivered_at_ms"].as_u64().unwrap() <= row["acked_at_ms"].as_u64().unwrap(),
        "{row}"
    );
    let text = kaz.cli(&["status", &id]).await.unwrap();
    assert!(text.status.success(), "{text:?}");
    assert!(
        text.stdout.contains("delivered 1/1  acknowledged 1/1"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("Duty officer"), "{}", text.stdout);
    // The recipient's note, which only the JSON held before.
    assert!(
        text.stdout.contains("notes\nFROM      NOTE\nKGZ       ok"),
        "{}",
        text.stdout
    );

    // The recipient's side shows the acknowledgement; a second one is refused.
    let shown = kgz.cli_json(&["show", &id]).await.unwrap();
    assert_eq!(shown["direction"], "received");
    assert_eq!(shown["acknowledged"], true);
    assert_eq!(shown["officer"], "Duty officer");
    let again = kgz
        .cli(&["ack", &id, "--officer", "Someone else"])
        .await
        .unwrap();
    assert!(!again.status.success(), "{again:?}");
    // By whom and when, the time as people read it (RFC 3339, UTC), not milliseconds.
    let said = again
        .stderr
        .split_once("already acknowledged by Duty officer at ")
        .map(|(_, at)| at.chars().take(20).collect::<String>())
        .unwrap_or_else(|| panic!("{}", again.stderr));
    let shape = "dddd-dd-ddTdd:dd:ddZ";
    assert!(
        said.len() == shape.len()
            && said.chars().zip(shape.chars()).all(|(c, s)| if s == 'd' {
                c.is_ascii_digit()
            } else {
                c == s
            }),
        "{}",
        again.stderr
    );

    relay.shutdown().await;
}

/// An officer's name on an acknowledgement is trimmed of the spaces around it, and one of
/// spaces alone refused in the words a discard refuses it: `hotline ack --officer " Desk "`
/// used to sign and show " Desk " while `hotline discard` trimmed, and a name of spaces was
/// refused by the two in different words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officers_name_is_trimmed_on_an_acknowledgement_as_on_a_discard() {
    let net = net();
    let relay = net.relay().await;
    let (kaz, mut kgz) = net.two_nodes(relay.local_addr()).await.unwrap();
    let mut kaz_events = kaz.events().await.unwrap();
    let id = id_of(
        &kaz.cli_json(&["send", "--to", "KGZ", "--subject", "Routine report"])
            .await
            .unwrap(),
    );
    kgz.proc
        .wait_line(&["message received", &msg(&id)])
        .await
        .unwrap();

    let blank_ack = kgz.cli(&["ack", &id, "--officer", "   "]).await.unwrap();
    let blank_discard = kgz
        .cli(&["discard", "--all", "--officer", "   "])
        .await
        .unwrap();
    assert!(!blank_ack.status.success(), "{blank_ack:?}");
    assert!(!blank_discard.status.success(), "{blank_discard:?}");
    assert!(
        blank_ack.stderr.contains("officer: 1 to 128 bytes"),
        "{}",
        blank_ack.stderr
    );
    assert_eq!(blank_ack.stderr, blank_discard.stderr);
    let shown = kgz.cli_json(&["show", &id]).await.unwrap();
    assert_eq!(shown["acknowledged"], false, "{shown}");

    kgz.cli_json(&["ack", &id, "--officer", "  Duty officer\t "])
        .await
        .unwrap();
    let shown = kgz.cli_json(&["show", &id]).await.unwrap();
    assert_eq!(shown["officer"], "Duty officer", "{shown}");
    // As signed: the sender is told the name trimmed too.
    let ev = kaz_events.wait_about("acknowledged", &id).await.unwrap();
    assert_eq!(ev["officer"], "Duty officer", "{ev}");
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(st["recipients"][0]["officer"], "Duty officer", "{st}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_stopped_receives_what_was_sent_meanwhile() {
    let net = net();
    let relay = net.relay().await;
    let (mut kaz, kgz) = net.two_nodes(relay.local_addr()).await.unwrap();
    let mut kaz_events = kaz.events().await.unwrap();

    // An operator's `hotline watch` is following KGZ's events while it is stopped: the
    // stream must end with the node, not hold its shutdown up.
    let kgz_events = kgz.events().await.unwrap();
    let NodeProc {
        proc: mut kgz_proc, ..
    } = kgz;
    kgz_proc.signal("TERM").unwrap();
    kgz_proc.wait_log("node stopped").await.unwrap();
    let log = kgz_proc.log();
    let (status, _) = kgz_proc.wait_exit(EVENT_TIMEOUT).await.unwrap();
    assert!(status.success(), "graceful stop: {status}");
    assert!(!log.contains("did not stop in time"), "{log}");
    drop(kgz_events);

    let sent = kaz
        .cli_json(&["send", "--to", "KGZ", "--subject", "While you were away"])
        .await
        .unwrap();
    let id = id_of(&sent);
    kaz.proc.wait_line(&["accepted", &msg(&id)]).await.unwrap();
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(
        st["state"], "accepted",
        "held by the relay, not yet delivered: {st}"
    );
    assert_eq!(st["delivered"], 0, "{st}");

    let mut kgz = net.start_node("KGZ").await.unwrap();
    kgz.proc
        .wait_line(&["message received", &msg(&id)])
        .await
        .unwrap();
    let inbox = kgz.cli_json(&["inbox"]).await.unwrap();
    let ids: Vec<&str> = inbox
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, vec![id.as_str()], "{inbox}");

    kaz_events.wait_about("delivered", &id).await.unwrap();
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(st["state"], "delivered", "{st}");
    relay.shutdown().await;
}

/// Receipt pacing as a sender sees it: with a pace of an hour, the first delivery is
/// receipted at once (no receipt has left yet), the next waits for the pace, and what
/// waits is receipted when the node stops, not lost with the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_delivered_receipt_leaves_when_the_node_stops() {
    let net = net();
    let relay = net.relay().await;
    net.node_config("KAZ", relay.local_addr());
    net.node_config_with(
        "KGZ",
        &NodeSetup {
            receipt_pace_ms: Some(3_600_000),
            ..NodeSetup::relay(relay.local_addr())
        },
    );
    let mut kaz = net.start_node("KAZ").await.unwrap();
    let mut kgz = net.start_node("KGZ").await.unwrap();
    kaz.connected().await.unwrap();
    kgz.connected().await.unwrap();
    let mut kaz_events = kaz.events().await.unwrap();
    let send = |subject: &'static str| {
        let kaz = &kaz;
        async move {
            id_of(
                &kaz.cli_json(&["send", "--to", "KGZ", "--subject", subject])
                    .await
                    .unwrap(),
            )
        }
    };
    let delivered =
        |id: String| move |e: &Value| e["type"] == "delivered" && e["id"] == id.as_str();

    let first = send("First").await;
    kaz_events
        .wait_for("the first delivery, receipted at once", delivered(first))
        .await
        .unwrap();

    let second = send("Second").await;
    kgz.proc
        .wait_line(&["message received", &msg(&second)])
        .await
        .unwrap();
    let st = kaz.cli_json(&["status", &second]).await.unwrap();
    assert_eq!(st["delivered"], 0, "its receipt waits for the pace: {st}");

    let NodeProc { proc: kgz_proc, .. } = kgz;
    kgz_proc.signal("TERM").unwrap();
    let (status, _) = kgz_proc.wait_exit(EVENT_TIMEOUT).await.unwrap();
    assert!(status.success(), "graceful stop: {status}");
    kaz_events
        .wait_for(
            "the second delivery, receipted as the recipient stopped",
            delivered(second.clone()),
        )
        .await
        .unwrap();
    let st = kaz.cli_json(&["status", &second]).await.unwrap();
    assert_eq!(st["state"], "delivered", "{st}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_survives_kill_9_and_each_message_arrives_exactly_once() {
    let net = net();
    // The relay is not running yet; the nodes' configurations already name its address.
    let relay_addr = free_udp_addr();
    net.set_relay_listen(relay_addr);
    net.node_config("KAZ", relay_addr);
    net.node_config("KGZ", relay_addr);

    let mut kaz = net.start_node("KAZ").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let sent = kaz
            .cli_json(&["send", "--to", "KGZ", "--subject", &format!("queued {i}")])
            .await
            .unwrap();
        assert_eq!(sent["state"], "queued", "{sent}");
        assert_eq!(sent["relays_connected"], 0, "{sent}");
        assert!(
            sent["note"]
                .as_str()
                .unwrap()
                .contains("no relay reachable"),
            "{sent}"
        );
        ids.push(id_of(&sent));
    }
    let st = kaz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(st["outbox"], 5, "{st}");
    let link = &st["relays"][0];
    assert_eq!(
        (&link["connected"], &link["rtt_ms"], &link["packets_sent"]),
        (&json!(false), &json!(null), &json!(null)),
        "{st}"
    );
    kaz.proc.kill9();
    drop(kaz);

    let relay = net.relay().await;
    assert_eq!(relay.local_addr(), relay_addr);
    let mut kgz = net.start_node("KGZ").await.unwrap();
    let started_ms = now_ms();
    let mut kaz = net.start_node("KAZ").await.unwrap();
    let starting = kaz.proc.wait_log("node starting").await.unwrap();
    assert!(
        starting.contains("outbox=5"),
        "the outbox survived kill -9: {starting}"
    );

    let accepted = kaz
        .proc
        .wait_lines_from(0, &["accepted", "msg="], 5)
        .await
        .unwrap();
    let accepted: BTreeSet<String> = accepted.iter().map(|l| msg_field(l)).collect();
    let sent: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(accepted, sent, "each queued message accepted once");

    let received = kgz
        .proc
        .wait_lines_from(0, &["message received"], 5)
        .await
        .unwrap();
    let received: BTreeSet<String> = received.iter().map(|l| msg_field(l)).collect();
    assert_eq!(received, sent);
    let inbox = kgz.cli_json(&["inbox"]).await.unwrap();
    let got: Vec<String> = inbox
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got.len(), 5, "{inbox}");
    assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), sent);

    // A fresh message arrives after anything the relay could still redeliver (it delivers
    // in per-sender order), so if it is the only addition, nothing was duplicated.
    let fresh = id_of(
        &kaz.cli_json(&["send", "--to", "KGZ", "--subject", "fresh"])
            .await
            .unwrap(),
    );
    kgz.proc
        .wait_line(&["message received", &msg(&fresh)])
        .await
        .unwrap();
    // KGZ may have it before KAZ has the relay's answer (a batch is sent while its commit
    // syncs); the outbox is checked empty below.
    kaz.proc
        .wait_line(&["accepted", &msg(&fresh)])
        .await
        .unwrap();
    let inbox = kgz.cli_json(&["inbox"]).await.unwrap();
    let got: BTreeSet<&str> = inbox
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(inbox.as_array().unwrap().len(), 6, "{inbox}");
    assert_eq!(got.len(), 6, "distinct ids: {inbox}");
    assert_eq!(kgz.proc.count_lines(&["message received"]), 6);
    let st = kaz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(st["outbox"], 0, "{st}");
    // The link's figures, from its QUIC connection: made after the node started, a round
    // trip measured, packets sent (six messages and their receipts at least).
    let link = &st["relays"][0];
    assert_eq!(link["connected"], true, "{st}");
    assert!(
        link["connected_since_ms"].as_u64().unwrap() >= started_ms,
        "{st}"
    );
    assert!(link["rtt_ms"].as_f64().unwrap() > 0.0, "{st}");
    assert!(link["packets_sent"].as_u64().unwrap() >= 6, "{st}");
    assert!(link["packets_lost"].as_u64().is_some(), "{st}");
    let text = kaz.cli(&["node-status"]).await.unwrap().stdout;
    assert!(
        text.contains(&format!("relay 0 {relay_addr}  up since")) && text.contains(" ms  lost "),
        "{text}"
    );
    relay.shutdown().await;
}

/// KAZ, whose `on_overdue` hook writes what it is given to the returned file, and KGZ, both
/// connected to the relay at `relay`.
async fn kaz_with_overdue_hook(net: &Net, relay: SocketAddr) -> (NodeProc, NodeProc, PathBuf) {
    let out = net.path().join("overdue.json");
    let hook = format!(
        "on_overdue = [\"sh\", \"-c\", \"cat > '{}'\"]",
        out.display()
    );
    net.node_config_with(
        "KAZ",
        &NodeSetup {
            hooks: Some(hook),
            ..NodeSetup::relay(relay)
        },
    );
    net.node_config("KGZ", relay);
    let mut kaz = net.start_node("KAZ").await.unwrap();
    let mut kgz = net.start_node("KGZ").await.unwrap();
    kaz.connected().await.unwrap();
    kgz.connected().await.unwrap();
    (kaz, kgz, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_message_becomes_overdue_and_runs_the_hook() {
    let net = net();
    let relay = net.relay().await;
    let (mut kaz, mut kgz, out) = kaz_with_overdue_hook(&net, relay.local_addr()).await;

    let sent = kaz
        .cli_json(&[
            "send",
            "--to",
            "KGZ",
            "--kind",
            "consultation_request",
            "--subject",
            "Request for clarification",
            "--respond-within",
            "1",
        ])
        .await
        .unwrap();
    let id = id_of(&sent);
    kgz.proc
        .wait_line(&["message received", &msg(&id)])
        .await
        .unwrap();
    let line = kaz.proc.wait_line(&["overdue", &msg(&id)]).await.unwrap();
    assert!(line.contains("recipients=KGZ"), "{line}");
    kaz.proc
        .wait_line(&["hook ran", "on_overdue"])
        .await
        .unwrap();

    let text = std::fs::read_to_string(&out).unwrap();
    let ev: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_eq!(ev["type"], "overdue", "{ev}");
    assert_eq!(ev["id"], id.as_str(), "{ev}");
    assert_eq!(ev["recipients"], json!(["KGZ"]), "{ev}");
    assert_eq!(ev["subject"], "Request for clarification", "{ev}");

    kaz.proc.wait_line(&["accepted", &msg(&id)]).await.unwrap();
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(st["state"], "overdue", "{st}");
    assert_eq!(st["overdue"], 1, "{st}");
    assert_eq!(st["overdue_now"], true, "{st}");
    assert!(st["recipients"][0]["overdue_at_ms"].is_u64(), "{st}");
    assert!(st["recipients"][0]["acked_at_ms"].is_null(), "{st}");
    relay.shutdown().await;
}

/// The escalation of a drill's message says it is a drill: the `overdue` event (what the
/// `on_overdue` hook and `hotline watch` get) carries the message's status, as
/// `message_received` does, and the log line says it too. Without it a paging gateway, or
/// an officer watching, was told "KGZ has not acknowledged <subject>" with nothing to tell
/// an exercise from actual traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_exercise_message_is_escalated_as_an_exercise() {
    let net = net();
    let relay = net.relay().await;
    let (mut kaz, _kgz, out) = kaz_with_overdue_hook(&net, relay.local_addr()).await;
    let mut events = kaz.events().await.unwrap();

    let id = id_of(
        &kaz.cli_json(&[
            "send",
            "--to",
            "KGZ",
            "--status",
            "exercise",
            "--subject",
            "Drill: request for clarification",
            "--respond-within",
            "1",
        ])
        .await
        .unwrap(),
    );
    let ev = events.wait_about("overdue", &id).await.unwrap();
    assert_eq!(ev["status"], "exercise", "{ev}");
    let line = kaz.proc.wait_line(&["overdue", &msg(&id)]).await.unwrap();
    assert!(line.contains("status=Exercise"), "{line}");
    kaz.proc
        .wait_line(&["hook ran", "on_overdue"])
        .await
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let hooked: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_eq!(hooked["status"], "exercise", "{hooked}");
    relay.shutdown().await;
}

/// An escalation whose announcement a crash cut short is announced again at the next start,
/// flagged `recovered`. KAZ is killed (SIGKILL) after it has committed the overdue mark and
/// emitted the event, while its `on_overdue` hook still runs: a hook that lasts as long as
/// the node, so the kill lands before the hook ends, which is when an escalation counts as
/// announced. Started again, KAZ logs it and runs its hook with `recovered: true`; once that
/// hook has ended, a later start announces nothing. Before, the mark was committed with
/// nothing left to say the escalation was still to be announced, and it never was again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_cut_short_by_a_crash_is_announced_again_at_the_next_start() {
    let net = net();
    let relay = net.relay().await;
    let kaz_with_hook = |script: String| {
        let hook = format!("timeout_ms = 600000\non_overdue = ['sh', '-c', '{script}']");
        net.node_config_with(
            "KAZ",
            &NodeSetup {
                hooks: Some(hook),
                ..NodeSetup::relay(relay.local_addr())
            },
        )
    };
    // The first life's hook waits for the node's claim on its data directory, which ends
    // with the node: it runs until the node is killed, and is not left behind.
    let claim = net.path().join("node-KAZ").join(hotline_store::LOCK_FILE);
    kaz_with_hook(format!("exec flock \"{}\" true", claim.display()));
    net.node_config("KGZ", relay.local_addr());
    let mut kaz = net.start_node("KAZ").await.unwrap();
    let mut kgz = net.start_node("KGZ").await.unwrap();
    kaz.connected().await.unwrap();
    kgz.connected().await.unwrap();
    let mut events = kaz.events().await.unwrap();

    let id = kaz
        .send(
            "KGZ",
            "Request for clarification",
            &["--respond-within", "1"],
        )
        .await
        .unwrap();
    let ev = events.wait_about("overdue", &id).await.unwrap();
    assert_ne!(ev["recovered"], true, "{ev}");
    // The mark is committed before the event; the hook cannot have ended.
    kaz.proc.kill9();
    let line = kaz.proc.wait_line(&["overdue", &msg(&id)]).await.unwrap();
    assert!(!line.contains("recovered=true"), "{line}");

    let second = net.path().join("second.json");
    kaz_with_hook(format!("cat > \"{}\"", second.display()));
    let mut kaz = net.start_node("KAZ").await.unwrap();
    let line = kaz
        .proc
        .wait_line(&["respond-by passed", &msg(&id)])
        .await
        .unwrap();
    assert!(
        line.contains("recovered=true") && line.contains("recipients=KGZ"),
        "{line}"
    );
    // A subscriber that connects as the node starts is told too.
    let mut events = kaz.events().await.unwrap();
    let ev = events.wait_about("overdue", &id).await.unwrap();
    assert_eq!(
        (&ev["recovered"], &ev["recipients"]),
        (&json!(true), &json!(["KGZ"])),
        "{ev}"
    );
    kaz.proc
        .wait_line(&["hook ran", "on_overdue"])
        .await
        .unwrap();
    let text = std::fs::read_to_string(&second).unwrap();
    let hooked: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_eq!(
        (
            &hooked["type"],
            &hooked["id"],
            &hooked["recipients"],
            &hooked["status"],
            &hooked["recovered"]
        ),
        (
            &json!("overdue"),
            &json!(id),
            &json!(["KGZ"]),
            &json!("actual"),
            &json!(true)
        ),
        "{hooked}"
    );
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(st["overdue"], 1, "{st}");

    // Its hook ended (the line is logged once that is recorded): not announced again.
    stop_node(kaz).await;
    let kaz = net.start_node("KAZ").await.unwrap();
    let log = kaz.proc.log();
    assert!(!log.contains("respond-by passed"), "{log}");
    relay.shutdown().await;
}

/// A received message whose `on_message` hook a crash cut short is announced again at the
/// next start, flagged `recovered`, as an escalation is: it counts as announced once its
/// hook has ended, not once it has started. KGZ's hook lasts as long as KGZ's claim on its
/// data directory, so a kill lands while it runs; KAZ's `delivered` event comes from the
/// receipt KGZ sends after its announcement, so the kill also lands after everything KGZ
/// records on announcing. A ROUTINE message never pages again, so before this it was lost
/// for good: KGZ recorded it announced as the hook started. The start-up's own
/// announcement is held to the same rule (killed again while its hook runs, KGZ announces it
/// once more), and a subscriber of `/v1/events` that connects as the node starts is told of
/// it too (before, only the log and the hook were: the node announced before its API
/// listened). Once a hook has ended, a later start announces nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_hook_a_crash_cut_short_is_announced_again_at_the_next_start() {
    let net = net();
    let relay = net.relay().await;
    let kgz_with_hook = |hook: String| {
        net.node_config_with(
            "KGZ",
            &NodeSetup {
                hooks: Some(format!("timeout_ms = 600000\n{hook}")),
                ..NodeSetup::relay(relay.local_addr())
            },
        )
    };
    // A hook that waits for the node's claim on its data directory: it runs until the node
    // is killed, and is not left behind.
    let claim = net.path().join("node-KGZ").join(hotline_store::LOCK_FILE);
    let waiting_hook = format!(
        "on_message = ['sh', '-c', 'exec flock \"{}\" true']",
        claim.display()
    );
    let (kaz, mut kgz) = net
        .two_nodes_kgz_hooks(relay.local_addr(), Some(waiting_hook.clone()))
        .await
        .unwrap();
    let mut kaz_events = kaz.events().await.unwrap();
    let id = kaz.send("KGZ", "Situation report", &[]).await.unwrap();
    kgz.proc
        .wait_line(&["message received", &msg(&id)])
        .await
        .unwrap();
    // KGZ receipts the message after announcing it.
    kaz_events.wait_about("delivered", &id).await.unwrap();
    kgz.proc.kill9();

    // Started again with the same hook: announced at start-up, to the log and to a
    // subscriber of /v1/events that connects once the API answers.
    kgz_with_hook(waiting_hook);
    let mut kgz = net.start_node("KGZ").await.unwrap();
    let line = kgz
        .proc
        .wait_line(&["message received", &msg(&id)])
        .await
        .unwrap();
    assert!(line.contains("recovered=true"), "{line}");
    let mut events = kgz.events().await.unwrap();
    let ev = events.wait_about("message_received", &id).await.unwrap();
    assert_eq!(
        (&ev["recovered"], &ev["repage"]),
        (&json!(true), &json!(false)),
        "{ev}"
    );
    // Killed while the start-up's hook runs.
    kgz.proc.kill9();

    let pages = net.path().join("pages.jsonl");
    kgz_with_hook(appending_hook("on_message", &pages));
    let mut kgz = net.start_node("KGZ").await.unwrap();
    let line = kgz
        .proc
        .wait_line(&["message received", &msg(&id)])
        .await
        .unwrap();
    assert!(line.contains("recovered=true"), "{line}");
    kgz.proc
        .wait_line(&["hook ran", "on_message"])
        .await
        .unwrap();
    let text = std::fs::read_to_string(&pages).unwrap();
    let hooked: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_eq!(
        (&hooked["type"], &hooked["id"], &hooked["recovered"]),
        (&json!("message_received"), &json!(id), &json!(true)),
        "{hooked}"
    );

    // Its hook ended (the line is logged once that is recorded): not announced again.
    stop_node(kgz).await;
    let kgz = net.start_node("KGZ").await.unwrap();
    let log = kgz.proc.log();
    assert!(!log.contains("message received"), "{log}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exercise_message_is_marked_as_such() {
    let net = net();
    let relay = net.relay().await;
    let (kaz, mut kgz) = net.two_nodes(relay.local_addr()).await.unwrap();

    let drill = id_of(
        &kaz.cli_json(&[
            "send",
            "--to",
            "KGZ",
            "--status",
            "exercise",
            "--subject",
            "Drill: border incident",
        ])
        .await
        .unwrap(),
    );
    let real = id_of(
        &kaz.cli_json(&["send", "--to", "KGZ", "--subject", "Real notice"])
            .await
            .unwrap(),
    );
    kgz.proc
        .wait_line(&["message received", &msg(&drill), "status=Exercise"])
        .await
        .unwrap();
    kgz.proc
        .wait_line(&["message received", &msg(&real)])
        .await
        .unwrap();

    let inbox = kgz.cli_json(&["inbox"]).await.unwrap();
    let find = |id: &str| {
        inbox
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in {inbox}"))
    };
    let d = find(&drill);
    assert_eq!(d["status"], "exercise", "{d}");
    assert_eq!(d["exercise_or_test"], true, "{d}");
    let r = find(&real);
    assert_eq!(r["status"], "actual", "{r}");
    assert_eq!(r["exercise_or_test"], false, "{r}");

    let text = kgz.cli(&["inbox"]).await.unwrap();
    assert!(text.status.success(), "{text:?}");
    let line = |id: &str| {
        text.stdout
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line(&drill).contains("[EXERCISE] Drill: border incident"),
        "{}",
        text.stdout
    );
    assert!(!line(&real).contains("[EXERCISE]"), "{}", text.stdout);
    let shown = kgz.cli(&["show", &drill]).await.unwrap();
    assert!(shown.stdout.starts_with("[EXERCISE]"), "{}", shown.stdout);

    relay.shutdown().await;
}

/// Every event about a drill's message says it is a drill, as `message_received` and
/// `overdue` do: the sender's `accepted`, `delivered` and `acknowledged`, the recipient's
/// `ack_sent`, and a refused sender's `rejected` carry the message's `status`, and their log
/// lines a `status` field. Without it a hook or `hotline watch` (which marks `[EXERCISE]` by
/// the event's status) told "KGZ acknowledged <subject>" of a drill as of actual traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_about_an_exercise_message_says_so() {
    // UN, an observer, may not address KAZ under the default policy: its message is refused.
    let net = with_observer("");
    let relay = net.relay().await;
    for id in ["KAZ", "KGZ", "UN"] {
        net.node_config(id, relay.local_addr());
    }
    let mut kaz = net.start_node("KAZ").await.unwrap();
    let mut kgz = net.start_node("KGZ").await.unwrap();
    let mut un = net.start_node("UN").await.unwrap();
    for node in [&mut kaz, &mut kgz, &mut un] {
        node.connected().await.unwrap();
    }
    let mut kaz_events = kaz.events().await.unwrap();
    let mut kgz_events = kgz.events().await.unwrap();
    let mut un_events = un.events().await.unwrap();
    let drill = |to: &str| {
        [
            "send",
            "--to",
            to,
            "--status",
            "exercise",
            "--subject",
            "Drill: border incident",
        ]
        .map(str::to_owned)
    };
    let exercise = |ev: &Value| assert_eq!(ev["status"], "exercise", "{ev}");
    let args = drill("KGZ");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = id_of(&kaz.cli_json(&args).await.unwrap());

    exercise(&kaz_events.wait_about("accepted", &id).await.unwrap());
    exercise(&kaz_events.wait_about("delivered", &id).await.unwrap());
    kgz.cli_json(&["ack", &id, "--officer", "Duty officer"])
        .await
        .unwrap();
    exercise(&kgz_events.wait_about("ack_sent", &id).await.unwrap());
    exercise(&kaz_events.wait_about("acknowledged", &id).await.unwrap());
    for what in ["accepted", "acknowledged"] {
        let line = kaz.proc.wait_line(&[what, &msg(&id)]).await.unwrap();
        assert!(line.contains("status=Exercise"), "{line}");
    }
    let line = kgz
        .proc
        .wait_line(&["acknowledged", &msg(&id)])
        .await
        .unwrap();
    assert!(line.contains("status=Exercise"), "{line}");

    let args = drill("KAZ");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = id_of(&un.cli_json(&args).await.unwrap());
    let ev = un_events.wait_about("rejected", &refused).await.unwrap();
    assert_eq!(ev["code"], "PolicyDenied", "{ev}");
    exercise(&ev);
    let line = un
        .proc
        .wait_line(&["relay refused a message", &msg(&refused)])
        .await
        .unwrap();
    assert!(line.contains("status=Exercise"), "{line}");
    relay.shutdown().await;
}

/// `hotline reply` answers a received message: to its sender alone, kind `reply`,
/// referencing it, with its status (a drill's answer is exercise traffic) and precedence and
/// a `Re: ` subject; the sender is told (`message_received` with `references`) and lists it
/// among the message's answers, as does the relay's report. A message the node sent, or
/// none, is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_reaches_the_sender_as_exercise_traffic_and_is_listed_among_its_answers() {
    let net = net();
    let relay = net.relay().await;
    let (kaz, mut kgz) = net.two_nodes(relay.local_addr()).await.unwrap();
    let drill = id_of(
        &kaz.cli_json(&[
            "send",
            "--to",
            "KGZ",
            "--status",
            "exercise",
            "--kind",
            "consultation_request",
            "--precedence",
            "IMMEDIATE",
            "--subject",
            "Drill: request for clarification",
        ])
        .await
        .unwrap(),
    );
    kgz.proc
        .wait_line(&["message received", &msg(&drill)])
        .await
        .unwrap();
    let mut kaz_events = kaz.events().await.unwrap();
    let answer = id_of(
        &kgz.cli_json(&["reply", &drill, "--body", "No activity observed."])
            .await
            .unwrap(),
    );
    let ev = kaz_events
        .wait_for("the answer", |e| {
            e["type"] == "message_received" && e["id"] == answer.as_str()
        })
        .await
        .unwrap();
    assert_eq!(ev["references"], json!([drill]), "{ev}");
    let got = kaz.cli_json(&["show", &answer]).await.unwrap();
    assert_eq!(got["from"], "KGZ", "{got}");
    assert_eq!(got["kind"], "reply", "{got}");
    assert_eq!(got["status"], "exercise", "{got}");
    assert_eq!(got["precedence"], "IMMEDIATE", "{got}");
    assert_eq!(got["references"], json!([drill]), "{got}");
    assert_eq!(
        got["subject"], "Re: Drill: request for clarification",
        "{got}"
    );
    assert_eq!(got["body"], "No activity observed.", "{got}");
    let text = kaz.cli(&["show", &answer]).await.unwrap().stdout;
    assert!(text.contains(&format!("references: {drill}")), "{text}");
    // KAZ's view of its drill message lists the answer.
    let st = kaz.cli_json(&["status", &drill]).await.unwrap();
    assert_eq!(st["answers"].as_array().map(Vec::len), Some(1), "{st}");
    assert_eq!(st["answers"][0]["id"], answer.as_str(), "{st}");
    assert_eq!(st["answers"][0]["from"], "KGZ", "{st}");
    assert_eq!(st["answers"][0]["kind"], "reply", "{st}");
    assert_eq!(st["answered"], 1, "{st}");
    assert!(st["recipients"][0]["answered_at_ms"].is_u64(), "{st}");
    let text = kaz.cli(&["status", &drill]).await.unwrap().stdout;
    assert!(text.contains("answered 1/1"), "{text}");
    assert!(text.contains("answers 1"), "{text}");
    assert!(text.contains(&answer), "{text}");
    // `hotline inbox --answers-to` lists every answer to it (the view lists the first 64),
    // as the inbox lists messages, and only them: the drill's own copy is not KAZ's to
    // list, and KAZ has received nothing else.
    let listed = kaz
        .cli_json(&["inbox", "--answers-to", &drill])
        .await
        .unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, [answer.as_str()], "{listed}");
    assert_eq!(listed[0]["references"], json!([drill]), "{listed}");
    let out = kaz.cli(&["inbox", "--answers-to", &drill]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "a header and the answer: {}", out.stdout);
    assert!(lines[0].starts_with("ID ") && lines[0].ends_with("SUBJECT"));
    assert!(
        lines[1].starts_with(&answer)
            && lines[1].contains("KGZ")
            && lines[1].contains("[EXERCISE] Re: Drill: request for clarification"),
        "{}",
        out.stdout
    );
    let waiting = kaz
        .cli_json(&["inbox", "--answers-to", &drill, "--unacknowledged"])
        .await
        .unwrap();
    assert_eq!(waiting.as_array().map(Vec::len), Some(1), "{waiting}");
    kaz.cli_json(&["ack", &answer, "--officer", "Duty officer"])
        .await
        .unwrap();
    let out = kaz
        .cli(&["inbox", "--answers-to", &drill, "--unacknowledged"])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("(no unacknowledged answers to {drill})")),
        "{}",
        out.stdout
    );
    // A message this node did not send (one it received, or none) has no answers to list:
    // said so, exit status 1, nothing on standard output, not an empty list that reads
    // as nobody having answered.
    let none = "0".repeat(32);
    for (node, id) in [(&kgz, &drill), (&kaz, &answer), (&kaz, &none)] {
        let out = node.cli(&["inbox", "--answers-to", id]).await.unwrap();
        assert_eq!(out.status.code(), Some(1), "{id}: {out:?}");
        assert!(
            out.stderr
                .contains(&format!("{id} is not a message this node sent")),
            "{}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{}", out.stdout);
    }
    // What is not a message id is refused as one, before it becomes part of a query:
    // a malformed argument, status 2.
    let out = kaz
        .cli(&["inbox", "--answers-to", "../status"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("--answers-to") && out.stderr.contains("must be 32 hexadecimal digits"),
        "{}",
        out.stderr
    );
    // KGZ's view of the message it answered says so.
    let here = kgz.cli_json(&["show", &drill]).await.unwrap();
    assert!(here["answered_at_ms"].is_u64(), "{here}");
    let text = kgz.cli(&["show", &drill]).await.unwrap().stdout;
    assert!(text.contains("answered from here at"), "{text}");
    // The Secretariat sees it too, from the relay's store.
    let config = net.relay_config.to_str().unwrap();
    let out = hotline_cli(
        net.path(),
        &["relay", "report", "-c", config, "--id", &drill, "--json"],
    )
    .await
    .unwrap();
    let report = out.json().unwrap();
    assert_eq!(report["answered"], 1, "{report}");
    assert_eq!(report["recipients"][0]["recipient"], "KGZ", "{report}");
    assert!(
        report["recipients"][0]["answered_at_ms"].is_u64(),
        "{report}"
    );
    let sent = kgz.cli_json(&["show", &answer]).await.unwrap();
    assert_eq!(
        sent["audience"],
        json!({"type": "participants", "to": ["KAZ"]}),
        "{sent}"
    );
    // A message this node sent is not answered with `reply`.
    let own = kgz
        .cli(&["reply", &answer, "--body", "again"])
        .await
        .unwrap();
    assert!(!own.status.success());
    assert!(
        own.stderr.contains("a message this node sent"),
        "{}",
        own.stderr
    );
    let none = "0".repeat(32);
    let unknown = kgz.cli(&["reply", &none, "--body", "?"]).await.unwrap();
    assert!(!unknown.status.success());
    assert!(
        unknown.stderr.contains("no received message"),
        "{}",
        unknown.stderr
    );
    relay.shutdown().await;
}

/// One HTTP/1.1 request without a body over a plain TCP connection, waiting for the answer
/// as long as it takes (the caller bounds the wait): (status, body).
async fn http_waiting(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\r\n");
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let resp = String::from_utf8_lossy(&out).into_owned();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {resp:?}"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// One HTTP/1.1 request over a plain TCP connection: (status, body).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
    };
    let resp = tokio::time::timeout(EVENT_TIMEOUT, fut).await??;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {resp:?}"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_a_missing_or_wrong_token() {
    let net = net();
    // No relay is needed: the API answers whether or not one is reachable.
    net.node_config("KAZ", free_udp_addr());
    let kaz = net.start_node("KAZ").await.unwrap();
    let token = kaz.token();
    assert_eq!(token.len(), 64, "a generated 32-byte hex token");

    for (what, t) in [
        ("missing", None),
        ("wrong", Some("0".repeat(64))),
        ("prefix", Some(token[..32].to_owned())),
    ] {
        let (status, body) = http(kaz.api, "GET", "/v1/status", t.as_deref(), "")
            .await
            .unwrap();
        assert_eq!(status, 401, "{what} token: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
        assert_eq!(v["code"], "unauthorized", "{what}: {v}");
    }
    let (status, _) = http(
        kaz.api,
        "POST",
        "/v1/messages",
        None,
        r#"{"to":["KGZ"],"subject":"x"}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 401);
    let (status, body) = http(kaz.api, "GET", "/v1/status", Some(&token), "")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["participant"], "KAZ");
    assert_eq!(v["outbox"], 0, "the refused send stored nothing: {v}");

    // Without a token nothing else is even looked at, not even a malformed body.
    let (status, _) = http(kaz.api, "POST", "/v1/messages", None, "{not json")
        .await
        .unwrap();
    assert_eq!(status, 401);
    // With one, a bad body gets the API's own error shape.
    let (status, body) = http(kaz.api, "POST", "/v1/messages", Some(&token), "{not json")
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(v["code"], "bad_request", "{v}");
    let (status, body) = http(
        kaz.api,
        "POST",
        "/v1/messages",
        Some(&token),
        r#"{"to":["KGZ"],"subject":"x","colour":"red"}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("colour"), "{body}");
    let huge = format!(
        r#"{{"to":["KGZ"],"subject":"x","body":"{}"}}"#,
        "x".repeat(200 * 1024)
    );
    let (status, body) = http(kaz.api, "POST", "/v1/messages", Some(&token), &huge)
        .await
        .unwrap();
    assert_eq!(status, 413, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(v["code"], "too_large", "{v}");
    // A deadline the store could not keep (past 2^63 - 1 ms) is refused by name, not
    // stored, and not an internal error.
    let (status, body) = http(
        kaz.api,
        "POST",
        "/v1/messages",
        Some(&token),
        &format!(
            r#"{{"to":["KGZ"],"subject":"x","respond_by_ms":{}}}"#,
            u64::MAX
        ),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(v["code"], "invalid", "{v}");
    assert!(body.contains("respond_by_ms"), "{body}");
    // A deadline no one can meet, and a subject of spaces alone, are refused by name.
    for (body, code, field) in [
        (
            r#"{"to":["KGZ"],"subject":"x","respond_within_ms":0}"#,
            "bad_respond_by",
            "respond_within_ms",
        ),
        (r#"{"to":["KGZ"],"subject":"   "}"#, "invalid", "subject"),
    ] {
        let (status, answer) = http(kaz.api, "POST", "/v1/messages", Some(&token), body)
            .await
            .unwrap();
        assert_eq!(status, 400, "{body}: {answer}");
        let v: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"));
        assert_eq!(v["code"], code, "{body}: {v}");
        assert!(answer.contains(field), "{body}: {answer}");
    }
    // So does a bad query string, on every list (`hotline inbox` shows the error's text).
    for path in [
        "/v1/inbox?limit=abc",
        "/v1/messages?limit=-1",
        "/v1/quarantine?limit=1.5",
    ] {
        let (status, body) = http(kaz.api, "GET", path, Some(&token), "").await.unwrap();
        assert_eq!(status, 400, "{path}: {body}");
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body:?}"));
        assert_eq!(v["code"], "bad_request", "{path}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("limit")),
            "{path}: {v}"
        );
    }
    let (status, body) = http(kaz.api, "GET", "/v1/inbox?limit=5", Some(&token), "")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");

    let (status, _) = http(kaz.api, "GET", "/v1/nothing", None, "").await.unwrap();
    assert_eq!(status, 401, "even unknown paths need the token");
    let (status, _) = http(kaz.api, "GET", "/v1/nothing", Some(&token), "")
        .await
        .unwrap();
    assert_eq!(status, 404);

    let wrong = net.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let api = kaz.api.to_string();
    // `hotline watch` says what the others say, not "cannot follow events (error, HTTP 401)".
    for command in ["inbox", "watch"] {
        let args = [
            command,
            "--api",
            &api,
            "--token-file",
            wrong.to_str().unwrap(),
        ];
        let out = hotline_cli(net.path(), &args).await.unwrap();
        assert!(!out.status.success(), "{command}: {out:?}");
        assert!(
            out.stderr
                .contains("missing or wrong bearer token (unauthorized, HTTP 401)"),
            "{command}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{command}: {}", out.stdout);
    }
}

/// `hotline watch` says so when its node ends the event stream (the node stopped or
/// restarted), on standard error and with exit status 1: it used to end silently with
/// status 0, so that an officer at a terminal could miss that alerts were no longer shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hotline_watch_says_so_when_its_node_goes_away() -> anyhow::Result<()> {
    let net = net();
    net.node_config("KAZ", free_udp_addr());
    let kaz = net.start_node("KAZ").await?;
    let api = kaz.api.to_string();
    let token = kaz.token_file.to_str().expect("utf-8 path").to_owned();
    let mut watch = Proc::spawn(
        &["watch", "--api", &api, "--token-file", &token],
        net.path(),
        "watch.log",
    )?;
    watch.wait_log("following the node's events").await?;
    kaz.proc.signal("TERM")?;
    let (st, watch) = watch.wait_exit(EVENT_TIMEOUT).await?;
    let log = watch.log();
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(
        log.contains("the node ended the event stream (it stopped or restarted)"),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_explains_refusals_and_a_missing_node() {
    let net = net();
    net.node_config("KAZ", free_udp_addr());
    let kaz = net.start_node("KAZ").await.unwrap();

    let out = kaz
        .cli(&["send", "--to", "XYZ", "--subject", "hello"])
        .await
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("unknown") && out.stderr.contains("XYZ"),
        "{}",
        out.stderr
    );

    // A typo in an option the node checks is named in the answer, not "request failed".
    let out = kaz
        .cli(&[
            "send",
            "--to",
            "KGZ",
            "--subject",
            "x",
            "--precedence",
            "URGENT",
        ])
        .await
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("URGENT") && out.stderr.contains("bad_request"),
        "{}",
        out.stderr
    );

    // What is not a message id is refused as one before it becomes part of a path: `../status`
    // named the status endpoint, and `show` printed the node's status as an empty message.
    for (command, id) in [
        ("show", "../status"),
        ("status", "../inbox"),
        ("show", "a/b"),
        ("ack", "../../v1/status"),
        ("reply", "?limit=1"),
    ] {
        let mut args = vec![command, id];
        if command == "ack" {
            args.extend(["--officer", "Duty officer"]);
        }
        let out = kaz.cli(&args).await.unwrap();
        assert_eq!(out.status.code(), Some(2), "{command} {id}: {out:?}");
        assert!(
            out.stderr.contains("must be 32 hexadecimal digits"),
            "{command} {id}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{command} {id}: {}", out.stdout);
    }

    // A respond-by beyond the protocol's times is refused by name, not a crash.
    let out = kaz
        .cli(&[
            "send",
            "--to",
            "KGZ",
            "--subject",
            "x",
            "--respond-within",
            &u64::MAX.to_string(),
        ])
        .await
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("respond_by_ms"), "{}", out.stderr);

    let limit = hotline_proto::limits::BODY_BYTES_MAX;
    assert_eq!(limit, 64 * 1024);
    let big = net.path().join("big.txt");
    std::fs::write(&big, "x".repeat(limit + 1)).unwrap();
    let big = big.to_str().unwrap();
    let out = kaz
        .cli(&[
            "send",
            "--to",
            "KGZ",
            "--subject",
            "big",
            "--body-file",
            big,
        ])
        .await
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("413") && out.stderr.contains("too_large"),
        "{}",
        out.stderr
    );
    let max = net.path().join("max.txt");
    std::fs::write(&max, "x".repeat(limit)).unwrap();
    let ok = kaz
        .cli_json(&[
            "send",
            "--to",
            "KGZ",
            "--subject",
            "max",
            "--body-file",
            max.to_str().unwrap(),
        ])
        .await
        .unwrap();
    assert_eq!(ok["state"], "queued", "exactly the limit is fine: {ok}");
    let st = kaz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(
        st["outbox"], 1,
        "only the message within the limit was stored: {st}"
    );

    let nobody = free_tcp_addr().to_string();
    let token = kaz.token_file.to_str().unwrap();
    let out = hotline_cli(
        net.path(),
        &[
            "send",
            "--to",
            "KGZ",
            "--subject",
            "x",
            "--api",
            &nobody,
            "--token-file",
            token,
        ],
    )
    .await
    .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("no node answering"), "{}", out.stderr);
    assert!(
        out.stderr.contains("is `hotline node` running"),
        "{}",
        out.stderr
    );
}

/// `hotline inbox --unacknowledged` lists every message not yet acknowledged, however many
/// newer ones were: it used to filter the newest 1,000 (the API's list limit) on the
/// command's side, so that a request waiting for an answer behind 1,000 newer messages,
/// acknowledged, was listed nowhere, and the officer was told there were no messages.
/// `hotline inbox`, which lists the newest 1,000 of them, says that older ones are not
/// listed (it used to end as if that were all), and its `--json` stays JSON alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_message_is_listed_however_many_newer_ones_were_acknowledged() {
    use hotline_node::limits::API_LIST_MAX;
    use hotline_node::store::NodeStore;
    let net = net();
    net.node_config("KGZ", free_udp_addr());
    let data = net.path().join("node-KGZ");
    std::fs::create_dir_all(&data).unwrap();
    let kaz = net.key("KAZ");
    let (kgz, kgz_key) = (pid("KGZ"), net.key("KGZ"));
    let signed = |seq: u64, subject: &str| {
        let env = flash_to_kgz("KAZ", seq, subject, "");
        (Signed::sign(&env, &kaz).unwrap(), Ok(env))
    };
    let waiting = signed(1, "Request for clarification");
    let waiting_id = waiting.1.as_ref().unwrap().id;
    let newer: Vec<_> = (2..API_LIST_MAX as u64 + 2)
        .map(|seq| signed(seq, "Communications check"))
        .collect();
    {
        let mut store = NodeStore::open(&data).unwrap();
        let t = now_ms() - 60_000;
        store.store_deliveries(&[waiting], t).unwrap();
        store.store_deliveries(&newer, t + 1).unwrap();
        for (_, env) in &newer {
            let id = env.as_ref().unwrap().id;
            store
                .acknowledge(&kgz, &kgz_key, &id, "Duty officer", None, 1, t + 2)
                .unwrap()
                .unwrap();
        }
        let all: Vec<_> = newer.iter().map(|(_, e)| e.as_ref().unwrap().id).collect();
        store.mark_announced(&all).unwrap();
        store.mark_announced(&[waiting_id]).unwrap();
    }
    let node = net.start_node("KGZ").await.unwrap();
    let listed = node.cli_json(&["inbox", "--unacknowledged"]).await.unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, [waiting_id.to_string()], "{listed}");
    let text = node.cli(&["inbox", "--unacknowledged"]).await.unwrap();
    assert!(
        text.stdout.contains(&waiting_id.to_string()) && !text.stdout.contains("no messages"),
        "{text:?}"
    );
    assert!(!text.stdout.contains("only the newest"), "{text:?}");
    let all = node.cli(&["inbox"]).await.unwrap();
    assert!(all.status.success(), "{all:?}");
    assert!(!all.stdout.contains(&waiting_id.to_string()), "{all:?}");
    let listed = node.cli_json(&["inbox"]).await.unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(API_LIST_MAX));
    // The line under the list names the command for the next page: the same list, older
    // than the last one listed. There was no way to see older messages.
    let last = listed[API_LIST_MAX - 1]["id"].as_str().unwrap();
    let note = format!(
        "\n(the node lists at most {API_LIST_MAX} messages, and 1 MiB of them, at once: \
         `hotline inbox --before {last}` lists the next older ones; `hotline inbox \
         --unacknowledged` lists the unacknowledged ones from the whole inbox)\n"
    );
    assert!(all.stdout.ends_with(&note), "{}", all.stdout);
    let older = node.cli(&["inbox", "--before", last]).await.unwrap();
    assert!(older.status.success(), "{older:?}");
    let rows: Vec<&str> = older.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{}", older.stdout);
    assert!(
        rows[0].starts_with(&waiting_id.to_string()),
        "{}",
        older.stdout
    );
    let past = node
        .cli(&["inbox", "--before", &waiting_id.to_string()])
        .await
        .unwrap();
    assert!(
        past.stdout
            .ends_with(&format!("\n(no messages older than {waiting_id})\n")),
        "{past:?}"
    );
    // The API's own pages, and a `before` that names no received message, or no id.
    let token = node.token();
    let (status, body) = http(
        node.api,
        "GET",
        &format!("/v1/inbox?before={last}&limit=5"),
        Some(&token),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page.as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page[0]["id"], waiting_id.to_string().as_str());
    let unknown = "00000000000000000000000000000001";
    let (status, body) = http(
        node.api,
        "GET",
        &format!("/v1/inbox?unacknowledged=true&before={unknown}"),
        Some(&token),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains(r#""code":"not_found""#), "{body}");
    let (status, body) = http(node.api, "GET", "/v1/inbox?before=zz", Some(&token), "")
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(r#""code":"bad_id""#), "{body}");
    stop_node(node).await;
}

/// `hotline sent` that the node cut at its limit names the command for the next page, and
/// that command lists the older ones, each once, down to the first; `GET
/// /v1/messages?before=ID` is that page. There was no way to see them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_list_cut_at_the_limit_goes_on_with_before() {
    use hotline_node::limits::API_LIST_MAX;
    use hotline_node::store::{Draft, NodeStore};
    use hotline_proto::{Audience, Kind, Precedence, Status};
    let net = net();
    net.node_config("KGZ", free_udp_addr());
    let data = net.path().join("node-KGZ");
    std::fs::create_dir_all(&data).unwrap();
    let (kgz, key, kaz) = (pid("KGZ"), net.key("KGZ"), pid("KAZ"));
    let mut sent = Vec::new();
    {
        let mut store = NodeStore::open(&data).unwrap();
        for i in 0..API_LIST_MAX + 2 {
            let draft = Draft {
                audience: Audience::Participants(vec![kaz.clone()]),
                kind: Kind::Notice,
                precedence: Precedence::Routine,
                status: Status::Actual,
                respond_by_ms: None,
                references: vec![],
                category: None,
                subject: format!("Notification {i}"),
                body: String::new(),
            };
            let signed = store
                .compose(&kgz, &key, draft, std::slice::from_ref(&kaz), 1, now_ms())
                .unwrap()
                .unwrap();
            sent.push(signed.decode_unverified().unwrap().id.to_string());
        }
    }
    sent.reverse();
    let node = net.start_node("KGZ").await.unwrap();
    let first = node.cli_json(&["sent"]).await.unwrap();
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&first), sent[..API_LIST_MAX], "newest first");
    let text = node.cli(&["sent"]).await.unwrap();
    let last = &sent[API_LIST_MAX - 1];
    let command = format!("`hotline sent --before {last}` lists the next older ones");
    assert!(text.stdout.contains(&command), "{}", text.stdout);
    let older = node.cli_json(&["sent", "--before", last]).await.unwrap();
    assert_eq!(ids(&older), sent[API_LIST_MAX..], "the rest, once each");
    assert!(older[0]["recipients"][0]["recipient"] == "KAZ", "{older}");
    let text = node.cli(&["sent", "--before", last]).await.unwrap();
    assert!(!text.stdout.contains("at most"), "{}", text.stdout);
    let (status, body) = http(
        node.api,
        "GET",
        &format!("/v1/messages?limit=1&before={}", sent[1]),
        Some(&node.token()),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ids(&page), [sent[2].clone()]);
    // A received message is not one of the sent list's.
    let (status, body) = http(
        node.api,
        "GET",
        "/v1/messages?before=00000000000000000000000000000001",
        Some(&node.token()),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 404, "{body}");
    stop_node(node).await;
}

/// Local clients that hold connections to the API open (a dashboard that never closes its
/// event streams, a script gone wrong, or any local user: no token is needed to connect)
/// cannot use up the node's file descriptors: the API serves at most
/// `API_CONNECTIONS_MAX` connections at once, and more wait in the kernel's queue until one
/// closes. Without the cap the node accepted until it had no descriptor left, and then could
/// not start its paging hook: a FLASH alert arrived and nobody was paged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_the_api_cannot_use_up_the_descriptors_paging_needs() {
    let max = hotline_node::limits::API_CONNECTIONS_MAX;
    let net = net();
    let relay = net.relay().await;
    let pages = net.path().join("pages.jsonl");
    let hooks = appending_hook("on_message", &pages);
    let (kaz, mut kgz) = net
        .two_nodes_kgz_hooks(relay.local_addr(), Some(hooks))
        .await
        .unwrap();

    // The node's descriptors: what it holds now, and a limit that leaves it room for the
    // connections it serves and a few more (its files, a hook's pipes).
    let fds = format!("/proc/{}/fd", kgz.proc.pid());
    let open = || std::fs::read_dir(&fds).unwrap().count();
    let base = open();
    let limit = base + max + 32;
    let set = std::process::Command::new("prlimit")
        .args(["--pid", &kgz.proc.pid().to_string()])
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap();
    assert!(set.success(), "prlimit: {set}");

    let mut held = Vec::new();
    for _ in 0..max + 64 {
        held.push(tokio::net::TcpStream::connect(kgz.api).await.unwrap());
    }
    // Until the node has taken as many as it serves (it reads every 20 ms: no event says so).
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
    while open() < base + max {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} descriptors",
            open()
        );
        tick.tick().await;
    }
    kgz.proc
        .wait_line(&["local API: connection limit reached"])
        .await
        .unwrap();

    let flash = kaz
        .send("KGZ", "Incident at the border", &["--precedence", "FLASH"])
        .await
        .unwrap();
    kgz.proc
        .wait_line(&["urgent message received", &msg(&flash)])
        .await
        .unwrap();
    let hook = kgz.proc.wait_line(&["hook", "on_message"]).await.unwrap();
    assert!(hook.contains("hook ran"), "{hook}");

    // While they are still held, the API answers: the node closes each connection that
    // has sent no request within `API_HEADER_READ_TIMEOUT_MS`, and this one, queued behind
    // them, is taken and answered. It used to wait until the client closed them.
    let within = std::time::Duration::from_millis(hotline_node::limits::API_HEADER_READ_TIMEOUT_MS)
        + EVENT_TIMEOUT;
    let (status, body) = tokio::time::timeout(
        within,
        http_waiting(kgz.api, "GET", "/v1/inbox", Some(&kgz.token())),
    )
    .await
    .expect("answered while the idle connections are held")
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(flash.as_str()), "{body}");
    drop(held);
    let inbox = kgz.cli_json(&["inbox"]).await.unwrap();
    assert_eq!(inbox[0]["id"], flash.as_str(), "{inbox}");
    relay.shutdown().await;
}

/// A node whose participant the relay's roster revokes is refused at every attempt. A
/// message its officer sends then says that no relay will take it, and why, rather than that
/// it waits for a relay to be reachable (OPERATIONS.md 4.5). It is queued all the same:
/// once the revocation is undone, it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_nodes_send_says_no_relay_will_take_it() {
    let mut net = net();
    // The node keeps the roster it had: the relay refuses it before it could send it the new
    // one (so only the relay's refusal tells).
    std::fs::copy(
        net.path().join("roster.signed"),
        net.path().join("roster-v1.signed"),
    )
    .unwrap();
    let revoke = |revoked: bool| {
        move |r: &mut hotline_proto::Roster| {
            r.participants
                .iter_mut()
                .find(|p| p.id == pid("KAZ"))
                .unwrap()
                .revoked = revoked
        }
    };
    net.update_roster(revoke(true));
    let relay = net.relay().await;
    let addr = relay.local_addr();
    net.node_config_with(
        "KAZ",
        &NodeSetup {
            roster: Some("roster-v1.signed".into()),
            ..NodeSetup::relay(addr)
        },
    );
    let mut kaz = net.start_node("KAZ").await.unwrap();
    kaz.proc
        .wait_line(&["ERROR", "refused, lastingly", "closed by peer: Revoked"])
        .await
        .unwrap();

    let out = kaz
        .cli(&["send", "--to", "KGZ", "--subject", "Border incident"])
        .await
        .unwrap();
    // Accepted and queued: the message is the node's to keep.
    assert!(out.status.success(), "{out:?}");
    let expected = format!(
        "\nqueued for 1 recipient(s); no relay will take it: relay 0 ({addr}) refused this \
         node: Revoked (KAZ is revoked). This participant or its key is revoked on the roster, \
         or its key is not (yet) listed (OPERATIONS.md 4.5; 4.4 for a key rotation). The \
         message stays in the outbox and leaves only once this is put right; meanwhile, use \
         another channel\n"
    );
    assert!(out.stdout.ends_with(&expected), "{out:?}");
    let id = out.stdout.lines().next().unwrap().to_owned();
    assert_eq!(id.len(), 32, "{out:?}");
    let line = kaz
        .proc
        .wait_line(&[
            "WARN",
            "message queued, but no relay will take it",
            &msg(&id),
        ])
        .await
        .unwrap();
    assert!(line.contains("refused this node: Revoked"), "{line}");

    let sent = send_blocked(&kaz, "Border incident, again").await;
    assert_eq!(
        sent["refused_by"],
        json!([{"relay": 0, "address": addr.to_string(), "code": "Revoked",
            "reason": "KAZ is revoked"}]),
        "{sent}"
    );

    // The revocation undone: the relay takes the node again, and both messages leave.
    net.update_roster(revoke(false));
    relay.reload_roster().await.unwrap();
    for id in [id, id_of(&sent)] {
        kaz.proc.wait_line(&["accepted", &msg(&id)]).await.unwrap();
    }
    relay.shutdown().await;
}

/// KAZ's node, on a relay whose budget of sessions is one a `refill_ms`, connected, stopped
/// and started again at once: the network, the relay, its metrics' address, the node started
/// again and its log line saying the relay refused it for its budget (`retry_in_ms=`).
async fn kaz_restarted_past_its_session_budget(
    refill_ms: u64,
) -> (
    Net,
    hotline_relay::RelayHandle,
    std::net::SocketAddr,
    NodeProc,
    String,
) {
    let net = Net::sec_kaz_kgz_with(&format!(
        "[limits]\nsession_burst = 1\nsession_refill_ms = {refill_ms}\n"
    ));
    let relay = net.relay().await;
    let maddr = relay.metrics_addr().expect("metrics in the test config");
    net.node_config("KAZ", relay.local_addr());
    let mut kaz = net.start_node("KAZ").await.unwrap();
    kaz.connected().await.unwrap();
    kaz.proc.signal("TERM").unwrap();
    let (st, _) = kaz.proc.wait_exit(EVENT_TIMEOUT).await.unwrap();
    assert!(st.success(), "{st}");
    let mut kaz = net.start_node("KAZ").await.unwrap();
    let line = kaz
        .proc
        .wait_line(&["WARN", "budget of sessions", "retry_in_ms="])
        .await
        .unwrap();
    (net, relay, maddr, kaz, line)
}

/// A relay that refuses the node's login for its participant's budget of sessions
/// (`LimitExceeded`: this node restarted sooner than the relay's configuration allows) is
/// not asked again at once: the node waits as long as the relay says (`retry in S.T s`),
/// here ten minutes, cut to its own cap (`RELAY_RETRY_HINT_MAX_MS`, 5 min), says in its log
/// why and for how long, with the relay's reason, and its status says why the link is
/// down, a refusal that passes, not a lasting one. (It tried again after 200 ms, doubling:
/// four refused logins within a refill; later it waited 10 to 15 s whatever the relay said,
/// and was refused again each time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refused_for_the_relays_session_budget_waits_and_says_why() {
    // Started again at once: its one session is spent for ten minutes.
    let (_net, relay, maddr, kaz, line) = kaz_restarted_past_its_session_budget(600_000).await;
    assert!(
        line.contains("LimitExceeded") && line.contains("retry in"),
        "{line}"
    );
    let wait: u64 = line
        .split("retry_in_ms=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no wait in {line}"));
    assert!((300_000..=305_000).contains(&wait), "{line}");
    assert!(line.contains(" relay_hint_ms=300000"), "{line}");
    let st = kaz.cli_json(&["node-status"]).await.unwrap();
    let link = &st["relays"][0];
    assert_eq!(link["connected"], false, "{st}");
    assert!(
        link["last_error"]
            .as_str()
            .unwrap()
            .contains("LimitExceeded"),
        "{st}"
    );
    assert!(link["refused"].is_null(), "a refusal that passes: {st}");
    let refusals = "hotline_relay_connections_closed_total{code=\"LimitExceeded\"}";
    wait_metric(maddr, refusals, |n| n == 1.0).await.unwrap();
    relay.shutdown().await;
}

/// A relay that refuses the node's login for its participant's budget of sessions says when
/// to try again (`retry in S.T s`, here within the default refill of 5 s): the node waits
/// that long (plus jitter), says so once in its log with the relay's hint, and is let in at
/// its next attempt, refused once. It used to wait its longest back-off whatever the relay
/// said, 10 to 15 s, longer than needed here (and too short for a refill over 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refused_for_the_relays_session_budget_tries_again_when_told() {
    // Started again at once: its one session comes back within 5 s.
    let (_net, relay, maddr, mut kaz, line) = kaz_restarted_past_its_session_budget(5_000).await;
    let field = |name: &str| -> u64 {
        line.split(&format!(" {name}="))
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    let (wait, hint) = (field("retry_in_ms"), field("relay_hint_ms"));
    assert!((1..=5_000).contains(&hint), "{line}");
    assert!(
        line.contains(&hotline_proto::frame::retry_in_text(hint)),
        "the relay's own words: {line}"
    );
    assert!((hint..=hint * 3 / 2).contains(&wait), "{line}");

    // Let in at the next attempt (within the event timeout, 10 s, where it waited 10 to
    // 15 s before), refused that once.
    kaz.connected().await.unwrap();
    let refusals = "hotline_relay_connections_closed_total{code=\"LimitExceeded\"}";
    wait_metric(maddr, refusals, |n| n == 1.0).await.unwrap();
    assert_eq!(
        kaz.proc.count_lines(&["budget of sessions"]),
        1,
        "{}",
        kaz.proc.log()
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_the_wrong_certificate_is_refused() {
    let net = net();
    let relay = net.relay().await;
    let other = hotline_net::tls::write_self_signed(
        &net.path().join("other.crt"),
        &net.path().join("other.key"),
    )
    .unwrap();
    assert_ne!(other, net.fingerprint);
    net.node_config_with(
        "KAZ",
        &NodeSetup {
            fingerprint: Some(other),
            ..NodeSetup::relay(relay.local_addr())
        },
    );
    let mut kaz = net.start_node("KAZ").await.unwrap();
    let line = kaz.proc.wait_line(&["ERROR", "pinned"]).await.unwrap();
    assert!(line.contains("does not match"), "{line}");

    let sent = kaz
        .cli_json(&["send", "--to", "KGZ", "--subject", "must wait"])
        .await
        .unwrap();
    assert_eq!(sent["relays_connected"], 0, "{sent}");
    // Two more refused attempts after the message was queued: it is still not sent.
    let after = kaz.proc.log_len();
    kaz.proc
        .wait_lines_from(after, &["refusing it"], 2)
        .await
        .unwrap();
    let st = kaz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(st["relays_connected"], 0, "{st}");
    assert_eq!(st["outbox"], 1, "{st}");
    // The status says why, without the log.
    let link = &st["relays"][0];
    assert_eq!(link["connected"], false, "{st}");
    assert!(link["down_since_ms"].as_u64().is_some(), "{st}");
    assert!(link["failed_attempts"].as_u64().unwrap() >= 3, "{st}");
    assert!(
        link["last_error"].as_str().unwrap().contains("pinned"),
        "{st}"
    );
    let shown = kaz.cli_json(&["status", &id_of(&sent)]).await.unwrap();
    assert_eq!(shown["state"], "queued", "{shown}");
    assert_eq!(
        kaz.proc.count_lines(&["relay connected"]),
        0,
        "{}",
        kaz.proc.log()
    );
    relay.shutdown().await;
}

/// A node pinning another certificate than its relay's refuses the relay at every attempt,
/// for as long as its configuration says so. A message its officer sends then says that no
/// relay will take it, naming the pin and where it is configured, rather than that it waits
/// for a relay to be reachable; `node-status` says the refusal lasts. It is queued all the
/// same: once the fingerprint is corrected, it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_pinning_another_certificate_says_no_relay_will_take_it() {
    let net = net();
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let other = hotline_net::tls::write_self_signed(
        &net.path().join("other.crt"),
        &net.path().join("other.key"),
    )
    .unwrap();
    net.node_config_with(
        "KAZ",
        &NodeSetup {
            fingerprint: Some(other),
            ..NodeSetup::relay(addr)
        },
    );
    let mut kaz = net.start_node("KAZ").await.unwrap();
    // Logged once the link's state holds the refusal.
    kaz.proc.wait_line(&["ERROR", "refusing it"]).await.unwrap();

    let sent = send_blocked(&kaz, "Border incident").await;
    let presented = net.fingerprint;
    let reason = format!("relay certificate {presented} does not match the pinned fingerprint");
    assert_eq!(
        sent["refused_by"],
        json!([{"relay": 0, "address": addr.to_string(), "code": "PinMismatch",
            "reason": reason}]),
        "{sent}"
    );
    let note = sent["note"].as_str().unwrap();
    assert!(
        note.starts_with(&format!(
            "no relay will take it: this node refused relay 0 ({addr}): PinMismatch ({reason}). \
             The certificate of relay 0 does not match the fingerprint pinned in this node's \
             configuration (`fingerprint` in its `[[relays]]` table)"
        )),
        "{note}"
    );
    let id = id_of(&sent);
    kaz.proc
        .wait_line(&[
            "WARN",
            "message queued, but no relay will take it",
            &msg(&id),
        ])
        .await
        .unwrap();

    // The status says the link's refusal lasts, and why.
    let st = kaz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(
        st["relays"][0]["refused"],
        json!({"code": "PinMismatch", "reason": reason}),
        "{st}"
    );
    let out = kaz.cli(&["node-status"]).await.unwrap();
    assert!(
        out.stdout.contains(&format!(
            "lasting refusal PinMismatch): TLS: relay certificate {presented} does not match"
        )),
        "{out:?}"
    );

    // The fingerprint corrected, the message leaves.
    kaz.proc.kill9();
    drop(kaz);
    net.node_config("KAZ", addr);
    let mut kaz = net.start_node("KAZ").await.unwrap();
    kaz.proc.wait_line(&["accepted", &msg(&id)]).await.unwrap();
    relay.shutdown().await;
}

/// A relay stand-in holding the network's certificate that answers every node's `Hello`
/// with `code` and closes the connection with it, as a relay does at a log-in it refuses;
/// its address, and the task serving it.
fn refusing_relay(
    net: &Net,
    code: hotline_proto::frame::ErrorCode,
    detail: &'static str,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use hotline_proto::frame::{ErrorFrame, NodeToRelay, RelayToNode};
    let config = net.config();
    let identity = hotline_net::RelayIdentity::load(&config.cert, &config.key).unwrap();
    let endpoint = hotline_net::transport::server_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        &hotline_net::TransportLimits::default(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let Ok(conn) = incoming.await else { continue };
            if let Ok((send, recv)) = conn.accept_bi().await {
                let mut reader = hotline_net::FrameReader::new(recv);
                let mut writer = hotline_net::FrameWriter::new(send);
                if let Ok(Some(NodeToRelay::Hello(_))) = reader.read::<NodeToRelay>().await {
                    let error = RelayToNode::Error(ErrorFrame {
                        code,
                        detail: detail.into(),
                    });
                    let _ = writer.write(&error).await;
                }
            }
            conn.close(code.close_code().into(), detail.as_bytes());
        }
    });
    (addr, task)
}

/// Relays that refuse a node at log-in for its protocol version, or for a log-in proof they
/// cannot verify, refuse it at every attempt until a release changes. With every relay
/// refusing so, a message says no relay will take it, with what to do for each, rather
/// than that it waits for a relay to be reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_refusing_the_nodes_version_or_log_in_say_no_relay_will_take_it() {
    use hotline_proto::frame::ErrorCode;
    let net = net();
    let (version, version_task) = refusing_relay(
        &net,
        ErrorCode::UnsupportedVersion,
        "unsupported protocol version",
    );
    let (auth, auth_task) = refusing_relay(
        &net,
        ErrorCode::AuthFailed,
        "authentication proof: bad signature",
    );
    net.node_config_with(
        "KAZ",
        &NodeSetup {
            relays: vec![version, auth],
            ..NodeSetup::default()
        },
    );
    let mut kaz = net.start_node("KAZ").await.unwrap();
    for code in ["UnsupportedVersion", "AuthFailed"] {
        kaz.proc
            .wait_line(&[
                "ERROR",
                "refused, lastingly",
                &format!("code={code}"),
                &format!("closed by peer: {code}"),
            ])
            .await
            .unwrap();
    }

    let sent = send_blocked(&kaz, "Border incident").await;
    assert_eq!(
        sent["refused_by"],
        json!([
            {"relay": 0, "address": version.to_string(), "code": "UnsupportedVersion",
                "reason": "unsupported protocol version"},
            {"relay": 1, "address": auth.to_string(), "code": "AuthFailed",
                "reason": "authentication proof: bad signature"},
        ]),
        "{sent}"
    );
    let note = sent["note"].as_str().unwrap();
    for hint in [
        "This node and relay 0 speak different protocol versions: upgrade the older",
        "Relay 1 could not verify this node's log-in proof",
    ] {
        assert!(note.contains(hint), "{note}");
    }
    let st = kaz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(
        st["relays"][0]["refused"]["code"], "UnsupportedVersion",
        "{st}"
    );
    assert_eq!(st["relays"][1]["refused"]["code"], "AuthFailed", "{st}");
    version_task.abort();
    auth_task.abort();
}

/// Writes a relay configuration that serves `roster` pinned to `roster_key`.
fn relay_toml(dir: &Path, name: &str, roster: &str, roster_key: &PublicKey) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\ncert = \"relay.crt\"\nkey = \"relay.key\"\nroster = \"{roster}\"\nroster_key = \"{roster_key}\"\ndata_dir = \"relay-data\"\nmetrics_listen = \"\"\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roster_signed_by_another_key_is_refused() {
    let net = net();
    // The relay serves version 2 signed by key B; the node pins key A and holds version 1.
    let key_b = SigningKey::from_bytes(&[0xBB; 32]);
    let mut roster_b = net.roster.clone();
    roster_b.version = 2;
    let signed = Signed::sign(&roster_b, &key_b).unwrap();
    hotline_config::roster_file::write_signed_roster(&net.path().join("roster-b.signed"), &signed)
        .unwrap();
    let config = relay_toml(
        net.path(),
        "relay-b.toml",
        "roster-b.signed",
        &PublicKey::of(&key_b),
    );
    let relay = hotline_relay::Relay::spawn(hotline_relay::RelayConfig::load(&config).unwrap())
        .await
        .unwrap();

    net.node_config("KAZ", relay.local_addr());
    let mut kaz = net.start_node("KAZ").await.unwrap();
    let line = kaz.proc.wait_line(&["roster refused"]).await.unwrap();
    assert!(line.contains("version=1"), "{line}");
    assert!(
        line.contains(&format!(
            "signed by key {}, not by the pinned roster key",
            PublicKey::of(&key_b)
        )),
        "names the key that signed it: {line}"
    );
    kaz.connected().await.unwrap();
    let st = kaz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(st["roster_version"], 1, "kept the old roster: {st}");
    assert_eq!(
        kaz.proc.count_lines(&["roster installed"]),
        0,
        "{}",
        kaz.proc.log()
    );

    // After a restart the node still starts from the roster it trusts.
    kaz.proc.kill9();
    drop(kaz);
    let kaz = net.start_node("KAZ").await.unwrap();
    let st = kaz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(st["roster_version"], 1, "{st}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_roster_signed_by_the_pinned_key_is_installed() {
    // The control for the test above: the same paths install a validly signed roster, at
    // connection (welcome) and while connected (the relay reloads its roster).
    let mut net = net();
    std::fs::copy(
        net.path().join("roster.signed"),
        net.path().join("roster-v1.signed"),
    )
    .unwrap();
    net.update_roster(|r| r.participants[1].name = "Republic of Kazakhstan".into());
    let relay = net.relay().await;
    let events = net.path().join("roster-events.jsonl");
    net.node_config_with(
        "KAZ",
        &NodeSetup {
            roster: Some("roster-v1.signed".into()),
            hooks: Some(appending_hook("on_roster_changed", &events)),
            ..NodeSetup::relay(relay.local_addr())
        },
    );
    let mut kaz = net.start_node("KAZ").await.unwrap();
    let starting = kaz.proc.wait_log("node starting").await.unwrap();
    assert!(starting.contains("roster=1"), "{starting}");
    let line = kaz.proc.wait_line(&["roster installed"]).await.unwrap();
    assert!(
        line.contains("version=2") && line.contains("previous=1"),
        "{line}"
    );
    let st = kaz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(st["roster_version"], 2, "{st}");

    // TJK joins in version 3: unknown until the node has that roster.
    let out = kaz
        .cli(&["send", "--to", "TJK", "--subject", "welcome"])
        .await
        .unwrap();
    assert!(out.stderr.contains("unknown"), "{out:?}");
    let tjk = SigningKey::from_bytes(&[0x77; 32]);
    net.update_roster(|r| {
        r.participants.push(hotline_proto::Participant {
            id: pid("TJK"),
            name: "Republic of Tajikistan".into(),
            role: Role::Member,
            keys: vec![PublicKey::of(&tjk)],
            revoked: false,
        })
    });
    assert_eq!(relay.reload_roster().await.unwrap(), 3);
    let line = kaz
        .proc
        .wait_line(&["roster installed", "version=3"])
        .await
        .unwrap();
    assert!(line.contains("previous=2"), "{line}");
    let sent = kaz
        .cli_json(&["send", "--to", "TJK", "--subject", "welcome"])
        .await
        .unwrap();
    assert_eq!(sent["recipients"], json!(["TJK"]), "{sent}");

    kaz.proc
        .wait_lines_from(0, &["hook ran", "on_roster_changed"], 2)
        .await
        .unwrap();
    let text = std::fs::read_to_string(&events).unwrap();
    let versions: BTreeSet<u64> = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
            assert_eq!(v["type"], "roster_changed", "{v}");
            v["version"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(versions, BTreeSet::from([2, 3]), "{text}");
    relay.shutdown().await;
}

/// OPERATIONS.md 4.7 in the other order, nodes before relays: KAZ is reconfigured to a new
/// roster key B (its roster file the same draft signed by B at a higher version) while the
/// relay still serves key A's roster. The relay's roster is older than KAZ's, so it sends
/// none and KAZ has nothing to refuse; messages flow both ways with KGZ, still on key A.
/// A roster key A signs meanwhile is refused by KAZ (`roster refused`) and installed by KGZ,
/// and nothing stops. Once the relay moves to key B, KAZ installs key B's next roster and
/// KGZ refuses it, and both keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_moved_to_a_new_roster_key_before_its_relay_keeps_working() {
    let mut net = net();
    // A fixed address: the relay is restarted on the new key where the nodes look for it.
    let addr = free_udp_addr();
    net.set_relay_listen(addr);
    let relay = net.relay().await;
    let key_b = SigningKey::from_bytes(&[0xBB; 32]);
    let mut roster_b = net.roster.clone();
    roster_b.version = 5;
    hotline_config::roster_file::write_signed_roster(
        &net.path().join("roster-b.signed"),
        &Signed::sign(&roster_b, &key_b).unwrap(),
    )
    .unwrap();
    net.node_config_with(
        "KAZ",
        &NodeSetup {
            roster: Some("roster-b.signed".into()),
            roster_key: Some(PublicKey::of(&key_b)),
            ..NodeSetup::relay(addr)
        },
    );
    net.node_config("KGZ", addr);
    let mut kaz = net.start_node("KAZ").await.unwrap();
    let mut kgz = net.start_node("KGZ").await.unwrap();
    kaz.connected().await.unwrap();
    kgz.connected().await.unwrap();
    let st = kaz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(st["roster_version"], 5, "{st}");

    // Both ways, each node on its own key's roster.
    async fn flows(kaz: &mut NodeProc, kgz: &mut NodeProc, subject: &str) {
        let id = kaz.send("KGZ", subject, &[]).await.unwrap();
        kgz.proc
            .wait_line(&["message received", &msg(&id)])
            .await
            .unwrap();
        let id = kgz.send("KAZ", subject, &[]).await.unwrap();
        kaz.proc
            .wait_line(&["message received", &msg(&id)])
            .await
            .unwrap();
    }
    flows(&mut kaz, &mut kgz, "nodes first").await;
    assert_eq!(
        kaz.proc.count_lines(&["roster refused"]),
        0,
        "the relay's roster is older than KAZ's: it sends none\n{}",
        kaz.proc.log()
    );

    // Key A signs another roster meanwhile (version 2): KAZ refuses it and keeps version 5.
    net.update_roster(|r| r.participants[1].name = "Republic of Kazakhstan".into());
    assert_eq!(relay.reload_roster().await.unwrap(), 2);
    let line = kaz
        .proc
        .wait_line(&["roster refused", "relay update"])
        .await
        .unwrap();
    assert!(line.contains("version=5"), "{line}");
    kgz.proc
        .wait_line(&["roster installed", "version=2"])
        .await
        .unwrap();
    flows(&mut kaz, &mut kgz, "after key A's reload").await;
    let st = kaz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(st["roster_version"], 5, "{st}");

    // The relay moves to key B (4.7 step 2), with key B's roster at version 6.
    relay.shutdown().await;
    let text = std::fs::read_to_string(&net.relay_config).unwrap();
    let text = text.replace(
        &format!("roster_key = \"{}\"", PublicKey::of(&net.roster_key)),
        &format!("roster_key = \"{}\"", PublicKey::of(&key_b)),
    );
    std::fs::write(&net.relay_config, text).unwrap();
    net.roster_key = key_b;
    net.roster = roster_b;
    net.update_roster(|_| {});
    let relay = net.relay().await;
    let line = kaz
        .proc
        .wait_line(&["roster installed", "version=6"])
        .await
        .unwrap();
    assert!(line.contains("previous=5"), "{line}");
    let line = kgz
        .proc
        .wait_line(&["roster refused", "relay welcome"])
        .await
        .unwrap();
    assert!(line.contains("version=2"), "{line}");
    flows(&mut kaz, &mut kgz, "relay moved").await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_made_while_the_relay_is_down_reaches_the_sender() {
    let net = net();
    // A fixed address, so that the relay comes back where the nodes look for it.
    let addr = free_udp_addr();
    net.set_relay_listen(addr);
    let relay = net.relay().await;
    let (mut kaz, mut kgz) = net.two_nodes(addr).await.unwrap();
    let mut kaz_events = kaz.events().await.unwrap();
    let id = id_of(
        &kaz.cli_json(&["send", "--to", "KGZ", "--subject", "Please confirm"])
            .await
            .unwrap(),
    );
    kgz.proc
        .wait_line(&["message received", &msg(&id)])
        .await
        .unwrap();

    relay.shutdown().await;
    kgz.proc.wait_log("relay link lost").await.unwrap();
    let ack = kgz
        .cli_json(&["ack", &id, "--officer", "Duty officer"])
        .await
        .unwrap();
    assert_eq!(ack["relays_connected"], 0, "{ack}");
    let st = kgz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(
        st["relays"][0]["acks_pending"], 1,
        "the operator sees it waiting: {st}"
    );
    // The signed receipt waits in KGZ's store, through a crash.
    kgz.proc.kill9();
    drop(kgz);

    let relay = net.relay().await;
    assert_eq!(relay.local_addr(), addr);
    let kgz = net.start_node("KGZ").await.unwrap();
    acknowledgement_stored_by_the_relay(&kgz).await;
    let ev = kaz_events.wait_about("acknowledged", &id).await.unwrap();
    assert_eq!(ev["officer"], "Duty officer");
    kaz.proc
        .wait_line(&["acknowledged", &msg(&id), "by=KGZ"])
        .await
        .unwrap();
    // The state follows the receipt even if the relay went down before its acceptance
    // reached KAZ (KAZ then learns of it only when it offers the message again).
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(st["state"], "acknowledged", "{st}");
    let accepted = |e: &serde_json::Value| e["type"] == "accepted" && e["id"] == id.as_str();
    if !kaz_events.seen.iter().any(accepted) {
        kaz_events.wait_for("accepted", accepted).await.unwrap();
    }
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert!(st["accepted_at_ms"].is_u64(), "{st}");
    assert_eq!(st["state"], "acknowledged", "{st}");
    relay.shutdown().await;
}

/// A relay refuses submissions past a participant's rate (`RateLimited`, a refusal that
/// passes): the node offers each refused message again after a pause, so a burst past the
/// limit loses nothing and arrives in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_refused_for_the_senders_rate_are_offered_again_and_arrive() {
    // Four at once, through the API: one token, refilled at one a second.
    burst_past_a_budget_arrives("rate_per_sec = 1\nrate_burst = 1\n", 4, "").await;
}

/// A relay refuses submissions past a participant's byte budget (`RateLimited`, as past its
/// count): the node offers each refused message again after a pause, and once the budget
/// has refilled the relay accepts it, so large messages past the burst lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_refused_for_the_senders_byte_budget_are_offered_again_and_arrive() {
    // A burst of two 60 kB messages; the third waits about 3 s for the budget to refill.
    let body = "x".repeat(60_000);
    let limits = "byte_rate_per_sec = 16384\nbyte_rate_burst = 131072\n";
    burst_past_a_budget_arrives(limits, 3, &body).await;
}

/// KAZ sends `n` messages to KGZ at once through its API (bodies `body`) to a relay with
/// `limits` in its `[limits]` table: the relay refuses one or more `RateLimited`, which KAZ
/// is told will be retried, and KGZ receives every one of them, once.
async fn burst_past_a_budget_arrives(limits: &str, n: usize, body: &str) {
    let net = Net::sec_kaz_kgz_with(&format!("[limits]\n{limits}"));
    let relay = net.relay().await;
    let (kaz, kgz) = net.two_nodes(relay.local_addr()).await.unwrap();
    let mut kaz_events = kaz.events().await.unwrap();
    let mut kgz_events = kgz.events().await.unwrap();
    let token = kaz.token();
    let mut ids = Vec::new();
    for i in 0..n {
        let (status, answer) = http(
            kaz.api,
            "POST",
            "/v1/messages",
            Some(&token),
            &format!(r#"{{"to":["KGZ"],"subject":"burst {i}","body":"{body}"}}"#),
        )
        .await
        .unwrap();
        assert_eq!(status, 201, "{answer}");
        ids.push(id_of(&serde_json::from_str(&answer).unwrap()));
    }
    let refused = kaz_events
        .wait_for("rejected", |e| e["type"] == "rejected")
        .await
        .unwrap();
    assert_eq!(refused["code"], "RateLimited", "{refused}");
    assert_eq!(refused["retrying"], true, "{refused}");
    kgz_events
        .wait_for_each("message_received", &ids)
        .await
        .unwrap();
    let inbox = kgz.cli_json(&["inbox"]).await.unwrap();
    assert_eq!(inbox.as_array().unwrap().len(), n, "{inbox}");
    relay.shutdown().await;
}

/// The example with every commented-out option (`# name = value`, `# [table]`) switched on.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if is_option(rest) => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_option(line: &str) -> bool {
    let table = line.starts_with('[') && line.ends_with(']') && !line.contains(' ');
    let key = line.split_once(" = ").is_some_and(|(k, _)| {
        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    });
    table || key
}

#[test]
fn the_example_configurations_parse_with_and_without_their_optional_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("config");

    let path = root.join("relay.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = hotline_relay::RelayConfig::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listen.port(), 7400);
    let all = uncommented(&text);
    assert!(all.lines().count() == text.lines().count() && all != text);
    let c = hotline_relay::RelayConfig::parse(&all, &path).unwrap_or_else(|e| panic!("{e}\n{all}"));
    // The commented values are the defaults, as their comments say.
    let defaults = hotline_relay::config::Limits::default();
    assert_eq!(format!("{:?}", c.limits), format!("{defaults:?}"));
    assert_eq!(c.metrics_listen, Some("127.0.0.1:9400".parse().unwrap()));
    assert!(!c.policy.observers_may_address_anyone);
    for field in [
        "connections_max",
        "frame_bytes_max",
        "body_bytes_max",
        "queue_depth_max",
        "rate_per_sec",
        "rate_burst",
        "byte_rate_per_sec",
        "byte_rate_burst",
        "forward_foreign_max",
        "foreign_receipts_per_day_max",
        "handshake_timeout_ms",
        "idle_timeout_ms",
        "keepalive_ms",
        "inflight_per_connection",
        "delivery_window",
        "write_timeout_ms",
        "commit_batch_max",
        "observers_may_address_anyone",
        "metrics_listen",
    ] {
        assert!(
            text.contains(&format!("# {field} = ")),
            "relay.toml documents {field}"
        );
    }

    let path = root.join("node.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = hotline_node::NodeConfig::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.api_listen, hotline_node::config::DEFAULT_API);
    assert_eq!(c.relays.len(), 1);
    assert!(c.hooks.on_message.is_none());
    let all = uncommented(&text);
    let c = hotline_node::NodeConfig::parse(&all, &path).unwrap_or_else(|e| panic!("{e}\n{all}"));
    assert_eq!(c.relays.len(), 2);
    assert_eq!(c.api_listen, hotline_node::config::DEFAULT_API);
    assert_eq!(c.hook_timeout_ms(), hotline_node::limits::HOOK_TIMEOUT_MS);
    assert_eq!(
        c.unreachable_after_ms(),
        hotline_node::limits::UNREACHABLE_AFTER_MS
    );
    assert_eq!(
        c.paging_interval_ms(),
        hotline_node::limits::PAGING_INTERVAL_MS
    );
    let h = &c.hooks;
    assert!(
        h.on_message.is_some()
            && h.on_overdue.is_some()
            && h.on_unreachable.is_some()
            && h.on_roster_changed.is_some()
    );
}

/// KAZ and KGZ (members) and UN (an observer), with extra relay.toml lines.
fn with_observer(relay_toml: &str) -> Net {
    Net::with_relay_toml(
        &[
            ("SEC", Role::Secretariat),
            ("KAZ", Role::Member),
            ("KGZ", Role::Member),
            ("UN", Role::Observer),
        ],
        &[],
        relay_toml,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_observer_policy_decides_what_an_observer_may_send() {
    // A relay that lets observers address anyone: the observer's node must not refuse
    // locally what the relay allows.
    let net = with_observer("[policy]\nobservers_may_address_anyone = true\n");
    let relay = net.relay().await;
    net.node_config("UN", relay.local_addr());
    net.node_config("KAZ", relay.local_addr());
    let mut un = net.start_node("UN").await.unwrap();
    let mut kaz = net.start_node("KAZ").await.unwrap();
    un.connected().await.unwrap();
    kaz.connected().await.unwrap();
    let id = id_of(
        &un.cli_json(&["send", "--to", "KAZ", "--subject", "Offer of assistance"])
            .await
            .unwrap(),
    );
    kaz.proc
        .wait_line(&["message received", &msg(&id), "from=UN"])
        .await
        .unwrap();
    relay.shutdown().await;

    // Under the default policy the relay refuses it, and the sender's status says why.
    let net = with_observer("");
    let relay = net.relay().await;
    net.node_config("UN", relay.local_addr());
    let mut un = net.start_node("UN").await.unwrap();
    un.connected().await.unwrap();
    let out = un
        .cli(&[
            "send",
            "--to",
            "KAZ",
            "--subject",
            "Offer of assistance",
            "--json",
        ])
        .await
        .unwrap();
    let id = id_of(&out.json().unwrap());
    let line = un
        .proc
        .wait_line(&["relay refused a message", &msg(&id)])
        .await
        .unwrap();
    assert!(line.contains("retrying=false"), "{line}");
    let st = un.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(st["state"], "rejected", "{st}");
    assert_eq!(st["rejected"]["code"], "PolicyDenied", "{st}");
    // The text a duty officer reads says why too, not only the state.
    for cmd in ["status", "show"] {
        let text = un.cli(&[cmd, &id]).await.unwrap();
        assert!(text.status.success(), "{text:?}");
        assert!(
            text.stdout
                .contains("state: rejected  delivered 0/1  acknowledged 0/1  overdue 0\nrefused by the relay: PolicyDenied: UN may not address KAZ"),
            "hotline {cmd}: {}",
            text.stdout
        );
    }
    assert_eq!(un.cli_json(&["node-status"]).await.unwrap()["outbox"], 0);
    // Writing to the Secretariat is always allowed.
    let sent = un
        .cli_json(&["send", "--to", "SEC", "--subject", "Question"])
        .await
        .unwrap();
    un.proc
        .wait_line(&["accepted", &msg(&id_of(&sent))])
        .await
        .unwrap();
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_deliver_once_and_the_loss_of_one_loses_nothing() {
    let net = net();
    let relay_a = net.relay().await;
    // A second relay with its own store and the same certificate and roster.
    let text = std::fs::read_to_string(&net.relay_config).unwrap();
    let second = net.path().join("relay-2.toml");
    std::fs::write(&second, text.replace("relay-data", "relay-data-2")).unwrap();
    let relay_b = hotline_relay::Relay::spawn(hotline_relay::RelayConfig::load(&second).unwrap())
        .await
        .unwrap();
    let both = NodeSetup {
        relays: vec![relay_a.local_addr(), relay_b.local_addr()],
        ..NodeSetup::default()
    };
    net.node_config_with("KAZ", &both);
    net.node_config_with("KGZ", &both);
    let mut kaz = net.start_node("KAZ").await.unwrap();
    let mut kgz = net.start_node("KGZ").await.unwrap();
    kaz.proc
        .wait_lines_from(0, &["relay connected"], 2)
        .await
        .unwrap();
    kgz.proc
        .wait_lines_from(0, &["relay connected"], 2)
        .await
        .unwrap();
    let mut kaz_events = kaz.events().await.unwrap();

    let first = id_of(
        &kaz.cli_json(&["send", "--to", "KGZ", "--subject", "through both"])
            .await
            .unwrap(),
    );
    kaz.proc
        .wait_line(&["accepted", "relay=0", &msg(&first)])
        .await
        .unwrap();
    kaz.proc
        .wait_line(&["accepted", "relay=1", &msg(&first)])
        .await
        .unwrap();
    kaz_events.wait_about("delivered", &first).await.unwrap();
    // Both relays delivered it to KGZ: each stored a delivered receipt from KGZ (the only
    // participant that sends any here). KAZ's events do not show this: KAZ says "delivered"
    // once per recipient, however many relays forward KGZ's receipts.
    for relay in [&relay_a, &relay_b] {
        let maddr = relay
            .metrics_addr()
            .expect("metrics enabled in the test config");
        wait_metric(maddr, "hotline_relay_receipts_stored_total", |n| n >= 1.0)
            .await
            .unwrap();
    }
    assert_eq!(
        kgz.proc.count_lines(&["message received", &msg(&first)]),
        1,
        "shown once: {}",
        kgz.proc.log()
    );
    let inbox = kgz.cli_json(&["inbox"]).await.unwrap();
    assert_eq!(inbox.as_array().unwrap().len(), 1, "{inbox}");

    // Relay A goes away; everything still flows through relay B.
    relay_a.shutdown().await;
    kaz.proc
        .wait_line(&["relay link lost", "relay=0"])
        .await
        .unwrap();
    let second_id = id_of(
        &kaz.cli_json(&["send", "--to", "KGZ", "--subject", "through the survivor"])
            .await
            .unwrap(),
    );
    kgz.proc
        .wait_line(&["message received", &msg(&second_id)])
        .await
        .unwrap();
    kgz.cli_json(&["ack", &second_id, "--officer", "Night watch"])
        .await
        .unwrap();
    kaz_events
        .wait_about("acknowledged", &second_id)
        .await
        .unwrap();
    let st = kaz.cli_json(&["status", &second_id]).await.unwrap();
    assert_eq!(st["state"], "acknowledged", "{st}");
    let ns = kaz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(ns["relays_connected"], 1, "{ns}");
    assert_eq!(
        ns["outbox"], 1,
        "the message waits for relay A, which never took it: {ns}"
    );
    relay_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_flash_message_pages_again_until_acknowledged() {
    let net = net();
    let relay = net.relay().await;
    let pages = net.path().join("pages.jsonl");
    let hooks = appending_hook("on_message", &pages) + "\npaging_interval_ms = 1000";
    let (kaz, mut kgz) = net
        .two_nodes_kgz_hooks(relay.local_addr(), Some(hooks))
        .await
        .unwrap();

    let send = |subject: &'static str, precedence: &'static str| {
        let kaz = &kaz;
        async move {
            id_of(
                &kaz.cli_json(&[
                    "send",
                    "--to",
                    "KGZ",
                    "--precedence",
                    precedence,
                    "--subject",
                    subject,
                ])
                .await
                .unwrap(),
            )
        }
    };
    let flash = send("Incident at the border", "FLASH").await;
    let routine = send("Weekly report", "ROUTINE").await;
    kgz.proc
        .wait_line(&["urgent message received", &msg(&flash)])
        .await
        .unwrap();
    kgz.proc
        .wait_lines_from(0, &["paging again", &msg(&flash)], 2)
        .await
        .unwrap();
    kgz.proc
        .wait_lines_from(0, &["hook ran", "on_message"], 4)
        .await
        .unwrap();
    let text = std::fs::read_to_string(&pages).unwrap();
    let events: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let of = |id: &str, repage: bool| {
        events
            .iter()
            .filter(|e| e["id"] == id && e["repage"] == repage)
            .count()
    };
    assert!(
        events.iter().all(|e| e["type"] == "message_received"),
        "{text}"
    );
    assert_eq!(of(&flash, false), 1, "{text}");
    assert!(of(&flash, true) >= 2, "{text}");
    assert_eq!(of(&routine, false), 1, "{text}");
    assert_eq!(
        of(&routine, true),
        0,
        "routine traffic is not re-paged: {text}"
    );

    kgz.cli_json(&["ack", &flash, "--officer", "Duty officer"])
        .await
        .unwrap();
    // Every line logged before the acknowledgement is in by the time its own line is.
    kgz.proc
        .wait_line(&["acknowledged", &msg(&flash), "officer=\"Duty officer\""])
        .await
        .unwrap();
    let paged = kgz.proc.count_lines(&["paging again", &msg(&flash)]);
    // Another FLASH message pages twice more: time enough for the first to have paged again
    // if the acknowledgement had not stopped it.
    let after = kgz.proc.log_len();
    let flash2 = send("Second incident", "FLASH").await;
    kgz.proc
        .wait_lines_from(after, &["paging again", &msg(&flash2)], 2)
        .await
        .unwrap();
    assert_eq!(
        kgz.proc.count_lines(&["paging again", &msg(&flash)]),
        paged,
        "{}",
        kgz.proc.log()
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reachable_relay_runs_the_unreachable_hook() {
    let net = net();
    let out = net.path().join("unreachable.json");
    net.node_config_with(
        "KAZ",
        &NodeSetup {
            hooks: Some(format!(
                "on_unreachable = [\"sh\", \"-c\", \"cat > '{}'\"]\nunreachable_after_ms = 1000",
                out.display()
            )),
            ..NodeSetup::relay(free_udp_addr())
        },
    );
    let mut kaz = net.start_node("KAZ").await.unwrap();
    kaz.proc
        .wait_line(&["ERROR", "no relay reachable"])
        .await
        .unwrap();
    kaz.proc
        .wait_line(&["hook ran", "on_unreachable"])
        .await
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let ev: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_eq!(ev["type"], "unreachable", "{ev}");
    assert!(ev["for_ms"].as_u64().unwrap() >= 1000, "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_from_other_participants_cannot_forge_log_lines() {
    // Subjects and officers' names come from other participants; the human-readable log
    // must show them quoted, never as lines of their own.
    let net = net();
    let relay = net.relay().await;
    let (mut kaz, mut kgz) = net.two_nodes(relay.local_addr()).await.unwrap();
    let forged = "FORGED  INFO acknowledged msg=00000000000000000000000000000000 by=KGZ";
    let subject = format!("Routine report\n{forged}");
    let id = id_of(
        &kaz.cli_json(&["send", "--to", "KGZ", "--subject", &subject])
            .await
            .unwrap(),
    );
    kgz.proc
        .wait_line(&["message received", &msg(&id)])
        .await
        .unwrap();
    let officer = format!("Duty officer\n{forged}");
    kgz.cli_json(&["ack", &id, "--officer", &officer])
        .await
        .unwrap();
    kaz.proc
        .wait_line(&["acknowledged", &msg(&id), "by=KGZ"])
        .await
        .unwrap();
    // The API keeps the text as it was signed.
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(st["subject"], subject.as_str());
    assert_eq!(st["recipients"][0]["officer"], officer.as_str());
    for node in [&kaz, &kgz] {
        let log = node.proc.log();
        assert!(
            !log.lines().any(|l| l.starts_with("FORGED")),
            "{}:\n{log}",
            node.id
        );
    }
    relay.shutdown().await;
}

/// A FLASH alert from `sender` to KGZ alone, for an impostor relay to deliver.
fn flash_to_kgz(sender: &str, seq: u64, subject: &str, body: &str) -> hotline_proto::Envelope {
    use hotline_proto::{Audience, Kind, MessageId, Precedence, Seq, Status};
    hotline_proto::Envelope {
        version: hotline_proto::PROTOCOL_VERSION,
        id: MessageId::random(),
        sender: pid(sender),
        seq: Seq(seq),
        audience: Audience::Participants(vec![pid("KGZ")]),
        kind: Kind::Alert,
        precedence: Precedence::Flash,
        status: Status::Actual,
        created_at_ms: now_ms(),
        respond_by_ms: None,
        references: vec![],
        category: None,
        subject: subject.into(),
        body: body.into(),
    }
}

/// A relay that forges: the node, not the relay, is the last check. An impostor relay (it
/// holds the relay's certificate, as a compromised relay would) delivers to KGZ a message
/// whose bytes were altered after KAZ signed them, one signed by a key not on the roster
/// for KAZ, a genuine one addressed to SEC alone, and a genuine one for KGZ twice. KGZ shows
/// the genuine one for it once and none of the others, logs those as quarantined, and still
/// receipts all four (the forgeries by digest), so that an honest relay would stop
/// redelivering them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shows_nothing_a_forging_relay_delivers() {
    use hotline_proto::frame::{NodeToRelay, RelayToNode};
    use hotline_proto::{Audience, Envelope};

    let net = net();
    let (mut relay, mut kgz) = net.node_with_impostor("KGZ").await.unwrap();

    let envelope = |seq: u64, subject: &str| {
        flash_to_kgz("KAZ", seq, subject, "Exercise STEPPE-24 from 06:00Z.")
    };
    let kaz = net.key("KAZ");
    let genuine = Signed::sign(&envelope(1, "genuine"), &kaz).unwrap();
    // KAZ's signature over bytes that then say 16:00Z.
    let signed = Signed::sign(&envelope(2, "altered"), &kaz).unwrap();
    let mut bytes = signed.bytes().to_vec();
    let at = bytes
        .windows(5)
        .position(|w| w == b"06:00")
        .expect("the body is in the bytes");
    bytes[at] = b'1';
    let altered = Signed::<Envelope>::from_parts(bytes, signed.key(), signed.signature());
    let stranger = Signed::sign(
        &envelope(3, "unlisted key"),
        &SigningKey::from_bytes(&[9; 32]),
    )
    .unwrap();
    // KAZ's genuine message to SEC alone, delivered to KGZ.
    let mut to_sec = envelope(4, "misdirected");
    to_sec.audience = Audience::Participants(vec![pid("SEC")]);
    let misdirected = Signed::sign(&to_sec, &kaz).unwrap();
    relay
        .send(
            &[&genuine, &altered, &stranger, &misdirected, &genuine]
                .map(|s| RelayToNode::Deliver(s.clone())),
        )
        .await
        .unwrap();

    // KGZ's receipts, until every delivery is named.
    let mut named = std::collections::HashSet::new();
    let want: std::collections::HashSet<_> = [&genuine, &altered, &stranger, &misdirected]
        .iter()
        .map(|s| s.digest())
        .collect();
    while !want.is_subset(&named) {
        if let NodeToRelay::Receipt(r) = relay.next().await.unwrap() {
            let r = r.decode_unverified().unwrap();
            assert_eq!(r.kind, hotline_proto::ReceiptKind::Delivered);
            named.extend(r.items.iter().map(|i| i.digest));
        }
    }

    let inbox = kgz.cli_json(&["inbox"]).await.unwrap();
    let subjects: Vec<&str> = inbox
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["subject"].as_str())
        .collect();
    assert_eq!(subjects, vec!["genuine"], "{inbox}");
    kgz.proc
        .wait_line(&["urgent message received", "genuine"])
        .await
        .unwrap();
    kgz.proc
        .wait_lines_from(0, &["quarantined, not shown"], 3)
        .await
        .unwrap();
    kgz.proc
        .wait_line(&["quarantined, not shown", "not addressed to KGZ"])
        .await
        .unwrap();
    assert_eq!(
        kgz.proc.count_lines(&["urgent message received"]),
        1,
        "told once, of the genuine one only"
    );
    assert_eq!(kgz.proc.count_lines(&["message received"]), 1);
    assert_eq!(
        kgz.proc.count_lines(&["quarantined, not shown"]),
        3,
        "{}",
        kgz.proc.log()
    );
    relay.conn.close(0u32.into(), b"test done");
}

/// A delivery from a participant this node's roster does not list yet is quarantined, and
/// the operator can see it (`hotline inbox --quarantined`, its claim marked unverified); so
/// is a genuine one to a group the roster does not have yet. Once the roster that lists the
/// sender and the group (with this node in it) is installed, the node checks the quarantine
/// again and shows both, announced as received. One held for another reason (a bad
/// signature) stays. Restarted on that roster, the node does not check its quarantine again
/// (it records that it checked all of it against that roster): it walked the whole
/// quarantine at every start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_message_is_shown_once_a_roster_lists_its_sender() {
    use hotline_proto::frame::RelayToNode;

    let net = net();
    let (mut relay, mut kgz) = net.node_with_impostor("KGZ").await.unwrap();
    let mut events = kgz.events().await.unwrap();
    let tjk = SigningKey::from_bytes(&[0x7A; 32]);
    let envelope = |subject: &str| flash_to_kgz("TJK", 1, subject, "Flooding on the Vakhsh.");
    let early = Signed::sign(&envelope("from a new member"), &tjk).unwrap();
    let early_id = early.decode_unverified().unwrap().id;
    let forged = Signed::sign(&envelope("forged"), &SigningKey::from_bytes(&[9; 32])).unwrap();
    // KAZ's genuine message to a group that roster version 1 does not have.
    let mut to_group = flash_to_kgz("KAZ", 1, "to the border group", "Water levels.");
    to_group.audience = hotline_proto::Audience::Group("border".into());
    let to_group = Signed::sign(&to_group, &net.key("KAZ")).unwrap();
    let group_id = to_group.decode_unverified().unwrap().id;
    relay
        .send(&[
            RelayToNode::Deliver(early.clone()),
            RelayToNode::Deliver(forged),
            RelayToNode::Deliver(to_group),
        ])
        .await
        .unwrap();
    kgz.proc
        .wait_lines_from(0, &["quarantined, not shown"], 3)
        .await
        .unwrap();
    kgz.proc
        .wait_line(&["quarantined, not shown", "has no group", "border"])
        .await
        .unwrap();
    let held = kgz.cli_json(&["inbox", "--quarantined"]).await.unwrap();
    let held = held.as_array().unwrap();
    assert_eq!(held.len(), 3, "{held:?}");
    let claim = held
        .iter()
        .find(|q| q["digest"] == early.digest().to_string().as_str())
        .expect("the early message is held");
    assert_eq!(claim["unverified_claim"]["from"], "TJK", "{claim}");
    assert_eq!(
        claim["unverified_claim"]["subject"], "from a new member",
        "{claim}"
    );
    assert!(claim["reason"].as_str().unwrap().contains("TJK"), "{claim}");
    let text = kgz.cli(&["inbox", "--quarantined"]).await.unwrap();
    assert!(text.stdout.contains("UNVERIFIED"), "{}", text.stdout);
    // The list pages as the inbox does: after the second held, the third alone.
    let second = held[1]["digest"].as_str().unwrap();
    let rest = kgz
        .cli_json(&["inbox", "--quarantined", "--before", second])
        .await
        .unwrap();
    assert_eq!(rest.as_array().unwrap()[..], held[2..], "{rest}");
    let status = kgz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(status["quarantined"], 3, "{status}");
    assert!(kgz
        .cli_json(&["inbox"])
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .is_empty());

    // Roster version 2 lists TJK.
    let mut roster = net.roster.clone();
    roster.version = 2;
    roster.participants.push(hotline_proto::Participant {
        id: pid("TJK"),
        name: "Tajikistan".into(),
        role: Role::Member,
        keys: vec![PublicKey::of(&tjk)],
        revoked: false,
    });
    roster.groups.push(hotline_proto::Group {
        name: "border".into(),
        members: vec![pid("KAZ"), pid("KGZ")],
    });
    let signed = Signed::sign(&roster, &net.roster_key).unwrap();
    relay
        .send(&[RelayToNode::RosterUpdate(signed)])
        .await
        .unwrap();
    for id in [early_id, group_id] {
        kgz.proc
            .wait_line(&["released from quarantine", &id.to_string()])
            .await
            .unwrap();
    }
    let ev = events
        .wait_for("the released message", |e| {
            e["type"] == "message_received" && e["id"] == early_id.to_string().as_str()
        })
        .await
        .unwrap();
    assert_eq!(ev["from"], "TJK", "{ev}");
    let inbox = kgz.cli_json(&["inbox"]).await.unwrap();
    let subjects: Vec<&str> = inbox
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["subject"].as_str())
        .collect();
    assert_eq!(
        subjects.iter().collect::<BTreeSet<_>>(),
        ["from a new member", "to the border group"]
            .iter()
            .collect(),
        "{inbox}"
    );
    let held = kgz.cli_json(&["inbox", "--quarantined"]).await.unwrap();
    let held = held.as_array().unwrap();
    assert_eq!(held.len(), 1, "the forgery stays: {held:?}");
    let status = kgz.cli(&["node-status"]).await.unwrap().stdout;
    assert!(
        status.contains("quarantined 1 (hotline inbox --quarantined)"),
        "{status}"
    );
    assert_eq!(held[0]["unverified_claim"]["subject"], "forged");
    relay.conn.close(0u32.into(), b"test done");
    drop(relay);

    let walked = [
        "quarantine checked against the roster now in force",
        "roster=2",
    ];
    kgz.proc.wait_line(&walked).await.unwrap();
    kgz.proc.signal("TERM").unwrap();
    let (st, _) = kgz.proc.wait_exit(EVENT_TIMEOUT).await.unwrap();
    assert!(st.success(), "{st}");
    let mut kgz = net.start_node("KGZ").await.unwrap();
    kgz.proc
        .wait_line(&[
            "the quarantine was checked in full against this roster",
            "roster=2",
        ])
        .await
        .unwrap();
    assert_eq!(kgz.proc.count_lines(&walked[..1]), 0, "{}", kgz.proc.log());
    let held = kgz.cli_json(&["inbox", "--quarantined"]).await.unwrap();
    assert_eq!(held.as_array().unwrap().len(), 1, "{held}");
}

/// A relay's last frame (`Error`, as at its shutdown) can arrive in the same read as
/// deliveries written before it: the node still stores those, and then ends the link as
/// the frame says (rather than drop them for the relay to deliver again). Fifty deliveries
/// and the frame in one write, so that the node reads the frame in a batch with some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_read_with_the_relays_closing_frame_are_kept() {
    use hotline_proto::frame::{ErrorCode, ErrorFrame, RelayToNode};

    let net = net();
    let (mut relay, mut kgz) = net.node_with_impostor("KGZ").await.unwrap();
    let mut events = kgz.events().await.unwrap();
    let mut frames = Vec::new();
    let mut ids = Vec::new();
    for seq in 1..=50 {
        let env = flash_to_kgz(
            "KAZ",
            seq,
            &format!("Before the relay goes, {seq}"),
            "Body.",
        );
        ids.push(env.id.to_string());
        frames.push(RelayToNode::Deliver(
            Signed::sign(&env, &net.key("KAZ")).unwrap(),
        ));
    }
    frames.push(RelayToNode::Error(ErrorFrame {
        code: ErrorCode::GoingAway,
        detail: "relay shutting down".into(),
    }));
    relay.send(&frames).await.unwrap();
    let line = kgz.proc.wait_line(&["relay link lost"]).await.unwrap();
    assert!(line.contains("GoingAway"), "{line}");
    events
        .wait_for_each("message_received", &ids)
        .await
        .unwrap();
    let inbox = kgz.cli_json(&["inbox"]).await.unwrap();
    assert_eq!(inbox.as_array().unwrap().len(), ids.len(), "{inbox}");
    relay.conn.close(0u32.into(), b"test done");
}

/// A link can fail right after frames it has read: here a frame the node cannot decode
/// follows a hundred deliveries and the acceptance of the node's message, all in one write,
/// as a connection lost or closed at once (`Revoked`) follows what the relay wrote before.
/// The node still takes what it read first, as it does before a closing `Error` frame: it
/// stores the deliveries and records the acceptance, then ends the link. It dropped the
/// whole batch read with the failure, so its officer saw the message as queued, not
/// accepted, for as long as that relay did not come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_read_before_a_link_fails_are_taken() {
    use hotline_proto::frame::{Accepted, NodeToRelay, RelayToNode};

    let net = net();
    let (mut relay, mut kgz) = net.node_with_impostor("KGZ").await.unwrap();
    let mut events = kgz.events().await.unwrap();
    let id = kgz
        .send("KAZ", "Answered just before the link fails", &[])
        .await
        .unwrap();
    let submitted = loop {
        if let NodeToRelay::Submit(s) = relay.next().await.unwrap() {
            break s.decode_unverified().unwrap().id;
        }
    };
    assert_eq!(submitted.to_string(), id);
    let mut frames = Vec::new();
    let mut ids = Vec::new();
    for seq in 1..=100 {
        let env = flash_to_kgz("KAZ", seq, &format!("Before the failure, {seq}"), "Body.");
        ids.push(env.id.to_string());
        frames.push(RelayToNode::Deliver(
            Signed::sign(&env, &net.key("KAZ")).unwrap(),
        ));
    }
    frames.push(RelayToNode::Accepted(Accepted {
        id: submitted,
        recipients: vec![pid("KAZ")],
        accepted_at_ms: now_ms(),
    }));
    let mut buf = Vec::new();
    for f in &frames {
        buf.extend(hotline_proto::frame::encode_frame(f).unwrap());
    }
    // A frame of 16 bytes that decode as nothing.
    buf.extend(16u32.to_le_bytes());
    buf.extend([0xFF; 16]);
    relay.writer.write_raw(&buf).await.unwrap();

    let lost = kgz.proc.wait_line(&["relay link lost"]).await.unwrap();
    assert!(lost.contains("decode"), "{lost}");
    // The acceptance, and each delivery, in whatever order they are told.
    let mut waiting: BTreeSet<(String, String)> = ids
        .iter()
        .map(|m| ("message_received".to_owned(), m.clone()))
        .collect();
    waiting.insert(("accepted".to_owned(), id.clone()));
    let what = "accepted and message_received";
    events
        .wait_for(what, |e| {
            let told = (e["type"].as_str(), e["id"].as_str());
            if let (Some(t), Some(m)) = told {
                waiting.remove(&(t.to_owned(), m.to_owned()));
            }
            waiting.is_empty()
        })
        .await
        .unwrap();
    let shown = kgz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(shown["state"], "accepted", "{shown}");
    relay.conn.close(0u32.into(), b"test done");
}

/// The quarantine is bounded (`quarantine_max_bytes`): once full, a delivery failing its
/// checks is neither stored nor receipted, so the relay keeps it; the operator sees the
/// quarantine full, discards what is held (`hotline discard`, by the digest's start), and the
/// next delivery of the refused one is held and receipted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_quarantine_leaves_what_it_refuses_with_the_relay() {
    use hotline_proto::frame::{NodeToRelay, RelayToNode};

    let net = net();
    let setup = NodeSetup {
        quarantine_max_bytes: Some(1),
        ..NodeSetup::default()
    };
    let (mut relay, mut kgz) = net.node_with_impostor_setup("KGZ", setup).await.unwrap();
    let forger = SigningKey::from_bytes(&[9; 32]);
    let forged =
        |subject: &str| Signed::sign(&flash_to_kgz("KAZ", 1, subject, "Forged."), &forger).unwrap();
    let (first, second) = (forged("first forgery"), forged("second forgery"));
    relay
        .send(&[RelayToNode::Deliver(first.clone())])
        .await
        .unwrap();
    let receipted = |r: &NodeToRelay| match r {
        NodeToRelay::Receipt(r) => r
            .decode_unverified()
            .unwrap()
            .items
            .iter()
            .map(|i| i.digest)
            .collect(),
        _ => Vec::new(),
    };
    assert_eq!(
        receipted(&relay.next().await.unwrap()),
        vec![first.digest()]
    );
    relay
        .send(&[RelayToNode::Deliver(second.clone())])
        .await
        .unwrap();
    kgz.proc
        .wait_line(&["quarantine full", "refused=1"])
        .await
        .unwrap();
    let status = kgz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(status["quarantined"], 1, "{status}");
    assert_eq!(status["quarantine_full"], true, "{status}");
    let text = kgz.cli(&["node-status"]).await.unwrap().stdout;
    assert!(text.contains("quarantined 1 FULL"), "{text}");
    // Operators following the event stream see the link connected anew as any other
    // link lost and made again: `relay_down`, then `relay_up`.
    let mut events = kgz.events().await.unwrap();

    let unknown = kgz
        .cli(&["discard", "abcdef", "--officer", "Duty officer"])
        .await
        .unwrap();
    assert!(!unknown.status.success());
    assert!(
        unknown
            .stderr
            .contains("no quarantined delivery's digest starts with abcdef"),
        "{}",
        unknown.stderr
    );
    let prefix = first.digest().to_string()[..16].to_owned();
    let done = kgz
        .cli_json(&["discard", &prefix, "--officer", "Duty officer"])
        .await
        .unwrap();
    assert_eq!(
        done["digest"],
        first.digest().to_string().as_str(),
        "{done}"
    );
    kgz.proc
        .wait_line(&["quarantined delivery discarded", "Duty officer"])
        .await
        .unwrap();
    let status = kgz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(
        (&status["quarantined"], &status["quarantine_full"]),
        (&0.into(), &false.into()),
        "{status}"
    );

    // The quarantine has room again: the node connects anew, as a relay delivers what is
    // not receipted only on a new connection. It delivers the refused one again: held now,
    // and receipted. Every receipt until then named the first forgery only.
    kgz.proc
        .wait_line(&["the quarantine has room again", "refused=1"])
        .await
        .unwrap();
    let mut relay = relay.next_connection().await.unwrap();
    let down = events
        .wait_for("relay_down", |e| e["type"] == "relay_down")
        .await
        .unwrap();
    assert_eq!(down["relay"], 0, "{down}");
    assert!(
        down["error"].as_str().unwrap().contains("full quarantine"),
        "{down}"
    );
    events
        .wait_for("relay_up", |e| e["type"] == "relay_up")
        .await
        .unwrap();
    let status = kgz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(status["relays"][0]["connected"], true, "{status}");
    relay
        .send(&[RelayToNode::Deliver(second.clone())])
        .await
        .unwrap();
    loop {
        let named = receipted(&relay.next().await.unwrap());
        if named.contains(&second.digest()) {
            break;
        }
        assert!(named.iter().all(|d| *d == first.digest()), "{named:?}");
    }
    let held = kgz.cli_json(&["inbox", "--quarantined"]).await.unwrap();
    let subjects: Vec<&serde_json::Value> = held
        .as_array()
        .unwrap()
        .iter()
        .map(|q| &q["unverified_claim"]["subject"])
        .collect();
    assert_eq!(subjects, vec!["second forgery"], "{held}");
    // Emptied at once.
    let done = kgz
        .cli_json(&["discard", "--all", "--officer", "Duty officer"])
        .await
        .unwrap();
    assert_eq!(done["discarded"], 1, "{done}");
    let status = kgz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(status["quarantined"], 0, "{status}");
    relay.conn.close(0u32.into(), b"test done");
}

/// What [`kaz_holds_receipts_from_tjk`] leaves KAZ holding.
struct HeldFromTjk {
    /// KAZ's message to KGZ.
    id: String,
    /// TJK's key, on no roster KAZ has.
    tjk: SigningKey,
    /// TJK's delivered receipt for `id`, signed with `tjk`.
    genuine: Signed<hotline_proto::Receipt>,
}

/// KAZ sends KGZ a message, which the impostor `relay` accepts, and then forwards two
/// delivered receipts for it "from" TJK, a participant on no roster KAZ has: one signed
/// with TJK's key (`genuine`), and the same a millisecond later signed with another key.
/// Asserts that KAZ confirms both to the relay as stored, and counts neither yet.
async fn kaz_holds_receipts_from_tjk(relay: &mut Impostor, kaz: &mut NodeProc) -> HeldFromTjk {
    use hotline_proto::frame::{Accepted, NodeToRelay, RelayToNode};
    use hotline_proto::{Receipt, ReceiptItem, ReceiptKind};

    let id = kaz.send("KGZ", "Please confirm", &[]).await.unwrap();
    let submitted = loop {
        if let NodeToRelay::Submit(s) = relay.next().await.unwrap() {
            break s;
        }
    };
    let env = submitted.decode_unverified().unwrap();
    relay
        .send(&[RelayToNode::Accepted(Accepted {
            id: env.id,
            recipients: vec![pid("KGZ")],
            accepted_at_ms: now_ms(),
        })])
        .await
        .unwrap();
    kaz.proc.wait_line(&["INFO accepted", &id]).await.unwrap();

    let tjk = SigningKey::from_bytes(&[0x7A; 32]);
    let receipt = Receipt {
        version: hotline_proto::PROTOCOL_VERSION,
        recipient: pid("TJK"),
        kind: ReceiptKind::Delivered,
        created_at_ms: now_ms(),
        items: vec![ReceiptItem {
            id: env.id,
            sender: pid("KAZ"),
            digest: submitted.digest(),
        }],
    };
    let genuine = Signed::sign(&receipt, &tjk).unwrap();
    let mut other = receipt.clone();
    other.created_at_ms += 1;
    let other_key = Signed::sign(&other, &SigningKey::from_bytes(&[9; 32])).unwrap();
    relay
        .send(&[
            RelayToNode::Receipt(genuine.clone()),
            RelayToNode::Receipt(other_key.clone()),
        ])
        .await
        .unwrap();
    let confirmed = loop {
        if let NodeToRelay::ReceiptsStored(d) = relay.next().await.unwrap() {
            break d;
        }
    };
    assert_eq!(confirmed, vec![genuine.digest(), other_key.digest()]);
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(st["delivered"].as_u64(), Some(0), "not yet: {st}");
    HeldFromTjk { id, tjk, genuine }
}

/// A receipt from a participant that only a roster newer than the sender's lists (the
/// relay's roster is ahead: this node refused or has not yet installed the newer one) is
/// held, not discarded, and still confirmed to the relay; once the node installs the roster
/// that lists the participant's key, the receipt verifies and is recorded as if it had just
/// arrived: an event, and the delivery counted. A receipt "from" that participant signed by
/// another key stays held (it never verifies), and the operator is told of it nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_from_a_participant_on_a_newer_roster_counts_once_that_roster_is_installed() {
    use hotline_proto::frame::RelayToNode;

    let net = net();
    let (mut relay, mut kaz) = net.node_with_impostor("KAZ").await.unwrap();
    let mut events = kaz.events().await.unwrap();
    // TJK is on the relay's roster (version 2), not yet on KAZ's (version 1).
    let HeldFromTjk { id, tjk, genuine } = kaz_holds_receipts_from_tjk(&mut relay, &mut kaz).await;

    let mut roster = net.roster.clone();
    roster.version = 2;
    roster.participants.push(hotline_proto::Participant {
        id: pid("TJK"),
        name: "Tajikistan".into(),
        role: Role::Member,
        keys: vec![PublicKey::of(&tjk)],
        revoked: false,
    });
    let signed = Signed::sign(&roster, &net.roster_key).unwrap();
    relay
        .send(&[RelayToNode::RosterUpdate(signed)])
        .await
        .unwrap();
    let ev = events
        .wait_for("delivered by TJK", |e| {
            e["type"] == "delivered" && e["id"] == id.as_str() && e["by"] == "TJK"
        })
        .await
        .unwrap();
    assert_eq!(ev["status"], "actual", "{ev}");
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(st["delivered"].as_u64(), Some(1), "{st}");
    kaz.proc
        .wait_line(&[
            "held forwarded receipt verifies",
            &genuine.digest().to_string(),
        ])
        .await
        .unwrap();
    assert_eq!(
        kaz.proc.count_lines(&["held forwarded receipt verifies"]),
        1,
        "the one signed by another key stays held: {}",
        kaz.proc.log()
    );
    relay.conn.close(0u32.into(), b"test done");
}

/// The same held receipt, with the newer roster coming in at the node's start instead of
/// from a relay: the node holds TJK's receipt (TJK is on no roster it has), is stopped, its
/// roster file replaced by the version that lists TJK, and started again. At start it checks
/// what it holds against the roster it starts on: the receipt is recorded (the delivery
/// counted, a `delivered` event for `hotline watch` started after the node), the one signed
/// by another key stays held, and a further start counts nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_receipt_counts_at_the_start_on_a_roster_that_lists_its_signer() {
    let mut net = net();
    let (mut relay, mut kaz) = net.node_with_impostor("KAZ").await.unwrap();
    let HeldFromTjk { id, tjk, genuine } = kaz_holds_receipts_from_tjk(&mut relay, &mut kaz).await;

    // Stopped; the relay gone with it, so that only the start can bring the roster.
    relay.conn.close(0u32.into(), b"test done");
    drop(relay);
    kaz.proc.signal("TERM").unwrap();
    let (st, _) = kaz.proc.wait_exit(EVENT_TIMEOUT).await.unwrap();
    assert!(st.success(), "{st}");
    net.update_roster(|r| {
        r.participants.push(hotline_proto::Participant {
            id: pid("TJK"),
            name: "Tajikistan".into(),
            role: Role::Member,
            keys: vec![PublicKey::of(&tjk)],
            revoked: false,
        })
    });

    let mut kaz = net.start_node("KAZ").await.unwrap();
    let mut events = kaz.events().await.unwrap();
    let ev = events
        .wait_for("delivered by TJK", |e| {
            e["type"] == "delivered" && e["id"] == id.as_str() && e["by"] == "TJK"
        })
        .await
        .unwrap();
    assert_eq!(ev["status"], "actual", "{ev}");
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(st["delivered"].as_u64(), Some(1), "{st}");
    let ns = kaz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(ns["roster_version"], 2, "{ns}");
    kaz.proc
        .wait_line(&[
            "held forwarded receipt verifies",
            &genuine.digest().to_string(),
        ])
        .await
        .unwrap();
    assert_eq!(
        kaz.proc.count_lines(&["held forwarded receipt"]),
        1,
        "the one signed by another key stays held, neither recorded nor dropped: {}",
        kaz.proc.log()
    );

    // Counted once: a further start (whose check is done before its API listens) finds
    // nothing to record.
    kaz.proc.signal("TERM").unwrap();
    let (st, _) = kaz.proc.wait_exit(EVENT_TIMEOUT).await.unwrap();
    assert!(st.success(), "{st}");
    let kaz = net.start_node("KAZ").await.unwrap();
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(st["delivered"].as_u64(), Some(1), "{st}");
    assert_eq!(
        kaz.proc.count_lines(&["held forwarded receipt verifies"]),
        0,
        "{}",
        kaz.proc.log()
    );
}

/// A relay that forges receipts: the sender's node checks every receipt itself, so an
/// operator is never told "delivered" or "acknowledged" on a forgery. An impostor relay
/// accepts KAZ's message for KGZ, then forwards a delivered receipt "from KGZ" signed by a
/// key not on the roster and an acknowledgement from KGZ whose bytes were altered after
/// signing: KAZ records neither (status delivered 0, acknowledged 0), nor a receipt KGZ did
/// sign that names other content under the message's id, and told of that receipt once
/// however many KGZ signs with other digests. Then KGZ's genuine delivered
/// receipt: delivered 1. An `Accepted` for a message KAZ never sent is ignored,
/// and one repeated is told once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_believes_no_receipt_a_forging_relay_forwards() {
    use hotline_proto::frame::{Accepted, NodeToRelay, RelayToNode};
    use hotline_proto::{Receipt, ReceiptItem, ReceiptKind};

    let net = net();
    let (mut relay, mut kaz) = net.node_with_impostor("KAZ").await.unwrap();
    let mut events = kaz.events().await.unwrap();
    let id = kaz.send("KGZ", "Please confirm", &[]).await.unwrap();
    let submitted = loop {
        if let NodeToRelay::Submit(s) = relay.next().await.unwrap() {
            break s;
        }
    };
    let env = submitted.decode_unverified().unwrap();
    assert_eq!(env.id.to_string(), id);
    // An answer for a message KAZ never sent is ignored; then the real one, twice.
    let stray = hotline_proto::MessageId::random();
    let accepted = |id| {
        RelayToNode::Accepted(Accepted {
            id,
            recipients: vec![pid("KGZ")],
            accepted_at_ms: now_ms(),
        })
    };
    relay
        .send(&[accepted(stray), accepted(env.id), accepted(env.id)])
        .await
        .unwrap();
    kaz.proc
        .wait_line(&["never sent; ignored", &stray.to_string()])
        .await
        .unwrap();
    kaz.proc.wait_line(&["INFO accepted", &id]).await.unwrap();

    let receipt = |kind: ReceiptKind| Receipt {
        version: hotline_proto::PROTOCOL_VERSION,
        recipient: pid("KGZ"),
        kind,
        created_at_ms: now_ms(),
        items: vec![ReceiptItem {
            id: env.id,
            sender: pid("KAZ"),
            digest: submitted.digest(),
        }],
    };
    let unlisted = Signed::sign(
        &receipt(ReceiptKind::Delivered),
        &SigningKey::from_bytes(&[9; 32]),
    )
    .unwrap();
    let ack = Signed::sign(
        &receipt(ReceiptKind::Acknowledged {
            officer: "Duty officer".into(),
            note: Some("ok".into()),
        }),
        &net.key("KGZ"),
    )
    .unwrap();
    let mut bytes = ack.bytes().to_vec();
    let at = bytes
        .windows(2)
        .position(|w| w == b"ok")
        .expect("the note is in the bytes");
    bytes[at] = b'n';
    let altered = Signed::from_parts(bytes, ack.key(), ack.signature());
    relay
        .send(&[
            RelayToNode::Receipt(unlisted),
            RelayToNode::Receipt(altered),
        ])
        .await
        .unwrap();
    kaz.proc
        .wait_lines_from(0, &["forwarded receipt failed verification"], 2)
        .await
        .unwrap();
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(
        (st["delivered"].as_u64(), st["acknowledged"].as_u64()),
        (Some(0), Some(0)),
        "{st}"
    );

    // KGZ's own signature over a receipt of other content under KAZ's id (what KGZ would
    // send for an altered copy it quarantined): not recorded either.
    let mut other = receipt(ReceiptKind::Delivered);
    other.items[0].digest = hotline_proto::Digest([7; 32]);
    let other = Signed::sign(&other, &net.key("KGZ")).unwrap();
    relay.send(&[RelayToNode::Receipt(other)]).await.unwrap();
    let mismatch = ["content other than what this node sent", id.as_str()];
    kaz.proc.wait_line(&mismatch).await.unwrap();
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(st["delivered"].as_u64(), Some(0), "{st}");
    // Another such receipt from KGZ, with another made-up digest, is neither kept nor told
    // again: one per message and signer. A receipt naming a message KAZ never sent follows
    // it, so its warning comes after any line the other would have been logged with.
    let mut again = receipt(ReceiptKind::Delivered);
    again.items[0].digest = hotline_proto::Digest([8; 32]);
    let mut stray_receipt = receipt(ReceiptKind::Delivered);
    stray_receipt.items[0].id = stray;
    let skip = kaz.proc.count_lines(&[]);
    relay
        .send(
            &[again, stray_receipt]
                .map(|r| RelayToNode::Receipt(Signed::sign(&r, &net.key("KGZ")).unwrap())),
        )
        .await
        .unwrap();
    kaz.proc
        .wait_line_from(skip, &["names no message this node sent"])
        .await
        .unwrap();
    assert_eq!(kaz.proc.count_lines(&mismatch), 1);

    let genuine = Signed::sign(&receipt(ReceiptKind::Delivered), &net.key("KGZ")).unwrap();
    relay.send(&[RelayToNode::Receipt(genuine)]).await.unwrap();
    let ev = events
        .wait_for("delivered", |e| e["type"] == "delivered")
        .await
        .unwrap();
    assert_eq!(
        (ev["id"].as_str(), ev["by"].as_str()),
        (Some(id.as_str()), Some("KGZ"))
    );
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(
        (st["delivered"].as_u64(), st["acknowledged"].as_u64()),
        (Some(1), Some(0)),
        "{st}"
    );
    assert!(
        !events.seen.iter().any(|e| e["type"] == "acknowledged"),
        "{:?}",
        events.seen
    );
    let accepted: Vec<_> = events
        .seen
        .iter()
        .filter(|e| e["type"] == "accepted")
        .map(|e| e["id"].as_str())
        .collect();
    assert_eq!(
        accepted,
        vec![Some(id.as_str())],
        "told once, of its own message"
    );
    relay.conn.close(0u32.into(), b"test done");
}

/// A node writes at most a page of its outbox (`OUTBOX_PAGE`, 256) unanswered, the rest as
/// the relay answers: what the relay reads ahead while its own write waits is a page, and
/// after an outage a page of the largest messages is 20 MB. (Each pass wrote a page more,
/// whatever was answered: each message composed, each acknowledgement answered.) KAZ
/// composes 300 messages to an impostor that answers none of them; once it answers the
/// first, and then forwards a receipt that KAZ confirms (`ReceiptsStored`, written after
/// whatever that pass wrote), KAZ has written 257.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_writes_at_most_a_page_of_its_outbox_unanswered() {
    use hotline_proto::frame::{Accepted, NodeToRelay, RelayToNode};
    use hotline_proto::{Receipt, ReceiptKind};

    const COMPOSED: usize = 300;
    let net = net();
    let (mut relay, mut kaz) = net.node_with_impostor("KAZ").await.unwrap();
    let client = kaz.client();
    tokio::task::spawn_blocking(move || {
        for i in 0..COMPOSED {
            let body = json!({"to": ["KGZ"], "subject": format!("outbox {i}")});
            client.post("/v1/messages", &body).unwrap();
        }
    })
    .await
    .unwrap();
    let mut written = Vec::new();
    while written.len() < 256 {
        if let NodeToRelay::Submit(s) = relay.next().await.unwrap() {
            written.push(s.decode_unverified().unwrap());
        }
    }
    let first = written.iter().min_by_key(|e| e.seq.0).unwrap().id;
    let bogus = Signed::sign(
        &Receipt {
            version: hotline_proto::PROTOCOL_VERSION,
            recipient: pid("KGZ"),
            kind: ReceiptKind::Delivered,
            created_at_ms: now_ms(),
            items: vec![hotline_proto::ReceiptItem {
                id: first,
                sender: pid("KAZ"),
                digest: hotline_proto::Digest([7; 32]),
            }],
        },
        &SigningKey::from_bytes(&[9; 32]),
    )
    .unwrap();
    relay
        .send(&[RelayToNode::Accepted(Accepted {
            id: first,
            recipients: vec![pid("KGZ")],
            accepted_at_ms: now_ms(),
        })])
        .await
        .unwrap();
    kaz.proc
        .wait_line(&["INFO accepted", &first.to_string()])
        .await
        .unwrap();
    relay.send(&[RelayToNode::Receipt(bogus)]).await.unwrap();
    loop {
        match relay.next().await.unwrap() {
            NodeToRelay::Submit(s) => written.push(s.decode_unverified().unwrap()),
            NodeToRelay::ReceiptsStored(_) => break,
            _ => {}
        }
    }
    let ids: std::collections::HashSet<_> = written.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), written.len(), "none written twice");
    assert_eq!(
        written.len(),
        257,
        "a page unanswered, then one for the one answered"
    );
    relay.conn.close(0u32.into(), b"test done");
}

/// A relay that names recipients who are not participants (a lying or broken relay): the
/// sender's node records only those its roster lists, and never itself, so that no name the
/// relay made up shows as a recipient never delivered, to be escalated as overdue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_records_no_recipient_its_roster_does_not_list() {
    use hotline_proto::frame::{Accepted, NodeToRelay, RelayToNode};

    let net = net();
    let (mut relay, mut kaz) = net.node_with_impostor("KAZ").await.unwrap();
    let id = kaz.send("KGZ", "Please confirm", &[]).await.unwrap();
    let submitted = loop {
        if let NodeToRelay::Submit(s) = relay.next().await.unwrap() {
            break s;
        }
    };
    let env = submitted.decode_unverified().unwrap();
    relay
        .send(&[RelayToNode::Accepted(Accepted {
            id: env.id,
            recipients: vec![pid("KAZ"), pid("KGZ"), pid("ZZZ")],
            accepted_at_ms: now_ms(),
        })])
        .await
        .unwrap();
    let line = kaz.proc.wait_line(&["INFO accepted", &id]).await.unwrap();
    assert!(line.contains("recipients=1"), "{line}");
    let line = kaz
        .proc
        .wait_line(&["does not list as participants", &id])
        .await
        .unwrap();
    assert!(line.contains("unlisted=KAZ,ZZZ"), "{line}");
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(st["total"], 1, "{st}");
    let named: Vec<&serde_json::Value> = st["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["recipient"])
        .collect();
    assert_eq!(named, vec!["KGZ"], "{st}");
    relay.conn.close(0u32.into(), b"test done");
}

/// A refusal answers one `Submit` written on the connection, as an acceptance does. One
/// naming a message the node never sent, or one it has had its answer for, is ignored as
/// such an acceptance is: the node's officer is not told that a message was refused that
/// does not exist or that the relay accepted. The node told both, as `rejected` events, and
/// logged them as refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_no_message_written_on_the_link_is_ignored() {
    use hotline_proto::frame::{Accepted, NodeToRelay, RejectCode, Rejected, RelayToNode, Subject};

    let net = net();
    let (mut relay, mut kaz) = net.node_with_impostor("KAZ").await.unwrap();
    let mut events = kaz.events().await.unwrap();
    async fn submitted(relay: &mut Impostor) -> hotline_proto::MessageId {
        loop {
            if let NodeToRelay::Submit(s) = relay.next().await.unwrap() {
                break s.decode_unverified().unwrap().id;
            }
        }
    }
    let accepted_id = kaz
        .send("KGZ", "Accepted, then refused", &[])
        .await
        .unwrap();
    let first = submitted(&mut relay).await;
    assert_eq!(first.to_string(), accepted_id);
    let refused = |id, code| {
        RelayToNode::Rejected(Rejected {
            subject: Subject::Message(id),
            code,
            detail: "no".into(),
        })
    };
    let stray = hotline_proto::MessageId::random();
    let frames = [
        refused(stray, RejectCode::PolicyDenied),
        refused(hotline_proto::MessageId::random(), RejectCode::RateLimited),
        RelayToNode::Accepted(Accepted {
            id: first,
            recipients: vec![pid("KGZ")],
            accepted_at_ms: now_ms(),
        }),
        refused(first, RejectCode::PolicyDenied),
    ];
    relay.send(&frames).await.unwrap();
    kaz.proc
        .wait_line(&["INFO accepted", &accepted_id])
        .await
        .unwrap();
    // A message refused for real, after those: its event is the first refusal told.
    let refused_id = kaz.send("KGZ", "Refused", &[]).await.unwrap();
    let second = submitted(&mut relay).await;
    relay
        .send(&[refused(second, RejectCode::PolicyDenied)])
        .await
        .unwrap();
    let ev = events
        .wait_for("rejected", |e| e["type"] == "rejected")
        .await
        .unwrap();
    assert_eq!(ev["id"].as_str(), Some(refused_id.as_str()), "{ev}");
    kaz.proc
        .wait_line(&["never written on this link", &stray.to_string()])
        .await
        .unwrap();
    let st = kaz.cli_json(&["status", &accepted_id]).await.unwrap();
    assert_eq!(st["state"], "accepted", "{st}");
    assert_eq!(
        kaz.proc.count_lines(&["relay refused a message"]),
        1,
        "only the refusal of a message written"
    );
    relay.conn.close(0u32.into(), b"test done");
}

/// A refusal answers one `Submit`: a message refused for a reason that passes is told to
/// the officer once, and written again after the pause. A relay that refused it again
/// before then, answering no `Submit`, had the node tell the officer of each refusal, as
/// an event and a log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_refused_again_before_it_is_written_again_is_told_once() {
    use hotline_proto::frame::{Accepted, NodeToRelay, RejectCode, Rejected, RelayToNode, Subject};

    let net = net();
    let (mut relay, kaz) = net.node_with_impostor("KAZ").await.unwrap();
    let mut events = kaz.events().await.unwrap();
    let id = kaz.send("KGZ", "Refused for now", &[]).await.unwrap();
    let first = loop {
        if let NodeToRelay::Submit(s) = relay.next().await.unwrap() {
            break s.decode_unverified().unwrap().id;
        }
    };
    assert_eq!(first.to_string(), id);
    let refused = RelayToNode::Rejected(Rejected {
        subject: Subject::Message(first),
        code: RejectCode::RateLimited,
        detail: "slow down".into(),
    });
    relay
        .send(&[refused.clone(), refused.clone(), refused])
        .await
        .unwrap();
    // Written again after the pause, and accepted.
    loop {
        if let NodeToRelay::Submit(s) = relay.next().await.unwrap() {
            assert_eq!(s.decode_unverified().unwrap().id, first);
            break;
        }
    }
    relay
        .send(&[RelayToNode::Accepted(Accepted {
            id: first,
            recipients: vec![pid("KGZ")],
            accepted_at_ms: now_ms(),
        })])
        .await
        .unwrap();
    events.wait_about("accepted", &id).await.unwrap();
    let told = events
        .seen
        .iter()
        .filter(|e| e["type"] == "rejected")
        .count();
    assert_eq!(told, 1, "{:?}", events.seen);
    assert_eq!(kaz.proc.count_lines(&["relay refused a message"]), 1);
    relay.conn.close(0u32.into(), b"test done");
}

/// A refusal of a receipt answers a `Receipt` written on the connection, as a refusal of a
/// message answers a `Submit`: one naming a receipt the node never wrote there is ignored.
/// It was taken as a refusal: one that passes was put on the list of what to offer again
/// after the pause (a lying relay's stream of them grew that list without bound, each
/// logged as a receipt refused), and a final one was logged as an error, a receipt dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_no_receipt_written_on_the_link_is_ignored() {
    use hotline_proto::frame::{Accepted, NodeToRelay, RejectCode, Rejected, RelayToNode, Subject};

    let net = net();
    let (mut relay, mut kaz) = net.node_with_impostor("KAZ").await.unwrap();
    let refused = |n: u8, code| {
        RelayToNode::Rejected(Rejected {
            subject: Subject::Receipt(hotline_proto::Digest([n; 32])),
            code,
            detail: "no".into(),
        })
    };
    relay
        .send(&[
            refused(5, RejectCode::RateLimited),
            refused(5, RejectCode::RateLimited),
            refused(6, RejectCode::PolicyDenied),
        ])
        .await
        .unwrap();
    // A message accepted after them: the node has taken them when it logs that.
    let id = kaz.send("KGZ", "After the refusals", &[]).await.unwrap();
    let env = loop {
        if let NodeToRelay::Submit(s) = relay.next().await.unwrap() {
            break s.decode_unverified().unwrap();
        }
    };
    relay
        .send(&[RelayToNode::Accepted(Accepted {
            id: env.id,
            recipients: vec![pid("KGZ")],
            accepted_at_ms: now_ms(),
        })])
        .await
        .unwrap();
    kaz.proc.wait_line(&["INFO accepted", &id]).await.unwrap();
    assert_eq!(
        kaz.proc.count_lines(&["relay refused a receipt"]),
        0,
        "no receipt refused: {}",
        kaz.proc.log()
    );
    assert_eq!(
        kaz.proc
            .count_lines(&["refused for a receipt not written on this link"]),
        3
    );
    relay.conn.close(0u32.into(), b"test done");
}

/// A relay that sends what is not a frame: the node ends that link with an error that says
/// so (in its log, and to the relay as the close code: `FrameTooLarge`, then
/// `ProtocolViolation`), keeps running, and tries again after a pause, not in a loop. The impostor first
/// announces a frame larger than the protocol allows, then, on the node's next connection,
/// sends a well-framed payload that does not decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_survives_a_relay_that_sends_garbage() {
    let net = net();
    let (mut relay, mut kgz) = net.node_with_impostor("KGZ").await.unwrap();
    let too_large = (hotline_proto::limits::FRAME_BYTES_MAX as u32 + 1).to_le_bytes();
    relay.writer.write_raw(&too_large).await.unwrap();
    let first = kgz
        .proc
        .wait_line(&["relay link lost soon after it was made"])
        .await
        .unwrap();
    // The node says why when it ends the link (PROTOCOL.md, section 5).
    assert_eq!(
        close_code(&relay.conn).await.unwrap(),
        hotline_proto::frame::ErrorCode::FrameTooLarge
    );

    // The node comes back after its pause, to the same impostor.
    let mut relay = relay.next_connection().await.unwrap();
    let mut garbage = 16u32.to_le_bytes().to_vec();
    garbage.extend([0xFF; 16]);
    relay.writer.write_raw(&garbage).await.unwrap();
    let lines = kgz
        .proc
        .wait_lines_from(0, &["relay link lost soon after it was made"], 2)
        .await
        .unwrap();
    assert_eq!(
        close_code(&relay.conn).await.unwrap(),
        hotline_proto::frame::ErrorCode::ProtocolViolation
    );
    let status = kgz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(
        status["participant"], "KGZ",
        "the node still answers: {status}"
    );
    assert!(first.contains("exceeds the limit"), "{first}");
    assert!(lines[1].contains("decode"), "{}", lines[1]);
    println!("first: {first}\nsecond: {}", lines[1]);
    relay.conn.close(0u32.into(), b"test done");
}

/// A relay that reads nothing (here an impostor that stops reading once it has welcomed the
/// node) cannot hold the node's link in a write: once its stream's window is full, the write
/// ends after `LINK_WRITE_TIMEOUT_MS` (10 s) without progress, and the link with it (closed
/// `SlowConsumer`, not as a protocol violation), to be made again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_reads_nothing_ends_the_link_instead_of_holding_it() {
    let net = net();
    let (relay, mut kaz) = net.node_with_impostor("KAZ").await.unwrap();
    let body = net.path().join("body.txt");
    std::fs::write(&body, "x".repeat(60_000)).unwrap();
    let body = body.to_str().unwrap().to_owned();
    // 30 messages of 60 kB: more than the impostor's stream window (quinn's 1.25 MB).
    for i in 0..30 {
        kaz.send("KGZ", &format!("Large {i}"), &["--body-file", &body])
            .await
            .unwrap();
    }
    // The write gives up 10 s after it blocked; a wait on a log line lasts EVENT_TIMEOUT.
    let needles = ["relay link lost", "the peer read nothing for 10000 ms"];
    let line = match kaz.proc.wait_line(&needles).await {
        Ok(line) => line,
        Err(_) => kaz.proc.wait_line(&needles).await.unwrap(),
    };
    println!("{line}");
    assert_eq!(
        close_code(&relay.conn).await.unwrap(),
        hotline_proto::frame::ErrorCode::SlowConsumer
    );
    // The write stopped at the window a relay's session grants (the stream's, 1.25 MB), not
    // at the 4 KiB a connection has before its login.
    let received = relay.conn.stats().udp_rx.bytes;
    assert!(
        received > 1_000_000,
        "the node's write stopped after {received} bytes"
    );
    drop(relay);
}

/// A relay whose `Welcome` names a last sequence number above the highest an envelope may
/// carry cannot leave the node unable to send: the node ends that link as a protocol
/// violation, keeps its counter, and at its next connection sends its next message with
/// number 1. (Taken as a floor, the number made every later send overflow, for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_naming_a_sequence_number_past_the_highest_cannot_stop_a_node_sending() {
    a_relay_naming_a_sequence_number_cannot_stop_a_node_sending(
        u64::MAX,
        "above the highest an envelope may carry",
    )
    .await;
}

/// Nor can one naming a number that an envelope may carry but that no relay can have seen
/// from this node, billions above its counter: taken as a floor, `SEQ_MAX - 1` would have
/// left the node one number to sign with, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_naming_a_sequence_number_far_ahead_cannot_use_up_a_nodes_counter() {
    a_relay_naming_a_sequence_number_cannot_stop_a_node_sending(
        hotline_proto::limits::SEQ_MAX - 1,
        "more than 2^32 above this node's counter",
    )
    .await;
}

async fn a_relay_naming_a_sequence_number_cannot_stop_a_node_sending(last_seq: u64, says: &str) {
    use hotline_proto::frame::{ErrorCode, NodeToRelay, Welcome};
    let net = net();
    let welcome = Welcome {
        last_seq: hotline_proto::Seq(last_seq),
        ..Impostor::welcome()
    };
    let (relay, mut kaz) = net
        .node_with_impostor_welcoming("KAZ", NodeSetup::default(), welcome)
        .await
        .unwrap();
    kaz.proc.wait_line(&[says]).await.unwrap();
    assert_eq!(
        close_code(&relay.conn).await.unwrap(),
        ErrorCode::ProtocolViolation
    );
    // Back after its pause, to a relay that welcomes it as usual.
    let mut relay = relay.next_connection().await.unwrap();
    let id = kaz.send("KGZ", "Still sending", &[]).await.unwrap();
    let submitted = loop {
        if let NodeToRelay::Submit(s) = relay.next().await.unwrap() {
            break s;
        }
    };
    let env = submitted.decode_unverified().unwrap();
    assert_eq!((env.id.to_string(), env.seq.0), (id, 1));
    relay.conn.close(0u32.into(), b"test done");
}

/// A link that hears nothing from its relay (here the relay's packets stop reaching the
/// node, while the node's still reach the relay) is probed with `Ping` frames: each is a
/// fresh packet, which a relay that restarted would answer at once with a stateless reset,
/// where QUIC's own retransmissions back off to seconds apart. The QUIC idle timeout then
/// ends the link, and the node says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_pings_a_relay_it_no_longer_hears() {
    let net = net();
    let (mut relay, mut kgz, link) = net
        .node_with_impostor_behind_deaf_link("KGZ")
        .await
        .unwrap();
    kgz.proc.wait_line(&["relay connected"]).await.unwrap();
    link.go_deaf();
    kgz.proc
        .wait_line(&["nothing heard from the relay; pinging it"])
        .await
        .unwrap();
    for _ in 0..2 {
        let f = relay.next().await.unwrap();
        assert!(
            matches!(f, hotline_proto::frame::NodeToRelay::Ping(_)),
            "{f:?}"
        );
    }
    let lost = kgz.proc.wait_line(&["relay link lost"]).await.unwrap();
    assert!(lost.contains("timed out"), "{lost}");
    relay.conn.close(0u32.into(), b"test done");
}

/// Stops a node with SIGTERM and waits for a clean exit.
async fn stop_node(node: NodeProc) {
    node.proc.signal("TERM").unwrap();
    let (status, proc) = node.proc.wait_exit(EVENT_TIMEOUT).await.unwrap();
    assert!(status.success(), "{status}: {}", proc.log());
    // A clean stop leaves the store in one file (OPERATIONS.md 6): its log folded in.
    let wal = node
        .dir
        .join(format!("node-{}", node.id))
        .join("node.db-wal");
    assert!(!wal.exists(), "{} left after a clean stop", wal.display());
}

/// A node keeps the roster it started on from its file, so that a file damaged later (a bad
/// copy, a truncated write) does not stop its next start: it starts on the stored roster,
/// says so, and works. Before, a node kept only rosters a relay sent, and a node whose relay
/// never had a newer one exited 78 here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_on_the_roster_it_kept_when_its_file_is_damaged() {
    let net = net();
    let relay = net.relay().await;
    net.node_config("KAZ", relay.local_addr());
    let mut kaz = net.start_node("KAZ").await.unwrap();
    kaz.proc
        .wait_line(&["roster from the file kept in the store", "version=1"])
        .await
        .unwrap();
    kaz.connected().await.unwrap();
    stop_node(kaz).await;

    let file = net.path().join("roster.signed");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&file, bytes).unwrap();
    let mut kaz = net.start_node("KAZ").await.unwrap();
    kaz.proc
        .wait_line(&["roster file unusable; using the stored roster", "version=1"])
        .await
        .unwrap();
    kaz.connected().await.unwrap();
    let st = kaz.cli_json(&["node-status"]).await.unwrap();
    assert_eq!(st["roster_version"], 1, "{st}");
    assert_eq!(
        kaz.proc
            .count_lines(&["roster from the file kept in the store"]),
        0,
        "nothing newer to keep: {}",
        kaz.proc.log()
    );
    relay.shutdown().await;
}

/// Waits until this `node` process has logged each of `arriving` as received, then checks
/// that its inbox holds exactly those and `held` (received before), each once.
async fn inbox_holds_exactly(node: &mut NodeProc, arriving: &[String], held: &[String]) {
    for id in arriving {
        node.proc
            .wait_line(&["message received", &msg(id)])
            .await
            .unwrap();
    }
    let inbox = node.cli_json(&["inbox"]).await.unwrap();
    let mut got: Vec<String> = inbox
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    let mut want = [arriving, held].concat();
    want.sort();
    assert_eq!(got, want, "each message once: {inbox}");
}

/// Copies the files of a (stopped) node's data directory: OPERATIONS.md 6.3's offline backup.
fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
    }
}

/// A network whose relay listens on an address fixed in advance, so that it restarts
/// where the nodes' configurations say.
async fn relay_on_a_fixed_address() -> (Net, hotline_relay::RelayHandle, std::net::SocketAddr) {
    let net = net();
    let relay_addr = free_udp_addr();
    net.set_relay_listen(relay_addr);
    let relay = net.relay().await;
    (net, relay, relay_addr)
}

/// The Secretariat's backup of the running relay (`hotline backup`), as relay-backup.db.
async fn back_up_the_relay(net: &Net) {
    back_up(net, "relay-data", "relay-backup.db").await;
}

/// `hotline backup --data DATA --out OUT`, beside the service, in the network's directory.
async fn back_up(net: &Net, data: &str, out: &str) {
    let backup = hotline_cli(net.path(), &["backup", "--data", data, "--out", out])
        .await
        .unwrap();
    assert!(
        backup.status.success() && backup.stdout.starts_with(&format!("OK: {out} written")),
        "{backup:?}"
    );
}

/// `hotline backup --out` and `hotline restore --from` and `--data` take a name as a file's,
/// also one beginning with `file:`. The bundled SQLite has URI file names on, so `--out
/// file:copy.db` had the copy written to `copy.db`, created by SQLite with its default mode
/// (not 0600), left the file named empty, and said `OK: file:copy.db written`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_take_a_name_beginning_with_file_as_a_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let net = net();
    let relay = net.relay().await;
    back_up(&net, "relay-data", "file:copy.db").await;
    relay.shutdown().await;
    assert!(
        !net.path().join("copy.db").exists(),
        "the copy went elsewhere"
    );
    let copy = std::fs::metadata(net.path().join("file:copy.db")).unwrap();
    assert!(copy.len() > 0, "the file named is empty");
    assert_eq!(copy.permissions().mode() & 0o777, 0o600);

    std::fs::create_dir(net.path().join("file:data")).unwrap();
    let restore = hotline_cli(
        net.path(),
        &["restore", "--from", "file:copy.db", "--data", "file:data"],
    )
    .await
    .unwrap();
    assert!(
        restore.status.success()
            && restore
                .stdout
                .starts_with("OK: file:data/relay.db restored from file:copy.db"),
        "{restore:?}"
    );
    assert!(!net.path().join("data").exists(), "restored elsewhere");
    let verified = hotline_cli(net.path(), &["audit", "verify", "--data", "file:data"])
        .await
        .unwrap();
    assert!(verified.stdout.starts_with("OK:"), "{verified:?}");
}

/// The (stopped) relay's disk is lost: a new one gets relay-backup.db (`hotline restore`).
async fn restore_the_relay(net: &Net) {
    let data = net.path().join("relay-data");
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::create_dir(&data).unwrap();
    let restore = hotline_cli(
        net.path(),
        &[
            "restore",
            "--from",
            "relay-backup.db",
            "--data",
            "relay-data",
        ],
    )
    .await
    .unwrap();
    assert!(
        restore.status.success()
            && restore
                .stdout
                .starts_with("OK: relay-data/relay.db restored from")
            && restore.stdout.contains("there was no store to replace")
            && restore.stdout.contains("will be delivered again"),
        "{restore:?}"
    );
}

/// A node restored from a backup has a sequence counter behind what the relay has seen.
/// A message composed before it reaches the relay reuses a number the relay has accepted
/// (`ReplayedSeq`): the node signs it again, under the same id, with the next unused number,
/// and it arrives. Messages composed once connected take numbers after the relay's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restored_from_a_backup_signs_again_what_reused_a_number_and_it_arrives() {
    let (net, relay, relay_addr) = relay_on_a_fixed_address().await;
    let (mut kaz, mut kgz) = net.two_nodes(relay_addr).await.unwrap();
    let first = kaz.send("KGZ", "Before the backup", &[]).await.unwrap();
    kaz.proc
        .wait_line(&["accepted", &msg(&first)])
        .await
        .unwrap();
    stop_node(kaz).await;
    let data = net.path().join("node-KAZ");
    let backup = net.path().join("backup-KAZ");
    copy_files(&data, &backup);

    // Two messages the backup does not hold.
    let mut kaz = net.start_node("KAZ").await.unwrap();
    kaz.connected().await.unwrap();
    let mut lost = Vec::new();
    for subject in ["After the backup 1", "After the backup 2"] {
        let id = kaz.send("KGZ", subject, &[]).await.unwrap();
        kaz.proc.wait_line(&["accepted", &msg(&id)]).await.unwrap();
        lost.push(id);
    }
    stop_node(kaz).await;
    relay.shutdown().await;

    // The disk is lost; the node is restored and composes while the relay is away.
    std::fs::remove_dir_all(&data).unwrap();
    copy_files(&backup, &data);
    let mut kaz = net.start_node("KAZ").await.unwrap();
    let queued = kaz
        .cli_json(&["send", "--to", "KGZ", "--subject", "After the restore"])
        .await
        .unwrap();
    assert_eq!(queued["state"], "queued", "{queued}");
    let queued = id_of(&queued);
    let shown = kaz.cli_json(&["show", &queued]).await.unwrap();
    assert_eq!(shown["seq"], 2, "the restored counter reuses 2: {shown}");

    let relay = net.relay().await;
    kaz.connected().await.unwrap();
    // The operator is told, and where to get back what the node received since.
    kaz.proc
        .wait_line(&[
            "the relay has seen higher sequence numbers than this store",
            "last_seq=3",
            "hotline relay redeliver",
        ])
        .await
        .unwrap();
    let line = kaz
        .proc
        .wait_line(&["signed the message again", &msg(&queued)])
        .await
        .unwrap();
    assert!(
        line.contains("refused_seq=2") && line.contains("seq=4"),
        "{line}"
    );
    kaz.proc
        .wait_line(&["accepted", &msg(&queued)])
        .await
        .unwrap();
    let after = kaz.send("KGZ", "Once connected", &[]).await.unwrap();
    kaz.proc
        .wait_line(&["accepted", &msg(&after)])
        .await
        .unwrap();
    for (id, seq) in [(&queued, 4), (&after, 5)] {
        let shown = kaz.cli_json(&["show", id]).await.unwrap();
        assert_eq!(shown["seq"], seq, "{shown}");
        assert!(shown["rejected"].is_null(), "{shown}");
    }

    let mut all = vec![first.clone()];
    all.extend(lost.iter().cloned());
    all.extend([queued.clone(), after.clone()]);
    inbox_holds_exactly(&mut kgz, &all, &[]).await;
    assert_eq!(
        kaz.proc.count_lines(&["relay refused a message"]),
        0,
        "no refusal stood"
    );
    relay.shutdown().await;
}

/// A node restored from a backup, with two relays: relay A (hand-driven here) has not seen
/// the number the restore makes a queued message reuse and takes that first signing, while
/// relay B refuses it (`ReplayedSeq`) and the node signs it again, B's answer before A's.
/// Each relay's acceptance is recorded for the signing written to it: A's next `Welcome`,
/// naming the number A took, is no sign of lost messages (before, the node had recorded A
/// as holding the second signing's number, logged "no longer has messages it accepted" and
/// submitted the second signing to A, which holds the first: `IdConflict`). And the receipt
/// a recipient signs over the first signing, forwarded through A, records it as delivered
/// (before, a receipt naming other content: a mismatch, nothing recorded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_relay_is_recorded_for_the_signing_it_took_of_a_message_signed_again() {
    use hotline_proto::frame::{Accepted, NodeToRelay, RelayToNode, Welcome};
    use hotline_proto::{Receipt, ReceiptItem, ReceiptKind, Seq};

    let net = net();
    // Relay B, with a certificate of its own: the node keeps a record per certificate.
    let b_addr = free_udp_addr();
    let (b_config, b_fp) = net.other_relay_config("relay-b", b_addr);
    let start_b = || async {
        hotline_relay::Relay::spawn(hotline_relay::RelayConfig::load(&b_config).unwrap())
            .await
            .unwrap()
    };
    let only_b = NodeSetup {
        relays: vec![b_addr],
        pins: vec![(b_addr, b_fp)],
        ..NodeSetup::default()
    };
    let relay_b = start_b().await;
    net.node_config_with("KAZ", &only_b);
    let mut kaz = net.start_node("KAZ").await.unwrap();
    let first = kaz.send("KGZ", "Before the backup", &[]).await.unwrap();
    kaz.proc
        .wait_line(&["accepted", &msg(&first)])
        .await
        .unwrap();
    stop_node(kaz).await;
    let data = net.path().join("node-KAZ");
    let backup = net.path().join("backup-KAZ");
    copy_files(&data, &backup);
    // Two messages relay B takes and the backup does not hold.
    let mut kaz = net.start_node("KAZ").await.unwrap();
    for subject in ["After the backup 1", "After the backup 2"] {
        let id = kaz.send("KGZ", subject, &[]).await.unwrap();
        kaz.proc.wait_line(&["accepted", &msg(&id)]).await.unwrap();
    }
    stop_node(kaz).await;
    relay_b.shutdown().await;

    // The disk is lost and the node restored; it now has relay A too, first. Relay B is
    // away while the node composes: the message reuses number 2.
    std::fs::remove_dir_all(&data).unwrap();
    copy_files(&backup, &data);
    let (mut relay_a, mut kaz) = net
        .node_with_impostor_welcoming("KAZ", only_b, Impostor::welcome())
        .await
        .unwrap();
    let mut events = kaz.events().await.unwrap();
    let id = kaz.send("KGZ", "After the restore", &[]).await.unwrap();
    let old = loop {
        if let NodeToRelay::Submit(s) = relay_a.next().await.unwrap() {
            break s;
        }
    };
    let env = old.decode_unverified().unwrap();
    assert_eq!((env.id.to_string(), env.seq), (id.clone(), Seq(2)));

    // Relay B, back, refuses number 2; the node signs the message again, and B takes it.
    let relay_b = start_b().await;
    let line = kaz
        .proc
        .wait_line(&["signed the message again", &msg(&id)])
        .await
        .unwrap();
    assert!(
        line.contains("refused_seq=2") && line.contains("seq=4"),
        "{line}"
    );
    kaz.proc
        .wait_line(&["accepted", "relay=1", &msg(&id)])
        .await
        .unwrap();
    // Then relay A's answer to the first signing, and KGZ's receipt of it through A.
    relay_a
        .send(&[RelayToNode::Accepted(Accepted {
            id: env.id,
            recipients: vec![pid("KGZ")],
            accepted_at_ms: now_ms(),
        })])
        .await
        .unwrap();
    kaz.proc
        .wait_line(&["accepted", "relay=0", &msg(&id)])
        .await
        .unwrap();
    let receipt = Receipt {
        version: hotline_proto::PROTOCOL_VERSION,
        recipient: pid("KGZ"),
        kind: ReceiptKind::Delivered,
        created_at_ms: now_ms(),
        items: vec![ReceiptItem {
            id: env.id,
            sender: pid("KAZ"),
            digest: old.digest(),
        }],
    };
    let receipt = Signed::sign(&receipt, &net.key("KGZ")).unwrap();
    relay_a
        .send(&[RelayToNode::Receipt(receipt.clone())])
        .await
        .unwrap();
    loop {
        if let NodeToRelay::ReceiptsStored(d) = relay_a.next().await.unwrap() {
            assert_eq!(d, vec![receipt.digest()]);
            break;
        }
    }
    events
        .wait_for("delivered", |e| {
            e["type"] == "delivered" && e["id"] == id.as_str() && e["by"] == "KGZ"
        })
        .await
        .unwrap();
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(st["delivered"], 1, "{st}");
    assert_eq!(
        kaz.proc
            .count_lines(&["content other than what this node sent"]),
        0,
        "a receipt of the first signing is no mismatch: {}",
        kaz.proc.log()
    );

    // Relay A's next connection says it has taken up to 2: nothing is lost, nothing is
    // submitted again; the next message is the first it is sent.
    relay_a.conn.close(0u32.into(), b"reconnect");
    let welcome = Welcome {
        last_seq: Seq(2),
        ..Impostor::welcome()
    };
    let mut relay_a = relay_a.next_connection_welcoming(welcome).await.unwrap();
    let next = kaz.send("KGZ", "Once connected", &[]).await.unwrap();
    let submitted = loop {
        if let NodeToRelay::Submit(s) = relay_a.next().await.unwrap() {
            break s.decode_unverified().unwrap();
        }
    };
    assert_eq!(
        (submitted.id.to_string(), submitted.seq),
        (next, Seq(5)),
        "{}",
        kaz.proc.log()
    );
    assert_eq!(
        kaz.proc
            .count_lines(&["no longer has messages it accepted"]),
        0,
        "{}",
        kaz.proc.log()
    );
    relay_a.conn.close(0u32.into(), b"test done");
    relay_b.shutdown().await;
}

/// A relay restored from a backup has lost the messages it accepted since. The sender's
/// node sees it in the relay's `Welcome.last_seq` and submits them again, so a recipient
/// that had not fetched them still gets them, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_a_restored_relay_lost_are_submitted_again_by_their_sender() {
    messages_a_restored_relay_lost_come_back(false).await;
}

/// The same when the relay comes back on another machine, at another address, with its
/// certificate (the record of what it accepted goes by the certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_a_relay_restored_at_another_address_lost_are_submitted_again() {
    messages_a_restored_relay_lost_come_back(true).await;
}

async fn messages_a_restored_relay_lost_come_back(moved: bool) {
    let (net, relay, relay_addr) = relay_on_a_fixed_address().await;
    let (mut kaz, mut kgz) = net.two_nodes(relay_addr).await.unwrap();
    let first = kaz.send("KGZ", "Before the backup", &[]).await.unwrap();
    kgz.proc
        .wait_line(&["message received", &msg(&first)])
        .await
        .unwrap();
    // KGZ is away until after the relay's disk is lost.
    stop_node(kgz).await;
    // The Secretariat's hourly backup, taken while the relay runs.
    back_up_the_relay(&net).await;
    let mut lost = Vec::new();
    for subject in ["After the backup 1", "After the backup 2"] {
        let id = kaz.send("KGZ", subject, &[]).await.unwrap();
        kaz.proc.wait_line(&["accepted", &msg(&id)]).await.unwrap();
        lost.push(id);
    }
    relay.shutdown().await;
    restore_the_relay(&net).await;
    // Its first acceptances, and their second ones in the same log.
    let mut acceptances = 2;
    if moved {
        let new_addr = free_udp_addr();
        net.set_relay_listen(new_addr);
        stop_node(kaz).await;
        net.node_config("KAZ", new_addr);
        net.node_config("KGZ", new_addr);
        kaz = net.start_node("KAZ").await.unwrap();
        acceptances = 1;
    }

    let relay = net.relay().await;
    let line = kaz
        .proc
        .wait_line(&["no longer has messages it accepted"])
        .await
        .unwrap();
    assert!(
        line.contains("last_seq=1") && line.contains("accepted=3") && line.contains("messages=2"),
        "{line}"
    );
    for id in &lost {
        kaz.proc
            .wait_lines_from(0, &["accepted", &msg(id)], acceptances)
            .await
            .unwrap();
    }
    let mut kgz = net.start_node("KGZ").await.unwrap();
    inbox_holds_exactly(&mut kgz, &lost, &[first]).await;
    relay.shutdown().await;
}

/// `hotline restore` refuses to run beside the service and to put a node's copy in a
/// relay's directory; on the stopped relay it keeps the store it replaces, and the relay
/// starts on the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hotline_restore_is_refused_beside_the_service_and_keeps_the_store_it_replaces() {
    let (net, relay, relay_addr) = relay_on_a_fixed_address().await;
    let (mut kaz, _kgz) = net.two_nodes(relay_addr).await.unwrap();
    back_up_the_relay(&net).await;
    back_up(&net, "node-KAZ", "kaz-backup.db").await;
    let args = [
        "restore",
        "--from",
        "relay-backup.db",
        "--data",
        "relay-data",
    ];
    let running = hotline_cli(net.path(), &args).await.unwrap();
    assert!(
        !running.status.success()
            && running
                .stderr
                .contains("a relay or node already runs on this data directory")
            && running
                .stderr
                .contains("stop it first (sudo systemctl stop hotline-relay)"),
        "{running:?}"
    );
    relay.shutdown().await;

    let wrong = ["restore", "--from", "kaz-backup.db", "--data", "relay-data"];
    let wrong = hotline_cli(net.path(), &wrong).await.unwrap();
    assert!(
        !wrong.status.success()
            && wrong
                .stderr
                .contains("kaz-backup.db is a node store, but relay-data holds relay.db"),
        "{wrong:?}"
    );
    let done = hotline_cli(net.path(), &args).await.unwrap();
    assert!(done.status.success(), "{done:?}");
    let aside = done
        .stdout
        .split("kept as ")
        .nth(1)
        .and_then(|rest| rest.split([' ', ';']).next())
        .unwrap_or_else(|| panic!("nothing set aside in {done:?}"))
        .to_owned();
    assert!(aside.starts_with("relay-data/relay-replaced-"), "{aside}");
    let check = hotline_cli(net.path(), &["audit", "verify", "--data", &aside])
        .await
        .unwrap();
    assert!(
        check.status.success(),
        "the replaced store is whole: {check:?}"
    );

    let relay = net.relay().await;
    kaz.connected().await.unwrap();
    let id = kaz.send("KGZ", "On the restored relay", &[]).await.unwrap();
    kaz.proc.wait_line(&["accepted", &msg(&id)]).await.unwrap();
    relay.shutdown().await;
}

/// Waits until `node`'s one relay has confirmed storing its acknowledgements. The relay's
/// metric counts them when they are stored, before the node has the answer; a node that
/// has not had it when the relay stops still holds them as not yet stored, and offers them
/// at its next connection anyway, not because the relay delivered their messages again.
async fn acknowledgement_stored_by_the_relay(node: &NodeProc) {
    node.wait_status("acknowledgement stored by the relay", |st| {
        st["relays"][0]["acks_pending"] == 0
    })
    .await
    .unwrap();
}

/// `node` logs that it offers again its acknowledgement of one message delivered again.
async fn offers_its_acknowledgement_again(node: &mut NodeProc) {
    node.proc
        .wait_line(&[
            "offering it their acknowledgements again",
            "acknowledgements=1",
        ])
        .await
        .unwrap();
}

/// The sender `kaz` learns that KGZ acknowledged `id`, and shows it.
async fn acknowledged_by_kgz(kaz: &mut NodeProc, id: &str) {
    kaz.proc
        .wait_line(&["acknowledged", &msg(id), "by=KGZ"])
        .await
        .unwrap();
    let st = kaz.cli_json(&["status", id]).await.unwrap();
    assert_eq!(st["acknowledged"], 1, "{st}");
}

/// A relay restored from a backup also loses the acknowledgements it held for a sender
/// that was away. The sender submits its lost message again, the relay delivers it again,
/// and the recipient, which acknowledged it, offers its acknowledgement again: the sender
/// learns of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_a_restored_relay_lost_reaches_the_sender() {
    let (net, relay, relay_addr) = relay_on_a_fixed_address().await;
    let (mut kaz, mut kgz) = net.two_nodes(relay_addr).await.unwrap();
    back_up_the_relay(&net).await;
    let id = kaz.send("KGZ", "After the backup", &[]).await.unwrap();
    kgz.proc
        .wait_line(&["message received", &msg(&id)])
        .await
        .unwrap();
    // KAZ has it accepted before it goes away: the relay delivers a batch while its commit
    // syncs, so KGZ may have the message before KAZ has the answer, and a KAZ stopped then
    // would send it again from its outbox rather than find the relay without it.
    kaz.proc.wait_line(&["accepted", &msg(&id)]).await.unwrap();
    // KAZ goes away; KGZ acknowledges; the relay stores the acknowledgement for KAZ.
    stop_node(kaz).await;
    kgz.cli_json(&["ack", &id, "--officer", "Duty officer"])
        .await
        .unwrap();
    acknowledgement_stored_by_the_relay(&kgz).await;
    relay.shutdown().await;
    restore_the_relay(&net).await;

    let relay = net.relay().await;
    let mut kaz = net.start_node("KAZ").await.unwrap();
    kaz.proc
        .wait_line(&["no longer has messages it accepted"])
        .await
        .unwrap();
    offers_its_acknowledgement_again(&mut kgz).await;
    acknowledged_by_kgz(&mut kaz, &id).await;
    relay.shutdown().await;
}

/// The acknowledgement of a message delivered before the backup, made after it while its
/// sender was away, is lost with the relay's store, and the message is not submitted again.
/// `hotline restore` has the relay deliver again what it accepted in the day before the
/// backup; the recipient offers its acknowledgement again, and the sender learns of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_made_after_the_backup_of_an_older_message_reaches_the_sender() {
    let (net, relay, relay_addr) = relay_on_a_fixed_address().await;
    let (mut kaz, mut kgz) = net.two_nodes(relay_addr).await.unwrap();
    let id = kaz.send("KGZ", "Before the backup", &[]).await.unwrap();
    kgz.proc
        .wait_line(&["message received", &msg(&id)])
        .await
        .unwrap();
    // Accepted at KAZ before it stops (as in the test above), so that it has nothing to
    // send again.
    kaz.proc.wait_line(&["accepted", &msg(&id)]).await.unwrap();
    stop_node(kaz).await;
    let maddr = relay.metrics_addr().expect("metrics");
    // KGZ's delivered receipt is in the backup; its acknowledgement, after it, is not.
    wait_metric(maddr, "hotline_relay_receipts_stored_total", |n| n >= 1.0)
        .await
        .unwrap();
    back_up_the_relay(&net).await;
    kgz.cli_json(&["ack", &id, "--officer", "Duty officer"])
        .await
        .unwrap();
    acknowledgement_stored_by_the_relay(&kgz).await;
    relay.shutdown().await;
    restore_the_relay(&net).await;

    let relay = net.relay().await;
    offers_its_acknowledgement_again(&mut kgz).await;
    let mut kaz = net.start_node("KAZ").await.unwrap();
    acknowledged_by_kgz(&mut kaz, &id).await;
    assert_eq!(
        kaz.proc
            .count_lines(&["no longer has messages it accepted"]),
        0,
        "not through the sender's resubmission"
    );
    inbox_holds_exactly(&mut kgz, &[], &[id]).await;
    relay.shutdown().await;
}

/// `hotline backup --out-dir DIR --keep N`, as an hourly timer runs it: a copy named after
/// the store and the time, and only the newest N such copies left; other files stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_directory_keeps_the_newest_copies() {
    let net = net();
    let relay = net.relay().await;
    let dir = net.path().join("backups");
    std::fs::create_dir(&dir).unwrap();
    let older = ["relay-20200101T000000Z.db", "relay-20200101T010000Z.db"];
    for n in older.iter().chain(&["relay-pre-upgrade.db"]) {
        std::fs::write(dir.join(n), b"an older copy").unwrap();
    }
    let out = hotline_cli(
        net.path(),
        &[
            "backup",
            "--data",
            "relay-data",
            "--out-dir",
            "backups",
            "--keep",
            "2",
        ],
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .contains("removed 1 older relay backup(s), keeping the newest 2"),
        "{out:?}"
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[0], older[1], "{names:?}");
    assert_eq!(names[2], "relay-pre-upgrade.db", "{names:?}");
    let new = &names[1];
    assert!(
        new.starts_with("relay-2") && new.ends_with("Z.db"),
        "{names:?}"
    );
    let copy = dir.join(new);
    let before = std::fs::read(&copy).unwrap();
    let verified = hotline_cli(
        net.path(),
        &["audit", "verify", "--data", &format!("backups/{new}")],
    )
    .await
    .unwrap();
    assert!(verified.stdout.starts_with("OK:"), "{verified:?}");
    // Checking a backup changes nothing in it, not even its journal mode.
    assert!(std::fs::read(&copy).unwrap() == before, "the copy changed");
    assert!(!dir.join(format!("{new}-wal")).exists());
    relay.shutdown().await;
}

/// Two `hotline backup --out-dir` runs in the same second (an hourly timer's and an
/// operator's, or a retry after a failure) both write their copy, and `--keep 1` then keeps
/// the newest. The runs follow one another until two have fallen in the same second, which
/// for copies of a small store is at once: names to the second collided there (`File
/// exists`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_in_the_same_second_are_all_kept() {
    let net = net();
    let relay = net.relay().await;
    let dir = net.path().join("backups");
    std::fs::create_dir(&dir).unwrap();
    // `relay-YYYYMMDDTHHMMSS`: the name up to the second.
    let second = |name: &str| name.get(..21).unwrap_or(name).to_owned();
    let mut written: Vec<String> = Vec::new();
    while written.len() < 2
        || second(&written[written.len() - 2]) != second(&written[written.len() - 1])
    {
        assert!(
            written.len() < 20,
            "no two of {} runs in a row fell in the same second: {written:?}",
            written.len()
        );
        let out = hotline_cli(
            net.path(),
            &["backup", "--data", "relay-data", "--out-dir", "backups"],
        )
        .await
        .unwrap();
        assert!(out.status.success(), "after {written:?}: {out:?}");
        let name = out
            .stdout
            .strip_prefix("OK: ")
            .and_then(|s| s.split_once(" written from "))
            .and_then(|(p, _)| Path::new(p).file_name()?.to_str())
            .unwrap_or_else(|| panic!("{out:?}"))
            .to_owned();
        written.push(name);
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names, written,
        "every copy kept, in the order of their names"
    );

    let out = hotline_cli(
        net.path(),
        &[
            "backup",
            "--data",
            "relay-data",
            "--out-dir",
            "backups",
            "--keep",
            "1",
        ],
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "removed {} older relay backup(s), keeping the newest 1",
            written.len()
        )),
        "{out:?}"
    );
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        out.stdout.starts_with(&format!("OK: backups/{}", left[0])),
        "the copy just written is the one kept: {left:?} {out:?}"
    );
    assert!(left[0] > written[written.len() - 1], "{left:?} {written:?}");
    relay.shutdown().await;
}

/// A second node started on the data directory of a running node is refused at once; the
/// first goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_the_same_store_is_refused() {
    let net = net();
    let relay = net.relay().await;
    let (kaz, _kgz) = net.two_nodes(relay.local_addr()).await.unwrap();
    let config = kaz.config.to_str().unwrap().to_owned();
    refused_for_its_lock(
        &["node", "--config", &config],
        net.path(),
        "node-KAZ-2.log",
        "node-KAZ/LOCK",
        "local API listening",
    )
    .await;
    let id = kaz.send("KGZ", "still running", &[]).await.unwrap();
    assert_eq!(id.len(), 32, "{id}");
    relay.shutdown().await;
}

/// Starts `hotline node --config CONFIG` (log `log_name`) and checks that it refuses to
/// start for a reason a restart cannot mend: exit status 78, saying so, never listening.
/// Returns its log.
async fn cannot_start(net: &Net, config: &Path, log_name: &str) -> String {
    let node = Proc::spawn(
        &["node", "--config", config.to_str().unwrap()],
        net.path(),
        log_name,
    )
    .unwrap();
    let (status, node) = node.wait_exit(EVENT_TIMEOUT).await.unwrap();
    let log = node.log();
    assert_eq!(status.code(), Some(78), "{status}: {log}");
    assert!(log.contains("starting it again will not help"), "{log}");
    assert!(!log.contains("local API listening"), "{log}");
    log
}

/// A node whose API token file holds something that is not a token (here, the start of a
/// key pasted in by mistake) refuses to start, for good (status 78, so its unit is not
/// restarted), naming the file and not showing what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_token_file_holds_no_token_cannot_start() {
    let net = net();
    let config = net.node_config("KAZ", "127.0.0.1:9".parse().unwrap());
    let token_file = net.path().join("KAZ.token");
    std::fs::write(
        &token_file,
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA\n",
    )
    .unwrap();
    let log = cannot_start(&net, &config, "node-KAZ-bad-token.log").await;
    assert!(
        log.contains("KAZ.token: not an API token"),
        "the file is named: {log}"
    );
    assert!(
        !log.contains("PRIVATE KEY"),
        "its content is not shown: {log}"
    );
}

/// A `data_dir` that names a file, or a path below one, is a configuration error: the node
/// exits with status 78 (a restart cannot help), naming the directory and the file in the
/// way. Before, it exited 1, and systemd restarted it five times for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_data_dir_is_a_file_cannot_start() {
    let net = net();
    let config = net.node_config("KAZ", "127.0.0.1:9".parse().unwrap());
    let file = net.path().join("node-KAZ");
    std::fs::write(&file, "not a directory\n").unwrap();
    let log = cannot_start(&net, &config, "node-KAZ-data-file.log").await;
    let said = format!(
        "data_dir {0}: {0} is a file, not a directory",
        file.display()
    );
    assert!(log.contains(&said), "{log}");
    // Below a file: the file in the way is named.
    let text = std::fs::read_to_string(&config).unwrap();
    let below = text.replace("data_dir = \"node-KAZ\"", "data_dir = \"node-KAZ/data\"");
    assert_ne!(below, text);
    std::fs::write(&config, below).unwrap();
    let log = cannot_start(&net, &config, "node-KAZ-data-below-file.log").await;
    let said = format!(
        "data_dir {}/data: {} is a file, not a directory",
        file.display(),
        file.display()
    );
    assert!(log.contains(&said), "{log}");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory\n");
}

/// A node's store is its participant's: KAZ's backup is refused by `hotline restore` in
/// KGZ's data directory, and a node started as KGZ on KAZ's store (put there by hand)
/// refuses to start, naming both, rather than show KAZ's messages to KGZ's officers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_another_members_store() {
    let net = net();
    let relay = net.relay().await;
    let (kaz, kgz) = net.two_nodes(relay.local_addr()).await.unwrap();
    let id = kaz.send("KGZ", "For KGZ only", &[]).await.unwrap();
    assert_eq!(id.len(), 32, "{id}");
    back_up(&net, "node-KAZ", "kaz-backup.db").await;
    back_up(&net, "node-KGZ", "kgz-backup.db").await;
    stop_node(kgz).await;

    let restore = ["restore", "--from", "kaz-backup.db", "--data", "node-KGZ"];
    let refused = hotline_cli(net.path(), &restore).await.unwrap();
    assert!(
        !refused.status.success()
            && refused.stderr.contains(
                "kaz-backup.db is KAZ's node store, but node-KGZ holds KGZ's: is this the right \
                 backup"
            ),
        "{refused:?}"
    );
    let check = hotline_cli(net.path(), &["audit", "verify", "--data", "node-KGZ"])
        .await
        .unwrap();
    assert!(
        check.status.success(),
        "KGZ's store is as it was: {check:?}"
    );

    let data = net.path().join("node-KGZ");
    for f in ["node.db", "node.db-wal", "node.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    std::fs::copy(net.path().join("kaz-backup.db"), data.join("node.db")).unwrap();
    let config = net.path().join("KGZ.toml");
    let log = cannot_start(&net, &config, "node-KGZ-on-KAZ.log").await;
    assert!(
        log.contains("node-KGZ/node.db is the store of KAZ, but this is KGZ"),
        "{log}"
    );

    // KGZ's own backup is refused over KAZ's store too, saying how to proceed...
    let own = ["restore", "--from", "kgz-backup.db", "--data", "node-KGZ"];
    let refused = hotline_cli(net.path(), &own).await.unwrap();
    assert!(
        !refused.status.success() && refused.stderr.contains("aside first"),
        "{refused:?}"
    );
    // ...but not over a store that cannot be read (the damage a restore is for).
    std::fs::write(data.join("node.db"), vec![0x5a; 8192]).unwrap();
    let restored = hotline_cli(net.path(), &own).await.unwrap();
    assert!(restored.status.success(), "{restored:?}");
    let mut kgz = net.start_node("KGZ").await.unwrap();
    kgz.connected().await.unwrap();
    stop_node(kgz).await;
    relay.shutdown().await;
}

/// A node's store written by a newer node (a rollback after an upgrade, the store kept) is
/// refused at start: the node exits with status 78 (a restart cannot help), saying on standard error that the file
/// is a newer node's, not damaged, and what to do, and leaves it byte for byte as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_store_from_a_newer_node_and_leaves_it_as_it_was() {
    use hotline_node::store::SCHEMA_VERSION;
    let net = net();
    let relay = net.relay().await;
    let config = net.node_config("KGZ", relay.local_addr());
    let kgz = net.start_node("KGZ").await.unwrap();
    stop_node(kgz).await;
    let db = net.path().join("node-KGZ").join("node.db");
    let newer = SCHEMA_VERSION + 1;
    hotline_store::open(&db, false)
        .unwrap()
        .execute_batch(&format!("PRAGMA user_version = {newer}"))
        .unwrap();
    let before = std::fs::read(&db).unwrap();

    let log = cannot_start(&net, &config, "node-KGZ-newer.log").await;
    assert!(
        log.contains(&format!(
            "error: {} was written by a newer version of the node (store schema version \
             {newer}; this node supports schema versions up to {SCHEMA_VERSION}): the file is \
             not damaged and was left as it is; run the newer version of the node, or restore \
             a backup made by this one",
            db.display()
        )),
        "{log}"
    );
    assert!(!log.contains("corrupt"), "{log}");
    assert!(std::fs::read(&db).unwrap() == before, "node.db was changed");
    relay.shutdown().await;
}

/// A node restored from a backup no longer holds what it received since; the relay does,
/// and `hotline relay redeliver`, run on the stopped relay, makes it deliver those messages
/// again at its next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_node_gets_back_what_it_received_since_its_backup() {
    a_restored_node_gets_back_what_it_received(false).await;
}

/// As above, on the running relay (through its control socket): it closes the restored
/// node's link, and the node, connecting again, is delivered those messages; nothing else
/// stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_relay_delivers_again_to_a_restored_node() {
    a_restored_node_gets_back_what_it_received(true).await;
}

async fn a_restored_node_gets_back_what_it_received(relay_running: bool) {
    let (net, relay, relay_addr) = relay_on_a_fixed_address().await;
    let (kaz, mut kgz) = net.two_nodes(relay_addr).await.unwrap();
    let data = net.path().join("node-KGZ");
    back_up(&net, "node-KGZ", "kgz-backup.db").await;
    let mut ids = Vec::new();
    for subject in ["After the backup 1", "After the backup 2"] {
        let id = kaz.send("KGZ", subject, &[]).await.unwrap();
        kgz.proc
            .wait_line(&["message received", &msg(&id)])
            .await
            .unwrap();
        ids.push(id);
    }
    kgz.cli_json(&["ack", &ids[0], "--officer", "Duty officer"])
        .await
        .unwrap();
    // KGZ's disk is lost; it comes back on the backup, without those messages.
    let restore = ["restore", "--from", "kgz-backup.db", "--data", "node-KGZ"];
    let running = hotline_cli(net.path(), &restore).await.unwrap();
    assert!(
        !running.status.success()
            && running
                .stderr
                .contains("stop it first (sudo systemctl stop hotline-node)"),
        "{running:?}"
    );
    stop_node(kgz).await;
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::create_dir(&data).unwrap();
    let restored = hotline_cli(net.path(), &restore).await.unwrap();
    assert!(
        restored.status.success()
            && restored
                .stdout
                .starts_with("OK: node-KGZ/node.db (KGZ's) restored from kgz-backup.db"),
        "{restored:?}"
    );
    // It says, for whom, from when the relay should deliver again; that time is enough.
    assert!(
        restored.stdout.contains(
            "`sudo -u hotline hotline relay redeliver --config /etc/hotline/relay.toml --to \
                 KGZ --since "
        ),
        "{restored:?}"
    );
    let since = restored
        .stdout
        .split("--since ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("no --since in {restored:?}"))
        .to_owned();

    let config = net.relay_config.to_str().unwrap().to_owned();
    let args = [
        "relay",
        "redeliver",
        "--config",
        config.as_str(),
        "--to",
        "KGZ",
        "--since",
        since.as_str(),
    ];
    let (relay, mut kgz) = if relay_running {
        let mut kgz = net.start_node("KGZ").await.unwrap();
        kgz.connected().await.unwrap();
        let done = hotline_cli(net.path(), &args).await.unwrap();
        assert!(
            done.status.success()
                && done
                    .stdout
                    .starts_with("OK: 2 message(s) addressed to KGZ are being delivered"),
            "{done:?}"
        );
        (relay, kgz)
    } else {
        relay.shutdown().await;
        let done = hotline_cli(net.path(), &args).await.unwrap();
        assert!(
            done.status.success() && done.stdout.starts_with("OK: 2 message(s) addressed to KGZ"),
            "{done:?}"
        );
        let relay = net.relay().await;
        (relay, net.start_node("KGZ").await.unwrap())
    };
    inbox_holds_exactly(&mut kgz, &ids, &[]).await;
    if relay_running {
        // KAZ's link was not touched: it still sends.
        let id = kaz.send("KGZ", "After the redelivery", &[]).await.unwrap();
        inbox_holds_exactly(&mut kgz, &[id], &ids).await;
        assert_eq!(kaz.proc.count_lines(&["relay link lost"]), 0);
    }
    relay.shutdown().await;
}

/// A sender's node restored from a backup lost the receipts of its messages that came
/// since (it had confirmed them, so the relay forwards them no more): its matrix showed an
/// acknowledged message as unacknowledged. `hotline relay redeliver --to` it, on the running
/// relay, forwards them again, and the matrix shows the acknowledgement once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_sender_learns_again_the_receipts_that_came_since_its_backup() {
    let (net, relay, relay_addr) = relay_on_a_fixed_address().await;
    let (kaz, kgz) = net.two_nodes(relay_addr).await.unwrap();
    let mut kaz_events = kaz.events().await.unwrap();
    let id = kaz.send("KGZ", "Before the backup", &[]).await.unwrap();
    kaz_events.wait_about("delivered", &id).await.unwrap();
    back_up(&net, "node-KAZ", "kaz-backup.db").await;
    kgz.cli_json(&["ack", &id, "--officer", "Duty officer"])
        .await
        .unwrap();
    kaz_events.wait_about("acknowledged", &id).await.unwrap();
    // KAZ's node has confirmed it (`ReceiptsStored`): the relay forwards it no more.
    let maddr = relay
        .metrics_addr()
        .expect("metrics enabled in the test config");
    let depth = "hotline_relay_forward_queue_depth{participant=\"KAZ\"}";
    wait_metric(maddr, depth, |n| n == 0.0).await.unwrap();
    drop(kaz_events);
    stop_node(kaz).await;
    let data = net.path().join("node-KAZ");
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::create_dir(&data).unwrap();
    let restore = ["restore", "--from", "kaz-backup.db", "--data", "node-KAZ"];
    let restored = hotline_cli(net.path(), &restore).await.unwrap();
    assert!(restored.status.success(), "{restored:?}");
    let since = restored
        .stdout
        .split("--since ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("no --since in {restored:?}"))
        .to_owned();
    let mut kaz = net.start_node("KAZ").await.unwrap();
    kaz.connected().await.unwrap();
    let mut kaz_events = kaz.events().await.unwrap();
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(
        (st["delivered"].as_u64(), st["acknowledged"].as_u64()),
        (Some(1), Some(0)),
        "the backup's matrix: {st}"
    );
    let config = net.relay_config.to_str().unwrap().to_owned();
    let args = [
        "relay",
        "redeliver",
        "--config",
        config.as_str(),
        "--to",
        "KAZ",
        "--since",
        since.as_str(),
    ];
    // The acknowledgement, and the delivered receipt if it was stored in the second the
    // backup's time names (rounded down): the node keeps only what it lacks.
    let done = hotline_cli(net.path(), &args).await.unwrap();
    assert!(
        done.status.success() && done.stdout.contains(" receipt(s) of messages KAZ sent"),
        "{done:?}"
    );
    kaz_events.wait_about("acknowledged", &id).await.unwrap();
    let st = kaz.cli_json(&["status", &id]).await.unwrap();
    assert_eq!(st["state"], "acknowledged", "{st}");
    assert_eq!(st["recipients"][0]["officer"], "Duty officer", "{st}");
    relay.shutdown().await;
}

/// A node that hangs (stopped with SIGSTOP, as a frozen machine) goes silent: the relay
/// counts its connection as lost, neither as one it closed nor as one the node ended; the
/// node, running again, connects again. The relay's idle timeout is 2 s here (6 s by
/// default), its keep-alive 0.5 s (below the timeout, as the configuration requires).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_is_a_lost_connection_to_the_relay() {
    let net = Net::sec_kaz_kgz_with("[limits]\nidle_timeout_ms = 2000\nkeepalive_ms = 500\n");
    let relay = net.relay().await;
    let maddr = relay
        .metrics_addr()
        .expect("metrics enabled in the test config");
    net.node_config("KAZ", relay.local_addr());
    let mut kaz = net.start_node("KAZ").await.unwrap();
    kaz.connected().await.unwrap();
    let after = kaz.proc.log_len();
    kaz.proc.signal("STOP").unwrap();
    let lost = wait_metric(maddr, "hotline_relay_connections_lost_total", |n| n == 1.0).await;
    // Running again before anything is asserted, so that a failure leaves no stopped process.
    kaz.proc.signal("CONT").unwrap();
    lost.unwrap();
    let text = http_get(maddr, "/metrics").await.unwrap();
    for (name, want) in [
        (
            "hotline_relay_connections_closed_total{code=\"Normal\"}",
            0.0,
        ),
        (
            "hotline_relay_connections_ended_by_node_total{code=\"Normal\"}",
            0.0,
        ),
        ("hotline_relay_connections_total", 1.0),
    ] {
        assert_eq!(metric(&text, name), Some(want), "{name}: {text}");
    }
    kaz.proc
        .wait_lines_from(after, &["relay connected"], 1)
        .await
        .unwrap();
    wait_metric(maddr, "hotline_relay_connections", |n| n == 1.0)
        .await
        .unwrap();
    relay.shutdown().await;
}

/// `n` messages from the raw client `from` to KGZ, bodies of `body_bytes`, written in one
/// write and each accepted; their ids, in order.
async fn many_to_kgz(from: &mut Client, n: usize, body_bytes: usize) -> Vec<String> {
    let audience = hotline_proto::Audience::Participants(vec![pid("KGZ")]);
    let (mut ids, mut buf) = (Vec::new(), Vec::new());
    for i in 0..n {
        let mut env = from.envelope(audience.clone(), &format!("backlog {i}"));
        env.body = "b".repeat(body_bytes);
        ids.push(env.id);
        let frame = hotline_proto::frame::NodeToRelay::Submit(from.sign(&env));
        buf.extend(hotline_proto::frame::encode_frame(&frame).unwrap());
    }
    let session = &mut from.session;
    let write = async {
        session.writer.write_raw(&buf).await?;
        anyhow::Ok(())
    };
    let answers = async {
        let mut accepted = 0;
        while accepted < n {
            // KGZ's receipts, forwarded as they come, are skipped.
            match session
                .reader
                .read::<hotline_proto::frame::RelayToNode>()
                .await?
            {
                Some(hotline_proto::frame::RelayToNode::Accepted(_)) => accepted += 1,
                Some(hotline_proto::frame::RelayToNode::Receipt(_)) => {}
                other => anyhow::bail!("unexpected {other:?}"),
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(EVENT_TIMEOUT, async { tokio::try_join!(write, answers) })
        .await
        .expect("the relay accepts the messages in time")
        .unwrap();
    ids.iter().map(ToString::to_string).collect()
}

/// A node back after an outage writes its pending acknowledgements as it connects, while the
/// relay writes it its backlog of deliveries. The node's link took what arrives only
/// between its writes (its reader task holds 256 frames), and the relay reads at most
/// `READ_AHEAD_FRAMES` frames ahead while its own write waits: so the node must not write
/// more acknowledgements at once than fit in what the relay reads ahead and its stream
/// window. (It wrote all of them in one write: with 1,200 acknowledgements of the longest
/// note, each side's write waited on the other's until the relay closed the link as a slow
/// consumer, with nothing stored, and so again at every connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_writing_many_acknowledgements_as_its_backlog_arrives_is_read_and_served() {
    const ACKS: usize = 1_200;
    const BACKLOG: usize = 1_000;
    let net = Net::sec_kaz_kgz_with(
        "[limits]\nwrite_timeout_ms = 1000\nrate_burst = 1000000\nbyte_rate_burst = 1000000000\n\
         receipt_rate_burst = 1000000\nreceipt_item_rate_burst = 1000000\n",
    );
    let addr = free_udp_addr();
    net.set_relay_listen(addr);
    let relay = net.relay().await;
    net.node_config("KGZ", addr);
    let mut kgz = net.start_node("KGZ").await.unwrap();
    kgz.connected().await.unwrap();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let received = many_to_kgz(&mut kaz, ACKS, 16).await;
    kgz.proc
        .wait_line(&["message received", &msg(received.last().unwrap())])
        .await
        .unwrap();

    // The relay goes away; KGZ's officer acknowledges every message, with the longest note.
    relay.shutdown().await;
    kgz.proc.wait_log("relay link lost").await.unwrap();
    let client = kgz.client();
    let note = "n".repeat(hotline_proto::limits::NOTE_BYTES_MAX);
    tokio::task::spawn_blocking(move || {
        for id in &received {
            let body = json!({"officer": "Duty officer", "note": note});
            client
                .post(&format!("/v1/messages/{id}/ack"), &body)
                .unwrap();
        }
    })
    .await
    .unwrap();
    stop_node(kgz).await;
    let log = net.path().join("node-KGZ.log");
    let lost = || {
        std::fs::read_to_string(&log)
            .unwrap()
            .matches("relay link lost")
            .count()
    };
    let lost_before = lost();

    // Back, the relay queues KGZ a backlog of 8 MB while KGZ is away.
    let relay = net.relay().await;
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let backlog = many_to_kgz(&mut kaz, BACKLOG, 8 * 1024).await;

    // KGZ comes back to it: the relay stores every acknowledgement, and KGZ the backlog.
    let mut kgz = net.start_node("KGZ").await.unwrap();
    kgz.proc
        .wait_line(&["message received", &msg(backlog.last().unwrap())])
        .await
        .unwrap();
    acknowledgement_stored_by_the_relay(&kgz).await;
    assert_eq!(lost(), lost_before, "the link stays up: {}", kgz.proc.log());
    relay.shutdown().await;
}

/// A node back after an outage, with a full outbox page of the largest messages and a page
/// of acknowledgements composed while it was away, connects to a relay holding it a backlog
/// of the largest messages: each side writes megabytes while the other does too. The
/// relay reads a page of frames ahead while its write waits; the node's link takes the
/// relay's frames while its own write waits. Everything must flow: the backlog stored, the
/// outbox accepted, the acknowledgements stored, on one link (a write that waits on the
/// other side's write ends the link as a slow consumer, at every connection). (This held
/// before the link wrote beside reading too, with these figures and with 600 messages in
/// the outbox and 1,500 in the backlog: the relay answers a page only between its writes, so
/// few frames of the node's wait in its read-ahead when the next page comes; the
/// deterministic case is `a_node_takes_its_relays_frames_while_its_own_write_waits`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_page_of_the_largest_messages_meets_a_backlog_of_them() {
    const ACKS: usize = 300;
    const OUTBOX: usize = 300;
    const BACKLOG: usize = 700;
    let body_max = hotline_proto::limits::BODY_BYTES_MAX;
    let net = Net::sec_kaz_kgz_with(
        "[limits]\nwrite_timeout_ms = 1000\nrate_burst = 1000000\nbyte_rate_burst = 1000000000\n\
         receipt_rate_burst = 1000000\nreceipt_item_rate_burst = 1000000\n",
    );
    let addr = free_udp_addr();
    net.set_relay_listen(addr);
    let relay = net.relay().await;
    net.node_config("KGZ", addr);
    let mut kgz = net.start_node("KGZ").await.unwrap();
    kgz.connected().await.unwrap();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let received = many_to_kgz(&mut kaz, ACKS, 16).await;
    kgz.proc
        .wait_line(&["message received", &msg(received.last().unwrap())])
        .await
        .unwrap();

    // The relay goes away; KGZ's officer acknowledges every message, with the longest
    // note, and writes a page and more of the largest messages to KAZ.
    relay.shutdown().await;
    kgz.proc.wait_log("relay link lost").await.unwrap();
    let client = kgz.client();
    let note = "n".repeat(hotline_proto::limits::NOTE_BYTES_MAX);
    tokio::task::spawn_blocking(move || {
        for id in &received {
            let body = json!({"officer": "Duty officer", "note": note});
            client
                .post(&format!("/v1/messages/{id}/ack"), &body)
                .unwrap();
        }
        for i in 0..OUTBOX {
            let body = json!({"to": ["KAZ"], "subject": format!("outbox {i}"), "body": "o".repeat(body_max)});
            client.post("/v1/messages", &body).unwrap();
        }
    })
    .await
    .unwrap();
    stop_node(kgz).await;
    let log = net.path().join("node-KGZ.log");
    let lost = || {
        std::fs::read_to_string(&log)
            .unwrap()
            .matches("relay link lost")
            .count()
    };
    let lost_before = lost();

    // Back, the relay queues KGZ a backlog of the largest messages while KGZ is away.
    let relay = net.relay().await;
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let backlog = many_to_kgz(&mut kaz, BACKLOG, body_max).await;
    drop(kaz);

    // KGZ comes back to it: everything flows, on one link.
    let mut kgz = net.start_node("KGZ").await.unwrap();
    let last = msg(backlog.last().unwrap());
    kgz.proc
        .wait_line_within(
            std::time::Duration::from_secs(120),
            &["message received", &last],
        )
        .await
        .unwrap_or_else(|e| panic!("everything flows in time: {e}\n{}", kgz.proc.log()));
    kgz.wait_status("outbox and acknowledgements answered", |st| {
        st["outbox"] == 0 && st["relays"][0]["acks_pending"] == 0
    })
    .await
    .unwrap_or_else(|e| panic!("everything flows in time: {e}\n{}", kgz.proc.log()));
    assert_eq!(
        kgz.proc.count_lines(&["message received", &last]),
        1,
        "{}",
        kgz.proc.log()
    );
    assert_eq!(lost(), lost_before, "the link stays up: {}", kgz.proc.log());
    relay.shutdown().await;
}

/// A node keeps taking its relay's frames while its own write waits. A relay reads only so
/// far ahead while its own write to the node waits (`READ_AHEAD_FRAMES`); once that is
/// full, it reads nothing, as this impostor does from the start. KAZ has more of its outbox
/// to write than the stream window holds; the impostor writes it deliveries, more frames
/// than KAZ's reader holds and more bytes than the window: KAZ must store them all and
/// the impostor's write end, though KAZ's own write cannot. (The link waited on its write
/// and took nothing meanwhile: the impostor's write waited in turn until KAZ timed the link
/// out as a slow consumer, which with a relay whose read-ahead was full was a link lost,
/// with nothing stored, at every connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_its_relays_frames_while_its_own_write_waits() {
    const DELIVERIES: usize = 600;
    let net = net();
    let (mut relay, mut kaz) = net.node_with_impostor("KAZ").await.unwrap();
    let client = kaz.client();
    // 30 messages of the largest body: more than the stream window (quinn's 1.25 MB).
    let body = "x".repeat(hotline_proto::limits::BODY_BYTES_MAX);
    tokio::task::spawn_blocking(move || {
        for i in 0..30 {
            let m = json!({"to": ["KGZ"], "subject": format!("large {i}"), "body": body});
            client.post("/v1/messages", &m).unwrap();
        }
    })
    .await
    .unwrap();
    // 600 deliveries of 8 kB from KGZ: more frames than KAZ's reader holds (256), and more
    // bytes than the window, in one write.
    let kgz = net.key("KGZ");
    let mut buf = Vec::new();
    let mut last = None;
    for seq in 1..=DELIVERIES as u64 {
        let mut env = flash_to_kgz("KGZ", seq, &format!("backlog {seq}"), &"b".repeat(8 * 1024));
        env.audience = hotline_proto::Audience::Participants(vec![pid("KAZ")]);
        last = Some(env.id);
        let frame = hotline_proto::frame::RelayToNode::Deliver(Signed::sign(&env, &kgz).unwrap());
        buf.extend(hotline_proto::frame::encode_frame(&frame).unwrap());
    }
    // Within the node's own limit on a write that makes no progress (10 s), after which the
    // link ends whatever it does.
    let written = tokio::time::timeout(
        std::time::Duration::from_secs(8),
        relay.writer.write_raw(&buf),
    )
    .await;
    assert!(
        matches!(written, Ok(Ok(()))),
        "KAZ reads while its write waits: {written:?}\n{}",
        kaz.proc.log()
    );
    kaz.proc
        .wait_line(&["message received", &msg(&last.unwrap().to_string())])
        .await
        .unwrap();
    assert_eq!(
        kaz.proc.count_lines(&["relay link lost"]),
        0,
        "{}",
        kaz.proc.log()
    );
    relay.conn.close(0u32.into(), b"test done");
}
