// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The lock notification command: run without a shell, the lock in its
//! environment, killed with its process group at `notify.command_timeout`.

use super::LockEvent;
use crate::config::format_duration;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tracing::{error, info, warn};

/// How much of the command's stderr is kept for the log.
const STDERR_LIMIT: usize = 4096;

/// How long stderr is still read after the command exited (a background
/// process it started may hold the pipe open).
const STDERR_LINGER: Duration = Duration::from_secs(1);

/// The environment the command gets (added to the daemon's own).
pub fn command_env(event: &LockEvent, host: &str) -> Vec<(&'static str, String)> {
    vec![
        ("EGRESS_IDENTITY", event.identity.clone()),
        ("EGRESS_IDENTITY_SOURCE", event.identity_source.clone()),
        ("EGRESS_SOURCE", event.source.to_string()),
        ("EGRESS_RULE", event.rule.clone()),
        ("EGRESS_REASON", event.reason.clone()),
        ("EGRESS_COUNTED", event.counted.to_string()),
        ("EGRESS_SCOPE", event.scope.to_string()),
        ("EGRESS_COUNT", event.count.to_string()),
        ("EGRESS_LIMIT", event.limit.to_string()),
        ("EGRESS_WINDOW", format_duration(event.window)),
        ("EGRESS_LOCKED_AT", event.locked_at.to_string()),
        (
            "EGRESS_EXPIRES_AT",
            event.expires_at.map(|t| t.to_string()).unwrap_or_default(),
        ),
        ("EGRESS_QUEUE_IDS", event.queue_ids.join(" ")),
        ("EGRESS_HOSTNAME", host.to_string()),
    ]
}

/// Kills the command's process group: at the timeout, and when dropped with
/// the command still running (the daemon stops). Disarmed once it exited.
struct GroupKill(Option<rustix::process::Pid>);

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }
}

impl GroupKill {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a command run ended.
pub(super) enum Ran {
    Ok,
    Failed,
    Killed,
}

/// Runs the command for one lock and logs how it ended.
pub(super) async fn run_command(argv: Vec<String>, timeout: Duration, event: Arc<LockEvent>, host: String) -> Ran {
    let Some((program, args)) = argv.split_first() else {
        return Ran::Failed;
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(command_env(&event, &host))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            error!(identity = %event.identity, command = %program, "cannot run the lock notification command: {e}");
            return Ran::Failed;
        }
    };
    let pid = child.id();
    let mut group = GroupKill(
        pid.and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw),
    );
    let stderr = StderrTail::start(&mut child);
    let status = tokio::time::timeout(timeout, child.wait()).await;
    if status.is_err() {
        // The leader is not reaped yet, so the group id is still ours.
        group.kill();
        let _ = child.kill().await;
    } else {
        // Reaped: its id may be reused. What it left in the background is
        // its own business (and no longer read from after STDERR_LINGER).
        group.disarm();
    }
    let stderr = stderr.finish().await;
    let outcome = Outcome {
        identity: &event.identity,
        program,
        pid,
        stderr: &stderr,
    };
    match status {
        Err(_) => outcome.killed(timeout),
        Ok(Err(e)) => {
            error!(identity = %event.identity, command = %program, "lock notification command: cannot wait for it: {e}");
            Ran::Failed
        }
        Ok(Ok(status)) => outcome.exited(status),
    }
}

/// The first [`STDERR_LIMIT`] bytes of a command's stderr, read as it runs.
struct StderrTail {
    kept: Arc<Mutex<Vec<u8>>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl StderrTail {
    fn start(child: &mut tokio::process::Child) -> Self {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let reader = child.stderr.take().map(|mut pipe| {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                    let room = STDERR_LIMIT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            })
        });
        Self { kept, reader }
    }

    /// What was read, once the pipe closed or [`STDERR_LINGER`] passed.
    async fn finish(self) -> String {
        if let Some(mut reader) = self.reader
            && tokio::time::timeout(STDERR_LINGER, &mut reader).await.is_err()
        {
            reader.abort();
        }
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&kept).trim_end().to_string()
    }
}

/// The log line of a command that ended.
struct Outcome<'a> {
    identity: &'a str,
    program: &'a str,
    pid: Option<u32>,
    stderr: &'a str,
}

impl Outcome<'_> {
    fn killed(&self, timeout: Duration) -> Ran {
        warn!(
            identity = %self.identity,
            command = %self.program,
            pid = self.pid,
            timeout = %format_duration(timeout),
            stderr = %self.stderr,
            "lock notification command killed after notify.command_timeout"
        );
        Ran::Killed
    }

    fn exited(&self, status: std::process::ExitStatus) -> Ran {
        if status.success() {
            info!(
                identity = %self.identity,
                command = %self.program,
                status = %describe(status),
                stderr = %self.stderr,
                "lock notification command finished"
            );
            Ran::Ok
        } else {
            warn!(
                identity = %self.identity,
                command = %self.program,
                status = %describe(status),
                stderr = %self.stderr,
                "lock notification command failed"
            );
            Ran::Failed
        }
    }
}

/// `exit 0`, `exit 3` or `signal 9`.
fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}
