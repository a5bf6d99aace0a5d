//! Where replicas' shared state lives: in this process, or on Redis. The core owns the trait
//! ([`crate::core::state::SharedState`]); this module owns the two implementations and the one
//! place that picks between them, so no handler ever asks which it has.

pub mod memory;
pub mod redis;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::core::config::Config;
use crate::core::metrics::Metrics;
use crate::core::state::SharedState;
use crate::shutdown::Shutdown;

pub use self::memory::MemoryState;
pub use self::redis::{RedisConfigError, RedisState};

/// The store the config asks for: Redis when `[state] redis_url` is set, else memory.
/// `healthy` becomes the store's readiness flag (memory: always true).
pub fn build(
    config: &Config,
    metrics: Arc<Metrics>,
    healthy: Arc<AtomicBool>,
    shutdown: Shutdown,
) -> Result<Arc<dyn SharedState>, RedisConfigError> {
    let local = MemoryState::new(config.limits.per_user_per_minute);
    match &config.state.redis_url {
        None => {
            healthy.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(Arc::new(local))
        }
        Some(url) => Ok(RedisState::start(
            url,
            &config.state.key_prefix,
            local,
            metrics,
            healthy,
            shutdown,
        )?),
    }
}
