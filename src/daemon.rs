// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The running daemon: state, background tasks, reload and shutdown.

use crate::clock::Clock;
use crate::config::{Config, StoreBackend, format_duration};
use crate::locks::FileLocks;
use crate::milter::listener::MilterListener;
use crate::milter::watchdog::{Guard, Timeouts};
use crate::milter::{Reporting, callbacks};
use crate::notify::{self, Notifier};
use crate::ops::fleet_top::FleetTop;
use crate::ops::metrics::Observer;
use crate::ops::{auth, status};
use crate::policy::saved::SavedCounters;
use crate::policy::{self, Counters, CurrentPolicy, Policy, snapshot};
use crate::store::StoreStats;
use crate::store::counters::RedisCounters;
use crate::store::link::RedisLink;
use crate::store::lock_sync::{ForgetHook, LockSync};
use crate::store::state_file;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

/// Tells the background tasks that the daemon stops.
struct Stop(watch::Sender<bool>);

impl Stop {
    fn new() -> Self {
        Self(watch::channel(false).0)
    }

    /// Resolves once [`Stop::now`] was called.
    fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    fn now(&self) {
        self.0.send_replace(true);
    }
}

/// The activity registry serves the status listener and gives lock
/// notifications their recent queue ids; without either it costs nothing.
fn observer_for(config: &Config, clock: &Clock) -> Arc<Observer> {
    Arc::new(if config.status.listen.is_some() || config.notify.is_enabled() {
        Observer::new(clock.clone(), config.status.max_identities)
    } else {
        Observer::disabled()
    })
}

/// The lock list's writer (awaited at shutdown, so pending locks are
/// written) and its watcher, which forgets the counters of identities an
/// admin unlocked.
fn spawn_lock_tasks(
    config: &Config,
    locks: &Arc<FileLocks>,
    counters: &Arc<Counters>,
    stop: &Stop,
) -> tokio::task::JoinHandle<()> {
    let writer = tokio::spawn(
        locks
            .clone()
            .run_writer(config.locks.write_retry_interval.0, stop.signal()),
    );
    let unlocked = {
        let counters = counters.clone();
        move |ids: &[String]| forget(&counters, ids)
    };
    tokio::spawn(
        locks
            .clone()
            .run_watcher(config.locks.poll_interval.0, unlocked, stop.signal()),
    );
    writer
}

/// Gives unlocked identities a fresh start: their own counters are emptied,
/// here and, in a fleet, on Redis (in the background: an unlock must not wait
/// for Redis).
fn forget(counters: &Arc<Counters>, ids: &[String]) {
    for id in ids {
        counters.forget(id);
    }
    if counters.shared().is_some() {
        let (counters, ids) = (counters.clone(), ids.to_vec());
        tokio::spawn(async move { forget_shared(&counters, &ids).await });
    }
}

/// [`forget`], waiting for Redis to have cleared the counters (bounded by
/// the store's timeout): for an unlock that takes effect after it.
async fn forget_now(counters: &Arc<Counters>, ids: &[String]) {
    for id in ids {
        counters.forget(id);
    }
    forget_shared(counters, ids).await;
}

/// Empties the identities' own buckets on Redis, if the counters are shared.
async fn forget_shared(counters: &Counters, ids: &[String]) {
    let Some(shared) = counters.shared() else { return };
    for id in ids {
        if let Err(e) = shared.forget(id, policy::shared_group_of(id)).await {
            warn!(identity = %id, "cannot clear the identity's counters on Redis: {e}");
        }
    }
}

