//! Offline messages (XEP-0160): a chat or normal message for an account with no
//! available resource (of non-negative priority) is stored durably, stamped with a
//! XEP-0203 `<delay/>`, and delivered in order when the user next sends initial presence
//! with non-negative priority.
//!
//! Quota: past `im.offline_quota` stored messages the sender gets `service-unavailable`
//! (XEP-0160 §3 names it for a server that will not store), never a silent drop.

use crate::module::Registry;
use crate::ns;
use crate::sessions::SessionHandle;
use crate::stanza::StanzaError;
use crate::xml::Element;
use crate::ServerState;
use jid::Jid;

pub fn register(reg: &mut Registry) {
    reg.spec(
        "0160",
        "1.0.1",
        "Best Practices for Handling Offline Messages",
    );
    reg.spec("0203", "2.0", "Delayed Delivery");
    reg.server_feature(ns::OFFLINE);
    reg.set_offline(store);
    reg.on_available(deliver);
}

static DELIVERY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn store(server: &ServerState, msg: &Element) -> Result<(), StanzaError> {
    let Some(user) = msg
        .attr("to")
        .and_then(|t| Jid::new(t).ok())
        .map(|j| j.to_bare())
    else {
        return Err(StanzaError::service_unavailable());
    };
    match msg.attr("type").unwrap_or("normal") {
        "normal" | "chat" => {}
        // The router never stores other types; refuse rather than guess.
        _ => return Err(StanzaError::service_unavailable()),
    }
    let mut msg = msg.clone();
    if !msg
        .children()
        .any(|c| c.is("delay", ns::DELAY) && c.attr("from") == Some(&server.config.domain))
    {
        msg.push(
            Element::new("delay", ns::DELAY)
                .with_attr("from", server.config.domain.as_str())
                .with_attr("stamp", crate::datetime::format(crate::store::now_secs()))
                .with_text("Offline Storage"),
        );
    }
    let quota = server.config.im.offline_quota;
    match server
        .store
        .offline_push(user.as_str(), &msg.to_bytes(""), quota)
    {
        Ok(true) => {
            tracing::debug!(%user, "message stored offline");
            Ok(())
        }
        Ok(false) => {
            tracing::info!(%user, quota, "offline storage full; message refused");
            Err(StanzaError::service_unavailable()
                .with_text("the recipient is offline and their message store is full"))
        }
        Err(e) => {
            tracing::error!(%user, "storing an offline message failed: {e}");
            Err(StanzaError::internal_server_error())
        }
    }
}

/// Hands the stored messages to a resource that just became available.
fn deliver(server: &ServerState, handle: &SessionHandle, _presence: &Element) {
    let priority = server
        .sessions
        .get(&handle.jid)
        .map(|r| r.priority)
        .unwrap_or(-1);
    if priority < 0 {
        return;
    }
    let user = handle.jid.to_bare();
    // Two resources coming online together must not both get the same messages; the
    // work below is quick and never waits on I/O other than sled, so one lock is enough.
    let _one_at_a_time = DELIVERY.lock().unwrap_or_else(|p| p.into_inner());
    let messages = match server.store.offline_messages(user.as_str()) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(%user, "reading offline messages failed: {e}");
            return;
        }
    };
    let mut delivered = Vec::new();
    for m in messages {
        let el = match crate::xml::reader::parse_element(&m.xml) {
            Ok(el) => el,
            Err(e) => {
                // Kept in the store: a later version may read it.
                tracing::error!(%user, id = m.id, "stored offline message unreadable: {e}");
                continue;
            }
        };
        // Once handed to the session, a message that cannot be written goes back
        // through the router (and so back to offline storage), so it is never lost.
        if handle.send(el).is_err() {
            break;
        }
        delivered.push(m.id);
    }
    if delivered.is_empty() {
        return;
    }
    tracing::debug!(%user, count = delivered.len(), "offline messages delivered");
    if let Err(e) = server.store.offline_remove(user.as_str(), &delivered) {
        tracing::error!(%user, "removing delivered offline messages failed: {e}");
    }
}
