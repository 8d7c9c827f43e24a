//! `send` and `receive` with no relay at all: check the options, bind the UDP socket,
//! print this side's ticket, take the peer's (from `--peer`, or asked for on standard
//! input), and run the transfer.

use std::io::{BufRead, IsTerminal, Write};

use p2p_copy_core::path::escape;

use crate::args::{ClientArgs, OutputArgs, ReceiveArgs, SendArgs, ServerlessArgs};
use crate::backend::{self, PeerSpec, Serverless, ServerlessConfig};
use crate::interrupt::Interrupts;
use crate::progress::{Progress, Role, Style};
use crate::usage::{self, Usage};
use crate::{fail, finish, json, receive_interrupted, send_interrupted, usage_ok};
use serde_json::json;

/// Whether this command runs without a relay: a serverless option was given, or no
/// relay was named at all and a user at a terminal can paste the peer's ticket.
pub fn chosen(a: &ServerlessArgs, no_relay: bool) -> bool {
    a.given() || (no_relay && std::io::stdin().is_terminal())
}

/// What the options ask for.
struct Plan {
    cfg: ServerlessConfig,
    /// `None` with `listen`, or when the peer's ticket is to be read from stdin.
    peer: Option<PeerSpec>,
}

fn plan(
    client: &ClientArgs,
    s: &ServerlessArgs,
    code: Option<String>,
    url_given: bool,
) -> Result<Plan, Usage> {
    if url_given {
        return Err(Usage(
            "a relay URL together with --peer, --listen, --local-port or --ntp: those run \
             without a relay; leave out one or the other"
                .into(),
        ));
    }
    if let Some(code) = &code {
        usage::check_code(code)?;
    }
    let peer = match &s.peer {
        Some(p) => Some(PeerSpec::parse(p).map_err(|e| Usage(format!("--peer: {e}")))?),
        None => None,
    };
    if code.is_none() {
        if s.listen.is_some() {
            return Err(Usage(
                "--listen needs --code: the side that listens has no ticket of its peer, so \
                 both sides give the same code"
                    .into(),
            ));
        }
        if let Some(PeerSpec::Address { .. }) = peer {
            return Err(Usage(
                "--peer HOST:PORT needs --code on both sides (the same code), or give the \
                 peer's ticket instead"
                    .into(),
            ));
        }
    }
    let cfg = ServerlessConfig {
        local_port: s.listen.or(s.local_port).unwrap_or(0),
        listen: s.listen.is_some(),
        code,
        stun: client.stun.clone(),
        ntp: s.ntp.clone(),
        encrypt: client.encrypt(),
        timeout: client.ttl(false),
        idle_timeout: client.idle_timeout,
        limit_rate: client.rate_limit(),
        consent: None,
        keep_existing: false,
        windows_names: cfg!(windows),
    };
    Ok(Plan { cfg, peer })
}

/// Bind, print the ticket and get the peer: the bound side and the peer, or the exit
/// code.
fn prepare(plan: Plan, quiet: bool) -> Result<(Serverless, Option<PeerSpec>), u8> {
    let listen = plan.cfg.listen;
    let port = plan.cfg.local_port;
    let has_code = plan.cfg.code.is_some();
    let bound = match backend::block_on(Serverless::bind(plan.cfg)) {
        Ok(b) => b,
        Err(e) => {
            return Err(fail(
                &e.to_string(),
                u8::try_from(e.exit_code()).unwrap_or(crate::EXIT_USAGE),
            ));
        }
    };
    if json::enabled() {
        json::emit("ticket", &[("ticket", json!(bound.ticket().to_string()))]);
    } else {
        if !quiet {
            eprintln!("this side's ticket, for the peer's --peer:");
        }
        // On stdout, alone on its line, so that scripts can take it.
        println!("{}", bound.ticket());
        let _ = std::io::stdout().flush();
    }
    if listen {
        if !quiet {
            eprintln!("waiting on UDP port {port} for the peer");
        }
        return Ok((bound, None));
    }
    if plan.peer.is_some() {
        return Ok((bound, plan.peer));
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("the peer's ticket (or HOST:PORT): ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    match stdin.lock().read_line(&mut line) {
        Ok(n) if n > 0 && !line.trim().is_empty() => {}
        _ => {
            return Err(fail(
                "no peer given: paste the peer's ticket, or use --peer TICKET (or --peer \
                 HOST:PORT with --code)",
                crate::EXIT_USAGE,
            ));
        }
    }
    match PeerSpec::parse(&line) {
        Ok(PeerSpec::Address { .. }) if !has_code => Err(fail(
            "a bare HOST:PORT needs --code on both sides: paste the peer's ticket instead",
            crate::EXIT_USAGE,
        )),
        Ok(p) => Ok((bound, Some(p))),
        Err(e) => Err(fail(&e.to_string(), crate::EXIT_USAGE)),
    }
}

/// `send --peer …`, `send --listen …`, or `send` at a terminal with no relay.
pub fn send(a: SendArgs, out: OutputArgs) -> u8 {
    let (found, files) = a.rendezvous();
    let url_given = a
        .args
        .first()
        .and_then(|f| f.to_str())
        .is_some_and(|f| f.contains("://"));
    let plan = match usage_ok(plan(&a.client, &a.serverless, found.code, url_given)) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    if files.is_empty() {
        return fail(
            "no files given: name the files and/or directories to send",
            crate::EXIT_USAGE,
        );
    }
    crate::started(Role::Send, None);
    let (bound, peer) = match prepare(plan, out.quiet) {
        Ok(ok) => ok,
        Err(exit) => return exit,
    };
    let interrupts = Interrupts::install();
    let progress = Progress::new(Role::Send, Style::detect(out.quiet), out.verbose);
    let transfer = bound.send(peer, files, a.options(), progress.callback());
    let ended = backend::block_on(interrupts.run(transfer));
    finish(
        &progress,
        ended,
        send_interrupted(progress.paired()),
        Role::Send,
    )
}

/// `receive --peer …`, `receive --listen …`, or `receive` at a terminal with no relay.
pub fn receive(a: ReceiveArgs, out: OutputArgs) -> u8 {
    let found = a.rendezvous();
    let out_dir = a.out_dir();
    let url_given = a.args.first().is_some_and(|f| f.contains("://"));
    if let Some(extra) = a.extra_argument() {
        return fail(
            &format!("unexpected argument {}", escape(extra)),
            crate::EXIT_USAGE,
        );
    }
    let checked = plan(&a.client, &a.serverless, found.code, url_given)
        .and_then(|p| usage::check_out(&out_dir).map(|()| p));
    let mut plan = match usage_ok(checked) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    crate::started(Role::Receive, None);
    // The display starts once the tickets are exchanged; the question waits for it.
    let shown = std::sync::Arc::new(std::sync::OnceLock::new());
    plan.cfg.keep_existing = a.no_clobber;
    plan.cfg.windows_names |= a.windows_names;
    plan.cfg.consent =
        crate::consent_asker(a.yes, a.no_clobber, plan.cfg.windows_names, shown.clone());
    let (bound, peer) = match prepare(plan, out.quiet) {
        Ok(ok) => ok,
        Err(exit) => return exit,
    };
    let interrupts = Interrupts::install();
    let progress = Progress::new(Role::Receive, Style::detect(out.quiet), out.verbose);
    let _ = shown.set(progress.clone());
    let transfer = bound.receive(peer, out_dir.clone(), progress.callback());
    let ended = backend::block_on(interrupts.run(transfer));
    let interrupted = receive_interrupted(progress.paired(), &out_dir);
    finish(&progress, ended, &interrupted, Role::Receive)
}
