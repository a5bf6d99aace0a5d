//! Finding the end user by name (`[search]`): a CSM thinks "Jane at Acme", not `5f2a9c…`.
//!
//! Planhat documents no name search for end users, and a live search per keystroke would spend
//! its 200 calls a minute in seconds, so the bot keeps a local [`Index`] of every end user
//! (read page by page at start and every `refresh`, off the request path, and swapped in
//! whole) and answers suggestions from memory. With `scope = "owned"` it also keeps who owns
//! which company, so an asker is shown only their own companies' end users. A cold or failed
//! index never blocks a command: ids and emails work as they always did.

pub mod index;
pub mod refresh;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

pub use self::index::{Found, Index, Listed};

/// Who owns which company, from the same read: Planhat user id → the companies they own or
/// co-own, and Planhat's users by email.
#[derive(Debug, Default)]
pub struct Owners {
    companies_of_user: HashMap<String, HashSet<String>>,
    user_of_email: HashMap<String, String>,
}

impl Owners {
    /// From `(company id, owner and co-owner user ids)` and `(user id, email)` lists.
    pub fn build(
        companies: impl IntoIterator<Item = (String, Vec<String>)>,
        users: impl IntoIterator<Item = (String, String)>,
    ) -> Owners {
        let mut o = Owners::default();
        for (company, owners) in companies {
            for user in owners {
                o.companies_of_user
                    .entry(user)
                    .or_default()
                    .insert(company.clone());
            }
        }
        for (user, email) in users {
            o.user_of_email
                .insert(email.trim().to_ascii_lowercase(), user);
        }
        o
    }

    /// The companies the person with `email` owns or co-owns.
    pub fn companies_of(&self, email: &str) -> HashSet<String> {
        self.user_of_email
            .get(&email.trim().to_ascii_lowercase())
            .and_then(|u| self.companies_of_user.get(u))
            .cloned()
            .unwrap_or_default()
    }
}

/// What the last refresh did, for logs, `/metrics` and the load benchmark.
#[derive(Debug, Clone, Default)]
pub struct Refreshed {
    pub end_users: usize,
    pub companies: usize,
    pub calls: usize,
    pub took: Duration,
    pub heap_bytes: usize,
}

/// The search use case: the current index, swapped in whole by the refresher.
pub struct Search {
    index: RwLock<Arc<Index>>,
    owners: RwLock<Arc<Owners>>,
    last: RwLock<Option<(Instant, Refreshed)>>,
    max_end_users: usize,
}

/// Suggestions a chat shows at most: Discord's autocomplete takes 25.
pub const MAX_SUGGESTIONS: usize = 25;

impl Search {
    /// An empty (cold) index that will hold at most `max_end_users`.
    pub fn new(max_end_users: usize) -> Search {
        Search {
            index: RwLock::new(Arc::new(Index::default())),
            owners: RwLock::new(Arc::new(Owners::default())),
            last: RwLock::new(None),
            max_end_users,
        }
    }

    /// The most end users the index holds.
    pub fn max_end_users(&self) -> usize {
        self.max_end_users
    }

    /// The index as it is now (cheap: one reference count).
    pub fn index(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// True once an index has been read.
    pub fn warm(&self) -> bool {
        self.last
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// What the last refresh did, and how long ago.
    pub fn last_refresh(&self) -> Option<(Duration, Refreshed)> {
        self.last
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(at, r)| (at.elapsed(), r.clone()))
    }

    /// Swaps in a new index (and owners), whole.
    pub fn swap(&self, index: Index, owners: Owners, mut refreshed: Refreshed) {
        refreshed.heap_bytes = index.heap_bytes();
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(index);
        *self.owners.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(owners);
        *self.last.write().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), refreshed));
    }

    /// The companies the person with `email` owns or co-owns, as the last read found them.
    pub fn companies_of(&self, email: &str) -> HashSet<String> {
        self.owners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .companies_of(email)
    }

    /// Suggestions for `query`: at most `limit`, `mine` (the asker's companies) first; with
    /// `only_mine`, nothing else (scope = "owned": no names of other customers leak).
    pub fn suggest(
        &self,
        query: &str,
        limit: usize,
        mine: &HashSet<String>,
        only_mine: bool,
    ) -> Vec<Found> {
        let index = self.index();
        let preferred = |c: Option<&str>| c.is_some_and(|c| mine.contains(c));
        let allowed = |c: Option<&str>| c.is_some_and(|c| mine.contains(c));
        index.search(
            query,
            limit.min(MAX_SUGGESTIONS),
            &preferred,
            only_mine.then_some(&allowed as index::CompanyTest<'_>),
        )
    }
}

impl crate::core::held::Holds for Search {
    /// The index as it is now (a refresh holds a second one while it is built).
    fn held(&self, out: &mut Vec<crate::core::held::Held>) {
        let index = self.index();
        out.push(crate::core::held::Held {
            holder: "search_index",
            entries: index.len(),
            bytes: index.heap_bytes(),
            capacity: 0,
        });
    }
}
