// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Writes the manual page egress-milter(8) in roff to standard output.
//!
//! The NAME, SYNOPSIS, DESCRIPTION, OPTIONS and COMMANDS sections come from
//! the clap definition in `src/cli.rs`, the one `--help` prints: every
//! subcommand, nested ones included, gets a subsection with its usage line,
//! its description and its options, so a command added there appears here
//! without touching this file. The sections clap knows nothing about
//! (SIGNALS, EXIT STATUS, FILES, EXAMPLES, SEE ALSO) are written below.
//!
//! Usage (the package build, milter-tests/package.sh, runs exactly this):
//!
//! ```sh
//! mkdir -p target/man
//! cargo run --example gen-man > target/man/egress-milter.8
//! man -l target/man/egress-milter.8
//! ```

use clap::{Arg, CommandFactory};
use clap_mangen::Man;
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};
use egress_milter::cli::Cli;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut out = Vec::new();
    if let Err(e) = render(&mut out) {
        eprintln!("gen-man: cannot render the manual page: {e}");
        return ExitCode::FAILURE;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(&out).and_then(|()| stdout.flush()) {
        eprintln!("gen-man: cannot write the manual page to standard output: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn render(w: &mut dyn Write) -> std::io::Result<()> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Fills in the bin names ("egress-milter locks add") and propagates the
    // global options, as clap does before it prints --help.
    cmd.build();
    let man = Man::new(cmd.clone())
        .title("EGRESS-MILTER")
        .section("8")
        .manual("System Manager's Manual");
    man.render_title(w)?;
    man.render_name_section(w)?;

    let mut roff = Roff::default();
    roff.control("SH", ["SYNOPSIS"]);
    usage_line(&mut roff, &cmd);
    roff.to_writer(w)?;

    // clap's one-line `about` is already the NAME line: repeat only a
    // longer description, if src/cli.rs gains one.
    if cmd.get_long_about().is_some() {
        man.render_description_section(w)?;
    } else {
        w.write_all(b".SH DESCRIPTION\n")?;
    }
    w.write_all(minus_signs(DESCRIPTION).as_bytes())?;
    man.render_options_section(w)?;

    let mut roff = Roff::default();
    roff.control("SH", ["COMMANDS"]);
    roff.text([roman(
        "Every command reads the configuration file first and exits with status 78 if it is unusable.",
    )]);
    for sub in visible_subcommands(&cmd) {
        render_command(&mut roff, sub);
    }
    roff.to_writer(w)?;

    w.write_all(minus_signs(HAND_WRITTEN).as_bytes())
}

/// The hand-written sections below use plain `-`; in roff that is a hyphen,
/// which man(1) may print as U+2010 and which then breaks a command or path
/// copied from the page. Every `-` there is a command, option, path or
/// name, so all become `\-`, the ASCII minus.
fn minus_signs(roff: &str) -> String {
    roff.replace('-', "\\-")
}

/// The usage line clap prints after "Usage:" in --help, command name in bold.
fn usage_line(roff: &mut Roff, cmd: &clap::Command) {
    let bin_name = cmd.get_bin_name().unwrap_or_else(|| cmd.get_name()).to_string();
    let usage = cmd.clone().render_usage().to_string();
    let usage = usage.trim();
    let usage = usage.strip_prefix("Usage:").unwrap_or(usage).trim();
    match usage.strip_prefix(bin_name.as_str()) {
        Some(rest) => roff.text([bold(bin_name.as_str()), roman(rest)]),
        None => roff.text([roman(usage)]),
    };
}

fn visible_subcommands(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set())
}

/// One subsection per command, depth first: usage, description, options.
fn render_command(roff: &mut Roff, cmd: &clap::Command) {
    let bin_name = cmd.get_bin_name().unwrap_or_else(|| cmd.get_name()).to_string();
    let title = bin_name.strip_prefix("egress-milter ").unwrap_or(&bin_name).to_string();
    roff.control("SS", [title.as_str()]);
    usage_line(roff, cmd);

    if let Some(about) = cmd.get_long_about().or_else(|| cmd.get_about()) {
        paragraphs(roff, &about.to_string());
    }

    let args: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_global_set() && !is_generated(a))
        .collect();
    for arg in args.iter().filter(|a| a.is_positional()) {
        render_arg(roff, arg);
    }
    for arg in args.iter().filter(|a| !a.is_positional()) {
        render_arg(roff, arg);
    }

    for sub in visible_subcommands(cmd) {
        render_command(roff, sub);
    }
}

