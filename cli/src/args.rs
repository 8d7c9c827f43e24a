//! The command line, compatible with `p2p-copy` 0.1.x (`send`, `receive`,
//! `run-relay-server` with the same arguments, options and defaults), plus options of our
//! own for output, timeouts, a private CA and the relay's limits.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use p2p_copy_core::relay::RelayConfig;

use crate::backend::{
    ClientConfig, CompressLevel, CompressMode, DirectMode, Pipe, RateLimit, RelayOps,
    RelayServerConfig, SendOptions, StunPorts,
};
use crate::config_file::FileConfig;

const AFTER_HELP: &str = "\
Without a code, send makes one like 7-guitar-rocket and prints the command that receives
it: the two sides prove they hold it with a PAKE, the relay learns nothing it could guess,
and the transfer is always encrypted. With the relay URL first (p2p-copy 0.1.x's form) a
code is hashed as p2p-copy 0.1.x does. A code of the form n=<N>=n<rest> (e.g.
n=4=nMySecret) moves the files over N parallel connections; both sides must use the same
code.

Exit codes: 0 ok, 1 usage or invalid settings, 2 relay or connection problem,
3 timeout (no peer: wrong code, mismatched --encrypt, other relay), 4 protocol violation
by the peer, 5 integrity failure, 6 local I/O error, 7 connection lost (the peer or the
relay went away), 8 not everything delivered (files skipped or not stored; the message
lists them), 9 no direct connection although --direct-only asked for one (or, with no
relay, the peer never reached), 10 wrong code (the sides hold different codes like
7-guitar-rocket) or, with no relay, the peer not authenticated (wrong code or ticket),
11 declined (the receiver answered no to Accept? [y/N]; on both sides), 12 unsupported
(standard input or --text to a receiver that cannot take them, such as p2p-copy 0.1.x:
nothing sent; receive --stdout offered more than one file: nothing written; a file list
over 2 MiB to a p2p-copy 0.1.x receiver: nothing sent), 130 interrupted (Ctrl-C).

The sender exits 0 only when every file was sent and, with a receiver of this version,
the receiver confirmed it put every file in place. A p2p-copy 0.1.x receiver cannot
confirm: the summary then says \"not confirmed\".";

/// p2p-copy — chunked file transfer over WebSocket relays (ws:// and wss://).
#[derive(Debug, Parser)]
#[command(name = "p2p-copy", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// How much to print.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send files and/or directories to the receiver that uses the same code.
    ///
    /// Directories are sent recursively (regular files only, sorted), under their own
    /// name. With --resume, files the receiver already has are skipped and partial files
    /// are completed.
    #[command(after_help = "Examples:\n  \
        p2p-copy send wss://relay.example.com:443 mycode /path/to/file.txt\n  \
        p2p-copy send wss://relay.example.com:443 mycode /path/to/dir --compress on --resume\n  \
        p2p-copy send ws://localhost:8765 mycode *.txt --encrypt")]
    Send(SendArgs),
    /// Receive files from the sender that uses the same code, into --out.
    ///
    /// Files are written as .<name>.p2p-copy-part and renamed into place once complete
    /// and verified; an interrupted transfer leaves those partial files for the sender's
    /// --resume.
    #[command(after_help = "Examples:\n  \
        p2p-copy receive wss://relay.example.com:443 mycode\n  \
        p2p-copy receive ws://localhost:8765 mycode --out /tmp/downloads --encrypt")]
    Receive(ReceiveArgs),
    /// Run the relay that pairs a sender and a receiver by code and forwards their data.
    ///
    /// It stores nothing. TLS (wss://) is on unless --no-tls is given, and then needs
    /// --certfile and --keyfile. On Ctrl-C or SIGTERM it stops accepting at once, lets
    /// running pairs finish within --drain-timeout and exits; SIGHUP re-reads
    /// --token-file.
    #[command(after_help = "Examples:\n  \
        p2p-copy run-relay-server localhost 8765 --no-tls\n  \
        p2p-copy run-relay-server 0.0.0.0 443 --tls --certfile cert.pem --keyfile key.pem\n  \
        p2p-copy run-relay-server 127.0.0.1 8765 --no-tls --metrics 127.0.0.1:9100 \
        --token-file /etc/p2p-copy/tokens --max-rate 50M --log-format json")]
    RunRelayServer(RelayArgs),
    /// Check what this network allows: the relay over ws/wss and its latency, UDP to
    /// its STUN ports, this side's public address, the NAT's mapping behaviour (whether
    /// direct connections are likely) and IPv6.
    #[command(after_help = "Examples:\n  \
        p2p-copy netcheck wss://relay.example.com:443\n  \
        p2p-copy netcheck ws://localhost:8765 --stun stun.example.org:3478")]
    Netcheck(NetcheckArgs),
    /// List the partial files a stopped transfer left below DIR (the receiver's
    /// .<name>.p2p-copy-part files): name, bytes held, the sender's size when recorded,
    /// and age. With --clean, remove them (only them).
    #[command(after_help = "Examples:\n  \
        p2p-copy partials inbox\n  \
        p2p-copy partials --clean --older-than 7d inbox")]
    Partials(PartialsArgs),
    /// Show the settings send and receive use by default, and where each comes from:
    /// the environment, the configuration file, or the built-in default.
    #[command(after_help = "The configuration file is TOML, at the platform's \
        configuration directory\n(~/.config/p2p-copy/config.toml on Linux) or where \
        P2P_COPY_CONFIG points:\n\n  \
        relay = \"wss://relay.example:443\"\n  \
        ca_file = \"/etc/ssl/our-relay.pem\"\n  \
        proxy = \"http://proxy.corp:3128\"\n  \
        encrypt = true\n  \
        out = \"/data/inbox\"\n\n\
        A flag wins over the environment, which wins over the file.")]
    Config,
    /// Print a completion script for a shell, generated from this command line.
    #[command(after_help = "Install, e.g.:\n  \
        p2p-copy completions bash > ~/.local/share/bash-completion/completions/p2p-copy\n  \
        p2p-copy completions zsh > ~/.zfunc/_p2p-copy   (with fpath+=~/.zfunc)\n  \
        p2p-copy completions fish > ~/.config/fish/completions/p2p-copy.fish\n  \
        p2p-copy completions powershell >> $PROFILE")]
    Completions(CompletionsArgs),
    /// Print the manual page (roff), generated from this command line.
    #[command(after_help = "Install, e.g.:\n  \
        p2p-copy man > /usr/local/share/man/man1/p2p-copy.1\n  \
        p2p-copy man | man -l -")]
    Man,
}

