// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! One MTA connection to the milter, played the way Postfix plays it:
//! negotiate, connect, HELO, then per message MAIL, RCPT…, DATA, headers,
//! end of headers, body, end of message; stages the milter disabled are
//! skipped and replies it declined are not awaited.

use crate::proto::{self, Negotiated, Stage, Verdict, opt};
use crate::stats::{self, Stats};
use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::time::timeout;

/// One message to play.
pub struct Message {
    pub queue_id: String,
    pub sender: String,
    /// `{auth_authen}`, when the identity comes from SASL.
    pub auth: Option<String>,
    /// `(name, value)` of an identity header, when it comes from a header.
    pub identity_header: Option<(String, String)>,
    pub recipients: usize,
    /// Recipients never used before (a blaster's), rather than the same
    /// few for every message: `rcpt{idx}x{i}@dest{idx}.example`.
    pub fresh_recipients: Option<u64>,
    /// Whether its latencies are recorded (false during warm-up).
    pub record: bool,
}

/// How a message ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Accepted { held: bool },
    Tempfail,
    Reject,
    Discard,
}

pub struct Session<S> {
    io: BufReader<S>,
    out: Vec<u8>,
    buf: Vec<u8>,
    neg: Negotiated,
    /// Write each command at once (as Postfix does) or batch until a reply is due.
    flush_each: bool,
    io_timeout: Duration,
    client_ip: IpAddr,
    /// The milter accepted the whole connection: it sees nothing more.
    done: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Negotiates, then sends the connection and HELO stages.
    pub async fn open(stream: S, client_ip: IpAddr, flush_each: bool, io_timeout: Duration) -> io::Result<Self> {
        let mut io = BufReader::with_capacity(4096, stream);
        let mut out = Vec::with_capacity(1024);
        proto::optneg(&mut out);
        io.write_all(&out).await?;
        out.clear();
        let mut buf = Vec::with_capacity(256);
        let kind = read_frame(&mut io, &mut buf, io_timeout).await?;
        if kind != proto::CMD_OPTNEG {
            return Err(proto::invalid("no negotiation reply"));
        }
        let neg = Negotiated::parse(&buf)?;
        let mut session = Session {
            io,
            out,
            buf,
            neg,
            flush_each,
            io_timeout,
            client_ip,
            done: false,
        };
        session.connect_and_helo().await?;
        Ok(session)
    }

    /// What was negotiated, for the report.
    pub fn negotiated(&self) -> &Negotiated {
        &self.neg
    }

    async fn connect_and_helo(&mut self) -> io::Result<()> {
        if !self.neg.has(opt::NO_CONNECT) {
            self.macros(Stage::Connect, None, None).await?;
            let family = if self.client_ip.is_ipv4() { b'4' } else { b'6' };
            let mut p = Vec::with_capacity(64);
            proto::cstr(&mut p, b"client.bench.example");
            p.push(family);
            p.extend_from_slice(&25000u16.to_be_bytes());
            proto::cstr(&mut p, self.client_ip.to_string().as_bytes());
            self.send(proto::CMD_CONNECT, &[&p]).await?;
            if !self.neg.has(opt::NR_CONNECT) && self.reply().await? != Verdict::Continue {
                // Any other answer ends the milter's part in this connection.
                self.done = true;
            }
        }
        if !self.done && !self.neg.has(opt::NO_HELO) {
            self.macros(Stage::Helo, None, None).await?;
            self.send(proto::CMD_HELO, &[b"client.bench.example\0"]).await?;
            if !self.neg.has(opt::NR_HELO) && self.reply().await? != Verdict::Continue {
                self.done = true;
            }
        }
        Ok(())
    }

    /// Plays one transaction and records its latencies in `stats`.
    pub async fn message(&mut self, m: &Message, stats: &mut Stats) -> io::Result<Ending> {
        let start = Instant::now();
        let ending = self.transaction(m, stats).await?;
        if m.record {
            stats::record(&mut stats.message, start.elapsed());
            match ending {
                Ending::Accepted { held } => {
                    stats.accepted += 1;
                    stats.held += u64::from(held);
                }
                Ending::Tempfail => stats.tempfail += 1,
                Ending::Reject => stats.reject += 1,
                Ending::Discard => stats.discard += 1,
            }
        }
        Ok(ending)
    }

