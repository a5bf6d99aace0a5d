//! Slack's side of the core's [`Directory`]: a person's email (`users.info`, cached) and their
//! user groups as the group cache knows them now.
//!
//! The email decides `scope = "owned"`, so it is taken only when Slack vouches for it: the
//! person is a member of the bot's own workspace (not a Slack Connect user of another
//! organisation, whose email is that organisation's word), their account is active, and their
//! email is confirmed. Anything else is refused with the reason ([`NoEmail`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::client::{SlackApi, Workspace};
use super::groups::GroupCache;
use crate::core::asker::{Asker, Groups};
use crate::core::directory::{Directory, NoEmail};

/// Emails cached at once (O(1) eviction when full).
const MAX_EMAILS: usize = 10_000;

/// The Slack directory.
pub struct SlackDirectory {
    api: Arc<SlackApi>,
    groups: Arc<GroupCache>,
    /// Each person's verdict (their email, or why not) and when Slack gave it. A failed call
    /// is not remembered.
    emails: quick_cache::sync::Cache<String, (Result<String, NoEmail>, Instant)>,
    /// How long a verdict is trusted: `access.ownership_ttl`, like every other answer the
    /// ownership check relies on.
    ttl: Duration,
    /// The bot's workspace (`auth.test`, asked once).
    workspace: OnceCell<Workspace>,
}

impl SlackDirectory {
    /// A directory over the bot's Web API client and the user-group cache; verdicts are
    /// trusted for `ttl`.
    pub fn new(api: Arc<SlackApi>, groups: Arc<GroupCache>, ttl: Duration) -> Self {
        SlackDirectory {
            api,
            groups,
            emails: quick_cache::sync::Cache::new(MAX_EMAILS),
            ttl,
            workspace: OnceCell::new(),
        }
    }

    async fn workspace(&self) -> Result<&Workspace, NoEmail> {
        self.workspace
            .get_or_try_init(|| self.api.workspace())
            .await
            .map_err(|e| NoEmail::Unavailable(e.to_string()))
    }
}

#[async_trait]
impl Directory for SlackDirectory {
    async fn email(&self, asker: &Asker) -> Result<String, NoEmail> {
        if let Some((verdict, at)) = self.emails.get(&asker.user_id) {
            if at.elapsed() < self.ttl {
                return verdict;
            }
        }
        let workspace = self.workspace().await?;
        let answer = self
            .api
            .user_info(&asker.user_id)
            .await
            .map_err(|e| NoEmail::Unavailable(e.to_string()))?;
        let verdict = trusted_email(&answer, workspace);
        if !matches!(verdict, Err(NoEmail::Unavailable(_))) {
            self.emails
                .insert(asker.user_id.clone(), (verdict.clone(), Instant::now()));
        }
        verdict
    }

    async fn groups_now(&self, asker: &Asker) -> Groups {
        self.groups.groups_of(&asker.user_id)
    }
}