/// `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The shells `completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
    /// PowerShell.
    Powershell,
}

/// `partials`.
#[derive(Debug, Args)]
pub struct PartialsArgs {
    /// The directory to look in, and below [default: the configuration file's `out`,
    /// or the current directory].
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Remove the partial files listed (nothing else is ever removed). A later
    /// transfer with --resume then starts those files over.
    #[arg(long)]
    pub clean: bool,
    /// Only partial files not written to for this long: a number with s, m, h or d
    /// (7d, 12h); a plain number is seconds.
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub older_than: Option<Duration>,
}

/// An age such as `7d`, `12h`, `30m`, `45s` or `45`.
fn parse_age(s: &str) -> Result<Duration, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not an age such as 7d, 12h, 30m or 45s"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?} is not an age such as 7d, 12h, 30m or 45s")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

/// `netcheck`.
#[derive(Debug, Args)]
pub struct NetcheckArgs {
    /// Relay URL, e.g. wss://relay.example:443 or ws://localhost:8765.
    pub server: String,
    /// Also trust the CA certificates in this PEM file for wss://.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Also ask this STUN server (HOST:PORT) for this side's public address; repeatable.
    #[arg(long, value_name = "HOST:PORT")]
    pub stun: Vec<String>,
}

/// Verbosity, accepted before or after the subcommand.
#[derive(Debug, Args, Clone, Copy)]
pub struct OutputArgs {
    /// Print nothing but errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print every file and what the relay does.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

/// What `send` and `receive` share: where the relay is, the code, encryption, timeouts.
///
/// The relay and the code are given either as the first positional arguments, as
/// p2p-copy 0.1.x takes them (`send SERVER CODE FILES…`, `receive SERVER CODE`), or by
/// `--relay` (or `P2P_COPY_RELAY`) and `--code`; [`SendArgs::rendezvous`] and
/// [`ReceiveArgs::rendezvous`] pick whichever was given.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Relay URL to use when the first argument is not one (also P2P_COPY_RELAY).
    #[arg(long, value_name = "URL")]
    pub relay: Option<String>,
    /// The shared code, when it is not given as an argument.
    #[arg(long, value_name = "CODE")]
    pub code: Option<String>,
    /// Encrypt end to end (AES-256-GCM, key derived from the code); both sides must agree.
    #[arg(long, overrides_with = "no_encrypt")]
    pub encrypt: bool,
    /// Do not encrypt (the default).
    #[arg(long = "no-encrypt", overrides_with = "encrypt")]
    pub no_encrypt: bool,
    /// Also trust the CA certificates in this PEM file, or the relay's self-signed
    /// certificate itself, for wss://.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Give up when no peer comes within this many seconds: the sender waiting for a
    /// receiver, the receiver for a sender (also: how long a code like
    /// 7-guitar-rocket stays valid). --timeout is another name for it [default: 600
    /// with a code like 7-guitar-rocket, else 300, as p2p-copy 0.1.x waits]
    #[arg(long, visible_alias = "timeout", value_name = "SECS", value_parser = parse_secs)]
    pub ttl: Option<Duration>,
    /// Give up when the peer goes silent mid-transfer for this many seconds.
    #[arg(long, value_name = "SECS", default_value = "120", value_parser = parse_secs)]
    pub idle_timeout: Duration,
    /// Never leave the relay: no direct connection, no UDP at all (for sites that
    /// forbid UDP, or to keep every byte on the relay).
    #[arg(long, conflicts_with = "direct_only")]
    pub relay_only: bool,
    /// Send file data only over a direct connection with the peer: fail (exit 9) rather
    /// than fall back to the relay.
    #[arg(long)]
    pub direct_only: bool,
    /// Move file data as p2p-copy 0.1.x does (SHA-256 chain, AES-256-GCM with 32-byte
    /// nonces), also with a peer of this project, instead of the fast data path (BLAKE3,
    /// AES-256-GCM with 96-bit nonces). Either side can ask for it.
    #[arg(long)]
    pub v1_data_path: bool,
    /// A STUN server (HOST:PORT) to learn this side's public address from, besides the
    /// relay's own; repeat for more.
    #[arg(long, value_name = "HOST:PORT")]
    pub stun: Vec<String>,
    /// Reach the relay through this proxy: http://[user:pass@]host:port (HTTP CONNECT)
    /// or socks5://[user:pass@]host:port. Without it: HTTPS_PROXY for wss://, http_proxy
    /// for ws://, then ALL_PROXY, unless NO_PROXY names the relay; --proxy "" turns
    /// those off.
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// How long the direct-connection attempt may run before the transfer stays on the
    /// relay.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub direct_timeout: Duration,
    /// Move file data no faster than RATE bytes a second (e.g. 400k, 20M, 1.5Mi; at
    /// least 64k), over all connections of the transfer; either side may set it.
    #[arg(long, value_name = "RATE", value_parser = limit_rate)]
    pub limit_rate: Option<u64>,
    /// After a lost relay connection, reconnect this many times (with a peer of this
    /// project; a code like 7-guitar-rocket runs its PAKE again) and resume where the
    /// receiver stands; 0 turns reconnecting off. Transfers without a relay do not
    /// reconnect.
    #[arg(long, value_name = "N", default_value = "5")]
    pub max_retries: u32,
    /// The wait before the first reconnect (e.g. 1s, 500ms), doubling with each further
    /// one up to 30 s, with jitter.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_backoff)]
    pub retry_backoff: Duration,
    /// Do not keep permission bits, modification times and empty folders. They are
    /// kept by default between two copies of this p2p-copy (never setuid, setgid or
    /// sticky bits); either side may turn it off.
    #[arg(long)]
    pub no_metadata: bool,
    /// The configuration file's settings, below the flags and the environment.
    #[arg(skip)]
    pub file: FileConfig,
    /// The relay's access token.
    #[command(flatten)]
    pub token: RelayTokenArgs,
}

/// The relay's access token, for relays run with `--token-file`.
#[derive(Debug, Args)]
pub struct RelayTokenArgs {
    /// Access token for a relay that requires one [default: $P2P_COPY_RELAY_TOKEN]. It
    /// is sent as an Authorization header and never printed; the environment variable
    /// keeps it out of the process list.
    #[arg(long, value_name = "TOKEN")]
    pub relay_token: Option<String>,
}

