//! vCards (XEP-0054) and the last unavailable presence of each user (for probes and
//! XEP-0012 last activity).

use super::sled_store::{decode, encode};
use super::{Store, StoreError};
use serde::{Deserialize, Serialize};

/// What a user said when their last resource went offline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastPresence {
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// The unavailable presence, serialised.
    pub xml: String,
}

impl Store {
    pub fn vcard(&self, user: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.im.vcard.get(user.as_bytes())?.map(|v| v.to_vec()))
    }

    pub fn set_vcard(&self, user: &str, xml: &[u8]) -> Result<(), StoreError> {
        self.im.vcard.insert(user.as_bytes(), xml)?;
        self.im.vcard.flush()?;
        Ok(())
    }

    pub fn remove_vcard(&self, user: &str) -> Result<(), StoreError> {
        self.im.vcard.remove(user.as_bytes())?;
        Ok(())
    }

    pub fn last_presence(&self, user: &str) -> Result<Option<LastPresence>, StoreError> {
        match self.im.last_presence.get(user.as_bytes())? {
            Some(v) => Ok(Some(decode("last_presence", &v)?)),
            None => Ok(None),
        }
    }

    /// Not flushed: losing the last status line in a crash is harmless.
    pub fn set_last_presence(&self, user: &str, last: &LastPresence) -> Result<(), StoreError> {
        self.im
            .last_presence
            .insert(user.as_bytes(), encode(last)?)?;
        Ok(())
    }

    pub fn remove_last_presence(&self, user: &str) -> Result<(), StoreError> {
        self.im.last_presence.remove(user.as_bytes())?;
        Ok(())
    }
}
