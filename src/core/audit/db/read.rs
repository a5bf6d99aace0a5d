//! What `portal-bot audit` asks the audit database: the same filters as the file reader
//! ([`Filter`]), turned into one `WHERE` clause whose every condition an index of
//! `migrations/` serves, with the time first; rows come back oldest first as the lines the bot
//! wrote, parsed by the file reader's own [`query::parse_line`] so both trails read alike.
//! `--summary` is counted by the database (one pass, grouping sets), not by fetching rows.

use std::ops::ControlFlow;
use std::time::SystemTime;

use futures_util::TryStreamExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::DbError;
use crate::core::audit::query::{self, Entry, Filter, Stats, Summary};

type Param = Box<dyn ToSql + Sync + Send>;

/// The `WHERE` clause for `filter` (or `TRUE`) and its parameters, in order. Values are always
/// parameters, never spliced into the SQL.
fn conditions(filter: &Filter) -> (String, Vec<Param>) {
    let mut sql: Vec<String> = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    let next = |value: Param, params: &mut Vec<Param>| {
        params.push(value);
        format!("${}", params.len())
    };
    if let Some(since) = filter.since {
        let p = next(Box::new(since), &mut params);
        sql.push(format!("at >= {p}"));
    }
    if let Some(asker) = &filter.asker {
        let p = next(Box::new(asker.clone()), &mut params);
        sql.push(format!("asker = {p}"));
    }
    if let Some(wanted) = &filter.end_user {
        // As the file reader: an id exactly; an email (it has an @) in any case, in either
        // column. An id (no @) can't equal a recorded email (they all have one), so it is
        // looked up in `end_user` alone, where an index serves it.
        let p = next(Box::new(wanted.clone()), &mut params);
        if wanted.contains('@') {
            sql.push(format!(
                "(lower(end_user) = lower({p}) OR lower(email) = lower({p}))"
            ));
        } else {
            sql.push(format!("end_user = {p}"));
        }
    }
    if let Some(part) = &filter.company {
        let p = next(Box::new(part.to_lowercase()), &mut params);
        sql.push(format!("strpos(lower(company), {p}) > 0"));
    }
    if let Some(outcome) = &filter.outcome {
        let p = next(Box::new(outcome.clone()), &mut params);
        sql.push(format!("outcome = {p}"));
    }
    if let Some(action) = &filter.action {
        let p = next(Box::new(action.clone()), &mut params);
        sql.push(format!("action = {p}"));
    }
    let clause = if sql.is_empty() {
        "TRUE".to_string()
    } else {
        sql.join(" AND ")
    };
    (clause, params)
}

fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// Hands every event that passes `filter` to `each`, oldest first, until `each` says stop.
/// `Stats::files` is 0 (there are none); `events` counts the rows read.
pub async fn events(
    client: &Client,
    filter: &Filter,
    mut each: impl FnMut(&Entry) -> ControlFlow<()>,
) -> Result<Stats, DbError> {
    let (clause, params) = conditions(filter);
    let sql = format!("SELECT line FROM audit_events WHERE {clause} ORDER BY at, id");
    let driver = |e: tokio_postgres::Error| DbError::from_driver(&e);
    let rows = client
        .query_raw(sql.as_str(), refs(&params))
        .await
        .map_err(driver)?;
    futures_util::pin_mut!(rows);
    let mut stats = Stats::default();
    while let Some(row) = rows.try_next().await.map_err(driver)? {
        let line: &str = row.get(0);
        let Some(entry) = query::parse_line(line.as_bytes()) else {
            stats.unreadable += 1;
            continue;
        };
        stats.events += 1;
        stats.matched += 1;
        if each(&entry).is_break() {
            break;
        }
    }
    Ok(stats)
}

/// The counts `--summary` shows, computed by the database in one pass.
pub async fn summary(client: &Client, filter: &Filter) -> Result<Summary, DbError> {
    let (clause, params) = conditions(filter);
    let sql = format!(
        "SELECT GROUPING(platform, asker, company, outcome), platform, asker, company, outcome,
                count(*), min(at), max(at)
         FROM audit_events WHERE {clause}
         GROUP BY GROUPING SETS ((platform, asker), (company), (outcome), ())"
    );
    let rows = client
        .query(sql.as_str(), &refs(&params))
        .await
        .map_err(|e| DbError::from_driver(&e))?;
    let mut s = Summary::default();
    for row in rows {
        let set: i32 = row.get(0);
        let n = u64::try_from(row.get::<_, i64>(5)).unwrap_or(0);
        match set {
            // Bits, left to right: platform, asker, company, outcome (1 = not grouped by it).
            0b0011 => {
                let key = (row.get::<_, String>(1), row.get::<_, String>(2));
                s.by_asker.insert(key, n);
            }
            0b1101 => {
                s.by_company.insert(row.get::<_, Option<String>>(3), n);
            }
            0b1110 => {
                s.by_outcome.insert(row.get::<_, String>(4), n);
            }
            0b1111 => {
                s.events = n;
                s.first = row.get::<_, Option<SystemTime>>(6);
                s.last = row.get::<_, Option<SystemTime>>(7);
            }
            _ => {}
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_is_a_parameter_never_spliced() {
        let filter = Filter {
            since: Some(SystemTime::UNIX_EPOCH),
            asker: Some("U1' OR 1=1 --".into()),
            end_user: Some("Jane@Acme.example".into()),
            company: Some("ACME".into()),
            outcome: Some("ok".into()),
            action: Some("approve'; DROP TABLE audit_events; --".into()),
        };
        let (clause, params) = conditions(&filter);
        assert_eq!(params.len(), 6);
        assert!(!clause.contains("DROP"));
        assert!(!clause.contains("OR 1=1") && !clause.contains("ACME") && !clause.contains("acme"));
        assert!(
            clause.starts_with("at >= $1 AND asker = $2 AND "),
            "{clause}"
        );
        assert!(clause.contains("lower(email) = lower($3)"), "{clause}");
        assert_eq!(conditions(&Filter::default()).0, "TRUE");
    }
}
