//! `portal-bot check`: is this config going to work? Validates it, then makes one
//! authenticated call to Planhat (and Redis, the audit database, and with `[slack]` the Slack calls the configured
//! features make, naming any scope the token lacks) and says in plain words what is wrong.

use std::path::Path;
use std::sync::Arc;

use super::exit;
use crate::core::metrics::Metrics;
use crate::core::planhat::{Planhat, PlanhatError};

pub async fn run(path: &Path) -> u8 {
    let config = match super::load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(code) = super::need_token(&config) {
        return code;
    }
    super::say_where(path, &config);
    println!("config {}: valid", path.display());
    let on = |b: bool| if b { "on" } else { "off" };
    println!(
        "slack: {}, discord: {}, public_url: {}",
        config
            .slack
            .as_ref()
            .map(|s| format!("{:?} mode", s.mode).to_lowercase())
            .unwrap_or_else(|| on(false).into()),
        config
            .discord
            .as_ref()
            .map(|d| format!("{:?} mode", d.mode).to_lowercase())
            .unwrap_or_else(|| on(false).into()),
        config
            .server
            .public_url
            .as_ref()
            .map(|u| u.to_string())
            .unwrap_or_else(|| "unset (links shown directly)".into()),
    );
    let a = &config.access;
    let listed = a.slack_users.len()
        + a.slack_usergroups.len()
        + a.discord_users.len()
        + a.discord_roles.len();
    if listed == 0 {
        println!("warning: [access] lists nobody, so nobody may mint links (deny by default)");
    }
    let api = config.planhat.api_url.to_string();
    let planhat = match Planhat::new(&config.planhat, Arc::new(Metrics::new())) {
        Ok(p) => p,
        Err(e) => {
            println!("planhat: {e}");
            return exit::UPSTREAM;
        }
    };
    let planhat_ok = match planhat.probe().await {
        Ok(()) => {
            println!("planhat {api}: reachable, API token accepted");
            true
        }
        Err(e) => {
            println!("planhat {api}: {}", explain(&e, &config.planhat.timeout));
            false
        }
    };
    let redis_ok = check_redis(&config).await;
    let audit_ok = check_audit_database(&config).await;
    let sign_in_ok = check_sign_in(&config).await;
    let mut slack_ok = true;
    for finding in crate::adapters::slack::probe::probe(&config).await {
        println!("{}", finding.line);
        slack_ok &= finding.ok;
    }
    if planhat_ok && redis_ok && audit_ok && slack_ok && sign_in_ok {
        exit::OK
    } else {
        exit::UPSTREAM
    }
}

/// With `[state] redis_url`: one PING through the same client the bot uses. The URL is never
/// printed (it may hold a password).
async fn check_redis(config: &crate::Config) -> bool {
    let Some(url) = &config.state.redis_url else {
        println!("shared state: in this process (no [state] redis_url; right for one replica)");
        return true;
    };
    if let Some(host) = cleartext_remote(url.expose()) {
        println!(
            "redis: warning: redis:// to {host} sends the password and every record unencrypted; use rediss:// (TLS) across any network you don't control"
        );
    }
    let (trigger, shutdown) = crate::shutdown::channel();
    let store = match crate::adapters::state::RedisState::start(
        url,
        &config.state.key_prefix,
        crate::adapters::state::MemoryState::new(config.limits.per_user_per_minute),
        Arc::new(Metrics::new()),
        Arc::default(),
        shutdown,
    ) {
        Ok(s) => s,
        Err(e) => {
            println!("redis: {e}");
            return false;
        }
    };
    use crate::core::state::SharedState;
    let answer = store.ping().await;
    trigger.fire();
    match answer {
        Ok(()) => {
            println!(
                "redis: reachable (keys under {:?})",
                config.state.key_prefix
            );
            true
        }
        Err(e) => {
            println!("redis: {e}. Check state.redis_url or PORTAL_BOT_REDIS_URL (host, port, password, TLS with rediss://).");
            false
        }
    }
}

