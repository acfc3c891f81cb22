//! Server-side SASL (RFC 4422 as profiled by RFC 6120 §6): SCRAM-SHA-1, SCRAM-SHA-256
//! (RFC 5802, RFC 7677), their `-PLUS` variants with `tls-exporter` (RFC 9266) and
//! `tls-server-end-point` (RFC 5929) channel binding, and PLAIN (RFC 4616).
//!
//! The c2s code drives a [`ServerSession`]: it picks the offer with [`offered_mechanisms`],
//! starts a session for the mechanism the client chose, and feeds every (base64-decoded)
//! client message to [`ServerSession::step`], which answers with a challenge, a success or a
//! failure. Nothing here performs I/O, logs, or looks at the clock; the account store is asked
//! at most once per session through the `lookup` callback.
//!
//! # Why not the `sasl` crate's server side
//!
//! We checked `sasl` 0.5.2 by pairing its own SCRAM client with its own SCRAM server (see the
//! test `sasl_crate_server_side_is_unusable`). Its server treats the GS2 header byte-wise: when it
//! is built without channel binding (`ChannelBinding::None`) it accepts *only* the `y` flag and
//! answers the standard `n,,` header — which its own client sends, as does every client without
//! channel binding — with `ChannelBindingNotSupported`; when it is built with
//! `ChannelBinding::TlsExporter` it refuses every client with `ChannelBindingMechanismIncorrect`,
//! because it checks for `tls-unique` support only (a `TODO` in the source), so `tls-exporter`
//! can never work. It also ignores the client's authzid, does not reject `m=`, compares the
//! proof with `!=` (not constant time), and stores the SaltedPassword rather than
//! StoredKey/ServerKey. Its *client* side, on the other hand, sends correct `n,,` and
//! `p=tls-exporter,,` headers and completes exchanges against this module, so the tests use it
//! as an independent peer (it does not SASLprep passwords, so those tests use ASCII passwords).
//!
//! # Decisions worth knowing
//!
//! * Usernames are JID localparts, normalised with the `jid` crate's nodeprep (so `Alice` and
//!   `alice` are the same account). A username that is not a valid localpart fails with
//!   `not-authorized` (no such account can exist, so nothing is revealed).
//! * An authorization identity, when present, must be the user's own bare JID
//!   (`user@domain`, compared after JID normalisation); anything else is `invalid-authzid`.
//! * An empty first message (a client that sent no initial response) is answered once with an
//!   empty challenge; an empty message at any other point is `malformed-request`.
//! * SCRAM for an unknown user answers with a server-first message of the same shape (a salt
//!   derived deterministically from the username with a per-process secret, the default
//!   iteration count) and fails with `not-authorized` at the final step. A disabled account or
//!   a store failure is reported at once (`account-disabled`, `temporary-auth-failure`), since
//!   [`Lookup`] carries no credentials for them to carry on with. Accounts whose iteration
//!   count differs from [`Credentials::DEFAULT_ITERATIONS`] are distinguishable from unknown
//!   ones by that count.
//! * A `-PLUS` mechanism used with the `n` or `y` flag is `malformed-request`; a `p=` flag on a
//!   non-PLUS mechanism, an unsupported or unavailable binding type, the `y` flag while a
//!   `-PLUS` mechanism was offered (a downgrade), wrong channel-binding data and a wrong nonce
//!   are all `not-authorized`. Syntax errors, bad UTF-8 or base64 and `m=` are
//!   `malformed-request`.
//! * A session that has finished refuses any further step with `malformed-request`.

use std::sync::OnceLock;

use base64::{engine::general_purpose::STANDARD as BASE64, Engine};
use hmac::{Hmac, Mac};
use jid::{BareJid, DomainPart, NodePart};
use rand::RngCore;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

mod plain;
mod scram;
#[cfg(test)]
mod tests;

/// The largest client message accepted, in bytes (after base64 decoding).
pub const MAX_MESSAGE_LEN: usize = 8192;

/// Mechanism names, as advertised.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
pub const SCRAM_SHA_1_PLUS: &str = "SCRAM-SHA-1-PLUS";
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_1: &str = "SCRAM-SHA-1";
pub const PLAIN: &str = "PLAIN";

/// Length of freshly generated salts, in bytes.
const SALT_LEN: usize = 16;

