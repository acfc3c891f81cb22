//! XEP-0077: In-Band Registration — creating an account before authentication (when
//! `c2s.allow_registration` is on), and changing the password or removing the account
//! once logged in.

use crate::accounts::{self, AccountError};
use crate::module::{IqKind, IqTarget, Registry};
use crate::ns;
use crate::stanza::{error_reply, iq_result, StanzaError, StreamError};
use crate::xml::Element;
use crate::{Config, ServerState};

/// The fields a registration query may carry.
pub struct RegisterQuery {
    pub username: Option<String>,
    pub password: Option<String>,
    pub remove: bool,
}

impl TryFrom<&Element> for RegisterQuery {
    type Error = StanzaError;
    fn try_from(el: &Element) -> Result<Self, StanzaError> {
        Ok(RegisterQuery {
            username: el.child_text("username", ns::REGISTER),
            password: el.child_text("password", ns::REGISTER),
            remove: el.has_child("remove", ns::REGISTER),
        })
    }
}

fn form() -> Element {
    Element::new("query", ns::REGISTER)
        .with_child(
            Element::new("instructions", ns::REGISTER)
                .with_text("Choose a username and password for use with this service."),
        )
        .with_child(Element::new("username", ns::REGISTER))
        .with_child(Element::new("password", ns::REGISTER))
}

fn account_error(e: AccountError) -> StanzaError {
    match e {
        AccountError::Exists => StanzaError::conflict(),
        AccountError::BadJid(..) | AccountError::BadPassword => {
            StanzaError::not_acceptable().with_text(e.to_string())
        }
        AccountError::NoSuchAccount => StanzaError::item_not_found(),
        AccountError::Store(e) => {
            tracing::error!("registration store error: {e}");
            StanzaError::internal_server_error()
        }
    }
}

/// An IQ on a stream that has not authenticated, with registration enabled.
pub fn unauthenticated(server: &ServerState, iq: &Element) -> Result<Element, StreamError> {
    let Some(query) = iq.child("query", ns::REGISTER) else {
        return Err(StreamError::new("not-authorized").with_text("authenticate first"));
    };
    let reply = |r: Result<Option<Element>, StanzaError>| match r {
        Ok(payload) => iq_result(iq, payload),
        Err(e) => error_reply(iq, &e).unwrap_or_else(|| iq_result(iq, None)),
    };
    let q = match RegisterQuery::try_from(query) {
        Ok(q) => q,
        Err(e) => return Ok(reply(Err(e))),
    };
    Ok(match iq.attr("type") {
        Some("get") => reply(Ok(Some(form()))),
        Some("set") if q.remove => reply(Err(StanzaError::not_authorized())),
        Some("set") => {
            let (Some(user), Some(password)) = (q.username, q.password) else {
                return Ok(reply(Err(
                    StanzaError::not_acceptable().with_text("username and password are required")
                )));
            };
            let created = accounts::local_jid(&user, &server.config.domain)
                .and_then(|jid| accounts::create(&server.store, &jid, &password).map(|()| jid));
            match created {
                Ok(jid) => {
                    tracing::info!(account = %jid, "account registered in-band");
                    reply(Ok(None))
                }
                Err(e) => reply(Err(account_error(e))),
            }
        }
        _ => reply(Err(StanzaError::bad_request())),
    })
}

pub fn register(reg: &mut Registry, config: &Config) {
    reg.spec("0077", "2.4", "In-Band Registration");
    if config.c2s.allow_registration {
        reg.server_feature(ns::REGISTER);
    }
    for target in [IqTarget::Server, IqTarget::Account] {
        reg.iq(
            target,
            ns::REGISTER,
            "query",
            move |req, q: RegisterQuery| {
                if target == IqTarget::Account && !req.from_owner() {
                    return Err(StanzaError::forbidden());
                }
                let me = req.from_bare();
                match req.kind {
                    IqKind::Get => Ok(Some(
                        Element::new("query", ns::REGISTER)
                            .with_child(Element::new("registered", ns::REGISTER))
                            .with_child(
                                Element::new("username", ns::REGISTER)
                                    .with_text(me.node().map(|n| n.as_str()).unwrap_or("")),
                            ),
                    )),
                    IqKind::Set if q.remove => {
                        // The reply is queued before the close order reaches this session,
                        // and a closing session writes its queue first, so the client sees it.
                        req.server
                            .delete_account(&me, me.as_str())
                            .map_err(account_error)?;
                        Ok(None)
                    }
                    IqKind::Set => {
                        let (Some(user), Some(password)) = (q.username, q.password) else {
                            return Err(StanzaError::bad_request());
                        };
                        let named = accounts::local_jid(&user, &req.server.config.domain)
                            .map_err(account_error)?;
                        if named != me {
                            return Err(StanzaError::not_allowed()
                                .with_text("you can change only your own password"));
                        }
                        req.server
                            .change_password(&me, &password, Some(req.from), me.as_str())
                            .map_err(account_error)?;
                        Ok(None)
                    }
                }
            },
        );
    }
}
