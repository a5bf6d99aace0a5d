//! Registers `/portal` with Discord at start: a bulk overwrite (idempotent), in the configured
//! guilds (instant) or globally. Failures are logged loudly but do not stop the bot: the command
//! may well be registered from an earlier start.

use std::sync::Arc;

use serenity::all::{
    Command, CommandOptionType, CreateCommand, CreateCommandOption, GuildId, InteractionContext,
};
use serenity::http::Http;

use super::rest::describe;

/// The `/portal` command as Discord shows it; with `search`, its option autocompletes (end
/// users by name, email or company).
pub fn portal_command(search: bool) -> CreateCommand {
    let describe = if search {
        "Name, email, company or Planhat id; or: check <id>; or: help"
    } else {
        "Planhat end-user id or email; or: check <id>; or: help"
    };
    CreateCommand::new("portal")
        .description(
            "Open a customer's Planhat portal as one of their end users (only you see the link)",
        )
        .add_option(
            CreateCommandOption::new(CommandOptionType::String, "enduser", describe)
                .required(true)
                .max_length(200)
                .set_autocomplete(search),
        )
        .contexts(vec![InteractionContext::Guild])
}

/// Bulk-overwrites the application's commands.
pub async fn register(http: Arc<Http>, guild_ids: Vec<u64>, search: bool) {
    let commands = vec![portal_command(search)];
    if guild_ids.is_empty() {
        match Command::set_global_commands(&http, commands).await {
            Ok(_) => tracing::info!("registered /portal globally"),
            Err(e) => tracing::error!(error = %describe(&e), "could not register /portal globally"),
        }
        return;
    }
    for id in guild_ids {
        match GuildId::new(id).set_commands(&http, commands.clone()).await {
            Ok(_) => tracing::info!(guild = id, "registered /portal"),
            Err(e) => {
                tracing::error!(guild = id, error = %describe(&e), "could not register /portal")
            }
        }
    }
}