/// The stored SCRAM secrets for one hash function (RFC 5802 §3).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScramKeys {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl ScramKeys {
    /// Derives the keys from an already SASLprep-ed password.
    pub(crate) fn compute(hash: HashAlg, prepared: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = hash.salted_password(prepared.as_bytes(), salt, iterations);
        let client_key = hash.hmac(&salted, b"Client Key");
        ScramKeys {
            salt: salt.to_vec(),
            iterations,
            stored_key: hash.digest(&client_key),
            server_key: hash.hmac(&salted, b"Server Key"),
        }
    }

    /// Recomputes the keys from `prepared` and compares them in constant time.
    fn matches(&self, hash: HashAlg, prepared: &str) -> bool {
        if self.iterations == 0 {
            return false;
        }
        let fresh = ScramKeys::compute(hash, prepared, &self.salt, self.iterations);
        let stored_ok = fresh.stored_key.ct_eq(&self.stored_key);
        let server_ok = fresh.server_key.ct_eq(&self.server_key);
        bool::from(stored_ok & server_ok)
    }
}

/// Everything the account store keeps about a password.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub sha1: ScramKeys,
    pub sha256: ScramKeys,
}

/// Why credentials could not be derived.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("the password is empty")]
    EmptyPassword,
    #[error("the password contains characters that SASLprep prohibits")]
    InvalidPassword,
    #[error("an iteration count of {0} is below the minimum of 4096")]
    TooFewIterations(u32),
}

/// SASLprep (RFC 4013) a password; an empty result is refused.
fn prepare_password(password: &str) -> Result<String, SaslError> {
    if password.is_empty() {
        return Err(SaslError::EmptyPassword);
    }
    let prepared = stringprep::saslprep(password).map_err(|_| SaslError::InvalidPassword)?;
    if prepared.is_empty() {
        return Err(SaslError::EmptyPassword);
    }
    Ok(prepared.into_owned())
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes
}

impl Credentials {
    pub const DEFAULT_ITERATIONS: u32 = 4096;

    /// Derives both hashes' keys from a password (SASLprep-ed first), each with a fresh random
    /// 16-byte salt. Fails if the password is empty or SASLprep refuses it, or if `iterations`
    /// is below [`Self::DEFAULT_ITERATIONS`].
    pub fn derive(password: &str, iterations: u32) -> Result<Credentials, SaslError> {
        if iterations < Self::DEFAULT_ITERATIONS {
            return Err(SaslError::TooFewIterations(iterations));
        }
        let prepared = prepare_password(password)?;
        Ok(Credentials {
            sha1: ScramKeys::compute(
                HashAlg::Sha1,
                &prepared,
                &random_bytes(SALT_LEN),
                iterations,
            ),
            sha256: ScramKeys::compute(
                HashAlg::Sha256,
                &prepared,
                &random_bytes(SALT_LEN),
                iterations,
            ),
        })
    }

    /// For PLAIN: SASLprep the password, recompute the SHA-256 keys with the stored salt and
    /// iteration count, and compare them in constant time.
    pub fn verify_password(&self, password: &str) -> bool {
        match prepare_password(password) {
            Ok(prepared) => self.sha256.matches(HashAlg::Sha256, &prepared),
            Err(_) => false,
        }
    }
}

/// What the lookup says about a username (already normalised by the mechanism).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(Credentials),
    NoSuchUser,
    Disabled,
    TemporaryFailure,
}

/// Channel-binding data the TLS layer can provide for this connection.
#[derive(Clone, Debug, Default)]
pub struct ChannelBindings {
    /// RFC 9266: the 32-byte TLS exporter value for the label "EXPORTER-Channel-Binding" with
    /// no context. Leave it `None` on TLS 1.2 connections without the extended master secret
    /// (RFC 9266 §3).
    pub tls_exporter: Option<Vec<u8>>,
    /// RFC 5929: the hash of the server's certificate.
    pub tls_server_end_point: Option<Vec<u8>>,
}

impl ChannelBindings {
    /// The available binding types, for XEP-0440 advertisement.
    pub fn types(&self) -> Vec<&'static str> {
        let mut types = Vec::new();
        if self.tls_exporter.is_some() {
            types.push("tls-exporter");
        }
        if self.tls_server_end_point.is_some() {
            types.push("tls-server-end-point");
        }
        types
    }

    /// The binding data for a type named in a GS2 header, if available.
    fn data_for(&self, cb_name: &str) -> Option<&[u8]> {
        match cb_name {
            "tls-exporter" => self.tls_exporter.as_deref(),
            "tls-server-end-point" => self.tls_server_end_point.as_deref(),
            _ => None,
        }
    }
}

/// RFC 6120 §6.5 failure conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Aborted,
    AccountDisabled,
    CredentialsExpired,
    EncryptionRequired,
    IncorrectEncoding,
    InvalidAuthzid,
    InvalidMechanism,
    MalformedRequest,
    MechanismTooWeak,
    NotAuthorized,
    TemporaryAuthFailure,
}

