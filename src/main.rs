// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The `egress-milter` command: argument parsing and dispatch.

// Output goes through admin::output, which ends quietly when the reader of
// a pipe is gone (`| head -1`) where `print!` panics.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use clap::Parser;
use egress_milter::admin::queue::{self, QueueAction};
use egress_milter::admin::{self, client as status_client, output};
use egress_milter::cli::{Cli, Command, LocksCommand, QueueCommand};
use egress_milter::clock::Clock;
use egress_milter::config::{Config, SocketSpec};
use egress_milter::milter::listener;
use egress_milter::{daemon, locks, logging};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

/// Exit status for an unusable configuration (sysexits EX_CONFIG).
const EXIT_CONFIG: u8 = admin::EXIT_CONFIG as u8;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Needs no configuration: it only prints a line for the users file.
    if let Command::Passwd { user } = &cli.command {
        return finish(admin::passwd(user));
    }
    // The daemon and check-config read the secrets the file names too; the
    // other commands need none, and work for users who may not read them.
    let read = match cli.command {
        Command::Run | Command::CheckConfig => Config::read_with_secrets,
        _ => Config::read,
    };
    let config = match read(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            output::eprint(&format!("egress-milter: {e}\n"));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match cli.command {
        Command::Run => return run(cli.config, config),
        Command::CheckConfig => admin::check_config(&config, &cli.config),
        Command::Locks { command } => match command {
            LocksCommand::List { json: false } => admin::list(&config),
            LocksCommand::List { json: true } => admin::list_json(&config),
            LocksCommand::Show { identity } => admin::show(&config, &identity),
            LocksCommand::Add {
                identity,
                reason,
                expires,
                note,
            } => admin::add(&config, &identity, &reason, expires.map(|d| d.0), note),
            LocksCommand::Remove { identity } => admin::remove(&config, &identity),
            LocksCommand::Unlock { identity, reason } => admin::unlock(&config, &identity, &reason),
            LocksCommand::Extend {
                identity,
                expires,
                reason,
            } => admin::extend(&config, &identity, &expires, &reason),
            LocksCommand::UnlockMatching {
                source,
                rule,
                since,
                identity,
                all,
                reason,
                dry_run,
            } => {
                let filter = egress_milter::ops::api::FilterRequest {
                    source,
                    rule,
                    since,
                    identity,
                };
                admin::unlock_matching(&config, &filter, all, &reason, dry_run)
            }
        },
        Command::Reset { identity, reason } => status_client::reset(&config, &identity, &reason),
        Command::Passwd { user } => admin::passwd(&user),
        Command::Top {
            count,
            sort,
            interval,
            once,
            json,
        } => status_client::top(&config, count, &sort, Duration::from_secs(interval.max(1)), once, json),
        Command::Explain { identity, json } => status_client::explain(&config, &identity, json),
        Command::Report { since, csv, json } => status_client::report(&config, &since, csv, json),
        Command::Queue { command } => {
            let (action, identity, dry_run, postfix_config) = match command {
                QueueCommand::Hold {
                    identity,
                    dry_run,
                    postfix_config,
                } => (QueueAction::Hold, identity, dry_run, postfix_config),
                QueueCommand::Release {
                    identity,
                    dry_run,
                    postfix_config,
                } => (QueueAction::Release, identity, dry_run, postfix_config),
            };
            queue::run(&config, &identity, action, dry_run, postfix_config.as_deref())
        }
    };
    finish(result)
}

/// Prints an admin command's output, or its error, and exits accordingly.
/// A reader that stopped reading (`| head -1`) is no error: the command
/// did its work, and ends quietly with its own status.
fn finish(result: Result<String, admin::Failure>) -> ExitCode {
    match result.and_then(|out| output::print(&out)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(f) => {
            output::eprint(&format!("egress-milter: {}\n", f.message));
            ExitCode::from(u8::try_from(f.status).unwrap_or(1))
        }
    }
}

fn run(config_path: PathBuf, config: Config) -> ExitCode {
    logging::init(config.log_format, &config.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        if is_root() {
            warn!("running as root; run egress-milter as an unprivileged user (systemd User=)");
        }
        for w in config.warnings() {
            warn!("{w}");
        }
        let locks = match locks::open_locks(&config) {
            Ok(l) => l,
            Err(e) => {
                error!("cannot load the lock list, not starting (fix or move the file): {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        if let Err(e) = locks::file::check_lock_dir(&config.locks.file, true) {
            error!("{e}; not starting, as locks could not be persisted");
            return ExitCode::from(EXIT_CONFIG);
        }
        let listener = match listener::bind(&config.socket, config.socket_mode, config.tcp_quickack).await {
            Ok(l) => l,
            Err(e) => {
                let failure = listener::bind_failure(&config.socket, &e);
                error!("cannot listen on {}: {}", config.socket, failure.message);
                // A missing directory or permission is not fixed by the
                // restart the unit would otherwise make every 2 s.
                return if failure.config {
                    ExitCode::from(EXIT_CONFIG)
                } else {
                    ExitCode::FAILURE
                };
            }
        };
        let _cleanup = listener::SocketCleanup(match &config.socket {
            SocketSpec::Unix(path) => Some(path.clone()),
            SocketSpec::Inet(_) => None,
        });
        let (reload_tx, reload_rx) = mpsc::channel(1);
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        if let Err(e) = spawn_signal_handler(reload_tx, shutdown_tx) {
            error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
        let shutdown = async {
            let _ = shutdown_rx.await;
        };
        match daemon::run(listener, config_path, config, locks, Clock::real(), reload_rx, shutdown).await {
            Ok(()) => {
                info!("egress-milter stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!("milter failed: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// SIGHUP reloads; SIGTERM and SIGINT stop (after the sessions drain).
fn spawn_signal_handler(reload: mpsc::Sender<()>, shutdown: oneshot::Sender<()>) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    info!("SIGHUP: reloading configuration and lock list");
                    let _ = reload.try_send(());
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        info!("stopping: no new connections, draining sessions");
        let _ = shutdown.send(());
    });
    Ok(())
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