/// The environment variable that holds the relay token when `--relay-token` is not given.
pub const RELAY_TOKEN_ENV: &str = "P2P_COPY_RELAY_TOKEN";

impl RelayTokenArgs {
    /// The token to send: `--relay-token`, else `$P2P_COPY_RELAY_TOKEN`, else
    /// `from_config` (the configuration file's value, for the caller that reads one).
    /// Empty values count as none.
    pub fn resolve(&self, from_config: Option<String>) -> Option<String> {
        self.relay_token
            .clone()
            .or_else(|| std::env::var(RELAY_TOKEN_ENV).ok())
            .or(from_config)
            .filter(|t| !t.trim().is_empty())
    }
}

/// How long a code like 7-guitar-rocket waits for the peer by default.
pub const TTL_PAKE_SECS: u64 = 600;
/// How long a v1 code waits for the peer by default (p2p-copy 0.1.x's sender waits 300 s).
pub const TTL_V1_SECS: u64 = 300;

/// The environment variable that names the default relay.
pub const RELAY_ENV: &str = "P2P_COPY_RELAY";

/// Where the peer is met and by which code, once the arguments are sorted out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rendezvous {
    /// The relay URL: from the arguments, `--relay`, or [`RELAY_ENV`].
    pub server: Option<String>,
    /// The code: from the arguments or `--code`.
    pub code: Option<String>,
    /// The relay came first, as p2p-copy 0.1.x takes it: the code is a v1 code,
    /// whatever its shape.
    pub v1_form: bool,
}

/// Whether a positional argument is a relay URL rather than a code or a file: it names a
/// scheme, as every relay URL must (`ws://`, `wss://`; other schemes are refused with a
/// message later, not taken for files).
fn is_url(arg: &str) -> bool {
    arg.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    })
}

impl ClientArgs {
    /// The proxy for the relay at `server`: `--proxy`, else the environment's, else the
    /// configuration file's.
    pub fn proxy_for(&self, server: &str) -> Option<String> {
        match &self.proxy {
            Some(url) if url.is_empty() => None,
            Some(url) => Some(url.clone()),
            None => crate::backend::proxy::from_env_or(
                server,
                |name| std::env::var(name).ok(),
                self.file.proxy.clone().map(|p| ("config file", p)),
            )
            .map(|(_, url)| url),
        }
    }

    /// `--encrypt` or `--no-encrypt`, else the configuration file's `encrypt`.
    pub fn encrypt(&self) -> bool {
        match (self.encrypt, self.no_encrypt) {
            (false, false) => self.file.encrypt.unwrap_or(false),
            (on, _) => on,
        }
    }

    /// How long to wait for the peer: `--ttl` (or `--timeout`), else the default for
    /// the kind of code (`pake`: one like 7-guitar-rocket).
    pub fn ttl(&self, pake: bool) -> Duration {
        self.ttl.unwrap_or(Duration::from_secs(if pake {
            TTL_PAKE_SECS
        } else {
            TTL_V1_SECS
        }))
    }

    /// `--ca-file`, else the configuration file's.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.ca_file.clone().or_else(|| self.file.ca_file.clone())
    }

    /// The relay and code from the options and the environment, for the positionals
    /// that did not name them.
    fn fill(&self, mut found: Rendezvous) -> Rendezvous {
        if found.server.is_none() {
            found.server = self
                .relay
                .clone()
                .or_else(|| std::env::var(RELAY_ENV).ok().filter(|s| !s.is_empty()))
                .or_else(|| self.file.relay.clone());
        }
        if found.code.is_none() {
            found.code.clone_from(&self.code);
        }
        found
    }

    /// The runtime's client configuration, for the relay at `server` and `code`.
    pub fn config(&self, server: String, code: String) -> ClientConfig {
        let mut cfg = ClientConfig::new(server, code);
        cfg.encrypt = self.encrypt();
        cfg.ca_file = self.ca_file();
        cfg.pair_timeout = self.ttl(false);
        cfg.idle_timeout = self.idle_timeout;
        cfg.direct.mode = match (self.relay_only, self.direct_only) {
            (true, _) => DirectMode::RelayOnly,
            (_, true) => DirectMode::DirectOnly,
            _ => DirectMode::Auto,
        };
        cfg.direct.stun = self.stun.clone();
        cfg.fast_data = !self.v1_data_path;
        cfg.proxy = self.proxy_for(&cfg.server);
        cfg.direct.timeout = self.direct_timeout;
        cfg.reconnect.max_retries = self.max_retries;
        cfg.reconnect.backoff = self.retry_backoff;
        // A configuration file's token goes here, as the last fallback.
        cfg.relay_token = self.token.resolve(self.file.relay_token.clone());
        cfg.limit_rate = self.rate_limit();
        cfg.metadata = !self.no_metadata;
        cfg
    }

    /// `--limit-rate`, as the runtime's limit.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.limit_rate.map(RateLimit::new)
    }
}