    async fn transaction(&mut self, m: &Message, stats: &mut Stats) -> io::Result<Ending> {
        if self.done {
            return Ok(Ending::Accepted { held: false });
        }
        let record = m.record;
        // MAIL
        if !self.neg.has(opt::NO_MAIL) {
            self.macros(Stage::Mail, Some(m), None).await?;
            let from = format!("<{}>\0", m.sender);
            let t = Instant::now();
            self.send(proto::CMD_MAIL, &[from.as_bytes(), b"BODY=8BITMIME\0"])
                .await?;
            if !self.neg.has(opt::NR_MAIL) {
                let v = self.reply().await?;
                self.stage_time(stats, 0, t, record);
                if let Some(end) = self.early_end(v).await? {
                    return Ok(end);
                }
            }
        }
        // RCPT
        let mut accepted_rcpts = 0;
        let mut last_refusal = Ending::Reject;
        for i in 0..m.recipients.max(1) {
            let rcpt = match m.fresh_recipients {
                Some(idx) => format!("rcpt{idx}x{i}@dest{idx}.example"),
                None => format!("rcpt{i}@dest{}.example", i % 7),
            };
            if self.neg.has(opt::NO_RCPT) {
                accepted_rcpts += 1;
                continue;
            }
            self.macros(Stage::Rcpt, Some(m), Some(&rcpt)).await?;
            let arg = format!("<{rcpt}>\0");
            let t = Instant::now();
            self.send(proto::CMD_RCPT, &[arg.as_bytes()]).await?;
            if self.neg.has(opt::NR_RCPT) {
                accepted_rcpts += 1;
                continue;
            }
            let v = self.reply().await?;
            self.stage_time(stats, 1, t, record);
            match v {
                Verdict::Continue => accepted_rcpts += 1,
                Verdict::Accept => return self.accepted_early().await,
                Verdict::Discard => return self.abort(Ending::Discard).await,
                Verdict::Tempfail | Verdict::Reject => {
                    if record {
                        stats.rcpt_refused += 1;
                    }
                    last_refusal = if v == Verdict::Tempfail {
                        Ending::Tempfail
                    } else {
                        Ending::Reject
                    };
                }
            }
        }
        if accepted_rcpts == 0 {
            // Every recipient refused: the SMTP client never gets to DATA.
            if record {
                stats.rcpt_refused -= u64::try_from(m.recipients.max(1)).unwrap_or(0);
            }
            return self.abort(last_refusal).await;
        }
        // DATA
        if !self.neg.has(opt::NO_DATA) {
            self.macros(Stage::Data, Some(m), None).await?;
            self.send(proto::CMD_DATA, &[]).await?;
            if !self.neg.has(opt::NR_DATA) {
                let v = self.reply().await?;
                if let Some(end) = self.early_end(v).await? {
                    return Ok(end);
                }
            }
        }
        // Headers
        if !self.neg.has(opt::NO_HEADER) {
            let lead = if self.neg.has(opt::HDR_LEADSPC) { " " } else { "" };
            let mut headers: Vec<(String, String)> = vec![
                (
                    "Received".into(),
                    format!("from client.bench.example by mx.bench.example; id {}", m.queue_id),
                ),
                ("From".into(), format!("<{}>", m.sender)),
                ("To".into(), "<rcpt0@dest0.example>".into()),
                ("Subject".into(), "benchmark".into()),
                ("Message-ID".into(), format!("<{}@bench.example>", m.queue_id)),
                ("Date".into(), "Mon, 23 Nov 2026 12:00:00 +0000".into()),
            ];
            if let Some(h) = &m.identity_header {
                headers.insert(1, h.clone());
            }
            for (name, value) in &headers {
                let value = format!("{lead}{value}\0");
                let name = format!("{name}\0");
                self.send(proto::CMD_HEADER, &[name.as_bytes(), value.as_bytes()])
                    .await?;
                if !self.neg.has(opt::NR_HEADER) {
                    let v = self.reply().await?;
                    if let Some(end) = self.early_end(v).await? {
                        return Ok(end);
                    }
                }
            }
        }
        // End of headers
        if !self.neg.has(opt::NO_EOH) {
            self.macros(Stage::Eoh, Some(m), None).await?;
            let t = Instant::now();
            self.send(proto::CMD_EOH, &[]).await?;
            if !self.neg.has(opt::NR_EOH) {
                let v = self.reply().await?;
                self.stage_time(stats, 2, t, record);
                if let Some(end) = self.early_end(v).await? {
                    return Ok(end);
                }
            }
        }
        // Body
        if !self.neg.has(opt::NO_BODY) {
            self.send(proto::CMD_BODY, &[b"Hello from milter-bench.\r\n"]).await?;
            if !self.neg.has(opt::NR_BODY) {
                let v = self.reply().await?;
                if let Some(end) = self.early_end(v).await? {
                    return Ok(end);
                }
            }
        }
        // End of message: modifications, then one final answer.
        self.macros(Stage::Eom, Some(m), None).await?;
        let t = Instant::now();
        self.send(proto::CMD_BODYEOB, &[]).await?;
        self.flush().await?;
        let mut held = false;
        let v = loop {
            let kind = read_frame(&mut self.io, &mut self.buf, self.io_timeout).await?;
            held |= kind == b'q';
            if let Some(v) = proto::verdict(kind, &self.buf)? {
                break v;
            }
        };
        self.stage_time(stats, 3, t, record);
        Ok(match v {
            Verdict::Continue | Verdict::Accept => Ending::Accepted { held },
            Verdict::Tempfail => Ending::Tempfail,
            Verdict::Reject => Ending::Reject,
            Verdict::Discard => Ending::Discard,
        })
    }

