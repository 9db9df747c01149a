// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The MTA side of the milter protocol (version 6): framing, commands and
//! replies, and the negotiation result an MTA must honour.
//!
//! A frame is a 4-byte big-endian length (command byte included), the
//! command byte, then the payload; strings are NUL-terminated.

use std::io;

/// Protocol version Postfix speaks.
pub const VERSION: u32 = 6;
/// Every action Postfix offers (SMFIF_ADDHDRS .. SMFIF_SETSYMLIST).
pub const ALL_ACTIONS: u32 = 0x1ff;
/// Every protocol option Postfix 3.x offers (SMFIP_NOCONNECT .. SMFIP_HDR_LEADSPC).
pub const ALL_OPTS: u32 = 0x1f_ffff;

/// Largest frame accepted from a milter (libmilter's default maximum).
const MAX_FRAME: usize = 1 << 20;

// Commands (MTA to milter).
pub const CMD_ABORT: u8 = b'A';
pub const CMD_BODY: u8 = b'B';
pub const CMD_CONNECT: u8 = b'C';
pub const CMD_MACRO: u8 = b'D';
pub const CMD_BODYEOB: u8 = b'E';
pub const CMD_HELO: u8 = b'H';
pub const CMD_HEADER: u8 = b'L';
pub const CMD_MAIL: u8 = b'M';
pub const CMD_EOH: u8 = b'N';
pub const CMD_OPTNEG: u8 = b'O';
pub const CMD_QUIT: u8 = b'Q';
pub const CMD_RCPT: u8 = b'R';
pub const CMD_DATA: u8 = b'T';

/// Protocol option bits (SMFIP_*).
pub mod opt {
    pub const NO_CONNECT: u32 = 0x1;
    pub const NO_HELO: u32 = 0x2;
    pub const NO_MAIL: u32 = 0x4;
    pub const NO_RCPT: u32 = 0x8;
    pub const NO_BODY: u32 = 0x10;
    pub const NO_HEADER: u32 = 0x20;
    pub const NO_EOH: u32 = 0x40;
    pub const NR_HEADER: u32 = 0x80;
    pub const NO_DATA: u32 = 0x200;
    pub const NR_CONNECT: u32 = 0x1000;
    pub const NR_HELO: u32 = 0x2000;
    pub const NR_MAIL: u32 = 0x4000;
    pub const NR_RCPT: u32 = 0x8000;
    pub const NR_DATA: u32 = 0x1_0000;
    pub const NR_EOH: u32 = 0x4_0000;
    pub const NR_BODY: u32 = 0x8_0000;
    pub const HDR_LEADSPC: u32 = 0x10_0000;
}

/// Macro stages in the order of their protocol numbers' meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Eom,
    Eoh,
}

impl Stage {
    /// The protocol number used in the negotiation reply.
    fn from_number(n: u32) -> Option<Stage> {
        Some(match n {
            0 => Stage::Connect,
            1 => Stage::Helo,
            2 => Stage::Mail,
            3 => Stage::Rcpt,
            4 => Stage::Data,
            5 => Stage::Eom,
            6 => Stage::Eoh,
            _ => return None,
        })
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The command a macro definition for this stage precedes.
    pub fn command(self) -> u8 {
        match self {
            Stage::Connect => CMD_CONNECT,
            Stage::Helo => CMD_HELO,
            Stage::Mail => CMD_MAIL,
            Stage::Rcpt => CMD_RCPT,
            Stage::Data => CMD_DATA,
            Stage::Eom => CMD_BODYEOB,
            Stage::Eoh => CMD_EOH,
        }
    }

    /// Postfix's default macro list (milter_*_macros) for the stage.
    fn postfix_default(self) -> &'static [&'static str] {
        match self {
            Stage::Connect => &["j", "{daemon_name}", "{daemon_addr}", "v", "_"],
            Stage::Helo => &[
                "{tls_version}",
                "{cipher}",
                "{cipher_bits}",
                "{cert_subject}",
                "{cert_issuer}",
            ],
            Stage::Mail => &[
                "i",
                "{auth_type}",
                "{auth_authen}",
                "{auth_author}",
                "{mail_addr}",
                "{mail_host}",
                "{mail_mailer}",
            ],
            Stage::Rcpt => &["i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"],
            Stage::Data | Stage::Eoh | Stage::Eom => &["i"],
        }
    }
}

/// What the milter asked for in its negotiation reply.
#[derive(Clone, Debug)]
pub struct Negotiated {
    pub version: u32,
    pub actions: u32,
    pub opts: u32,
    /// Macro names per stage: the milter's list, or Postfix's default.
    macros: [Vec<String>; 7],
}

