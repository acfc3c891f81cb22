//! XEP-0012: Last Activity. On the server: its uptime. On a user's bare JID, answered by
//! the server for the user's contacts (subscription from/both) and the user: 0 while a
//! resource is online, else the seconds since the last logout with the last status.

use crate::module::{Empty, IqKind, IqTarget, Registry};
use crate::ns;
use crate::stanza::StanzaError;
use crate::xml::Element;
use std::time::Instant;

pub fn register(reg: &mut Registry) {
    reg.spec("0012", "2.0", "Last Activity");
    reg.server_feature(ns::LAST);
    reg.account_feature(ns::LAST);
    let started = Instant::now();
    reg.iq(IqTarget::Server, ns::LAST, "query", move |req, Empty| {
        if req.kind != IqKind::Get {
            return Err(StanzaError::bad_request());
        }
        Ok(Some(Element::new("query", ns::LAST).with_attr(
            "seconds",
            started.elapsed().as_secs().to_string(),
        )))
    });
    reg.iq(IqTarget::Account, ns::LAST, "query", |req, Empty| {
        if req.kind != IqKind::Get {
            return Err(StanzaError::bad_request());
        }
        let user = req.to.to_bare();
        let server = req.server;
        let allowed = req.from_owner()
            || server
                .store
                .roster_item(user.as_str(), req.from_bare().as_str())
                .ok()
                .flatten()
                .is_some_and(|i| i.state.has_from());
        if !allowed {
            return Err(StanzaError::forbidden());
        }
        if server.sessions.resources(&user).iter().any(|r| r.available) {
            return Ok(Some(
                Element::new("query", ns::LAST).with_attr("seconds", "0"),
            ));
        }
        let now = crate::store::now_secs();
        let last = server.store.last_presence(user.as_str()).ok().flatten();
        let logout = server
            .store
            .activity(user.as_str())
            .ok()
            .and_then(|(_, logout)| logout);
        let Some(at) = last.as_ref().map(|l| l.at).or(logout) else {
            return Err(StanzaError::service_unavailable().with_text("never logged in"));
        };
        let mut q = Element::new("query", ns::LAST)
            .with_attr("seconds", now.saturating_sub(at).to_string());
        let status = last
            .and_then(|l| crate::xml::reader::parse_element(l.xml.as_bytes()).ok())
            .and_then(|p| p.child_text("status", ns::CLIENT));
        if let Some(s) = status {
            q.push_text(s);
        }
        Ok(Some(q))
    });
}
