// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The running daemon: state, background tasks, reload and shutdown.

use crate::callbacks::{self, CurrentPolicy};
use crate::clock::Clock;
use crate::config::Config;
use crate::identity::normalise_address;
use crate::listener::MilterListener;
use crate::lockfile::LockFileError;
use crate::locks::{FileLocks, Normaliser};
use crate::metrics::Observer;
use crate::notify::{self, Notifier};
use crate::policy::{Counters, Policy};
use crate::status;
use crate::watchdog::{Guard, Timeouts};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

/// How identities written in the lock list are compared with resolved ones.
pub fn lock_normaliser(config: &Config) -> Normaliser {
    let identity = config.identity.clone();
    Arc::new(move |s: &str| normalise_address(&identity, s.as_bytes()).unwrap_or_else(|_| s.trim().to_lowercase()))
}

/// Opens the lock list named by the configuration.
pub fn open_locks(config: &Config) -> Result<Arc<FileLocks>, LockFileError> {
    FileLocks::open(&config.locks.file, lock_normaliser(config))
}

/// Checks that the lock list's directory is writable by this process, so a
/// lock set at run time can be persisted. With `create`, a missing directory
/// is created (the daemon at start); without, nothing is left on disk
/// (`check-config`, which an admin may run as root).
pub fn check_lock_dir(path: &Path, create: bool) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        if !create {
            return Err(format!(
                "the lock list's directory ({}) does not exist; the daemon creates it at start if it can",
                dir.display()
            ));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the lock list's directory ({}): {e}", dir.display()))?;
    }
    let probe = dir.join(format!(".egress-milter-probe.{}", std::process::id()));
    std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&probe)
        .map(drop)
        .map_err(|e| format!("cannot write in the lock list's directory ({}): {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Runs the milter until `shutdown` resolves; each message on `reload`
/// re-reads the configuration file and the lock list.
pub async fn run(
    listener: MilterListener,
    config_path: PathBuf,
    config: Config,
    locks: Arc<FileLocks>,
    clock: Clock,
    mut reload: mpsc::Receiver<()>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    // The activity registry serves the status listener and gives lock
    // notifications their recent queue ids; without either it costs nothing.
    let observer = Arc::new(if config.status.listen.is_some() || config.notify.is_enabled() {
        Observer::new(clock.clone(), config.status.max_identities)
    } else {
        Observer::disabled()
    });
    let (notifier, notify_rx) = Notifier::channel(notify::QUEUE_CAPACITY);
    let counters = Counters::new(clock.clone());
    let policy = Arc::new(
        Policy::new(config.clone(), counters.clone(), locks.clone())
            .with_observer(observer.clone())
            .with_notifier(Some(notifier)),
    );
    let current: CurrentPolicy = Arc::new(RwLock::new(policy));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let writer = tokio::spawn(
        locks
            .clone()
            .run_writer(config.locks.write_retry_interval.0, stopped(stop_rx.clone())),
    );
    let unlocked = {
        let counters = counters.clone();
        move |ids: &[String]| {
            for id in ids {
                counters.forget(id);
            }
        }
    };
    tokio::spawn(
        locks
            .clone()
            .run_watcher(config.locks.poll_interval.0, unlocked, stopped(stop_rx.clone())),
    );
    tokio::spawn(housekeeping(
        counters.clone(),
        current.clone(),
        stopped(stop_rx.clone()),
    ));
    if let Some(addr) = config.status.listen {
        let listener = status::bind(addr).await?;
        let state = status::State::new(current.clone(), locks.clone(), observer.clone());
        tokio::spawn(status::serve(listener, state, stopped(stop_rx.clone())));
    }
    let notify_task = {
        let current = current.clone();
        let config = move || callbacks::snapshot(&current).config().clone();
        tokio::spawn(notify::run(notify_rx, config, clock, stopped(stop_rx.clone())))
    };
    {
        let current = current.clone();
        let locks = locks.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            while reload.recv().await.is_some() {
                reload_config(&config_path, &current, &counters, &locks, &observer).await;
            }
        });
    }

    // The guard counts connections and times them out; see watchdog.rs.
    let timeouts = Timeouts::new(&config);
    let listener = Guard::new(listener, config.max_connections, timeouts);
    let milter_config = indymilter::Config {
        // One more than the guard's limit, so that indymilter's accept loop
        // still reaches the guard when every slot is taken.
        max_connections: listener.max_connections() + 1,
        // Only a backstop: the guard's timeouts fire first and say why.
        connection_timeout: timeouts.backstop(),
        ..Default::default()
    };
    info!(socket = %config.socket, mode = %config.mode, rules = config.rules.len(), "egress-milter started");
    let result = indymilter::run(listener, callbacks::make_callbacks(current), milter_config, shutdown).await;
    info!("stopped accepting connections; writing pending locks");
    let _ = stop_tx.send(true);
    if let Err(e) = writer.await {
        error!("lock list writer did not finish: {e}");
    }
    if let Err(e) = notify_task.await {
        error!("lock notifier did not finish: {e}");
    }
    result
}

async fn reload_config(
    path: &Path,
    current: &CurrentPolicy,
    counters: &Arc<Counters>,
    locks: &Arc<FileLocks>,
    observer: &Arc<Observer>,
) {
    let read_path = path.to_owned();
    let read = tokio::task::spawn_blocking(move || Config::read(&read_path)).await;
    match read {
        Ok(Ok(new)) => {
            let old = callbacks::snapshot(current);
            for param in old.config().restart_needed(&new) {
                warn!("parameter \"{param}\" changed; it takes effect only after a restart");
            }
            for w in new.warnings() {
                warn!("{w}");
            }
            observer.activity().set_cap(new.status.max_identities);
            let policy = Policy::new(Arc::new(new), counters.clone(), locks.clone() as _)
                .with_observer(observer.clone())
                .with_notifier(old.notifier().cloned());
            match current.write() {
                Ok(mut c) => *c = Arc::new(policy),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(policy),
            }
            info!(file = %path.display(), "configuration reloaded");
            observer.reloaded(true);
        }
        Ok(Err(e)) => {
            error!("configuration not reloaded, keeping the running one: {e}");
            observer.reloaded(false);
        }
        Err(e) => {
            error!("configuration not reloaded: {e}");
            observer.reloaded(false);
        }
    }
    let locks = locks.clone();
    if let Ok(unlocked) = tokio::task::spawn_blocking(move || locks.reload(true)).await {
        for id in unlocked {
            counters.forget(&id);
        }
    }
}

/// Forgets idle counters periodically, which bounds memory by the number of
/// recently active identities.
async fn housekeeping(counters: Arc<Counters>, current: CurrentPolicy, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let interval = callbacks::snapshot(&current).config().limits.eviction_interval.0;
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = &mut stop => return,
        }
        let started = std::time::Instant::now();
        let (removed, tracked) = counters.evict_idle();
        debug!(
            removed,
            tracked,
            took_ms = started.elapsed().as_millis() as u64,
            "idle counters evicted"
        );
        let observer = callbacks::snapshot(&current).observer().clone();
        if observer.enabled() {
            let removed = observer.activity().evict_idle();
            debug!(
                removed,
                tracked = observer.activity().len(),
                "idle activity entries evicted"
            );
        }
        let cap = callbacks::snapshot(&current).config().limits.max_tracked_identities;
        if tracked >= cap {
            warn!(
                tracked,
                cap,
                "identity cap reached: new identities share one overflow bucket per rule (limits.max_tracked_identities)"
            );
        }
    }
}
