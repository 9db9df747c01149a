// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The connection watchdog of the real binary, driven with raw milter
//! packets the way a broken or hostile client on the socket would: silence,
//! half a packet, a pause, a command out of order, a packet over 1 MiB, and
//! more connections than `max_connections`.

use crate::common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A daemon (real binary) whose configuration starts with `top` (top-level
/// keys) followed by the escalation fixture.
async fn start(top: &str) -> (Process, tempfile::TempDir) {
    start_with(top, "").await
}

/// The same with `tail` (tables) after the fixture.
async fn start_with(top: &str, tail: &str) -> (Process, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!("{top}\n{}\n{tail}\n", fixture("escalation.toml"));
    let path = write_config(dir.path(), &config, &format!("inet:{addr}"));
    (Process::start(&path, addr).await, dir)
}

/// The value of `name=` in a log line, as a number.
fn field(line: &str, name: &str) -> u64 {
    let at = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    let value = &line[at + name.len() + 2..];
    let end = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    value[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number in {line}"))
}

/// One series of the status listener's /metrics (a plain HTTP/1.0 GET).
fn metric(status: SocketAddr, series: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(status).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn packet(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = (payload.len() as u32 + 1).to_be_bytes().to_vec();
    p.push(kind);
    p.extend_from_slice(payload);
    p
}

/// The MTA's negotiation: protocol 6, every action and option offered.
fn optneg() -> Vec<u8> {
    packet(b'O', &[6u32, 0x1ff, 0x1f_ffff].map(u32::to_be_bytes).concat())
}

/// CONNECT from 192.0.2.10 port 25000.
fn connect_packet() -> Vec<u8> {
    let mut p = b"client.example\0".to_vec();
    p.push(b'4');
    p.extend_from_slice(&25000u16.to_be_bytes());
    p.extend_from_slice(b"192.0.2.10\0");
    packet(b'C', &p)
}

async fn read_packet(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let read = async {
        let len = s.read_u32().await?;
        let kind = s.read_u8().await?;
        let mut payload = vec![0; len.saturating_sub(1) as usize];
        s.read_exact(&mut payload).await?;
        std::io::Result::Ok((kind, payload))
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a reply within 5 s")
        .expect("a reply")
}

/// A raw connection that has negotiated and sent CONNECT, as Postfix does
/// at the start of an SMTP session.
async fn open_session(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&optneg()).await.unwrap();
    assert_eq!(read_packet(&mut s).await.0, b'O');
    s.write_all(&connect_packet()).await.unwrap();
    assert_eq!(read_packet(&mut s).await.0, b'c');
    s
}

/// Waits until the milter closes `s`, at most `within`; returns how long
/// that took. Fails if the milter sends anything or keeps it open.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0; 64];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => start.elapsed(),
        Ok(Ok(n)) => panic!("the milter answered {:?} instead of closing", &buf[..n]),
        Err(_) => panic!("the connection is still open after {within:?}"),
    }
}

async fn log_line(p: &Process, needle: &str) -> String {
    eventually(Duration::from_secs(5), needle, async || p.log_text().contains(needle)).await;
    let log = p.log_text();
    log.lines().find(|l| l.contains(needle)).unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_read_timeout() {
    let (p, _dir) = start("read_timeout = \"1s\"\nidle_timeout = \"1h\"").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let took = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(900), "{took:?}");
    let line = log_line(&p, "the MTA did not negotiate within read_timeout").await;
    assert!(
        line.contains("read_timeout=\"1s\"") && line.contains("peer=\"127.0.0.1:"),
        "{line}"
    );
}

#[tokio::test]
async fn half_a_packet_is_closed_after_read_timeout() {
    let (p, _dir) = start("read_timeout = \"1s\"\nidle_timeout = \"1h\"").await;
    let mut s = open_session(p.addr).await;
    let mail = packet(b'M', b"<mallory@example.com>\0");
    s.write_all(&mail[..9]).await.unwrap();
    let took = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(900), "{took:?}");
    let line = log_line(&p, "the MTA stopped in the middle of a packet").await;
    assert!(line.contains("command=\"M\""), "{line}");
}

