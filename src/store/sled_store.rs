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
    /// `jid` -> last login and last logout, two big-endian u64 seconds (0: none yet).
    /// Kept apart from the account record so that a login does not rewrite (and re-encode)
    /// the credentials.
    activity: sled::Tree,
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
        let activity = db.open_tree("activity")?;
        let im = super::ImTrees::open(&db)?;
        let rooms = db.open_tree("rooms")?;
        let archive = super::ArchiveTrees::open(&db)?;
        Ok(Store {
            db,
            accounts,
            activity,
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
                // A previous account of the same name left its times behind if a session
                // ended after the deletion: they are not this account's.
                self.activity.remove(jid.as_bytes())?;
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
                self.activity.remove(jid.as_bytes())?;
                self.accounts.flush()?;
                Ok(())
            }
            None => Err(StoreError::NoSuchAccount),
        }
    }

    /// Records a login (`logout == false`) or a logout time.
    ///
    /// Not flushed: these times are informational (XEP-0012 last activity, the admin
    /// "last login" command) and sled's background flusher writes them out within half a
    /// second, so a crash loses at most that much of them. Logins and logouts, the most
    /// frequent writes a server makes, thus never wait for the disk or for sled's writer
    /// threads.
    pub fn record_activity(&self, jid: &str, logout: bool, at: u64) -> Result<(), StoreError> {
        if !self.accounts.contains_key(jid.as_bytes())? {
            return Ok(());
        }
        self.activity.fetch_and_update(jid.as_bytes(), |old| {
            let (mut login, mut out) = old.map(decode_activity).unwrap_or((0, 0));
            match logout {
                false => login = at,
                true => out = at,
            }
            let mut v = [0u8; 16];
            v[..8].copy_from_slice(&login.to_be_bytes());
            v[8..].copy_from_slice(&out.to_be_bytes());
            Some(v.to_vec())
        })?;
        Ok(())
    }

    /// The last login and logout times, either `None` if never recorded.
    pub fn activity(&self, jid: &str) -> Result<(Option<u64>, Option<u64>), StoreError> {
        let recorded = self
            .activity
            .get(jid.as_bytes())?
            .map(|v| decode_activity(&v))
            .unwrap_or((0, 0));
        let some = |t: u64| (t != 0).then_some(t);
        let (mut login, mut logout) = (some(recorded.0), some(recorded.1));
        if login.is_none() || logout.is_none() {
            // Data written before the activity tree existed kept the times in the account.
            if let Some(a) = self.account(jid)? {
                login = login.or(a.last_login);
                logout = logout.or(a.last_logout);
            }
        }
        Ok((login, logout))
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

/// A record of the activity tree; anything malformed reads as "never".
fn decode_activity(v: &[u8]) -> (u64, u64) {
    let half = |r: std::ops::Range<usize>| {
        v.get(r)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0)
    };
    (half(0..8), half(8..16))
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
        assert_eq!(store.activity("alice@localhost").unwrap(), (None, None));
        store
            .record_activity("alice@localhost", false, 100)
            .unwrap();
        store.record_activity("alice@localhost", true, 200).unwrap();
        store
            .record_activity("alice@localhost", false, 300)
            .unwrap();
        assert_eq!(
            store.activity("alice@localhost").unwrap(),
            (Some(300), Some(200))
        );
        // Nothing is recorded for an account that does not exist.
        store.record_activity("nobody@localhost", true, 1).unwrap();
        assert_eq!(store.activity("nobody@localhost").unwrap(), (None, None));
        store.set_disabled("alice@localhost", true).unwrap();
        let a = store.account("alice@localhost").unwrap().unwrap();
        assert!(a.disabled);
        assert_eq!(a.credentials, creds);
        assert_eq!(store.account_jids().unwrap(), vec!["alice@localhost"]);
        store.delete_account("alice@localhost").unwrap();
        assert!(store.account("alice@localhost").unwrap().is_none());
        assert_eq!(store.activity("alice@localhost").unwrap(), (None, None));
        assert!(matches!(
            store.delete_account("alice@localhost"),
            Err(StoreError::NoSuchAccount)
        ));
        drop(store);
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(reopened.schema_version().unwrap(), SCHEMA_VERSION);
    }
}
