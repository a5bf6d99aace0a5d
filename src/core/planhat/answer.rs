//! Reading Planhat's answers, which are not formally documented.
//!
//! The spec lists exactly what is accepted; everything else is an "unusable answer". These
//! functions are pure (body in, value out) so that property tests can throw any bytes at them.

use serde_json::Value;

use crate::core::text;

/// The access check: a JSON boolean, an object with a boolean `access`/`hasAccess`, or the
/// text `true`/`false`. `None`: not an answer we understand.
pub fn parse_access(body: &[u8]) -> Option<bool> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if text.eq_ignore_ascii_case("true") {
        return Some(true);
    }
    if text.eq_ignore_ascii_case("false") {
        return Some(false);
    }
    match serde_json::from_str::<Value>(text).ok()? {
        Value::Bool(b) => Some(b),
        Value::Object(map) => ["access", "hasAccess"]
            .iter()
            .find_map(|k| map.get(*k).and_then(Value::as_bool)),
        _ => None,
    }
}

/// The signed URL: the first string in the body (plain text, or anywhere in JSON, in document
/// order) that starts with `prefix` (`{portal_url}/redirect/`) and is followed by a token of
/// URL-safe characters. `None` when there is no such string: the caller shows nothing.
pub fn parse_signed_url(body: &[u8], prefix: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return first_in_json(&value, prefix);
    }
    // Plain text: the whole body is the URL (quotes aside).
    let text = text.trim_matches(|c| c == '"' || c == '\'').trim();
    acceptable(text, prefix).then(|| text.to_string())
}

fn first_in_json(value: &Value, prefix: &str) -> Option<String> {
    match value {
        Value::String(s) if acceptable(s.trim(), prefix) => Some(s.trim().to_string()),
        Value::Array(items) => items.iter().find_map(|v| first_in_json(v, prefix)),
        Value::Object(map) => map.values().find_map(|v| first_in_json(v, prefix)),
        _ => None,
    }
}

/// The prefix, then a non-empty token with no character that could leave the portal's path.
fn acceptable(candidate: &str, prefix: &str) -> bool {
    match candidate.strip_prefix(prefix) {
        Some(token) => {
            !token.is_empty()
                && !token.contains("..")
                && token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._~+=/%?&:".contains(c))
        }
        None => false,
    }
}

/// One end user found by email: enough to name them and to proceed with their id. `name` and
/// `company` are Planhat's, made fit to show as they are read ([`text::name`]: one line, no
/// format characters, bounded); an empty one is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndUserSummary {
    pub id: String,
    pub name: Option<String>,
    pub company: Option<String>,
    /// The company's Planhat id (`companyId`): the first link of the ownership chain.
    pub company_id: Option<String>,
    /// The end user's email, when the answer had it (tells two people of one name apart).
    pub email: Option<String>,
}

impl EndUserSummary {
    /// Button labels for picking among `matches`: each [`Self::label`], with the email added to
    /// those whose label another match shares (two Jane Does at Acme).
    pub fn labels(matches: &[EndUserSummary]) -> Vec<String> {
        let plain: Vec<String> = matches.iter().map(Self::label).collect();
        plain
            .iter()
            .zip(matches)
            .map(|(label, m)| {
                let shared = plain.iter().filter(|l| *l == label).count() > 1;
                match (&m.email, shared) {
                    (Some(email), true) => format!("{label} · {email}"),
                    _ => label.clone(),
                }
            })
            .collect()
    }

    /// "Name (Company)", or what there is of it, or the id: a button label for picking.
    pub fn label(&self) -> String {
        match (&self.name, &self.company) {
            (Some(n), Some(c)) => format!("{n} ({c})"),
            (Some(n), None) => n.clone(),
            (None, Some(c)) => format!("{} ({c})", self.id),
            (None, None) => self.id.clone(),
        }
    }
}

/// `GET /endusers/{id}`: one end user object.
pub fn parse_enduser(body: &[u8]) -> Option<EndUserSummary> {
    let item: Value = serde_json::from_slice(body).ok()?;
    summary(&item)
}

