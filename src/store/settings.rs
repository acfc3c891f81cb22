//! Server-wide settings administrators change at run time: the message of the day.

use super::sled_store::{decode, encode};
use super::{now_secs, Store, StoreError};
use serde::{Deserialize, Serialize};

const TREE: &str = "settings";
const MOTD: &[u8] = b"motd";

/// The message of the day (XEP-0133), sent to each user when they log in.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Motd {
    pub text: String,
    /// Bare JID (or "control socket") of whoever set it.
    pub set_by: String,
    /// Seconds since the Unix epoch.
    pub set_at: u64,
}

impl Store {
    fn settings(&self) -> Result<sled::Tree, StoreError> {
        // sled keeps opened trees cached, so opening on each use costs a map lookup.
        Ok(self.db.open_tree(TREE)?)
    }

    pub fn motd(&self) -> Result<Option<Motd>, StoreError> {
        match self.settings()?.get(MOTD)? {
            Some(v) => Ok(Some(decode(TREE, &v)?)),
            None => Ok(None),
        }
    }

    pub fn set_motd(&self, text: &str, set_by: &str) -> Result<(), StoreError> {
        let motd = Motd {
            text: text.to_string(),
            set_by: set_by.to_string(),
            set_at: now_secs(),
        };
        let tree = self.settings()?;
        tree.insert(MOTD, encode(&motd)?)?;
        tree.flush()?;
        Ok(())
    }

    /// Returns whether there was one.
    pub fn delete_motd(&self) -> Result<bool, StoreError> {
        let tree = self.settings()?;
        let had = tree.remove(MOTD)?.is_some();
        tree.flush()?;
        Ok(had)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn motd_set_replace_delete() {
        let store = Store::temporary().unwrap();
        assert_eq!(store.motd().unwrap(), None);
        store.set_motd("hello", "admin@localhost").unwrap();
        store.set_motd("hello again", "other@localhost").unwrap();
        let m = store.motd().unwrap().unwrap();
        assert_eq!(m.text, "hello again");
        assert_eq!(m.set_by, "other@localhost");
        assert!(store.delete_motd().unwrap());
        assert!(!store.delete_motd().unwrap());
        assert_eq!(store.motd().unwrap(), None);
    }
}
