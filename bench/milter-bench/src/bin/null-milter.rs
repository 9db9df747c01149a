// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! null-milter: the baseline for milter-bench. It registers the same
//! indymilter callbacks as egress-milter (negotiate, connect, mail, rcpt,
//! header, eoh, eom, abort), makes the same negotiation choices (quarantine
//! action, no reply to headers, the same macro lists), binds through
//! egress-milter's own listener (so TCP gets the same TCP_QUICKACK
//! treatment), and lets every message through.

use clap::Parser;
use egress_milter::config::{FileMode, SocketSpec};
use egress_milter::milter::listener::{self, SocketCleanup};
use indymilter::{Actions, Callbacks, MacroStage, ProtoOpts, Status};
use std::process::ExitCode;
use std::time::Duration;

/// An indymilter milter that accepts everything.
#[derive(Parser)]
#[command(name = "null-milter", about)]
struct Args {
    /// inet:HOST:PORT or unix:PATH.
    #[arg(long, default_value = "inet:127.0.0.1:7026")]
    socket: String,
    /// Also ask the MTA to skip headers and end of headers, as egress-milter
    /// does when no identity source reads headers.
    #[arg(long)]
    no_headers: bool,
    /// Simultaneous connections (egress-milter's default).
    #[arg(long, default_value_t = 500)]
    max_connections: usize,
}

#[derive(Default)]
struct Conn {
    noreply_header: bool,
}

fn callbacks(no_headers: bool) -> Callbacks<Conn> {
    Callbacks::new()
        .on_negotiate(move |cx, actions, opts| {
            Box::pin(async move {
                cx.requested_actions = if actions.contains(Actions::QUARANTINE) {
                    Actions::QUARANTINE
                } else {
                    Actions::empty()
                };
                let noreply_header = opts.contains(ProtoOpts::NOREPLY_HEADER);
                if noreply_header {
                    cx.requested_opts |= ProtoOpts::NOREPLY_HEADER;
                }
                if no_headers && opts.contains(ProtoOpts::NO_HEADER | ProtoOpts::NO_EOH) {
                    cx.requested_opts |= ProtoOpts::NO_HEADER | ProtoOpts::NO_EOH;
                }
                cx.requested_macros.insert(MacroStage::Mail, c"i {auth_authen}".into());
                for stage in [MacroStage::Rcpt, MacroStage::Eoh, MacroStage::Eom] {
                    cx.requested_macros.insert(stage, c"i".into());
                }
                cx.data = Some(Conn { noreply_header });
                Status::Continue
            })
        })
        .on_connect(|_, _, _| Box::pin(async { Status::Continue }))
        .on_mail(|_, _| Box::pin(async { Status::Continue }))
        .on_rcpt(|_, _| Box::pin(async { Status::Continue }))
        .on_header(|cx, _, _| {
            Box::pin(async move {
                if cx.data.as_ref().is_some_and(|c| c.noreply_header) {
                    Status::Noreply
                } else {
                    Status::Continue
                }
            })
        })
        .on_eoh(|_| Box::pin(async { Status::Continue }))
        .on_eom(|_| Box::pin(async { Status::Continue }))
        .on_abort(|_| Box::pin(async { Status::Continue }))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let spec: SocketSpec = match args.socket.parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("null-milter: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = match listener::bind(&spec, FileMode(0o660), true).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("null-milter: cannot listen on {}: {e}", args.socket);
                return ExitCode::FAILURE;
            }
        };
        let _cleanup = SocketCleanup(match &spec {
            SocketSpec::Unix(p) => Some(p.clone()),
            SocketSpec::Inet(_) => None,
        });
        let config = indymilter::Config {
            max_connections: args.max_connections,
            connection_timeout: Duration::from_secs(7210),
            ..Default::default()
        };
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        match indymilter::run(listener, callbacks(args.no_headers), config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("null-milter: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
