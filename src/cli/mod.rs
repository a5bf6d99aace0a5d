//! The command line: `serve`, `demo`, `link`, `check`. Parses arguments, sets up logging, and
//! maps every result to the spec's exit codes; the work itself lives in the library.

mod check;
mod demo;
mod link;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::core::config::{require_planhat_token, Config, ConfigError};

/// Exit statuses (SPEC "Commands").
pub mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 2;
    pub const NO_ACCESS: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const UPSTREAM: u8 = 5;
}

#[derive(Parser, Debug)]
#[command(
    name = "portal-bot",
    version,
    about = "Planhat portal links in Slack and Discord, shown only to the asker"
)]
struct Cli {
    /// Log format on stderr (level from RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
struct ConfigArg {
    /// Configuration file.
    #[arg(long, env = "PORTAL_BOT_CONFIG", default_value = "config.toml")]
    config: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the bot on every platform the config turns on.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Answer from the built-in sandbox Planhat (no Planhat token needed).
        #[arg(long)]
        sandbox: bool,
        /// With --sandbox: add this delay to every sandbox answer (load benchmarks model Planhat's
        /// round trip with it), e.g. "50ms".
        #[arg(long, value_parser = humantime::parse_duration, requires = "sandbox", hide = true)]
        sandbox_latency: Option<std::time::Duration>,
    },
    /// The whole flow on this machine: sandbox Planhat, real server, signed Slack and Discord requests.
    Demo,
    /// Mint a link from a terminal; prints only the URL on stdout.
    Link {
        #[command(flatten)]
        config: ConfigArg,
        /// Only say whether ENDUSER has portal access; mint nothing.
        #[arg(long)]
        check: bool,
        /// Planhat end-user id (or email).
        enduser: String,
    },
    /// Validate the configuration and make one authenticated call to Planhat.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Runs the command line and returns the process exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let default_level = match cli.command {
        Command::Serve { .. } => "info",
        // The demo prints what the user sees; the operator's warnings would only distract.
        Command::Demo => "error",
        _ => "warn",
    };
    init_logging(cli.log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portal-bot: cannot start the async runtime: {e}");
            return ExitCode::from(exit::UPSTREAM);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Serve {
                config,
                sandbox,
                sandbox_latency,
            } => serve(&config.config, sandbox, sandbox_latency).await,
            Command::Demo => demo::run().await,
            Command::Link {
                config,
                check,
                enduser,
            } => link::run(&config.config, check, &enduser).await,
            Command::Check { config } => check::run(&config.config).await,
        }
    });
    ExitCode::from(code)
}

/// Libraries whose own debug and trace output records requests (serenity's spans hold the
/// interaction token and the reply body with its signed URL; slack-morphism's Socket Mode logs
/// whole envelopes and connection tickets). They are held at `warn` (slack-morphism: off; the
/// bot logs Socket Mode connects and failures itself) whatever `RUST_LOG` says: no log level may
/// print a credential.
pub const QUIET_LIBRARIES: &str = "serenity=warn,slack_morphism=off,hyper=warn,hyper_util=warn,reqwest=warn,h2=warn,tungstenite=warn,tokio_tungstenite=warn,rustls=warn,tower_http=warn";

/// The log filter: `RUST_LOG` (or `default_level`), with [`QUIET_LIBRARIES`] always applied.
pub fn log_filter(directives: &str) -> tracing_subscriber::EnvFilter {
    // Later, more specific directives win; ours come last.
    tracing_subscriber::EnvFilter::try_new(format!("{directives},{QUIET_LIBRARIES}"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("info,{QUIET_LIBRARIES}")))
}

fn init_logging(format: LogFormat, default_level: &str) {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| default_level.to_string());
    let filter = log_filter(&directives);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Loads the config; on failure prints the one-line reason.
fn load(path: &std::path::Path) -> Result<Config, u8> {
    Config::load(path).map_err(|e| {
        eprintln!("portal-bot: {e}");
        exit::USAGE
    })
}

/// Says on stderr which file was read and which Planhat host gets the API token, so an on-call
/// engineer notices a `config.toml` picked up from the wrong directory before trusting it.
fn say_where(path: &std::path::Path, config: &Config) {
    let file = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let host = match (
        config.planhat.api_url.host_str(),
        config.planhat.api_url.port(),
    ) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => "(no host)".to_string(),
    };
    eprintln!(
        "portal-bot: config {}; Planhat {}://{host}",
        file.display(),
        config.planhat.api_url.scheme()
    );
}

fn need_token(config: &Config) -> Result<(), u8> {
    require_planhat_token(config).map_err(|e: ConfigError| {
        eprintln!("portal-bot: {e}");
        exit::USAGE
    })
}

async fn serve(path: &std::path::Path, sandbox: bool, latency: Option<std::time::Duration>) -> u8 {
    let mut config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Kept alive for as long as the server runs.
    let _sandbox = if sandbox {
        let options = crate::sandbox::SandboxOptions {
            link_lifetime: config.planhat.link_lifetime,
            latency: latency.unwrap_or_default(),
            ..Default::default()
        };
        match crate::sandbox::Sandbox::start(options).await {
            Ok(s) => {
                config.point_at_sandbox(&s.base, s.token());
                tracing::warn!(sandbox = %s.base, "answering from the built-in sandbox Planhat, not a real one");
                // For load tools: where the sandbox is (its /stats shows peak concurrency).
                eprintln!("sandbox planhat: {}", s.base);
                Some(s)
            }
            Err(e) => {
                eprintln!("portal-bot: cannot start the sandbox Planhat: {e}");
                return exit::UPSTREAM;
            }
        }
    } else {
        if let Err(code) = need_token(&config) {
            return code;
        }
        None
    };
    let running = match crate::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portal-bot: {e}");
            return exit::USAGE;
        }
    };
    crate::shutdown::signal().await;
    running.stop().await;
    exit::OK
}