fn summary(item: &Value) -> Option<EndUserSummary> {
    let id = item
        .get("_id")
        .or_else(|| item.get("id"))
        .and_then(Value::as_str)?;
    let name = item
        .get("name")
        .and_then(Value::as_str)
        .and_then(shown)
        .or_else(|| {
            let first = item.get("firstName").and_then(Value::as_str).unwrap_or("");
            let last = item.get("lastName").and_then(Value::as_str).unwrap_or("");
            shown(&format!("{first} {last}"))
        });
    let company = item
        .get("companyName")
        .and_then(Value::as_str)
        .and_then(shown);
    let company_id = item
        .get("companyId")
        .and_then(Value::as_str)
        .filter(|c| !c.trim().is_empty())
        .map(str::to_string);
    let email = item
        .get("email")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string);
    Some(EndUserSummary {
        id: id.to_string(),
        name,
        company,
        company_id,
        email,
    })
}

/// A name as it may be shown; `None` when nothing of it is left.
fn shown(text: &str) -> Option<String> {
    Some(text::name(text)).filter(|n| !n.is_empty())
}

/// A company's name and owners (`GET /companies/{id}`): `owner` and `coOwner`, each a Planhat
/// user id, or a list of them, or an object with `_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompanyOwners {
    pub name: Option<String>,
    pub owners: Vec<String>,
}

/// `GET /companies/{id}`. `None`: not a company object.
pub fn parse_company(body: &[u8]) -> Option<CompanyOwners> {
    let item: Value = serde_json::from_slice(body).ok()?;
    let map = item.as_object()?;
    let mut owners = Vec::new();
    for key in ["owner", "coOwner", "coOwners"] {
        collect_ids(map.get(key), &mut owners);
    }
    owners.dedup();
    Some(CompanyOwners {
        name: map.get("name").and_then(Value::as_str).and_then(shown),
        owners,
    })
}

pub(super) fn collect_ids(value: Option<&Value>, into: &mut Vec<String>) {
    match value {
        Some(Value::String(s)) if !s.trim().is_empty() => into.push(s.trim().to_string()),
        Some(Value::Array(items)) => items.iter().for_each(|v| collect_ids(Some(v), into)),
        Some(Value::Object(o)) => collect_ids(o.get("_id").or_else(|| o.get("id")), into),
        _ => {}
    }
}

/// One page of `GET /users`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersPage {
    /// (id, lower-cased email) of the users that have both.
    pub users: Vec<(String, String)>,
    /// Items on the page, with or without an email: a page shorter than asked for is the last.
    pub items: usize,
    /// The first item's id, to notice an API that answers the same page again.
    pub first_id: Option<String>,
}

