// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The signals at the protocol level: what is negotiated for them, and the
//! MTA's bounces read from the body, from the local door only.

use crate::common::*;
use indymilter_test::*;
use std::net::SocketAddr;
use std::time::Duration;

/// Postfix's door for its own mail: 127.0.0.1, port 0.
const LOCAL_DOOR: [u8; 4] = [127, 0, 0, 1];

async fn open(m: &Milter) -> TestConnection {
    TestConnection::configure()
        .read_timeout(Duration::from_secs(10))
        .open_tcp(m.addr)
        .await
        .expect("milter connection")
}

#[tokio::test]
async fn bodies_are_asked_for_only_while_bounce_rules_exist() {
    let without = Milter::spawn(&fixture("escalation.toml")).await;
    let conn = open(&without).await;
    assert!(
        conn.negotiated_opts().contains(ProtoOpts::NO_BODY),
        "{:?}",
        conn.negotiated_opts()
    );
    conn.close().await.unwrap();

    let with = Milter::spawn(&fixture("bounces.toml")).await;
    let mut conn = open(&with).await;
    let opts = conn.negotiated_opts();
    assert!(
        !opts.contains(ProtoOpts::NO_BODY) && opts.contains(ProtoOpts::SKIP),
        "{opts:?}"
    );
    // A message that is no bounce: its body is skipped at the first chunk.
    conn.connect("client.example", LOCAL_DOOR).await.unwrap();
    conn.macros(MacroStage::Mail, [("i", "Q1"), ("{auth_authen}", "alice@example.com")])
        .await
        .unwrap();
    assert_eq!(conn.mail(["<alice@example.com>"]).await.unwrap(), Status::Continue);
    assert_eq!(conn.rcpt(["<bob@example.net>"]).await.unwrap(), Status::Continue);
    assert_eq!(conn.eoh().await.unwrap(), Status::Continue);
    assert_eq!(conn.body("Hello.\r\n").await.unwrap(), Status::Skip);
    let (_, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    conn.close().await.unwrap();
}

/// A Postfix bounce as its bounce daemon writes it, reporting `failed`
/// recipients of the message `queue_id`.
fn postfix_bounce(queue_id: &str, failed: usize) -> (Vec<(&'static str, String)>, String) {
    let headers = vec![
        (
            "Received",
            "by mta.example.net (Postfix)\r\n\tid 4XyZ1; Mon,  1 Dec 2026 10:00:00 +0000 (UTC)".to_string(),
        ),
        (
            "From",
            "MAILER-DAEMON@mta.example.net (Mail Delivery System)".to_string(),
        ),
        ("To", "alice@example.com".to_string()),
        ("MIME-Version", "1.0".to_string()),
        (
            "Content-Type",
            "multipart/report; report-type=delivery-status;\r\n\tboundary=\"B1\"".to_string(),
        ),
    ];
    let mut body = String::from(
        "--B1\r\nContent-Type: text/plain\r\n\r\nUndelivered.\r\n\r\n--B1\r\nContent-Type: message/delivery-status\r\n\r\n",
    );
    body.push_str(&format!(
        "Reporting-MTA: dns; mta.example.net\r\nX-Postfix-Queue-ID: {queue_id}\r\n\r\n"
    ));
    for i in 0..failed {
        body.push_str(&format!(
            "Final-Recipient: rfc822; unknown{i}@remote.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        ));
    }
    body.push_str("--B1--\r\n");
    (headers, body)
}

/// One message of `alice@example.com` with queue id `queue_id`, accepted.
async fn send_alice(m: &Milter, queue_id: &str) -> Outcome {
    let mut msg = Msg::from_user("alice@example.com");
    msg.queue_id = queue_id.into();
    Mta::send(m.addr, &msg).await
}

/// Delivers a bounce through `client` in body chunks of 100 bytes; the
/// statuses of the body chunks and of the end of the message.
async fn deliver_bounce(
    m: &Milter,
    client: impl indymilter_test::IntoSocketInfo,
    queue_id: &str,
    failed: usize,
) -> (Vec<Status>, Status) {
    deliver_report(m, client, &[], queue_id, failed).await
}

/// Like [`deliver_bounce`], with `first` headers before the bounce's own.
async fn deliver_report(
    m: &Milter,
    client: impl indymilter_test::IntoSocketInfo,
    first: &[(&'static str, String)],
    queue_id: &str,
    failed: usize,
) -> (Vec<Status>, Status) {
    let mut conn = open(m).await;
    conn.connect("localhost", client).await.unwrap();
    conn.macros(MacroStage::Mail, [("i", "B1")]).await.unwrap();
    assert_eq!(conn.mail(["<>"]).await.unwrap(), Status::Continue);
    assert_eq!(conn.rcpt(["<alice@example.com>"]).await.unwrap(), Status::Continue);
    let (headers, body) = postfix_bounce(queue_id, failed);
    for (name, value) in first.iter().chain(&headers) {
        let status = conn.header(*name, value.as_str()).await.unwrap();
        assert!(matches!(status, Status::Continue | Status::Noreply), "{status:?}");
    }
    assert_eq!(conn.eoh().await.unwrap(), Status::Continue);
    let mut statuses = Vec::new();
    for chunk in body.as_bytes().chunks(100) {
        let status = conn.body(chunk.to_vec()).await.unwrap();
        let skipped = status == Status::Skip;
        statuses.push(status);
        if skipped {
            break;
        }
    }
    let (_, status) = conn.eom().await.unwrap();
    conn.close().await.unwrap();
    (statuses, status)
}

#[tokio::test]
async fn the_mtas_bounces_lock_the_sender_and_forged_ones_over_smtp_do_not() {
    let m = Milter::spawn(&fixture("bounces.toml")).await;
    assert!(send_alice(&m, "4AAAA1").await.accepted());
    assert!(send_alice(&m, "4AAAA2").await.accepted());

    // The same report from an SMTP client (a real port): mail like any
    // other, its body skipped, nothing charged.
    let smtp: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    for _ in 0..3 {
        let (chunks, end) = deliver_bounce(&m, smtp, "4AAAA1", 5).await;
        assert_eq!(chunks, [Status::Skip]);
        assert_eq!(end, Status::Continue);
    }
    assert!(send_alice(&m, "4AAAA3").await.accepted(), "nothing charged");

    // The same report from a local user with the sendmail command: Postfix's
    // pickup stamp comes first. That user's mail, not the MTA's bounce.
    let stamp = [("X-Egress-Submitter", "uid=0 id=B1".to_string())];
    for _ in 0..3 {
        let (chunks, end) = deliver_report(&m, LOCAL_DOOR, &stamp, "4AAAA1", 5).await;
        assert_eq!(chunks, [Status::Skip]);
        assert_eq!(end, Status::Continue);
    }
    assert!(send_alice(&m, "4AAAA3").await.accepted(), "nothing charged");

    // From the MTA, naming a message of someone else's it never counted:
    // charged to no one.
    let (_, end) = deliver_bounce(&m, LOCAL_DOOR, "4ZZZZ9", 9).await;
    assert_eq!(end, Status::Continue);
    assert!(send_alice(&m, "4AAAA4").await.accepted());

    // The MTA's bounces of alice's messages: read in full, 3 + 2 failed
    // recipients, more than the rule's 4: alice is locked; the bounces
    // themselves are accepted.
    let (chunks, end) = deliver_bounce(&m, LOCAL_DOOR, "4AAAA1", 3).await;
    assert!(chunks.iter().all(|s| *s == Status::Continue), "{chunks:?}");
    assert_eq!(end, Status::Continue);
    assert!(send_alice(&m, "4AAAA5").await.accepted(), "3 of 4");
    let (_, end) = deliver_bounce(&m, LOCAL_DOOR, "4AAAA2", 2).await;
    assert_eq!(end, Status::Continue, "a bounce is never refused");
    eventually(Duration::from_secs(5), "alice locked", async || {
        m.lock_list().get("alice@example.com").is_some()
    })
    .await;
    let lock = m.lock_list().get("alice@example.com").cloned().unwrap();
    assert!(
        lock.reason.contains("rule \"lock-bounces\" exceeded: 4/4 bounces"),
        "{}",
        lock.reason
    );
    assert!(lock.reason.contains("queue id 4AAAA2"), "{}", lock.reason);
    let refused = send_alice(&m, "4AAAA6").await;
    assert!(
        refused.refusal().is_some_and(|r| r.starts_with("550 5.7.1")),
        "{refused:?}"
    );
    // Still: its next bounce passes.
    let (_, end) = deliver_bounce(&m, LOCAL_DOOR, "4AAAA5", 1).await;
    assert_eq!(end, Status::Continue);
}
