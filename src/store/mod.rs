//! Persistent state behind one narrow, typed API. Handlers never see sled trees or byte
//! keys, so a second backend (a shared SQL database for clusters) is a new file.

mod settings;
mod sled_store;

pub use settings::Motd;
pub use sled_store::Store;

use crate::sasl::Credentials;
use serde::{Deserialize, Serialize};

/// Bumped whenever the on-disk layout changes; `Store::open` refuses a newer one.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sled::Error),
    #[error("corrupt record in {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    #[error(
        "the data directory holds schema version {found}, newer than this build's {supported}"
    )]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("account already exists")]
    AccountExists,
    #[error("no such account")]
    NoSuchAccount,
    #[error("the database is in use by another process (is the server running?)")]
    Locked,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// One account: SCRAM-derived credentials only, never the password.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Account {
    pub credentials: Credentials,
    #[serde(default)]
    pub disabled: bool,
    /// Seconds since the Unix epoch.
    pub created: u64,
    #[serde(default)]
    pub last_login: Option<u64>,
    #[serde(default)]
    pub last_logout: Option<u64>,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
