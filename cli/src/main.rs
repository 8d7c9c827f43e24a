//! `p2p-copy`: send files and folders to another machine through a WebSocket relay,
//! compatible with p2p-copy 0.1.x. This binary parses arguments, calls the runtime
//! library, shows progress and turns errors into one-line messages and exit codes.

mod alloc;
mod args;
mod backend;
mod codes;
mod config_file;
mod consent;
mod ctrl_echo;
mod interrupt;
mod json;
mod partials;
mod progress;
mod serverless;
mod stderr_log;
mod usage;

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use clap::Parser;
use log::LevelFilter;
use p2p_copy_core::path::escape;
use p2p_copy_core::Event;

use crate::args::{
    Cli, Command, CompletionsArgs, LogFormat, NetcheckArgs, OutputArgs, ReceiveArgs, RelayArgs,
    SendArgs, TlsUsage,
};
use crate::backend::{RelayServer, Summary, TransferError};
use crate::interrupt::{Ended, Interrupts};
use crate::progress::{Progress, Role, Style};

/// Exit code for a bad command line or invalid settings.
const EXIT_USAGE: u8 = 1;
/// Why standard input, `--text` and `--stdout` are refused without a relay.
const NO_PIPES_SERVERLESS: &str =
    "standard input ('-'), --text and --stdout need a relay (transfers with no relay read the peer's ticket from standard input)";
/// Exit code when the relay cannot be started or reached.
const EXIT_RELAY: u8 = 2;
/// Exit code when the transfer ended but not every file was delivered (skipped with
/// --skip-errors, or not put in place by the receiver).
const EXIT_NOT_DELIVERED: u8 = 8;
/// Exit code when the receiver's user declined the transfer (both sides).
const EXIT_DECLINED: u8 = 11;
/// Exit code for a local I/O error.
const EXIT_LOCAL: u8 = 6;
/// Exit code after Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    alloc::tune();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() && json::asked_on_command_line() {
                json::enable();
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or_default();
                json::error(first.trim_start_matches("error: "), EXIT_USAGE);
            }
            // clap's own code for usage errors is 2, which p2p-copy keeps for the relay.
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    if matches!(&cli.command, Command::Send(_) | Command::Receive(_)) {
        alloc::one_arena();
    }
    if matches!(&cli.command, Command::Send(a) if a.json)
        || matches!(&cli.command, Command::Receive(a) if a.json)
    {
        json::enable();
    }
    let out = cli.output;
    let format = match &cli.command {
        Command::RunRelayServer(a) if a.ops.log_format == LogFormat::Json => {
            stderr_log::Format::Json
        }
        _ => stderr_log::Format::Text,
    };
    let level = if out.quiet {
        LevelFilter::Error
    } else if out.verbose {
        LevelFilter::Debug
    } else if matches!(cli.command, Command::RunRelayServer(_)) {
        LevelFilter::Info
    } else {
        LevelFilter::Warn
    };
    stderr_log::init(level, format);
    let command = match with_config(cli.command) {
        Ok(command) => command,
        Err(exit) => return ExitCode::from(exit),
    };
    ExitCode::from(match command {
        Command::Completions(a) => completions(&a),
        Command::Man => man(),
        Command::Config => show_config(),
        Command::Send(a)
            if serverless::chosen(&a.serverless, a.rendezvous().0.server.is_none()) =>
        {
            match a.text.is_some() || a.rendezvous().1.iter().any(|f| f.as_os_str() == "-") {
                true => fail(NO_PIPES_SERVERLESS, EXIT_USAGE),
                false => serverless::send(a, out),
            }
        }
        Command::Receive(a)
            if serverless::chosen(&a.serverless, a.rendezvous().server.is_none()) =>
        {
            match a.stdout {
                true => fail(NO_PIPES_SERVERLESS, EXIT_USAGE),
                false => serverless::receive(a, out),
            }
        }
        Command::Send(a) => send(a, out),
        Command::Receive(a) => receive(a, out),
        Command::RunRelayServer(a) => relay(a, out),
        Command::Netcheck(a) => netcheck(a),
        Command::Partials(a) => {
            let out = config_file::load().ok().and_then(|l| l.file.out);
            partials::run(&a, &out.unwrap_or_else(|| ".".into()))
        }
    })
}

