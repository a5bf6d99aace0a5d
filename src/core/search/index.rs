//! The end-user index: every end user's id, name, email and company, packed, with the words of
//! each tokenised for forgiving search ("jane doe acme", "Doe, Jane", "jnae", "jöns").
//!
//! Built whole from one read of Planhat and never changed afterwards (the refresher swaps a new
//! index in), so it needs no locks and can be laid out for memory: every string of every end
//! user in one arena, entries as offsets into it, companies interned, and the word index as
//! sorted words with their postings in one array (compressed sparse rows). A word is matched by
//! prefix (binary search over the sorted words) or, for a typo, by a bounded edit distance over
//! the words of letters that share its first letter and nearly its length.

use std::collections::HashMap;

use unicode_normalization::UnicodeNormalization;

/// One end user as Planhat lists them (what the index keeps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub company_id: Option<String>,
    pub company_name: Option<String>,
}

/// A match, for the chat to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub company_id: Option<String>,
    pub company: Option<String>,
}

/// An end user: where its strings are in the arena.
#[derive(Debug, Clone, Copy)]
struct Entry {
    start: u32,
    id_len: u16,
    name_len: u16,
    email_len: u16,
    /// Index into `companies`, or `u32::MAX`.
    company: u32,
}

/// A company, interned: its id and name in the arena.
#[derive(Debug, Clone, Copy)]
struct Company {
    start: u32,
    id_len: u16,
    name_len: u16,
}

/// The index. Immutable once built.
#[derive(Debug, Default)]
pub struct Index {
    arena: String,
    entries: Vec<Entry>,
    companies: Vec<Company>,
    /// Normalised words, sorted, each once: `words_arena[word_starts[i]..word_starts[i+1]]`.
    words_arena: String,
    word_starts: Vec<u32>,
    /// Postings: the entries of word `i` are `postings[posting_starts[i]..posting_starts[i+1]]`.
    postings: Vec<u32>,
    posting_starts: Vec<u32>,
    /// Words that may carry a typo, by their first character (as word numbers): words of
    /// letters only (ids and numbered email names are matched exactly or by prefix).
    by_char: HashMap<char, Vec<u32>>,
    /// Entries by a hash of their id, sorted (a lookup compares the ids in the arena): 12
    /// bytes an entry where a map of strings would take about 90.
    ids: Vec<(u64, u32)>,
}

