// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The sending policy: which rules apply to an identity, whether its next
//! message or recipient fits, counting accepted mail, and automatic locking.
//! It knows nothing of the milter protocol.

pub mod bounce;
pub mod content;
pub mod distinct;
pub mod identity;
pub mod limiter;
pub mod locked;
pub mod reply;
pub mod saved;
pub mod sent;
pub mod shared;

use crate::clock::Clock;
use crate::config::address::{domain_key, lock_key};
use crate::config::{Action, Config, Counted, IdentitySource, Mode, Network, Rate, Ratio, Scope, format_duration};
use crate::locks::file::{LockEntry, LockSource, Timestamp};
use crate::locks::{LockStore, Ticket};
use crate::policy::bounce::BounceReport;
use crate::policy::distinct::DistinctSets;
use crate::policy::identity::Identity;
use crate::policy::limiter::{BucketKey, KeyedLimiter, Limit, OVERFLOW_KEY, Outcome, RateBuckets, Usage, bucket_key};
pub use crate::policy::saved::{HashKey, SavedCounters};
use crate::policy::sent::SentLog;
use crate::policy::shared::{OpAnswer, OpKind, SharedCounters, SharedOp};
use siphasher::sip::SipHasher13;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hasher;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Number of stripes serialising the final count of a message. Messages of
/// one domain share a stripe, so checking and counting all of a message's
/// rules (identity and domain) is atomic with respect to each other.
const COMMIT_STRIPES: usize = 64;

/// Counter state that outlives configuration reloads.
pub struct Counters {
    clock: Clock,
    /// Hashes identities to bucket keys (SipHash-1-3, as std's
    /// `RandomState`, keyed so that no one can aim identities at one
    /// bucket or at one shard of the maps). The key is random when the
    /// counters start empty and the saved one when they are restored, so a
    /// restored bucket is found by the identity it belongs to.
    hash_key: HashKey,
    hasher: SipHasher13,
    stripes: Box<[Mutex<()>]>,
    /// Limiters by what they count, so a reload keeps the counts of every
    /// rule whose definition did not change.
    registry: Mutex<HashMap<LimiterId, Arc<dyn RateBuckets>>>,
    /// The sets of the rules counting distinct values, by definition.
    distinct_registry: Mutex<HashMap<LimiterId, Arc<DistinctSets>>>,
    /// Makes the counters of one rate: in memory by default.
    factory: BucketsFactory,
    /// Who sent each recently accepted message, to charge its bounces.
    sent: Mutex<Arc<SentLog>>,
    /// The fleet's counters (`backend = "redis"`); the in-memory ones are
    /// then the fallback while it is unavailable, at the degraded limits.
    shared: Option<Arc<dyn SharedCounters>>,
}

/// Makes a rule's counters for a limit (the seam for a shared backend).
pub type BucketsFactory = Box<dyn Fn(Limit, &Clock) -> Arc<dyn RateBuckets> + Send + Sync>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LimiterId {
    rule: String,
    count: Counted,
    per: Scope,
    rate: Rate,
    burst: Option<NonZeroU32>,
    /// `None` for the rule's own rate; the override's target otherwise.
    variant: Option<String>,
    /// The in-memory limit is the rate divided by this: the fleet size for
    /// the fallback of shared counters, 1 otherwise.
    divisor: u32,
}

impl LimiterId {
    /// The name of this counter in a shared store: it changes whenever the
    /// rule's definition does (as the in-memory registry's key does), so
    /// hosts running different versions of a rule never share a bucket.
    /// It is a 64-bit FNV-1a hash of the definition, in hex: a field name
    /// is stored once per identity and rule, so it is kept short.
    fn shared_name(&self) -> String {
        let definition = format!(
            "{}|{}|{}|{}/{}ms|{}",
            self.rule,
            self.count,
            self.per,
            self.rate.count,
            self.rate.window.as_millis(),
            self.burst.map_or(0, NonZeroU32::get),
        );
        let hash = definition.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{hash:016x}")
    }
}

/// What a rule measures with: rate buckets, or sets of distinct values
/// (always in this process, also in a fleet).
#[derive(Clone)]
enum Meter {
    Rate(Counter),
    Distinct(Arc<DistinctSets>),
}

impl Meter {
    fn route(&self, key: BucketKey, cap: usize) -> BucketKey {
        match self {
            Meter::Rate(c) => c.local.route(key, cap),
            Meter::Distinct(d) => d.route(key, cap),
        }
    }

    fn usage(&self, key: BucketKey) -> Usage {
        match self {
            Meter::Rate(c) => c.local.usage(key),
            Meter::Distinct(d) => d.usage(key),
        }
    }
}

/// A rule's counter: the in-memory buckets and its name and limit in the
/// shared store, if there is one.
#[derive(Clone)]
struct Counter {
    local: Arc<dyn RateBuckets>,
    shared_name: Arc<str>,
    /// The rule's own limit (the local one may be divided).
    limit: Limit,
}

impl Counters {
    /// In-memory counters (see [`crate::limiter`]), empty, with a fresh
    /// hash key.
    pub fn new(clock: Clock) -> Arc<Self> {
        Self::with_key(clock, HashKey::random())
    }

    /// In-memory counters hashing identities with `hash_key`: the key of a
    /// saved state, before [`Counters::import`] restores it.
    pub fn with_key(clock: Clock, hash_key: HashKey) -> Arc<Self> {
        Self::build(
            clock,
            hash_key,
            Box::new(|limit, clock| Arc::new(KeyedLimiter::new(limit, clock.clone()))),
        )
    }

    pub fn with_factory(clock: Clock, factory: BucketsFactory) -> Arc<Self> {
        Self::build(clock, HashKey::random(), factory)
    }

    fn build(clock: Clock, hash_key: HashKey, factory: BucketsFactory) -> Arc<Self> {
        Arc::new(Self {
            clock,
            hasher: hash_key.hasher(),
            hash_key,
            stripes: (0..COMMIT_STRIPES).map(|_| Mutex::new(())).collect(),
            registry: Mutex::new(HashMap::new()),
            distinct_registry: Mutex::new(HashMap::new()),
            factory,
            sent: Mutex::new(Arc::new(SentLog::new(0))),
            shared: None,
        })
    }

    /// Counters shared by a fleet, with in-memory ones as the fallback.
    pub fn with_shared(clock: Clock, shared: Arc<dyn SharedCounters>) -> Arc<Self> {
        let mut counters = Self::with_factory(
            clock,
            Box::new(|limit, clock| Arc::new(KeyedLimiter::new(limit, clock.clone()))),
        );
        if let Some(c) = Arc::get_mut(&mut counters) {
            c.shared = Some(shared);
        }
        counters
    }

    /// The fleet's counters, if they are shared.
    pub fn shared(&self) -> Option<&Arc<dyn SharedCounters>> {
        self.shared.as_ref()
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    fn key(&self, s: &str) -> BucketKey {
        bucket_key(self.hasher.hash(s.as_bytes()))
    }

    /// The key of `parts` (each followed by a 0 byte), ASCII letters folded
    /// to lower case, without allocating: for the values computed at every
    /// RCPT. Each caller starts its parts with a tag of its own, so that the
    /// kinds of value never collide by construction.
    fn folded_key(&self, parts: &[&[u8]]) -> BucketKey {
        let mut hasher = self.hasher;
        let mut buf = [0u8; 64];
        for part in parts {
            for chunk in part.chunks(buf.len()) {
                let folded = &mut buf[..chunk.len()];
                folded.copy_from_slice(chunk);
                folded.make_ascii_lowercase();
                hasher.write(folded);
            }
            hasher.write_u8(0);
        }
        bucket_key(hasher.finish())
    }

    /// Gives an identity a fresh start: its own buckets in every rule are
    /// emptied (its domain's are not). Called when an admin unlocks it, so
    /// the attempts that locked it do not lock it again at once.
    pub fn forget(&self, identity: &str) {
        let key = self.key(identity);
        for limiter in lock(&self.registry).values() {
            limiter.forget(key);
        }
        for sets in lock(&self.distinct_registry).values() {
            sets.forget(key);
        }
    }

    /// Forgets idle buckets in every limiter; returns (removed, still tracked).
    pub fn evict_idle(&self) -> (usize, usize) {
        let limiters: Vec<_> = lock(&self.registry).values().cloned().collect();
        let sets: Vec<_> = lock(&self.distinct_registry).values().cloned().collect();
        let removed =
            limiters.iter().map(|l| l.evict_idle()).sum::<usize>() + sets.iter().map(|s| s.evict_idle()).sum::<usize>();
        let tracked = limiters
            .iter()
            .map(|l| l.tracked())
            .chain(sets.iter().map(|s| s.tracked()))
            .max()
            .unwrap_or(0);
        (removed, tracked)
    }
}

/// The registry name of the `locks.hold_limit` counter.
const HOLD_RULE: &str = "(hold)";

/// The registry name of the recipients a `min_ratio` rule compares its
/// bounces with, followed by the rule's name.
const SENT_TALLY_RULE: &str = "(sent)";

/// The count of a sent-recipients tally: far above any real volume, so
/// that it never refuses and only counts.
const SENT_TALLY_COUNT: u32 = 10_000_000;

/// The registry name of the envelopes refused with 4xx (see
/// [`Policy::is_retry`]).
const RETRY_RULE: &str = "(retries)";

/// The registry name of the budget of free retries per envelope.
const RETRY_BUDGET_RULE: &str = "(retry budget)";

/// Retries of one envelope that are free in the shortest lock window (one
/// hour or less), and as many per hour of a longer one: Postfix retries a
/// deferred message at most every `queue_run_delay` (5 minutes by default),
/// 12 times an hour. A client that resends one envelope faster is no MTA
/// working off its queue, and its attempts count again.
const FREE_RETRIES_PER_HOUR: u32 = 12;

/// A count divided among the hosts of a fleet, at least 1.
fn divided(n: NonZeroU32, by: u32) -> NonZeroU32 {
    NonZeroU32::new(n.get() / by.max(1)).unwrap_or(NonZeroU32::MIN)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct CompiledRule {
    name: String,
    count: Counted,
    per: Scope,
    action: Action,
    /// Counts as `action` says, only logs what it would do.
    dry_run: bool,
    rate: Rate,
    meter: Meter,
    /// Bounces with `min_ratio`: the share, and the recipients accepted
    /// from the identity in the rule's window.
    ratio: Option<(Ratio, Counter)>,
}

#[derive(Default)]
struct CompiledOverride {
    exempt: bool,
    /// Rule index to the override's rate and counter.
    rates: HashMap<usize, (Rate, Meter)>,
    /// Domains its identities may send as besides their own (`"*"`: any).
    sender_domains: Vec<String>,
}

/// The policy of one configuration; rebuilt on reload, sharing [`Counters`].
pub struct Policy {
    config: Arc<Config>,
    counters: Arc<Counters>,
    locks: Arc<dyn LockStore>,
    rules: Vec<CompiledRule>,
    identity_overrides: HashMap<String, CompiledOverride>,
    domain_overrides: HashMap<String, CompiledOverride>,
    /// Messages held per locked identity (`locks.hold_limit`).
    holds: Arc<dyn RateBuckets>,
    /// How long a shared store keeps an identity's and a domain's buckets
    /// after a count (see [`SharedOp::ttl`]).
    shared_ttl: [Duration; 2],
    /// The envelopes of each identity refused with 4xx within the longest
    /// lock window, as many as the largest lock rule's count: a retry of
    /// one is not a new attempt (see [`Policy::is_retry`]).
    retries: Option<Arc<DistinctSets>>,
    /// Free retries per identity and envelope ([`FREE_RETRIES_PER_HOUR`]).
    retry_budget: Option<Arc<dyn RateBuckets>>,
}

/// How mail reached the MTA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Door {
    /// An SMTP client (or an MTA that gave no client address). The default:
    /// nothing of it is believed that only the local door may tell.
    #[default]
    Smtp,
    /// The sendmail command on the MTA host: Postfix hands such mail to
    /// `non_smtpd_milters` as if from 127.0.0.1 port 0, which no SMTP client
    /// can be.
    LocalSubmission,
}

impl Door {
    /// The door of a connection from `client`, as the MTA reported it.
    pub fn of(client: Option<SocketAddr>) -> Door {
        match client {
            Some(a) if a.port() == 0 && a.ip().is_loopback() => Door::LocalSubmission,
            _ => Door::Smtp,
        }
    }
}

/// Why a message is outbound mail, subject to the rules (`[scope]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// A SASL-authenticated session.
    Authenticated,
    /// Submitted on the MTA host with the sendmail command.
    LocalSubmission,
    /// From a client of `scope.networks`.
    Network,
    /// From a client of `identity.trusted_networks` (a relay).
    TrustedRelay,
}

