//! Blocklists (XEP-0191): the JIDs a user blocks, as a sorted list.

use super::sled_store::{decode, encode};
use super::{Store, StoreError};
use sled::transaction::{ConflictableTransactionError, TransactionError};

use std::sync::atomic::Ordering;

impl Store {
    /// Whether any user has a blocklist at all (then there is nothing to look up).
    pub fn any_blocklists(&self) -> bool {
        self.im.blocklists.load(Ordering::Acquire) > 0
    }

    pub fn blocklist(&self, user: &str) -> Result<Vec<String>, StoreError> {
        if !self.any_blocklists() {
            return Ok(Vec::new());
        }
        match self.im.blocking.get(user.as_bytes())? {
            Some(v) => decode("blocking", &v),
            None => Ok(Vec::new()),
        }
    }

    /// Changes the list atomically; `f` returns false to leave it as it was. Returns
    /// the list after the change.
    pub fn update_blocklist(
        &self,
        user: &str,
        f: impl FnMut(&mut Vec<String>) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        // sled may run the transaction more than once; the caller's closure is FnMut.
        let f = std::cell::RefCell::new(f);
        let abort = |e: StoreError| ConflictableTransactionError::Abort(e);
        // Besides the list, the transaction says whether the user had one stored before
        // and has one after, for the count of users with a blocklist.
        let result = self.im.blocking.transaction(|tx| {
            let stored = tx.get(user.as_bytes())?;
            let had = stored.is_some();
            let mut list: Vec<String> = match stored {
                Some(v) => decode("blocking", &v).map_err(abort)?,
                None => Vec::new(),
            };
            let mut has = had;
            if (f.borrow_mut())(&mut list) {
                list.sort();
                list.dedup();
                has = !list.is_empty();
                if list.is_empty() {
                    tx.remove(user.as_bytes())?;
                } else {
                    tx.insert(user.as_bytes(), encode(&list).map_err(abort)?)?;
                }
            }
            Ok((list, had, has))
        });
        let list = match result {
            Ok((l, had, has)) => {
                // Counted after the commit and before the caller answers the client,
                // so every stanza routed after the answer is checked against the list.
                match (had, has) {
                    (false, true) => {
                        self.im.blocklists.fetch_add(1, Ordering::AcqRel);
                    }
                    (true, false) => {
                        self.im.blocklists.fetch_sub(1, Ordering::AcqRel);
                    }
                    _ => {}
                }
                l
            }
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        };
        self.im.blocking.flush()?;
        Ok(list)
    }

    pub fn remove_blocklist(&self, user: &str) -> Result<(), StoreError> {
        if self.im.blocking.remove(user.as_bytes())?.is_some() {
            self.im.blocklists.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }
}
