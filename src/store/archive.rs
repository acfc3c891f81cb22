//! Message archive (XEP-0313): per-archive (user or room), time-ordered.
//!
//! Layout:
//! - `archive`: `owner \0 id` -> record. `id` is a big-endian u64: microseconds since
//!   the epoch shifted left by 8, plus a counter, so key order is arrival order and a
//!   time range is a key range.
//! - `archive_with`: `owner \0 with \0 id` -> empty, an index so that a query for one
//!   conversation reads only that conversation's keys.
//! - `archive_prefs`: `owner` -> preferences.
//!
//! Queries never count the whole range: they read one page (plus one record to know
//! whether the page is the last), so their cost does not grow with the archive.

use super::sled_store::{decode, encode};
use super::{user_key, user_prefix, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArchivedMessage {
    /// Bare JID of the other party (for a room: the occupant's nick-JID's room).
    pub with: String,
    /// The message as archived (XML).
    pub xml: String,
}

/// One query over one archive. Ids are archive ids (see `id_to_string`).
#[derive(Clone, Debug, Default)]
pub struct ArchiveQuery {
    pub with: Option<String>,
    /// Microseconds since the epoch, inclusive.
    pub start: Option<u64>,
    pub end: Option<u64>,
    /// Exclusive bounds by id.
    pub after_id: Option<u64>,
    pub before_id: Option<u64>,
    /// Only these ids (in archive order).
    pub ids: Option<Vec<u64>>,
    pub max: usize,
    /// Skip this many from the start of the range (XEP-0059 index).
    pub index: usize,
    /// Page from the end of the range backwards (RSM `<before/>`).
    pub from_end: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ArchivePage {
    /// In archive order.
    pub items: Vec<(u64, ArchivedMessage)>,
    /// No further items in the paging direction.
    pub complete: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArchivePrefs {
    /// always | never | roster
    pub default: String,
    pub always: Vec<String>,
    pub never: Vec<String>,
}

static LAST_ID: AtomicU64 = AtomicU64::new(0);

/// A fresh archive id: time-ordered, strictly increasing within this process.
pub fn next_id() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
        << 8;
    let mut last = LAST_ID.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST_ID.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// The smallest id at or after a time (microseconds).
pub fn id_at(micros: u64) -> u64 {
    micros.saturating_mul(256)
}

pub fn micros_of(id: u64) -> u64 {
    id >> 8
}

/// Ids are shown to clients as 16 hex digits (opaque to them, sortable for us).
pub fn id_to_string(id: u64) -> String {
    format!("{id:016x}")
}

pub fn id_from_str(s: &str) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn with_key(owner: &str, with: &str, id: u64) -> Vec<u8> {
    let mut k = user_key(owner, with.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The archive id that ends a key of the record tree or of a conversation index.
fn id_in_key(key: &[u8], prefix_len: usize) -> Result<u64, StoreError> {
    key.get(prefix_len..)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("bad key"))
}

fn corrupt(detail: &str) -> StoreError {
    StoreError::Corrupt {
        tree: "archive",
        detail: detail.into(),
    }
}

/// The id range `[lo, hi]` a query's filters allow (time and id bounds), or `None`
/// when they allow nothing.
fn id_range(q: &ArchiveQuery) -> Option<(u64, u64)> {
    let mut lo = q.start.map(id_at).unwrap_or(0);
    let mut hi = q
        .end
        .map(|e| id_at(e.saturating_add(1)).saturating_sub(1))
        .unwrap_or(u64::MAX);
    if let Some(a) = q.after_id {
        lo = lo.max(a.saturating_add(1));
    }
    if let Some(b) = q.before_id {
        hi = hi.min(b.checked_sub(1)?);
    }
    (lo <= hi).then_some((lo, hi))
}

impl Store {
    /// Appends a message; returns its id. Not flushed here: stream management flushes
    /// the store before it acknowledges (one disk sync per batch, not per message).
    pub fn archive_append(&self, owner: &str, with: &str, xml: &str) -> Result<u64, StoreError> {
        let id = next_id();
        let rec = ArchivedMessage {
            with: with.to_string(),
            xml: xml.to_string(),
        };
        let value = encode(&rec)?;
        // Index first, record second: a crash between the two can only leave an index
        // entry without its record, which queries already skip (as for an expired
        // record), never a record that a query by conversation cannot find.
        self.archive
            .with
            .insert(with_key(owner, with, id), &[] as &[u8])?;
        self.archive
            .records
            .insert(user_key(owner, &id.to_be_bytes()), value)?;
        Ok(id)
    }

    pub fn archive_get(&self, owner: &str, id: u64) -> Result<Option<ArchivedMessage>, StoreError> {
        match self
            .archive
            .records
            .get(user_key(owner, &id.to_be_bytes()))?
        {
            Some(v) => Ok(Some(decode("archive", &v)?)),
            None => Ok(None),
        }
    }

    pub fn archive_query(&self, owner: &str, q: &ArchiveQuery) -> Result<ArchivePage, StoreError> {
        if let Some(ids) = &q.ids {
            let mut items = Vec::new();
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            sorted.dedup();
            for id in sorted {
                if let Some(m) = self.archive_get(owner, id)? {
                    items.push((id, m));
                }
            }
            return Ok(ArchivePage {
                items,
                complete: true,
            });
        }
        let Some((lo, hi)) = id_range(q) else {
            return Ok(ArchivePage {
                items: Vec::new(),
                complete: true,
            });
        };
        let (tree, prefix) = self.archive_index(owner, q);
        let key = |id: u64| {
            let mut k = prefix.clone();
            k.extend_from_slice(&id.to_be_bytes());
            k
        };
        let range = tree.range(key(lo)..=key(hi));
        let want = q.index.saturating_add(q.max).saturating_add(1);
        let mut ids = Vec::new();
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if q.from_end {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        for kv in iter.skip(q.index) {
            let (k, _) = kv?;
            ids.push(id_in_key(&k, prefix.len())?);
            if ids.len() >= want - q.index {
                break;
            }
        }
        let complete = ids.len() <= q.max;
        ids.truncate(q.max);
        if q.from_end {
            ids.reverse();
        }
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            match self.archive_get(owner, id)? {
                Some(m) => items.push((id, m)),
                // An index entry whose record expired a moment ago.
                None => continue,
            }
        }
        Ok(ArchivePage { items, complete })
    }

    /// XEP-0059's figures for the full result set of a range query `q` (conversation,
    /// time and id bounds; its paging fields and `ids` are not looked at): how many items
    /// it has, and how many of them come before `first`. Counting walks the keys of the
    /// range without reading a record; a set of more than `limit` items is not counted
    /// (`None`).
    pub fn archive_count(
        &self,
        owner: &str,
        q: &ArchiveQuery,
        first: Option<u64>,
        limit: usize,
    ) -> Result<Option<(usize, usize)>, StoreError> {
        let Some((lo, hi)) = id_range(q) else {
            return Ok(Some((0, 0)));
        };
        let (tree, prefix) = self.archive_index(owner, q);
        let key = |id: u64| {
            let mut k = prefix.clone();
            k.extend_from_slice(&id.to_be_bytes());
            k
        };
        let mut total = 0;
        let mut before = 0;
        for kv in tree.range(key(lo)..=key(hi)) {
            let (k, _) = kv?;
            total += 1;
            if total > limit {
                return Ok(None);
            }
            if let Some(f) = first {
                if id_in_key(&k, prefix.len())? < f {
                    before += 1;
                }
            }
        }
        Ok(Some((total, before)))
    }

    /// The tree a query scans (the records, or one conversation's index) and the key
    /// prefix its ids follow there.
    fn archive_index(&self, owner: &str, q: &ArchiveQuery) -> (&sled::Tree, Vec<u8>) {
        match &q.with {
            Some(w) => {
                let mut p = user_key(owner, w.as_bytes());
                p.push(0);
                (&self.archive.with, p)
            }
            None => (&self.archive.records, user_prefix(owner)),
        }
    }

    /// Removes records older than `before` (microseconds); returns how many.
    pub fn archive_expire(&self, before: u64) -> Result<usize, StoreError> {
        let limit = id_at(before);
        let mut n = 0;
        for tree in [&self.archive.records, &self.archive.with] {
            let mut batch = sled::Batch::default();
            let mut count = 0;
            for k in tree.iter().keys() {
                let k = k?;
                let id = k
                    .len()
                    .checked_sub(8)
                    .and_then(|s| k.get(s..))
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| corrupt("bad key"))?;
                if id < limit {
                    batch.remove(k);
                    count += 1;
                }
            }
            tree.apply_batch(batch)?;
            if std::ptr::eq(tree, &self.archive.records) {
                n = count;
            }
        }
        self.archive.records.flush()?;
        Ok(n)
    }

    pub fn archive_prefs(&self, owner: &str) -> Result<Option<ArchivePrefs>, StoreError> {
        match self.archive.prefs.get(owner.as_bytes())? {
            Some(v) => Ok(Some(decode("archive_prefs", &v)?)),
            None => Ok(None),
        }
    }

    pub fn set_archive_prefs(&self, owner: &str, prefs: &ArchivePrefs) -> Result<(), StoreError> {
        self.archive
            .prefs
            .insert(owner.as_bytes(), encode(prefs)?)?;
        self.archive.prefs.flush()?;
        Ok(())
    }

    /// Deletes an archive entirely (account or room removed).
    pub fn remove_archive(&self, owner: &str) -> Result<(), StoreError> {
        super::roster::remove_prefix(&self.archive.records, &user_prefix(owner))?;
        super::roster::remove_prefix(&self.archive.with, &user_prefix(owner))?;
        self.archive.prefs.remove(owner.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(s: &Store, n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| {
                let with = if i % 2 == 0 { "b@x" } else { "c@x" };
                s.archive_append("a@x", with, &format!("<m n='{i}'/>"))
                    .unwrap()
            })
            .collect()
    }

    fn q(max: usize) -> ArchiveQuery {
        ArchiveQuery {
            max,
            ..ArchiveQuery::default()
        }
    }

    #[test]
    fn ids_are_time_ordered_and_increasing() {
        let a = next_id();
        let b = next_id();
        assert!(b > a);
        assert_eq!(id_from_str(&id_to_string(b)), Some(b));
        assert!(id_from_str("xyz").is_none());
    }

    #[test]
    fn counts_the_full_range_up_to_a_limit() {
        let s = Store::temporary().unwrap();
        let ids = fill(&s, 10);
        s.archive_append("other@x", "b@x", "<m/>").unwrap();
        // Paging fields do not change the full set; the index is the position of `first`.
        let paged = ArchiveQuery {
            after_id: Some(ids[2]),
            ..q(2)
        };
        assert_eq!(
            s.archive_count("a@x", &q(2), Some(ids[3]), 100).unwrap(),
            Some((10, 3))
        );
        assert_eq!(
            s.archive_count("a@x", &paged, Some(ids[5]), 100).unwrap(),
            Some((7, 2))
        );
        let with_c = ArchiveQuery {
            with: Some("c@x".into()),
            ..q(2)
        };
        assert_eq!(
            s.archive_count("a@x", &with_c, None, 100).unwrap(),
            Some((5, 0))
        );
        // A set larger than the limit is not counted; one exactly at it is.
        assert_eq!(s.archive_count("a@x", &q(2), None, 9).unwrap(), None);
        assert_eq!(
            s.archive_count("a@x", &q(2), None, 10).unwrap(),
            Some((10, 0))
        );
    }

    #[test]
    fn paging_forward_backward_and_filters() {
        let s = Store::temporary().unwrap();
        let ids = fill(&s, 10);
        s.archive_append("other@x", "b@x", "<m/>").unwrap();
        let p = s.archive_query("a@x", &q(4)).unwrap();
        assert_eq!(p.items.iter().map(|i| i.0).collect::<Vec<_>>(), ids[..4]);
        assert!(!p.complete);
        let p = s
            .archive_query(
                "a@x",
                &ArchiveQuery {
                    after_id: Some(ids[7]),
                    ..q(4)
                },
            )
            .unwrap();
        assert_eq!(p.items.len(), 2);
        assert!(p.complete);
        // The last page, then the one before it.
        let p = s
            .archive_query(
                "a@x",
                &ArchiveQuery {
                    from_end: true,
                    ..q(3)
                },
            )
            .unwrap();
        assert_eq!(p.items.iter().map(|i| i.0).collect::<Vec<_>>(), ids[7..]);
        let p = s
            .archive_query(
                "a@x",
                &ArchiveQuery {
                    from_end: true,
                    before_id: Some(ids[1]),
                    ..q(3)
                },
            )
            .unwrap();
        assert_eq!(p.items.iter().map(|i| i.0).collect::<Vec<_>>(), ids[..1]);
        assert!(p.complete);
        // A conversation, and an index into it.
        let p = s
            .archive_query(
                "a@x",
                &ArchiveQuery {
                    with: Some("c@x".into()),
                    index: 1,
                    ..q(10)
                },
            )
            .unwrap();
        let got: Vec<u64> = p.items.iter().map(|i| i.0).collect();
        assert_eq!(got, vec![ids[3], ids[5], ids[7], ids[9]]);
        // Time bounds are inclusive.
        let p = s
            .archive_query(
                "a@x",
                &ArchiveQuery {
                    start: Some(micros_of(ids[2])),
                    end: Some(micros_of(ids[4])),
                    ..q(100)
                },
            )
            .unwrap();
        assert!(p.items.iter().all(|(id, _)| *id >= ids[2]));
        assert!(p.items.iter().any(|(id, _)| *id == ids[4]));
        let p = s
            .archive_query(
                "a@x",
                &ArchiveQuery {
                    ids: Some(vec![ids[5], ids[1], 12345]),
                    ..q(10)
                },
            )
            .unwrap();
        assert_eq!(
            p.items.iter().map(|i| i.0).collect::<Vec<_>>(),
            vec![ids[1], ids[5]]
        );
        // Expiry and removal.
        assert_eq!(s.archive_expire(micros_of(ids[5])).unwrap(), 5);
        assert_eq!(s.archive_query("a@x", &q(100)).unwrap().items.len(), 5);
        s.remove_archive("a@x").unwrap();
        assert!(s.archive_query("a@x", &q(100)).unwrap().items.is_empty());
        assert_eq!(s.archive_query("other@x", &q(100)).unwrap().items.len(), 1);
    }
}
