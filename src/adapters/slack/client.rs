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

/// A Web API call that failed, for the operator: the method and Slack's error code (with the
/// scope Slack says is missing, for `missing_scope`), or what went wrong on the way. Never the
/// answer's body: it can hold people's details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("{method} failed: Slack said {code}{}", needed.as_deref().map(|n| format!(" (the bot's token needs the {n} scope)")).unwrap_or_default())]
    Slack {
        method: &'static str,
        /// Slack's `error`, e.g. `missing_scope`, `user_not_found`.
        code: String,
        /// With `missing_scope`: the scope(s) Slack names in `needed`.
        needed: Option<String>,
    },
    #[error("{method} failed: {detail}")]
    Failed {
        method: &'static str,
        detail: String,
    },
}

impl CallError {
    /// slack-morphism's error for `method`, without its body (only `needed` is read from it).
    pub fn of(method: &'static str, e: &SlackClientError) -> Self {
        match e {
            SlackClientError::ApiError(api) => CallError::Slack {
                method,
                code: one_word(&api.code),
                needed: api.http_response_body.as_deref().and_then(needed_scope),
            },
            SlackClientError::HttpError(h) => CallError::Failed {
                method,
                detail: format!("Slack answered HTTP {}", h.status_code.as_u16()),
            },
            SlackClientError::RateLimitError(_) => CallError::Failed {
                method,
                detail: "rate limited by Slack".into(),
            },
            SlackClientError::HttpProtocolError(_) | SlackClientError::EndOfStream(_) => {
                CallError::Failed {
                    method,
                    detail: "could not reach Slack".into(),
                }
            }
            _ => CallError::Failed {
                method,
                detail: "Slack's answer could not be read".into(),
            },
        }
    }

    fn timeout(method: &'static str) -> Self {
        CallError::Failed {
            method,
            detail: format!("no answer within {}s", CALL_TIMEOUT.as_secs()),
        }
    }
}

/// `needed` of a Web API error answer (`{"ok":false,"error":"missing_scope","needed":"…"}`),
/// kept only when it looks like scope names.
pub fn needed_scope(body: &str) -> Option<String> {
    let answer: serde_json::Value = serde_json::from_str(body).ok()?;
    let needed = answer.get("needed")?.as_str()?.trim();
    let scopes = !needed.is_empty()
        && needed.len() <= 200
        && needed
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":._,-".contains(c));
    scopes.then(|| needed.to_string())
}