/// The counters `[store]` asks for: in memory, or shared on Redis with
/// in-memory ones as the fallback.
async fn counters_for(config: &Config, clock: &Clock) -> std::io::Result<(Arc<Counters>, Option<Arc<RedisLink>>)> {
    if config.store.backend == StoreBackend::Memory {
        return Ok((Counters::new(clock.clone()), None));
    }
    let stats = Arc::new(StoreStats::default());
    let link = RedisLink::new(&config.store, stats).map_err(std::io::Error::other)?;
    // Connect now, so the first messages need not: a Redis down at start
    // is logged, and the host starts on its local counters.
    let ping = link
        .run(
            config.store.timeout.0.max(Duration::from_secs(1)),
            |mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await },
        )
        .await;
    if ping.is_ok() {
        info!(prefix = %config.store.prefix, fleet_size = config.store.fleet_size, "counters shared on Redis");
    }
    let shared = RedisCounters::new(link.clone(), &config.store);
    Ok((Counters::with_shared(clock.clone(), Arc::new(shared)), Some(link)))
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
    let observer = observer_for(&config, &clock);
    let (notifier, notify_rx) = Notifier::channel(notify::QUEUE_CAPACITY);
    // Read at start, written at the stop (a restart-only parameter).
    let state_path = (config.store.backend == StoreBackend::Memory).then(|| config.state_file());
    let saved = match &state_path {
        Some(path) => load_counters(path.clone(), &config, &clock).await,
        None => None,
    };
    let (counters, link) = match &saved {
        Some((saved, _)) => (Counters::with_key(clock.clone(), saved.hash_key()), None),
        None => counters_for(&config, &clock).await?,
    };
    let notifications = notifier.stats().clone();
    let reporting = Reporting {
        observer: observer.clone(),
        notifier: Some(notifier),
    };
    let policy = Arc::new(Policy::new(config.clone(), counters.clone(), locks.clone()));
    if let (Some(path), Some((saved, age))) = (&state_path, saved) {
        restore_counters(path, &counters, &locks, saved, age);
    }
    let current: CurrentPolicy = Arc::new(RwLock::new(policy));
    let stop = Stop::new();

    let writer = spawn_lock_tasks(&config, &locks, &counters, &stop);
    let lock_sync = link.as_ref().map(|link| {
        let counters = counters.clone();
        let forget: ForgetHook = Box::new(move |ids| {
            let counters = counters.clone();
            Box::pin(async move { forget_now(&counters, &ids).await })
        });
        let sync = LockSync::new(link.clone(), locks.clone(), &config.store.prefix, forget);
        tokio::spawn(sync.run(stop.signal()))
    });
    tokio::spawn(housekeeping(
        counters.clone(),
        current.clone(),
        observer.clone(),
        stop.signal(),
    ));
    if let Some(addr) = config.status.listen {
        let listener = status::bind(addr).await?;
        let token_path = auth::token_path(&config);
        let auth = Arc::new(auth::Auth::new(&token_path)?);
        info!(token_file = %token_path.display(), "status listener: local token written for the CLI");
        let forget_counters = {
            let counters = counters.clone();
            Arc::new(move |ids: &[String]| forget(&counters, ids)) as status::Forget
        };
        let mut state = status::State::new(
            current.clone(),
            locks.clone(),
            observer.clone(),
            notifications,
            clock.clone(),
            link.as_ref().map(|l| l.stats().clone()),
        )
        .with_auth(auth)
        .with_forget(forget_counters);
        if let Some(link) = &link {
            let fleet_top = Arc::new(FleetTop::new(
                link.clone(),
                &config.store.prefix,
                &config.socket.to_string(),
            ));
            tokio::spawn(fleet_top.clone().run_publisher(observer.clone(), stop.signal()));
            state = state.with_fleet_top(fleet_top);
        }
        tokio::spawn(status::serve(listener, state, stop.signal()));
    }
    let notify_task = {
        let current = current.clone();
        let config = move || snapshot(&current).config().clone();
        tokio::spawn(notify::run(notify_rx, config, clock, stop.signal()))
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
    let result = indymilter::run(
        listener,
        callbacks::make_callbacks(current, reporting),
        milter_config,
        shutdown,
    )
    .await;
    info!("stopped accepting connections; writing pending locks");
    stop.now();
    // The sessions are over: the counters are final. Saved beside the
    // lock writer's last batch, before waiting on notifications, which may
    // take up to their timeouts.
    let saving = state_path.map(|path| {
        let (counters, locks) = (counters.clone(), locks.clone());
        tokio::task::spawn_blocking(move || save_counters(&path, &counters, &locks))
    });
    if let Err(e) = writer.await {
        error!("lock list writer did not finish: {e}");
    }
    if let Some(sync) = lock_sync
        && let Err(e) = sync.await
    {
        error!("lock sync did not finish: {e}");
    }
    if let Some(saving) = saving {
        match saving.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!("counters not saved to {e}"),
            Err(e) => error!("counters not saved: {e}"),
        }
    }
    if let Err(e) = notify_task.await {
        error!("lock notifier did not finish: {e}");
    }
    result
}

