//! Rosters (RFC 6121 §2), with the subscription state of each item and the roster
//! version counter used for versioning (§2.6).

use super::sled_store::{decode, encode};
use super::{user_key, user_prefix, Store, StoreError};
use crate::im::subscription::State;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};

/// One contact in a user's roster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterItem {
    /// The contact's normalised bare JID.
    pub jid: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub state: State,
    /// The user pre-approved the contact's subscription request (§3.4).
    #[serde(default)]
    pub approved: bool,
    /// Shown in the roster. An inbound request from someone the user never added is
    /// remembered (so it can be re-sent at login) without appearing in the roster.
    #[serde(default)]
    pub listed: bool,
    /// The roster version at which this item last changed.
    #[serde(default)]
    pub ver: u64,
    /// The contact's pending subscription request, serialised, re-sent at each login
    /// until the user answers it (§3.1.3).
    #[serde(default)]
    pub request: Option<String>,
}

impl RosterItem {
    pub fn new(jid: impl Into<String>) -> RosterItem {
        RosterItem {
            jid: jid.into(),
            name: None,
            groups: Vec::new(),
            state: State::None,
            approved: false,
            listed: false,
            ver: 0,
            request: None,
        }
    }
}

/// Per-user roster bookkeeping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterMeta {
    /// Current roster version (bumped by every change).
    pub ver: u64,
    /// Version of the last removal. Removed items leave no trace, so a client whose
    /// version is older than this cannot be brought up to date with pushes alone.
    pub floor: u64,
}

/// What an update function decides.
pub enum RosterUpdate {
    Keep,
    Put(RosterItem),
    Remove,
}

/// The outcome of `roster_update`.
#[derive(Debug)]
pub struct RosterChange {
    pub before: Option<RosterItem>,
    pub after: Option<RosterItem>,
    /// The new roster version, if anything changed.
    pub ver: Option<u64>,
}

impl Store {
    pub fn roster_meta(&self, user: &str) -> Result<RosterMeta, StoreError> {
        match self.im.roster.get(user_prefix(user))? {
            Some(v) => decode("roster", &v),
            None => Ok(RosterMeta::default()),
        }
    }

    /// Every item, listed or not, in JID order.
    pub fn roster(&self, user: &str) -> Result<Vec<RosterItem>, StoreError> {
        let prefix = user_prefix(user);
        let mut out = Vec::new();
        for kv in self.im.roster.scan_prefix(&prefix) {
            let (k, v) = kv?;
            if k.len() == prefix.len() {
                continue; // the meta record
            }
            out.push(decode("roster", &v)?);
        }
        Ok(out)
    }

    pub fn roster_item(&self, user: &str, contact: &str) -> Result<Option<RosterItem>, StoreError> {
        match self.im.roster.get(user_key(user, contact.as_bytes()))? {
            Some(v) => Ok(Some(decode("roster", &v)?)),
            None => Ok(None),
        }
    }

    /// Reads, changes and writes one item atomically (with the version counter), so the
    /// subscription machine never loses a concurrent change. `f` may run more than once.
    pub fn roster_update(
        &self,
        user: &str,
        contact: &str,
        f: impl FnMut(Option<RosterItem>) -> RosterUpdate,
    ) -> Result<RosterChange, StoreError> {
        let meta_key = user_prefix(user);
        let item_key = user_key(user, contact.as_bytes());
        // sled may run the transaction more than once; the caller's closure is FnMut.
        let f = std::cell::RefCell::new(f);
        let abort = |e: StoreError| ConflictableTransactionError::Abort(e);
        let result = self.im.roster.transaction(|tx| {
            let before: Option<RosterItem> = match tx.get(&item_key)? {
                Some(v) => Some(decode("roster", &v).map_err(abort)?),
                None => None,
            };
            let mut meta: RosterMeta = match tx.get(&meta_key)? {
                Some(v) => decode("roster", &v).map_err(abort)?,
                None => RosterMeta::default(),
            };
            let after = match (f.borrow_mut())(before.clone()) {
                RosterUpdate::Keep => {
                    return Ok(RosterChange {
                        after: before.clone(),
                        before,
                        ver: None,
                    })
                }
                RosterUpdate::Put(mut item) => {
                    meta.ver += 1;
                    item.ver = meta.ver;
                    tx.insert(item_key.as_slice(), encode(&item).map_err(abort)?)?;
                    Some(item)
                }
                RosterUpdate::Remove => {
                    if before.is_none() {
                        return Ok(RosterChange {
                            before,
                            after: None,
                            ver: None,
                        });
                    }
                    meta.ver += 1;
                    meta.floor = meta.ver;
                    tx.remove(item_key.as_slice())?;
                    None
                }
            };
            tx.insert(meta_key.as_slice(), encode(&meta).map_err(abort)?)?;
            Ok(RosterChange {
                before,
                after,
                ver: Some(meta.ver),
            })
        });
        let change = match result {
            Ok(c) => c,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        };
        if change.ver.is_some() {
            self.im.roster.flush()?;
        }
        Ok(change)
    }

    pub fn remove_roster(&self, user: &str) -> Result<(), StoreError> {
        remove_prefix(&self.im.roster, &user_prefix(user))
    }
}

pub(super) fn remove_prefix(tree: &sled::Tree, prefix: &[u8]) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    for k in tree.scan_prefix(prefix).keys() {
        batch.remove(k?);
    }
    tree.apply_batch(batch)?;
    tree.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_floor() {
        let s = Store::temporary().unwrap();
        let c = s
            .roster_update("a@x", "b@x", |_| {
                let mut i = RosterItem::new("b@x");
                i.listed = true;
                RosterUpdate::Put(i)
            })
            .unwrap();
        assert_eq!(c.ver, Some(1));
        assert_eq!(c.after.unwrap().ver, 1);
        s.roster_update("a@x", "c@x", |_| RosterUpdate::Put(RosterItem::new("c@x")))
            .unwrap();
        // Another user's roster is separate even when one JID prefixes the other.
        s.roster_update("a@xy", "z@x", |_| RosterUpdate::Put(RosterItem::new("z@x")))
            .unwrap();
        assert_eq!(s.roster("a@x").unwrap().len(), 2);
        let kept = s
            .roster_update("a@x", "b@x", |_| RosterUpdate::Keep)
            .unwrap();
        assert_eq!(kept.ver, None);
        let removed = s
            .roster_update("a@x", "b@x", |_| RosterUpdate::Remove)
            .unwrap();
        assert_eq!(removed.ver, Some(3));
        assert_eq!(
            s.roster_meta("a@x").unwrap(),
            RosterMeta { ver: 3, floor: 3 }
        );
        s.remove_roster("a@x").unwrap();
        assert!(s.roster("a@x").unwrap().is_empty());
        assert_eq!(s.roster("a@xy").unwrap().len(), 1);
    }
}
