//! XEP-0054: vcard-temp. Anyone may read a user's vCard (the server answers for the bare
//! JID); only the user may change it. The whole vCard is kept as sent, avatar (PHOTO,
//! XEP-0153) included, up to `im.max_vcard_bytes`; a bigger one gets not-acceptable.

use crate::module::{IqKind, IqTarget, Registry};
use crate::ns;
use crate::stanza::StanzaError;
use crate::xml::Element;

pub struct VCard(pub Element);

impl TryFrom<&Element> for VCard {
    type Error = StanzaError;
    fn try_from(el: &Element) -> Result<Self, StanzaError> {
        Ok(VCard(el.clone()))
    }
}

fn store_err(e: crate::store::StoreError) -> StanzaError {
    tracing::error!("vCard store error: {e}");
    StanzaError::internal_server_error()
}

pub fn register(reg: &mut Registry) {
    reg.spec("0054", "1.2", "vcard-temp");
    reg.server_feature(ns::VCARD);
    reg.account_feature(ns::VCARD);
    reg.iq(IqTarget::Account, ns::VCARD, "vCard", |req, VCard(card)| {
        let owner = req.to.to_bare();
        match req.kind {
            IqKind::Get => {
                let stored = req.server.store.vcard(owner.as_str()).map_err(store_err)?;
                match stored {
                    None => Ok(Some(Element::new("vCard", ns::VCARD))),
                    Some(xml) => match crate::xml::reader::parse_element(&xml) {
                        Ok(el) => Ok(Some(el)),
                        Err(e) => {
                            tracing::error!(user = %owner, "stored vCard unreadable: {e}");
                            Err(StanzaError::internal_server_error())
                        }
                    },
                }
            }
            IqKind::Set => {
                if !req.from_owner() {
                    return Err(StanzaError::forbidden());
                }
                let xml = card.to_bytes("");
                let max = req.server.config.im.max_vcard_bytes;
                if xml.len() > max {
                    tracing::info!(user = %owner, size = xml.len(), "oversized vCard refused");
                    return Err(StanzaError::not_acceptable()
                        .with_text(format!("a vCard may hold at most {max} bytes")));
                }
                req.server
                    .store
                    .set_vcard(owner.as_str(), &xml)
                    .map_err(store_err)?;
                Ok(None)
            }
        }
    });
}
