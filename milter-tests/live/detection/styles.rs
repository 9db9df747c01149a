// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The styles of the benchmark, honest and attacker, each exactly as
//! docs/benchmarks.md ("Detection") describes it: who, from where, to whom,
//! at what pace. Times here are real time; the benchmark plays them
//! compressed. The attackers' pace is computed from the configuration they
//! face, as an attacker who has read it would ([`VolumeLimits`]).

use super::actors::{Connections, DriverActor, Planned};
use super::traffic::{AddressList, FREEMAIL, Rng, VolumeLimits, person_at, small_domain};
use crate::local_door::{ORIGIN, WEB1, WEB2};
use crate::postfix::TRUSTED_UPSTREAM;
use std::net::Ipv4Addr;
use std::time::Duration;

/// A style is honest (must be neither refused nor locked), an honest
/// sender the shipped escalation is expected to lock (the customer MTA with
/// a batch of three hours' limit in one go), or an attacker (must be
/// locked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Honest,
    HonestExpectedLock,
    Attacker,
}

/// Sizes of one form of the benchmark.
#[derive(Clone, Copy, Debug)]
pub struct Populations {
    /// Messages of the newsletter's mailing.
    pub newsletter_messages: usize,
    /// Stolen logins of the "many logins" attacker.
    pub many_logins: usize,
    /// Users of the trusted relay.
    pub relay_users: usize,
}

pub fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

pub fn password(login: &str) -> String {
    format!("secret-{login}")
}

fn ip(a: u8, b: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, a, b)
}

pub const HOLIDAY: &str = "pat@example.com";
pub const LIST_OWNER: &str = "club.secretary@example.org";
pub const NEWSLETTER: &str = "news@example.org";
pub const FAST_BLASTER: &str = "stolen.fast@example.com";
pub const NULL_BLASTER: &str = "stolen.null@example.com";
pub const SLOW_BLASTER: &str = "stolen.slow@example.com";
pub const BOTNET: &str = "stolen.botnet@example.net";
pub const LIST_SPAMMER: &str = "stolen.list@example.org";
/// The hijacked PHP script of [`WEB1`].
pub const PHP_SCRIPT: &str = "contact.php";
/// Its pace: one message every 5 s, 720 an hour (over the hourly limit of
/// 300; a script that spams does not read the configuration).
const PHP_GAP: Duration = Duration::from_secs(5);
/// Client addresses of the botnet that uses one login.
pub const BOTNET_IPS: u8 = 50;

/// The `n`-th stolen login of the "many logins" attacker.
pub fn many_login(n: usize) -> String {
    let domain = if n.is_multiple_of(2) {
        "example.com"
    } else {
        "example.net"
    };
    format!("stolen.many{n:02}@{domain}")
}

/// The `n`-th user of the trusted relay (its identity header).
pub fn relay_user(n: usize) -> String {
    format!("wm{n:02}@example.net")
}

/// A customer's own MTA: a private Postfix that authenticates to the
/// submission port and relays a batch released in one go.
#[derive(Clone, Debug)]
pub struct CustomerMta {
    pub style: String,
    pub kind: Kind,
    pub login: String,
    /// The customer's own domain (its senders, its DSNs are discarded).
    pub domain: String,
    /// The MTA's own address (`smtp_bind_address`).
    pub bind: Ipv4Addr,
    /// The batch: one message per recipient, from `orders@DOMAIN`.
    pub batch: Vec<Planned>,
    /// Real time from the start to the release of the batch.
    pub release: Duration,
}

/// A style the benchmark plays itself: one actor, or several (the many
/// logins, each its own).
pub struct DriverStyle {
    pub kind: Kind,
    pub name: String,
    /// The identities egress-milter counts it under.
    pub identities: Vec<String>,
    /// A lock of any one of `identities` stops the style (a PHP script and
    /// its Unix user: a locked user locks all its scripts, a locked script
    /// stops the script); otherwise every one must be locked.
    pub any_lock: bool,
    pub actors: Vec<DriverActor>,
}

impl DriverStyle {
    fn one(kind: Kind, identity: &str, actor: DriverActor) -> DriverStyle {
        DriverStyle {
            kind,
            name: actor.style.clone(),
            identities: vec![identity.to_string()],
            any_lock: false,
            actors: vec![actor],
        }
    }