fn id_hash(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    // Fixed keys: the same hash in every process; colliding ids only cost a comparison.
    let mut h = std::hash::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// Lower case, accents removed (NFD, combining marks dropped), everything that is not a letter
/// or a digit a separator. The form every word is indexed and searched in.
pub fn normalise(text: &str) -> String {
    text.nfd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect()
}

/// The words of `text`, normalised, letters and digits apart ("garcia9096" is "garcia" and
/// "9096": the name is found, and numbered email names don't each make a word of their own).
pub fn words(text: &str) -> impl Iterator<Item = String> {
    let mut out = Vec::new();
    for w in normalise(text).split_whitespace() {
        let mut current = String::new();
        let mut digits = false;
        for c in w.chars() {
            let d = c.is_ascii_digit();
            if !current.is_empty() && d != digits {
                out.push(std::mem::take(&mut current));
            }
            digits = d;
            current.push(c);
        }
        if !current.is_empty() {
            out.push(current);
        }
    }
    out.into_iter()
}

/// Strings longer than this are cut (names and emails are short; the arena's lengths are u16).
const MAX_FIELD: usize = 512;

fn cut(text: &str) -> &str {
    if text.len() <= MAX_FIELD {
        return text;
    }
    let mut end = MAX_FIELD;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Damerau-Levenshtein distance (optimal string alignment) of `a` and `b`, or `None` when it
/// is more than `max`. Short words only (callers cap lengths).
fn distance_within(a: &[char], b: &[char], max: usize) -> Option<usize> {
    if a.len().abs_diff(b.len()) > max {
        return None;
    }
    let (n, m) = (a.len(), b.len());
    let mut prev2 = vec![0usize; m + 1];
    let mut prev: Vec<usize> = (0..=m).collect();
    let mut cur = vec![0usize; m + 1];
    for i in 1..=n {
        cur[0] = i;
        let mut row_min = cur[0];
        for j in 1..=m {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(prev2[j - 2] + 1);
            }
            cur[j] = v;
            row_min = row_min.min(v);
        }
        if row_min > max {
            return None;
        }
        std::mem::swap(&mut prev2, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    (prev[m] <= max).then_some(prev[m])
}

/// A yes/no about an end user's company id (`None`: no company).
pub type CompanyTest<'a> = &'a dyn Fn(Option<&str>) -> bool;

/// The longest word that is matched with a typo.
const MAX_TYPO_WORD: usize = 32;

/// How well a query word matched an entry's word.
const EXACT: u32 = 4;
const PREFIX: u32 = 3;
const TYPO: u32 = 1;

impl Index {
    /// Builds the index of `listed` (at most `max` of them; the rest are left out).
    pub fn build(listed: impl IntoIterator<Item = Listed>, max: usize) -> Index {
        // Entries are numbered in name order, so "best first, then by name" is a comparison of
        // numbers at query time.
        let mut listed: Vec<Listed> = listed.into_iter().take(max).collect();
        listed.sort_by_cached_key(|l| normalise(l.name.as_deref().unwrap_or("")));
        let mut ix = Index::default();
        let mut company_of: HashMap<String, u32> = HashMap::new();
        let mut seen_ids: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut word_entries: HashMap<String, Vec<u32>> = HashMap::new();
        for l in listed {
            let id = cut(l.id.trim());
            if id.is_empty() || !seen_ids.insert(id.to_string()) {
                continue;
            }
            let n = ix.entries.len() as u32;
            let name = cut(l.name.as_deref().unwrap_or("").trim());
            let email = cut(l.email.as_deref().unwrap_or("").trim());
            let company = match l
                .company_id
                .as_deref()
                .map(str::trim)
                .filter(|c| !c.is_empty())
            {
                Some(cid) => {
                    let cid = cut(cid);
                    *company_of.entry(cid.to_string()).or_insert_with(|| {
                        let cname = cut(l.company_name.as_deref().unwrap_or("").trim());
                        let start = ix.arena.len() as u32;
                        ix.arena.push_str(cid);
                        ix.arena.push_str(cname);
                        ix.companies.push(Company {
                            start,
                            id_len: cid.len() as u16,
                            name_len: cname.len() as u16,
                        });
                        (ix.companies.len() - 1) as u32
                    })
                }
                None => u32::MAX,
            };
            let start = ix.arena.len() as u32;
            ix.arena.push_str(id);
            ix.arena.push_str(name);
            ix.arena.push_str(email);
            ix.entries.push(Entry {
                start,
                id_len: id.len() as u16,
                name_len: name.len() as u16,
                email_len: email.len() as u16,
                company,
            });
            ix.ids.push((id_hash(id), n));
            let local = email.split('@').next().unwrap_or("");
            let cname = if company == u32::MAX {
                ""
            } else {
                ix.company_name(company)
            };
            // The id is not a word: ids are matched whole ([`Index::knows`]).
            let mut mine: Vec<String> = words(name)
                .chain(words(local))
                .chain(words(cname))
                .filter(|w| !w.is_empty())
                .collect();
            mine.sort();
            mine.dedup();
            for w in mine {
                word_entries.entry(w).or_default().push(n);
            }
        }
        let mut sorted: Vec<(String, Vec<u32>)> = word_entries.into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        for (i, (w, entries)) in sorted.into_iter().enumerate() {
            ix.word_starts.push(ix.words_arena.len() as u32);
            ix.words_arena.push_str(&w);
            ix.posting_starts.push(ix.postings.len() as u32);
            ix.postings.extend_from_slice(&entries);
            let letters = w.chars().all(char::is_alphabetic) && w.chars().count() <= MAX_TYPO_WORD;
            if let (true, Some(c)) = (letters, w.chars().next()) {
                ix.by_char.entry(c).or_default().push(i as u32);
            }
        }
        ix.word_starts.push(ix.words_arena.len() as u32);
        ix.posting_starts.push(ix.postings.len() as u32);
        ix.ids.sort_unstable();
        ix.ids.shrink_to_fit();
        ix.arena.shrink_to_fit();
        ix.words_arena.shrink_to_fit();
        ix.postings.shrink_to_fit();
        ix.entries.shrink_to_fit();
        ix
    }

    /// End users in the index.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the index holds on the heap (about: maps counted by their entries).
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.companies.capacity() * std::mem::size_of::<Company>()
            + self.words_arena.capacity()
            + (self.word_starts.capacity()
                + self.postings.capacity()
                + self.posting_starts.capacity())
                * 4
            + self
                .by_char
                .values()
                .map(|v| v.capacity() * 4 + 48)
                .sum::<usize>()
            + self.ids.capacity() * std::mem::size_of::<(u64, u32)>()
    }

    fn word(&self, i: usize) -> &str {
        &self.words_arena[self.word_starts[i] as usize..self.word_starts[i + 1] as usize]
    }

    fn postings_of(&self, i: usize) -> &[u32] {
        &self.postings[self.posting_starts[i] as usize..self.posting_starts[i + 1] as usize]
    }

    fn company_name(&self, c: u32) -> &str {
        let c = self.companies[c as usize];
        let s = c.start as usize + c.id_len as usize;
        &self.arena[s..s + c.name_len as usize]
    }

    fn company_id(&self, c: u32) -> &str {
        let c = self.companies[c as usize];
        &self.arena[c.start as usize..c.start as usize + c.id_len as usize]
    }

    fn found(&self, n: u32) -> Found {
        let e = self.entries[n as usize];
        let s = e.start as usize;
        let id = &self.arena[s..s + e.id_len as usize];
        let s = s + e.id_len as usize;
        let name = &self.arena[s..s + e.name_len as usize];
        let s = s + e.name_len as usize;
        let email = &self.arena[s..s + e.email_len as usize];
        let text = |t: &str| (!t.is_empty()).then(|| t.to_string());
        Found {
            id: id.to_string(),
            name: text(name),
            email: text(email),
            company_id: (e.company != u32::MAX).then(|| self.company_id(e.company).to_string()),
            company: (e.company != u32::MAX)
                .then(|| self.company_name(e.company))
                .and_then(text),
        }
    }

    fn find_id(&self, id: &str) -> Option<u32> {
        let id = id.trim();
        let h = id_hash(id);
        let first = self.ids.partition_point(|(k, _)| *k < h);
        self.ids[first..]
            .iter()
            .take_while(|(k, _)| *k == h)
            .map(|(_, n)| *n)
            .find(|n| {
                let e = self.entries[*n as usize];
                &self.arena[e.start as usize..e.start as usize + e.id_len as usize] == id
            })
    }

    /// The end user with this exact id, if the index has them.
    pub fn get(&self, id: &str) -> Option<Found> {
        self.find_id(id).map(|n| self.found(n))
    }

    /// Whether the index knows this id.
    pub fn knows(&self, id: &str) -> bool {
        self.find_id(id).is_some()
    }

    /// The words (as numbers) a query word matches, each with how well.
    fn matching_words(&self, q: &str) -> Vec<(usize, u32)> {
        let mut out = Vec::new();
        // Prefix: the sorted words from the first one >= q while they start with q.
        let n = self.word_starts.len().saturating_sub(1);
        let first = {
            let (mut lo, mut hi) = (0, n);
            while lo < hi {
                let mid = (lo + hi) / 2;
                if self.word(mid) < q {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        for i in first..n {
            let w = self.word(i);
            if !w.starts_with(q) {
                break;
            }
            out.push((i, if w.len() == q.len() { EXACT } else { PREFIX }));
        }
        // Typos: words within one edit (two for long words) sharing the first letter and nearly
        // the length; a longer word also matches when its head is one edit away (typing on).
        let qc: Vec<char> = q.chars().collect();
        if qc.len() >= 4 && qc.len() <= MAX_TYPO_WORD {
            let max = if qc.len() >= 8 { 2 } else { 1 };
            let mut buf = ['\0'; MAX_TYPO_WORD];
            for &i in self.by_char.get(&qc[0]).map(Vec::as_slice).unwrap_or(&[]) {
                let word = self.word(i as usize);
                let n = word.chars().count();
                if n + max < qc.len() || out.iter().any(|(j, _)| *j == i as usize) {
                    continue;
                }
                for (slot, c) in buf.iter_mut().zip(word.chars()) {
                    *slot = c;
                }
                let w = &buf[..n];
                let whole = n <= qc.len() + max && distance_within(&qc, w, max).is_some();
                let head = n > qc.len() && distance_within(&qc, &w[..qc.len()], 1).is_some();
                if whole || head {
                    out.push((i as usize, TYPO));
                }
            }
        }
        out
    }

    /// The best matches of `query` (every word of it must match some word of the end user's
    /// name, email or company), at most `limit`, best first: by how well they matched, then
    /// those `preferred` says yes to (the asker's own companies), then by name. `allowed`, when
    /// given, drops what it says no to (scope: only the asker's companies).
    pub fn search(
        &self,
        query: &str,
        limit: usize,
        preferred: CompanyTest<'_>,
        allowed: Option<CompanyTest<'_>>,
    ) -> Vec<Found> {
        let mut qwords: Vec<String> = words(query).filter(|w| !w.is_empty()).take(8).collect();
        qwords.sort();
        qwords.dedup();
        if qwords.is_empty() || limit == 0 {
            return Vec::new();
        }
        // Each query word: the entries it reaches with their best score for it, sorted by entry
        // (postings are sorted; a few sorts and merges of integers, no hashing).
        let mut per_word: Vec<Vec<(u32, u32)>> = Vec::with_capacity(qwords.len());
        for q in &qwords {
            let mut hits: Vec<u64> = Vec::new();
            for (w, score) in self.matching_words(q) {
                hits.extend(
                    self.postings_of(w)
                        .iter()
                        .map(|&e| (u64::from(e) << 8) | u64::from(score)),
                );
            }
            if hits.is_empty() {
                return Vec::new();
            }
            hits.sort_unstable();
            // The last of each entry's run has its best score.
            let mut best: Vec<(u32, u32)> = Vec::with_capacity(hits.len());
            for h in hits {
                let (e, score) = ((h >> 8) as u32, (h & 0xff) as u32);
                match best.last_mut() {
                    Some(last) if last.0 == e => last.1 = score,
                    _ => best.push((e, score)),
                }
            }
            per_word.push(best);
        }
        per_word.sort_by_key(Vec::len);
        let (rarest, rest) = per_word.split_first().expect("at least one word");
        // (score, preferred, entry): entries are numbered in name order, so the best are the
        // highest score, then preferred, then the lowest number.
        let mut scored: Vec<(u32, bool, u32)> = Vec::new();
        let mut cursors = vec![0usize; rest.len()];
        'entries: for &(e, s) in rarest {
            let mut total = s;
            for (other, at) in rest.iter().zip(cursors.iter_mut()) {
                // Both lists are sorted: move this one's cursor up to `e`.
                *at += other[*at..].partition_point(|(x, _)| *x < e);
                match other.get(*at) {
                    Some((x, s)) if *x == e => total += s,
                    _ => continue 'entries,
                }
            }
            let entry = self.entries[e as usize];
            let company = (entry.company != u32::MAX).then(|| self.company_id(entry.company));
            if let Some(allowed) = allowed {
                if !allowed(company) {
                    continue;
                }
            }
            scored.push((total, preferred(company), e));
        }
        let order = |a: &(u32, bool, u32), b: &(u32, bool, u32)| {
            b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2))
        };
        // Only the best `limit` are sorted: the rest are cut off in linear time.
        if scored.len() > limit {
            scored.select_nth_unstable_by(limit, order);
            scored.truncate(limit);
        }
        scored.sort_unstable_by(order);
        scored.into_iter().map(|(_, _, e)| self.found(e)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn listed(id: &str, name: &str, email: &str, company: (&str, &str)) -> Listed {
        Listed {
            id: id.into(),
            name: Some(name.into()),
            email: Some(email.into()),
            company_id: Some(company.0.into()),
            company_name: Some(company.1.into()),
        }
    }

    fn sample() -> Index {
        Index::build(
            vec![
                listed("e1", "Jane Doe", "jane.doe@acme.com", ("c1", "Acme")),
                listed("e2", "Jane Smith", "jane@globex.com", ("c2", "Globex")),
                listed("e3", "John Doe", "jd@initech.com", ("c3", "Initech")),
                listed("e4", "Jöns Ångström", "jons@acme.com", ("c1", "Acme")),
                listed("e5", "Janet Doerr", "janet@acme.com", ("c1", "Acme")),
            ],
            100,
        )
    }

    fn ids(found: &[Found]) -> Vec<&str> {
        found.iter().map(|f| f.id.as_str()).collect()
    }

    fn yes(_: Option<&str>) -> bool {
        true
    }

    #[test]
    fn forgiving_search_finds_by_name_company_order_and_typo() {
        let ix = sample();
        let s = |q: &str| ids(&ix.search(q, 5, &yes, None)).join(",");
        assert_eq!(s("jane doe acme"), "e1,e5", "exact words before prefixes");
        assert_eq!(s("Doe, Jane"), "e1,e5");
        assert!(s("jnae").split(',').any(|i| i == "e1"), "{}", s("jnae"));
        assert_eq!(s("jons angstrom"), "e4", "accents");
        assert_eq!(s("JANE SMITH"), "e2", "case");
        assert_eq!(s("globex"), "e2", "company");
        assert_eq!(s("jd"), "e3", "the email's name");
        assert_eq!(s("nobody"), "");
        assert_eq!(s(""), "");
        let top = ix.search("jane", 5, &yes, None);
        assert_eq!(ids(&top)[..2], ["e1", "e2"], "exact words before prefixes");
        assert_eq!(top[0].company.as_deref(), Some("Acme"));
        assert_eq!(top[0].email.as_deref(), Some("jane.doe@acme.com"));
    }

    #[test]
    fn preferred_companies_come_first_and_scope_filters() {
        let ix = sample();
        let globex = |c: Option<&str>| c == Some("c2");
        assert_eq!(ids(&ix.search("jane", 5, &globex, None))[0], "e2");
        let only_acme = |c: Option<&str>| c == Some("c1");
        let found = ix.search("jane", 5, &yes, Some(&only_acme));
        assert!(found.iter().all(|f| f.company_id.as_deref() == Some("c1")));
        assert!(!found.is_empty());
    }

    #[test]
    fn ids_are_known_and_duplicates_kept_once() {
        let mut all = vec![listed("e1", "A", "a@x", ("c1", "X"))];
        all.push(listed("e1", "B", "b@x", ("c1", "X")));
        let ix = Index::build(all, 10);
        assert_eq!(ix.len(), 1);
        assert!(ix.knows("e1") && !ix.knows("e2"));
        assert_eq!(ix.get("e1").unwrap().name.as_deref(), Some("A"));
        let capped = Index::build(
            (0..50).map(|i| listed(&format!("e{i}"), "N", "n@x", ("c", "C"))),
            10,
        );
        assert_eq!(capped.len(), 10);
    }

    #[test]
    fn distances() {
        let c = |s: &str| s.chars().collect::<Vec<_>>();
        assert_eq!(distance_within(&c("jane"), &c("jnae"), 1), Some(1));
        assert_eq!(distance_within(&c("jane"), &c("jade"), 1), Some(1));
        assert_eq!(distance_within(&c("jane"), &c("joan"), 1), None);
        assert_eq!(distance_within(&c("smith"), &c("smyth"), 1), Some(1));
    }

    proptest! {
        #[test]
        fn no_query_panics(q in "\\PC{0,60}") {
            let ix = sample();
            let _ = ix.search(&q, 25, &yes, None);
        }

        #[test]
        fn no_listing_panics(name in "\\PC{0,80}", email in "\\PC{0,40}", id in "\\PC{0,30}") {
            let ix = Index::build(vec![listed(&id, &name, &email, ("c", &name))], 10);
            let _ = ix.search(&name, 5, &yes, None);
        }
    }
}
