//! XEP-0092: Software Version of the server. The operating system is left out: it helps
//! attackers more than users.

use crate::module::{Empty, IqKind, IqTarget, Registry};
use crate::ns;
use crate::stanza::StanzaError;
use crate::xml::Element;

pub fn register(reg: &mut Registry) {
    reg.spec("0092", "1.1", "Software Version");
    reg.server_feature(ns::VERSION);
    reg.iq(IqTarget::Server, ns::VERSION, "query", |req, Empty| {
        if req.kind != IqKind::Get {
            return Err(StanzaError::bad_request());
        }
        Ok(Some(
            Element::new("query", ns::VERSION)
                .with_child(Element::new("name", ns::VERSION).with_text("Starling"))
                .with_child(
                    Element::new("version", ns::VERSION).with_text(env!("CARGO_PKG_VERSION")),
                ),
        ))
    });
}