/// `send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Relay, code, encryption and timeouts.
    #[command(flatten)]
    pub client: ClientArgs,
    /// [SERVER CODE] FILES…: the relay URL and the code (unless given by --relay and
    /// --code), then the files and/or directories to send; '-' alone sends standard
    /// input as it comes (to a receiver of this p2p-copy; see --name).
    // `OsString`, not `PathBuf`: clap refuses an empty path, and an empty code must get
    // its own message.
    #[arg(required_unless_present = "text", value_name = "FILES")]
    pub args: Vec<OsString>,
    /// Send TEXT (at most 64 KiB) instead of files: the receiver prints it on its
    /// standard output. Needs a receiver of this p2p-copy (p2p-copy 0.1.x: exit 12,
    /// nothing sent).
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["resume", "skip_errors"])]
    pub text: Option<String>,
    /// With '-': the name the receiver stores standard input under [default: stdin];
    /// with --text: the text's name in progress and JSON [default: text].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Compress with zstd: auto decides per file from its first MiB.
    #[arg(long, value_enum, default_value_t = Compress::Auto)]
    pub compress: Compress,
    /// zstd level of compressed pieces, 1 to 19 [default: adaptive, 1 to 3: lower while
    /// the connection waits for compression, higher while data waits for the
    /// connection]. Any level suits every receiver.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=19))]
    pub compress_level: Option<i32>,
    /// Skip files the receiver already has and complete partial ones.
    #[arg(long, overrides_with = "no_resume")]
    pub resume: bool,
    /// Send every file whole (the default).
    #[arg(long = "no-resume", overrides_with = "resume")]
    pub no_resume: bool,
    /// Skip what cannot be sent (a missing path, an unreadable file, a file that changes
    /// while being sent, a name that is not UTF-8 or too long) and send the rest; the
    /// summary lists what was skipped and the exit code is 8. Without it the first such
    /// file stops the transfer.
    #[arg(long)]
    pub skip_errors: bool,
    /// Send the content of files that symbolic links point to (also outside the given
    /// folders). Without it links are never followed: they are skipped with a warning.
    #[arg(short = 'L', long)]
    pub follow_symlinks: bool,
    /// Leave out files and directories matching GLOB, a .gitignore-style pattern
    /// matched against the names as sent (DIR/sub/file): without a '/' it matches a
    /// name at any depth ('*.log', 'node_modules'), with one it matches from the top
    /// ('src/build', '/src/tmp'), a trailing '/' matches directories only; repeatable.
    #[arg(long, value_name = "GLOB", value_parser = exclude_pattern)]
    pub exclude: Vec<String>,
    /// Leave out what the .gitignore files inside the sent directories ignore (each
    /// applies to its directory and below, as in git), and .git directories.
    #[arg(long)]
    pub gitignore: bool,
    /// Words in a generated code (2 to 8; each adds about 10.3 bits).
    #[arg(long, value_name = "N", default_value = "2", value_parser = clap::value_parser!(u8).range(2..=8))]
    pub code_words: u8,
    /// No relay at all: --peer, --listen, --local-port, --ntp.
    #[command(flatten)]
    pub serverless: ServerlessArgs,
    /// Print one JSON object per line on stdout (events, progress, summary, errors;
    /// schema in docs/JSON.md) and no human text there; messages stay on stderr.
    #[arg(long)]
    pub json: bool,
}

impl SendArgs {
    /// The relay and code, and the files to send: `SERVER CODE FILES…` when the first
    /// argument is a URL, otherwise every argument is a file.
    pub fn rendezvous(&self) -> (Rendezvous, Vec<PathBuf>) {
        let url = |p: &OsString| p.to_str().filter(|s| is_url(s)).map(str::to_owned);
        let (found, files) = match self.args.first().and_then(url) {
            Some(server) if self.args.len() >= 2 => {
                let code = self.args[1].to_string_lossy().into_owned();
                let found = Rendezvous {
                    server: Some(server),
                    code: Some(code),
                    v1_form: true,
                };
                (found, &self.args[2..])
            }
            _ => (Rendezvous::default(), &self.args[..]),
        };
        let files = files.iter().map(PathBuf::from).collect();
        (self.client.fill(found), files)
    }

    /// The runtime's send options.
    pub fn options(&self) -> SendOptions {
        SendOptions {
            compress: match self.compress {
                Compress::Auto => CompressMode::Auto,
                Compress::On => CompressMode::On,
                Compress::Off => CompressMode::Off,
            },
            compress_level: match self.compress_level {
                Some(n) => CompressLevel::Fixed(n),
                None => CompressLevel::Adaptive,
            },
            resume: self.resume,
            skip_errors: self.skip_errors,
            follow_symlinks: self.follow_symlinks,
            exclude: self.exclude.clone(),
            gitignore: self.gitignore,
            pipe: None,
        }
    }

    /// Standard input (`-` as the only file) or `--text` instead of files, checked:
    /// `None` for files.
    ///
    /// # Errors
    /// The usage mistake: `-` among other files, `--text` with files, `--name` without
    /// either, `--resume` with standard input, or a name that cannot be sent.
    pub fn pipe(&self, files: &[PathBuf]) -> Result<Option<Pipe>, String> {
        let stdin = files.iter().any(|f| f.as_os_str() == "-");
        let pipe =
            match (&self.text, stdin) {
                (Some(_), _) if !files.is_empty() => {
                    return Err("--text sends only the text: leave out the files".into())
                }
                (Some(text), _) => Pipe::Text {
                    name: self.name.clone().unwrap_or_else(|| "text".into()),
                    text: text.clone(),
                },
                (None, true) if files.len() > 1 => {
                    return Err("'-' (standard input) must be the only thing sent".into())
                }
                (None, true) if self.resume => return Err(
                    "--resume is not meaningful for standard input: it is read once and sent whole"
                        .into(),
                ),
                (None, true) => Pipe::Stdin {
                    name: self.name.clone().unwrap_or_else(|| "stdin".into()),
                },
                (None, false) if self.name.is_some() => {
                    return Err("--name names standard input ('-') or a --text".into())
                }
                (None, false) => return Ok(None),
            };
        let (Pipe::Stdin { name } | Pipe::Text { name, .. }) = &pipe;
        p2p_copy_core::path::SafePath::parse(name)
            .map_err(|why| format!("--name {}: {why}", p2p_copy_core::path::escape(name)))?;
        Ok(Some(pipe))
    }
}

/// `--compress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compress {
    /// Compress a file when its first piece shrinks below 95 %.
    Auto,
    /// Compress every file.
    On,
    /// Compress nothing.
    Off,
}

/// `receive`.
#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// Relay, code, encryption and timeouts.
    #[command(flatten)]
    pub client: ClientArgs,
    /// [SERVER] [CODE]: the relay URL (unless given by --relay) and the code (unless
    /// given by --code).
    #[arg(value_name = "ARGS", num_args = 0..=2)]
    pub args: Vec<String>,
    /// Output directory (created if missing) [default: the configuration file's `out`,
    /// or the current directory].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Write the one received file to standard output instead of a directory, each
    /// piece as soon as it is verified (all messages go to stderr). A transfer of more
    /// than one file is refused before anything is written (exit 12). If a later piece
    /// fails its check, what was written stays written and the exit code is non-zero.
    #[arg(long, conflicts_with_all = ["out", "json", "no_clobber"])]
    pub stdout: bool,
    /// Accept the transfer without asking. On a terminal, receive shows what the
    /// sender offers (files, size, top-level names, existing files it would replace)
    /// and asks "Accept? [y/N]" before anything is written; without a terminal it
    /// accepts, as p2p-copy 0.1.x does.
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Replace a file that is already there with the received one, once that is
    /// complete and verified (the default, as p2p-copy 0.1.x does).
    #[arg(long, overrides_with = "no_clobber")]
    pub overwrite: bool,
    /// Keep a file that is already there when the received one differs: the received
    /// copy is dropped, and the file is reported as kept (to the sender: not
    /// delivered).
    #[arg(long, overrides_with = "overwrite")]
    pub no_clobber: bool,
    /// Refuse names that Windows, exFAT or SMB cannot store, as a Windows receiver
    /// does; use it when receiving onto such a drive. Each file named with
    /// < > : " | ? *, a control character, a trailing dot or space, or a device name
    /// (CON, PRN, AUX, NUL, COM1-9, LPT1-9, also as con.txt) is not delivered (exit 8),
    /// nothing is created under its name, and every other file arrives. Always on when
    /// receiving on Windows.
    #[arg(long)]
    pub windows_names: bool,
    /// No relay at all: --peer, --listen, --local-port, --ntp.
    #[command(flatten)]
    pub serverless: ServerlessArgs,
    /// Print one JSON object per line on stdout (events, progress, summary, errors;
    /// schema in docs/JSON.md) and no human text there; messages stay on stderr.
    #[arg(long)]
    pub json: bool,
}

