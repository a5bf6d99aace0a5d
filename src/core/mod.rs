//! The platform-neutral core: everything portal-bot decides, with no Slack or Discord type in
//! it. Adapters (`crate::adapters`) translate chat requests into an [`asker::Asker`] and a
//! command text, call [`portal::PortalService`], and render the [`portal::Reply`].

pub mod access;
pub mod approvals;
pub mod asker;
pub mod audit;
pub mod budget;
pub mod click;
pub mod command;
pub mod config;
pub mod directory;
pub mod enduser;
pub mod held;
pub mod metrics;
pub mod names;
pub mod notes;
pub mod notify;
pub mod onetime;
pub mod ownership;
pub mod planhat;
pub mod portal;
pub mod ratelimit;
pub mod seal;
pub mod search;
pub mod secret;
pub mod signin;
pub mod state;
pub mod text;
pub mod throttle;
