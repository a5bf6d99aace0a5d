//! The Slack Web API client: slack-morphism's, pointed at `slack.api_url`, with the bot token.
//!
//! Built through [`SlackApi::new`] only. Its connector accepts `http://` as well as `https://`
//! (slack-morphism's default is https-only) so that tests can point it at a loopback fake;
//! in production the configured URL is Slack's https one. Every call has a time limit, because
//! the crate sets none.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use slack_morphism::prelude::*;

use crate::adapters::deliver::DeliveryError;
use crate::core::secret::Secret;
use slack_morphism::errors::SlackClientError;

/// slack-morphism's client type with our connector.
pub type Client = SlackClient<SlackClientHyperHttpsConnector>;

/// How long one Web API call or response_url post may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Slack's Web API, as the bot uses it.
pub struct SlackApi {
    pub client: Arc<Client>,
    bot_token: SlackApiToken,
}

/// A message posted to a `response_url`: always with an explicit `response_type`.
#[derive(Serialize)]
pub struct ResponseUrlMessage<'a> {
    #[serde(flatten)]
    pub content: &'a SlackMessageContent,
    pub response_type: SlackMessageResponseType,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replace_original: bool,
}

/// Builds the https-or-http connector (ring, webpki roots: no system CA store needed).
pub fn connector(api_url: &str) -> SlackClientHyperHttpsConnector {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(3)));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    SlackClientHyperConnector::with_connector(https)
        .with_slack_api_url(api_url.trim_end_matches('/'))
}

impl SlackApi {
    /// A client for `api_url` using `bot_token`.
    pub fn new(api_url: &str, bot_token: &Secret) -> Self {
        SlackApi {
            client: Arc::new(SlackClient::new(connector(api_url))),
            bot_token: SlackApiToken::new(SlackApiTokenValue::new(bot_token.expose().to_string())),
        }
    }

    /// Members (user ids) of one user group.
    pub async fn usergroup_members(&self, group: &str) -> Result<Vec<String>, String> {
        let session = self.client.open_session(&self.bot_token);
        let request = SlackApiUserGroupsUsersListRequest::new(group.to_string().into());
        match tokio::time::timeout(CALL_TIMEOUT, session.usergroups_users_list(&request)).await {
            Ok(Ok(r)) => Ok(r.users.into_iter().map(|u| u.0).collect()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {}s", CALL_TIMEOUT.as_secs())),
        }
    }

    /// A user's email (`users.info`, scope `users:read.email`); `Ok(None)` when Slack shows none.
    pub async fn user_email(&self, user: &str) -> Result<Option<String>, String> {
        let session = self.client.open_session(&self.bot_token);
        let request = SlackApiUsersInfoRequest::new(user.to_string().into());
        match tokio::time::timeout(CALL_TIMEOUT, session.users_info(&request)).await {
            Ok(Ok(r)) => Ok(r
                .user
                .profile
                .and_then(|p| p.email)
                .map(|e| e.0.trim().to_ascii_lowercase())
                .filter(|e| !e.is_empty())),
            Ok(Err(e)) => Err(format!("users.info failed: {e}")),
            Err(_) => Err(format!("no answer within {}s", CALL_TIMEOUT.as_secs())),
        }
    }

    /// Posts `text` to a channel (`chat.postMessage`: the transparency channel).
    pub async fn post_message(&self, channel: &str, text: &str) -> Result<(), String> {
        let session = self.client.open_session(&self.bot_token);
        let request = SlackApiChatPostMessageRequest::new(
            channel.to_string().into(),
            SlackMessageContent::new().with_text(text.to_string()),
        );
        match tokio::time::timeout(CALL_TIMEOUT, session.chat_post_message(&request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("chat.postMessage failed: {e}")),
            Err(_) => Err(format!("no answer within {}s", CALL_TIMEOUT.as_secs())),
        }
    }

    /// Posts an ephemeral message to a `response_url` (a late answer, or a replacement after a
    /// button click when `replace_original`).
    pub async fn post_response(
        &self,
        response_url: &url::Url,
        content: &SlackMessageContent,
        replace_original: bool,
    ) -> Result<(), DeliveryError> {
        let message = ResponseUrlMessage {
            content,
            response_type: SlackMessageResponseType::Ephemeral,
            replace_original,
        };
        let span = tracing::Span::current();
        let context = SlackClientApiCallContext {
            rate_control_params: None,
            token: None,
            tracing_span: &span,
            is_sensitive_url: true,
        };
        let call = self
            .client
            .http_api
            .connector
            .http_post_uri::<_, serde_json::Value>(response_url.clone(), &message, context);
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                // 429 is not retried: Slack said "not now" for a message whose link lives 30 s,
                // and a response_url takes only five posts; waiting out Retry-After would deliver
                // a dead link, and retrying sooner only earns more 429s.
                let retry = match &e {
                    SlackClientError::HttpError(h) => h.status_code.is_server_error(),
                    SlackClientError::HttpProtocolError(_) | SlackClientError::EndOfStream(_) => {
                        true
                    }
                    _ => false,
                };
                let detail = match &e {
                    SlackClientError::HttpError(h) => {
                        format!("Slack answered HTTP {}", h.status_code.as_u16())
                    }
                    SlackClientError::RateLimitError(_) => {
                        "Slack answered HTTP 429 (rate limited); not retried".to_string()
                    }
                    _ => "the post to Slack failed".to_string(),
                };
                Err(DeliveryError { detail, retry })
            }
            // It may have arrived: posting again could show the answer twice.
            Err(_) => Err(DeliveryError {
                detail: format!("no answer within {}s", CALL_TIMEOUT.as_secs()),
                retry: false,
            }),
        }
    }
}
