//! XEP-0030: Service Discovery on the server (and, for the features the server offers on
//! a user's behalf, on each account's bare JID).

use crate::module::{IqKind, IqTarget, Registry};
use crate::ns;
use crate::services::adhoc;
use crate::stanza::StanzaError;
use crate::xml::Element;
use crate::{Config, ServerState};

/// A disco query: only the optional node matters.
pub struct DiscoQuery {
    pub node: Option<String>,
}

impl TryFrom<&Element> for DiscoQuery {
    type Error = StanzaError;
    fn try_from(el: &Element) -> Result<Self, StanzaError> {
        Ok(DiscoQuery {
            node: el.attr("node").map(str::to_string),
        })
    }
}

pub fn register(reg: &mut Registry, _config: &Config) {
    reg.spec("0030", "2.5rc3", "Service Discovery");
    reg.server_feature(ns::DISCO_INFO);
    reg.server_feature(ns::DISCO_ITEMS);
    reg.account_feature(ns::DISCO_INFO);
    reg.identity("server", "im", "Starling");

    reg.iq(
        IqTarget::Server,
        ns::DISCO_INFO,
        "query",
        |req, q: DiscoQuery| {
            if req.kind != IqKind::Get {
                return Err(StanzaError::bad_request());
            }
            if let Some(node) = &q.node {
                return adhoc::disco_info(req, node)
                    .unwrap_or_else(|| Err(StanzaError::item_not_found()))
                    .map(Some);
            }
            Ok(Some(server_info(req.server)))
        },
    );
    reg.iq(
        IqTarget::Server,
        ns::DISCO_ITEMS,
        "query",
        |req, q: DiscoQuery| {
            if req.kind != IqKind::Get {
                return Err(StanzaError::bad_request());
            }
            match q.node.as_deref() {
                None => {}
                Some(ns::COMMANDS) => return Ok(Some(adhoc::disco_items(req))),
                Some(_) => return Err(StanzaError::item_not_found()),
            }
            let mut query = Element::new("query", ns::DISCO_ITEMS);
            let mut domains: Vec<&str> = req.server.registry.service_domains().collect();
            domains.sort_unstable();
            for d in domains {
                query.push(Element::new("item", ns::DISCO_ITEMS).with_attr("jid", d));
            }
            Ok(Some(query))
        },
    );
    reg.iq(
        IqTarget::Account,
        ns::DISCO_INFO,
        "query",
        |req, q: DiscoQuery| {
            if req.kind != IqKind::Get {
                return Err(StanzaError::bad_request());
            }
            if q.node.is_some() {
                return Err(StanzaError::item_not_found());
            }
            let mut query = Element::new("query", ns::DISCO_INFO).with_child(
                Element::new("identity", ns::DISCO_INFO)
                    .with_attr("category", "account")
                    .with_attr("type", "registered"),
            );
            for f in req.server.registry.account_features() {
                query.push(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
            }
            Ok(Some(query))
        },
    );
}

/// The server's disco#info: its identities and every feature a module declared.
pub fn server_info(server: &ServerState) -> Element {
    let mut query = Element::new("query", ns::DISCO_INFO);
    for id in server.registry.identities() {
        query.push(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", id.category)
                .with_attr("type", id.kind)
                .with_attr("name", id.name),
        );
    }
    for f in server.registry.server_features() {
        query.push(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
    }
    query
}
