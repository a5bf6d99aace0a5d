//! Adapters: each translates one outside world to and from the core, and does nothing else.

pub mod deliver;
pub mod discord;
pub mod forwarded;
pub mod go;
pub mod http;
pub mod notice;
pub mod serve;
pub mod signin;
pub mod slack;
pub mod state;
pub mod unsigned;

/// What a chat adapter adds to the running app: routes for the HTTP server and background
/// tasks (Socket Mode, gateway, refreshers), all of which stop on shutdown.
pub struct Started {
    pub router: axum::Router,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}
