//! Account administration shared by in-band registration, the CLI, the control socket
//! and ad-hoc commands: one place that knows what creating or deleting an account means.

use crate::module::Registry;
use crate::sasl::Credentials;
use crate::stanza::StreamError;
use crate::store::{Store, StoreError};
use crate::ServerState;
use jid::{BareJid, Jid};

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

/// The same operations on a running server: each also ends the account's live sessions
/// where the change makes them stale, and is logged with who did it (`by`: an admin's or
/// the user's bare JID, or "control socket"), never with the password.
impl ServerState {
    pub fn create_account(
        &self,
        jid: &BareJid,
        password: &str,
        by: &str,
    ) -> Result<(), AccountError> {
        create(&self.store, jid, password)?;
        tracing::info!(by, account = %jid, "account created");
        Ok(())
    }

    pub fn delete_account(&self, jid: &BareJid, by: &str) -> Result<(), AccountError> {
        delete(&self.store, &self.registry, jid)?;
        self.sessions.close_account(
            jid,
            StreamError::new("not-authorized").with_text("the account was deleted"),
        );
        tracing::info!(by, account = %jid, "account deleted");
        Ok(())
    }

    /// Changes the password and ends the account's sessions, which authenticated with
    /// the old one, except `keep`: the session that asked for the change itself (in-band
    /// self-service), which has just proved it knows the account.
    pub fn change_password(
        &self,
        jid: &BareJid,
        password: &str,
        keep: Option<&Jid>,
        by: &str,
    ) -> Result<(), AccountError> {
        set_password(&self.store, jid, password)?;
        let err = StreamError::new("not-authorized").with_text("the password was changed");
        let mut ended = 0;
        for r in self.sessions.resources(jid) {
            if keep.is_some_and(|k| k.as_str() == r.handle.jid.as_str()) {
                continue;
            }
            r.handle.close(err.clone());
            ended += 1;
        }
        tracing::info!(by, account = %jid, sessions_ended = ended, "password changed");
        Ok(())
    }

    pub fn set_disabled(
        &self,
        jid: &BareJid,
        disabled: bool,
        by: &str,
    ) -> Result<(), AccountError> {
        self.store.set_disabled(jid.as_str(), disabled)?;
        if disabled {
            self.sessions.close_account(
                jid,
                StreamError::new("not-authorized").with_text("the account was disabled"),
            );
        }
        tracing::info!(by, account = %jid, disabled, "account disabled state changed");
        Ok(())
    }

    /// Ends one session (a full JID) or every session of an account (a bare JID), as an
    /// administrator's decision; returns how many were ended.
    pub fn end_sessions(&self, jid: &Jid, by: &str) -> usize {
        let err = StreamError::new("policy-violation")
            .with_text("the session was ended by an administrator");
        let bare = jid.to_bare();
        let mut ended = 0;
        for r in self.sessions.resources(&bare) {
            if jid.is_bare() || r.handle.jid.as_str() == jid.as_str() {
                r.handle.close(err.clone());
                ended += 1;
            }
        }
        tracing::info!(by, target = %jid, sessions_ended = ended, "sessions ended");
        ended
    }
}
