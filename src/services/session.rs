//! The RFC 3921 session-establishment request, which RFC 6121 dropped. Old clients still
//! send it when the feature is advertised (as `<optional/>`), so it is answered with an
//! empty result.

use crate::module::{Empty, IqKind, IqTarget, Registry};
use crate::ns;
use crate::stanza::StanzaError;

pub fn register(reg: &mut Registry) {
    for target in [IqTarget::Server, IqTarget::Account] {
        reg.iq(target, ns::SESSION, "session", |req, Empty| {
            match req.kind {
                IqKind::Set => Ok(None),
                IqKind::Get => Err(StanzaError::bad_request()),
            }
        });
    }
}
