//! The real `hotline relay` binary as a child process: nothing accepted is lost to
//! `kill -9`, SIGTERM shuts down cleanly, SIGHUP reloads the roster.

use std::net::SocketAddr;
use std::time::Duration;

use hotline_e2e::*;
use hotline_proto::frame::{ErrorCode, RelayToNode};
use hotline_proto::{Audience, MessageId, ReceiptKind, Role};

fn net() -> Net {
    Net::new(
        &[
            ("SEC", Role::Secretariat),
            ("KAZ", Role::Member),
            ("KGZ", Role::Member),
            ("TJK", Role::Member),
        ],
        &[],
    )
}

/// Starts `hotline relay --config relay.toml` and waits until it listens; the config binds
/// port 0, so the address comes from the "relay listening" log line.
async fn start(net: &Net, log: &str) -> (Proc, SocketAddr) {
    let config = net.relay_config.to_str().unwrap();
    let mut p = Proc::spawn(&["relay", "--config", config], net.path(), log).unwrap();
    let line = p.wait_log("relay listening").await.unwrap();
    let addr = addr_field(&line).unwrap();
    assert_ne!(addr.port(), 0, "{line}");
    (p, addr)
}

/// Stops the relay with SIGTERM, checks that it exits cleanly, and returns its whole log.
async fn stopped(relay: Proc) -> String {
    relay.signal("TERM").unwrap();
    let (status, relay) = relay.wait_exit(Duration::from_secs(5)).await.unwrap();
    assert!(status.success(), "{status}: {}", relay.log());
    relay.log()
}

