//! Account administration shared by in-band registration, the CLI, the control socket
//! and ad-hoc commands: one place that knows what creating or deleting an account means.

use crate::module::Registry;
use crate::sasl::Credentials;
use crate::stanza::StreamError;
use crate::store::{Store, StoreError};
use crate::ServerState;
use jid::BareJid;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0:?} is not a valid JID of the form user@{1}")]
    BadJid(String, String),
    #[error("the password is empty or not valid")]
    BadPassword,
    #[error("account already exists")]
    Exists,
    #[error("no such account")]
    NoSuchAccount,
    #[error("{0}")]
    Store(StoreError),
}

impl From<StoreError> for AccountError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AccountExists => AccountError::Exists,
            StoreError::NoSuchAccount => AccountError::NoSuchAccount,
            other => AccountError::Store(other),
        }
    }
}

/// Parses and normalises `user@domain` (or a bare `user`) for the local domain.
pub fn local_jid(input: &str, domain: &str) -> Result<BareJid, AccountError> {
    let bad = || AccountError::BadJid(input.to_string(), domain.to_string());
    let text = if input.contains('@') {
        input.to_string()
    } else {
        format!("{input}@{domain}")
    };
    let jid = BareJid::new(&text).map_err(|_| bad())?;
    if jid.node().is_none() || jid.domain().as_str() != domain {
        return Err(bad());
    }
    Ok(jid)
}

fn derive(password: &str) -> Result<Credentials, AccountError> {
    Credentials::derive(password, Credentials::DEFAULT_ITERATIONS)
        .map_err(|_| AccountError::BadPassword)
}

pub fn create(store: &Store, jid: &BareJid, password: &str) -> Result<(), AccountError> {
    store.create_account(jid.as_str(), derive(password)?)?;
    Ok(())
}

pub fn set_password(store: &Store, jid: &BareJid, password: &str) -> Result<(), AccountError> {
    store.set_credentials(jid.as_str(), derive(password)?)?;
    Ok(())
}

/// Deletes the account and everything modules stored for it.
pub fn delete(store: &Store, registry: &Registry, jid: &BareJid) -> Result<(), AccountError> {
    store.delete_account(jid.as_str())?;
    registry.run_account_removed(store, jid);
    Ok(())
}

/// The same operations on a running server: also ends the account's live sessions where
/// the change makes them stale.
impl ServerState {
    pub fn delete_account(&self, jid: &BareJid) -> Result<(), AccountError> {
        delete(&self.store, &self.registry, jid)?;
        self.sessions.close_account(
            jid,
            StreamError::new("not-authorized").with_text("the account was deleted"),
        );
        tracing::info!(account = %jid, "account deleted");
        Ok(())
    }

    pub fn change_password(&self, jid: &BareJid, password: &str) -> Result<(), AccountError> {
        set_password(&self.store, jid, password)?;
        tracing::info!(account = %jid, "password changed");
        Ok(())
    }

    pub fn set_disabled(&self, jid: &BareJid, disabled: bool) -> Result<(), AccountError> {
        self.store.set_disabled(jid.as_str(), disabled)?;
        if disabled {
            self.sessions.close_account(
                jid,
                StreamError::new("not-authorized").with_text("the account was disabled"),
            );
        }
        tracing::info!(account = %jid, disabled, "account disabled state changed");
        Ok(())
    }
}