/// `--help` and `--version`, which clap adds to every command.
fn is_generated(arg: &Arg) -> bool {
    matches!(arg.get_id().as_str(), "help" | "version")
}

fn render_arg(roff: &mut Roff, arg: &Arg) {
    let mut header: Vec<Inline> = Vec::new();
    let value_names: Vec<String> = match arg.get_value_names() {
        Some(names) => names.iter().map(|n| n.to_string()).collect(),
        None => vec![arg.get_id().as_str().to_uppercase()],
    };
    if arg.is_positional() {
        header.push(italic(value_names.join(" ")));
    } else {
        match (arg.get_short(), arg.get_long()) {
            (Some(s), Some(l)) => {
                header.push(bold(format!("-{s}")));
                header.push(roman(", "));
                header.push(bold(format!("--{l}")));
            }
            (Some(s), None) => header.push(bold(format!("-{s}"))),
            (None, Some(l)) => header.push(bold(format!("--{l}"))),
            (None, None) => {}
        }
        if arg.get_action().takes_values() {
            for name in &value_names {
                header.push(roman(" "));
                header.push(italic(name.as_str()));
            }
        }
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() && !arg.is_hide_default_value_set() && arg.get_action().takes_values() {
        header.push(roman(format!(" (default: {})", defaults.join(", "))));
    }
    roff.control("TP", []);
    roff.text(header);
    if let Some(help) = arg.get_long_help().or_else(|| arg.get_help()) {
        roff.text([roman(help.to_string())]);
    }
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| match v.get_help() {
            Some(h) => format!("{}: {h}", v.get_name()),
            None => v.get_name().to_string(),
        })
        .collect();
    if !values.is_empty() && arg.get_action().takes_values() {
        roff.control("RS", []);
        roff.text([italic("Possible values:")]);
        for v in values {
            roff.control("IP", ["\\(bu", "2"]);
            roff.text([roman(v)]);
        }
        roff.control("RE", []);
    }
}

fn paragraphs(roff: &mut Roff, text: &str) {
    roff.control("PP", []);
    for line in text.lines() {
        if line.trim().is_empty() {
            roff.control("PP", []);
        } else {
            roff.text([roman(line)]);
        }
    }
}

/// Appended to the one-line description clap provides.
const DESCRIPTION: &str = r#".PP
\fBegress-milter\fR is a milter for Postfix and Sendmail. It works out who
is sending each message (the SASL login, an identity header stamped by a
trusted upstream MTA, the envelope sender or the client address), counts
messages and recipients per identity in memory, and answers 4xx (throttle)
or 5xx (reject) to mail over the configured limits. An identity that crosses
a lock threshold is locked: it is written, with reason and evidence, to the
lock list, and its mail is refused or held until an administrator removes
the lock.
.PP
The configuration is one TOML file, by default
\fI/etc/egress-milter/egress-milter.toml\fR. Unknown keys are errors; every
error names the file, the line and the key. The lock list is a second TOML
file, named by \fBfile\fR in the \fB[locks]\fR table; the daemon re-reads it
within seconds of an edit.
.PP
Under systemd, the unit \fBegress-milter.service\fR runs
\fBegress-milter run\fR as the unprivileged user \fBegress-milter\fR.
"#;

