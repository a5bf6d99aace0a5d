//! An audit event as a row of `audit_events`, and the batch insert that makes writing it twice
//! harmless.
//!
//! Rows are made from the event's JSON line (the same bytes the file trail holds): a new event
//! is serialised once, and a line replayed from the fallback file becomes exactly the row it
//! would have been. The row's id is the event's `id`; a line without one (written before ids
//! existed, or edited) gets an id derived from its bytes, so replaying it twice is still one row.

use std::time::SystemTime;

use rand::RngExt;
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::DbError;
use crate::core::audit::query::{self, Recorded};

/// One event, ready to insert.
#[derive(Debug, Clone)]
pub struct Row {
    /// A UUID in its text form.
    pub id: String,
    pub at: SystemTime,
    pub event: Recorded,
    /// The JSON line, as the file trail would hold it.
    pub line: String,
}

impl Row {
    /// The row for one JSON line; `None` when the line is not an event (see
    /// [`query::parse_line`]).
    pub fn from_line(line: &str) -> Option<Row> {
        let entry = query::parse_line(line.as_bytes())?;
        let id = match entry.event.id.as_deref() {
            Some(id) if is_uuid(id) => id.to_ascii_lowercase(),
            _ => derived_id(entry.line.as_bytes()),
        };
        Some(Row {
            id,
            at: entry.at,
            event: entry.event,
            line: entry.line,
        })
    }
}

/// A fresh random event id (a version 4 UUID).
pub fn new_id() -> String {
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid_text(&bytes)
}

/// An id that is a function of the line (a name-based UUID from SHA-256), for lines without one.
fn derived_id(line: &[u8]) -> String {
    let digest = Sha256::digest(line);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid_text(&bytes)
}

/// `8-4-4-4-12` lowercase hex, written digit by digit: every audit event gets one, and
/// `format!` over hex slices cost ten times as much (issue 23).
fn uuid_text(b: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// `8-4-4-4-12` hex digits: what PostgreSQL's `uuid` takes (anything else would fail the whole
/// batch).
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// PostgreSQL's `text` can't hold NUL: a value with one would fail its batch for ever.
fn clean(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains('\0') {
        value.replace('\0', "\u{fffd}").into()
    } else {
        value.into()
    }
}

const INSERT: &str = "INSERT INTO audit_events
    (id, at, platform, team, channel, asker, action, end_user, email, outcome, latency_ms, company, line)
    SELECT id::uuid, at, platform, team, channel, asker, action, end_user, email, outcome, latency_ms, company, line
    FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::text[], $13::text[])
      AS u(id, at, platform, team, channel, asker, action, end_user, email, outcome, latency_ms, company, line)
    ON CONFLICT (id) DO NOTHING";

/// Inserts `rows` in one statement; rows whose id is already there are left as they are.
/// Returns how many were new.
pub async fn insert(client: &Client, rows: &[Row]) -> Result<u64, DbError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let text = |f: fn(&Row) -> &str| -> Vec<String> {
        rows.iter().map(|r| clean(f(r)).into_owned()).collect()
    };
    let optional = |f: fn(&Row) -> Option<&str>| -> Vec<Option<String>> {
        rows.iter()
            .map(|r| f(r).map(|v| clean(v).into_owned()))
            .collect()
    };
    let ids = text(|r| &r.id);
    let ats: Vec<SystemTime> = rows.iter().map(|r| r.at).collect();
    let platforms = text(|r| &r.event.platform);
    let teams = optional(|r| r.event.team.as_deref());
    let channels = optional(|r| r.event.channel.as_deref());
    let askers = text(|r| &r.event.asker);
    let actions = text(|r| &r.event.action);
    let end_users = optional(|r| r.event.end_user.as_deref());
    let emails = optional(|r| r.event.email.as_deref());
    let outcomes = text(|r| &r.event.outcome);
    let latencies: Vec<Option<i64>> = rows
        .iter()
        .map(|r| r.event.latency_ms.and_then(|l| i64::try_from(l).ok()))
        .collect();
    let companies = optional(|r| r.event.company.as_deref());
    let lines = text(|r| &r.line);
    let params: [&(dyn ToSql + Sync); 13] = [
        &ids, &ats, &platforms, &teams, &channels, &askers, &actions, &end_users, &emails,
        &outcomes, &latencies, &companies, &lines,
    ];
    client
        .execute(INSERT, &params)
        .await
        .map_err(|e| DbError::from_driver(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_are_uuid_text() {
        let bytes: [u8; 16] = std::array::from_fn(|i| (i as u8) * 17);
        assert_eq!(uuid_text(&bytes), "00112233-4455-6677-8899-aabbccddeeff");
        let id = new_id();
        assert!(is_uuid(&id), "{id}");
        assert_eq!(id.as_bytes()[14], b'4', "version 4: {id}");
    }

    #[test]
    fn ids_are_uuids_kept_or_derived_from_the_line() {
        let id = new_id();
        assert!(is_uuid(&id), "{id}");
        assert_ne!(id, new_id());
        let line = format!(
            r#"{{"id":"{}","time":"2026-11-25T09:00:00.000Z","platform":"slack","asker":"U1","action":"link","outcome":"ok"}}"#,
            id.to_uppercase()
        );
        assert_eq!(Row::from_line(&line).unwrap().id, id);
        let old = r#"{"time":"2026-11-25T09:00:00.000Z","platform":"slack","asker":"U1","action":"link","outcome":"ok"}"#;
        let a = Row::from_line(old).unwrap().id;
        assert!(is_uuid(&a));
        assert_eq!(
            a,
            Row::from_line(old).unwrap().id,
            "the same line, the same id"
        );
        let forged = old.replacen('{', r#"{"id":"'; DROP TABLE x; --","#, 1);
        assert!(is_uuid(&Row::from_line(&forged).unwrap().id));
        assert!(Row::from_line("not json").is_none());
    }

    proptest! {
        #[test]
        fn no_id_or_line_panics(id in "\\PC{0,40}", asker in "\\PC{0,20}") {
            let _ = is_uuid(&id);
            let line = serde_json::json!({
                "id": id, "time": "2026-11-25T09:00:00Z", "platform": "slack",
                "asker": asker, "action": "link", "outcome": "ok",
            }).to_string();
            let row = Row::from_line(&line).unwrap();
            prop_assert!(is_uuid(&row.id));
            prop_assert!(!clean(&row.event.asker).contains('\0'));
        }
    }
}