impl fmt::Display for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outbound::Authenticated => "authenticated",
            Outbound::LocalSubmission => "local",
            Outbound::Network => "network",
            Outbound::TrustedRelay => "trusted-relay",
        })
    }
}

/// The policy new connections use; replaced atomically on reload. Each
/// connection keeps the snapshot it started with.
pub type CurrentPolicy = Arc<RwLock<Arc<Policy>>>;

/// Reads the current policy snapshot.
pub fn snapshot(current: &CurrentPolicy) -> Arc<Policy> {
    match current.read() {
        Ok(p) => p.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Makes `policy` the one new connections use.
pub fn replace(current: &CurrentPolicy, policy: Policy) {
    match current.write() {
        Ok(mut c) => *c = Arc::new(policy),
        Err(poisoned) => *poisoned.into_inner() = Arc::new(policy),
    }
}

/// What [`Policy::auto_lock`] did.
#[derive(Clone, Debug)]
pub struct AutoLock {
    /// The lock in force for the identity.
    pub entry: Arc<LockEntry>,
    /// Whether this call set it (false: it was locked already).
    pub fresh: bool,
}

/// A rule a message (or recipient) would exceed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trip {
    pub rule: String,
    pub action: Action,
    pub counted: Counted,
    pub scope: Scope,
    /// What is counted: the identity, its domain, or `overflow`.
    pub key: String,
    pub rate: Rate,
    pub usage: Usage,
    /// When it would fit again; `None` if it never can (weight over the burst).
    pub retry_in: Option<Duration>,
    /// How much was asked for: 1 message, or the message's recipients.
    pub requested: u32,
    /// The rule only logs what it would do (`dry_run = true`).
    pub dry_run: bool,
}

impl fmt::Display for Trip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rule=\"{}\" per={} key=\"{}\" count={}/{} {} window={} reset_in={}",
            self.rule,
            self.scope,
            self.key,
            self.usage.used,
            self.usage.limit,
            self.counted,
            format_duration(self.rate.window),
            format_duration(self.usage.reset_in),
        )
    }
}

/// The rules that apply to one message's identity, with its bucket keys.
pub struct Plan {
    pub identity: Identity,
    entries: Vec<PlanEntry>,
    stripe: usize,
}

struct PlanEntry {
    rule: usize,
    role: Role,
    rate: Rate,
    meter: Meter,
    /// The bucket (or set) in the in-memory counters.
    key: BucketKey,
}

/// What a plan entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The rule's own count: exceeding it trips the rule. Lock rules count
    /// attempts (see [`Policy::check`]); the others count accepted mail.
    Limit { counts_attempts: bool },
    /// The recipients of accepted mail in the window of a bounce rule with
    /// `min_ratio`; it never trips.
    SentTally,
}

/// What one decision point asks of the rules: how much mail, and what is
/// new about it for the rules that count something other than volume.
#[derive(Clone, Copy, Debug, Default)]
pub struct Demand<'a> {
    pub messages: u32,
    pub recipients: u32,
    /// The recipients, for the distinct-recipient rules (see
    /// [`Policy::recipient_value`]); may be fewer than `recipients` if the
    /// caller keeps a bounded number.
    pub recipient_values: &'a [RecipientValue],
    /// The client address, for the distinct-client rules (see
    /// [`Policy::client_value`]); used when `messages` is not 0.
    pub client: Option<u64>,
    /// The message is sent as a domain its identity may not use (see
    /// [`Policy::is_foreign_sender`]).
    pub foreign: bool,
    /// What the content scanner said of the message (see
    /// [`Policy::check_content`]).
    pub content: content::Content,
}

impl Demand<'_> {
    /// `messages` messages with `recipients` recipients and nothing else known.
    pub fn volume(messages: u32, recipients: u32) -> Demand<'static> {
        Demand {
            messages,
            recipients,
            ..Demand::default()
        }
    }
}

/// A recipient as the distinct sets see it: keyed hashes of its address
/// and of its domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecipientValue {
    pub address: u64,
    pub domain: u64,
}

/// One operation of a decision point on one plan entry.
#[derive(Clone)]
struct Op<'p> {
    plan: &'p Plan,
    entry: &'p PlanEntry,
    /// How much is asked of a rate bucket (for a set: how many values).
    n: u32,
    /// The values asked of a set.
    values: Vec<u64>,
    kind: OpKind,
}

/// The state of one rule for one identity, for `explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleState {
    pub rule: String,
    pub counted: Counted,
    pub scope: Scope,
    pub action: Action,
    pub rate: Rate,
    /// `None` when the rule does not apply (exempt, no domain, bounce).
    pub usage: Option<Usage>,
    /// A bounce rule's `min_ratio`, and the recipients accepted in its
    /// window that the bounces are compared with.
    pub min_ratio: Option<Ratio>,
    pub sent: Option<u32>,
}

impl Policy {
    pub fn new(config: Arc<Config>, counters: Arc<Counters>, locks: Arc<dyn LockStore>) -> Self {
        let mut registry = lock(&counters.registry);
        let mut next_registry = HashMap::new();
        let divisor = if counters.shared.is_some() {
            config.store.fleet_size.max(1)
        } else {
            1
        };
        let mut limiter = |mut id: LimiterId, rate: Rate| {
            if id.rule != HOLD_RULE {
                id.divisor = divisor;
            }
            let local = registry
                .remove(&id)
                .or_else(|| next_registry.get(&id).cloned())
                .unwrap_or_else(|| {
                    let limit = Limit::new(
                        divided(rate.count, id.divisor),
                        rate.window,
                        id.burst.map(|b| divided(b, id.divisor)),
                    );
                    (counters.factory)(limit, &counters.clock)
                });
            next_registry.insert(id.clone(), local.clone());
            Counter {
                local,
                shared_name: id.shared_name().into(),
                limit: Limit::new(rate.count, rate.window, id.burst),
            }
        };
        let mut distinct_registry = lock(&counters.distinct_registry);
        let mut next_distinct = HashMap::new();
        // Sets of distinct values are kept per host, also in a fleet, and
        // their limits are not divided (see docs/detection.md).
        let mut meter = |id: LimiterId, rate: Rate, limiter: &mut dyn FnMut(LimiterId, Rate) -> Counter| {
            if !id.count.is_distinct() {
                return Meter::Rate(limiter(id, rate));
            }
            let sets = distinct_registry
                .remove(&id)
                .or_else(|| next_distinct.get(&id).cloned())
                .unwrap_or_else(|| Arc::new(DistinctSets::new(rate.count.get(), rate.window, counters.clock.clone())));
            next_distinct.insert(id, sets.clone());
            Meter::Distinct(sets)
        };
        let rules: Vec<CompiledRule> = config
            .rules
            .iter()
            .map(|r| {
                let id = LimiterId {
                    rule: r.name.get_ref().clone(),
                    count: r.count,
                    per: r.per,
                    rate: r.rate,
                    burst: r.burst,
                    variant: None,
                    divisor: 1,
                };
                let ratio = r.min_ratio.map(|ratio| {
                    let window = r.rate.window;
                    let tally = Rate {
                        count: NonZeroU32::new(SENT_TALLY_COUNT).unwrap_or(NonZeroU32::MAX),
                        window,
                    };
                    let id = LimiterId {
                        rule: format!("{SENT_TALLY_RULE}{}", r.name.get_ref()),
                        count: Counted::Recipients,
                        per: r.per,
                        rate: tally,
                        burst: None,
                        variant: None,
                        divisor: 1,
                    };
                    (ratio, limiter(id, tally))
                });
                CompiledRule {
                    name: r.name.get_ref().clone(),
                    count: r.count,
                    per: r.per,
                    action: r.action,
                    dry_run: r.dry_run,
                    rate: r.rate,
                    meter: meter(id, r.rate, &mut limiter),
                    ratio,
                }
            })
            .collect();
        let mut identity_overrides = HashMap::new();
        let mut domain_overrides = HashMap::new();
        for over in &config.overrides {
            let over = over.get_ref();
            let (target, map) = match (&over.identity, &over.domain) {
                (Some(id), _) => (lock_key(&config.identity, id), &mut identity_overrides),
                (None, Some(domain)) => (domain_key(domain), &mut domain_overrides),
                (None, None) => continue,
            };
            let mut compiled = CompiledOverride {
                exempt: over.exempt,
                sender_domains: over.sender_domains.iter().map(|d| domain_key(d)).collect(),
                ..Default::default()
            };
            for (name, rate) in &over.rates {
                let Some(idx) = rules.iter().position(|r| &r.name == name.get_ref()) else {
                    continue;
                };
                let rule = &config.rules[idx];
                let id = LimiterId {
                    rule: rule.name.get_ref().clone(),
                    count: rule.count,
                    per: rule.per,
                    rate: *rate,
                    burst: None,
                    variant: Some(target.clone()),
                    divisor: 1,
                };
                compiled.rates.insert(idx, (*rate, meter(id, *rate, &mut limiter)));
            }
            map.insert(target, compiled);
        }
        // Retries are told by their envelope, per host: a client retries
        // through the host that refused it (or another one, where the
        // attempt counts once more).
        // Content rules count every scanned message, whatever their action:
        // a retry of one refused with 4xx is not counted again either.
        let lock_rates = config
            .rules
            .iter()
            .filter(|r| r.action == Action::Lock || r.count.is_content())
            .map(|r| (r.rate.count.get(), r.rate.window));
        let shortest_lock_window = lock_rates.clone().map(|(_, w)| w).min();
        let retry_budget = shortest_lock_window.map(|window| {
            let hours = (window.as_secs_f64() / 3600.0).max(1.0);
            let free = (f64::from(FREE_RETRIES_PER_HOUR) * hours).ceil() as u32;
            let rate = Rate {
                count: NonZeroU32::new(free).unwrap_or(NonZeroU32::MIN),
                window,
            };
            let id = LimiterId {
                rule: RETRY_BUDGET_RULE.into(),
                count: Counted::Messages,
                per: Scope::Identity,
                rate,
                burst: None,
                variant: None,
                divisor: 1,
            };
            limiter(id, rate).local
        });
        let retries = lock_rates
            .reduce(|a, b| (a.0.max(b.0), a.1.max(b.1)))
            .and_then(|(count, window)| {
                let rate = Rate {
                    count: NonZeroU32::new(count)?,
                    window,
                };
                let id = LimiterId {
                    rule: RETRY_RULE.into(),
                    count: Counted::DistinctRecipients,
                    per: Scope::Identity,
                    rate,
                    burst: None,
                    variant: None,
                    divisor: 1,
                };
                match meter(id, rate, &mut limiter) {
                    Meter::Distinct(sets) => Some(sets),
                    Meter::Rate(_) => None,
                }
            });
        // Held messages are counted per host, never shared nor divided.
        let holds = limiter(
            LimiterId {
                rule: HOLD_RULE.into(),
                count: Counted::Messages,
                per: Scope::Identity,
                rate: config.locks.hold_limit,
                burst: None,
                variant: None,
                divisor: 1,
            },
            config.locks.hold_limit,
        )
        .local;
        *registry = next_registry;
        drop(registry);
        *distinct_registry = next_distinct;
        drop(distinct_registry);
        {
            let mut sent = lock(&counters.sent);
            if sent.capacity() != config.limits.max_tracked_messages {
                *sent = Arc::new(SentLog::new(config.limits.max_tracked_messages));
            }
        }
        let mut shared_ttl = [Duration::ZERO; 2];
        let rates = config.rules.iter().map(|r| (r.per, r.rate)).chain(
            config
                .overrides
                .iter()
                .flat_map(|o| o.get_ref().rates.iter())
                .filter_map(|(name, rate)| {
                    let rule = config.rules.iter().find(|r| r.name.get_ref() == name.get_ref())?;
                    Some((rule.per, *rate))
                }),
        );
        for (per, rate) in rates {
            let slot = rate.window.div_f64(f64::from(rate.count.get()));
            let ttl = 2 * rate.window + slot + Duration::from_secs(1);
            let i = usize::from(per == Scope::Domain);
            shared_ttl[i] = shared_ttl[i].max(ttl);
        }
        Self {
            config,
            counters,
            locks,
            rules,
            identity_overrides,
            domain_overrides,
            holds,
            shared_ttl,
            retries,
            retry_budget,
        }
    }

