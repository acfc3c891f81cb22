//! The embedded sled backend.

use super::{now_secs, Account, StoreError, SCHEMA_VERSION};
use crate::sasl::Credentials;
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

/// Cheap to clone: every clone shares the same database.
#[derive(Clone)]
pub struct Store {
    pub(super) db: sled::Db,
    accounts: sled::Tree,
    /// Instant-messaging data, one tree per kind (see roster.rs, offline.rs, ...).
    pub(super) im: super::ImTrees,
    pub(super) rooms: sled::Tree,
    pub(super) archive: super::ArchiveTrees,
    /// Striped locks that make "count, then insert" on one user's offline queue atomic
    /// (the quota must hold however many senders race). One process owns the database,
    /// so in-process locks are enough.
    pub(super) offline_locks: std::sync::Arc<[std::sync::Mutex<()>]>,
}

const OFFLINE_LOCK_STRIPES: usize = 64;

const META_SCHEMA: &[u8] = b"schema_version";

impl Store {
    /// Opens (creating if needed) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = match sled::Config::new().path(dir.join("db")).open() {
            Ok(db) => db,
            Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(StoreError::Locked)
            }
            Err(sled::Error::Io(e)) if e.to_string().contains("lock") => {
                return Err(StoreError::Locked)
            }
            Err(e) => return Err(e.into()),
        };
        let found = match db.get(META_SCHEMA)? {
            Some(v) => decode_u32(&v).ok_or(StoreError::Corrupt {
                tree: "meta",
                detail: "schema version".into(),
            })?,
            None => {
                db.insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
                SCHEMA_VERSION
            }
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Self::with_trees(db)
    }

    fn with_trees(db: sled::Db) -> Result<Store, StoreError> {
        let accounts = db.open_tree("accounts")?;
        let im = super::ImTrees::open(&db)?;
        let rooms = db.open_tree("rooms")?;
        let archive = super::ArchiveTrees::open(&db)?;
        Ok(Store {
            db,
            accounts,
            im,
            rooms,
            archive,
            offline_locks: (0..OFFLINE_LOCK_STRIPES)
                .map(|_| std::sync::Mutex::new(()))
                .collect(),
        })
    }

    /// A store in a fresh temporary directory (tests).
    pub fn temporary() -> Result<Store, StoreError> {
        let db = sled::Config::new().temporary(true).open()?;
        Self::with_trees(db)
    }

    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self
            .db
            .get(META_SCHEMA)?
            .and_then(|v| decode_u32(&v))
            .unwrap_or(SCHEMA_VERSION))
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Like `flush`, without blocking the async runtime: stream management awaits this
    /// before acknowledging stanzas, so what it acknowledged is on disk.
    /// (sled's own `flush_async` was seen never to complete under load, so the
    /// blocking flush runs on tokio's blocking pool instead.)
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Io(std::io::Error::other(e.to_string()))),
        }
    }

    // --- accounts, keyed by normalised bare JID ---

    pub fn create_account(&self, jid: &str, credentials: Credentials) -> Result<(), StoreError> {
        let account = Account {
            credentials,
            disabled: false,
            created: now_secs(),
            last_login: None,
            last_logout: None,
        };
        let value = encode(&account)?;
        match self
            .accounts
            .compare_and_swap(jid.as_bytes(), None as Option<&[u8]>, Some(value))?
        {
            Ok(()) => {
                self.accounts.flush()?;
                Ok(())
            }
            Err(_) => Err(StoreError::AccountExists),
        }
    }

    pub fn account(&self, jid: &str) -> Result<Option<Account>, StoreError> {
        match self.accounts.get(jid.as_bytes())? {
            Some(v) => Ok(Some(decode("accounts", &v)?)),
            None => Ok(None),
        }
    }

    /// Applies `f` to an account atomically (retrying on concurrent change).
    pub fn update_account(
        &self,
        jid: &str,
        mut f: impl FnMut(&mut Account),
    ) -> Result<Account, StoreError> {
        loop {
            let old = self
                .accounts
                .get(jid.as_bytes())?
                .ok_or(StoreError::NoSuchAccount)?;
            let mut account: Account = decode("accounts", &old)?;
            f(&mut account);
            let new = encode(&account)?;
            if self
                .accounts
                .compare_and_swap(jid.as_bytes(), Some(old), Some(new))?
                .is_ok()
            {
                self.accounts.flush()?;
                return Ok(account);
            }
        }
    }

    pub fn set_credentials(&self, jid: &str, credentials: Credentials) -> Result<(), StoreError> {
        self.update_account(jid, |a| a.credentials = credentials.clone())
            .map(|_| ())
    }

    pub fn set_disabled(&self, jid: &str, disabled: bool) -> Result<(), StoreError> {
        self.update_account(jid, |a| a.disabled = disabled)
            .map(|_| ())
    }

    /// Removes the account record. Modules owning per-user data remove theirs through
    /// the account-removal hook.
    pub fn delete_account(&self, jid: &str) -> Result<(), StoreError> {
        match self.accounts.remove(jid.as_bytes())? {
            Some(_) => {
                self.accounts.flush()?;
                Ok(())
            }
            None => Err(StoreError::NoSuchAccount),
        }
    }

    /// Every account's bare JID, sorted.
    pub fn account_jids(&self) -> Result<Vec<String>, StoreError> {
        self.accounts
            .iter()
            .keys()
            .map(|k| {
                let k = k?;
                String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt {
                    tree: "accounts",
                    detail: "non-UTF-8 key".into(),
                })
            })
            .collect()
    }

    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }
}

fn decode_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        tree: "encode",
        detail: e.to_string(),
    })
}

pub(crate) fn decode<T: DeserializeOwned>(tree: &'static str, v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        tree,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let creds = Credentials::derive("secret", 4096).unwrap();
        store
            .create_account("alice@localhost", creds.clone())
            .unwrap();
        assert!(matches!(
            store.create_account("alice@localhost", creds.clone()),
            Err(StoreError::AccountExists)
        ));
        store.set_disabled("alice@localhost", true).unwrap();
        let a = store.account("alice@localhost").unwrap().unwrap();
        assert!(a.disabled);
        assert_eq!(a.credentials, creds);
        assert_eq!(store.account_jids().unwrap(), vec!["alice@localhost"]);
        store.delete_account("alice@localhost").unwrap();
        assert!(store.account("alice@localhost").unwrap().is_none());
        assert!(matches!(
            store.delete_account("alice@localhost"),
            Err(StoreError::NoSuchAccount)
        ));
        drop(store);
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(reopened.schema_version().unwrap(), SCHEMA_VERSION);
    }
}
