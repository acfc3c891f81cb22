//! XEP-0199: XMPP Ping. The server answers pings to itself and, on a user's behalf, to
//! the user's bare JID.

use crate::module::{Empty, IqKind, IqTarget, Registry};
use crate::ns;
use crate::stanza::StanzaError;

pub fn register(reg: &mut Registry) {
    reg.spec("0199", "2.0.1", "XMPP Ping");
    reg.server_feature(ns::PING);
    for target in [IqTarget::Server, IqTarget::Account] {
        reg.iq(target, ns::PING, "ping", |req, Empty| match req.kind {
            IqKind::Get => Ok(None),
            IqKind::Set => Err(StanzaError::bad_request()),
        });
    }
}
