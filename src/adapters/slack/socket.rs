//! Slack Socket Mode: for workspaces that can't expose an endpoint. The bot dials out; slack-
//! morphism keeps the connection (and reconnects it); every envelope goes to the same handlers
//! as the webhooks. Its `serve()` installs its own signal handlers, so we use `start()` and
//! stop it from our own shutdown instead.

use std::sync::Arc;

use rand::RngExt;
use slack_morphism::prelude::*;

use super::client::Client;
use super::SlackState;
use crate::core::secret::Secret;
use crate::shutdown::Shutdown;

/// Runs Socket Mode until shutdown.
pub fn spawn(
    state: Arc<SlackState>,
    app_token: &Secret,
    mut shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    let token = SlackApiToken::new(SlackApiTokenValue::new(app_token.expose().to_string()));
    tokio::spawn(async move {
        let environment = Arc::new(
            SlackClientEventsListenerEnvironment::new(state.api.client.clone())
                .with_error_handler(on_error)
                .with_user_state(state.clone()),
        );
        let callbacks = SlackSocketModeListenerCallbacks::new()
            .with_command_events(on_command)
            .with_interaction_events(on_interaction)
            // The event type is not nameable from outside slack-morphism; a closure infers it.
            .with_hello_events(
                |_hello, _client, user_state| async move { on_hello(user_state).await },
            );
        // slack-morphism retries a lost connection at a fixed interval; a random one per
        // process (3-7 s) keeps a fleet of bots from reconnecting in lockstep.
        let retry_after: u64 = rand::rng().random_range(3..=7);
        let config = SlackClientSocketModeConfig::new()
            .with_max_connections_count(1)
            .with_reconnect_timeout_in_seconds(retry_after);
        let listener = SlackClientSocketModeListener::new(&config, environment, callbacks);
        if let Err(e) = listener.listen_for(&token).await {
            tracing::error!(error = %e, "Slack Socket Mode could not start");
            return;
        }
        listener.start().await;
        tracing::info!("Slack Socket Mode started");
        // slack-morphism's own logs are off (they hold connection tickets), so say it here when
        // no connection comes up.
        let watchdog = {
            let state = state.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                if state.hellos.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                    tracing::error!("Slack Socket Mode has not connected in 30 s: check slack.app_token (xapp-…, scope connections:write), that Socket Mode is on for the app, and the network");
                }
            })
        };
        shutdown.fired().await;
        watchdog.abort();
        listener.shutdown().await;
        tracing::info!("Slack Socket Mode closed");
    })
}

async fn state_of(user_state: &SlackClientEventsUserState) -> Option<Arc<SlackState>> {
    user_state
        .read()
        .await
        .get_user_state::<Arc<SlackState>>()
        .cloned()
}

async fn on_command(
    ev: SlackCommandEvent,
    _client: Arc<Client>,
    user_state: SlackClientEventsUserState,
) -> UserCallbackResult<SlackCommandEventResponse> {
    let state = state_of(&user_state).await.ok_or("Slack state missing")?;
    Ok(state.command(ev).await)
}

async fn on_interaction(
    ev: SlackInteractionEvent,
    _client: Arc<Client>,
    user_state: SlackClientEventsUserState,
) -> UserCallbackResult<()> {
    if let Some(state) = state_of(&user_state).await {
        state.interaction(ev);
    }
    Ok(())
}

/// Counts connections: the first hello is the connect, every later one a reconnect.
async fn on_hello(user_state: SlackClientEventsUserState) {
    let Some(state) = state_of(&user_state).await else {
        return;
    };
    if state
        .hellos
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        tracing::info!("Slack Socket Mode connected");
    } else {
        tracing::warn!("Slack Socket Mode reconnected");
        state.app.metrics.reconnect("slack_socket");
    }
}

/// Errors are logged and the envelope acknowledged anyway (200): a handler failure must not
/// make Slack redeliver the same command into the same failure.
fn on_error(
    error: Box<dyn std::error::Error + Send + Sync>,
    _client: Arc<Client>,
    _user_state: SlackClientEventsUserState,
) -> HttpStatusCode {
    // The error's text can carry the whole envelope (with its response_url and token): log the
    // parse error alone, or just the kind.
    use slack_morphism::errors::SlackClientError;
    match error.downcast_ref::<SlackClientError>() {
        Some(SlackClientError::ProtocolError(e)) => {
            tracing::warn!(error = %e.json_error, "Slack Socket Mode envelope could not be read")
        }
        Some(_) => tracing::warn!("Slack Socket Mode event failed (Slack client error)"),
        None => tracing::warn!("Slack Socket Mode event failed"),
    }
    HttpStatusCode::OK
}
