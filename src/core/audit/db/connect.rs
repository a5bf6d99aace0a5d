//! One connection to the audit database, and the errors it can end in.
//!
//! The URL is a secret (it may carry a password), so it is parsed here and nowhere else, and
//! no error made here holds it: [`DbError`] says what happened in words of its own, with the
//! database's own message only for errors the server sent (those name no password).
//!
//! TLS: `sslmode=require` in the URL turns it on, through rustls with ring like the rest of the
//! bot, and the server's certificate is verified: against the system's CA roots
//! (`SSL_CERT_FILE` / `SSL_CERT_DIR` are honoured, so a private CA such as a cloud provider's can
//! be added without rebuilding) and webpki's, for the host the URL names. That is stricter than
//! libpq's `require` (which encrypts without checking who answers), on purpose: the trail and
//! the password's proof travel on it. Any other `sslmode` (or none) is plain TCP, which
//! `portal-bot check` warns about for a host that is not loopback.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config};

/// How long a connection (TCP, TLS, authentication) may take: short, because a request whose
/// event must be written (`required = true`) may be waiting through it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// Why the audit database could not be used. Never holds the URL.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("audit.database_url is not a PostgreSQL URL")]
    BadUrl,
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("the database does not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("the database refused: {0}")]
    Refused(String),
    #[error("the audit table does not exist yet: start the bot once, or run `portal-bot audit --migrate`, with a role that may create it")]
    NoTable,
    #[error("the database's audit schema is version {found}, newer than this bot knows ({known}): upgrade the bot")]
    TooNew { found: i32, known: i32 },
}

impl DbError {
    /// Classifies a driver error without its `Display` of the whole chain when that could
    /// hold connection details: a server error keeps its message and SQLSTATE, anything else
    /// is described by its kind.
    pub fn from_driver(e: &tokio_postgres::Error) -> DbError {
        if let Some(db) = e.as_db_error() {
            if db.code() == &tokio_postgres::error::SqlState::UNDEFINED_TABLE {
                return DbError::NoTable;
            }
            return DbError::Refused(format!("{} ({})", db.message(), db.code().code()));
        }
        if e.is_closed() {
            return DbError::Connect("the connection was closed".into());
        }
        // The driver's own words for I/O and protocol errors ("error connecting to server:
        // Connection refused (os error 111)"): they name the failure, not the URL.
        let text = e.to_string();
        let source = std::error::Error::source(e)
            .map(|s| s.to_string())
            .unwrap_or_default();
        if source.is_empty() || text.contains(&source) {
            DbError::Connect(text)
        } else {
            DbError::Connect(format!("{text}: {source}"))
        }
    }
}

/// Checks a URL at config time, without echoing it: `postgres://` or `postgresql://`, one that
/// the driver can read, with a host. The error is the problem alone; the caller names the key.
pub fn check_url(url: &str) -> Result<(), String> {
    let what = "must be a PostgreSQL URL like \"postgres://portal_bot@db.internal/portal_bot?sslmode=require\" (not shown: it may hold a password)";
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(what.into());
    }
    let config = Config::from_str(url).map_err(|_| what.to_string())?;
    if config.get_hosts().is_empty() {
        return Err(format!("{what}: it names no host"));
    }
    Ok(())
}

/// Where the URL points, for messages: the host and whether TLS is on. Never the user,
/// password or database.
pub fn describe(url: &str) -> Result<(String, bool), DbError> {
    let config = Config::from_str(url).map_err(|_| DbError::BadUrl)?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => return Err(DbError::BadUrl),
    };
    Ok((host, config.get_ssl_mode() == SslMode::Require))
}

/// Connects, authenticates and starts the connection's task on the current runtime. The
/// connection ends when the returned client is dropped.
pub async fn connect(url: &str) -> Result<Client, DbError> {
    let mut config = Config::from_str(url).map_err(|_| DbError::BadUrl)?;
    config.connect_timeout(CONNECT_TIMEOUT);
    if config.get_application_name().is_none() {
        config.application_name("portal-bot");
    }
    let attempt = async {
        if config.get_ssl_mode() != SslMode::Require {
            // libpq's `prefer` would try TLS without verifying it: here it is plain, said plainly.
            config.ssl_mode(SslMode::Disable);
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| DbError::from_driver(&e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %DbError::from_driver(&e), "audit database connection ended");
                }
            });
            Ok(client)
        } else {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config()?);
            let (client, connection) = config
                .connect(tls)
                .await
                .map_err(|e| DbError::from_driver(&e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %DbError::from_driver(&e), "audit database connection ended");
                }
            });
            Ok(client)
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| DbError::Timeout(CONNECT_TIMEOUT))?
}

/// rustls with ring, the system's roots and webpki's.
fn tls_config() -> Result<rustls::ClientConfig, DbError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A certificate the system holds but rustls can't use is skipped, not fatal.
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn urls_are_checked_without_being_echoed() {
        assert!(check_url("postgres://u:pw@db.internal:5432/audit?sslmode=require").is_ok());
        assert!(check_url("postgresql://u@127.0.0.1/test").is_ok());
        for bad in [
            "mysql://u:hunter2@db/x",
            "postgres://u:hunter2@db/x?sslmode=sideways",
            "hunter2",
        ] {
            let err = check_url(bad).unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
        }
        assert_eq!(
            describe("postgres://u:hunter2@db.internal/x?sslmode=require").unwrap(),
            ("db.internal".to_string(), true)
        );
    }

    proptest! {
        #[test]
        fn no_url_panics_the_check(text in "\\PC{0,80}", tail in "[a-z=&?:@/0-9.%]{0,40}") {
            let _ = check_url(&text);
            let _ = check_url(&format!("postgres://{tail}"));
            let _ = describe(&format!("postgresql://{tail}"));
        }
    }
}