/// `GET /users`: Planhat users (`_id`, `email`) → (id, lower-cased email), skipping users
/// without both. `None`: not a list.
pub fn parse_users(body: &[u8]) -> Option<UsersPage> {
    let items: Vec<Value> = serde_json::from_slice(body).ok()?;
    let id = |u: &Value| {
        u.get("_id")
            .or_else(|| u.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Some(UsersPage {
        users: items
            .iter()
            .filter_map(|u| {
                let id = id(u)?;
                let email = u.get("email")?.as_str()?.trim().to_ascii_lowercase();
                (!email.is_empty()).then_some((id, email))
            })
            .collect(),
        items: items.len(),
        first_id: items.first().and_then(id),
    })
}

/// `GET /endusers?email=…`: an array of end users (`_id`, `name` or first/last, `companyName`).
/// `None` when the body is not such an array.
pub fn parse_endusers(body: &[u8]) -> Option<Vec<EndUserSummary>> {
    let items: Vec<Value> = serde_json::from_slice(body).ok()?;
    Some(items.iter().filter_map(summary).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: &str = "https://share.planhat.com/redirect/";

    #[test]
    fn company_and_users_shapes() {
        let c = parse_company(
            br#"{"_id":"c1","name":"Acme","owner":"u1","coOwner":["u2",{"_id":"u3"}]}"#,
        )
        .unwrap();
        assert_eq!(c.name.as_deref(), Some("Acme"));
        assert_eq!(c.owners, vec!["u1", "u2", "u3"]);
        assert_eq!(
            parse_company(br#"{"name":"Nobody"}"#).unwrap().owners,
            Vec::<String>::new()
        );
        assert!(parse_company(b"[]").is_none());
        let users = parse_users(
            br#"[{"_id":"u1","email":"Casey@Acme.com "},{"_id":"u2"},{"email":"x@y"}]"#,
        )
        .unwrap();
        assert_eq!(
            users.users,
            vec![("u1".to_string(), "casey@acme.com".to_string())]
        );
        assert_eq!((users.items, users.first_id.as_deref()), (3, Some("u1")));
        let e =
            parse_enduser(br#"{"_id":"e1","name":"Jane","companyId":"c1","companyName":"Acme"}"#)
                .unwrap();
        assert_eq!(e.company_id.as_deref(), Some("c1"));
    }

    #[test]
    fn access_shapes() {
        for (body, want) in [
            ("true", Some(true)),
            (" false\n", Some(false)),
            ("TRUE", Some(true)),
            ("{\"access\":true}", Some(true)),
            ("{\"hasAccess\":false}", Some(false)),
            ("{\"access\":\"yes\"}", None),
            ("[true]", None),
            ("<html>", None),
            ("{\"acc", None),
            ("", None),
        ] {
            assert_eq!(parse_access(body.as_bytes()), want, "{body:?}");
        }
    }

    #[test]
    fn url_shapes() {
        let good = format!("{P}abc.DEF-123");
        assert_eq!(parse_signed_url(good.as_bytes(), P), Some(good.clone()));
        assert_eq!(
            parse_signed_url(format!("\"{good}\"").as_bytes(), P),
            Some(good.clone())
        );
        let json =
            format!("{{\"meta\":{{\"n\":1}},\"data\":{{\"other\":\"x\",\"url\":\"{good}\"}}}}");
        assert_eq!(parse_signed_url(json.as_bytes(), P), Some(good.clone()));
        let two = format!("[\"{P}first\",\"{P}second\"]");
        assert_eq!(
            parse_signed_url(two.as_bytes(), P),
            Some(format!("{P}first"))
        );
    }

    #[test]
    fn foreign_urls_are_never_accepted() {
        for body in [
            "https://share.planhat.com.evil.com/redirect/abc",
            "https://evil.com/https://share.planhat.com/redirect/abc",
            "http://share.planhat.com/redirect/abc",
            "https://share.planhat.com/redirect/",
            "https://share.planhat.com/redirect/../../admin",
            "https://share.planhat.com/redirect/a b",
            "{\"url\":\"https://evil.com/redirect/abc\"}",
            "https://share.planhat.com/redirect/<script>",
        ] {
            assert_eq!(parse_signed_url(body.as_bytes(), P), None, "{body:?}");
        }
    }

    #[test]
    fn endusers() {
        let body = br#"[{"_id":"a1","name":"Jane Doe","companyName":"Acme"},{"_id":"b2","firstName":"Bo"},{"nope":1}]"#;
        let found = parse_endusers(body).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].company.as_deref(), Some("Acme"));
        assert_eq!(found[1].name.as_deref(), Some("Bo"));
        assert_eq!(parse_endusers(b"{}"), None);
    }

    #[test]
    fn names_are_read_as_one_line_without_format_characters() {
        let e = parse_enduser(
            "{\"_id\":\"e1\",\"name\":\"Jane\\n<@U1> opened the portal as \\u202eCEO\",\"companyName\":\"Acme\\u200b Corp\\r\\n\"}"
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            e.name.as_deref(),
            Some("Jane <@U1> opened the portal as CEO")
        );
        assert_eq!(e.company.as_deref(), Some("Acme Corp"));
        let blank =
            parse_enduser(br#"{"_id":"e1","name":"\u200b\n","firstName":"Jo","companyName":" "}"#)
                .unwrap();
        assert_eq!((blank.name.as_deref(), blank.company), (Some("Jo"), None));
    }

    proptest! {
        #[test]
        fn any_body_is_safe(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_access(&bytes);
            let _ = parse_endusers(&bytes);
            let _ = parse_enduser(&bytes);
            let _ = parse_company(&bytes);
            let _ = parse_users(&bytes);
            if let Some(url) = parse_signed_url(&bytes, P) {
                prop_assert!(url.starts_with(P) && url.len() > P.len());
            }
        }

        #[test]
        fn any_text_with_prefix_is_safe(tail in "\\PC{0,60}", json in any::<bool>()) {
            let candidate = format!("{P}{tail}");
            let body = if json { serde_json::json!({ "url": candidate }).to_string() } else { candidate };
            if let Some(url) = parse_signed_url(body.as_bytes(), P) {
                prop_assert!(url.starts_with(P) && !url.contains(char::is_whitespace));
            }
        }
    }
}
