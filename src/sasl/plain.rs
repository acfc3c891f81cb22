//! PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`.

use super::{
    authzid_allowed, dummy_plain_keys, normalize_username, prepare_password, Failure, HashAlg,
    Lookup, Step,
};

pub(crate) struct Plain {
    empty_challenge_sent: bool,
}

impl Plain {
    pub(crate) fn new() -> Self {
        Plain {
            empty_challenge_sent: false,
        }
    }

    pub(crate) fn step(
        &mut self,
        input: &[u8],
        domain: &str,
        lookup: &mut dyn FnMut(&str) -> Lookup,
    ) -> Step {
        if input.is_empty() {
            if self.empty_challenge_sent {
                return Step::fail(Failure::MalformedRequest, "empty response");
            }
            // No initial response: ask for it with an empty challenge.
            self.empty_challenge_sent = true;
            return Step::Challenge(Vec::new());
        }
        // The state has no later stage: every non-empty message ends the exchange.
        let mut fields = input.split(|&b| b == 0);
        let (Some(authzid), Some(authcid), Some(password), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Step::fail(
                Failure::MalformedRequest,
                "expected authzid, authcid and password separated by NUL",
            );
        };
        let (Ok(authzid), Ok(authcid), Ok(password)) = (
            std::str::from_utf8(authzid),
            std::str::from_utf8(authcid),
            std::str::from_utf8(password),
        ) else {
            return Step::fail(Failure::MalformedRequest, "not UTF-8");
        };
        if authcid.is_empty() || password.is_empty() {
            return Step::fail(Failure::MalformedRequest, "empty username or password");
        }
        let Some(username) = normalize_username(authcid) else {
            return Step::fail(
                Failure::NotAuthorized,
                "the username is not a valid localpart",
            );
        };
        if !authzid_allowed(authzid, &username, domain) {
            return Step::fail(
                Failure::InvalidAuthzid,
                "the authorization identity must be empty or the user's own bare JID",
            );
        }
        match lookup(&username) {
            Lookup::Found(credentials) => {
                if credentials.verify_password(password) {
                    Step::Success {
                        username,
                        additional_data: Vec::new(),
                    }
                } else {
                    Step::Failure(Failure::NotAuthorized, None)
                }
            }
            Lookup::NoSuchUser => {
                // Spend the same work as for a real account before failing.
                if let Ok(prepared) = prepare_password(password) {
                    let _ = dummy_plain_keys().matches(HashAlg::Sha256, &prepared);
                }
                Step::Failure(Failure::NotAuthorized, None)
            }
            Lookup::Disabled => Step::Failure(Failure::AccountDisabled, None),
            Lookup::TemporaryFailure => Step::Failure(Failure::TemporaryAuthFailure, None),
        }
    }
}
