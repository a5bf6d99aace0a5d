//! Reading Planhat's lists page by page, for the search index (`[search]`): end users (only the
//! fields the index keeps) and companies with their owners.
//!
//! Pages are large (Planhat takes `limit` up to 5,000), so a list page may be read up to
//! [`MAX_LIST_ANSWER`]; every other answer keeps the 64 KiB cap. Archived end users are left
//! out. These calls are optional: the refresher makes them only while Planhat's budget has room
//! (see `planhat::budget`), after links.

use serde_json::Value;

use super::{Call, Planhat, PlanhatError};
use crate::core::search::Listed;

/// The largest list page the bot reads: 5,000 end users of a few hundred bytes each.
pub const MAX_LIST_ANSWER: usize = 8 * 1024 * 1024;

/// The most Planhat returns in one page.
pub const MAX_PAGE: usize = 5_000;

/// A company and its owner and co-owners (Planhat user ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedCompany {
    pub id: String,
    pub name: Option<String>,
    pub owners: Vec<String>,
}

impl Planhat {
    /// End users `offset .. offset + limit` (fewer at the end of the list).
    pub async fn list_endusers(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Listed>, PlanhatError> {
        let mut url = self.url("/endusers");
        url.query_pairs_mut()
            .append_pair("limit", &limit.min(MAX_PAGE).to_string())
            .append_pair("offset", &offset.to_string())
            .append_pair(
                "select",
                "_id,name,firstName,lastName,email,companyId,companyName,archived",
            );
        let body = self.get_capped(Call::Index, &url, MAX_LIST_ANSWER).await?;
        parse_enduser_page(&body).ok_or_else(|| {
            PlanhatError::Unusable(format!(
                "the end-user list ({} bytes) is not a list",
                body.len()
            ))
        })
    }

    /// Companies `offset .. offset + limit`, with their owners.
    pub async fn list_companies(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<ListedCompany>, PlanhatError> {
        let mut url = self.url("/companies");
        url.query_pairs_mut()
            .append_pair("limit", &limit.min(MAX_PAGE).to_string())
            .append_pair("offset", &offset.to_string())
            .append_pair("select", "_id,name,owner,coOwner");
        let body = self.get_capped(Call::Index, &url, MAX_LIST_ANSWER).await?;
        parse_company_page(&body).ok_or_else(|| {
            PlanhatError::Unusable(format!(
                "the company list ({} bytes) is not a list",
                body.len()
            ))
        })
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A page of `GET /endusers`: the end users with an id, archived ones left out. `None`: not a
/// list.
pub fn parse_enduser_page(body: &[u8]) -> Option<Vec<Listed>> {
    let items: Vec<Value> = serde_json::from_slice(body).ok()?;
    Some(
        items
            .iter()
            .filter(|u| u.get("archived").and_then(Value::as_bool) != Some(true))
            .filter_map(|u| {
                let id = text(u.get("_id").or_else(|| u.get("id")))?;
                let name = text(u.get("name")).or_else(|| {
                    let first = text(u.get("firstName")).unwrap_or_default();
                    let last = text(u.get("lastName")).unwrap_or_default();
                    let full = format!("{first} {last}").trim().to_string();
                    (!full.is_empty()).then_some(full)
                });
                // Names as shown anywhere: one line, no format characters (`core::text`).
                Some(Listed {
                    id,
                    name: name.map(|n| crate::core::text::name(&n)),
                    email: text(u.get("email")).map(|e| e.to_ascii_lowercase()),
                    company_id: text(u.get("companyId")),
                    company_name: text(u.get("companyName")).map(|c| crate::core::text::name(&c)),
                })
            })
            .collect(),
    )
}

/// A page of `GET /companies`. `None`: not a list.
pub fn parse_company_page(body: &[u8]) -> Option<Vec<ListedCompany>> {
    let items: Vec<Value> = serde_json::from_slice(body).ok()?;
    Some(
        items
            .iter()
            .filter_map(|c| {
                let id = text(c.get("_id").or_else(|| c.get("id")))?;
                let mut owners = Vec::new();
                for key in ["owner", "coOwner", "coOwners"] {
                    super::answer::collect_ids(c.get(key), &mut owners);
                }
                owners.dedup();
                Some(ListedCompany {
                    id,
                    name: text(c.get("name")),
                    owners,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pages_parse_and_archived_end_users_are_left_out() {
        let page = parse_enduser_page(
            br#"[{"_id":"e1","name":"Jane Doe","email":"Jane@Acme.com","companyId":"c1","companyName":"Acme"},
                 {"_id":"e2","firstName":"John","lastName":"Roe"},
                 {"_id":"e3","name":"Old","archived":true},
                 {"name":"no id"}]"#,
        )
        .unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(page[0].email.as_deref(), Some("jane@acme.com"));
        assert_eq!(page[1].name.as_deref(), Some("John Roe"));
        assert!(parse_enduser_page(b"{}").is_none());
        let companies =
            parse_company_page(br#"[{"_id":"c1","name":"Acme","owner":"u1","coOwner":["u2"]}]"#)
                .unwrap();
        assert_eq!(companies[0].owners, vec!["u1", "u2"]);
    }

    proptest! {
        #[test]
        fn no_page_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_enduser_page(&bytes);
            let _ = parse_company_page(&bytes);
        }
    }
}