impl Failure {
    /// The element name of the condition, e.g. `not-authorized`.
    pub fn condition(&self) -> &'static str {
        match self {
            Failure::Aborted => "aborted",
            Failure::AccountDisabled => "account-disabled",
            Failure::CredentialsExpired => "credentials-expired",
            Failure::EncryptionRequired => "encryption-required",
            Failure::IncorrectEncoding => "incorrect-encoding",
            Failure::InvalidAuthzid => "invalid-authzid",
            Failure::InvalidMechanism => "invalid-mechanism",
            Failure::MalformedRequest => "malformed-request",
            Failure::MechanismTooWeak => "mechanism-too-weak",
            Failure::NotAuthorized => "not-authorized",
            Failure::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.condition())
    }
}

/// The outcome of one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Raw challenge bytes; c2s base64-encodes them.
    Challenge(Vec<u8>),
    /// `username` is the normalised localpart; `additional_data` is SCRAM's server-final
    /// message `v=...` (empty for PLAIN).
    Success {
        username: String,
        additional_data: Vec<u8>,
    },
    /// A condition and optional human-readable text (never containing secrets or payloads).
    Failure(Failure, Option<String>),
}

impl Step {
    pub(crate) fn fail(failure: Failure, text: &str) -> Step {
        Step::Failure(failure, Some(text.to_owned()))
    }
}

/// Which mechanisms to offer, in preference order, given the connection's state.
///
/// Channel binding data available ⇒ `SCRAM-SHA-256-PLUS` and `SCRAM-SHA-1-PLUS` first; then
/// `SCRAM-SHA-256`, `SCRAM-SHA-1`; then `PLAIN` if `allow_plain`.
pub fn offered_mechanisms(bindings: &ChannelBindings, allow_plain: bool) -> Vec<&'static str> {
    let mut mechanisms = Vec::new();
    if !bindings.types().is_empty() {
        mechanisms.push(SCRAM_SHA_256_PLUS);
        mechanisms.push(SCRAM_SHA_1_PLUS);
    }
    mechanisms.push(SCRAM_SHA_256);
    mechanisms.push(SCRAM_SHA_1);
    if allow_plain {
        mechanisms.push(PLAIN);
    }
    mechanisms
}

/// The hash functions SCRAM is used with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HashAlg {
    Sha1,
    Sha256,
}

impl HashAlg {
    pub(crate) fn output_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
        }
    }

    pub(crate) fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => Sha1::digest(data).to_vec(),
            HashAlg::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    pub(crate) fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC accepts keys of any length, so the error arms are unreachable; an empty result
        // would only make the comparison that uses it fail.
        match self {
            HashAlg::Sha1 => match <Hmac<Sha1> as Mac>::new_from_slice(key) {
                Ok(mut mac) => {
                    mac.update(data);
                    mac.finalize().into_bytes().to_vec()
                }
                Err(_) => Vec::new(),
            },
            HashAlg::Sha256 => match <Hmac<Sha256> as Mac>::new_from_slice(key) {
                Ok(mut mac) => {
                    mac.update(data);
                    mac.finalize().into_bytes().to_vec()
                }
                Err(_) => Vec::new(),
            },
        }
    }

    pub(crate) fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len()];
        match self {
            HashAlg::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out),
            HashAlg::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
        }
        out
    }
}

/// Normalises a SASL username as a JID localpart; `None` if it is not a valid one.
pub(crate) fn normalize_username(raw: &str) -> Option<String> {
    NodePart::new(raw).ok().map(|node| node.as_str().to_owned())
}

/// Whether an authorization identity is acceptable for `username`: empty, or exactly the
/// user's own bare JID after JID normalisation.
pub(crate) fn authzid_allowed(authzid: &str, username: &str, domain: &str) -> bool {
    if authzid.is_empty() {
        return true;
    }
    match BareJid::new(authzid) {
        Ok(jid) => {
            jid.node().map(|node| node.as_str()) == Some(username)
                && jid.domain().as_str() == domain
        }
        Err(_) => false,
    }
}

/// A per-process secret, so fake salts for unknown users are stable within the process but
/// unpredictable.
fn fake_salt_secret() -> &'static [u8] {
    static SECRET: OnceLock<Vec<u8>> = OnceLock::new();
    SECRET.get_or_init(|| random_bytes(32))
}

/// Keys for a user that does not exist: a deterministic salt, the default iteration count, and
/// random keys that no proof will match.
pub(crate) fn fake_keys(hash: HashAlg, username: &str) -> ScramKeys {
    let label: &[u8] = match hash {
        HashAlg::Sha1 => b"starling fake salt SHA-1\0",
        HashAlg::Sha256 => b"starling fake salt SHA-256\0",
    };
    let mut input = label.to_vec();
    input.extend_from_slice(username.as_bytes());
    let mut salt = HashAlg::Sha256.hmac(fake_salt_secret(), &input);
    salt.truncate(SALT_LEN);
    ScramKeys {
        salt,
        iterations: Credentials::DEFAULT_ITERATIONS,
        stored_key: random_bytes(hash.output_len()),
        server_key: random_bytes(hash.output_len()),
    }
}