/// The sections clap knows nothing about.
const HAND_WRITTEN: &str = r#".SH SIGNALS
.TP
\fBSIGHUP\fR
Re-read the configuration file and the lock list (\fBsystemctl reload
egress-milter\fR sends it). A configuration that does not validate is
refused with a logged error and the running one is kept. Some parameters,
\fBsocket\fR and the log settings among them (configuration.md lists them
all), take effect only at the next start; a reload that changes one logs
that a restart is needed.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop: accept no new MTA connections, let the open sessions finish, write the
locks not yet written to the lock list, save the rate counters (see
\fI/var/lib/egress-milter/counters.state\fR below), and exit with status 0.
.SH "EXIT STATUS"
.TP
\fB0\fR
Success. For \fBrun\fR: stopped by SIGTERM or SIGINT after draining.
Also when standard output is a pipe whose reader stopped reading
(\fB| head\fR): the command did its work and ends quietly.
.TP
\fB1\fR
Any other failure, for example: the socket cannot be bound for a reason a
restart may cure (its address in use, or not an address of the host yet),
an identity given to \fBlocks\fR is not valid, the status listener cannot be reached,
or \fBcheck-config\fR or a \fBlocks\fR command cannot read the lock list
(permissions, an I/O error).
.TP
\fB2\fR
The command line is wrong: an unknown command or option, a missing or
malformed argument.
.TP
\fB78\fR
The configuration is unusable, for every command (EX_CONFIG in
sysexits.h); for \fBrun\fR, \fBcheck-config\fR and the \fBlocks\fR commands
also a lock list that does not parse; for \fBrun\fR also a lock list that
cannot be read, a lock list directory the daemon cannot create or write
to, or a socket it cannot make for a reason of setup: its directory missing
(the packaged one, before Postfix is installed), not writable or read-only,
its path taken by a file that is not a socket, or a TCP port below 1024.
The message names the file, and for the configuration the line and the key
at fault. The systemd unit does not restart the daemon after this status
(\fBRestartPreventExitStatus=78\fR): fix the cause, then start it.
.SH FILES
.TP
\fI/etc/egress-milter/egress-milter.toml\fR
The configuration file (a conffile of the Debian package: kept on upgrade).
.TP
\fI/var/lib/egress-milter/locks.toml\fR
The lock list, as the packaged configuration names it. Writers take a lock
on \fI/var/lib/egress-milter/locks.toml.lock\fR.
.TP
\fI/var/lib/egress-milter/counters.state\fR
The rate counters, saved at a clean stop and read back at start so that a
restart or an upgrade hands no sender a fresh quota (\fBstate_file\fR in the
\fB[store]\fR table; ignored when older than \fBstate_max_age\fR). Mode 0600:
it holds the key that hashes identities to their counters.
.TP
\fI/var/spool/postfix/egress-milter/milter.sock\fR
The milter socket of the packaged configuration. Its directory is made by
the systemd unit when Postfix is installed: owner \fBegress-milter\fR, group
\fBpostfix\fR, mode 2750, so that only Postfix can connect. The milter
protocol has no authentication: whoever opens the socket speaks for the
MTA.
.TP
\fI/run/egress-milter/\fR
Created by systemd for the daemon (group \fBegress-milter\fR, mode 0750);
the place for a unix socket that an MTA running as root outside Postfix's
chroot, such as Sendmail, connects to.
.TP
\fI/usr/lib/systemd/system/egress-milter.service\fR
The systemd unit.
.TP
\fI/usr/share/doc/egress-milter/\fR
\fIREADME.md\fR, and the guides in \fIdocs/\fR:
.RS
.TP
\fIinstall.md\fR
installing the package, the unit and the socket
.TP
\fIpostfix.md\fR, \fIsendmail.md\fR
putting the milter in the MTA's mail path
.TP
\fIconfiguration.md\fR
every configuration key, its default and what a reload does with it
.TP
\fIlock-list.md\fR
the lock list's format and how to edit it
.TP
\fIoperations.md\fR
the incident runbook for a hijacked account, the emergency runbook, the log, reload, rollout
.TP
\fIreview.md\fR
the review desk: releasing locks from a browser, logins, the audit trail
.TP
\fIfleet.md\fR
fleet mode: many MTAs sharing limits and locks on Redis
.TP
\fIdetection.md\fR
the signals beyond volume: new recipient domains, client addresses per login, bounces, foreign senders
.TP
\fImonitoring.md\fR
the status listener, its metrics and the incident commands
.TP
\fInotifications.md\fR
the command and the mail report run for each automatic lock
.TP
\fIdesign.md\fR
how the milter decides, counts and locks
.TP
\fItesting.md\fR, \fIbenchmarks.md\fR
what the test suite checks; measured speed and memory
.RE
.SH EXAMPLES
Check the configuration and the lock list after an edit:
.PP
.nf
.RS
egress-milter check-config
.RE
.fi
.PP
Apply an edited configuration without dropping connections:
.PP
.nf
.RS
systemctl reload egress-milter
journalctl -u egress-milter -n 20
.RE
.fi
.PP
Review and lift locks:
.PP
.nf
.RS
egress-milter locks list
egress-milter locks show alice@example.com
egress-milter locks remove alice@example.com
.RE
.fi
.PP
During an incident (with \fB[status] listen\fR configured): who sends most
now, why one identity is refused, lock it and hold its queued mail:
.PP
.nf
.RS
egress-milter top
egress-milter explain alice@example.com
egress-milter locks add alice@example.com --reason "phished"
egress-milter queue hold alice@example.com
.RE
.fi
.PP
Point Postfix at the packaged default socket, as a chrooted smtpd (Debian's
default) sees it; see \fIpostfix.md\fR for an smtpd that is not chrooted and
the other milter_* parameters:
.PP
.nf
.RS
postconf -e 'smtpd_milters = unix:/egress-milter/milter.sock'
postfix reload
.RE
.fi
.SH "SEE ALSO"
\fBpostconf\fR(5), \fBmaster\fR(5), \fBpostqueue\fR(1), \fBpostcat\fR(1), \fBpostsuper\fR(1), \fBsystemctl\fR(1),
\fBjournalctl\fR(1), \fBsystemd.exec\fR(5)
.PP
The documentation under \fI/usr/share/doc/egress-milter/\fR, starting with
\fIREADME.md\fR and \fIdocs/install.md\fR.
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The page as man(1) shows it, `\-` read as `-`.
    fn page() -> String {
        let mut out = Vec::new();
        render(&mut out).expect("render");
        String::from_utf8(out).expect("UTF-8").replace("\\-", "-")
    }

    /// One `.SH` section, from its heading to the next.
    fn section(page: &str, heading: &str) -> String {
        let start = page
            .find(&format!("\n.SH {heading}\n"))
            .unwrap_or_else(|| panic!("no section {heading}"));
        let rest = &page[start + 1..];
        let end = rest[1..].find("\n.SH ").map_or(rest.len(), |i| i + 2);
        rest[..end].to_string()
    }

    /// The names in italics (`\fI...\fR`) of a piece of roff.
    fn italics(roff: &str) -> Vec<&str> {
        roff.split("\\fI")
            .skip(1)
            .filter_map(|s| s.split("\\fR").next())
            .collect()
    }

    /// The package installs every docs/*.md; FILES must name each, and
    /// nothing that is not there, so a guide added or renamed shows here.
    #[test]
    fn files_names_every_guide_in_docs_and_no_other() {
        let files = section(&page(), "FILES");
        let named: Vec<&str> = italics(&files).into_iter().filter(|n| n.ends_with(".md")).collect();
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        let mut guides: Vec<String> = std::fs::read_dir(&docs)
            .expect("docs/")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".md"))
            .collect();
        guides.sort();
        assert!(!guides.is_empty());
        let missing: Vec<&String> = guides.iter().filter(|g| !named.contains(&g.as_str())).collect();
        assert!(missing.is_empty(), "FILES does not name docs/{missing:?}");
        let unknown: Vec<&&str> = named
            .iter()
            .filter(|n| **n != "README.md" && !guides.iter().any(|g| g == **n))
            .collect();
        assert!(
            unknown.is_empty(),
            "FILES names guides that docs/ does not have: {unknown:?}"
        );
    }

    /// EXIT STATUS names the status the commands use for an unusable file.
    #[test]
    fn exit_status_names_ex_config_as_the_code_defines_it() {
        let exit = section(&page(), "\"EXIT STATUS\"");
        let config = format!("\\fB{}\\fR", egress_milter::admin::EXIT_CONFIG);
        assert!(exit.contains(&config), "{exit}");
        assert!(exit.contains("check-config"), "{exit}");
    }
}
