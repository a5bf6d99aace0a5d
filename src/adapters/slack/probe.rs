//! What `portal-bot check` asks Slack: is the bot token accepted, and does it carry the scope
//! of each Web API method the configured features will call? A missing scope otherwise shows
//! up only when someone asks (a scoped asker refused, transparency lines lost); here Slack's
//! `missing_scope` answer is turned into one line naming the scope (its `needed`) and the
//! setting that needs it.
//!
//! Nothing is posted and nobody is looked up for real: `users.info` asks about the bot itself,
//! `users.lookupByEmail` about an address that can't exist, and `chat.postMessage` is sent
//! without text, which Slack refuses (`no_text`) only after the token's scope has passed.

use super::client::{CallError, SlackApi};
use crate::core::config::{Config, Scope};

/// One line of `check`'s answer about Slack, and whether it is a problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    pub line: String,
}

impl Finding {
    fn ok(line: String) -> Self {
        Finding { ok: true, line }
    }
    fn problem(line: String) -> Self {
        Finding { ok: false, line }
    }
}

/// An address no workspace has (`.invalid` is reserved): `users.lookupByEmail` answers
/// `users_not_found` once the token may look emails up.
const NOBODY: &str = "portal-bot-check@example.invalid";

/// Asks Slack what the configured features need. Empty without `[slack]`.
pub async fn probe(config: &Config) -> Vec<Finding> {
    let Some(slack) = &config.slack else {
        return Vec::new();
    };
    let api = SlackApi::new(slack.api_url.as_str(), &slack.bot_token);
    let workspace = match api.workspace().await {
        Ok(w) => w,
        Err(e) => {
            return vec![Finding::problem(format!(
                "slack: {e}. Check slack.bot_token or SLACK_BOT_TOKEN (xoxb-…, the app installed to the workspace)."
            ))]
        }
    };
    let mut findings = vec![Finding::ok(format!(
        "slack: bot token accepted (workspace {}, bot user {})",
        workspace.team_id, workspace.bot_user
    ))];
    let access = &config.access;
    let groups = access
        .slack_usergroups
        .iter()
        .chain(&access.admin_slack_usergroups)
        .next();
    if let Some(group) = groups {
        let answer = api.usergroup_members(group).await.map(|_| ());
        findings.push(judge(answer, "[access] slack_usergroups", &[]));
    }
    if access.scope == Scope::Owned {
        let what = "[access] scope = \"owned\" (the asker's email)";
        findings.push(judge(
            api.user_info(&workspace.bot_user).await.map(|_| ()),
            what,
            &[],
        ));
        findings.push(judge(
            api.user_by_email(NOBODY).await.map(|_| ()),
            what,
            &["users_not_found"],
        ));
    }
    if config.approvals.is_some() {
        // Requests reach owners by email and direct message.
        let what = "[approvals] (owners found by email, asked by direct message)";
        findings.push(judge(
            api.user_by_email(NOBODY).await.map(|_| ()),
            what,
            &["users_not_found"],
        ));
    }
    if let Some(channel) = &config.notify.slack_channel {
        let answer = api
            .post_content(channel, slack_morphism::prelude::SlackMessageContent::new())
            .await
            .map(|_| ());
        let mut finding = judge(answer, "[notify] slack_channel", &["no_text"]);
        if !finding.ok && finding.line.contains("Slack said not_in_channel") {
            finding
                .line
                .push_str(&format!(" Invite the bot to {channel}."));
        }
        if !finding.ok && finding.line.contains("Slack said channel_not_found") {
            finding.line.push_str(&format!(
                " Check notify.slack_channel ({channel}): a channel id, and the bot invited to it."
            ));
        }
        findings.push(finding);
    }
    findings
}

/// One call's answer as a line: fine (an answer, or one of the `fine` error codes, which Slack
/// gives only once the scope has passed), a missing scope named with what needs it, or
/// Slack's word otherwise.
fn judge(answer: Result<(), CallError>, what: &str, fine: &[&str]) -> Finding {
    match answer {
        Ok(()) => Finding::ok(format!("slack: {what}: the token has the scope it needs")),
        Err(CallError::Slack { code, .. }) if fine.contains(&code.as_str()) => {
            Finding::ok(format!("slack: {what}: the token has the scope it needs"))
        }
        Err(CallError::Slack {
            method,
            code,
            needed: Some(needed),
        }) if code == "missing_scope" => Finding::problem(format!(
            "slack: {method} is missing the {needed} scope, which {what} needs: add it under OAuth & Permissions (or in the app manifest) and reinstall the app"
        )),
        Err(e) => Finding::problem(format!("slack: {what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_scope_is_named_with_what_needs_it() {
        let missing = judge(
            Err(CallError::Slack {
                method: "users.info",
                code: "missing_scope".into(),
                needed: Some("users:read".into()),
            }),
            "[access] scope = \"owned\"",
            &[],
        );
        assert!(!missing.ok);
        assert!(
            missing.line.contains("users.info is missing the users:read scope, which [access] scope = \"owned\" needs"),
            "{}",
            missing.line
        );
        let probe_answer = judge(
            Err(CallError::Slack {
                method: "chat.postMessage",
                code: "no_text".into(),
                needed: None,
            }),
            "[notify] slack_channel",
            &["no_text"],
        );
        assert!(probe_answer.ok, "{}", probe_answer.line);
        let other = judge(
            Err(CallError::Failed {
                method: "users.info",
                detail: "no answer within 5s".into(),
            }),
            "x",
            &[],
        );
        assert!(!other.ok && other.line.contains("no answer within 5s"));
    }
}
