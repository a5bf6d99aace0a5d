//! The Slack adapter.
use std::sync::Arc;
use crate::{App, StartError};
use super::Started;

/// Starts Slack when `[slack]` is configured.
pub async fn start(app: &Arc<App>) -> Result<Option<Started>, StartError> {
    let _ = app;
    Ok(None)
}