    /// Whether mail is outbound, and why; `None`: it passes untouched.
    /// `authenticated` is whether the session logged in with SASL.
    pub fn outbound(&self, authenticated: bool, client: Option<SocketAddr>) -> Option<Outbound> {
        let scope = &self.config.scope;
        let ip = client.map(|a| a.ip());
        let in_nets = |nets: &[Network]| ip.is_some_and(|ip| nets.iter().any(|n| n.0.contains(&ip)));
        if authenticated && scope.authenticated {
            Some(Outbound::Authenticated)
        } else if in_nets(&self.config.identity.trusted_networks) {
            Some(Outbound::TrustedRelay)
        } else if scope.local && (client.is_none() || Door::of(client) == Door::LocalSubmission) {
            Some(Outbound::LocalSubmission)
        } else if in_nets(&scope.networks) {
            Some(Outbound::Network)
        } else {
            None
        }
    }

    /// Whether one more message of a locked `identity` may be held
    /// (`locks.hold_limit`); counts nothing.
    pub fn hold_room(&self, identity: &str) -> bool {
        self.holds.peek(self.hold_key(identity), 1).is_allowed()
    }

    /// Counts one held message of `identity`; `false` if over the limit.
    pub fn take_hold(&self, identity: &str) -> bool {
        self.holds.commit(self.hold_key(identity), 1).is_allowed()
    }

    fn hold_key(&self, identity: &str) -> BucketKey {
        let cap = self.config.limits.max_tracked_identities;
        self.holds.route(self.counters.key(identity), cap)
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn enforcing(&self) -> bool {
        self.config.mode == Mode::Enforce
    }

    /// The rules that apply to `identity`; none if `uncounted`.
    pub fn plan(&self, identity: Identity, uncounted: bool) -> Plan {
        let counters = &self.counters;
        let domain = identity.domain();
        let identity_key = counters.key(&identity.value);
        let domain_key = domain.map(|d| counters.key(d));
        let stripe_key = domain_key.unwrap_or(identity_key);
        let stripe = usize::try_from(stripe_key % COMMIT_STRIPES as u64).unwrap_or(0);
        let mut entries = Vec::with_capacity(self.rules.len());
        let cap = self.config.limits.max_tracked_identities;
        if !uncounted {
            let overrides = self.overrides_of(&identity);
            'rules: for (idx, rule) in self.rules.iter().enumerate() {
                let key = match rule.per {
                    Scope::Identity => identity_key,
                    Scope::Domain => match domain_key {
                        Some(k) => k,
                        None => continue,
                    },
                };
                let mut chosen = (rule.rate, &rule.meter);
                for over in overrides.iter().flatten() {
                    if over.exempt {
                        continue 'rules;
                    }
                    if let Some((rate, meter)) = over.rates.get(&idx) {
                        chosen = (*rate, meter);
                        break;
                    }
                }
                let (rate, meter) = chosen;
                entries.push(PlanEntry {
                    rule: idx,
                    role: Role::Limit {
                        // Content rules count every scanned message, as
                        // lock rules count attempts: the verdict comes at
                        // the end, whether the message is then refused or not.
                        counts_attempts: (rule.action == Action::Lock && rule.count != Counted::Bounces)
                            || rule.count.is_content(),
                    },
                    rate,
                    key: meter.route(key, cap),
                    meter: meter.clone(),
                });
                if let Some((_, tally)) = &rule.ratio {
                    entries.push(PlanEntry {
                        rule: idx,
                        role: Role::SentTally,
                        rate,
                        key: tally.local.route(key, cap),
                        meter: Meter::Rate(tally.clone()),
                    });
                }
            }
        }
        Plan {
            identity,
            entries,
            stripe,
        }
    }

    /// The identity's own override and its domain's, in that order.
    fn overrides_of(&self, identity: &Identity) -> [Option<&CompiledOverride>; 2] {
        [
            self.identity_overrides.get(&identity.value),
            identity.domain().and_then(|d| self.domain_overrides.get(d)),
        ]
    }

    fn trip(&self, plan: &Plan, entry: &PlanEntry, answer: OpAnswer, requested: u32) -> Option<Trip> {
        if entry.role == Role::SentTally {
            return None;
        }
        let retry_in = match answer.outcome {
            Outcome::Allowed { .. } => return None,
            Outcome::Denied { retry_in } => Some(retry_in),
            Outcome::Never => None,
        };
        let rule = &self.rules[entry.rule];
        let overflow = entry.key == OVERFLOW_KEY;
        let key = if overflow {
            "overflow".to_string()
        } else {
            match rule.per {
                Scope::Identity => plan.identity.value.clone(),
                Scope::Domain => plan.identity.domain().unwrap_or_default().to_string(),
            }
        };
        Some(Trip {
            rule: rule.name.clone(),
            // The overflow bucket counts every newcomer past the identity
            // cap together: evidence against all of them, not against the
            // one whose message happened to fill it. Throttle, never lock.
            action: if overflow && rule.action == Action::Lock {
                Action::Tempfail
            } else {
                rule.action
            },
            counted: rule.count,
            scope: rule.per,
            key,
            rate: entry.rate,
            usage: answer.usage,
            retry_in,
            requested,
            dry_run: rule.dry_run,
        })
    }

    /// What `demand` asks of the rate bucket of `entry`, at a decision point
    /// before the end of the message (`commit` false) or at its end.
    fn weight(&self, entry: &PlanEntry, demand: &Demand<'_>, kind: OpKind) -> u32 {
        if entry.role == Role::SentTally {
            // Counted with the message; asked (for nothing) beside a bounce
            // rule, whose ratio needs it.
            return match kind {
                OpKind::Commit { .. } => demand.recipients,
                _ => 0,
            };
        }
        match self.rules[entry.rule].count {
            Counted::Messages => demand.messages,
            Counted::Recipients => demand.recipients,
            Counted::ForeignSenders => u32::from(demand.foreign),
            Counted::Spam => u32::from(demand.content.spam),
            Counted::Phishing => u32::from(demand.content.phishing),
            Counted::Virus => u32::from(demand.content.virus),
            // A bounce rule is counted by the MTA's bounces only
            // (`Policy::charge_bounces`); a message asks whether its
            // identity is over the rule.
            Counted::Bounces => u32::from(kind == OpKind::Peek && demand.messages > 0),
            Counted::DistinctRecipients | Counted::DistinctRecipientDomains | Counted::DistinctClientAddresses => 0,
        }
    }