#[tokio::test]
async fn a_pause_between_commands_is_kept_and_idle_timeout_ends_a_silent_session() {
    let (p, _dir) = start("read_timeout = \"1s\"\nidle_timeout = \"3s\"").await;
    let mut s = open_session(p.addr).await;
    // Longer than read_timeout, shorter than idle_timeout: an SMTP client
    // thinking between commands. The session goes on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.write_all(&packet(b'D', b"M{auth_authen}\0alice@example.com\0"))
        .await
        .unwrap();
    s.write_all(&packet(b'M', b"<alice@example.com>\0")).await.unwrap();
    assert_eq!(read_packet(&mut s).await.0, b'c', "MAIL accepted after the pause");
    let took = closed_within(&mut s, Duration::from_secs(8)).await;
    assert!(took >= Duration::from_millis(2800), "{took:?}");
    let line = log_line(&p, "no command from the MTA within idle_timeout").await;
    assert!(
        line.contains("idle_timeout=\"3s\"") && line.contains("last_command=\"M\""),
        "{line}"
    );
}

#[tokio::test]
async fn a_command_out_of_order_gets_the_connection_closed_at_once() {
    let (p, _dir) = start("read_timeout = \"10s\"\nidle_timeout = \"1h\"").await;
    let mut s = open_session(p.addr).await;
    // RCPT without MAIL: indymilter drops it without a reply.
    s.write_all(&packet(b'R', b"<friend@example.net>\0")).await.unwrap();
    closed_within(&mut s, Duration::from_secs(2)).await;
    let line = log_line(&p, "the MTA sent a command out of order").await;
    assert!(line.contains("command=\"R\"") && line.contains("after=\"C\""), "{line}");

    // A second negotiation on a session is out of order too.
    let mut s = open_session(p.addr).await;
    s.write_all(&optneg()).await.unwrap();
    closed_within(&mut s, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_packet_over_one_mib_is_logged() {
    let (p, _dir) = start("").await;
    let mut s = open_session(p.addr).await;
    let mut header = (2u32 * 1024 * 1024).to_be_bytes().to_vec();
    header.push(b'L');
    s.write_all(&header).await.unwrap();
    s.write_all(&[b'x'; 4096]).await.unwrap();
    closed_within(&mut s, Duration::from_secs(5)).await;
    let line = log_line(&p, "the MTA announced a packet larger than 1 MiB").await;
    assert!(
        line.contains("bytes=2097152") && line.contains("max_bytes=1048576"),
        "{line}"
    );
}

#[tokio::test]
async fn max_connections_reached_is_logged_once_and_waiting_connections_go_on_in_turn() {
    let (p, _dir) = start("max_connections = 1\nread_timeout = \"5s\"\nidle_timeout = \"1h\"").await;
    let mut first = Mta::open(p.addr).await;
    first.connect([192, 0, 2, 10]).await;

    // Two more MTA connections negotiate; both must wait for the slot.
    let mut second = TcpStream::connect(p.addr).await.unwrap();
    second.write_all(&optneg()).await.unwrap();
    let mut third = TcpStream::connect(p.addr).await.unwrap();
    third.write_all(&optneg()).await.unwrap();
    let mut byte = [0; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), second.peek(&mut byte)).await;
    assert!(early.is_err(), "no reply while the only slot is taken");
    let line = log_line(&p, "max_connections reached").await;
    // The second is the first to wait (the third may be in line already).
    assert!(line.contains("max_connections=1"), "{line}");
    assert!((1..=2).contains(&field(&line, "waiting")), "{line}");
    assert_eq!(field(&line, "connections"), 1, "{line}");
    assert!(field(&line, "longest_wait_ms") < 500, "{line}");

    // The slot frees: the second goes on, the third waits for it in turn.
    first.close().await;
    assert_eq!(read_packet(&mut second).await.0, b'O');
    let early = tokio::time::timeout(Duration::from_millis(500), third.peek(&mut byte)).await;
    assert!(early.is_err(), "the third still waits");
    second.write_all(&packet(b'Q', b"")).await.unwrap();
    assert_eq!(read_packet(&mut third).await.0, b'O');
    third.write_all(&connect_packet()).await.unwrap();
    assert_eq!(read_packet(&mut third).await.0, b'c');

    // Both waits fall in one 10-second interval: one line.
    let log = p.log_text();
    assert_eq!(log.matches("max_connections reached").count(), 1, "{log}");
}

#[tokio::test]
async fn the_mta_giving_up_on_a_waiting_connection_is_logged_and_counted() {
    let status: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (p, _dir) = start_with(
        "max_connections = 1\nread_timeout = \"5s\"",
        &format!("[status]\nlisten = \"{status}\""),
    )
    .await;
    let mut first = Mta::open(p.addr).await;
    first.connect([192, 0, 2, 10]).await;
    // The start's probe connection may have made the first wait.
    let slot = "egress_milter_connection_waits_total{outcome=\"slot\"}";
    let served = metric(status, slot).unwrap();
    // An MTA connection waits for the slot; a second one behind it.
    let mut second = TcpStream::connect(p.addr).await.unwrap();
    second.write_all(&optneg()).await.unwrap();
    let line = log_line(&p, "max_connections reached").await;
    assert_eq!(field(&line, "waiting"), 1, "{line}");
    let mut third = TcpStream::connect(p.addr).await.unwrap();
    third.write_all(&optneg()).await.unwrap();
    eventually(Duration::from_secs(5), "two connections waiting", async || {
        metric(status, "egress_milter_connections_waiting") == Some(2.0)
    })
    .await;

    // The MTA gives up on the second after a second (its
    // milter_command_timeout, shortened): logged with the real wait.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(second);
    let line = log_line(&p, "the MTA gave up on a connection that waited for a slot").await;
    let waited = field(&line, "waited_ms");
    assert!((900..5000).contains(&waited), "{line}");
    assert!(
        line.contains("gave_up=1") && line.contains("max_connections=1") && line.contains("raise max_connections"),
        "{line}"
    );
    eventually(Duration::from_secs(5), "counted as given up", async || {
        metric(status, "egress_milter_connection_waits_total{outcome=\"gave_up\"}") == Some(1.0)
            && metric(status, "egress_milter_connections_waiting") == Some(1.0)
    })
    .await;

    // The slot frees: the third gets it, not the abandoned second, and
    // its session starts with the negotiation it sent while waiting.
    first.close().await;
    assert_eq!(read_packet(&mut third).await.0, b'O');
    third.write_all(&connect_packet()).await.unwrap();
    assert_eq!(read_packet(&mut third).await.0, b'c');
    assert_eq!(metric(status, slot), Some(served + 1.0));
    assert_eq!(metric(status, "egress_milter_connections_waiting"), Some(0.0));
}

/// Reads replies until one that answers the command (header changes and
/// the like come before it at the end of a message).
async fn read_final(s: &mut TcpStream) -> u8 {
    loop {
        let (kind, _) = read_packet(s).await;
        if b"acdrstyO".contains(&kind) {
            return kind;
        }
    }
}

/// MAIL, RCPT and DATA on a session, each answered with continue.
async fn up_to_data(s: &mut TcpStream) {
    s.write_all(&packet(b'D', b"M{auth_authen}\0alice@example.com\0"))
        .await
        .unwrap();
    s.write_all(&packet(b'M', b"<alice@example.com>\0")).await.unwrap();
    assert_eq!(read_packet(s).await.0, b'c', "MAIL");
    s.write_all(&packet(b'R', b"<friend@example.net>\0")).await.unwrap();
    assert_eq!(read_packet(s).await.0, b'c', "RCPT");
    s.write_all(&packet(b'T', b"")).await.unwrap();
    assert_eq!(read_packet(s).await.0, b'c', "DATA");
}

#[tokio::test]
async fn a_message_upload_may_be_silent_longer_than_idle_timeout_but_not_than_data_idle_timeout() {
    let (p, _dir) = start("read_timeout = \"1s\"\nidle_timeout = \"1s\"\ndata_idle_timeout = \"3s\"").await;
    // The client uploads its message for 2 s (longer than idle_timeout):
    // Postfix sends nothing until it has all of it. The session goes on.
    let mut s = open_session(p.addr).await;
    up_to_data(&mut s).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.write_all(&packet(b'L', b"Subject\0hello\0")).await.unwrap();
    s.write_all(&packet(b'N', b"")).await.unwrap();
    assert_eq!(read_final(&mut s).await, b'c', "end of headers after the upload");
    s.write_all(&packet(b'E', b"")).await.unwrap();
    assert!(
        matches!(read_final(&mut s).await, b'c' | b'a'),
        "the message is accepted"
    );
    // The message is over: between commands, idle_timeout again.
    let took = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2800),
        "{took:?}"
    );
    let line = log_line(&p, "no command from the MTA within idle_timeout").await;
    assert!(
        line.contains("idle_timeout=\"1s\"") && line.contains("last_command=\"E\""),
        "{line}"
    );

    // Silent in the DATA phase for longer than data_idle_timeout: closed.
    let mut s = open_session(p.addr).await;
    up_to_data(&mut s).await;
    let took = closed_within(&mut s, Duration::from_secs(8)).await;
    assert!(took >= Duration::from_millis(2800), "{took:?}");
    let line = log_line(&p, "no command from the MTA within data_idle_timeout").await;
    assert!(
        line.contains("data_idle_timeout=\"3s\"") && line.contains("last_command=\"T\""),
        "{line}"
    );
}