/// Print what the network allows; exit 2 when the relay cannot be reached.
fn netcheck(a: NetcheckArgs) -> u8 {
    let report = backend::block_on(backend::netcheck(&a.server, a.ca_file.as_deref(), &a.stun));
    let relay = escape(&report.relay);
    let reachable = match &report.relay_open {
        Ok(t) => {
            println!(
                "relay {relay}: reachable, connection opened in {:.1} ms",
                t.as_secs_f64() * 1000.0
            );
            true
        }
        Err(e) => {
            println!("relay {relay}: not reachable: {}", escape(e));
            false
        }
    };
    for (i, answer) in report.stun.iter().enumerate() {
        let which = match i {
            0 => "the relay's STUN port",
            1 => "the relay's second STUN port",
            _ => "STUN server",
        };
        match &answer.result {
            Ok((mapped, t)) => println!(
                "UDP to {which} {}: public address {mapped} ({:.1} ms)",
                answer.server,
                t.as_secs_f64() * 1000.0
            ),
            Err(e) => println!("UDP to {which} {}: no answer: {}", answer.server, escape(e)),
        }
    }
    println!("NAT mapping: {}", report.mapping.explain());
    match report.ipv6 {
        Some(ip) => println!("IPv6: global address {ip}"),
        None => println!("IPv6: no global address"),
    }
    println!("verdict: {}", report.verdict());
    if reachable {
        0
    } else {
        EXIT_RELAY
    }
}

/// `config`: the effective defaults and their sources.
fn show_config() -> u8 {
    let loaded = match config_file::load() {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    match &loaded.path {
        Some(path) => println!(
            "config file: {} ({})",
            shown(path),
            if loaded.found { "found" } else { "not found" }
        ),
        None => println!("config file: none (this system has no configuration directory)"),
    }
    let file = &loaded.file;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let from_file = "config file";
    let row = |key: &str, value: Option<String>, from: &str| {
        let value = value.unwrap_or_else(|| "(none)".to_owned());
        println!("{key:<11} = {:<40} ({from})", escape(&value));
    };
    let (relay, from) = match (env(args::RELAY_ENV), &file.relay) {
        (Some(v), _) => (Some(v), format!("environment {}", args::RELAY_ENV)),
        (None, Some(v)) => (Some(v.clone()), from_file.to_owned()),
        (None, None) => (None, "default".to_owned()),
    };
    row("relay", relay.clone(), &from);
    let (proxy, from) = match backend::proxy::from_env_or(
        relay.as_deref().unwrap_or("wss://relay.invalid"),
        |name| std::env::var(name).ok(),
        file.proxy.clone().map(|p| (from_file, p)),
    ) {
        Some((name, url)) if name == from_file => (Some(url), name.to_owned()),
        Some((name, url)) => (Some(url), format!("environment {name}")),
        None => (None, "default".to_owned()),
    };
    row(
        "proxy",
        proxy.map(|p| backend::proxy::hide_password(&p)),
        &from,
    );
    let source = |set: bool| if set { from_file } else { "default" };
    row(
        "ca_file",
        file.ca_file.as_ref().map(|p| p.display().to_string()),
        source(file.ca_file.is_some()),
    );
    row(
        "encrypt",
        Some(file.encrypt.unwrap_or(false).to_string()),
        source(file.encrypt.is_some()),
    );
    row(
        "out",
        Some(
            file.out
                .as_ref()
                .map_or(".".to_owned(), |p| p.display().to_string()),
        ),
        source(file.out.is_some()),
    );
    // The token itself is never shown, only whether one is set and where.
    let (token, from) = match (env(args::RELAY_TOKEN_ENV), &file.relay_token) {
        (Some(_), _) => (
            Some("(set)"),
            format!("environment {}", args::RELAY_TOKEN_ENV),
        ),
        (None, Some(_)) => (Some("(set)"), from_file.to_owned()),
        (None, None) => (None, "default".to_owned()),
    };
    row("relay_token", token.map(str::to_owned), &from);
    0
}

/// `completions SHELL`: the script on stdout.
fn completions(a: &CompletionsArgs) -> u8 {
    use clap::CommandFactory;
    use clap_complete::Shell as S;
    let shell = match a.shell {
        args::Shell::Bash => S::Bash,
        args::Shell::Zsh => S::Zsh,
        args::Shell::Fish => S::Fish,
        args::Shell::Powershell => S::PowerShell,
    };
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "p2p-copy", &mut std::io::stdout());
    0
}