/// A transfer with no relay at all (`send` and `receive` alike). Each side prints its
/// ticket; `--peer` takes the peer's ticket or a bare `HOST:PORT` (then both sides give
/// the same `--code`). Without `--peer` or `--listen`, the peer's ticket is read from
/// standard input.
#[derive(Debug, Args, Clone, Default)]
pub struct ServerlessArgs {
    /// No relay: the peer's ticket (printed by the peer), or its HOST:PORT together with
    /// the same --code on both sides.
    #[arg(long, value_name = "TICKET|HOST:PORT", conflicts_with = "listen")]
    pub peer: Option<String>,
    /// No relay: the UDP port of this side, which the peer's --peer names [default: any
    /// free port].
    #[arg(long, value_name = "N")]
    pub local_port: Option<u16>,
    /// No relay: wait on UDP port PORT for the peer, which reaches this side with --peer
    /// (both sides give the same --code).
    #[arg(long, value_name = "PORT", conflicts_with = "local_port")]
    pub listen: Option<u16>,
    /// No relay: punch at the 10-second instants of this SNTP server's time instead of
    /// the local clock's.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub ntp: Option<String>,
}

impl ServerlessArgs {
    /// Whether any option of a transfer without a relay was given.
    pub fn given(&self) -> bool {
        self.peer.is_some()
            || self.local_port.is_some()
            || self.listen.is_some()
            || self.ntp.is_some()
    }
}

impl ReceiveArgs {
    /// `--out`, else the configuration file's `out`, else the current directory.
    pub fn out_dir(&self) -> PathBuf {
        self.out
            .clone()
            .or_else(|| self.client.file.out.clone())
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// The relay and code: `SERVER [CODE]` when the first argument is a URL, otherwise
    /// `CODE`.
    pub fn rendezvous(&self) -> Rendezvous {
        let mut found = Rendezvous::default();
        let mut rest = self.args.iter();
        let mut next = rest.next();
        if let Some(first) = next.filter(|a| is_url(a)) {
            found.server = Some(first.clone());
            found.v1_form = true;
            next = rest.next();
        }
        found.code = next.cloned();
        self.client.fill(found)
    }

    /// An argument that is neither the relay nor the code.
    pub fn extra_argument(&self) -> Option<&str> {
        let skip = usize::from(self.args.first().is_some_and(|a| is_url(a))) + 1;
        self.args.get(skip).map(String::as_str)
    }
}

/// `run-relay-server`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Host name or address to listen on.
    pub server_host: String,
    /// Port to listen on (0 picks a free one and prints it).
    pub server_port: u16,
    /// Serve wss:// (the default); needs --certfile and --keyfile.
    #[arg(long, overrides_with = "no_tls")]
    pub tls: bool,
    /// Serve plain ws://, e.g. on 127.0.0.1 or behind a TLS-terminating proxy.
    #[arg(long = "no-tls", overrides_with = "tls")]
    pub no_tls: bool,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "PEM")]
    pub certfile: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "PEM")]
    pub keyfile: Option<PathBuf>,
    /// Close a connection that does not say hello within this many seconds.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    pub hello_timeout: Duration,
    /// Close a client whose peer does not arrive within this many seconds.
    #[arg(long, value_name = "SECS", default_value = "600", value_parser = parse_secs)]
    pub wait_timeout: Duration,
    /// Most connections at once.
    #[arg(long, value_name = "N", default_value = "4096", value_parser = count)]
    pub max_connections: usize,
    /// Most connections at once from one client address.
    #[arg(long, value_name = "N", default_value = "64", value_parser = count)]
    pub max_per_address: usize,
    /// Answer STUN Binding requests on UDP port N and N+1 [default: the listener's port;
    /// 0 turns STUN off].
    #[arg(long, value_name = "N")]
    pub stun_port: Option<u16>,
    /// Operator settings: metrics, tokens, fair use, shutdown, logs.
    #[command(flatten)]
    pub ops: RelayOpsArgs,
}

/// The relay's operator settings.
#[derive(Debug, Args)]
pub struct RelayOpsArgs {
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics and a liveness check at
    /// /healthz (port 0 picks a free port and prints it).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Require an access token: one per line in FILE (blank lines and lines starting
    /// with # are skipped), re-read on SIGHUP. Clients give it with --relay-token, or
    /// in the URL as ?token=… (Python p2p-copy).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Refuse a client address's connections beyond N new ones a minute.
    #[arg(long, value_name = "N", value_parser = per_minute)]
    pub max_new_per_minute: Option<u32>,
    /// Forward at most RATE bytes a second per pair and per client address (e.g.
    /// 500k, 10M, 1Gi); faster clients are slowed down.
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    pub max_rate: Option<u64>,
    /// Close a pair, with a reason both clients print, once it has forwarded more than
    /// SIZE bytes (e.g. 10G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_bytes: Option<u64>,
    /// On SIGTERM or Ctrl-C, stop accepting at once and let running pairs finish for up
    /// to this many seconds before closing them; a second signal closes them at once.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_drain)]
    pub drain_timeout: Duration,
    /// Log as plain text lines or as one JSON object per line, for log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `info: …` lines.
    Text,
    /// One JSON object per line: time, level, message and fields.
    Json,
}

impl RelayOpsArgs {
    fn ops(&self) -> RelayOps {
        RelayOps {
            metrics: self.metrics,
            token_file: self.token_file.clone(),
            max_rate: self.max_rate,
            max_bytes: self.max_bytes,
            drain_timeout: self.drain_timeout,
        }
    }
}

/// Why the relay's settings cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub struct TlsUsage(pub &'static str);

