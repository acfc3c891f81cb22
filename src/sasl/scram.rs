//! SCRAM (RFC 5802, RFC 7677) with channel binding (RFC 5929, RFC 9266), server side.

use base64::{engine::general_purpose::STANDARD as BASE64, Engine};
use subtle::ConstantTimeEq;

use super::{
    authzid_allowed, fake_keys, normalize_username, random_bytes, ChannelBindings, Failure,
    HashAlg, Lookup, ScramKeys, Step,
};

/// Random bytes in the server's part of the nonce (RFC 5802 asks for enough entropy; we use
/// 24, base64-encoded to 32 printable characters).
const SERVER_NONCE_BYTES: usize = 24;

/// The GS2 channel-binding flag.
#[derive(Debug, PartialEq, Eq)]
enum CbFlag<'a> {
    /// `n`: the client does not support channel binding.
    No,
    /// `y`: the client supports it but thinks the server does not.
    ClientOnly,
    /// `p=<name>`: the client requires binding of this type.
    Required(&'a str),
}

/// A parsed client-first-message.
#[derive(Debug)]
struct ClientFirst<'a> {
    flag: CbFlag<'a>,
    /// Decoded authzid; empty if absent.
    authzid: String,
    /// Decoded, not yet normalised, username.
    username: String,
    nonce: &'a str,
    /// The GS2 header exactly as sent, including its final comma.
    gs2_header: &'a str,
    /// client-first-message-bare exactly as sent.
    bare: &'a str,
}

/// A parsed client-final-message.
#[derive(Debug)]
struct ClientFinal<'a> {
    channel_binding: &'a str,
    nonce: &'a str,
    /// client-final-message-without-proof exactly as sent.
    without_proof: &'a str,
    proof: &'a str,
}