/// The counters saved by the last clean stop, with their age, if they are
/// usable; why not is logged, and the daemon starts with empty counters.
async fn load_counters(path: PathBuf, config: &Config, clock: &Clock) -> Option<(SavedCounters, Duration)> {
    let max_age = config.store.state_max_age.0;
    let now = clock.wall_now();
    let shown = path.clone();
    let read = tokio::task::spawn_blocking(move || -> Result<Option<SavedCounters>, String> {
        if let Err(e) = state_file::check_writable(&path) {
            warn!(
                "cannot write in the directory of the counters' state file ({}): {e}; counters will not survive a restart",
                path.display()
            );
        }
        match state_file::read(&path).map_err(|e| e.to_string())? {
            Some(bytes) => SavedCounters::decode(&bytes).map(Some).map_err(|e| e.to_string()),
            None => Ok(None),
        }
    })
    .await;
    let why = match read {
        Ok(Ok(Some(saved))) => match saved.age(now, max_age) {
            Ok(age) => return Some((saved, age)),
            Err(e) => e.to_string(),
        },
        Ok(Ok(None)) => {
            info!(file = %shown.display(), "no saved counters: starting with empty counters");
            return None;
        }
        Ok(Err(e)) => e,
        Err(e) => e.to_string(),
    };
    warn!(
        "counters not restored from {}: {why}; starting with empty counters",
        shown.display()
    );
    None
}

/// Puts the saved buckets back into the limiters of the first policy.
fn restore_counters(path: &Path, counters: &Counters, locks: &FileLocks, saved: SavedCounters, age: Duration) {
    let locked: Vec<String> = locks.entries().iter().map(|e| e.identity.clone()).collect();
    let saved_buckets = saved.buckets();
    match counters.import(saved, age, &locked) {
        Ok(r) => info!(
            file = %path.display(),
            buckets = r.buckets,
            saved = saved_buckets,
            age = %format_duration(age),
            rules_changed = r.dropped,
            unlocked = r.unlocked,
            "counters restored"
        ),
        Err(e) => warn!(
            "counters not restored from {}: {e}; starting with empty counters",
            path.display()
        ),
    }
}

/// Writes the counters to the state file, for the next start.
fn save_counters(path: &Path, counters: &Counters, locks: &FileLocks) -> Result<(), String> {
    let locked: Vec<String> = locks.entries().iter().map(|e| e.identity.clone()).collect();
    let saved = counters.export(&locked);
    let bytes = saved.encode();
    state_file::write(path, &bytes)
        .map_err(|e| format!("{}: {e}; the next start begins with empty counters", path.display()))?;
    info!(file = %path.display(), buckets = saved.buckets(), bytes = bytes.len(), "counters saved");
    Ok(())
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
            let old = snapshot(current);
            for param in old.config().restart_needed(&new) {
                warn!("parameter \"{param}\" changed; it takes effect only after a restart");
            }
            for w in new.warnings() {
                warn!("{w}");
            }
            observer.activity().set_cap(new.status.max_identities);
            // The lock list is compared in the new normal form (realms,
            // case, +tags) from the forced reload below on.
            locks.set_normaliser(crate::locks::lock_normaliser(&new));
            let policy = Policy::new(Arc::new(new), counters.clone(), locks.clone() as _);
            policy::replace(current, policy);
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
        forget(counters, &unlocked);
    }
}

/// Forgets idle counters periodically, which bounds memory by the number of
/// recently active identities.
async fn housekeeping(
    counters: Arc<Counters>,
    current: CurrentPolicy,
    observer: Arc<Observer>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let interval = snapshot(&current).config().limits.eviction_interval.0;
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
        if observer.enabled() {
            let removed = observer.activity().evict_idle();
            debug!(
                removed,
                tracked = observer.activity().len(),
                "idle activity entries evicted"
            );
        }
        let cap = snapshot(&current).config().limits.max_tracked_identities;
        if tracked >= cap {
            warn!(
                tracked,
                cap,
                "identity cap reached: new identities share one overflow bucket per rule (limits.max_tracked_identities)"
            );
        }
    }
}
