//! The Discord adapter.
use std::sync::Arc;
use crate::{App, StartError};
use super::Started;

/// Starts Discord when `[discord]` is configured.
pub async fn start(app: &Arc<App>) -> Result<Option<Started>, StartError> {
    let _ = app;
    Ok(None)
}