/// `man`: the manual page on stdout, with a section per subcommand.
fn man() -> u8 {
    use clap::CommandFactory;
    use std::io::Write;
    let cmd = Cli::command();
    let render = || -> std::io::Result<Vec<u8>> {
        let mut page = Vec::new();
        let man = clap_mangen::Man::new(cmd.clone());
        man.render_title(&mut page)?;
        man.render_name_section(&mut page)?;
        man.render_synopsis_section(&mut page)?;
        man.render_description_section(&mut page)?;
        man.render_options_section(&mut page)?;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("p2p-copy {}", sub.get_name());
            writeln!(page, ".SH \"{}\"", name.to_uppercase())?;
            // The subcommand's own sections, one level down.
            let mut part = Vec::new();
            let man = clap_mangen::Man::new(sub.clone().bin_name(name));
            man.render_synopsis_section(&mut part)?;
            man.render_description_section(&mut part)?;
            man.render_options_section(&mut part)?;
            man.render_extra_section(&mut part)?;
            let part = String::from_utf8_lossy(&part).replace(".SH ", ".SS ");
            page.extend_from_slice(part.as_bytes());
        }
        man.render_extra_section(&mut page)?;
        man.render_version_section(&mut page)?;
        Ok(page)
    };
    let written = render().and_then(|page| {
        let mut out = std::io::stdout().lock();
        out.write_all(&page)?;
        out.flush()
    });
    match written {
        Ok(()) => 0,
        // A closed pipe (`p2p-copy man | head`) is not an error worth a message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("error: cannot write the manual page: {e}");
            EXIT_LOCAL
        }
    }
}

fn send(a: SendArgs, out: OutputArgs) -> u8 {
    let (mut found, files) = a.rendezvous();
    let first = a.args.first().and_then(|f| f.to_str());
    let kind = match usage_ok(codes::sender_code(&mut found, a.code_words.into())) {
        Ok(kind) => kind,
        Err(exit) => return exit,
    };
    let (server, code) = match usage_ok(usage::check_client(&a.client, found, first)) {
        Ok(ok) => ok,
        Err(exit) => return exit,
    };
    let pipe = match a.pipe(&files) {
        Ok(pipe) => pipe,
        Err(msg) => return fail(&msg, EXIT_USAGE),
    };
    if files.is_empty() && pipe.is_none() {
        return fail(
            "no files given: name the files and/or directories to send",
            EXIT_USAGE,
        );
    }
    let mut config = a.client.config(server, code);
    if kind != codes::SendCode::V1 {
        config.pake = true;
        config.pair_timeout = a.client.ttl(true);
    }
    started(Role::Send, Some(&config.server));
    if let codes::SendCode::Generated(code) = &kind {
        codes::announce(code, &config.server, config.pair_timeout.as_secs());
    }
    let interrupts = Interrupts::install();
    let progress = Progress::new(Role::Send, Style::detect(out.quiet), out.verbose);
    let mut opts = a.options();
    opts.pipe = pipe;
    let transfer = backend::send(config, files, opts, progress.callback());
    let ended = backend::block_on(interrupts.run(transfer));
    finish(
        &progress,
        ended,
        send_interrupted(progress.paired()),
        Role::Send,
    )
}

/// What an interrupted `send` says, once the receiver was seen (`paired`) or before.
fn send_interrupted(paired: bool) -> &'static str {
    if paired {
        "interrupted; the receiver keeps what it got: run the same send with --resume to continue"
    } else {
        "interrupted while waiting for the receiver; nothing was sent"
    }
}

/// What an interrupted `receive` into `out` says, once the sender was seen (`paired`)
/// or before.
fn receive_interrupted(paired: bool, out: &Path) -> String {
    // Before the manifest no file was opened, so there is nothing to resume.
    if paired {
        format!(
            "interrupted; partial files stay in {} as .<name>.p2p-copy-part: receive again \
             and have the sender use --resume to continue",
            shown(out)
        )
    } else {
        "interrupted while waiting for the sender; nothing was received".to_owned()
    }
}