/// `users.info`'s answer → the email the bot may go by (lower-cased), or why not: a
/// deactivated account, someone outside the bot's workspace (another team, or Slack's
/// `is_stranger`), no email, or an email not confirmed (`is_email_confirmed` must say `true`).
/// Pure, so that any answer can be thrown at it.
pub fn trusted_email(answer: &Value, workspace: &Workspace) -> Result<String, NoEmail> {
    let Some(user) = answer.get("user").filter(|u| u.is_object()) else {
        return Err(NoEmail::Unavailable(
            "users.info answered without a user".into(),
        ));
    };
    let yes = |key: &str| user.get(key).and_then(Value::as_bool) == Some(true);
    let text = |pointer: &str| user.pointer(pointer).and_then(Value::as_str).map(str::trim);
    if yes("deleted") {
        return Err(NoEmail::Deactivated);
    }
    let team = text("/team_id");
    let org = workspace.enterprise_id.as_deref();
    let member = team == Some(workspace.team_id.as_str())
        || (org.is_some() && (team == org || text("/enterprise_user/enterprise_id") == org));
    if yes("is_stranger") || !member {
        return Err(NoEmail::External);
    }
    let email = text("/profile/email")
        .unwrap_or_default()
        .to_ascii_lowercase();
    if email.is_empty() {
        return Err(NoEmail::Missing);
    }
    if !yes("is_email_confirmed") {
        return Err(NoEmail::Unconfirmed);
    }
    Ok(email)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn acme() -> Workspace {
        Workspace {
            team_id: "T1".into(),
            enterprise_id: None,
            bot_user: "UBOT".into(),
        }
    }

    fn member() -> Value {
        json!({"ok": true, "user": {"id": "U1", "team_id": "T1", "deleted": false,
            "is_email_confirmed": true, "profile": {"email": " Casey@Acme.com "}}})
    }

    #[test]
    fn only_an_active_member_with_a_confirmed_email_is_taken_at_their_word() {
        assert_eq!(
            trusted_email(&member(), &acme()),
            Ok("casey@acme.com".into())
        );
        let with = |pointer: &str, value: Value| {
            let mut answer = member();
            *answer.pointer_mut(pointer).unwrap() = value;
            trusted_email(&answer, &acme())
        };
        assert_eq!(
            with("/user/deleted", json!(true)),
            Err(NoEmail::Deactivated)
        );
        assert_eq!(with("/user/team_id", json!("T2")), Err(NoEmail::External));
        assert_eq!(with("/user/team_id", Value::Null), Err(NoEmail::External));
        assert_eq!(
            with("/user/is_email_confirmed", json!(false)),
            Err(NoEmail::Unconfirmed)
        );
        assert_eq!(
            with("/user/is_email_confirmed", Value::Null),
            Err(NoEmail::Unconfirmed)
        );
        assert_eq!(with("/user/profile", json!({})), Err(NoEmail::Missing));
        let mut stranger = member();
        stranger["user"]["is_stranger"] = json!(true);
        assert_eq!(trusted_email(&stranger, &acme()), Err(NoEmail::External));
        assert!(matches!(
            trusted_email(&json!({"ok": true}), &acme()),
            Err(NoEmail::Unavailable(_))
        ));
    }

    #[test]
    fn enterprise_grid_members_of_the_same_organisation_are_members() {
        let grid = Workspace {
            enterprise_id: Some("E1".into()),
            ..acme()
        };
        let mut other_workspace = member();
        other_workspace["user"]["team_id"] = json!("T9");
        other_workspace["user"]["enterprise_user"] = json!({"enterprise_id": "E1"});
        assert_eq!(
            trusted_email(&other_workspace, &grid),
            Ok("casey@acme.com".into())
        );
        other_workspace["user"]["enterprise_user"] = json!({"enterprise_id": "E2"});
        assert_eq!(
            trusted_email(&other_workspace, &grid),
            Err(NoEmail::External)
        );
        assert_eq!(
            trusted_email(&other_workspace, &acme()),
            Err(NoEmail::External)
        );
    }

    proptest! {
        #[test]
        fn no_answer_panics_and_an_email_needs_every_condition(
            body in "\\PC{0,300}",
            team in prop_oneof![Just("T1".to_string()), "[A-Z0-9]{0,4}"],
            deleted in any::<Option<bool>>(),
            stranger in any::<Option<bool>>(),
            confirmed in any::<Option<bool>>(),
            email in "\\PC{0,30}",
        ) {
            if let Ok(v) = serde_json::from_str::<Value>(&body) {
                let _ = trusted_email(&v, &acme());
            }
            let answer = json!({"user": {"team_id": team, "deleted": deleted,
                "is_stranger": stranger, "is_email_confirmed": confirmed,
                "profile": {"email": email}}});
            if let Ok(e) = trusted_email(&answer, &acme()) {
                prop_assert!(team == "T1" && deleted != Some(true) && stranger != Some(true));
                prop_assert!(confirmed == Some(true) && !e.is_empty());
                prop_assert_eq!(e, email.trim().to_ascii_lowercase());
            }
        }
    }
}
