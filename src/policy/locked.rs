// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! What a locked identity's mail may do at each SMTP stage: the one place
//! that decides it, whether the lock was found in the list or has just been
//! set by this very message.

use crate::config::LockedAction;
use std::fmt;

/// The SMTP stages the policy decides at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// MAIL FROM: the transaction begins.
    Mail,
    /// RCPT TO, once per recipient.
    Rcpt,
    /// DATA: every recipient is known; the attempt is counted.
    Data,
    /// End of headers: an identity taken from a header is known.
    Eoh,
    /// End of message: the message is counted, held or refused.
    Eom,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::Eoh => "eoh",
            Stage::Eom => "eom",
        })
    }
}

/// What a locked identity's mail gets at a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockedStep {
    /// Go on to the next stage (a later stage refuses or holds it).
    Continue,
    /// Refuse with the `locked` reply.
    Refuse,
    /// Accept into the MTA's hold queue (end of message only).
    Hold,
    /// Accept and deliver, uncounted: the message is to support addresses
    /// only (end of message only).
    DeliverToSupport,
}

/// Decides for a locked identity at `stage`.
///
/// - `support`: at RCPT, whether this recipient is a support address; at
///   end of headers and end of message, whether every recipient so far is
///   one; ignored at MAIL. A lock set by the recipient or message being
///   decided passes `false`: what tripped the lock is not an exception.
/// - `has_exceptions`: whether `locks.allow_recipients` names any support
///   address at all; without any, a locked identity is refused at MAIL.
///
/// With `locked_action = "hold"` nothing is refused before the end of the
/// message, so that the message reaches the hold queue.
pub fn locked_step(stage: Stage, action: LockedAction, support: bool, has_exceptions: bool) -> LockedStep {
    let hold = action == LockedAction::Hold;
    match stage {
        Stage::Mail if hold || has_exceptions => LockedStep::Continue,
        Stage::Rcpt | Stage::Data | Stage::Eoh if hold || support => LockedStep::Continue,
        Stage::Eom if support => LockedStep::DeliverToSupport,
        Stage::Eom if hold => LockedStep::Hold,
        _ => LockedStep::Refuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LockedStep::*;
    use Stage::*;

    const REJECT: LockedAction = LockedAction::Reject;
    const HOLD: LockedAction = LockedAction::Hold;

    #[test]
    fn reject_refuses_at_mail_when_nobody_may_be_written_to() {
        assert_eq!(locked_step(Mail, REJECT, false, false), Refuse);
        // With support addresses, MAIL goes on so RCPT can tell them apart.
        assert_eq!(locked_step(Mail, REJECT, false, true), Continue);
    }

    #[test]
    fn support_recipients_pass_and_others_are_refused() {
        assert_eq!(locked_step(Rcpt, REJECT, true, true), Continue);
        assert_eq!(locked_step(Rcpt, REJECT, false, true), Refuse);
        assert_eq!(locked_step(Eoh, REJECT, true, true), Continue);
        assert_eq!(locked_step(Eoh, REJECT, false, true), Refuse);
        assert_eq!(locked_step(Eom, REJECT, true, true), DeliverToSupport);
        assert_eq!(locked_step(Eom, REJECT, false, true), Refuse);
    }

    #[test]
    fn hold_lets_everything_reach_the_end_and_holds_it_there() {
        for stage in [Mail, Rcpt, Eoh] {
            for support in [false, true] {
                for exceptions in [false, true] {
                    assert_eq!(locked_step(stage, HOLD, support, exceptions), Continue, "{stage}");
                }
            }
        }
        assert_eq!(locked_step(Eom, HOLD, false, false), Hold);
        assert_eq!(locked_step(Eom, HOLD, false, true), Hold);
        // Mail to support addresses only is delivered, not held.
        assert_eq!(locked_step(Eom, HOLD, true, true), DeliverToSupport);
    }
}