    /// The values `demand` uses in the sets of a distinct rule.
    fn values(&self, entry: &PlanEntry, demand: &Demand<'_>) -> Vec<u64> {
        match self.rules[entry.rule].count {
            Counted::DistinctRecipients => demand.recipient_values.iter().map(|r| r.address).collect(),
            Counted::DistinctRecipientDomains => demand.recipient_values.iter().map(|r| r.domain).collect(),
            Counted::DistinctClientAddresses => demand.client.filter(|_| demand.messages > 0).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// Whether exceeding the rule of `entry` refuses the message.
    fn blocks(&self, entry: &PlanEntry) -> bool {
        let rule = &self.rules[entry.rule];
        entry.role != Role::SentTally && self.enforcing() && rule.action > Action::Log && !rule.dry_run
    }

    /// What recipient `rcpt` (as in RCPT TO) adds to the distinct sets.
    pub fn recipient_value(&self, rcpt: &[u8]) -> RecipientValue {
        let text = String::from_utf8_lossy(rcpt);
        let address = text.trim().trim_start_matches('<').trim_end_matches('>');
        // `folded_key` folds ASCII; only other letters need a lowercased copy.
        let address: std::borrow::Cow<'_, str> = if address.is_ascii() {
            address.into()
        } else {
            address.to_lowercase().into()
        };
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        RecipientValue {
            address: self.counters.folded_key(&[b"r", address.as_bytes()]),
            domain: self.counters.folded_key(&[b"d", domain.as_bytes()]),
        }
    }

    /// What a message from `client` adds to the sets of client addresses;
    /// `None` (and nothing computed) while no rule counts them.
    pub fn client_value(&self, client: std::net::IpAddr) -> Option<u64> {
        if !self.rules.iter().any(|r| r.count == Counted::DistinctClientAddresses) {
            return None;
        }
        let key = identity::client_key(client, self.config.identity.client_ipv6_prefix);
        Some(self.counters.key(&format!("c:{key}")))
    }

    /// Whether messages are to be scanned: a scanner is configured and a
    /// rule counts its verdicts.
    pub fn scans(&self) -> bool {
        self.config.scanner.is_enabled() && self.rules.iter().any(|r| r.count.is_content())
    }

    /// Whether a message of `plan`'s identity is to be scanned: some content
    /// rule applies to it (none does to an exempt identity).
    pub fn scans_for(&self, plan: &Plan) -> bool {
        self.config.scanner.is_enabled()
            && plan
                .entries
                .iter()
                .any(|e| matches!(e.role, Role::Limit { .. }) && self.rules[e.rule].count.is_content())
    }

    /// The content rules asked at the end of a scanned message: its verdict
    /// is counted (`count`), whether the message is then accepted or
    /// refused, or, for a client's retry of a message refused with 4xx,
    /// only the throttles are asked whether one more would exceed them,
    /// counting nothing (the lock rules are not asked).
    /// Returns the rules exceeded.
    pub async fn check_content(&self, plans: &[&Plan], content: content::Content, count: bool) -> Vec<Trip> {
        let demand = Demand {
            content,
            ..Demand::default()
        };
        let kind = if count { OpKind::Count } else { OpKind::Peek };
        let ops: Vec<Op<'_>> = plans
            .iter()
            .flat_map(|p| {
                p.entries
                    .iter()
                    .filter(|e| matches!(e.role, Role::Limit { .. }) && self.rules[e.rule].count.is_content())
                    // A retry is no new attempt: the lock rules are not
                    // asked, as at every other stage.
                    .filter(|e| count || self.rules[e.rule].action != Action::Lock)
                    .map(move |e| (*p, e))
            })
            .map(|(p, e)| self.op(p, e, &demand, kind))
            .filter(|op| op.n > 0)
            .collect();
        let answers = self.apply(&ops, false).await;
        self.trips(&ops, &answers)
    }

    /// Whether any rule counts messages sent as a foreign domain (so the
    /// `From:` header is needed).
    pub fn counts_foreign_senders(&self) -> bool {
        self.rules.iter().any(|r| r.count == Counted::ForeignSenders)
    }

    /// A transaction's envelope as a client's retry repeats it: the
    /// envelope sender and the recipients in order (`rcpts` is the hash of
    /// the recipients so far; start with 0), ASCII case folded.
    pub fn envelope_value(&self, envelope_from: &[u8], rcpts: u64, rcpt: &[u8]) -> u64 {
        self.counters
            .folded_key(&[b"e", envelope_from, &rcpts.to_le_bytes(), rcpt])
    }

    /// Whether a transaction of `plan`'s identity with this envelope (see
    /// [`Policy::envelope_value`]) was refused with 4xx within the longest
    /// lock window: then it is a client's retry of the same message (a
    /// customer's MTA working off its queue), not a new attempt, and lock
    /// rules do not count it again. A new message, or the same one to other
    /// recipients, is a new envelope. The memory is per host, as large as
    /// the largest lock rule's count per identity, 8 bytes an envelope.
    ///
    /// Free only while the envelope is retried at a pace an MTA's queue
    /// has: [`FREE_RETRIES_PER_HOUR`] in the shortest lock window (and as
    /// many per hour of it, if it is longer than an hour);
    /// beyond, a retry counts as a new attempt again, so a bot that resends
    /// one envelope as fast as it is told 4xx is locked all the same.
    pub fn is_retry(&self, plan: &Plan, envelope: u64) -> bool {
        let (Some(retries), Some(budget)) = (&self.retries, &self.retry_budget) else {
            return false;
        };
        let key = self.counters.key(&plan.identity.value);
        if !retries.contains(key, envelope) {
            return false;
        }
        let cap = self.config.limits.max_tracked_identities;
        let per_envelope = bucket_key(key ^ envelope.rotate_left(17));
        budget.commit(budget.route(per_envelope, cap), 1).is_allowed()
    }

    /// One recipient of an envelope sender as a retry presents it again
    /// (alone or with others): the key of [`Policy::is_retry`] for the
    /// recipient's own attempt.
    pub fn recipient_retry_value(&self, envelope_from: &[u8], rcpt: &[u8]) -> u64 {
        self.counters.folded_key(&[b"t", envelope_from, rcpt])
    }

    /// Whether retries are told apart from new attempts: only while a lock
    /// rule exists (nothing else counts attempts). Without, the envelope and
    /// retry keys need not be computed.
    pub fn remembers_retries(&self) -> bool {
        self.retries.is_some()
    }

    /// Remembers that transactions (or recipients) of `plan`'s identity with
    /// these envelopes were refused with 4xx (see [`Policy::is_retry`]).
    pub fn remember_deferred(&self, plan: &Plan, envelopes: &[u64]) {
        if let Some(retries) = &self.retries {
            let cap = self.config.limits.max_tracked_identities;
            let key = retries.route(self.counters.key(&plan.identity.value), cap);
            retries.commit(key, envelopes);
        }
    }

    /// Whether any rule counts distinct recipients or recipient domains.
    pub fn counts_distinct_recipients(&self) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r.count, Counted::DistinctRecipients | Counted::DistinctRecipientDomains))
    }

    /// Remembers who sent the accepted message `queue_id`, while bounce
    /// rules exist (see [`SentLog`]).
    pub fn record_sent(&self, queue_id: &str, identity: &Identity) {
        if self.counts_bounces() {
            let sent = lock(&self.counters.sent).clone();
            sent.record(queue_id, identity, self.counters.clock.monotonic_nanos());
        }
    }

    /// Who sent the message `queue_id`, if this milter accepted it lately.
    pub fn sender_of(&self, queue_id: &str) -> Option<Identity> {
        let sent = lock(&self.counters.sent).clone();
        sent.sender(queue_id, self.counters.clock.monotonic_nanos())
    }

    /// Whether Postfix stamps local submissions (the pickup stamp of
    /// docs/postfix.md), which the `local-user` and `php-script` sources
    /// need: only then is the MTA's own null-sender mail told from a local
    /// user's.
    pub fn local_door_stamped(&self) -> bool {
        self.config
            .identity
            .sources
            .get_ref()
            .iter()
            .any(|s| matches!(s, IdentitySource::LocalUser | IdentitySource::PhpScript))
    }

    /// Whether null-sender mail of `identity` goes uncounted: where the
    /// MTA's own bounces come in (the local door) and nothing tells them
    /// from a local user's (no pickup stamp), when they are identified by
    /// nothing better than the client address, unless `count_bounces`.
    pub fn bounce_uncounted(&self, identity: &Identity, null_sender: bool, door: Door) -> bool {
        null_sender
            && !self.config.limits.count_bounces
            && door == Door::LocalSubmission
            && !self.local_door_stamped()
            && identity.source == IdentitySource::ClientAddress
    }

    /// Whether any rule counts bounces (so the MTA's bounces are read).
    pub fn counts_bounces(&self) -> bool {
        self.rules.iter().any(|r| r.count == Counted::Bounces)
    }

    /// Whether a message of `identity` with envelope sender `envelope_from`
    /// and `From:` domains `from_domains` is sent as a domain the identity
    /// may not use: one other than its own (or a subdomain of it) and the
    /// `sender_domains` of its overrides. An identity without a domain (a
    /// client address, a local user) has no foreign domains; nor does the
    /// null sender.
    pub fn is_foreign_sender(&self, identity: &Identity, envelope_from: &[u8], from_domains: &[String]) -> bool {
        if !self.counts_foreign_senders() {
            return false;
        }
        let Some(own) = identity.domain() else {
            return false;
        };
        let extra: Vec<&str> = self
            .overrides_of(identity)
            .iter()
            .flatten()
            .flat_map(|o| o.sender_domains.iter().map(String::as_str))
            .collect();
        if extra.contains(&"*") {
            return false;
        }
        let allowed = |domain: &str| {
            std::iter::once(own)
                .chain(extra.iter().copied())
                .any(|a| domain == a || domain.strip_suffix(a).is_some_and(|head| head.ends_with('.')))
        };
        let envelope = (!identity::is_null_sender(envelope_from))
            .then(|| crate::config::address::normalise_address(&self.config.identity, envelope_from).ok())
            .flatten()
            .and_then(|a| a.rsplit_once('@').map(|(_, d)| d.to_string()));
        envelope.iter().chain(from_domains).any(|d| !allowed(d))
    }

    /// One decision point before the end of the message: counts an attempt
    /// of `attempt` against the lock rules, whether the mail is then
    /// accepted or refused, and asks whether `peek` more would exceed a rule
    /// counting accepted mail (counting nothing there). Returns the rules
    /// exceeded.
    ///
    /// Throttling rules count only accepted mail, so a throttled user's
    /// retries never eat their quota. Lock rules measure what an identity
    /// tries to send: a hijacked account keeps pushing into the throttle at
    /// a rate no person retries at, and that demand is what locks it. This is
    /// what makes "throttle at N, lock at a multiple of N" work: accepted
    /// mail alone can never exceed the throttle.
    pub async fn check(&self, plans: &[&Plan], attempt: &Demand<'_>, peek: &Demand<'_>) -> Vec<Trip> {
        let mut ops = Vec::new();
        for plan in plans {
            for e in &plan.entries {
                let counts_attempts = matches!(e.role, Role::Limit { counts_attempts: true });
                let (demand, kind) = if counts_attempts {
                    (attempt, OpKind::Count)
                } else {
                    (peek, OpKind::Peek)
                };
                let op = self.op(plan, e, demand, kind);
                // A tally is asked for nothing, beside its bounce rule only.
                let wanted = match e.role {
                    Role::SentTally => peek.messages > 0,
                    Role::Limit { .. } => op.n > 0 || !op.values.is_empty(),
                };
                if wanted {
                    ops.push(op);
                }
            }
        }
        let answers = self.apply(&ops, false).await;
        self.trips(&ops, &answers)
    }

    fn op<'p>(&self, plan: &'p Plan, entry: &'p PlanEntry, demand: &Demand<'_>, kind: OpKind) -> Op<'p> {
        match entry.meter {
            Meter::Rate(_) => Op {
                plan,
                entry,
                n: self.weight(entry, demand, kind),
                values: Vec::new(),
                kind,
            },
            Meter::Distinct(_) => {
                let values = self.values(entry, demand);
                Op {
                    plan,
                    entry,
                    n: u32::try_from(values.len()).unwrap_or(u32::MAX),
                    values,
                    kind,
                }
            }
        }
    }

    /// Counts one accepted message (`demand`: one message, its recipients,
    /// whether it is sent as a foreign domain) against the rules counting
    /// accepted mail, under every identity it is counted under (a header
    /// identity and the login that stamped it), unless one that refuses
    /// would be exceeded: then nothing is counted and the trips are
    /// returned. Trips of `log` rules (and every trip in dry-run mode) do
    /// not stop the count; the rules that still fit count the message.
    pub async fn commit_all(&self, plans: &[&Plan], demand: &Demand<'_>) -> Vec<Trip> {
        let ops: Vec<Op<'_>> = plans
            .iter()
            .flat_map(|p| {
                p.entries
                    .iter()
                    .filter(|e| !matches!(e.role, Role::Limit { counts_attempts: true }))
                    .map(move |e| (*p, e))
            })
            .map(|(p, e)| self.op(p, e, demand, OpKind::Commit { blocks: self.blocks(e) }))
            .filter(|op| op.n > 0)
            .collect();
        let answers = self.apply(&ops, true).await;
        self.trips(&ops, &answers)
    }

    /// Answers every operation of one decision point: the rate buckets on
    /// the shared store if there is one and it answers, else in memory; the
    /// distinct sets in memory. With `commit`, nothing is counted if an
    /// operation that blocks does not fit.
    async fn apply(&self, ops: &[Op<'_>], commit: bool) -> Vec<OpAnswer> {
        let blocked = |answers: &[OpAnswer]| {
            ops.iter()
                .zip(answers)
                .any(|(op, a)| op.kind == (OpKind::Commit { blocks: true }) && !a.outcome.is_allowed())
        };
        // The sets first, as a peek when committing: a set that blocks
        // stops the whole commit before anything is counted.
        let distinct = |op: &Op<'_>, kind: OpKind| -> Option<OpAnswer> {
            let Meter::Distinct(sets) = &op.entry.meter else {
                return None;
            };
            let outcome = match kind {
                OpKind::Peek | OpKind::Commit { .. } => sets.peek(op.entry.key, &op.values),
                OpKind::Count => sets.commit(op.entry.key, &op.values),
            };
            Some(OpAnswer {
                outcome,
                usage: sets.usage(op.entry.key),
            })
        };
        let set_answers: Vec<Option<OpAnswer>> = ops.iter().map(|op| distinct(op, op.kind)).collect();
        let sets_block = ops
            .iter()
            .zip(&set_answers)
            .any(|(op, a)| op.kind == (OpKind::Commit { blocks: true }) && a.is_some_and(|a| !a.outcome.is_allowed()));
        let rate_ops: Vec<&Op<'_>> = ops
            .iter()
            .filter(|op| matches!(op.entry.meter, Meter::Rate(_)))
            .collect();
        let rate_answers = if commit && sets_block {
            // Refused: say where each rate bucket stands, count nothing.
            rate_ops.iter().map(|op| self.local_answer(op, OpKind::Peek)).collect()
        } else if let Some(answers) = self.shared_apply(&rate_ops).await {
            answers
        } else if commit {
            // Stripes taken in order, so two messages cannot wait on each other.
            let mut stripes: Vec<usize> = rate_ops.iter().map(|op| op.plan.stripe).collect();
            stripes.sort_unstable();
            stripes.dedup();
            let _serial: Vec<_> = stripes.iter().map(|&i| lock(&self.counters.stripes[i])).collect();
            let peeked: Vec<OpAnswer> = rate_ops.iter().map(|op| self.local_answer(op, OpKind::Peek)).collect();
            let kinds: Vec<OpKind> = rate_ops.iter().map(|op| op.kind).collect();
            let stop = kinds
                .iter()
                .zip(&peeked)
                .any(|(k, a)| *k == (OpKind::Commit { blocks: true }) && !a.outcome.is_allowed());
            if !stop {
                for op in &rate_ops {
                    self.local_answer(op, OpKind::Count);
                }
            }
            peeked
        } else {
            rate_ops.iter().map(|op| self.local_answer(op, op.kind)).collect()
        };
        let mut rate_answers = rate_answers.into_iter();
        let answers: Vec<OpAnswer> = set_answers
            .into_iter()
            .map(|a| {
                a.or_else(|| rate_answers.next()).unwrap_or(OpAnswer {
                    outcome: Outcome::Allowed { remaining: 0 },
                    usage: Usage {
                        used: 0,
                        limit: 0,
                        reset_in: Duration::ZERO,
                    },
                })
            })
            .collect();
        if commit && !sets_block && !blocked(&answers) {
            for op in ops {
                if let Meter::Distinct(sets) = &op.entry.meter {
                    sets.commit(op.entry.key, &op.values);
                }
            }
        }
        answers
    }

    /// One rate operation on the in-memory buckets; `Count` commits.
    fn local_answer(&self, op: &Op<'_>, kind: OpKind) -> OpAnswer {
        let Meter::Rate(counter) = &op.entry.meter else {
            return OpAnswer {
                outcome: Outcome::Allowed { remaining: 0 },
                usage: op.entry.meter.usage(op.entry.key),
            };
        };
        let local = &counter.local;
        let outcome = match kind {
            OpKind::Peek | OpKind::Commit { .. } => local.peek(op.entry.key, op.n),
            OpKind::Count => local.commit(op.entry.key, op.n),
        };
        OpAnswer {
            outcome,
            usage: local.usage(op.entry.key),
        }
    }

    fn trips(&self, ops: &[Op<'_>], answers: &[OpAnswer]) -> Vec<Trip> {
        ops.iter()
            .zip(answers)
            .filter_map(|(op, a)| {
                let trip = self.trip(op.plan, op.entry, *a, op.n)?;
                self.ratio_reached(op, a, ops, answers).then_some(trip)
            })
            .collect()
    }

    /// For a bounce rule with `min_ratio`: whether its bounces are at least
    /// that share of the recipients accepted in the window (its tally is
    /// among the same operations). Any other rule: true.
    fn ratio_reached(&self, op: &Op<'_>, answer: &OpAnswer, ops: &[Op<'_>], answers: &[OpAnswer]) -> bool {
        let Some((ratio, _)) = &self.rules[op.entry.rule].ratio else {
            return true;
        };
        let sent = ops.iter().zip(answers).find(|(o, _)| {
            o.entry.role == Role::SentTally && o.entry.rule == op.entry.rule && std::ptr::eq(o.plan, op.plan)
        });
        let sent = sent.map_or(0, |(_, a)| a.usage.used);
        ratio.reached(answer.usage.used, sent)
    }

    /// Charges a bounce to the identity that sent the message it reports:
    /// its failed recipients count against the bounce rules (all of them,
    /// so that a full rule stays full until its window moves on). Returns
    /// the rules now exceeded, ratio included: lock rules lock at once; the
    /// others refuse the identity's next messages while it stays over.
    pub async fn charge_bounces(&self, plan: &Plan, report: &BounceReport) -> Vec<Trip> {
        let mut ops: Vec<Op<'_>> = Vec::new();
        for e in &plan.entries {
            let bounces = self.rules[e.rule].count == Counted::Bounces;
            match e.role {
                Role::Limit { .. } if bounces => ops.push(Op {
                    plan,
                    entry: e,
                    n: report.failed,
                    values: Vec::new(),
                    kind: OpKind::Count,
                }),
                Role::SentTally => ops.push(Op {
                    plan,
                    entry: e,
                    n: 0,
                    values: Vec::new(),
                    kind: OpKind::Peek,
                }),
                Role::Limit { .. } => {}
            }
        }
        if ops.is_empty() {
            return Vec::new();
        }
        let mut answers = self.apply(&ops, false).await;
        // What did not fit fills the rule up to its count.
        let fill: Vec<(usize, Op<'_>)> = ops
            .iter()
            .zip(&answers)
            .enumerate()
            .filter(|(_, (op, a))| op.kind == OpKind::Count && !a.outcome.is_allowed())
            .filter_map(|(i, (op, a))| {
                let room = a.usage.limit.saturating_sub(a.usage.used).min(op.n);
                (room > 0).then(|| {
                    (
                        i,
                        Op {
                            plan,
                            entry: op.entry,
                            n: room,
                            values: Vec::new(),
                            kind: OpKind::Count,
                        },
                    )
                })
            })
            .collect();
        if !fill.is_empty() {
            let fill_ops: Vec<Op<'_>> = fill.iter().map(|(_, op)| op.clone()).collect();
            self.apply(&fill_ops, false).await;
            for (i, op) in &fill {
                answers[*i].usage.used = answers[*i].usage.used.saturating_add(op.n);
            }
        }
        self.trips(&ops, &answers)
    }

    /// Asks the shared counters, if there are any and they answer.
    async fn shared_apply(&self, ops: &[&Op<'_>]) -> Option<Vec<OpAnswer>> {
        let shared = self.counters.shared.as_ref()?;
        if ops.is_empty() {
            return Some(Vec::new());
        }
        if !shared.available() {
            return None;
        }
        let ops: Vec<SharedOp> = ops.iter().filter_map(|op| self.shared_op(op)).collect();
        match shared.apply(&ops).await {
            Ok(answers) if answers.len() == ops.len() => Some(answers),
            // The store logs and counts its failures; here mail goes on
            // with the local counters.
            Ok(_) | Err(_) => None,
        }
    }

    fn shared_op(&self, op: &Op<'_>) -> Option<SharedOp> {
        let Meter::Rate(counter) = &op.entry.meter else {
            return None;
        };
        let identity = &op.plan.identity;
        let domain = self.rules[op.entry.rule].per == Scope::Domain;
        let subject = if domain {
            identity.domain().unwrap_or_default()
        } else {
            &identity.value
        };
        Some(SharedOp {
            subject: subject.to_string(),
            domain,
            group: shared_group(identity).to_string(),
            counter: counter.shared_name.to_string(),
            limit: counter.limit,
            n: op.n,
            kind: op.kind,
            ttl: self.shared_ttl[usize::from(domain)],
        })
    }

    /// The lock in force for an identity.
    pub fn lock_of(&self, identity: &str) -> Option<Arc<LockEntry>> {
        self.locks.lookup(identity, self.counters.clock.wall_now())
    }

    /// The lock in force for a message: the identity's own lock (exact, or
    /// its domain's), else a lock of the client's network.
    pub fn lock_of_message(&self, identity: &str, client: Option<std::net::IpAddr>) -> Option<Arc<LockEntry>> {
        let now = self.counters.clock.wall_now();
        self.locks
            .lookup(identity, now)
            .or_else(|| client.and_then(|ip| self.locks.lookup_client(ip, now)))
    }

    /// A ticket for the lock of `identity` if it is not on disk yet (see
    /// [`LockStore::durability`]): a reply that enforces the lock waits for it.
    pub fn lock_durability(&self, identity: &str) -> Option<Ticket> {
        self.locks.durability(identity)
    }

    /// Locks an identity because of `trip` (enforce mode only; in dry-run
    /// nothing is locked and `None` is returned). The lock in force is
    /// returned, with `fresh` false when a parallel session (or an admin)
    /// locked the identity first: the caller reports a fresh lock (log,
    /// notification), the policy only decides and records it.
    pub fn auto_lock(&self, identity: &Identity, trip: &Trip, queue_id: &str) -> Option<AutoLock> {
        if !self.enforcing() {
            return None;
        }
        let now = self.counters.clock.wall_now();
        let entry = LockEntry {
            identity: identity.value.clone(),
            source: LockSource::Auto,
            locked_at: Timestamp(now),
            reason: format!(
                "rule \"{}\" exceeded: {}/{} {} per {} in {} (identity from {}{})",
                trip.rule,
                trip.usage.used,
                trip.usage.limit,
                trip.counted,
                trip.scope,
                format_duration(trip.rate.window),
                identity.source,
                // Postfix assigns the queue id only after the first valid
                // RCPT, so a lock set at MAIL has none.
                if queue_id == "NONE" {
                    String::new()
                } else {
                    format!(", queue id {queue_id}")
                },
            ),
            rule: Some(trip.rule.clone()),
            previous_locks: 0,
            expires_at: self.config.locks.auto_lock_duration.map(|d| Timestamp(now + d.0)),
            note: None,
            history: Vec::new(),
        };
        let fresh = self.locks.lock(entry, now);
        self.lock_of(&identity.value).map(|entry| AutoLock { entry, fresh })
    }

    /// Whether a locked identity may still write to `recipient` (the
    /// postmaster and abuse addresses by default).
    pub fn may_write_while_locked(&self, identity: &Identity, recipient: &[u8]) -> bool {
        self.support_address_match(recipient, |domain| {
            identity.domain() == Some(domain)
                || self
                    .config
                    .locks
                    .local_domains
                    .iter()
                    .any(|l| l.eq_ignore_ascii_case(domain))
        })
    }

    /// Whether `recipient` could be a support address for some identity
    /// (its domain not yet known): used while the identity is pending, so
    /// that only such recipients need to be remembered.
    pub fn may_be_support_address(&self, recipient: &[u8]) -> bool {
        self.support_address_match(recipient, |_| true)
    }

    /// Matches `recipient` against `allow_recipients`; a bare local part
    /// matches at any domain `domain_ok` accepts.
    fn support_address_match(&self, recipient: &[u8], domain_ok: impl Fn(&str) -> bool) -> bool {
        let Ok(rcpt) = std::str::from_utf8(recipient) else {
            return false;
        };
        let rcpt = rcpt.trim().trim_start_matches('<').trim_end_matches('>').to_lowercase();
        let (local, domain) = match rcpt.rsplit_once('@') {
            Some((l, d)) => (l, Some(d)),
            None => (rcpt.as_str(), None),
        };
        self.config.locks.allow_recipients.iter().any(|allowed| {
            let allowed = allowed.to_lowercase();
            if allowed.contains('@') {
                return allowed == rcpt;
            }
            allowed == local && domain.is_none_or(&domain_ok)
        })
    }

    /// Every rule's state for one identity, for `explain`: from the
    /// fleet's counters when they are shared and answer.
    pub async fn explain(&self, identity: Identity) -> Vec<RuleState> {
        let plan = self.plan(identity, false);
        let ops: Vec<Op<'_>> = plan
            .entries
            .iter()
            .map(|entry| Op {
                plan: &plan,
                entry,
                n: 0,
                values: Vec::new(),
                kind: OpKind::Peek,
            })
            .collect();
        let rate_ops: Vec<&Op<'_>> = ops
            .iter()
            .filter(|op| matches!(op.entry.meter, Meter::Rate(_)))
            .collect();
        let mut shared = self.shared_apply(&rate_ops).await.map(Vec::into_iter);
        let usages: Vec<Usage> = plan
            .entries
            .iter()
            .map(|e| match (&e.meter, shared.as_mut()) {
                (Meter::Rate(_), Some(answers)) => answers.next().map_or_else(|| e.meter.usage(e.key), |a| a.usage),
                _ => e.meter.usage(e.key),
            })
            .collect();
        self.rules
            .iter()
            .enumerate()
            .map(|(idx, rule)| {
                let entry = plan
                    .entries
                    .iter()
                    .position(|e| e.rule == idx && matches!(e.role, Role::Limit { .. }));
                let sent = plan
                    .entries
                    .iter()
                    .position(|e| e.rule == idx && e.role == Role::SentTally)
                    .map(|i| usages[i].used);
                RuleState {
                    rule: rule.name.clone(),
                    counted: rule.count,
                    scope: rule.per,
                    action: rule.action,
                    rate: entry.map_or(rule.rate, |i| plan.entries[i].rate),
                    usage: entry.map(|i| usages[i]),
                    min_ratio: rule.ratio.as_ref().map(|(r, _)| *r),
                    sent,
                }
            })
            .collect()
    }
}

/// The group of an identity's buckets in a shared store (see
/// [`SharedOp::group`]): its domain, or the identity when it has none.
pub fn shared_group(identity: &Identity) -> &str {
    shared_group_of(&identity.value)
}

/// [`shared_group`] of a normalised identity known only by its value (an
/// unlock): the part after the last `@`, or the whole value. One definition
/// for both, so that an unlock clears the very keys the decisions counted
/// in. (A client address has no `@`: its group is itself, as
/// [`Identity::domain`] has it.)
pub fn shared_group_of(identity: &str) -> &str {
    match identity.rsplit_once('@') {
        Some((_, domain)) if !domain.is_empty() => domain,
        _ => identity,
    }
}

/// The most severe action among the trips that are enforced (not of a
/// `dry_run` rule).
pub fn most_severe(trips: &[Trip]) -> Option<&Trip> {
    trips.iter().filter(|t| !t.dry_run).max_by_key(|t| t.action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::block_on;

    /// The decisions of the milter's stages, one question at a time.
    impl Policy {
        pub(crate) fn peek(&self, plan: &Plan, messages: u32, recipients: u32) -> Vec<Trip> {
            block_on(self.check(&[plan], &Demand::default(), &Demand::volume(messages, recipients)))
        }

        pub(crate) fn attempt(&self, plan: &Plan, messages: u32, recipients: u32) -> Vec<Trip> {
            block_on(self.check(&[plan], &Demand::volume(messages, recipients), &Demand::default()))
        }

        pub(crate) fn commit(&self, plan: &Plan, recipients: u32) -> Vec<Trip> {
            block_on(self.commit_all(&[plan], &Demand::volume(1, recipients)))
        }
    }
    use crate::locks::FileLocks;
    use std::path::Path;

    struct Fixture {
        policy: Policy,
        clock: Clock,
        _dir: tempfile::TempDir,
    }

    fn fixture(extra: &str) -> Fixture {
        fixture_with_locks(extra, "")
    }

    fn fixture_with_locks(extra: &str, locks_extra: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let lockfile = dir.path().join("locks.toml");
        let text = format!("{extra}\n[locks]\nfile = \"{}\"\n{locks_extra}", lockfile.display());
        let config = Arc::new(Config::parse(&text, Path::new("t.toml")).unwrap());
        let clock = Clock::manual();
        let locks = FileLocks::open(&lockfile, Arc::new(|s: &str| Ok(s.to_lowercase()))).unwrap();
        let policy = Policy::new(config, Counters::new(clock.clone()), locks);
        Fixture {
            policy,
            clock,
            _dir: dir,
        }
    }

    fn id(v: &str) -> Identity {
        Identity {
            value: v.into(),
            source: IdentitySource::Auth,
        }
    }

    const ESCALATION: &str = r#"
[[rule]]
name = "per-minute"
rate = "3/1m"
action = "tempfail"

[[rule]]
name = "lock-10m"
rate = "6/10m"
action = "lock"

[[rule]]
name = "rcpts"
count = "recipients"
rate = "10/1h"
action = "reject"
"#;

    #[test]
    fn messages_are_counted_once_and_only_when_accepted() {
        let f = fixture(ESCALATION);
        let plan = f.policy.plan(id("a@x.org"), false);
        for _ in 0..10 {
            assert!(f.policy.peek(&plan, 1, 1).is_empty(), "peeking counts nothing");
        }
        for _ in 0..3 {
            assert!(f.policy.commit(&plan, 1).is_empty());
        }
        let trips = f.policy.peek(&plan, 1, 0);
        assert_eq!(trips.len(), 1);
        assert_eq!(trips[0].rule, "per-minute");
        assert_eq!(trips[0].action, Action::Tempfail);
        assert_eq!(trips[0].usage.used, 3);
        // 3 in this minute already: the next fits when the minute is over.
        assert_eq!(trips[0].retry_in, Some(Duration::from_secs(60)));
        // A refused commit counts nothing in any rule.
        let refused = f.policy.commit(&plan, 1);
        assert_eq!(refused.len(), 1);
        let state = block_on(f.policy.explain(id("a@x.org")));
        assert_eq!(state[0].usage.unwrap().used, 3);
        assert_eq!(state[2].usage.unwrap().used, 3, "recipients of accepted messages");
        assert_eq!(
            state[1].usage.unwrap().used,
            0,
            "lock rules count attempts, not commits"
        );
    }

    /// Plays one SMTP transaction as the session does: the attempt is counted
    /// against lock rules, then the accepted-mail rules are checked and, if
    /// nothing refuses, the message is counted.
    fn offer(p: &Policy, plan: &Plan) -> Option<Action> {
        let mut trips = p.attempt(plan, 1, 0);
        trips.extend(p.peek(plan, 1, 0));
        if trips.is_empty() {
            trips = p.commit(plan, 1);
        }
        most_severe(&trips).map(|t| t.action)
    }

    #[test]
    fn escalation_tempfails_then_locks() {
        let f = fixture(ESCALATION);
        let plan = f.policy.plan(id("a@x.org"), false);
        let outcomes: Vec<_> = (0..8).map(|_| offer(&f.policy, &plan)).collect();
        use Action::*;
        // 3 accepted, then throttled; the 7th attempt exceeds the 6/10m lock rule.
        assert_eq!(
            outcomes,
            [
                None,
                None,
                None,
                Some(Tempfail),
                Some(Tempfail),
                Some(Tempfail),
                Some(Lock),
                Some(Lock)
            ]
        );
        // Spread out, a normal sender is never throttled nor locked: one
        // message every 400 s stays under every rule (the tightest is 10
        // recipients an hour).
        let g = fixture(ESCALATION);
        let calm = g.policy.plan(id("b@x.org"), false);
        for _ in 0..50 {
            assert_eq!(offer(&g.policy, &calm), None);
            g.clock.advance(Duration::from_secs(400));
        }
        let trip = f
            .policy
            .attempt(&plan, 1, 0)
            .into_iter()
            .find(|t| t.action == Action::Lock)
            .unwrap();
        let locked = f.policy.auto_lock(&plan.identity, &trip, "QID1").unwrap();
        assert!(locked.fresh);
        // A second session tripping the same rule finds the lock in force.
        assert!(!f.policy.auto_lock(&plan.identity, &trip, "QID2").unwrap().fresh);
        let entry = locked.entry;
        assert_eq!(entry.rule.as_deref(), Some("lock-10m"));
        assert!(
            entry
                .reason
                .contains("rule \"lock-10m\" exceeded: 6/6 messages per identity in 10m"),
            "{}",
            entry.reason
        );
        assert!(entry.reason.contains("QID1"));
        assert!(f.policy.lock_of("a@x.org").is_some());
    }

    /// Issue 10, item 7: with a burst of N refilled at N per W, a sender
    /// that retried whenever told got almost 2N through in its first W.
    #[test]
    fn a_greedy_sender_gets_no_more_than_the_rate_in_its_first_window() {
        for (rate, window, count) in [("300/1h", 3600, 300), ("1000/1d", 86_400, 1000)] {
            let f = fixture(&format!(
                "[[rule]]\nname = \"r\"\nrate = \"{rate}\"\naction = \"tempfail\"\n"
            ));
            let plan = f.policy.plan(id("a@x.org"), false);
            let (mut sent, mut elapsed) = (0, Duration::ZERO);
            while elapsed < Duration::from_secs(window) {
                match f.policy.commit(&plan, 1).first() {
                    None => sent += 1,
                    Some(trip) => {
                        let wait = trip.retry_in.unwrap();
                        f.clock.advance(wait);
                        elapsed += wait;
                    }
                }
            }
            assert_eq!(sent, count, "{rate}: accepted in the first window");
        }
    }

    #[test]
    fn recipients_count_by_weight_and_a_huge_message_never_fits() {
        let f = fixture(ESCALATION);
        let plan = f.policy.plan(id("a@x.org"), false);
        assert!(f.policy.commit(&plan, 7).is_empty());
        let trips = f.policy.peek(&plan, 0, 4);
        assert_eq!(trips[0].rule, "rcpts");
        assert_eq!(trips[0].usage.used, 7);
        assert!(f.policy.peek(&plan, 0, 3).is_empty());
        let never = f.policy.peek(&plan, 0, 11);
        assert_eq!(never[0].retry_in, None);
    }

    #[test]
    fn overrides_follow_identity_then_domain_then_default() {
        let f = fixture(&format!(
            "{ESCALATION}
[[override]]
domain = \"bulk.example\"
rates = {{ per-minute = \"100/1m\" }}

[[override]]
identity = \"News@Bulk.example\"
exempt = true

[[override]]
identity = \"vip@x.org\"
rates = {{ per-minute = \"1/1m\" }}
"
        ));
        let p = &f.policy;
        let limit = |who: &str| {
            block_on(p.explain(id(who)))
                .into_iter()
                .find(|r| r.rule == "per-minute")
                .map(|r| r.usage.map(|u| u.limit))
                .unwrap()
        };
        assert_eq!(limit("a@x.org"), Some(3), "default");
        assert_eq!(limit("a@bulk.example"), Some(100), "domain override");
        assert_eq!(
            limit("news@bulk.example"),
            None,
            "identity override (exempt) beats domain"
        );
        assert_eq!(limit("vip@x.org"), Some(1), "identity override lowers");
        // Rules an identity override does not name fall back to the default.
        let lock_limit = block_on(p.explain(id("vip@x.org")))[1].usage.unwrap().limit;
        assert_eq!(lock_limit, 6);
    }

    #[test]
    fn domain_rules_count_all_identities_of_a_domain() {
        let f = fixture("[[rule]]\nname = \"domain\"\nper = \"domain\"\nrate = \"5/1h\"\naction = \"tempfail\"\n");
        for who in ["a@x.org", "b@x.org", "c@x.org", "d@x.org", "e@x.org"] {
            assert!(f.policy.commit(&f.policy.plan(id(who), false), 1).is_empty());
        }
        let trips = f.policy.peek(&f.policy.plan(id("f@x.org"), false), 1, 0);
        assert_eq!(trips[0].key, "x.org");
        assert!(f.policy.peek(&f.policy.plan(id("a@y.org"), false), 1, 0).is_empty());
        let ip = Identity {
            value: "192.0.2.1".into(),
            source: IdentitySource::ClientAddress,
        };
        assert!(f.policy.plan(ip, false).entries.is_empty(), "no domain, no domain rule");
    }

    #[test]
    fn scope_takes_outbound_mail_only() {
        let f = fixture(&format!(
            "[identity]\ntrusted_networks = [\"10.0.0.0/8\"]\n[scope]\nnetworks = [\"192.0.2.0/24\"]\n{ESCALATION}"
        ));
        let at = |a: &str| Some(a.parse::<SocketAddr>().unwrap());
        assert_eq!(
            f.policy.outbound(true, at("203.0.113.9:4711")),
            Some(Outbound::Authenticated)
        );
        assert_eq!(
            f.policy.outbound(false, at("127.0.0.1:0")),
            Some(Outbound::LocalSubmission)
        );
        assert_eq!(f.policy.outbound(false, at("[::1]:0")), Some(Outbound::LocalSubmission));
        assert_eq!(f.policy.outbound(false, None), Some(Outbound::LocalSubmission));
        assert_eq!(
            f.policy.outbound(false, at("10.1.2.3:25")),
            Some(Outbound::TrustedRelay)
        );
        assert_eq!(f.policy.outbound(false, at("192.0.2.7:4711")), Some(Outbound::Network));
        // A stranger's MTA, and a local SMTP client without a login.
        assert_eq!(f.policy.outbound(false, at("203.0.113.9:4711")), None);
        assert_eq!(f.policy.outbound(false, at("127.0.0.1:4711")), None);
        // By default programs on this host that speak SMTP without a login
        // are outbound too, whatever 127.x address they bind.
        let d = fixture(ESCALATION);
        assert_eq!(d.policy.outbound(false, at("127.0.0.1:4711")), Some(Outbound::Network));
        assert_eq!(d.policy.outbound(false, at("127.9.8.7:4711")), Some(Outbound::Network));
        assert_eq!(d.policy.outbound(false, at("[::1]:4711")), Some(Outbound::Network));
        assert_eq!(d.policy.outbound(false, at("203.0.113.9:4711")), None);
        let g = fixture(&format!(
            "[scope]\nauthenticated = false\nlocal = false\nnetworks = []\n{ESCALATION}"
        ));
        assert_eq!(g.policy.outbound(true, at("203.0.113.9:4711")), None);
        assert_eq!(g.policy.outbound(false, at("127.0.0.1:0")), None);
    }

    #[test]
    fn at_the_cap_newcomers_share_one_bucket() {
        let f = fixture(&format!("[limits]\nmax_tracked_identities = 10\n{ESCALATION}"));
        for i in 0..10 {
            assert!(
                f.policy
                    .commit(&f.policy.plan(id(&format!("u{i}@x.org")), false), 1)
                    .is_empty()
            );
        }
        // Three newcomers fill the shared bucket of the 3/1m rule ...
        for i in 10..13 {
            assert!(
                f.policy
                    .commit(&f.policy.plan(id(&format!("u{i}@x.org")), false), 1)
                    .is_empty()
            );
        }
        // ... and the fourth is throttled, whatever name it invents.
        let trips = f.policy.commit(&f.policy.plan(id("fresh-999@x.org"), false), 1);
        assert_eq!(trips[0].key, "overflow");
        // Known identities keep their own buckets.
        assert!(f.policy.commit(&f.policy.plan(id("u0@x.org"), false), 1).is_empty());
    }

    #[test]
    fn the_overflow_bucket_throttles_but_never_locks_a_newcomer() {
        let f = fixture(
            "[limits]\nmax_tracked_identities = 2\n\n[[rule]]\nname = \"lock\"\nrate = \"2/1h\"\naction = \"lock\"\n",
        );
        for who in ["a@x.org", "b@x.org"] {
            assert!(f.policy.attempt(&f.policy.plan(id(who), false), 1, 1).is_empty());
        }
        // Newcomers past the cap share one bucket; it fills up ...
        for i in 0..2 {
            let p = f.policy.plan(id(&format!("new{i}@x.org")), false);
            assert!(f.policy.attempt(&p, 1, 1).is_empty());
        }
        // ... and the next newcomer is throttled for the others' traffic,
        // not locked.
        let trips = f.policy.attempt(&f.policy.plan(id("innocent@x.org"), false), 1, 1);
        assert_eq!((trips[0].key.as_str(), trips[0].action), ("overflow", Action::Tempfail));
        // A tracked identity over its own lock limit is still locked.
        let p = f.policy.plan(id("a@x.org"), false);
        f.policy.attempt(&p, 1, 1);
        let trips = f.policy.attempt(&p, 1, 1);
        assert_eq!((trips[0].key.as_str(), trips[0].action), ("a@x.org", Action::Lock));
    }

    #[test]
    fn dry_run_counts_and_never_locks() {
        let f = fixture(&format!("mode = \"dry-run\"\n{ESCALATION}"));
        let plan = f.policy.plan(id("a@x.org"), false);
        for _ in 0..3 {
            f.policy.commit(&plan, 1);
        }
        let trips = f.policy.commit(&plan, 1);
        assert_eq!(trips[0].rule, "per-minute");
        assert!(f.policy.auto_lock(&plan.identity, &trips[0], "Q").is_none());
        assert!(f.policy.lock_of("a@x.org").is_none());
    }

    #[test]
    fn reload_keeps_counts_of_unchanged_rules_only() {
        let f = fixture(ESCALATION);
        let plan = f.policy.plan(id("a@x.org"), false);
        f.policy.commit(&plan, 2);
        let dir = tempfile::tempdir().unwrap();
        let changed = ESCALATION.replace("6/10m", "60/10m");
        let config = Arc::new(
            Config::parse(
                &format!("[locks]\nfile = \"{}/l.toml\"\n{changed}", dir.path().display()),
                Path::new("t.toml"),
            )
            .unwrap(),
        );
        let reloaded = Policy::new(config, f.policy.counters.clone(), f.policy.locks.clone());
        let state = block_on(reloaded.explain(id("a@x.org")));
        assert_eq!(state[0].usage.unwrap().used, 1, "unchanged rule keeps its count");
        assert_eq!(state[1].usage.unwrap().used, 0, "changed rule starts afresh");
        assert_eq!(state[2].usage.unwrap().used, 2);
    }

    #[test]
    fn locked_identities_may_write_to_support() {
        let f = fixture_with_locks(
            "",
            "local_domains = [\"provider.net\"]\nallow_recipients = [\"postmaster\", \"abuse\", \"help@desk.example\"]\n",
        );
        let who = id("a@x.org");
        let p = &f.policy;
        assert!(p.may_write_while_locked(&who, b"<postmaster@x.org>"));
        assert!(p.may_write_while_locked(&who, b"<Abuse@Provider.net>"));
        assert!(p.may_write_while_locked(&who, b"<postmaster>"));
        assert!(p.may_write_while_locked(&who, b"<help@desk.example>"));
        assert!(!p.may_write_while_locked(&who, b"<postmaster@victim.example>"));
        assert!(!p.may_write_while_locked(&who, b"<alice@x.org>"));
    }

    fn rcpts(p: &Policy, addresses: &[&str]) -> Vec<RecipientValue> {
        addresses.iter().map(|a| p.recipient_value(a.as_bytes())).collect()
    }

    /// One message through the stages as the session asks them: MAIL, each
    /// RCPT, end of message. Returns the most severe action, if any.
    fn send(p: &Policy, plan: &Plan, client: &str, to: &[&str], foreign: bool) -> Option<Action> {
        let client = p.client_value(client.parse().unwrap());
        let mail = Demand {
            messages: 1,
            client,
            ..Demand::default()
        };
        let trips = block_on(p.check(&[plan], &mail, &mail));
        if let Some(t) = most_severe(&trips) {
            return Some(t.action);
        }
        let mut accepted: Vec<RecipientValue> = Vec::new();
        for r in rcpts(p, to) {
            let with: Vec<_> = accepted.iter().copied().chain([r]).collect();
            let attempt = Demand {
                recipients: 1,
                recipient_values: &[r],
                ..Demand::default()
            };
            let peek = Demand {
                recipients: with.len() as u32,
                recipient_values: &with,
                ..Demand::default()
            };
            let trips = block_on(p.check(&[plan], &attempt, &peek));
            if let Some(t) = most_severe(&trips) {
                return Some(t.action);
            }
            accepted.push(r);
        }
        if foreign {
            let d = Demand {
                foreign: true,
                ..Demand::default()
            };
            if let Some(t) = most_severe(&block_on(p.check(&[plan], &d, &d))) {
                return Some(t.action);
            }
        }
        let message = Demand {
            messages: 1,
            recipients: accepted.len() as u32,
            recipient_values: &accepted,
            client,
            foreign,
            ..Demand::default()
        };
        most_severe(&block_on(p.commit_all(&[plan], &message))).map(|t| t.action)
    }

    #[test]
    fn distinct_recipient_domains_throttle_and_lock_new_domains_only() {
        let f = fixture(
            r#"
[[rule]]
name = "domains"
count = "distinct-recipient-domains"
rate = "3/1h"
action = "tempfail"

[[rule]]
name = "lock-domains"
count = "distinct-recipient-domains"
rate = "5/1h"
action = "lock"
"#,
        );
        let p = &f.policy;
        let plan = p.plan(id("a@x.org"), false);
        for _ in 0..20 {
            assert_eq!(
                send(p, &plan, "192.0.2.1", &["b@one.example", "c@ONE.example"], false),
                None
            );
        }
        assert_eq!(
            send(p, &plan, "192.0.2.1", &["x@two.example", "y@three.example"], false),
            None
        );
        assert_eq!(
            send(p, &plan, "192.0.2.1", &["z@four.example"], false),
            Some(Action::Tempfail),
            "a fourth domain in the hour"
        );
        assert_eq!(
            send(p, &plan, "192.0.2.1", &["q@one.example"], false),
            None,
            "old correspondents still flow"
        );
        // The throttle counts accepted mail; the lock rule counts every attempt.
        assert_eq!(
            send(p, &plan, "192.0.2.1", &["z@five.example"], false),
            Some(Action::Tempfail)
        );
        assert_eq!(
            send(p, &plan, "192.0.2.1", &["z@six.example"], false),
            Some(Action::Lock)
        );
        let state = block_on(p.explain(id("a@x.org")));
        assert_eq!(state[0].usage.unwrap().used, 3);
        assert_eq!(state[1].usage.unwrap().used, 5);
        f.clock.advance(Duration::from_secs(3601));
        assert_eq!(
            send(p, &plan, "192.0.2.1", &["z@seven.example"], false),
            None,
            "the window moved on"
        );
    }

    #[test]
    fn distinct_recipients_count_addresses_and_a_refused_message_counts_none() {
        let f = fixture(
            r#"
[[rule]]
name = "rcpts"
count = "distinct-recipients"
rate = "4/1d"
action = "reject"
"#,
        );
        let p = &f.policy;
        let plan = p.plan(id("a@x.org"), false);
        assert_eq!(
            send(
                p,
                &plan,
                "192.0.2.1",
                &["1@a.example", "2@a.example", "3@a.example"],
                false
            ),
            None
        );
        assert_eq!(
            send(p, &plan, "192.0.2.1", &["4@a.example", "5@a.example"], false),
            Some(Action::Reject),
            "the fifth address, at its RCPT"
        );
        assert_eq!(
            block_on(p.explain(id("a@x.org")))[0].usage.unwrap().used,
            3,
            "the refused message counted nothing"
        );
        assert_eq!(
            send(p, &plan, "192.0.2.1", &["<1@A.example>", "4@a.example"], false),
            None
        );
    }

    #[test]
    fn one_login_from_many_client_addresses_is_locked() {
        let f = fixture(
            r#"
[identity]
client_ipv6_prefix = 64

[[rule]]
name = "clients"
count = "distinct-client-addresses"
rate = "3/1h"
action = "lock"
"#,
        );
        let p = &f.policy;
        let plan = p.plan(id("a@x.org"), false);
        for client in ["192.0.2.1", "192.0.2.1", "2001:db8::1", "2001:db8::2", "198.51.100.7"] {
            assert_eq!(send(p, &plan, client, &["b@y.example"], false), None, "{client}");
        }
        assert_eq!(
            send(p, &plan, "203.0.113.9", &["b@y.example"], false),
            Some(Action::Lock)
        );
        let other = p.plan(id("b@x.org"), false);
        assert_eq!(
            send(p, &other, "203.0.113.9", &["b@y.example"], false),
            None,
            "counted per login"
        );
    }

    #[test]
    fn hashed_values_fold_case_and_client_values_need_a_rule() {
        let f = fixture(
            r#"
[[rule]]
name = "lock-messages"
rate = "5/1h"
action = "lock"
"#,
        );
        let p = &f.policy;
        // Longer than the 64-byte folding buffer, so chunks are folded too.
        let long = format!("<{}@Example.ORG>", "Abc".repeat(40));
        let from = b"<Bob@Example.org>";
        let e = |from: &[u8], rcpt: &[u8]| p.envelope_value(from, 0, rcpt);
        assert_eq!(
            e(from, long.as_bytes()),
            e(b"<bob@example.org>", long.to_ascii_lowercase().as_bytes())
        );
        assert_ne!(e(from, long.as_bytes()), e(from, long.replace("Abc", "Abd").as_bytes()));
        // The recipients so far are part of the envelope; parts do not run
        // into each other; an envelope is not a recipient's retry key.
        let first = e(from, b"<a@y.example>");
        assert_ne!(
            p.envelope_value(from, first, b"<b@y.example>"),
            e(from, b"<b@y.example>")
        );
        assert_ne!(e(b"<ab@y.example>", b"<c>"), e(b"<a", b"b@y.example><c>"));
        assert_ne!(
            e(from, b"<a@y.example>"),
            p.recipient_retry_value(from, b"<a@y.example>")
        );
        // Recipient values fold case, ASCII or not, and ignore the brackets.
        let r = |rcpt: &str| p.recipient_value(rcpt.as_bytes());
        assert_eq!(r("<Zoë@Example.ORG>"), r("zoë@example.org"));
        assert_eq!(r("<ZOË@x.example>"), r("<zoë@x.example>"));
        assert_ne!(r("<zoe@x.example>").address, r("<zoë@x.example>").address);
        assert_eq!(r("<a@X.example>").domain, r("<b@x.EXAMPLE>").domain);
        assert_ne!(r("<a@x.example>").domain, r("<a@y.example>").domain);
        // No distinct-client rule: nothing to compute.
        assert_eq!(p.client_value("192.0.2.1".parse().unwrap()), None);
    }

    #[test]
    fn content_rules_count_every_scanned_verdict_and_a_retry_only_asks() {
        let f = fixture(
            r#"
[scanner]
url = "http://127.0.0.1:11333"

[[rule]]
name = "spam-throttle"
count = "spam"
rate = "2/10m"
action = "tempfail"

[[rule]]
name = "lock-spam"
count = "spam"
rate = "3/10m"
action = "lock"

[[rule]]
name = "phishing-log"
count = "phishing"
rate = "1/1h"
action = "log"
dry_run = true

[[rule]]
name = "messages"
rate = "100/1h"
action = "tempfail"

[[override]]
identity = "newsletter@x.org"
rates = { spam-throttle = "20/10m", lock-spam = "30/10m" }

[[override]]
identity = "relay@x.org"
exempt = true
"#,
        );
        let p = &f.policy;
        assert!(p.scans());
        let alice = p.plan(id("alice@x.org"), false);
        assert!(p.scans_for(&alice));
        assert!(!p.scans_for(&p.plan(id("relay@x.org"), false)), "exempt: not scanned");
        let spam = content::Content {
            spam: true,
            ..content::Content::default()
        };
        let rules = |trips: Vec<Trip>| trips.into_iter().map(|t| t.rule).collect::<Vec<_>>();
        // Volume decisions never touch the content counts, nor ham theirs.
        for _ in 0..5 {
            assert!(p.attempt(&alice, 1, 1).is_empty());
            assert!(block_on(p.check_content(&[&alice], content::Content::default(), true)).is_empty());
        }
        assert!(block_on(p.check_content(&[&alice], spam, true)).is_empty());
        assert!(block_on(p.check_content(&[&alice], spam, true)).is_empty());
        // The third spam in ten minutes trips the throttle; refused, it is
        // counted all the same (as an attempt), so the fourth locks.
        assert_eq!(
            rules(block_on(p.check_content(&[&alice], spam, true))),
            ["spam-throttle"]
        );
        // A client's retry of the refused one only asks: still over the
        // throttle, and nothing counted.
        for _ in 0..3 {
            assert_eq!(
                rules(block_on(p.check_content(&[&alice], spam, false))),
                ["spam-throttle"]
            );
        }
        let fourth = block_on(p.check_content(&[&alice], spam, true));
        assert_eq!(most_severe(&fourth).map(|t| t.rule.as_str()), Some("lock-spam"));
        assert_eq!(most_severe(&fourth).map(|t| t.counted), Some(Counted::Spam));
        // Overrides apply as to any rule.
        let news = p.plan(id("newsletter@x.org"), false);
        for _ in 0..10 {
            assert!(block_on(p.check_content(&[&news], spam, true)).is_empty());
        }
        // A dry-run rule trips, flagged as such.
        let phish = content::Content {
            phishing: true,
            ..content::Content::default()
        };
        let bob = p.plan(id("bob@x.org"), false);
        assert!(block_on(p.check_content(&[&bob], phish, true)).is_empty());
        let trips = block_on(p.check_content(&[&bob], phish, true));
        assert!(
            trips.len() == 1 && trips[0].dry_run && trips[0].action == Action::Log,
            "{trips:?}"
        );
        // The window frees them.
        f.clock.advance(Duration::from_secs(601));
        assert!(block_on(p.check_content(&[&alice], spam, true)).is_empty());
    }

    #[test]
    fn foreign_senders_are_the_domains_an_identity_may_not_use() {
        let f = fixture(
            r#"
[[rule]]
name = "foreign"
count = "foreign-senders"
rate = "2/1d"
action = "reject"

[[override]]
identity = "crm@x.org"
sender_domains = ["shop.example"]

[[override]]
domain = "relay.example"
sender_domains = ["*"]
"#,
        );
        let p = &f.policy;
        let alice = id("alice@x.org");
        let foreign = |who: &Identity, env: &str, from: &[&str]| {
            let from: Vec<String> = from.iter().map(|s| s.to_string()).collect();
            p.is_foreign_sender(who, env.as_bytes(), &from)
        };
        assert!(!foreign(&alice, "<alice@x.org>", &["x.org"]));
        assert!(
            !foreign(&alice, "<alice@mail.x.org>", &["lists.x.org"]),
            "subdomains are its own"
        );
        assert!(!foreign(&alice, "<>", &[]), "the null sender is no domain");
        assert!(foreign(&alice, "<ceo@bank.example>", &["x.org"]));
        assert!(
            foreign(&alice, "<alice@x.org>", &["bank.example"]),
            "the From: header counts too"
        );
        assert!(foreign(&alice, "<alice@evilx.org>", &[]), "a suffix is not a subdomain");
        assert!(!foreign(&id("crm@x.org"), "<crm@shop.example>", &["shop.example"]));
        assert!(
            foreign(&id("other@x.org"), "<crm@shop.example>", &[]),
            "the override is crm's alone"
        );
        assert!(!foreign(
            &id("gw@relay.example"),
            "<anyone@any.example>",
            &["any.example"]
        ));
        let ip = Identity {
            value: "192.0.2.1".into(),
            source: IdentitySource::ClientAddress,
        };
        assert!(
            !foreign(&ip, "<a@b.example>", &[]),
            "no domain of its own, nothing to compare"
        );
        let plan = p.plan(alice, false);
        assert_eq!(send(p, &plan, "192.0.2.1", &["b@y.example"], true), None);
        assert_eq!(
            send(p, &plan, "192.0.2.1", &["b@y.example"], false),
            None,
            "own mail is not counted"
        );
        assert_eq!(send(p, &plan, "192.0.2.1", &["b@y.example"], true), None);
        assert_eq!(
            send(p, &plan, "192.0.2.1", &["b@y.example"], true),
            Some(Action::Reject)
        );
        assert_eq!(send(p, &plan, "192.0.2.1", &["b@y.example"], false), None);
    }

    const BOUNCES: &str = r#"
[[rule]]
name = "bounces"
count = "bounces"
rate = "5/1h"
action = "tempfail"

[[rule]]
name = "bounce-ratio"
count = "bounces"
rate = "3/1h"
min_ratio = "30%"
action = "lock"
"#;

    fn bounce(p: &Policy, plan: &Plan, failed: u32) -> Vec<Trip> {
        let report = BounceReport {
            queue_id: "Q".into(),
            failed,
        };
        block_on(p.charge_bounces(plan, &report))
    }

    #[test]
    fn bounces_over_the_ratio_lock_and_a_big_sender_is_judged_by_its_share() {
        let f = fixture(BOUNCES);
        let p = &f.policy;
        // 20 recipients sent, 2 bounced (10%): under both rules.
        let big = p.plan(id("big@x.org"), false);
        let to: Vec<String> = (0..20).map(|i| format!("u{i}@y.example")).collect();
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        assert_eq!(send(p, &big, "192.0.2.1", &to, false), None);
        assert!(bounce(p, &big, 2).is_empty());
        // 2 more (4 of 20 = 20%): the count rule of 3 is exceeded, the
        // ratio is not: no lock.
        let trips = bounce(p, &big, 2);
        assert_eq!(trips.len(), 0, "{trips:?}");
        let state = block_on(p.explain(id("big@x.org")));
        assert_eq!(state[1].sent, Some(20));
        assert_eq!(state[1].min_ratio.map(|r| r.to_string()), Some("30%".into()));
        // A small sender: 5 sent, 3 bounced (60%): locked.
        let small = p.plan(id("small@x.org"), false);
        assert_eq!(send(p, &small, "192.0.2.1", &to[..5], false), None);
        assert!(bounce(p, &small, 2).is_empty());
        let trips = bounce(p, &small, 1);
        assert_eq!(trips.iter().map(|t| t.action).max(), None, "3 of 3 fits the rule");
        let trips = bounce(p, &small, 1);
        assert_eq!(most_severe(&trips).map(|t| t.action), Some(Action::Lock), "{trips:?}");
    }

    #[test]
    fn a_bounce_rule_fills_up_and_refuses_the_next_message() {
        let f = fixture(BOUNCES);
        let p = &f.policy;
        let plan = p.plan(id("a@x.org"), false);
        assert_eq!(send(p, &plan, "192.0.2.1", &["b@y.example"], false), None);
        // One bounce of 7 failed recipients: more than the count of 5, so the
        // rule fills to 5 and stays full.
        let trips = bounce(p, &plan, 7);
        let over = trips.iter().find(|t| t.rule == "bounces").unwrap();
        assert_eq!(over.usage.used, 5);
        assert_eq!(
            send(p, &plan, "192.0.2.1", &["b@y.example"], false),
            Some(Action::Lock),
            "7 of 1 sent"
        );
        let calm =
            fixture("[[rule]]\nname = \"bounces\"\ncount = \"bounces\"\nrate = \"5/1h\"\naction = \"tempfail\"\n");
        let plan = calm.policy.plan(id("a@x.org"), false);
        bounce(&calm.policy, &plan, 9);
        assert_eq!(
            send(&calm.policy, &plan, "192.0.2.1", &["b@y.example"], false),
            Some(Action::Tempfail)
        );
        calm.clock.advance(Duration::from_secs(3601));
        assert_eq!(send(&calm.policy, &plan, "192.0.2.1", &["b@y.example"], false), None);
    }

    #[test]
    fn bounces_are_charged_by_queue_id_to_the_sender_only() {
        let f = fixture(BOUNCES);
        let p = &f.policy;
        p.record_sent("4ABCDEF", &id("a@x.org"));
        assert_eq!(p.sender_of("4ABCDEF").map(|i| i.value), Some("a@x.org".into()));
        assert_eq!(p.sender_of("4OTHER"), None);
        let off = fixture(ESCALATION);
        off.policy.record_sent("4ABCDEF", &id("a@x.org"));
        assert_eq!(
            off.policy.sender_of("4ABCDEF"),
            None,
            "remembered only while bounce rules exist"
        );
    }

    #[test]
    fn new_signal_rules_are_checked_when_loaded() {
        for (bad, why) in [
            (
                "count = \"distinct-recipients\"\nrate = \"5/1h\"\nburst = 2",
                "has no burst",
            ),
            (
                "count = \"messages\"\nrate = \"5/1h\"\nmin_ratio = \"20%\"",
                "only a rule with count",
            ),
            (
                "count = \"bounces\"\nrate = \"5/1h\"\nmin_ratio = \"120%\"",
                "0.1% to 100%",
            ),
            (
                "count = \"bounces\"\nrate = \"5/1h\"\nmin_ratio = \"0.2\"",
                "percentage",
            ),
        ] {
            let text = format!("[[rule]]\nname = \"r\"\naction = \"lock\"\n{bad}\n");
            let err = Config::parse(&text, Path::new("t.toml")).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let err = Config::parse(
            "[[override]]\nidentity = \"a@x.org\"\nsender_domains = [\"@x\"]\n",
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("override[0].sender_domains[0]"), "{err}");
    }
}
