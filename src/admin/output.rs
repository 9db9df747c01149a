// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! How the commands print. Standard output is often a pipe whose reader
//! stops early (`egress-milter locks list --json | head -1`): Rust ignores
//! `SIGPIPE`, so the next write fails with `EPIPE`, on which `print!`
//! panics with a backtrace. Everything the commands print goes through
//! here instead (the crate denies `print!` and `eprint!`): a reader that
//! went away ends the command quietly, as it ends `cat`; any other write
//! error is the command's failure. The daemon (`run`) prints nothing on
//! standard output; its log goes to standard error through `tracing`.

use super::Failure;
use std::io::{self, Write};

/// What became of a write to standard output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Printed {
    /// Written and flushed.
    Done,
    /// The reader is gone (`EPIPE`): nothing more needs printing, and
    /// nothing went wrong; the command ends with its own status.
    ReaderGone,
}

/// Writes `text` to standard output and flushes it.
pub fn print(text: &str) -> Result<Printed, Failure> {
    print_to(&mut io::stdout().lock(), text)
}

/// [`print`] to any writer.
pub fn print_to(out: &mut impl Write, text: &str) -> Result<Printed, Failure> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(Printed::Done),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Printed::ReaderGone),
        Err(e) => Err(Failure::new(format!("cannot write to standard output: {e}"))),
    }
}

/// Writes `text` to standard error. A closed standard error loses it:
/// there is nowhere left to say so, and no reason to panic.
pub fn eprint(text: &str) {
    let mut err = io::stderr().lock();
    let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that fails like a pipe without a reader, or a full disk.
    struct Failing(io::ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(self.0))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_gone_reader_is_no_failure_and_other_errors_are() {
        let mut out = Vec::new();
        assert_eq!(print_to(&mut out, "a\n").unwrap(), Printed::Done);
        assert_eq!(out, b"a\n");
        assert_eq!(
            print_to(&mut Failing(io::ErrorKind::BrokenPipe), "a\n").unwrap(),
            Printed::ReaderGone
        );
        let full = print_to(&mut Failing(io::ErrorKind::StorageFull), "a\n").unwrap_err();
        assert_eq!(full.status, 1);
        assert!(
            full.message.starts_with("cannot write to standard output: "),
            "{}",
            full.message
        );
    }
}
