//! XEP-0049: Private XML Storage. One fragment per namespace and element name, readable
//! and writable by its owner only, within `im.max_private_bytes` per user.

use crate::module::{IqKind, IqTarget, Registry};
use crate::ns;
use crate::stanza::StanzaError;
use crate::xml::Element;

pub struct PrivateQuery {
    pub fragment: Element,
}

impl TryFrom<&Element> for PrivateQuery {
    type Error = StanzaError;
    fn try_from(el: &Element) -> Result<Self, StanzaError> {
        let mut children = el.children();
        let (Some(fragment), None) = (children.next(), children.next()) else {
            return Err(StanzaError::bad_request().with_text("exactly one child element"));
        };
        // §3: the reserved namespaces cannot be stored (they would shadow protocol).
        if matches!(fragment.ns(), ns::PRIVATE | ns::CLIENT | ns::SERVER) {
            return Err(StanzaError::not_acceptable());
        }
        Ok(PrivateQuery {
            fragment: fragment.clone(),
        })
    }
}

fn store_err(e: crate::store::StoreError) -> StanzaError {
    tracing::error!("private storage error: {e}");
    StanzaError::internal_server_error()
}

pub fn register(reg: &mut Registry) {
    reg.spec("0049", "1.2", "Private XML Storage");
    reg.server_feature(ns::PRIVATE);
    reg.iq(
        IqTarget::Account,
        ns::PRIVATE,
        "query",
        |req, q: PrivateQuery| {
            if !req.from_owner() {
                return Err(StanzaError::forbidden());
            }
            let user = req.from_bare();
            let store = &req.server.store;
            let (f_ns, f_name) = (q.fragment.ns().to_string(), q.fragment.name().to_string());
            match req.kind {
                IqKind::Get => {
                    let stored = store
                        .private(user.as_str(), &f_ns, &f_name)
                        .map_err(store_err)?;
                    let fragment = match stored {
                        None => Element::new(f_name, f_ns),
                        Some(xml) => crate::xml::reader::parse_element(&xml).map_err(|e| {
                            tracing::error!(%user, "stored private XML unreadable: {e}");
                            StanzaError::internal_server_error()
                        })?,
                    };
                    Ok(Some(
                        Element::new("query", ns::PRIVATE).with_child(fragment),
                    ))
                }
                IqKind::Set => {
                    let xml = q.fragment.to_bytes("");
                    let old = store
                        .private(user.as_str(), &f_ns, &f_name)
                        .map_err(store_err)?
                        .map_or(0, |v| v.len());
                    let total = store.private_bytes(user.as_str()).map_err(store_err)?;
                    let max = req.server.config.im.max_private_bytes;
                    if total - old.min(total) + xml.len() > max {
                        return Err(StanzaError::not_acceptable()
                            .with_text(format!("private storage is limited to {max} bytes")));
                    }
                    store
                        .set_private(user.as_str(), &f_ns, &f_name, &xml)
                        .map_err(store_err)?;
                    Ok(None)
                }
            }
        },
    );
}
