// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! milter-bench: a milter load generator that speaks to a milter the way
//! Postfix does, over TCP or a unix socket, from many connections at once,
//! and reports throughput, reply counts and decision latency.

mod client;
mod proto;
mod stats;

use clap::{Parser, ValueEnum};
use client::{Message, Session};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use stats::{Report, Stats};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpStream, UnixStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Distribution {
    /// Every message picks an identity uniformly at random.
    Uniform,
    /// Identity rank k is picked with probability proportional to 1/k^s.
    Zipf,
    /// Message n uses identity (offset + n / burst) mod N: each identity once per N messages.
    Sequential,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Source {
    /// `{auth_authen}` macro at MAIL (a SASL login).
    Auth,
    /// An identity header from a trusted client address.
    Header,
}

/// Milter load generator speaking the MTA side of the milter protocol like Postfix.
#[derive(Parser, Debug, Clone)]
#[command(name = "milter-bench", version, about)]
struct Args {
    /// Milter socket: inet:HOST:PORT or unix:PATH.
    #[arg(long, default_value = "inet:127.0.0.1:7025")]
    socket: String,
    /// Simultaneous MTA connections.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Messages to measure (after the warm-up).
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Messages per connection before it is closed and reopened.
    #[arg(long, default_value_t = 10)]
    per_connection: u64,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    recipients: usize,
    /// Every recipient (and its domain) new, as in a blast to a bought
    /// list, instead of the same few for every message.
    #[arg(long)]
    fresh_recipients: bool,
    /// Distinct sender identities.
    #[arg(long, default_value_t = 10_000)]
    identities: u64,
    /// Domains the identities are spread over.
    #[arg(long, default_value_t = 100)]
    domains: u64,
    /// How identities are picked.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    distribution: Distribution,
    /// Zipf exponent.
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// First identity number for the sequential distribution.
    #[arg(long, default_value_t = 0)]
    identity_offset: u64,
    /// Sequential distribution: messages each identity sends back to back
    /// (message n uses identity offset + n / burst), as a hijacked account does.
    #[arg(long, default_value_t = 1)]
    burst: u64,
    /// Prefix of identity local parts (user<N>@d<N mod domains>.bench.example).
    #[arg(long, default_value = "user")]
    identity_prefix: String,
    /// Where the milter learns the identity.
    #[arg(long, value_enum, default_value_t = Source::Auth)]
    source: Source,
    /// Identity header name for --source header.
    #[arg(long, default_value = "X-Authenticated-Sender")]
    identity_header: String,
    /// Client address sent at connect (default 127.0.0.2 for --source header,
    /// else 198.51.100.7).
    #[arg(long)]
    client_ip: Option<IpAddr>,
    /// One identity that sends this share of all messages (e.g. a locked or throttled one).
    #[arg(long)]
    hot_identity: Option<String>,
    #[arg(long, default_value_t = 0.0)]
    hot_fraction: f64,
    /// Unmeasured messages sent first.
    #[arg(long, default_value_t = 2_000)]
    warmup: u64,
    /// Target rate in messages per second over all connections (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Batch commands that expect no reply until one that does (Postfix writes each at once).
    #[arg(long)]
    batch_writes: bool,
    /// Disable Nagle's algorithm on TCP connections (left on by default, the MTA
    /// behaviour src/listener.rs assumes of Postfix).
    #[arg(long)]
    nodelay: bool,
    /// Seconds to wait for any one reply.
    #[arg(long, default_value_t = 10.0)]
    io_timeout: f64,
    /// Give up after this many seconds overall.
    #[arg(long, default_value_t = 600.0)]
    max_time: f64,
    /// Label for the report.
    #[arg(long, default_value = "milter-bench")]
    label: String,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// A tiny run for CI: 200 messages, 4 connections, no warm-up; fails on any error.
    #[arg(long)]
    smoke: bool,
    /// Fail (exit status 1) if any connection failed.
    #[arg(long)]
    strict: bool,
    /// Worker threads of the generator's runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Clone, Debug)]
enum Target {
    Tcp(String),
    Unix(PathBuf),
}

impl Target {
    fn parse(s: &str) -> Result<Target, String> {
        if let Some(path) = s.strip_prefix("unix:").or_else(|| s.strip_prefix("local:")) {
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("inet:").or_else(|| s.strip_prefix("inet6:")) {
            return Ok(Target::Tcp(rest.to_string()));
        }
        Err(format!("socket must be inet:HOST:PORT or unix:PATH, not {s:?}"))
    }
}

/// Picks each message's identity.
struct Identities {
    args: Args,
    /// Cumulative Zipf weights, normalised to end at 1.
    zipf_cdf: Vec<f64>,
}

impl Identities {
    fn new(args: &Args) -> Identities {
        let zipf_cdf = if args.distribution == Distribution::Zipf {
            let mut acc = 0.0;
            let mut cdf: Vec<f64> = (1..=args.identities)
                .map(|k| {
                    acc += 1.0 / (k as f64).powf(args.zipf_s);
                    acc
                })
                .collect();
            for w in &mut cdf {
                *w /= acc;
            }
            cdf
        } else {
            Vec::new()
        };
        Identities {
            args: args.clone(),
            zipf_cdf,
        }
    }

    fn pick(&self, n: u64, rng: &mut SmallRng) -> String {
        let a = &self.args;
        if let Some(hot) = &a.hot_identity
            && rng.random::<f64>() < a.hot_fraction
        {
            return hot.clone();
        }
        let ids = a.identities.max(1);
        let k = match a.distribution {
            Distribution::Uniform => rng.random_range(0..ids),
            Distribution::Sequential => (a.identity_offset + n / a.burst.max(1)) % ids,
            Distribution::Zipf => {
                let u: f64 = rng.random();
                self.zipf_cdf.partition_point(|&c| c < u) as u64
            }
        };
        format!("{}{k}@d{}.bench.example", a.identity_prefix, k % a.domains.max(1))
    }
}

struct Shared {
    args: Args,
    target: Target,
    identities: Identities,
    client_ip: IpAddr,
    next: AtomicU64,
    total: u64,
    start: Instant,
    /// When the first measured message was handed out.
    measured_from: std::sync::OnceLock<Instant>,
    deadline: Instant,
    /// The first connection's negotiation, for the report.
    negotiated: std::sync::OnceLock<String>,
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

async fn connect(shared: &Shared) -> std::io::Result<Stream> {
    Ok(match &shared.target {
        Target::Tcp(addr) => {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(shared.args.nodelay)?;
            Stream::Tcp(s)
        }
        Target::Unix(path) => Stream::Unix(UnixStream::connect(path).await?),
    })
}

async fn worker(shared: Arc<Shared>, seed: u64) -> Stats {
    let mut stats = Stats::default();
    let mut rng = SmallRng::seed_from_u64(seed);
    let per = shared.args.per_connection.max(1);
    let io_timeout = Duration::from_secs_f64(shared.args.io_timeout);
    loop {
        let base = shared.next.fetch_add(per, Ordering::Relaxed);
        if base >= shared.total || Instant::now() >= shared.deadline {
            break;
        }
        let n = per.min(shared.total - base);
        let result = match connect(&shared).await {
            Ok(Stream::Tcp(s)) => run_connection(&shared, s, base, n, io_timeout, &mut rng, &mut stats).await,
            Ok(Stream::Unix(s)) => run_connection(&shared, s, base, n, io_timeout, &mut rng, &mut stats).await,
            Err(e) => Err(e),
        };
        stats.connections += 1;
        if let Err(e) = result {
            stats.errors += 1;
            if stats.errors <= 3 {
                eprintln!("milter-bench: connection failed: {e}");
            }
            // Do not spin on a dead milter.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    stats
}

async fn run_connection<S>(
    shared: &Shared,
    stream: S,
    base: u64,
    n: u64,
    io_timeout: Duration,
    rng: &mut SmallRng,
    stats: &mut Stats,
) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let a = &shared.args;
    let mut session = Session::open(stream, shared.client_ip, !a.batch_writes, io_timeout).await?;
    let _ = shared.negotiated.get_or_init(|| session.negotiated().describe());
    for idx in base..base + n {
        let record = idx >= a.warmup;
        if record {
            let _ = shared.measured_from.set(Instant::now());
        }
        if a.rate > 0.0 {
            let due = shared.start + Duration::from_secs_f64(idx as f64 / a.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        if Instant::now() >= shared.deadline {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "--max-time reached"));
        }
        let identity = shared.identities.pick(idx, rng);
        let (auth, identity_header) = match a.source {
            Source::Auth => (Some(identity.clone()), None),
            Source::Header => (None, Some((a.identity_header.clone(), identity.clone()))),
        };
        let message = Message {
            queue_id: format!("{idx:010X}"),
            sender: identity,
            auth,
            identity_header,
            recipients: a.recipients,
            fresh_recipients: a.fresh_recipients.then_some(idx),
            record,
        };
        session.message(&message, stats).await?;
    }
    session.quit().await
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.smoke {
        args.messages = 200;
        args.concurrency = 4;
        args.per_connection = 5;
        args.warmup = 0;
        args.identities = args.identities.min(50);
        args.max_time = args.max_time.min(30.0);
        args.strict = true;
    }
    let target = match Target::parse(&args.socket) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("milter-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("milter-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args, target))
}

async fn run(args: Args, target: Target) -> ExitCode {
    let client_ip = args.client_ip.unwrap_or(match args.source {
        Source::Header => IpAddr::from([127, 0, 0, 2]),
        Source::Auth => IpAddr::from([198, 51, 100, 7]),
    });
    let start = Instant::now();
    let shared = Arc::new(Shared {
        identities: Identities::new(&args),
        target,
        client_ip,
        next: AtomicU64::new(0),
        total: args.messages + args.warmup,
        start,
        measured_from: std::sync::OnceLock::new(),
        deadline: start + Duration::from_secs_f64(args.max_time),
        negotiated: std::sync::OnceLock::new(),
        args: args.clone(),
    });
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|i| tokio::spawn(worker(shared.clone(), 0x5eed_0000 + i as u64)))
        .collect();
    let mut stats = Stats::default();
    for w in workers {
        match w.await {
            Ok(s) => stats.merge(&s),
            Err(e) => {
                eprintln!("milter-bench: worker failed: {e}");
                stats.errors += 1;
            }
        }
    }
    let from = shared.measured_from.get().copied().unwrap_or(start);
    let report = Report {
        negotiated: shared.negotiated.get().map_or("", String::as_str),
        label: &args.label,
        stats: &stats,
        elapsed: from.elapsed(),
    };
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    if args.strict && (stats.errors > 0 || stats.messages() < args.messages) {
        eprintln!(
            "milter-bench: {} errors, {} of {} messages answered",
            stats.errors,
            stats.messages(),
            args.messages
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
