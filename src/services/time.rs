//! XEP-0202: Entity Time, for the server. The server keeps UTC, so the offset is zero.

use crate::module::{Empty, IqKind, IqTarget, Registry};
use crate::ns;
use crate::stanza::StanzaError;
use crate::xml::Element;

pub fn register(reg: &mut Registry) {
    reg.spec("0202", "2.0", "Entity Time");
    reg.server_feature(ns::TIME);
    reg.iq(IqTarget::Server, ns::TIME, "time", |req, Empty| {
        if req.kind != IqKind::Get {
            return Err(StanzaError::bad_request());
        }
        Ok(Some(
            Element::new("time", ns::TIME)
                .with_child(Element::new("tzo", ns::TIME).with_text("+00:00"))
                .with_child(
                    Element::new("utc", ns::TIME)
                        .with_text(crate::datetime::format(crate::store::now_secs())),
                ),
        ))
    });
}