/// SHA-256 keys for a random password, used so that PLAIN spends the same work on unknown
/// users as on known ones.
pub(crate) fn dummy_plain_keys() -> &'static ScramKeys {
    static KEYS: OnceLock<ScramKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let password = BASE64.encode(random_bytes(24));
        ScramKeys::compute(
            HashAlg::Sha256,
            &password,
            &random_bytes(SALT_LEN),
            Credentials::DEFAULT_ITERATIONS,
        )
    })
}

enum Mechanism {
    Plain(plain::Plain),
    Scram(Box<scram::Scram>),
}

/// One authentication exchange on one stream.
pub struct ServerSession {
    mechanism: Mechanism,
    /// The local domain, normalised.
    domain: String,
    finished: bool,
}

impl ServerSession {
    /// Starts a mechanism the client chose. `domain` is the local XMPP domain (authzid checks).
    /// Unknown / not-offered mechanism -> `Err(Failure::InvalidMechanism)`. `offered` is what
    /// [`offered_mechanisms`] returned. A domain that is not a valid JID domain (a
    /// configuration error) -> `Err(Failure::TemporaryAuthFailure)`.
    pub fn start(
        mechanism: &str,
        domain: &str,
        offered: &[&'static str],
        bindings: ChannelBindings,
    ) -> Result<ServerSession, Failure> {
        Self::start_inner(mechanism, domain, offered, bindings, None)
    }

    /// Like [`Self::start`], with a fixed server nonce suffix (for the RFC test vectors).
    #[cfg(test)]
    pub(crate) fn start_with_nonce_suffix(
        mechanism: &str,
        domain: &str,
        offered: &[&'static str],
        bindings: ChannelBindings,
        nonce_suffix: &str,
    ) -> Result<ServerSession, Failure> {
        Self::start_inner(
            mechanism,
            domain,
            offered,
            bindings,
            Some(nonce_suffix.to_owned()),
        )
    }

    fn start_inner(
        mechanism: &str,
        domain: &str,
        offered: &[&'static str],
        bindings: ChannelBindings,
        nonce_suffix: Option<String>,
    ) -> Result<ServerSession, Failure> {
        if !offered.contains(&mechanism) {
            return Err(Failure::InvalidMechanism);
        }
        let domain = DomainPart::new(domain)
            .map_err(|_| Failure::TemporaryAuthFailure)?
            .as_str()
            .to_owned();
        let plus_offered = offered.iter().any(|m| m.ends_with("-PLUS"));
        let scram = |hash: HashAlg, plus: bool| {
            if plus && bindings.types().is_empty() {
                return Err(Failure::InvalidMechanism);
            }
            Ok(Mechanism::Scram(Box::new(scram::Scram::new(
                hash,
                plus,
                plus_offered,
                bindings.clone(),
                nonce_suffix.clone(),
            ))))
        };
        let mechanism = match mechanism {
            SCRAM_SHA_256_PLUS => scram(HashAlg::Sha256, true)?,
            SCRAM_SHA_1_PLUS => scram(HashAlg::Sha1, true)?,
            SCRAM_SHA_256 => scram(HashAlg::Sha256, false)?,
            SCRAM_SHA_1 => scram(HashAlg::Sha1, false)?,
            PLAIN => Mechanism::Plain(plain::Plain::new()),
            _ => return Err(Failure::InvalidMechanism),
        };
        Ok(ServerSession {
            mechanism,
            domain,
            finished: false,
        })
    }

    /// Feeds the client's data (initial response or response to a challenge, already
    /// base64-decoded; an empty initial response is `&[]`). `lookup` is called at most once
    /// per session, synchronously, with the normalised username.
    pub fn step(&mut self, input: &[u8], lookup: &mut dyn FnMut(&str) -> Lookup) -> Step {
        if self.finished {
            return Step::fail(
                Failure::MalformedRequest,
                "the authentication exchange has already finished",
            );
        }
        let step = if input.len() > MAX_MESSAGE_LEN {
            Step::fail(Failure::MalformedRequest, "message too long")
        } else {
            match &mut self.mechanism {
                Mechanism::Plain(plain) => plain.step(input, &self.domain, lookup),
                Mechanism::Scram(scram) => scram.step(input, &self.domain, lookup),
            }
        };
        if !matches!(step, Step::Challenge(_)) {
            self.finished = true;
        }
        step
    }
}
