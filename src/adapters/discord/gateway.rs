//! Discord's gateway (gateway mode): serenity holds the WebSocket (heartbeats, reconnects) with
//! no privileged intents; interactions go to the same handler as the endpoint's, and the
//! initial response is posted back through REST.
//!
//! With a custom `api_url` the gateway address is fetched here first and start-up fails if
//! that fails: serenity would otherwise fall back to Discord's real gateway.

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use serenity::all::{
    ConnectionStage, Context, EventHandler, GatewayIntents, Interaction, Ready, ResumedEvent,
    ShardStageUpdateEvent,
};

use super::rest;
use super::DiscordState;
use crate::core::config::DiscordConfig;
use crate::shutdown::Shutdown;
use crate::StartError;

struct Handler {
    state: Arc<DiscordState>,
    readies: std::sync::atomic::AtomicU64,
    /// The readiness check: up while the gateway is connected.
    up: Arc<AtomicBool>,
}

#[serenity::async_trait]
impl EventHandler for Handler {
    async fn shard_stage_update(&self, _ctx: Context, event: ShardStageUpdateEvent) {
        self.up
            .store(event.new == ConnectionStage::Connected, Ordering::Relaxed);
    }

    async fn ready(&self, _ctx: Context, ready: Ready) {
        self.up.store(true, Ordering::Relaxed);
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
        self.up.store(true, Ordering::Relaxed);
        // A dropped connection is usually resumed (no new READY): also a reconnect.
        tracing::warn!("Discord gateway reconnected (session resumed)");
        self.state.app.metrics.reconnect("discord_gateway");
    }

    async fn interaction_create(&self, _ctx: Context, interaction: Interaction) {
        let (id, token) = (interaction.id(), interaction.token().to_string());
        let state = self.state.clone();
        let budget = gateway_budget(
            state.app.config.server.reply_budget,
            id.created_at().unix_timestamp(),
        );
        // Off the gateway's event loop (a slow Planhat must not hold up other events), and
        // tracked, so shutdown waits for the answer.
        state.app.tasks.clone().spawn(async move {
            if let Some(response) = state.interaction(interaction, budget).await {
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
                up: state.app.readiness.check("discord_gateway"),
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

/// Time left for an inline answer over the gateway. Discord's 3 seconds started when it
/// created the interaction (its id's timestamp), the event took time to arrive, and the answer
/// still needs its own REST call: so the budget is shortened by both, never below zero.
fn gateway_budget(reply_budget: Duration, created_unix_secs: i64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    // Whole-second precision here; and a transit outside 0-3 s means the clocks disagree, so
    // it is not trusted at all.
    let transit = now - created_unix_secs as f64;
    let in_transit = if (0.0..3.0).contains(&transit) {
        Duration::from_secs_f64(transit)
    } else {
        Duration::ZERO
    };
    reply_budget
        .saturating_sub(in_transit.saturating_sub(Duration::from_secs(1)))
        .saturating_sub(Duration::from_millis(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_leaves_room_for_the_answer_and_ignores_untrustworthy_clocks() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let b = Duration::from_millis(2500);
        assert_eq!(gateway_budget(b, now), Duration::from_millis(2200));
        let late = gateway_budget(b, now - 2);
        assert!(
            late <= Duration::from_millis(1200) && late >= Duration::from_millis(200),
            "{late:?}"
        );
        assert_eq!(
            gateway_budget(b, now - 3600),
            Duration::from_millis(2200),
            "skewed clock ignored"
        );
        assert_eq!(gateway_budget(b, now + 60), Duration::from_millis(2200));
    }
}
