//! Discord's gateway (gateway mode): serenity holds the WebSocket (heartbeats, reconnects) with
//! no privileged intents; interactions go to the same handler as the endpoint's, and the
//! initial response is posted back through REST.
//!
//! With a custom `api_url` the gateway address is fetched here first and start-up fails if
//! that fails: serenity would otherwise fall back to Discord's real gateway.

use std::sync::Arc;
use std::time::Duration;

use serenity::all::{Context, EventHandler, GatewayIntents, Interaction, Ready, ResumedEvent};

use super::rest;
use super::DiscordState;
use crate::core::config::DiscordConfig;
use crate::shutdown::Shutdown;
use crate::StartError;

struct Handler {
    state: Arc<DiscordState>,
    readies: std::sync::atomic::AtomicU64,
}

#[serenity::async_trait]
impl EventHandler for Handler {
    async fn ready(&self, _ctx: Context, ready: Ready) {
        // Every READY after the first is a new session: a reconnect operators should see.
        if self
            .readies
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            tracing::info!(user = %ready.user.name, guilds = ready.guilds.len(), "Discord gateway ready");
        } else {
            tracing::warn!("Discord gateway reconnected (new session)");
            self.state.app.metrics.reconnect("discord_gateway");
        }
    }

    async fn resume(&self, _ctx: Context, _: ResumedEvent) {
        // A dropped connection is usually resumed (no new READY): also a reconnect.
        tracing::warn!("Discord gateway reconnected (session resumed)");
        self.state.app.metrics.reconnect("discord_gateway");
    }

    async fn interaction_create(&self, _ctx: Context, interaction: Interaction) {
        let (id, token) = (interaction.id(), interaction.token().to_string());
        let state = self.state.clone();
        // Off the gateway's event loop: a slow Planhat must not hold up other events.
        tokio::spawn(async move {
            if let Some(response) = state.interaction(interaction).await {
                if let Err(e) = state
                    .http
                    .create_interaction_response(id, &token, &response, Vec::new())
                    .await
                {
                    tracing::warn!(error = %rest::describe(&e), "could not answer a Discord interaction");
                }
            }
        });
    }
}

/// Connects the gateway and runs it until shutdown.
pub async fn spawn(
    state: Arc<DiscordState>,
    config: &DiscordConfig,
    mut shutdown: Shutdown,
) -> Result<tokio::task::JoinHandle<()>, StartError> {
    let gateway_url = if rest::is_custom(config) {
        let gateway = state.http.get_gateway().await.map_err(|e| {
            StartError::Discord(format!(
                "cannot get the gateway address: {}",
                rest::describe(&e)
            ))
        })?;
        Some(gateway.url)
    } else {
        None
    };
    // The gateway gets its own REST client built by the same helper (same proxy rules).
    let client =
        serenity::client::ClientBuilder::new_with_http(rest::http(config), GatewayIntents::empty())
            .event_handler(Handler {
                state,
                readies: std::sync::atomic::AtomicU64::new(0),
            });
    let mut client = client.await.map_err(|e| {
        StartError::Discord(format!(
            "cannot start the gateway client: {}",
            rest::describe(&e)
        ))
    })?;
    if let Some(url) = gateway_url {
        *client.ws_url.lock().await = url;
    }
    let shards = client.shard_manager.clone();
    Ok(tokio::spawn(async move {
        tokio::select! {
            result = client.start() => {
                if let Err(e) = result {
                    tracing::error!(error = %rest::describe(&e), "Discord gateway stopped");
                }
            }
            _ = shutdown.fired() => {
                // shutdown_all can wait forever if no shard ever connected.
                let _ = tokio::time::timeout(Duration::from_secs(5), shards.shutdown_all()).await;
                tracing::info!("Discord gateway closed");
            }
        }
    }))
}