fn receive(a: ReceiveArgs, out: OutputArgs) -> u8 {
    let out_dir = a.out_dir();
    let first = a.args.first().map(String::as_str);
    let checked = match (a.extra_argument(), first) {
        // p2p-copy 0.1.x's `receive SERVER CODE` with something other than a URL first.
        (Some(extra), Some(first)) => Err(usage::check_url(first)
            .err()
            .unwrap_or_else(|| usage::Usage(format!("unexpected argument {}", escape(extra))))),
        _ => {
            let mut found = a.rendezvous();
            codes::receiver_code(&mut found)
                .and_then(|pake| usage::check_client(&a.client, found, first).map(|ok| (ok, pake)))
        }
    };
    let checked = match a.stdout {
        true => checked,
        false => checked.and_then(|ok| usage::check_out(&out_dir).map(|()| ok)),
    };
    let ((server, code), pake) = match usage_ok(checked) {
        Ok(ok) => ok,
        Err(exit) => return exit,
    };
    let interrupts = Interrupts::install();
    let progress = Progress::new(Role::Receive, Style::detect(out.quiet), out.verbose);
    let mut config = a.client.config(server, code);
    started(Role::Receive, Some(&config.server));
    config.pake = pake;
    config.pair_timeout = a.client.ttl(pake);
    config.keep_existing = a.no_clobber;
    config.windows_names |= a.windows_names;
    let shown = Arc::new(OnceLock::from(progress.clone()));
    config.consent = consent_asker(a.yes, a.no_clobber, config.windows_names, shown);
    config.to_stdout = a.stdout;
    let wrote = Arc::new(AtomicBool::new(false));
    let on_event = {
        let (wrote, mut show) = (wrote.clone(), progress.callback());
        move |ev: backend::SessionEvent| {
            if matches!(ev.event, Event::Progress { delta, .. } if delta > 0) {
                wrote.store(true, Ordering::Relaxed);
            }
            show(ev);
        }
    };
    let transfer = backend::receive(config, out_dir.clone(), on_event);
    let ended = backend::block_on(interrupts.run(transfer));
    let interrupted = match a.stdout {
        true => "interrupted".to_owned(),
        false => receive_interrupted(progress.paired(), &out_dir),
    };
    let exit = finish(&progress, ended, &interrupted, Role::Receive);
    if a.stdout && exit != 0 && wrote.load(Ordering::Relaxed) {
        eprintln!(
            "note: what was already written to standard output is incomplete (every piece of it was verified) and cannot be taken back"
        );
    }
    exit
}

/// The question `receive` asks before accepting, on a terminal without `--yes`, with
/// the progress display (once there is one) out of its way.
fn consent_asker(
    yes: bool,
    keep: bool,
    windows_names: bool,
    progress: Arc<OnceLock<Progress>>,
) -> Option<backend::ConsentAsk> {
    if !consent::wanted(yes) {
        return None;
    }
    Some(backend::ConsentAsk(Arc::new(move |offer| {
        match progress.get() {
            Some(p) => p.suspend(|| consent::ask(offer, keep, windows_names)),
            None => consent::ask(offer, keep, windows_names),
        }
    })))
}

/// `send` and `receive` with the configuration file's settings under their flags; a
/// broken file is a usage error.
fn with_config(command: Command) -> Result<Command, u8> {
    let load = || usage_ok(config_file::load().map(|l| l.file).map_err(usage::Usage));
    Ok(match command {
        Command::Send(mut a) => {
            a.client.file = load()?;
            Command::Send(a)
        }
        Command::Receive(mut a) => {
            a.client.file = load()?;
            Command::Receive(a)
        }
        other => other,
    })
}

/// Print a usage mistake found before connecting; its exit code is the error.
fn usage_ok<T>(checked: Result<T, usage::Usage>) -> Result<T, u8> {
    checked.map_err(|usage::Usage(msg)| fail(&msg, EXIT_USAGE))
}

/// Print an error on stderr (and as the `error` event with `--json`); returns `exit`.
fn fail(msg: &str, exit: u8) -> u8 {
    eprintln!("error: {msg}");
    json::error(msg, exit);
    exit
}

/// The `start` event of `--json`: the role, this version and the relay (none without
/// one).
fn started(role: Role, relay: Option<&str>) {
    json::emit(
        "start",
        &[
            ("role", serde_json::json!(role.name())),
            ("version", serde_json::json!(env!("CARGO_PKG_VERSION"))),
            ("relay", serde_json::json!(relay)),
        ],
    );
}

