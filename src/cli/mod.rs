//! The command line: `serve`, `demo`, `link`, `check`, `audit`. Parses arguments, sets up
//! logging, and maps every result to the spec's exit codes; the work itself lives in the library.

mod audit;
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
    /// Read the audit trail (rotated files too, or the audit database): who opened what, when.
    Audit {
        #[command(flatten)]
        config: ConfigArg,
        /// Only events this recent ("7d", "12h") or since a UTC day or time ("2026-11-25",
        /// "2026-11-25T09:00:00Z"). Default: the whole trail.
        #[arg(long, value_parser = crate::core::audit::query::Since::parse)]
        since: Option<crate::core::audit::query::Since>,
        /// Only this asker (Slack or Discord user id, or the local user for `link`), exactly.
        #[arg(long)]
        asker: Option<String>,
        /// Only this end user: the id exactly, or an email in any case.
        #[arg(long)]
        enduser: Option<String>,
        /// Only companies whose name contains this, in any case.
        #[arg(long)]
        company: Option<String>,
        /// Only this outcome, exactly: ok, denied, no_access, not_found, rate_limited, …
        #[arg(long)]
        outcome: Option<String>,
        /// Only this action, exactly: link, check, new_link, go, find, request, approve,
        /// deny, expire, break_glass.
        #[arg(long)]
        action: Option<String>,
        /// Counts per asker, company and outcome instead of one row per event.
        #[arg(long)]
        summary: bool,
        /// The matching events as JSON lines, exactly as stored (with --summary: one JSON object).
        #[arg(long)]
        json: bool,
        /// Create or upgrade the audit database's schema (audit.database_url), then stop: for a
        /// table owner when the bot's own role may only read and write rows.
        #[arg(long, conflicts_with_all = ["since", "asker", "enduser", "company", "outcome", "action", "summary", "json"])]
        migrate: bool,
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
    // Reading the trail is plain file work: no runtime needed.
    if let Command::Audit {
        config,
        since,
        asker,
        enduser,
        company,
        outcome,
        action,
        summary,
        json,
        migrate,
    } = cli.command
    {
        let options = audit::Options {
            since,
            asker,
            enduser,
            company,
            outcome,
            action,
            summary,
            json,
            migrate,
        };
        return ExitCode::from(audit::run(&config.config, options));
    }
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
            Command::Audit { .. } => exit::OK, // answered above, without a runtime
        }
    });
    ExitCode::from(code)
}

/// Libraries whose own output can record requests, and the most each may log whatever
/// `RUST_LOG` says:
/// - `serenity::http`: off. Its request spans hold the interaction token (in the route) and the
///   reply body with its signed URL, and even at `warn` it logs the route ("Mismatched
///   successful response status from {route}") when a success status is not the one it
///   expected. The bot logs every Discord REST failure itself, through `rest::describe`,
///   which drops URLs.
/// - `slack_morphism`: off. Its debug lines carry URIs (a `response_url` is a credential) and
///   Socket Mode envelopes; it logs bodies of failed calls. The bot logs Slack failures itself.
/// - the rest of serenity, hyper, reqwest, rustls, tungstenite, redis …: `warn`. Their debug
///   and trace output covers connections and frames, never needed to run the bot.
///
/// These are a filter of their own, applied beside the `RUST_LOG` one with both required to
/// pass (see [`log_filter`]): no directive, however specific (`serenity::http::client=trace`,
/// a span or field directive such as `[{token}]=trace`), can loosen them.
pub const LIBRARY_CAPS: &[(&str, tracing::level_filters::LevelFilter)] = {
    use tracing::level_filters::LevelFilter as L;
    &[
        ("serenity", L::WARN),
        ("serenity::http", L::OFF),
        ("slack_morphism", L::OFF),
        ("hyper", L::WARN),
        ("hyper_util", L::WARN),
        ("hyper_rustls", L::WARN),
        ("reqwest", L::WARN),
        ("h2", L::WARN),
        ("tungstenite", L::WARN),
        ("tokio_tungstenite", L::WARN),
        ("async_tungstenite", L::WARN),
        ("rustls", L::WARN),
        ("tower_http", L::WARN),
        ("redis", L::WARN),
    ]
};

/// The caps of [`LIBRARY_CAPS`] as a filter: everything else passes at any level.
pub fn library_caps() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new()
        .with_default(tracing::level_filters::LevelFilter::TRACE)
        .with_targets(LIBRARY_CAPS.iter().copied())
}

/// The log filter for one output layer: `RUST_LOG` (or `default_level`; `info` when it does
/// not parse) *and* [`library_caps`]. Both must let an event or span through.
pub fn log_filter<S>(
    directives: &str,
) -> tracing_subscriber::filter::combinator::And<
    tracing_subscriber::EnvFilter,
    tracing_subscriber::filter::Targets,
    S,
>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::filter::FilterExt;
    let requested = tracing_subscriber::EnvFilter::try_new(directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    requested.and(library_caps())
}

fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| default_level.to_string());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match format {
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_filter(log_filter(&directives))
            .boxed(),
        LogFormat::Text => layer.with_filter(log_filter(&directives)).boxed(),
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    /// What serenity's REST client logs, as it logs it: a request span whose fields hold the
    /// interaction token, and at `warn` the route when a success status is unexpected.
    fn serenity_like_output() {
        let span = tracing::info_span!(
            target: "serenity::http::client",
            "request",
            token = "itok-span-secret",
            req = "route: itok-field-secret"
        );
        let _in = span.enter();
        tracing::warn!(
            target: "serenity::http::client",
            "Mismatched successful response status from /webhooks/1/itok-route-secret/messages/@original! Expected 204 but got 200"
        );
        tracing::debug!(target: "slack_morphism::hyper_tokio::connector", slack_uri = "https://hooks.slack.com/commands/itok-slack-secret", "Sending HTTP request");
        tracing::info!(target: "portal_bot::adapters", "bot line inside the span");
    }

    #[test]
    fn no_rust_log_directive_loosens_the_library_caps() {
        for directives in [
            "trace",
            "serenity::http=trace",
            "serenity::http::client=trace",
            "serenity=trace,slack_morphism=trace",
            "[{token}]=trace",
            "[request]=trace",
            "[request{token}]=trace,serenity::http::client[request]=trace",
            "slack_morphism::hyper_tokio::connector=trace",
            "warn",
            "not a directive [[[",
        ] {
            let capture = Capture::default();
            let subscriber = tracing_subscriber::registry().with(
                tracing_subscriber::fmt::layer()
                    .with_writer(capture.clone())
                    .with_ansi(false)
                    .with_filter(log_filter(directives)),
            );
            tracing::subscriber::with_default(subscriber, serenity_like_output);
            let logged = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
            assert!(
                !logged.contains("itok-"),
                "RUST_LOG={directives:?} let through: {logged}"
            );
        }
    }

    #[test]
    fn the_bots_own_lines_still_follow_rust_log() {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(capture.clone())
                .with_filter(log_filter("info")),
        );
        tracing::subscriber::with_default(subscriber, serenity_like_output);
        let logged = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
        assert!(logged.contains("bot line inside the span"), "{logged}");
    }
}