/// The host of a `redis://` URL (no TLS) that is not loopback: its traffic, the password
/// included, crosses a network in the clear. `None` for `rediss://`, loopback, or no URL.
fn cleartext_remote(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    if parsed.scheme() != "redis" {
        return None;
    }
    let host = parsed.host()?;
    let loopback = match &host {
        // Not a special scheme: the URL crate leaves an address as text.
        url::Host::Domain(d) => {
            d.eq_ignore_ascii_case("localhost")
                || d.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    };
    (!loopback).then(|| host.to_string())
}

/// With `[audit] database_url`: whether the database answers and its schema is there, through
/// the connection the writer uses. Never prints the URL (it may hold a password): the host and
/// whether TLS is on are enough to tell which one is meant.
async fn check_audit_database(config: &crate::Config) -> bool {
    use crate::core::audit::db;
    let Some(url) = &config.audit.database_url else {
        return true;
    };
    let (host, tls) = match db::connect::describe(url.expose()) {
        Ok(d) => d,
        Err(e) => {
            println!("audit database: {e}");
            return false;
        }
    };
    let tls = if tls { "TLS" } else { "no TLS" };
    let loopback =
        matches!(host.as_str(), "127.0.0.1" | "::1" | "localhost") || host.starts_with('/');
    if tls == "no TLS" && !loopback {
        println!("warning: audit database on {host} without TLS: add sslmode=require to audit.database_url");
    }
    let answer = async {
        let client = db::connect(url.expose()).await?;
        db::migrate::current(&client).await
    };
    match answer.await {
        Ok(0) => {
            println!("audit database on {host} ({tls}): answers; no audit table yet (the bot creates it at start, or `portal-bot audit --migrate`)");
            true
        }
        Ok(v) => {
            println!("audit database on {host} ({tls}): answers, schema version {v}");
            true
        }
        Err(e) => {
            println!("audit database on {host} ({tls}): {e}. Check audit.database_url or PORTAL_BOT_AUDIT_DATABASE_URL (host, port, user, password, sslmode). Links are still handed out while it is down (events wait in the fallback).");
            false
        }
    }
}

/// With `[sign_in]`: whether each identity provider answers (OpenID Connect discovery; for
/// Discord, its authorize page). Nothing secret is printed.
async fn check_sign_in(config: &crate::Config) -> bool {
    let sign_in = match crate::adapters::signin::build(config) {
        Ok(Some(s)) => s,
        Ok(None) => {
            println!("sign-in: off (a /go/ link opens in whichever browser has it; see [sign_in])");
            return true;
        }
        Err(e) => {
            println!("sign-in: {e}");
            return false;
        }
    };
    let mut ok = true;
    for provider in sign_in.providers() {
        let name = provider.kind().name();
        match provider.check().await {
            Ok(()) => println!("sign-in {name}: the provider answers"),
            Err(e) => {
                println!(
                    "sign-in {name}: {e}. Check its issuer / oauth_url and this machine's network."
                );
                ok = false;
            }
        }
    }
    ok
}

fn explain(e: &PlanhatError, timeout: &std::time::Duration) -> String {
    match e {
        PlanhatError::TokenRejected(status) => format!(
            "the API token was rejected (HTTP {status}). Check planhat.token or PLANHAT_API_TOKEN, \
             and that planhat.cluster is your account's cluster: a token of one cluster is refused by another."
        ),
        PlanhatError::Unreachable(detail) => format!(
            "cannot reach the host ({detail}). Check planhat.cluster / planhat.api_url and this machine's network."
        ),
        PlanhatError::TooSlow(_) => format!(
            "no answer within {} (planhat.timeout). The host may be wrong or unreachable from here.",
            humantime::format_duration(*timeout)
        ),
        PlanhatError::NotFound => "answered 404: this is not the Planhat API; check planhat.api_url.".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::cleartext_remote;

    #[test]
    fn redis_without_tls_to_another_host_is_named_and_never_its_password() {
        assert_eq!(
            cleartext_remote("redis://:pw@redis.internal:6379/0").as_deref(),
            Some("redis.internal")
        );
        assert_eq!(
            cleartext_remote("redis://10.1.2.3/0").as_deref(),
            Some("10.1.2.3")
        );
        for quiet in [
            "rediss://:pw@redis.internal:6380/0",
            "redis://127.0.0.1:6379/0",
            "redis://localhost/0",
            "redis://[::1]:6379",
            "not a url",
        ] {
            assert_eq!(cleartext_remote(quiet), None, "{quiet}");
        }
    }
}
