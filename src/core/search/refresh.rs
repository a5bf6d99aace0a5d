//! Reading the index from Planhat: every end user page by page (and, for `scope = "owned"`,
//! every company with its owners), then swapping the new index in whole.
//!
//! The reads are optional calls: each page waits until Planhat's budget has room for optional
//! calls (links come first), and gives up after [`PAGE_PATIENCE`] of waiting, keeping the index
//! it has. A failed read keeps the old index too, so a command never meets an empty one
//! because Planhat had a bad minute.

use std::time::{Duration, Instant};

use super::{Index, Owners, Refreshed, Search};
use crate::core::planhat::list::{ListedCompany, MAX_PAGE};
use crate::core::planhat::{Planhat, PlanhatError};

/// How long one page may wait for Planhat's budget before the refresh gives up.
pub const PAGE_PATIENCE: Duration = Duration::from_secs(120);

/// Why a refresh did not swap a new index in.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("Planhat: {0}")]
    Planhat(#[from] PlanhatError),
    #[error("Planhat's call budget had no room for the index for {}s", PAGE_PATIENCE.as_secs())]
    NoBudget,
}

/// Waits until an optional call fits Planhat's budget (or gives up).
async fn room(planhat: &Planhat) -> Result<(), RefreshError> {
    let started = Instant::now();
    while !planhat.room_for_optional() {
        if started.elapsed() > PAGE_PATIENCE {
            return Err(RefreshError::NoBudget);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// Reads the end users (and with `owners`, the companies, whose owners are matched to emails
/// through `users`: Planhat user id → email) and swaps the result into `search`.
pub async fn refresh(
    search: &Search,
    planhat: &Planhat,
    owners: bool,
    users: Vec<(String, String)>,
) -> Result<Refreshed, RefreshError> {
    let started = Instant::now();
    let mut calls = 0;
    let mut listed = Vec::new();
    let max = search.max_end_users();
    loop {
        room(planhat).await?;
        let page = planhat.list_endusers(listed.len(), MAX_PAGE).await?;
        calls += 1;
        let full = page.len() >= MAX_PAGE;
        listed.extend(page);
        if !full || listed.len() >= max {
            break;
        }
    }
    let mut companies: Vec<ListedCompany> = Vec::new();
    if owners {
        loop {
            room(planhat).await?;
            let page = planhat.list_companies(companies.len(), MAX_PAGE).await?;
            calls += 1;
            let full = page.len() >= MAX_PAGE;
            companies.extend(page);
            if !full {
                break;
            }
        }
    }
    let refreshed = Refreshed {
        end_users: listed.len().min(max),
        companies: companies.len(),
        calls,
        took: started.elapsed(),
        heap_bytes: 0,
    };
    let index = Index::build(listed, max);
    let owners = Owners::build(companies.into_iter().map(|c| (c.id, c.owners)), users);
    search.swap(index, owners, refreshed.clone());
    Ok(search.last_refresh().map(|(_, r)| r).unwrap_or(refreshed))
}