impl RelayArgs {
    /// The runtime's relay configuration.
    ///
    /// # Errors
    /// TLS is on (the default) but the certificate or the key is missing.
    pub fn config(&self) -> Result<RelayServerConfig, TlsUsage> {
        let tls = match (self.no_tls, &self.certfile, &self.keyfile) {
            (true, _, _) => None,
            (false, Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (false, _, _) => {
                return Err(TlsUsage(
                    "TLS is on by default and needs --certfile and --keyfile; \
                     add --no-tls to serve plain ws://",
                ))
            }
        };
        let relay = RelayConfig {
            hello_timeout: self.hello_timeout,
            wait_timeout: self.wait_timeout,
            max_connections: self.max_connections,
            max_per_address: self.max_per_address,
            max_new_per_minute: self.ops.max_new_per_minute,
            ..RelayConfig::default()
        };
        Ok(RelayServerConfig {
            host: self.server_host.clone(),
            port: self.server_port,
            tls,
            relay,
            stun: match self.stun_port {
                None => StunPorts::SameAsListener,
                Some(0) => StunPorts::Off,
                Some(n) => StunPorts::Port(n),
            },
            ops: self.ops.ops(),
        })
    }
}

/// The slowest `--limit-rate`: a 1 MiB message then takes 16 s, well within the
/// default --idle-timeout of the peer that waits for it.
const MIN_LIMIT_RATE: u64 = 64_000;

/// A `--limit-rate`: a size a second, at least [`MIN_LIMIT_RATE`].
fn limit_rate(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        n if n < MIN_LIMIT_RATE => Err(format!(
            "`{s}` is too slow: data moves in pieces of up to 1 MiB, give at least 64k"
        )),
        n => Ok(n),
    }
}

/// An `--exclude` pattern the matcher accepts.
fn exclude_pattern(s: &str) -> Result<String, String> {
    crate::backend::check_exclude(s).map(|()| s.to_owned())
}