type ParseError = (Failure, &'static str);

const MALFORMED: Failure = Failure::MalformedRequest;

/// `saslname`: decodes `=2C` and `=3D`; refuses empty names, NUL, and any other `=`.
fn decode_saslname(s: &str) -> Result<String, ParseError> {
    if s.is_empty() {
        return Err((MALFORMED, "empty name"));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        match c {
            '=' => {
                if rest.starts_with("=2C") {
                    out.push(',');
                } else if rest.starts_with("=3D") {
                    out.push('=');
                } else {
                    return Err((MALFORMED, "bad escape in name"));
                }
                rest = &rest[3..];
            }
            '\0' | ',' => return Err((MALFORMED, "bad character in name")),
            _ => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    Ok(out)
}

/// `printable`: `%x21-2B / %x2D-7E`, at least one.
fn is_printable(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// `cb-name`: `1*(ALPHA / DIGIT / "." / "-")`.
fn is_cb_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// Checks trailing extension attributes (`ALPHA "=" 1*value-char`) and refuses the reserved
/// mandatory-extension attribute `m`. Unknown extensions are otherwise ignored (RFC 5802 §7).
fn check_extensions<'a>(attrs: impl Iterator<Item = &'a str>) -> Result<(), ParseError> {
    for attr in attrs {
        let bytes = attr.as_bytes();
        if bytes.len() < 3 || !bytes[0].is_ascii_alphabetic() || bytes[1] != b'=' {
            return Err((MALFORMED, "bad attribute"));
        }
        if bytes[0] == b'm' {
            return Err((MALFORMED, "mandatory extensions are not supported"));
        }
        if bytes.contains(&0) {
            return Err((MALFORMED, "NUL in attribute"));
        }
    }
    Ok(())
}

fn parse_client_first(s: &str) -> Result<ClientFirst<'_>, ParseError> {
    let (flag, rest) = s.split_once(',').ok_or((MALFORMED, "no GS2 header"))?;
    let (authz, bare) = rest.split_once(',').ok_or((MALFORMED, "no GS2 header"))?;
    let gs2_len = flag.len() + authz.len() + 2;
    let gs2_header = &s[..gs2_len];
    let flag = match flag {
        "n" => CbFlag::No,
        "y" => CbFlag::ClientOnly,
        _ => match flag.strip_prefix("p=") {
            Some(name) if is_cb_name(name) => CbFlag::Required(name),
            _ => return Err((MALFORMED, "bad channel binding flag")),
        },
    };
    let authzid = if authz.is_empty() {
        String::new()
    } else {
        let encoded = authz
            .strip_prefix("a=")
            .ok_or((MALFORMED, "bad authorization identity"))?;
        decode_saslname(encoded)?
    };

    let mut attrs = bare.split(',');
    let first = attrs.next().unwrap_or_default();
    if first.starts_with("m=") {
        return Err((MALFORMED, "mandatory extensions are not supported"));
    }
    let username = first
        .strip_prefix("n=")
        .ok_or((MALFORMED, "no username"))
        .and_then(decode_saslname)?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or((MALFORMED, "no nonce"))?;
    if !is_printable(nonce) {
        return Err((MALFORMED, "bad nonce"));
    }
    check_extensions(attrs)?;
    Ok(ClientFirst {
        flag,
        authzid,
        username,
        nonce,
        gs2_header,
        bare,
    })
}

fn parse_client_final(s: &str) -> Result<ClientFinal<'_>, ParseError> {
    let (without_proof, proof) = s.rsplit_once(',').ok_or((MALFORMED, "no proof"))?;
    let proof = proof.strip_prefix("p=").ok_or((MALFORMED, "no proof"))?;
    let mut attrs = without_proof.split(',');
    let channel_binding = attrs
        .next()
        .and_then(|a| a.strip_prefix("c="))
        .ok_or((MALFORMED, "no channel binding attribute"))?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or((MALFORMED, "no nonce"))?;
    check_extensions(attrs)?;
    Ok(ClientFinal {
        channel_binding,
        nonce,
        without_proof,
        proof,
    })
}

/// What is kept between the server-first and the client-final message.
struct Exchange {
    /// Normalised username.
    username: String,
    /// False for an unknown user: the exchange then always fails.
    known: bool,
    keys: ScramKeys,
    /// base64(gs2-header + channel-binding data): the only acceptable `c=` value.
    expected_cbind: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

enum State {
    Initial { empty_challenge_sent: bool },
    ServerFirstSent(Box<Exchange>),
    Done,
}

pub(crate) struct Scram {
    hash: HashAlg,
    /// The client chose a -PLUS mechanism.
    plus: bool,
    /// A -PLUS mechanism was offered on this connection.
    plus_offered: bool,
    bindings: ChannelBindings,
    /// Fixed nonce suffix, for the RFC test vectors only.
    nonce_suffix: Option<String>,
    state: State,
}

impl Scram {
    pub(crate) fn new(
        hash: HashAlg,
        plus: bool,
        plus_offered: bool,
        bindings: ChannelBindings,
        nonce_suffix: Option<String>,
    ) -> Self {
        Scram {
            hash,
            plus,
            plus_offered,
            bindings,
            nonce_suffix,
            state: State::Initial {
                empty_challenge_sent: false,
            },
        }
    }

    pub(crate) fn step(
        &mut self,
        input: &[u8],
        domain: &str,
        lookup: &mut dyn FnMut(&str) -> Lookup,
    ) -> Step {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Initial {
                empty_challenge_sent,
            } => {
                if input.is_empty() && !empty_challenge_sent {
                    // No initial response: ask for the client-first message.
                    self.state = State::Initial {
                        empty_challenge_sent: true,
                    };
                    return Step::Challenge(Vec::new());
                }
                match self.client_first(input, domain, lookup) {
                    Ok(exchange) => {
                        let challenge = exchange.server_first.clone().into_bytes();
                        self.state = State::ServerFirstSent(Box::new(exchange));
                        Step::Challenge(challenge)
                    }
                    Err(step) => step,
                }
            }
            State::ServerFirstSent(exchange) => self.client_final(input, &exchange),
            State::Done => Step::fail(
                Failure::MalformedRequest,
                "the authentication exchange has already finished",
            ),
        }
    }

    fn client_first(
        &self,
        input: &[u8],
        domain: &str,
        lookup: &mut dyn FnMut(&str) -> Lookup,
    ) -> Result<Exchange, Step> {
        let text = std::str::from_utf8(input)
            .map_err(|_| Step::fail(Failure::MalformedRequest, "not UTF-8"))?;
        let first = parse_client_first(text).map_err(|(f, why)| Step::fail(f, why))?;

        let cb_data: &[u8] = match (self.plus, &first.flag) {
            (true, CbFlag::Required(name)) => self.bindings.data_for(name).ok_or_else(|| {
                Step::fail(
                    Failure::NotAuthorized,
                    "that channel binding type is not available",
                )
            })?,
            (true, _) => {
                return Err(Step::fail(
                    Failure::MalformedRequest,
                    "a -PLUS mechanism requires the p= channel binding flag",
                ))
            }
            (false, CbFlag::Required(_)) => {
                return Err(Step::fail(
                    Failure::NotAuthorized,
                    "channel binding requested with a mechanism without it",
                ))
            }
            (false, CbFlag::ClientOnly) if self.plus_offered => {
                return Err(Step::fail(
                    Failure::NotAuthorized,
                    "channel binding was offered; possible downgrade",
                ))
            }
            (false, _) => &[],
        };

        let username = normalize_username(&first.username).ok_or_else(|| {
            Step::fail(
                Failure::NotAuthorized,
                "the username is not a valid localpart",
            )
        })?;
        if !authzid_allowed(&first.authzid, &username, domain) {
            return Err(Step::fail(
                Failure::InvalidAuthzid,
                "the authorization identity must be empty or the user's own bare JID",
            ));
        }

        let (keys, known) = match lookup(&username) {
            Lookup::Found(credentials) => {
                let keys = match self.hash {
                    HashAlg::Sha1 => credentials.sha1,
                    HashAlg::Sha256 => credentials.sha256,
                };
                if keys.iterations == 0 {
                    return Err(Step::fail(
                        Failure::TemporaryAuthFailure,
                        "stored credentials are unusable",
                    ));
                }
                (keys, true)
            }
            Lookup::NoSuchUser => (fake_keys(self.hash, &username), false),
            Lookup::Disabled => return Err(Step::Failure(Failure::AccountDisabled, None)),
            Lookup::TemporaryFailure => {
                return Err(Step::Failure(Failure::TemporaryAuthFailure, None))
            }
        };

        let suffix = match &self.nonce_suffix {
            Some(suffix) => suffix.clone(),
            None => BASE64.encode(random_bytes(SERVER_NONCE_BYTES)),
        };
        let nonce = format!("{}{}", first.nonce, suffix);
        let server_first = format!(
            "r={},s={},i={}",
            nonce,
            BASE64.encode(&keys.salt),
            keys.iterations
        );
        let mut cbind_input = first.gs2_header.as_bytes().to_vec();
        cbind_input.extend_from_slice(cb_data);
        Ok(Exchange {
            username,
            known,
            keys,
            expected_cbind: BASE64.encode(cbind_input),
            client_first_bare: first.bare.to_owned(),
            server_first,
            nonce,
        })
    }

    fn client_final(&self, input: &[u8], exchange: &Exchange) -> Step {
        let Ok(text) = std::str::from_utf8(input) else {
            return Step::fail(Failure::MalformedRequest, "not UTF-8");
        };
        let last = match parse_client_final(text) {
            Ok(last) => last,
            Err((failure, why)) => return Step::fail(failure, why),
        };
        let Ok(proof) = BASE64.decode(last.proof) else {
            return Step::fail(Failure::MalformedRequest, "the proof is not base64");
        };
        if last.channel_binding != exchange.expected_cbind {
            return Step::fail(Failure::NotAuthorized, "channel binding mismatch");
        }
        if last.nonce != exchange.nonce {
            return Step::fail(Failure::NotAuthorized, "nonce mismatch");
        }
        if proof.len() != self.hash.output_len() {
            return Step::fail(Failure::NotAuthorized, "the proof has the wrong length");
        }

        let auth_message = format!(
            "{},{},{}",
            exchange.client_first_bare, exchange.server_first, last.without_proof
        );
        let hash = self.hash;
        let client_signature = hash.hmac(&exchange.keys.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature.iter())
            .map(|(p, s)| p ^ s)
            .collect();
        let proof_ok = hash.digest(&client_key).ct_eq(&exchange.keys.stored_key);
        if !(bool::from(proof_ok) && exchange.known) {
            return Step::Failure(Failure::NotAuthorized, None);
        }
        let server_signature = hash.hmac(&exchange.keys.server_key, auth_message.as_bytes());
        Step::Success {
            username: exchange.username.clone(),
            additional_data: format!("v={}", BASE64.encode(server_signature)).into_bytes(),
        }
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn saslname_escapes() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert!(decode_saslname("a=2").is_err());
        assert!(decode_saslname("a=41").is_err());
        assert!(decode_saslname("").is_err());
        assert!(decode_saslname("a\0b").is_err());
    }

    #[test]
    fn client_first_parts() {
        let first = parse_client_first("p=tls-exporter,a=al=2Cice@x,n=bob,r=abc,x=1").unwrap();
        assert_eq!(first.flag, CbFlag::Required("tls-exporter"));
        assert_eq!(first.authzid, "al,ice@x");
        assert_eq!(first.username, "bob");
        assert_eq!(first.nonce, "abc");
        assert_eq!(first.gs2_header, "p=tls-exporter,a=al=2Cice@x,");
        assert_eq!(first.bare, "n=bob,r=abc,x=1");
        for bad in [
            "",
            "n",
            "n,",
            "x,,n=a,r=b",
            "p=,,n=a,r=b",
            "p=tls_unique,,n=a,r=b",
            "n,b=x,n=a,r=b",
            "n,a=,n=a,r=b",
            "n,,m=ext,n=a,r=b",
            "n,,n=a,r=b,m=x",
            "n,,n=a",
            "n,,n=,r=b",
            "n,,r=b,n=a",
            "n,,n=a,r=",
            "n,,n=a,r=b c",
            "n,,n=a,r=b,",
            "n,,n=a,r=b,1=x",
            "n,,n=a=,r=b",
        ] {
            assert!(parse_client_first(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn client_final_parts() {
        let last = parse_client_final("c=biws,r=abc,x=y,p=cHJvb2Y=").unwrap();
        assert_eq!(last.channel_binding, "biws");
        assert_eq!(last.nonce, "abc");
        assert_eq!(last.without_proof, "c=biws,r=abc,x=y");
        assert_eq!(last.proof, "cHJvb2Y=");
        for bad in [
            "",
            "p=abc",
            "c=biws,p=abc",
            "r=abc,c=biws,p=x",
            "c=biws,r=abc",
            "c=biws,r=abc,p=x,q=y",
            "c=biws,r=abc,m=x,p=y",
        ] {
            assert!(parse_client_final(bad).is_err(), "{bad:?} accepted");
        }
    }
}
