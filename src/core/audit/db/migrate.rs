//! The audit database's schema, versioned: each migration in `migrations/` is embedded here in
//! order and applied once, recorded in `audit_schema` (version, name, when).
//!
//! Replicas start together, so the check-and-apply runs in one transaction under an advisory
//! lock named after the schema: one replica applies, the others wait and then find nothing to
//! do. A bot that is already up to date only reads `audit_schema` (no DDL), so the
//! least-privilege role of README works once an owner has created the table.

use tokio_postgres::Client;

use super::DbError;

/// Every migration, in order: (version, name, SQL). Never edit one that has shipped.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "audit_events",
    include_str!("../../../../migrations/0001_audit_events.sql"),
)];

/// The schema version this bot writes and reads.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// The version the database is at, without changing anything: `Ok(0)` when there is no
/// schema yet.
pub async fn current(client: &Client) -> Result<i32, DbError> {
    match client
        .query_one("SELECT coalesce(max(version), 0) FROM audit_schema", &[])
        .await
    {
        Ok(row) => Ok(row.get(0)),
        Err(e) => match DbError::from_driver(&e) {
            DbError::NoTable => Ok(0),
            other => Err(other),
        },
    }
}

/// Brings the schema up to [`latest`]; returns the version it is at. Applies nothing when it
/// already is.
pub async fn migrate(client: &mut Client) -> Result<i32, DbError> {
    let known = latest();
    let found = current(client).await?;
    if found > known {
        return Err(DbError::TooNew { found, known });
    }
    if found == known {
        return Ok(found);
    }
    let driver = |e: tokio_postgres::Error| DbError::from_driver(&e);
    let tx = client.transaction().await.map_err(driver)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.portal_bot_audit'))",
        &[],
    )
    .await
    .map_err(driver)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS audit_schema (
            version    integer     PRIMARY KEY,
            name       text        NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(driver)?;
    // Read again under the lock: another replica may have applied them meanwhile.
    let row = tx
        .query_one("SELECT coalesce(max(version), 0) FROM audit_schema", &[])
        .await
        .map_err(driver)?;
    let before: i32 = row.get(0);
    let mut at = before;
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > before) {
        tx.batch_execute(sql).await.map_err(driver)?;
        tx.execute(
            "INSERT INTO audit_schema (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(driver)?;
        tracing::info!(version, name, "audit database: migration applied");
        at = *version;
    }
    tx.commit().await.map_err(driver)?;
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one() {
        for (i, (version, name, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version, i as i32 + 1);
            assert!(!name.is_empty() && !sql.trim().is_empty());
        }
        assert_eq!(latest(), MIGRATIONS.len() as i32);
    }
}
