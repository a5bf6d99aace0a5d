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
///
/// Read straight into [`Row`]s rather than through `serde_json::Value`: a page of 5,000 end
/// users as `Value`s (an ordered map per end user, every field kept) took several MB while it
/// was read, which the allocator then held on to (issue 23). It reads as the `Value` reading
/// did (a test holds the two equal): a repeated key keeps its last value, a field that is not
/// a string counts as absent, an item that is not an object has no id.
pub fn parse_enduser_page(body: &[u8]) -> Option<Vec<Listed>> {
    let rows: Vec<Row> = serde_json::from_slice(body).ok()?;
    Some(rows.into_iter().filter_map(Row::listed).collect())
}

/// One item of an end-user page: the fields the index keeps, as [`text`] would read them.
#[derive(Default)]
struct Row {
    id: Option<String>,
    /// `_id` was there (of whatever value): then `id` is not read.
    has_id: bool,
    alt_id: Option<String>,
    name: Option<String>,
    first: Option<String>,
    last: Option<String>,
    email: Option<String>,
    company_id: Option<String>,
    company_name: Option<String>,
    archived: bool,
}

impl Row {
    fn listed(self) -> Option<Listed> {
        if self.archived {
            return None;
        }
        let id = if self.has_id { self.id } else { self.alt_id }?;
        let name = self.name.or_else(|| {
            let full = format!(
                "{} {}",
                self.first.unwrap_or_default(),
                self.last.unwrap_or_default()
            )
            .trim()
            .to_string();
            (!full.is_empty()).then_some(full)
        });
        // Names as shown anywhere: one line, no format characters (`core::text`).
        Some(Listed {
            id,
            name: name.map(|n| crate::core::text::name(&n)),
            email: self.email.map(|e| e.to_ascii_lowercase()),
            company_id: self.company_id,
            company_name: self.company_name.map(|c| crate::core::text::name(&c)),
        })
    }
}

impl<'de> serde::Deserialize<'de> for Row {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Row, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct Item;
        impl<'de> Visitor<'de> for Item {
            type Value = Row;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an end user")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
                let mut row = Row::default();
                while let Some(key) = map.next_key::<Key>()? {
                    let slot = match key {
                        Key::Id => {
                            row.has_id = true;
                            &mut row.id
                        }
                        Key::AltId => &mut row.alt_id,
                        Key::Name => &mut row.name,
                        Key::First => &mut row.first,
                        Key::Last => &mut row.last,
                        Key::Email => &mut row.email,
                        Key::CompanyId => &mut row.company_id,
                        Key::CompanyName => &mut row.company_name,
                        Key::Archived => {
                            row.archived = map.next_value::<Lenient>()?.0 == Some(Seen::True);
                            continue;
                        }
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = match map.next_value::<Lenient>()?.0 {
                        Some(Seen::Text(t)) => Some(t),
                        _ => None,
                    };
                }
                Ok(row)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Row, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Row::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Row, E> {
                Ok(Row::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Row, E> {
                Ok(Row::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Row, E> {
                Ok(Row::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Row, E> {
                Ok(Row::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<Row, E> {
                Ok(Row::default())
            }
            fn visit_unit<E>(self) -> Result<Row, E> {
                Ok(Row::default())
            }
        }
        d.deserialize_any(Item)
    }
}

/// The keys of an end user the index reads; any other is skipped unread.
enum Key {
    Id,
    AltId,
    Name,
    First,
    Last,
    Email,
    CompanyId,
    CompanyName,
    Archived,
    Other,
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "_id" => Key::Id,
                    "id" => Key::AltId,
                    "name" => Key::Name,
                    "firstName" => Key::First,
                    "lastName" => Key::Last,
                    "email" => Key::Email,
                    "companyId" => Key::CompanyId,
                    "companyName" => Key::CompanyName,
                    "archived" => Key::Archived,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(Name)
    }
}

/// A field's value as [`text`] and `as_bool` see it: trimmed non-empty text, `true`, or
/// nothing (any other value, read and dropped).
#[derive(PartialEq)]
enum Seen {
    Text(String),
    True,
}

struct Lenient(Option<Seen>);

impl<'de> serde::Deserialize<'de> for Lenient {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Lenient, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct Any;
        impl<'de> Visitor<'de> for Any {
            type Value = Lenient;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E>(self, s: &str) -> Result<Lenient, E> {
                let s = s.trim();
                Ok(Lenient((!s.is_empty()).then(|| Seen::Text(s.to_string()))))
            }
            fn visit_bool<E>(self, b: bool) -> Result<Lenient, E> {
                Ok(Lenient(b.then_some(Seen::True)))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E>(self) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Lenient, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Lenient, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
        }
        d.deserialize_any(Any)
    }
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

    /// The reading through `serde_json::Value` that [`parse_enduser_page`] replaced: the
    /// reference it must agree with.
    fn through_values(body: &[u8]) -> Option<Vec<Listed>> {
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
                    Some(Listed {
                        id,
                        name: name.map(|n| crate::core::text::name(&n)),
                        email: text(u.get("email")).map(|e| e.to_ascii_lowercase()),
                        company_id: text(u.get("companyId")),
                        company_name: text(u.get("companyName"))
                            .map(|c| crate::core::text::name(&c)),
                    })
                })
                .collect(),
        )
    }

    fn a_field() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[ a-zA-Z@.]{0,12}".prop_map(Value::from),
            Just(serde_json::json!(["x", {"y": 1}])),
            Just(serde_json::json!({"nested": "x"})),
        ]
    }

    fn an_item() -> impl Strategy<Value = Value> {
        let keys = prop_oneof![
            Just("_id"),
            Just("id"),
            Just("name"),
            Just("firstName"),
            Just("lastName"),
            Just("email"),
            Just("companyId"),
            Just("companyName"),
            Just("archived"),
            Just("other"),
        ];
        prop_oneof![
            4 => proptest::collection::vec((keys, a_field()), 0..12).prop_map(|pairs| {
                Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
            1 => a_field(),
        ]
    }

    proptest! {
        #[test]
        fn pages_read_as_they_did_through_values(items in proptest::collection::vec(an_item(), 0..20)) {
            let body = serde_json::to_vec(&items).unwrap();
            prop_assert_eq!(parse_enduser_page(&body), through_values(&body));
        }

        /// Repeated keys (which `Value` keeps the last of) read the same too.
        #[test]
        fn repeated_keys_keep_the_last(a in "[a-z]{0,5}", b in "[a-z]{0,5}", archived: bool) {
            let body = format!(
                r#"[{{"_id":"{a}","name":"{a}","_id":"{b}","archived":{archived},"name":"{b}","archived":false}}]"#
            );
            prop_assert_eq!(parse_enduser_page(body.as_bytes()), through_values(body.as_bytes()));
        }
    }

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
