//! PLACEHOLDER: replaced by the sasl branch.
use serde::{Deserialize, Serialize};
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramKeys {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub sha1: ScramKeys,
    pub sha256: ScramKeys,
}
#[derive(Debug)]
pub struct SaslError;
impl Credentials {
    pub const DEFAULT_ITERATIONS: u32 = 4096;
    pub fn derive(password: &str, iterations: u32) -> Result<Credentials, SaslError> {
        let k = ScramKeys {
            salt: vec![],
            iterations,
            stored_key: password.as_bytes().to_vec(),
            server_key: vec![],
        };
        Ok(Credentials {
            sha1: k.clone(),
            sha256: k,
        })
    }
    pub fn verify_password(&self, password: &str) -> bool {
        self.sha256.stored_key == password.as_bytes()
    }
}
pub enum Lookup {
    Found(Credentials),
    NoSuchUser,
    Disabled,
    TemporaryFailure,
}
#[derive(Clone, Debug, Default)]
pub struct ChannelBindings {
    pub tls_exporter: Option<Vec<u8>>,
    pub tls_server_end_point: Option<Vec<u8>>,
}
impl ChannelBindings {
    pub fn types(&self) -> Vec<&'static str> {
        vec![]
    }
}
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
    pub fn condition(&self) -> &'static str {
        "not-authorized"
    }
}
pub enum Step {
    Challenge(Vec<u8>),
    Success {
        username: String,
        additional_data: Vec<u8>,
    },
    Failure(Failure, Option<String>),
}
pub fn offered_mechanisms(_b: &ChannelBindings, allow_plain: bool) -> Vec<&'static str> {
    if allow_plain {
        vec!["PLAIN"]
    } else {
        vec![]
    }
}
pub struct ServerSession {
    domain: String,
}
impl ServerSession {
    pub fn start(
        mechanism: &str,
        domain: &str,
        offered: &[&'static str],
        _bindings: ChannelBindings,
    ) -> Result<ServerSession, Failure> {
        if !offered.contains(&mechanism) {
            return Err(Failure::InvalidMechanism);
        }
        Ok(ServerSession {
            domain: domain.into(),
        })
    }
    pub fn step(&mut self, input: &[u8], lookup: &mut dyn FnMut(&str) -> Lookup) -> Step {
        let _ = &self.domain;
        let parts: Vec<&[u8]> = input.split(|b| *b == 0).collect();
        if parts.len() != 3 {
            return Step::Failure(Failure::MalformedRequest, None);
        }
        let user = String::from_utf8_lossy(parts[1]).to_string();
        let pw = String::from_utf8_lossy(parts[2]).to_string();
        match lookup(&user) {
            Lookup::Found(c) if c.verify_password(&pw) => Step::Success {
                username: user,
                additional_data: vec![],
            },
            _ => Step::Failure(Failure::NotAuthorized, None),
        }
    }
}