/// Clear the progress display, print the summary or the error, and pick the exit code.
fn finish(
    progress: &Progress,
    ended: Ended<Result<Summary, TransferError>>,
    interrupted: &str,
    role: Role,
) -> u8 {
    progress.finish();
    match ended {
        Ended::Done(Ok(summary)) => {
            let exit = if summary.not_delivered.is_empty() {
                0
            } else {
                EXIT_NOT_DELIVERED
            };
            progress.summary(&summary, exit);
            accounted(&summary, role, progress.is_quiet());
            exit
        }
        Ended::Done(Err(e)) => {
            let code = u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE);
            if code == EXIT_DECLINED {
                // Not a fault: someone said no.
                eprintln!("{e}");
                json::error(&e.to_string(), code);
                return code;
            }
            if role == Role::Send && matches!(e, TransferError::Session(_)) && code == 6 {
                fail(&format!("{e} (--skip-errors sends the other files)"), code)
            } else {
                fail(&e.to_string(), code)
            }
        }
        Ended::Interrupted => {
            eprintln!("{interrupted}");
            json::error(interrupted, EXIT_INTERRUPTED);
            EXIT_INTERRUPTED
        }
    }
}

fn relay(a: RelayArgs, out: OutputArgs) -> u8 {
    let config = match a.config() {
        Ok(c) => c,
        Err(TlsUsage(msg)) => {
            eprintln!("error: {msg}");
            return EXIT_USAGE;
        }
    };
    let interrupts = Interrupts::install();
    // With a token file the relay itself re-reads it on SIGHUP.
    let hangups = config.ops.token_file.is_none().then(interrupt::log_hangups);
    let scheme = if config.tls.is_some() { "wss" } else { "ws" };
    let place = format!("{}:{}", escape(&config.host), config.port);
    backend::block_on(async {
        let server = match RelayServer::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                // Through the log, so that --log-format json keeps every line JSON.
                log::error!("cannot start the relay on {place}: {e}");
                return EXIT_RELAY;
            }
        };
        if !out.quiet {
            // On stdout so scripts (and tests) can read the port chosen for port 0.
            println!("relay listening on {scheme}://{}", server.local_addr());
            for addr in server.stun_addrs() {
                println!("relay answering STUN on udp {addr}");
            }
            if let Some(addr) = server.metrics_addr() {
                println!("relay metrics on http://{addr}/metrics");
            }
            if server.requires_token() {
                println!("relay requires a token");
            }
        }
        // Only a signal ends the relay: it then stops accepting, lets running pairs
        // finish within --drain-timeout, and closes the rest with a reason. A second
        // signal, caught from the first one on, closes them at once.
        let (first_tx, first_rx) = async_channel::bounded(1);
        let stop = async move {
            let signalled = async {
                interrupts.wait().await;
                let _ = first_tx.try_send(Interrupts::install());
            };
            match hangups {
                Some(h) => futures_lite::future::or(signalled, h).await,
                None => signalled.await,
            }
        };
        let hurry = async move {
            if let Ok(again) = first_rx.recv().await {
                again.wait().await;
            }
        };
        match server.run_draining(stop, hurry).await {
            Ok(()) => {
                log::info!("relay stopped");
                0
            }
            Err(e) => {
                log::error!("the relay stopped: {e}");
                EXIT_RELAY
            }
        }
    })
}

/// Say what was left out, what did not arrive and whether the receiver confirmed
/// delivery, for a transfer that ran to its end (it exits [`EXIT_NOT_DELIVERED`] when
/// a file was not delivered).
fn accounted(summary: &Summary, role: Role, quiet: bool) {
    if !quiet {
        eprintln!("path: {}", escape(&summary.path.to_string()));
        for (path, why) in &summary.excluded {
            eprintln!("left out: {}: {}", escape(path), escape(why));
        }
        if role == Role::Send && summary.unconfirmed > 0 {
            eprintln!(
                "delivery not confirmed: the receiver runs p2p-copy 0.1.x, which does not \
                 report what it stored (the files were sent in full)"
            );
        } else if role == Role::Send && summary.confirmed > 0 && summary.not_delivered.is_empty() {
            eprintln!("delivery confirmed: the receiver has every file in place");
        }
    }
    if summary.not_delivered.is_empty() {
        return;
    }
    eprintln!(
        "error: {} {} not delivered:",
        summary.not_delivered.len(),
        if summary.not_delivered.len() == 1 {
            "file was"
        } else {
            "files were"
        }
    );
    for (path, why) in &summary.not_delivered {
        eprintln!("  {}: {}", escape(path), escape(why));
    }
}

/// A local path as the user can read it, with terminal controls escaped.
fn shown(p: &Path) -> String {
    escape(&p.display().to_string())
}
