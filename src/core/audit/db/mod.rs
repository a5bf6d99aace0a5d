//! The audit trail in PostgreSQL (`[audit] database_url`): one table for every replica, so
//! "who opened Acme's portal last month?" is one `portal-bot audit` away however many pods
//! wrote the events.
//!
//! - [`connect`]: one connection, TLS through rustls when the URL asks for it, every step
//!   bounded in time; errors that never carry the URL (it may hold a password).
//! - [`migrate`]: the versioned schema in `migrations/`, applied at start under a lock.
//! - [`row`]: an event as a row, and the idempotent batch insert (the event id).
//! - [`spool`]: the local fallback file for events the database can't take yet.
//! - [`writer`]: the background writer: bounded queue, batches, fallback, replay, retention.
//! - [`read`]: what `portal-bot audit` asks the database.

pub mod connect;
pub mod migrate;
pub mod read;
pub mod row;
pub mod spool;
pub mod writer;

pub use connect::{check_url, connect, DbError};