/// An error code for a log line: Slack's codes are short snake_case words; anything else is
/// cut and cleaned rather than echoed.
fn one_word(code: &str) -> String {
    code.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The bot's own workspace, as `auth.test` names it: whose members' emails the bot goes by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// The workspace (`team_id`).
    pub team_id: String,
    /// The Enterprise Grid organisation, when the workspace is part of one.
    pub enterprise_id: Option<String>,
    /// The bot's own user id.
    pub bot_user: String,
}

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

    /// The user with this email (`users.lookupByEmail`, scope `users:read.email`): the
    /// answer's JSON. `check` asks it about an address no one has, to learn whether the token
    /// may read emails (`users.info` leaves the email out without that scope, no error).
    pub async fn user_by_email(&self, email: &str) -> Result<serde_json::Value, CallError> {
        self.get("users.lookupByEmail", &[("email", email)]).await
    }

    /// Members (user ids) of one user group.
    pub async fn usergroup_members(&self, group: &str) -> Result<Vec<String>, CallError> {
        const METHOD: &str = "usergroups.users.list";
        let session = self.client.open_session(&self.bot_token);
        let request = SlackApiUserGroupsUsersListRequest::new(group.to_string().into());
        match tokio::time::timeout(CALL_TIMEOUT, session.usergroups_users_list(&request)).await {
            Ok(Ok(r)) => Ok(r.users.into_iter().map(|u| u.0).collect()),
            Ok(Err(e)) => Err(CallError::of(METHOD, &e)),
            Err(_) => Err(CallError::timeout(METHOD)),
        }
    }

    /// `GET {api_url}/{method}` with the bot token; Slack's whole answer as JSON (read as
    /// JSON rather than slack-morphism's types, which drop fields the bot decides on, such as
    /// `is_email_confirmed`).
    async fn get(
        &self,
        method: &'static str,
        params: &[(&'static str, &str)],
    ) -> Result<serde_json::Value, CallError> {
        let session = self.client.open_session(&self.bot_token);
        let params: Vec<(&str, Option<&str>)> =
            params.iter().map(|(k, v)| (*k, Some(*v))).collect();
        let call = session
            .http_session_api
            .http_get::<serde_json::Value, _, &str>(method, &params, None);
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(CallError::of(method, &e)),
            Err(_) => Err(CallError::timeout(method)),
        }
    }

    /// `POST {api_url}/{method}` with the bot token and a JSON body; Slack's answer as JSON.
    async fn post<RQ: serde::Serialize + Send + Sync>(
        &self,
        method: &'static str,
        request: &RQ,
    ) -> Result<serde_json::Value, CallError> {
        let session = self.client.open_session(&self.bot_token);
        let call = session
            .http_session_api
            .http_post::<RQ, serde_json::Value>(method, request, None);
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(CallError::of(method, &e)),
            Err(_) => Err(CallError::timeout(method)),
        }
    }

    /// Opens a modal for the person whose click carried `trigger_id` (`views.open`; the
    /// trigger lives 3 seconds).
    pub async fn open_view(&self, trigger_id: &str, view: SlackView) -> Result<(), CallError> {
        let request = SlackApiViewsOpenRequest::new(trigger_id.to_string().into(), view);
        self.post("views.open", &request).await.map(|_| ())
    }

    /// The Slack user with this email, if the workspace has one (`users.lookupByEmail`).
    pub async fn user_id_by_email(&self, email: &str) -> Result<Option<String>, CallError> {
        match self.user_by_email(email).await {
            Ok(answer) => Ok(answer
                .pointer("/user/id")
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)),
            Err(CallError::Slack { code, .. }) if code == "users_not_found" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The direct-message channel with `user` (`conversations.open`).
    pub async fn open_dm(&self, user: &str) -> Result<String, CallError> {
        let request = SlackApiConversationsOpenRequest::new().with_users(vec![user.into()]);
        let answer = self.post("conversations.open", &request).await?;
        answer
            .pointer("/channel/id")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .ok_or(CallError::Failed {
                method: "conversations.open",
                detail: "the answer names no channel".into(),
            })
    }

    /// Posts `content` to `channel` and answers the message's `ts` (to update it later).
    pub async fn post_for_update(
        &self,
        channel: &str,
        content: SlackMessageContent,
    ) -> Result<String, CallError> {
        let request = SlackApiChatPostMessageRequest::new(channel.to_string().into(), content);
        let answer = self.post("chat.postMessage", &request).await?;
        answer
            .get("ts")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .ok_or(CallError::Failed {
                method: "chat.postMessage",
                detail: "the answer names no ts".into(),
            })
    }

    /// Replaces the message `ts` in `channel` (`chat.update`).
    pub async fn update(
        &self,
        channel: &str,
        ts: &str,
        content: SlackMessageContent,
    ) -> Result<(), CallError> {
        let request = SlackApiChatUpdateRequest::new(
            channel.to_string().into(),
            content,
            ts.to_string().into(),
        );
        self.post("chat.update", &request).await.map(|_| ())
    }

    /// Whose token this is: the bot's workspace (`auth.test`).
    pub async fn workspace(&self) -> Result<Workspace, CallError> {
        let answer = self.get("auth.test", &[]).await?;
        let text = |k: &str| {
            answer
                .get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        match (text("team_id"), text("user_id")) {
            (Some(team_id), Some(bot_user)) => Ok(Workspace {
                team_id,
                enterprise_id: text("enterprise_id"),
                bot_user,
            }),
            _ => Err(CallError::Failed {
                method: "auth.test",
                detail: "the answer names no team_id or user_id".into(),
            }),
        }
    }

    /// One user as Slack describes them (`users.info`, scopes `users:read` and
    /// `users:read.email`): the answer's JSON.
    pub async fn user_info(&self, user: &str) -> Result<serde_json::Value, CallError> {
        self.get("users.info", &[("user", user)]).await
    }

    /// Posts `text` to a channel (`chat.postMessage`: the transparency channel).
    pub async fn post_message(&self, channel: &str, text: &str) -> Result<(), CallError> {
        self.post_content(
            channel,
            SlackMessageContent::new().with_text(text.to_string()),
        )
        .await
    }

    /// Posts `content` to a channel (`chat.postMessage`). An empty `content` posts nothing:
    /// Slack answers `no_text` once the token's scope and the channel pass (`check` uses it).
    pub async fn post_content(
        &self,
        channel: &str,
        content: SlackMessageContent,
    ) -> Result<(), CallError> {
        const METHOD: &str = "chat.postMessage";
        let session = self.client.open_session(&self.bot_token);
        let request = SlackApiChatPostMessageRequest::new(channel.to_string().into(), content);
        match tokio::time::timeout(CALL_TIMEOUT, session.chat_post_message(&request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(CallError::of(METHOD, &e)),
            Err(_) => Err(CallError::timeout(METHOD)),
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
