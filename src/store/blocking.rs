//! Blocklists (XEP-0191): the JIDs a user blocks, as a sorted list.

use super::sled_store::{decode, encode};
use super::{Store, StoreError};
use sled::transaction::{ConflictableTransactionError, TransactionError};

impl Store {
    pub fn blocklist(&self, user: &str) -> Result<Vec<String>, StoreError> {
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
        let result = self.im.blocking.transaction(|tx| {
            let mut list: Vec<String> = match tx.get(user.as_bytes())? {
                Some(v) => decode("blocking", &v).map_err(abort)?,
                None => Vec::new(),
            };
            if (f.borrow_mut())(&mut list) {
                list.sort();
                list.dedup();
                if list.is_empty() {
                    tx.remove(user.as_bytes())?;
                } else {
                    tx.insert(user.as_bytes(), encode(&list).map_err(abort)?)?;
                }
            }
            Ok(list)
        });
        let list = match result {
            Ok(l) => l,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        };
        self.im.blocking.flush()?;
        Ok(list)
    }

    pub fn remove_blocklist(&self, user: &str) -> Result<(), StoreError> {
        self.im.blocking.remove(user.as_bytes())?;
        Ok(())
    }
}