/// Seconds, whole or fractional, from 1 to 1e9.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if secs.is_nan() || secs < 1.0 {
        return Err(format!("`{s}` is too short: give at least 1 second"));
    }
    if secs > 1e9 {
        return Err(format!("`{s}` is too long: give at most 1e9 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A reconnect backoff: `1s`, `500ms` or plain seconds (`1.5`), from 10 ms to 30 s.
fn parse_backoff(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        _ => return Err(format!("`{s}`: give a duration such as 1s or 500ms")),
    };
    let secs = number
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("`{s}`: give a duration such as 1s or 500ms"))?
        * scale;
    if !(0.01..=30.0).contains(&secs) {
        return Err(format!("`{s}`: give between 10ms and 30s"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Seconds from 0 (no drain) to 1e9.
fn parse_drain(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(0.0) => Ok(Duration::ZERO),
        _ => parse_secs(s),
    }
}

/// A count of at least 1 that fits 32 bits.
fn per_minute(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a whole number from 1 to 4294967295")),
    }
}

/// A number of bytes, at least 1, with an optional suffix: k, M, G, T (powers of 1000)
/// or Ki, Mi, Gi, Ti (powers of 1024), optionally followed by B (and /s for a rate).
fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a size such as 500k, 10M, 1.5G or 1Gi");
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let factor: f64 = match unit {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let n: f64 = number.parse().map_err(|_| bad())?;
    let bytes = (n * factor).round();
    if !(1.0..=9e18).contains(&bytes) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// A count of at least 1.
fn count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a whole number of at least 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("p2p-copy").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn parse_err(args: &[&str]) -> clap::Error {
        Cli::try_parse_from(std::iter::once("p2p-copy").chain(args.iter().copied()))
            .expect_err("must be refused")
    }

    #[test]
    fn send_defaults_match_the_python_tool() {
        let Command::Send(a) = parse(&["send", "ws://h:1", "c", "a", "b/"]).command else {
            panic!("send")
        };
        let (found, files) = a.rendezvous();
        assert_eq!(found.server.as_deref(), Some("ws://h:1"));
        assert_eq!(found.code.as_deref(), Some("c"));
        assert_eq!(files, [PathBuf::from("a"), PathBuf::from("b/")]);
        let cfg = a.client.config("ws://h:1".into(), "c".into());
        assert!(!cfg.encrypt);
        assert_eq!(cfg.pair_timeout, Duration::from_secs(300));
        assert_eq!(
            a.options(),
            SendOptions {
                compress: CompressMode::Auto,
                resume: false,
                ..SendOptions::default()
            }
        );
    }

    #[test]
    fn send_accepts_every_python_option_spelling_anywhere() {
        let Command::Send(a) = parse(&[
            "send",
            "--encrypt",
            "ws://h:1",
            "c",
            "f",
            "--compress=on",
            "--resume",
            "g",
        ])
        .command
        else {
            panic!("send")
        };
        assert!(a.client.encrypt);
        assert_eq!(a.rendezvous().1, [PathBuf::from("f"), PathBuf::from("g")]);
        assert_eq!(
            a.options(),
            SendOptions {
                compress: CompressMode::On,
                resume: true,
                ..SendOptions::default()
            }
        );
        let Command::Send(a) = parse(&[
            "send",
            "ws://h:1",
            "c",
            "f",
            "--compress",
            "off",
            "--encrypt",
            "--no-encrypt",
            "--resume",
            "--no-resume",
        ])
        .command
        else {
            panic!("send")
        };
        assert!(!a.client.config("ws://h:1".into(), "c".into()).encrypt);
        assert_eq!(a.options().compress, CompressMode::Off);
        assert!(!a.options().resume);
    }

    #[test]
    fn relay_and_code_come_from_the_arguments_or_the_options() {
        // p2p-copy 0.1.x's form wins over --relay and --code.
        let Command::Send(a) = parse(&[
            "send",
            "--relay",
            "ws://other:2",
            "--code",
            "x",
            "wss://h:1",
            "c",
            "f",
        ])
        .command
        else {
            panic!("send")
        };
        let (found, files) = a.rendezvous();
        assert_eq!(found.server.as_deref(), Some("wss://h:1"));
        assert_eq!(found.code.as_deref(), Some("c"));
        assert_eq!(files, [PathBuf::from("f")]);
        // Without a URL first, every argument is a file.
        let Command::Send(a) =
            parse(&["send", "--relay", "ws://r:2", "--code", "k", "f", "g"]).command
        else {
            panic!("send")
        };
        let (found, files) = a.rendezvous();
        assert_eq!(found.server.as_deref(), Some("ws://r:2"));
        assert_eq!(found.code.as_deref(), Some("k"));
        assert_eq!(files, [PathBuf::from("f"), PathBuf::from("g")]);
        // A URL alone is not the 0.1.x form: it is a file name like any other.
        let Command::Send(a) = parse(&["send", "--code", "k", "ws://h:1"]).command else {
            panic!("send")
        };
        assert_eq!(a.rendezvous().1, [PathBuf::from("ws://h:1")]);

        for (args, server, code) in [
            (
                &["receive", "ws://h:1", "c"][..],
                Some("ws://h:1"),
                Some("c"),
            ),
            (&["receive", "ws://h:1"][..], Some("ws://h:1"), None),
            (
                &["receive", "--relay", "ws://r:2", "c"][..],
                Some("ws://r:2"),
                Some("c"),
            ),
            (
                &["receive", "--relay", "ws://r:2", "--code", "k"][..],
                Some("ws://r:2"),
                Some("k"),
            ),
        ] {
            let Command::Receive(a) = parse(args).command else {
                panic!("receive")
            };
            let found = a.rendezvous();
            assert_eq!(found.server.as_deref(), server, "{args:?}");
            assert_eq!(found.code.as_deref(), code, "{args:?}");
            assert_eq!(a.extra_argument(), None, "{args:?}");
        }
        let Command::Receive(a) = parse(&["receive", "relay:443", "c"]).command else {
            panic!("receive")
        };
        assert_eq!(a.extra_argument(), Some("c"));
        parse_err(&["receive", "ws://h:1", "c", "d"]);
    }

    #[test]
    fn send_needs_at_least_one_file_and_a_known_compress_mode() {
        parse_err(&["send"]);
        parse_err(&["send", "ws://h:1", "c", "f", "--compress", "maybe"]);
    }

    #[test]
    fn receive_defaults_and_options() {
        let Command::Receive(a) = parse(&["receive", "ws://h:1", "c"]).command else {
            panic!("receive")
        };
        assert_eq!(a.out_dir(), PathBuf::from("."));
        assert!(!a.client.config("ws://h:1".into(), "c".into()).encrypt);
        let cli = parse(&[
            "-q",
            "receive",
            "wss://h:443",
            "n=4=nc",
            "--out",
            "/tmp/x",
            "--encrypt",
            "--ca-file",
            "ca.pem",
            "--timeout",
            "2.5",
        ]);
        assert!(cli.output.quiet);
        let Command::Receive(a) = cli.command else {
            panic!("receive")
        };
        let found = a.rendezvous();
        assert_eq!(found.code.as_deref(), Some("n=4=nc"));
        let cfg = a.client.config(found.server.unwrap(), found.code.unwrap());
        assert_eq!(a.out_dir(), PathBuf::from("/tmp/x"));
        assert_eq!(cfg.code, "n=4=nc");
        assert!(cfg.encrypt);
        assert_eq!(cfg.ca_file, Some(PathBuf::from("ca.pem")));
        assert_eq!(cfg.pair_timeout, Duration::from_millis(2500));
    }

    #[test]
    fn ttl_defaults_to_the_kind_of_code_and_timeout_is_its_other_name() {
        let Command::Receive(a) = parse(&["receive", "ws://h:1", "c"]).command else {
            panic!("receive")
        };
        assert_eq!(a.client.ttl(false), Duration::from_secs(300));
        assert_eq!(a.client.ttl(true), Duration::from_secs(600));
        for flag in ["--ttl", "--timeout"] {
            let Command::Send(a) = parse(&["send", "ws://h:1", "c", "f", flag, "42"]).command
            else {
                panic!("send")
            };
            assert_eq!(a.client.ttl(true), Duration::from_secs(42));
            assert_eq!(
                a.client
                    .config("ws://h:1".into(), "c".into())
                    .pair_timeout
                    .as_secs(),
                42
            );
        }
    }

    #[test]
    fn ages_take_a_unit_and_plain_numbers_are_seconds() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age("45"), Ok(Duration::from_secs(45)));
        assert!(parse_age("7w").is_err() && parse_age("d").is_err() && parse_age("").is_err());
        let Command::Partials(p) =
            parse(&["partials", "--clean", "--older-than", "2d", "x"]).command
        else {
            panic!("partials")
        };
        assert_eq!(
            (p.clean, p.older_than),
            (true, Some(Duration::from_secs(172_800)))
        );
    }

    #[test]
    fn timeouts_must_be_positive_numbers() {
        parse_err(&["receive", "ws://h:1", "c", "--timeout", "0"]);
        parse_err(&["receive", "ws://h:1", "c", "--timeout", "-1"]);
        parse_err(&["receive", "ws://h:1", "c", "--timeout", "soon"]);
        parse_err(&["receive", "ws://h:1", "c", "--timeout", "NaN"]);
        let e = parse_err(&["receive", "ws://h:1", "c", "--idle-timeout", "0"]).to_string();
        assert!(e.contains("at least 1 second"), "{e}");
        assert!(parse_secs("0.5").is_err());
        assert_eq!(parse_secs("1"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn reconnect_flags_set_the_retry_policy() {
        let Command::Receive(a) = parse(&["receive", "ws://h:1", "c"]).command else {
            panic!("not receive");
        };
        let cfg = a.client.config("ws://h:1".into(), "c".into());
        assert_eq!(cfg.reconnect.max_retries, 5);
        assert_eq!(cfg.reconnect.backoff, Duration::from_secs(1));
        let args = ["receive", "ws://h:1", "c", "--max-retries", "0"];
        let Command::Receive(a) =
            parse(&[&args[..], &["--retry-backoff", "250ms"]].concat()).command
        else {
            panic!("not receive");
        };
        let cfg = a.client.config("ws://h:1".into(), "c".into());
        assert_eq!(cfg.reconnect.max_retries, 0);
        assert_eq!(cfg.reconnect.backoff, Duration::from_millis(250));
        assert_eq!(parse_backoff("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_backoff("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["0s", "5ms", "31s", "1h", "soon", "-1s"] {
            assert!(parse_backoff(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quiet_and_verbose_exclude_each_other() {
        parse_err(&["-q", "-v", "receive", "ws://h:1", "c"]);
        assert!(
            parse(&["receive", "ws://h:1", "c", "--verbose"])
                .output
                .verbose
        );
    }

    #[test]
    fn relay_defaults_are_the_core_defaults() {
        let Command::RunRelayServer(a) =
            parse(&["run-relay-server", "127.0.0.1", "0", "--no-tls"]).command
        else {
            panic!("relay")
        };
        let cfg = a.config().unwrap();
        let d = RelayConfig::default();
        assert_eq!(cfg.relay.hello_timeout, d.hello_timeout);
        assert_eq!(cfg.relay.wait_timeout, d.wait_timeout);
        assert_eq!(cfg.relay.max_connections, d.max_connections);
        assert_eq!(cfg.relay.max_per_address, d.max_per_address);
    }

    #[test]
    fn relay_needs_certificates_unless_no_tls() {
        let Command::RunRelayServer(a) = parse(&["run-relay-server", "localhost", "8765"]).command
        else {
            panic!("relay")
        };
        assert!(a.config().is_err());

        let Command::RunRelayServer(a) =
            parse(&["run-relay-server", "127.0.0.1", "0", "--no-tls"]).command
        else {
            panic!("relay")
        };
        let cfg = a.config().unwrap();
        assert_eq!(
            (cfg.host.as_str(), cfg.port, cfg.tls),
            ("127.0.0.1", 0, None)
        );

        let Command::RunRelayServer(a) = parse(&[
            "run-relay-server",
            "0.0.0.0",
            "443",
            "--no-tls",
            "--tls",
            "--certfile",
            "c.pem",
            "--keyfile",
            "k.pem",
            "--hello-timeout",
            "1.5",
            "--wait-timeout",
            "60",
            "--max-connections",
            "10",
            "--max-per-address",
            "2",
        ])
        .command
        else {
            panic!("relay")
        };
        let cfg = a.config().unwrap();
        assert_eq!(
            cfg.tls,
            Some((PathBuf::from("c.pem"), PathBuf::from("k.pem")))
        );
        assert_eq!(cfg.relay.hello_timeout, Duration::from_millis(1500));
        assert_eq!(cfg.relay.wait_timeout, Duration::from_secs(60));
        assert_eq!(
            (cfg.relay.max_connections, cfg.relay.max_per_address),
            (10, 2)
        );
    }

    #[test]
    fn relay_operator_flags_reach_the_configuration() {
        let Command::RunRelayServer(a) = parse(&[
            "run-relay-server",
            "h",
            "1",
            "--no-tls",
            "--metrics",
            "127.0.0.1:9100",
            "--token-file",
            "t.txt",
            "--max-new-per-minute",
            "30",
            "--max-rate",
            "10M",
            "--max-bytes",
            "1Gi",
            "--drain-timeout",
            "0",
            "--log-format",
            "json",
        ])
        .command
        else {
            panic!("relay")
        };
        assert_eq!(a.ops.log_format, LogFormat::Json);
        let cfg = a.config().unwrap();
        assert_eq!(cfg.relay.max_new_per_minute, Some(30));
        assert_eq!(
            cfg.ops,
            RelayOps {
                metrics: Some("127.0.0.1:9100".parse().unwrap()),
                token_file: Some(PathBuf::from("t.txt")),
                max_rate: Some(10_000_000),
                max_bytes: Some(1 << 30),
                drain_timeout: Duration::ZERO,
            }
        );
        let Command::RunRelayServer(a) = parse(&["run-relay-server", "h", "1", "--no-tls"]).command
        else {
            panic!("relay")
        };
        let cfg = a.config().unwrap();
        assert_eq!(cfg.ops.drain_timeout, Duration::from_secs(30));
        assert_eq!((cfg.ops.metrics, cfg.ops.max_rate), (None, None));
        assert_eq!(a.ops.log_format, LogFormat::Text);
    }

    #[test]
    fn sizes_take_decimal_and_binary_suffixes() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("500k"), Ok(500_000));
        assert_eq!(parse_size("1.5MB"), Ok(1_500_000));
        assert_eq!(parse_size("2Mi/s"), Ok(2 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        for bad in ["", "0", "-1", "10X", "M", "1e99", "1.2.3k"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        parse_err(&["run-relay-server", "h", "1", "--max-rate", "fast"]);
        parse_err(&["run-relay-server", "h", "1", "--max-new-per-minute", "0"]);
        parse_err(&["run-relay-server", "h", "1", "--drain-timeout", "0.5"]);
    }

    #[test]
    fn the_relay_token_comes_from_the_flag_then_the_environment_then_the_config() {
        let flag = RelayTokenArgs {
            relay_token: Some("from-flag".into()),
        };
        assert_eq!(
            flag.resolve(Some("cfg".into())).as_deref(),
            Some("from-flag")
        );
        let none = RelayTokenArgs { relay_token: None };
        // The environment is read by the process-level tests (cli/tests/relay_ops.rs);
        // here it is unset.
        if std::env::var_os(RELAY_TOKEN_ENV).is_none() {
            assert_eq!(none.resolve(Some("cfg".into())).as_deref(), Some("cfg"));
            assert_eq!(none.resolve(Some(" ".into())), None);
            assert_eq!(none.resolve(None), None);
        }
        let Command::Send(a) =
            parse(&["send", "ws://h:1", "c", "f", "--relay-token", "s3cret"]).command
        else {
            panic!("send")
        };
        assert_eq!(
            a.client
                .config("ws://h:1".into(), "c".into())
                .relay_token
                .as_deref(),
            Some("s3cret")
        );
    }

    #[test]
    fn relay_refuses_bad_ports_and_limits() {
        parse_err(&["run-relay-server", "h", "65536", "--no-tls"]);
        parse_err(&[
            "run-relay-server",
            "h",
            "1",
            "--no-tls",
            "--max-connections",
            "0",
        ]);
    }

    #[test]
    fn relay_stun_port_defaults_to_the_listener_and_0_turns_it_off() {
        let stun = |extra: &[&str]| {
            let mut argv = vec!["run-relay-server", "h", "8765", "--no-tls"];
            argv.extend_from_slice(extra);
            let Command::RunRelayServer(a) = parse(&argv).command else {
                panic!("relay")
            };
            a.config().unwrap().stun
        };
        assert_eq!(stun(&[]), StunPorts::SameAsListener);
        assert_eq!(stun(&["--stun-port", "0"]), StunPorts::Off);
        assert_eq!(stun(&["--stun-port", "3478"]), StunPorts::Port(3478));
        parse_err(&[
            "run-relay-server",
            "h",
            "1",
            "--no-tls",
            "--stun-port",
            "65536",
        ]);
    }
}