    /// Whether its actors submit through the local door (sendmail).
    pub fn local(&self) -> bool {
        self.actors.iter().any(|a| a.local_user.is_some())
    }
}

/// Every style of one form: the driver styles, the customers' MTAs and the
/// trusted relay's injection plan.
pub struct Styles {
    pub drivers: Vec<DriverStyle>,
    pub customers: Vec<CustomerMta>,
    /// Messages of the relay's users, injected into the relay's own Postfix.
    pub relay: DriverActor,
    pub relay_identities: Vec<String>,
    /// One line per style: what it does, for the report.
    pub descriptions: Vec<(String, String)>,
}

/// Every SASL login of the Postfix under test.
pub fn logins(pop: &Populations) -> Vec<String> {
    let mut all: Vec<String> = [
        HOLIDAY,
        LIST_OWNER,
        NEWSLETTER,
        FAST_BLASTER,
        NULL_BLASTER,
        SLOW_BLASTER,
        BOTNET,
        LIST_SPAMMER,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all.extend((1..=pop.many_logins).map(many_login));
    all.extend(customers_logins());
    all
}

fn customers_logins() -> [String; 2] {
    ["relay@shop.example".to_string(), "relay@bigshop.example".to_string()]
}

/// Builds every style. `submission` is the port of the Postfix under test,
/// `relay_injection` the port where the relay's own Postfix takes its
/// users' mail; `limits` the volume limits of the real (uncompressed)
/// configuration over `horizon`.
pub fn build(
    pop: &Populations,
    limits: &VolumeLimits,
    horizon: Duration,
    submission: u16,
    relay_injection: u16,
) -> Styles {
    let mut drivers = Vec::new();
    let mut descriptions = Vec::new();
    let mut describe = |style: &str, what: String| descriptions.push((style.to_string(), what));

    // --- honest -----------------------------------------------------------

    let (holiday, what) = holiday_person(submission);
    describe(&holiday.style, what);
    drivers.push(DriverStyle::one(Kind::Honest, HOLIDAY, holiday));

    let (list, what) = club_mailing(submission);
    describe(&list.style, what);
    drivers.push(DriverStyle::one(Kind::Honest, LIST_OWNER, list));

    let (newsletter, what) = newsletter(submission, pop.newsletter_messages);
    describe(&newsletter.style, what);
    drivers.push(DriverStyle::one(Kind::Honest, NEWSLETTER, newsletter));

    let (cron, what) = cron_report();
    describe(&cron.style, what);
    drivers.push(DriverStyle::one(Kind::Honest, &format!("local:{WEB2}"), cron));

    let customers = vec![
        customer(
            "customer MTA, batch of 500",
            Kind::Honest,
            "shop.example",
            ip(0, 3),
            500,
            minutes(5),
            101,
        ),
        customer(
            "customer MTA, batch of 1000",
            Kind::HonestExpectedLock,
            "bigshop.example",
            ip(0, 4),
            1000,
            minutes(25),
            102,
        ),
    ];
    for c in &customers {
        describe(
            &c.style,
            format!(
                "a private Postfix (the customer's, `smtp_bind_address = {}`) with AUTH as `{}` to the submission \
                 port; {} order mails (1 recipient each, 70 % at 5 big providers, 1 % stale) released from hold in \
                 one go at {} min, then retried on Postfix's schedule (minimal/maximal backoff and queue run delay \
                 compressed like the windows)",
                c.bind,
                c.login,
                c.batch.len(),
                c.release.as_secs() / 60
            ),
        );
    }

    let (relay, relay_identities, what) = trusted_relay(relay_injection, pop.relay_users, horizon);
    describe(&relay.style, what);

    // --- attackers ----------------------------------------------------------

    let mut purchased = Rng::new(0x5EED_0001);
    let mut purchased_list = |n: usize| {
        AddressList {
            n,
            freemail: 0.5,
            small_domains: 3000,
            first_domain: 1000,
            stale_share: 0.1,
        }
        .generate(&mut purchased)
    };

    let fast = blaster(
        "fast blaster",
        FAST_BLASTER,
        submission,
        ip(3, 1),
        4,
        500,
        2,
        false,
        &mut purchased_list,
    );
    describe(
        &fast.style,
        format!(
            "stolen login `{FAST_BLASTER}` from {}: 4 parallel sessions as fast as the server answers, 2 recipients \
             a message from a purchased list (fresh addresses, half at 5 big providers, half at 3000 small domains, \
             10 % stale), each 4xx retried at once; at most 2000 attempts",
            ip(3, 1)
        ),
    );
    drivers.push(DriverStyle::one(Kind::Attacker, FAST_BLASTER, fast));

    let null = blaster(
        "null-sender blaster",
        NULL_BLASTER,
        submission,
        ip(3, 2),
        2,
        1000,
        1,
        true,
        &mut purchased_list,
    );
    describe(
        &null.style,
        format!(
            "stolen login `{NULL_BLASTER}` from {}: `MAIL FROM:<>` (From: the login), 2 sessions as fast as the \
             server answers, 1 purchased-list recipient a message; at most 2000 attempts",
            ip(3, 2)
        ),
    );
    drivers.push(DriverStyle::one(Kind::Attacker, NULL_BLASTER, null));

    let slow_gap = limits.gap(3, 0.9);
    let slow = paced(
        "slow blaster",
        SLOW_BLASTER,
        submission,
        minutes(0),
        slow_gap,
        3,
        horizon,
        &mut |_| ip(3, 3),
        &mut purchased_list,
    );
    describe(
        &slow.style,
        format!(
            "stolen login `{SLOW_BLASTER}` from {}: one message of 3 purchased-list recipients every {:.1} s, 90 % \
             of the tightest per-identity message and recipient limits (read from the configuration), for the \
             whole run",
            ip(3, 3),
            slow_gap.as_secs_f64()
        ),
    );
    drivers.push(DriverStyle::one(Kind::Attacker, SLOW_BLASTER, slow));

    let many: Vec<String> = (1..=pop.many_logins).map(many_login).collect();
    let many_actors = many
        .iter()
        .enumerate()
        .map(|(k, login)| {
            let start = Duration::from_secs(30 * k as u64);
            let source = ip(4, k as u8 + 1);
            paced(
                "many logins",
                login,
                submission,
                start,
                slow_gap,
                3,
                horizon,
                &mut |_| source,
                &mut purchased_list,
            )
        })
        .collect();
    describe(
        "many logins",
        format!(
            "{} stolen logins (`stolen.many01@` … at example.com and example.net), each like the slow blaster (3 \
             recipients every {:.1} s), each from its own address (127.0.4.N), starting 30 s apart",
            pop.many_logins,
            slow_gap.as_secs_f64()
        ),
    );
    drivers.push(DriverStyle {
        kind: Kind::Attacker,
        name: "many logins".into(),
        identities: many,
        any_lock: false,
        actors: many_actors,
    });

    let botnet_gap = limits.gap(2, 0.9);
    let botnet = paced(
        "one login from 50 IPs",
        BOTNET,
        submission,
        minutes(1),
        botnet_gap,
        2,
        horizon,
        &mut |i| ip(1, (i % usize::from(BOTNET_IPS)) as u8 + 1),
        &mut purchased_list,
    );
    describe(
        &botnet.style,
        format!(
            "stolen login `{BOTNET}` used by a botnet of {BOTNET_IPS} addresses (127.0.1.1–127.0.1.{BOTNET_IPS}), \
             each message from the next one: 2 purchased-list recipients every {:.1} s, 90 % of the login's limits",
            botnet_gap.as_secs_f64()
        ),
    );
    drivers.push(DriverStyle::one(Kind::Attacker, BOTNET, botnet));

    let list_gap = limits.gap(45, 0.9);
    let mut stale_list = Rng::new(0x5EED_0002);
    let mut spam_list = |n: usize| {
        AddressList {
            n,
            freemail: 0.5,
            small_domains: 2000,
            first_domain: 5000,
            stale_share: 0.3,
        }
        .generate(&mut stale_list)
    };
    let list_spam = paced(
        "list with 30 % unknown",
        LIST_SPAMMER,
        submission,
        minutes(4),
        list_gap,
        45,
        horizon,
        &mut |_| ip(3, 5),
        &mut spam_list,
    );
    describe(
        &list_spam.style,
        format!(
            "stolen login `{LIST_SPAMMER}` from {}: mails a harvested list, 45 recipients (Bcc) a message, 30 % of \
             them unknown (550 5.1.1 at the sink: real bounces), one message every {:.0} s (90 % of the recipient \
             limit)",
            ip(3, 5),
            list_gap.as_secs_f64()
        ),
    );
    drivers.push(DriverStyle::one(Kind::Attacker, LIST_SPAMMER, list_spam));

    let php_uid = crate::local_door::user(WEB1).uid;
    let php = php_script(php_uid.as_raw(), horizon, &mut purchased_list);
    describe(
        &php.style,
        format!(
            "a hijacked contact form of the local user `{WEB1}`: PHP's `mail()`, i.e. Postfix's sendmail run as \
             `{WEB1}` (uid {php_uid}), into pickup and `non_smtpd_milters`, with \
             `X-PHP-Originating-Script: {php_uid}:{PHP_SCRIPT}`: from 1 min on, one message every {:.0} s of 1–3 \
             purchased-list recipients, for the whole run, not knowing what the milter says (sendmail always \
             exits 0; a 4xx leaves the message in the maildrop for pickup to offer again at each scan, a 5xx \
             bounces it to `{WEB1}@{ORIGIN}`); locked when its script (`php:{WEB1}:{PHP_SCRIPT}`) or its user \
             (`local:{WEB1}`, counted beside it) is",
            PHP_GAP.as_secs_f64()
        ),
    );
    drivers.push(DriverStyle {
        kind: Kind::Attacker,
        name: php.style.clone(),
        identities: vec![format!("php:{WEB1}:{PHP_SCRIPT}"), format!("local:{WEB1}")],
        any_lock: true,
        actors: vec![php],
    });

    Styles {
        drivers,
        customers,
        relay,
        relay_identities,
        descriptions,
    }
}

/// Back from a holiday: 15 replies in the first quarter of an hour, then 30
/// more over the next hour, to colleagues and clients, with two reply-alls
/// to a project list of 45.
fn holiday_person(port: u16) -> (DriverActor, String) {
    let mut rng = Rng::new(0x5EED_0101);
    let mut book: Vec<String> = (0..10).map(|_| person_at(&mut rng, "example.com")).collect();
    for k in 0..15 {
        let domain = if k < 6 {
            FREEMAIL[k % 3].to_string()
        } else {
            small_domain(k % 4)
        };
        book.push(person_at(&mut rng, &domain));
    }
    let project: Vec<String> = (0..45)
        .map(|k| {
            let domain = if k < 15 {
                "example.com".to_string()
            } else {
                small_domain(k % 5)
            };
            person_at(&mut rng, &domain)
        })
        .collect();
    let source = ip(2, 1);
    let mut plan = Vec::new();
    for i in 0..45 {
        let gap = match i {
            0 => minutes(1),
            1..15 => rng.between(Duration::from_secs(20), Duration::from_secs(60)),
            _ => rng.between(Duration::from_secs(40), Duration::from_secs(120)),
        };
        let rcpts = if i == 6 || i == 30 {
            project.clone()
        } else {
            let n = match rng.below(10) {
                0..6 => 1,
                6..9 => 2,
                _ => 3,
            };
            (0..n)
                .map(|_| rng.pick(&book).clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        plan.push(Planned::new(
            gap,
            HOLIDAY,
            rcpts,
            format!("Re: while I was away ({i})"),
            source,
        ));
    }
    let actor = DriverActor {
        style: "person back from holiday".into(),
        auth: Some((HOLIDAY.into(), password(HOLIDAY))),
        port,
        start: Duration::ZERO,
        sessions: vec![plan],
        connections: Connections::PerMessage,
        stop_when_locked: false,
        local_user: None,
    };
    let what = format!(
        "`{HOLIDAY}` from {source}, one connection a message, from 1 min on: 15 replies 20–60 s apart, then 30 more \
         40–120 s apart (about 50 min in all), 1–3 recipients from an address book of 25 at 8 domains, two of them reply-alls to a project \
         list of 45 at 6 domains"
    );
    (actor, what)
}

/// A club's secretary sends the club's letter to its 150 members (Bcc, in
/// three messages of 50), 10 of whose addresses are stale, then four
/// personal messages.
fn club_mailing(port: u16) -> (DriverActor, String) {
    let mut rng = Rng::new(0x5EED_0102);
    let members = AddressList {
        n: 150,
        freemail: 0.5,
        small_domains: 35,
        first_domain: 200,
        stale_share: 10.0 / 150.0,
    }
    .generate(&mut rng);
    let source = ip(2, 2);
    let mut plan = Vec::new();
    for (i, part) in members.chunks(50).enumerate() {
        let gap = if i == 0 { minutes(15) } else { minutes(2) };
        let mut message = Planned::new(
            gap,
            LIST_OWNER,
            part.to_vec(),
            "Riverside club: the November letter".into(),
            source,
        );
        message.to_header = "Riverside club members:;".into();
        plan.push(message);
    }
    for i in 0..4 {
        let rcpt = members[1 + 3 * i].clone();
        plan.push(Planned::new(
            minutes(5),
            LIST_OWNER,
            vec![rcpt],
            format!("Re: the letter ({i})"),
            source,
        ));
    }
    let actor = DriverActor {
        style: "list mailing with stale addresses".into(),
        auth: Some((LIST_OWNER.into(), password(LIST_OWNER))),
        port,
        start: Duration::ZERO,
        sessions: vec![plan],
        connections: Connections::PerMessage,
        stop_when_locked: false,
        local_user: None,
    };
    let what = format!(
        "`{LIST_OWNER}` from {source}: at 15 min the club's letter to its 150 members at 36 domains, Bcc in 3 \
         messages of 50 two minutes apart; 10 addresses (6.7 %) are stale (550 5.1.1: 10 bounces); then 4 personal \
         replies 5 min apart"
    );
    (actor, what)
}

/// A newsletter with an override: one message per subscriber over one
/// connection (a new one every 100), 50 a minute.
fn newsletter(port: u16, messages: usize) -> (DriverActor, String) {
    let mut rng = Rng::new(0x5EED_0103);
    let subscribers = AddressList {
        n: messages,
        freemail: 0.6,
        small_domains: 400,
        first_domain: 400,
        stale_share: 0.02,
    }
    .generate(&mut rng);
    let source = ip(2, 3);
    // Two connections, each a message every 2.4 s: 50 a minute.
    let gap = Duration::from_millis(2400);
    let mut sessions = vec![Vec::new(), Vec::new()];
    for (i, rcpt) in subscribers.into_iter().enumerate() {
        let gap = match i {
            0 => minutes(10),
            1 => minutes(10) + gap / 2,
            _ => gap,
        };
        sessions[i % 2].push(Planned::new(
            gap,
            NEWSLETTER,
            vec![rcpt],
            "Example.org weekly, issue 48".into(),
            source,
        ));
    }
    let actor = DriverActor {
        style: "newsletter with an override".into(),
        auth: Some((NEWSLETTER.into(), password(NEWSLETTER))),
        port,
        start: Duration::ZERO,
        sessions,
        connections: Connections::Reused { per_connection: 100 },
        stop_when_locked: false,
        local_user: None,
    };
    let what = format!(
        "`{NEWSLETTER}` from {source} (its `[[override]]`: milter-tests/live/fixtures/detection-site.toml): at 10 \
         min a mailing of {messages} messages, one subscriber each (60 % at 5 big providers, the rest at 400 \
         domains, 2 % stale), 50 a minute over two connections (each a new one every 100 messages)"
    );
    (actor, what)
}

/// An honest local user: [`WEB2`]'s cron job mails the site's report to
/// its administrator every 5 minutes, through sendmail (no PHP header).
fn cron_report() -> (DriverActor, String) {
    let sender = format!("{WEB2}@{ORIGIN}");
    let plan = (0..12)
        .map(|i| {
            Planned::new(
                if i == 0 { minutes(2) } else { minutes(5) },
                &sender,
                vec!["webmaster@example.com".into()],
                format!("Cron <{WEB2}> report {i}"),
                Ipv4Addr::LOCALHOST,
            )
        })
        .collect();
    let actor = DriverActor {
        style: "local cron job".into(),
        auth: None,
        port: 0,
        start: Duration::ZERO,
        sessions: vec![plan],
        connections: Connections::PerMessage,
        stop_when_locked: false,
        local_user: Some(WEB2.into()),
    };
    let what = format!(
        "the local user `{WEB2}`'s cron job: Postfix's sendmail run as `{WEB2}` (pickup, `non_smtpd_milters`, \
         counted as `local:{WEB2}`), from 2 min on a report to `webmaster@example.com` every 5 min (12 in all)"
    );
    (actor, what)
}

/// A hijacked PHP script of [`WEB1`] (uid `uid`): one message of 1–3
/// purchased-list recipients every [`PHP_GAP`] from 1 min to the horizon,
/// each a sendmail run with PHP's `X-PHP-Originating-Script`.
fn php_script(uid: u32, horizon: Duration, list: &mut impl FnMut(usize) -> Vec<String>) -> DriverActor {
    let start = minutes(1);
    let n = (horizon.saturating_sub(start).as_secs_f64() / PHP_GAP.as_secs_f64()).ceil() as usize;
    let sender = format!("{WEB1}@{ORIGIN}");
    let mut rng = Rng::new(0x5EED_0003);
    let sizes: Vec<usize> = (0..n).map(|_| 1 + rng.below(3)).collect();
    let addresses = list(sizes.iter().sum());
    let mut rest = addresses.as_slice();
    let plan = sizes
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            let (rcpts, tail) = rest.split_at(k);
            rest = tail;
            let mut message = Planned::new(
                if i == 0 { Duration::ZERO } else { PHP_GAP },
                &sender,
                rcpts.to_vec(),
                format!("Your enquiry {i}"),
                Ipv4Addr::LOCALHOST,
            );
            message
                .extra_headers
                .push(("X-PHP-Originating-Script".into(), format!("{uid}:{PHP_SCRIPT}")));
            message
        })
        .collect();
    DriverActor {
        style: "local PHP script".into(),
        auth: None,
        port: 0,
        start,
        sessions: vec![plan],
        connections: Connections::PerMessage,
        stop_when_locked: false,
        local_user: Some(WEB1.into()),
    }
}

/// A customer's batch: `n` order mails from `orders@DOMAIN`.
fn customer(
    style: &str,
    kind: Kind,
    domain: &str,
    bind: Ipv4Addr,
    n: usize,
    release: Duration,
    seed: u64,
) -> CustomerMta {
    let mut rng = Rng::new(0x5EED_0200 + seed);
    let customers = AddressList {
        n,
        freemail: 0.7,
        small_domains: 300,
        first_domain: 8000,
        stale_share: 0.01,
    }
    .generate(&mut rng);
    let batch = shipping_notices(&format!("orders@{domain}"), customers);
    CustomerMta {
        style: style.into(),
        kind,
        login: format!("relay@{domain}"),
        domain: domain.into(),
        bind,
        batch,
        release,
    }
}

/// A shop's batch as its MTA holds it: one "Your order N has shipped"
/// from `sender` to each of `rcpts`, all at once.
pub(crate) fn shipping_notices(sender: &str, rcpts: impl IntoIterator<Item = String>) -> Vec<Planned> {
    rcpts
        .into_iter()
        .enumerate()
        .map(|(i, rcpt)| {
            Planned::new(
                Duration::ZERO,
                sender,
                vec![rcpt],
                format!("Your order {i} has shipped"),
                TRUSTED_UPSTREAM,
            )
        })
        .collect()
}

/// A webmail host relaying for `users` people: each sends about 6 messages
/// an hour (exponential gaps) to 1–3 of 8 correspondents; one message in ten
/// has no identity header (a notice of the host itself, a user's filter).
/// Injected into the relay's own Postfix, which relays to the relay port.
fn trusted_relay(port: u16, users: usize, horizon: Duration) -> (DriverActor, Vec<String>, String) {
    let mut rng = Rng::new(0x5EED_0104);
    let mut timed: Vec<(Duration, Planned)> = Vec::new();
    let mut identities = vec![TRUSTED_UPSTREAM.to_string()];
    for u in 1..=users {
        let user = relay_user(u);
        identities.push(user.clone());
        let book: Vec<String> = (0..8)
            .map(|k| {
                let domain = if k < 3 {
                    FREEMAIL[(u + k) % FREEMAIL.len()].to_string()
                } else {
                    small_domain(600 + (u * 4 + k) % 50)
                };
                person_at(&mut rng, &domain)
            })
            .collect();
        let mut at = rng.exponential(minutes(10));
        while at < horizon.saturating_sub(minutes(5)) {
            let n = 1 + rng.below(3);
            let rcpts: Vec<String> = (0..n)
                .map(|_| rng.pick(&book).clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut message = Planned::new(
                Duration::ZERO,
                &user,
                rcpts,
                format!("from {user} at {}s", at.as_secs()),
                TRUSTED_UPSTREAM,
            );
            if !rng.chance(0.1) {
                message
                    .extra_headers
                    .push(("X-Authenticated-Sender".into(), user.clone()));
            }
            timed.push((at, message));
            at += rng.exponential(minutes(10));
        }
    }
    timed.sort_by_key(|(at, _)| *at);
    let mut previous = Duration::ZERO;
    let plan = timed
        .into_iter()
        .map(|(at, mut message)| {
            message.gap = at - previous;
            previous = at;
            message
        })
        .collect();
    let actor = DriverActor {
        style: "trusted relay for many users".into(),
        auth: None,
        port,
        start: Duration::ZERO,
        sessions: vec![plan],
        connections: Connections::PerMessage,
        stop_when_locked: false,
        local_user: None,
    };
    let what = format!(
        "a webmail host: a private Postfix relaying from {TRUSTED_UPSTREAM} (trusted) to the relay port, for {users} \
         users (`wm01@example.net` …), each about 6 messages an hour (exponential gaps) to 1–3 of 8 correspondents \
         at 7 domains; 10 % of the messages lack `X-Authenticated-Sender` (counted under {TRUSTED_UPSTREAM})"
    );
    (actor, identities, what)
}

/// A blaster: `sessions` sessions of `per_session` messages with no gap
/// (each next attempt right after the reply), `rcpts` purchased-list
/// recipients each; from `<>` if `null_sender`.
#[allow(clippy::too_many_arguments)]
fn blaster(
    style: &str,
    login: &str,
    port: u16,
    source: Ipv4Addr,
    sessions: usize,
    per_session: usize,
    rcpts: usize,
    null_sender: bool,
    list: &mut impl FnMut(usize) -> Vec<String>,
) -> DriverActor {
    let start = if null_sender { minutes(3) } else { minutes(2) };
    let addresses = list(sessions * per_session * rcpts);
    let mut chunks = addresses.chunks(rcpts);
    let sessions = (0..sessions)
        .map(|s| {
            (0..per_session)
                .map(|i| {
                    let rcpts = chunks.next().map(<[String]>::to_vec).unwrap_or_default();
                    let mut message =
                        Planned::new(Duration::ZERO, login, rcpts, format!("Special offer {s}-{i}"), source);
                    if null_sender {
                        message.mail_from = String::new();
                    }
                    message
                })
                .collect()
        })
        .collect();
    DriverActor {
        style: style.into(),
        auth: Some((login.into(), password(login))),
        port,
        start,
        sessions,
        connections: Connections::Reused { per_connection: 50 },
        stop_when_locked: true,
        local_user: None,
    }
}

/// An attacker at a steady pace: one message of `rcpts` recipients every
/// `gap` from `start` to the horizon, a connection each, from `source(i)`.
#[allow(clippy::too_many_arguments)]
fn paced(
    style: &str,
    login: &str,
    port: u16,
    start: Duration,
    gap: Duration,
    rcpts: usize,
    horizon: Duration,
    source: &mut dyn FnMut(usize) -> Ipv4Addr,
    list: &mut impl FnMut(usize) -> Vec<String>,
) -> DriverActor {
    let n = (horizon.saturating_sub(start).as_secs_f64() / gap.as_secs_f64()).ceil() as usize;
    let addresses = list(n * rcpts);
    let plan = addresses
        .chunks(rcpts)
        .enumerate()
        .map(|(i, chunk)| {
            let mut message = Planned::new(
                if i == 0 { Duration::ZERO } else { gap },
                login,
                chunk.to_vec(),
                format!("Hello {i}"),
                source(i),
            );
            if rcpts > 3 {
                message.to_header = "undisclosed-recipients:;".into();
            }
            message
        })
        .collect();
    DriverActor {
        style: style.into(),
        auth: Some((login.into(), password(login))),
        port,
        start,
        sessions: vec![plan],
        connections: Connections::PerMessage,
        stop_when_locked: true,
        local_user: None,
    }
}