#[tokio::test]
async fn accepted_message_survives_kill_9_and_is_delivered_once() {
    let net = net();
    let (mut relay, addr) = start(&net, "relay-1.log").await;
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let env = kaz.envelope(Audience::Participants(vec![pid("KGZ")]), "before the crash");
    let m1 = kaz.sign(&env);
    let accepted = kaz.submit_wait(&m1).await.unwrap().unwrap();
    assert_eq!(accepted.recipients, vec![pid("KGZ")]);

    relay.kill9();
    assert!(
        !relay.log().contains("relay stopped"),
        "kill -9 gives no chance to shut down"
    );
    drop(kaz);

    let (mut relay, addr) = start(&net, "relay-2.log").await;
    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    let (got, _) = kgz.next_deliver().await.unwrap();
    assert_eq!(got, m1, "the accepted message survived the crash");
    let receipt = kgz
        .receipt_stored(ReceiptKind::Delivered, std::slice::from_ref(&got))
        .await
        .unwrap();

    // A second crash, right after the receipt was stored: it is still forwarded.
    relay.kill9();
    drop(kgz);
    let (_relay, addr) = start(&net, "relay-3.log").await;
    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let (fwd, _) = kaz
        .until(|f| match f {
            RelayToNode::Receipt(r) => Some(r.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(fwd, receipt, "the stored receipt survived the crash");

    // The relay still knows KAZ's sequence number and the original acceptance.
    assert_eq!(kaz.seq, env.seq.0, "Welcome.last_seq survived the crash");
    let again = kaz.submit_wait(&m1).await.unwrap().unwrap();
    assert_eq!(
        again, accepted,
        "same recipients and original accepted_at_ms"
    );

    // Delivered exactly once: the next delivery is a fresh message, not M1 again.
    let m2 = kaz.send_to("KGZ", "after the crash").await.unwrap();
    let (next, skipped) = kgz.next_deliver().await.unwrap();
    assert_eq!(next, m2);
    assert!(
        !skipped.iter().any(|f| matches!(f, RelayToNode::Deliver(_))),
        "{skipped:?}"
    );
}

#[tokio::test]
async fn kill_9_under_load_loses_nothing_that_was_accepted() {
    let net = net();
    let (mut relay, addr) = start(&net, "relay-1.log").await;
    let mut kaz = net.client(addr, "KAZ").await.unwrap();

    // Pipeline many submissions; kill the relay as soon as some are accepted, while the
    // rest are still in flight.
    let mut ids = Vec::new();
    for i in 0..300 {
        let env = kaz.envelope(Audience::Participants(vec![pid("KGZ")]), &format!("m{i}"));
        ids.push(env.id);
        let s = kaz.sign(&env);
        kaz.submit(&s).await.unwrap();
    }
    let mut accepted: Vec<MessageId> = Vec::new();
    while accepted.len() < 20 {
        let (id, _) = kaz
            .until(|f| match f {
                RelayToNode::Accepted(a) => Some(a.id),
                _ => None,
            })
            .await
            .unwrap();
        accepted.push(id);
    }
    relay.kill9();
    drop(kaz);

    let (_relay, addr) = start(&net, "relay-2.log").await;
    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let last_seq = kaz.seq as usize;
    assert!(
        last_seq >= accepted.len(),
        "{last_seq} < {} accepted",
        accepted.len()
    );
    // The backlog is exactly the committed prefix, in order, once each.
    let mut backlog = Vec::new();
    for _ in 0..last_seq {
        let (got, skipped) = kgz.next_deliver().await.unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        backlog.push(got.decode_unverified().unwrap().id);
    }
    assert_eq!(backlog, ids[..last_seq], "committed messages, in seq order");
    for id in &accepted {
        assert!(backlog.contains(id), "accepted {id} was lost");
    }
    // Nothing more is queued: the next delivery is a fresh message.
    let fresh = kaz.send_to("KGZ", "fresh").await.unwrap();
    let (next, _) = kgz.next_deliver().await.unwrap();
    assert_eq!(next, fresh);
}

#[tokio::test]
async fn sigterm_closes_sessions_and_exits_cleanly() {
    let net = net();
    let (relay, addr) = start(&net, "relay.log").await;
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    assert_flows(&mut kaz, &mut kgz, "before SIGTERM")
        .await
        .unwrap();

    relay.signal("TERM").unwrap();
    assert_eq!(kaz.closed_code().await.unwrap(), ErrorCode::GoingAway);
    let (status, mut relay) = relay.wait_exit(Duration::from_secs(5)).await.unwrap();
    assert!(status.success(), "{status}: {}", relay.log());
    relay.wait_log("relay stopped").await.unwrap();

    // The store was closed cleanly: a new relay on it starts and serves.
    let (_relay, addr) = start(&net, "relay-2.log").await;
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    assert_eq!(kaz.seq, 1);
    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    assert_flows(&mut kaz, &mut kgz, "after restart")
        .await
        .unwrap();
}

#[tokio::test]
async fn sighup_reloads_the_roster() {
    let mut net = net();
    let (mut relay, addr) = start(&net, "relay.log").await;
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let tjk = net.client(addr, "TJK").await.unwrap();

    // A roster that is not newer is refused and logged; the old one stays in force.
    let before = relay.log_len();
    relay.signal("HUP").unwrap();
    relay
        .wait_log_from(before, "roster not reloaded")
        .await
        .unwrap();

    net.revoke("TJK");
    let before = relay.log_len();
    relay.signal("HUP").unwrap();
    relay
        .wait_log_from(before, "SIGHUP: roster reloaded")
        .await
        .unwrap();
    assert_eq!(tjk.closed_code().await.unwrap(), ErrorCode::Revoked);
    let (update, _) = kaz
        .until(|f| match f {
            RelayToNode::RosterUpdate(r) => Some(r.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(update.decode_unverified().unwrap().version, 2);
}

/// A roster reloaded with SIGHUP is kept in the relay's store: a restart on the older
/// roster file (an administrator restoring an old /etc) is refused, exit status 78, naming
/// both versions and the file, rather than let the revoked participant in again.
#[tokio::test]
async fn a_reloaded_roster_is_kept_and_an_older_file_is_refused_at_start() {
    let mut net = net();
    let file = net.path().join("roster.signed");
    let v1 = std::fs::read(&file).unwrap();
    let (mut relay, addr) = start(&net, "relay-1.log").await;
    let tjk = net.client(addr, "TJK").await.unwrap();
    net.revoke("TJK");
    let before = relay.log_len();
    relay.signal("HUP").unwrap();
    relay
        .wait_log_from(before, "SIGHUP: roster reloaded")
        .await
        .unwrap();
    assert_eq!(tjk.closed_code().await.unwrap(), ErrorCode::Revoked);
    stopped(relay).await;

    std::fs::write(&file, &v1).unwrap();
    let config = net.relay_config.to_str().unwrap();
    let relay = Proc::spawn(&["relay", "--config", config], net.path(), "relay-2.log").unwrap();
    let (status, relay) = relay.wait_exit(Duration::from_secs(10)).await.unwrap();
    let log = relay.log();
    assert_eq!(status.code(), Some(78), "{status}: {log}");
    assert!(
        log.contains("version 1 is older than version 2, which this relay last ran with"),
        "{log}"
    );
    assert!(log.contains(&file.display().to_string()), "{log}");
    assert!(!log.contains("relay listening"), "{log}");
}

/// A `data_dir` that names a file is a configuration error: the relay exits with status 78
/// (a restart cannot help), naming the directory and the file in the way, not 1.
#[tokio::test]
async fn a_relay_whose_data_dir_is_a_file_cannot_start() {
    let net = net();
    let file = net.path().join("relay-data");
    std::fs::write(&file, "not a directory\n").unwrap();
    let config = net.relay_config.to_str().unwrap();
    let relay = Proc::spawn(&["relay", "--config", config], net.path(), "relay.log").unwrap();
    let (status, relay) = relay.wait_exit(Duration::from_secs(10)).await.unwrap();
    let log = relay.log();
    assert_eq!(status.code(), Some(78), "{status}: {log}");
    let said = format!(
        "data_dir {0}: {0} is a file, not a directory",
        file.display()
    );
    assert!(log.contains(&said), "{log}");
    assert!(!log.contains("relay listening"), "{log}");
}

/// A node that ends its connection with an error code (it refused a frame from the relay,
/// or its own store failed) is a warning in the relay's log, with the node's code and
/// reason; a node that closes normally is not.
#[tokio::test]
async fn a_node_closing_with_an_error_is_a_warning_in_the_relay_log() {
    let net = net();
    let (mut relay, addr) = start(&net, "relay.log").await;
    let kaz = net.client(addr, "KAZ").await.unwrap();
    kaz.session.conn.close(
        ErrorCode::Internal.close_code().into(),
        b"store: database or disk is full",
    );
    let line = relay
        .wait_log("the node closed the connection with an error")
        .await
        .unwrap();
    assert!(
        line.contains("WARN") && line.contains("Internal") && line.contains("disk is full"),
        "{line}"
    );

    let kgz = net.client(addr, "KGZ").await.unwrap();
    let before = relay.log_len();
    kgz.close();
    relay.wait_log_from(before, "session ended").await.unwrap();
    let log = stopped(relay).await;
    assert_eq!(
        log.matches("the node closed the connection with an error")
            .count(),
        1,
        "{log}"
    );
}

/// Anyone who can reach the relay can fail to log in, as often as they like: the relay
/// warns about such connections with a count, one line at most every 10 s, rather than a
/// line each (the metrics count each).
#[tokio::test]
async fn failed_log_ins_are_one_warning_with_a_count_not_a_line_each() {
    let net = net();
    let (mut relay, addr) = start(&net, "relay.log").await;
    let stranger = hotline_proto::SigningKey::from_bytes(&[0x5A; 32]);
    for _ in 0..5 {
        let code =
            refusal_code(Client::connect(addr, net.fingerprint, "ZZZ", stranger.clone()).await);
        assert_eq!(code.unwrap(), ErrorCode::UnknownParticipant);
    }
    // A node still logs in, and its session's end is logged as before.
    let kaz = net.client(addr, "KAZ").await.unwrap();
    let before = relay.log_len();
    kaz.close();
    relay.wait_log_from(before, "session ended").await.unwrap();
    let log = stopped(relay).await;
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connections closed before logging in"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains("WARN")
            && warned[0].contains("UnknownParticipant")
            && warned[0].contains("closed=1"),
        "{}",
        warned[0]
    );
}

/// A node with a valid key logging in again and again past its participant's budget of
/// sessions is refused each time: the relay logs one warning naming the participant, with a
/// count, at most every 10 s, not a line each (the metrics count each).
#[tokio::test]
async fn logins_over_the_session_budget_are_one_warning_with_a_count_not_a_line_each() {
    let net = Net::with_relay_toml(
        &[
            ("SEC", Role::Secretariat),
            ("KAZ", Role::Member),
            ("KGZ", Role::Member),
        ],
        &[],
        "[limits]\nsession_burst = 1\nsession_refill_ms = 600000\n",
    );
    let (mut relay, addr) = start(&net, "relay.log").await;
    let _kgz = net.client(addr, "KGZ").await.unwrap();
    for _ in 0..5 {
        let code = refusal_code(net.client(addr, "KGZ").await);
        assert_eq!(code.unwrap(), ErrorCode::LimitExceeded);
    }
    // Another participant logs in, and its session's end is logged as before.
    let kaz = net.client(addr, "KAZ").await.unwrap();
    let before = relay.log_len();
    kaz.close();
    relay.wait_log_from(before, "session ended").await.unwrap();
    let log = stopped(relay).await;
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("LimitExceeded"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains("budget of sessions")
            && warned[0].contains("peer=KGZ")
            && warned[0].contains("refused=1"),
        "{}",
        warned[0]
    );
}

/// A node sending past its rate is refused as fast as it sends: the relay logs its
/// refusals once at most every 10 s a session, with a count (the node logs each refusal it
/// gets, and the metrics count each).
#[tokio::test]
async fn refusals_are_one_log_line_a_session_and_interval_with_a_count() {
    let net = Net::sec_kaz_kgz_with("[limits]\nrate_per_sec = 1\nrate_burst = 1\n");
    let (relay, addr) = start(&net, "relay.log").await;
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let mut codes = Vec::new();
    for n in 0..5 {
        let env = kaz.envelope(Audience::Participants(vec![pid("KGZ")]), &format!("m{n}"));
        let r = kaz.submit_wait(&kaz.sign(&env)).await.unwrap();
        codes.push(r.err().map(|r| r.code));
    }
    let refused = codes.iter().filter(|c| c.is_some()).count();
    assert!(refused >= 3, "{codes:?}");
    kaz.close();
    let log = stopped(relay).await;
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" rejected")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("rejected=1") && lines[0].contains("RateLimited"),
        "{}",
        lines[0]
    );
}

/// A second relay started on a data directory that a running relay holds is refused at
/// once, naming the lock, and the first one goes on serving; once the first has stopped,
/// a relay starts there again.
#[tokio::test]
async fn a_second_relay_on_the_same_store_is_refused() {
    let net = net();
    let (relay, addr) = start(&net, "relay-1.log").await;
    let config = net.relay_config.to_str().unwrap();
    refused_for_its_lock(
        &["relay", "--config", config],
        net.path(),
        "relay-2.log",
        "relay-data/LOCK",
        "relay listening",
    )
    .await;

    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    kaz.send_to("KGZ", "still served").await.unwrap();
    kaz.close();
    stopped(relay).await;
    let (relay, _) = start(&net, "relay-3.log").await;
    stopped(relay).await;
}