    /// Ends a transaction the milter refused or accepted before its end.
    async fn early_end(&mut self, v: Verdict) -> io::Result<Option<Ending>> {
        Ok(match v {
            Verdict::Continue => None,
            Verdict::Accept => Some(self.accepted_early().await?),
            Verdict::Tempfail => Some(self.abort(Ending::Tempfail).await?),
            Verdict::Reject => Some(self.abort(Ending::Reject).await?),
            Verdict::Discard => Some(self.abort(Ending::Discard).await?),
        })
    }

    async fn accepted_early(&mut self) -> io::Result<Ending> {
        self.abort(Ending::Accepted { held: false }).await
    }

    /// Tells the milter the transaction is over (SMFIC_ABORT, no reply).
    async fn abort(&mut self, ending: Ending) -> io::Result<Ending> {
        self.send(proto::CMD_ABORT, &[]).await?;
        Ok(ending)
    }

    /// Says goodbye (SMFIC_QUIT, no reply) and closes the connection.
    pub async fn quit(mut self) -> io::Result<()> {
        self.send(proto::CMD_QUIT, &[]).await?;
        self.flush().await?;
        self.io.get_mut().shutdown().await
    }

    fn stage_time(&self, stats: &mut Stats, stage: usize, since: Instant, record: bool) {
        if record {
            stats::record(&mut stats.stages[stage], since.elapsed());
        }
    }

    /// Sends the stage's macros the milter asked for (or Postfix's defaults),
    /// leaving out those without a value as Postfix does.
    async fn macros(&mut self, stage: Stage, m: Option<&Message>, rcpt: Option<&str>) -> io::Result<()> {
        let mut p = Vec::with_capacity(128);
        p.push(stage.command());
        for name in self.neg.macros(stage) {
            let value: Option<String> = match name.as_str() {
                "i" => m.map(|m| m.queue_id.clone()),
                "j" => Some("mx.bench.example".into()),
                "{daemon_name}" => Some("smtpd".into()),
                "v" => Some("Postfix 3.7.11".into()),
                "_" => Some(format!("client.bench.example [{}]", self.client_ip)),
                "{auth_type}" => m.and_then(|m| m.auth.as_ref()).map(|_| "PLAIN".into()),
                "{auth_authen}" => m.and_then(|m| m.auth.clone()),
                "{mail_addr}" => m.map(|m| m.sender.clone()),
                "{mail_mailer}" | "{rcpt_mailer}" => Some("smtp".into()),
                "{rcpt_addr}" => rcpt.map(str::to_string),
                "{rcpt_host}" => rcpt.and_then(|r| r.split('@').nth(1)).map(str::to_string),
                _ => None,
            };
            if let Some(value) = value {
                proto::cstr(&mut p, name.as_bytes());
                proto::cstr(&mut p, value.as_bytes());
            }
        }
        self.send(proto::CMD_MACRO, &[&p]).await
    }

    async fn send(&mut self, cmd: u8, parts: &[&[u8]]) -> io::Result<()> {
        proto::frame(&mut self.out, cmd, parts);
        if self.flush_each {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let stream = self.io.get_mut();
            match timeout(self.io_timeout, stream.write_all(&self.out)).await {
                Ok(r) => r?,
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
            }
            self.out.clear();
        }
        Ok(())
    }

    async fn reply(&mut self) -> io::Result<Verdict> {
        self.flush().await?;
        let kind = read_frame(&mut self.io, &mut self.buf, self.io_timeout).await?;
        proto::verdict(kind, &self.buf)?.ok_or_else(|| proto::invalid("modification reply outside end of message"))
    }
}

/// Reads one frame into `buf` (payload only) and returns its command byte.
async fn read_frame<R: AsyncRead + Unpin>(io: &mut R, buf: &mut Vec<u8>, limit: Duration) -> io::Result<u8> {
    let read = async {
        let len = proto::check_len(io.read_u32().await?)?;
        let kind = io.read_u8().await?;
        buf.resize(len - 1, 0);
        io.read_exact(buf).await?;
        Ok(kind)
    };
    match timeout(limit, read).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no reply from the milter")),
    }
}