impl Negotiated {
    /// Parses an `O` reply payload.
    pub fn parse(payload: &[u8]) -> io::Result<Negotiated> {
        if payload.len() < 12 {
            return Err(invalid("short negotiation reply"));
        }
        let word = |i: usize| u32::from_be_bytes([payload[i], payload[i + 1], payload[i + 2], payload[i + 3]]);
        let mut macros: [Vec<String>; 7] = Default::default();
        let all = [
            Stage::Connect,
            Stage::Helo,
            Stage::Mail,
            Stage::Rcpt,
            Stage::Data,
            Stage::Eom,
            Stage::Eoh,
        ];
        for stage in all {
            macros[stage.index()] = stage.postfix_default().iter().map(|s| (*s).to_string()).collect();
        }
        let mut rest = &payload[12..];
        while rest.len() >= 4 {
            let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            rest = &rest[4..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            let list = String::from_utf8_lossy(&rest[..end]).into_owned();
            rest = rest.get(end + 1..).unwrap_or(&[]);
            if let Some(stage) = Stage::from_number(n) {
                macros[stage.index()] = list.split_whitespace().map(str::to_string).collect();
            }
        }
        Ok(Negotiated {
            version: word(0),
            actions: word(4),
            opts: word(8),
            macros,
        })
    }

    pub fn has(&self, bit: u32) -> bool {
        self.opts & bit != 0
    }

    pub fn macros(&self, stage: Stage) -> &[String] {
        &self.macros[stage.index()]
    }

    /// A one-line summary: version, actions, options by name.
    pub fn describe(&self) -> String {
        const NAMES: [(u32, &str); 17] = [
            (opt::NO_CONNECT, "NO_CONNECT"),
            (opt::NO_HELO, "NO_HELO"),
            (opt::NO_MAIL, "NO_MAIL"),
            (opt::NO_RCPT, "NO_RCPT"),
            (opt::NO_BODY, "NO_BODY"),
            (opt::NO_HEADER, "NO_HDRS"),
            (opt::NO_EOH, "NO_EOH"),
            (opt::NR_HEADER, "NR_HDR"),
            (0x100, "NO_UNKNOWN"),
            (opt::NO_DATA, "NO_DATA"),
            (0x400, "SKIP"),
            (opt::NR_CONNECT, "NR_CONN"),
            (opt::NR_HELO, "NR_HELO"),
            (opt::NR_MAIL, "NR_MAIL"),
            (opt::NR_RCPT, "NR_RCPT"),
            (opt::NR_EOH, "NR_EOH"),
            (opt::HDR_LEADSPC, "HDR_LEADSPC"),
        ];
        let names: Vec<&str> = NAMES.iter().filter(|(b, _)| self.has(*b)).map(|(_, n)| *n).collect();
        format!(
            "version {} actions {:#x} opts {:#x} [{}] mail macros [{}]",
            self.version,
            self.actions,
            self.opts,
            names.join(" "),
            self.macros(Stage::Mail).join(" ")
        )
    }
}

/// The milter's answer to a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    Accept,
    Tempfail,
    Reject,
    Discard,
}

/// Classifies a reply frame: `Some` for a final answer, `None` for a
/// modification or progress frame that precedes one at end of message.
pub fn verdict(kind: u8, payload: &[u8]) -> io::Result<Option<Verdict>> {
    Ok(Some(match kind {
        // SMFIR_SKIP: no more of the body; the MTA goes on to the end.
        b'c' | b's' => Verdict::Continue,
        b'a' => Verdict::Accept,
        b't' => Verdict::Tempfail,
        b'r' => Verdict::Reject,
        b'd' => Verdict::Discard,
        b'y' => match payload.first() {
            Some(b'4') => Verdict::Tempfail,
            Some(b'5') => Verdict::Reject,
            _ => return Err(invalid("reply code neither 4xx nor 5xx")),
        },
        b'+' | b'-' | b'2' | b'b' | b'e' | b'h' | b'i' | b'm' | b'p' | b'q' | b'f' => return Ok(None),
        other => return Err(invalid(&format!("unexpected reply {:?}", other as char))),
    }))
}

/// Appends one frame to `out`. `parts` are written back to back; each must
/// carry its own NUL terminators.
pub fn frame(out: &mut Vec<u8>, cmd: u8, parts: &[&[u8]]) {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    out.push(cmd);
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// Appends a NUL-terminated copy of `s`.
pub fn cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

/// The negotiation command an MTA opens with.
pub fn optneg(out: &mut Vec<u8>) {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&VERSION.to_be_bytes());
    p.extend_from_slice(&ALL_ACTIONS.to_be_bytes());
    p.extend_from_slice(&ALL_OPTS.to_be_bytes());
    frame(out, CMD_OPTNEG, &[&p]);
}

/// Checks a frame length read from the milter.
pub fn check_len(len: u32) -> io::Result<usize> {
    let len = usize::try_from(len).map_err(|_| invalid("frame length"))?;
    if len == 0 || len > MAX_FRAME {
        return Err(invalid(&format!("bad frame length {len}")));
    }
    Ok(len)
}

pub fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_reply_keeps_requested_lists_and_defaults_the_rest() {
        let mut p = Vec::new();
        p.extend_from_slice(&6u32.to_be_bytes());
        p.extend_from_slice(&0x20u32.to_be_bytes());
        p.extend_from_slice(&(opt::NO_HELO | opt::NR_HEADER).to_be_bytes());
        p.extend_from_slice(&2u32.to_be_bytes());
        p.extend_from_slice(b"i {auth_authen}\0");
        let n = Negotiated::parse(&p).unwrap();
        assert!(n.has(opt::NO_HELO) && n.has(opt::NR_HEADER) && !n.has(opt::NO_MAIL));
        assert_eq!(n.macros(Stage::Mail), ["i", "{auth_authen}"]);
        assert_eq!(n.macros(Stage::Rcpt)[0], "i");
    }

    #[test]
    fn frames_and_verdicts() {
        let mut out = Vec::new();
        frame(&mut out, CMD_MAIL, &[b"<a@b>\0"]);
        assert_eq!(out, b"\0\0\0\x07M<a@b>\0");
        assert_eq!(verdict(b'y', b"451 4.7.1 x\0").unwrap(), Some(Verdict::Tempfail));
        assert_eq!(verdict(b'q', b"held\0").unwrap(), None);
        assert!(verdict(b'Z', b"").is_err());
    }
}
