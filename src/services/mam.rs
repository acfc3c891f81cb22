//! XEP-0313 message archive management, with XEP-0059 paging and XEP-0359 stanza ids.
//!
//! What is archived: chat messages, and normal messages with a body, for both the
//! sending and the receiving local account (each in their own archive), unless a
//! XEP-0334 hint says not to store, or the owner's preferences say never. Groupchat goes
//! to the room's archive instead (see `room_archive`). Archiving happens in the router's
//! path before delivery or offline storage, so the archive id can be stamped onto the
//! delivered copy as `<stanza-id/>`, and so the message is in the store before stream
//! management acknowledges it (the store is flushed before every `<a/>`).
//!
//! A `<stanza-id/>` that claims to come from the archive's owner but was not added by
//! us is removed: clients trust it for deduplication, so nobody else may forge it.

use crate::datetime::{format as format_datetime, parse as parse_datetime};
use crate::module::{IqKind, IqRequest, IqTarget, Registry};
use crate::ns;
use crate::sessions::SessionHandle;
use crate::stanza::StanzaError;
use crate::store::{id_from_str, id_to_string, micros_of, ArchivePrefs, ArchiveQuery};
use crate::xml::Element;
use crate::{Config, ServerState};
use jid::{BareJid, FullJid, Jid};
use std::sync::Arc;

pub const EXTENDED: &str = "urn:xmpp:mam:2#extended";

pub fn register(reg: &mut Registry, config: &Config) {
    reg.spec("0313", "1.1.3", "Message Archive Management");
    reg.spec("0059", "1.0.0", "Result Set Management");
    reg.spec("0359", "0.7.0", "Unique and Stable Stanza IDs");
    if !config.mam.enabled {
        return;
    }
    reg.account_feature(ns::MAM);
    reg.account_feature(EXTENDED);
    reg.account_feature(ns::SID);
    reg.on_message_sent(outgoing);
    reg.on_message_inbound(incoming);
    reg.iq(IqTarget::Account, ns::MAM, "query", |req, q: Query| {
        let owner = owner(req)?;
        match req.kind {
            IqKind::Get => Ok(Some(form())),
            IqKind::Set => {
                let to = req
                    .from
                    .clone()
                    .try_into_full()
                    .map_err(|_| StanzaError::bad_request())?;
                run_query(req.server, owner.as_str(), owner.as_str(), &to, &q)
            }
        }
    });
    reg.iq(
        IqTarget::Account,
        ns::MAM,
        "metadata",
        |req, _: crate::module::Empty| {
            let owner = owner(req)?;
            metadata(req.server, owner.as_str())
        },
    );
    reg.iq(
        IqTarget::Account,
        ns::MAM,
        "prefs",
        |req, p: PrefsPayload| {
            let owner = owner(req)?;
            let store = &req.server.store;
            if req.kind == IqKind::Set {
                let prefs = p.0.ok_or_else(StanzaError::bad_request)?;
                store
                    .set_archive_prefs(owner.as_str(), &prefs)
                    .map_err(|_| StanzaError::internal_server_error())?;
            }
            let prefs = prefs_of(req.server, owner.as_str());
            Ok(Some(prefs_element(&prefs)))
        },
    );
    reg.on_account_removed(|store, bare| {
        if let Err(e) = store.remove_archive(bare.as_str()) {
            tracing::error!(account = %bare, "removing the archive failed: {e}");
        }
    });
    if config.mam.retention_days > 0 {
        reg.on_start(start_expiry);
    }
}

fn owner(req: &IqRequest<'_>) -> Result<BareJid, StanzaError> {
    if !req.from_owner() {
        return Err(StanzaError::forbidden().with_text("only the owner may read this archive"));
    }
    Ok(req.from_bare())
}

/// Removes archived messages past the retention period, now and then hourly.
fn start_expiry(server: &Arc<ServerState>) {
    let weak = Arc::downgrade(server);
    tokio::spawn(async move {
        loop {
            let Some(server) = weak.upgrade() else { return };
            let keep = server
                .config
                .mam
                .retention_days
                .saturating_mul(86_400_000_000);
            let cutoff = now_micros().saturating_sub(keep);
            let store = server.store.clone();
            drop(server);
            match tokio::task::spawn_blocking(move || store.archive_expire(cutoff)).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(removed = n, "archive retention applied"),
                Ok(Err(e)) => tracing::error!("archive retention failed: {e}"),
                _ => {}
            }
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    });
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Chat, and normal with a body; nothing that asks not to be stored, no carbon copies,
/// no archive results being forwarded around.
pub fn archivable(msg: &Element) -> bool {
    let ty = msg.attr("type").unwrap_or("normal");
    let has_body = msg.has_child("body", ns::CLIENT);
    (ty == "chat" || ty == "normal")
        && has_body
        && !msg.has_child("no-store", ns::HINTS)
        && !msg.has_child("no-permanent-store", ns::HINTS)
        && !msg.has_child("sent", ns::CARBONS)
        && !msg.has_child("received", ns::CARBONS)
        && !msg.has_child("result", ns::MAM)
}

fn prefs_of(server: &ServerState, owner: &str) -> ArchivePrefs {
    server
        .store
        .archive_prefs(owner)
        .ok()
        .flatten()
        .unwrap_or_else(|| ArchivePrefs {
            default: server.config.mam.default_mode.clone(),
            always: Vec::new(),
            never: Vec::new(),
        })
}

/// Does `owner` want messages exchanged with `with` (a bare JID) archived?
fn wants(server: &ServerState, owner: &str, with: &str) -> bool {
    let prefs = prefs_of(server, owner);
    if prefs.never.iter().any(|j| j == with) {
        return false;
    }
    if prefs.always.iter().any(|j| j == with) {
        return true;
    }
    match prefs.default.as_str() {
        "always" => true,
        "roster" => matches!(server.store.roster_item(owner, with), Ok(Some(_))),
        _ => false,
    }
}

fn strip_forged_ids(msg: &mut Element, by: &str) {
    msg.remove_children(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(by));
}

fn bare_of(attr: Option<&str>) -> Option<String> {
    attr.and_then(|a| Jid::new(a).ok())
        .map(|j| j.to_bare().as_str().to_string())
}

/// A message about to reach a local account: archive it and stamp the archive id.
fn incoming(server: &ServerState, to: &BareJid, msg: &mut Element) {
    strip_forged_ids(msg, to.as_str());
    if !archivable(msg) {
        return;
    }
    let Some(with) = bare_of(msg.attr("from")) else {
        return;
    };
    // No archive for an address nobody holds (the router bounces the message).
    let exists =
        server.sessions.is_online(to) || matches!(server.store.account(to.as_str()), Ok(Some(_)));
    if !exists || !wants(server, to.as_str(), &with) {
        return;
    }
    let xml = String::from_utf8_lossy(&msg.to_bytes("")).into_owned();
    match server.store.archive_append(to.as_str(), &with, &xml) {
        Ok(id) => msg.push(
            Element::new("stanza-id", ns::SID)
                .with_attr("by", to.as_str())
                .with_attr("id", id_to_string(id)),
        ),
        Err(e) => tracing::error!(user = %to, "archiving a message failed: {e}"),
    }
}

/// A message a local user sent: archived in the sender's own archive.
fn outgoing(server: &ServerState, handle: &SessionHandle, msg: &Element) {
    if !archivable(msg) {
        return;
    }
    let owner = handle.jid.to_bare();
    let Some(with) = bare_of(msg.attr("to")) else {
        return;
    };
    // A note to oneself is archived once, on arrival.
    if with == owner.as_str() || !wants(server, owner.as_str(), &with) {
        return;
    }
    let mut copy = msg.clone();
    strip_forged_ids(&mut copy, owner.as_str());
    let xml = String::from_utf8_lossy(&copy.to_bytes("")).into_owned();
    if let Err(e) = server.store.archive_append(owner.as_str(), &with, &xml) {
        tracing::error!(user = %owner, "archiving a sent message failed: {e}");
    }
}

/// A groupchat message the room is about to broadcast: archived under the room's JID
/// (with the occupant's nick-JID as the other party) and stamped with its id. The room
/// has already removed every `<stanza-id/>` the occupant wrote, so the only one left is
/// the id stamped here.
pub fn room_archive(server: &ServerState, room: &BareJid, msg: &mut Element) {
    if !server.config.mam.enabled || !msg.has_child("body", ns::CLIENT) {
        return;
    }
    if msg.has_child("no-store", ns::HINTS) || msg.has_child("no-permanent-store", ns::HINTS) {
        return;
    }
    let with = msg.attr("from").unwrap_or(room.as_str()).to_string();
    let xml = String::from_utf8_lossy(&msg.to_bytes("")).into_owned();
    match server.store.archive_append(room.as_str(), &with, &xml) {
        Ok(id) => msg.push(
            Element::new("stanza-id", ns::SID)
                .with_attr("by", room.as_str())
                .with_attr("id", id_to_string(id)),
        ),
        Err(e) => tracing::error!(%room, "archiving a room message failed: {e}"),
    }
}

/// A parsed `<query xmlns='urn:xmpp:mam:2'/>`.
#[derive(Debug, Default)]
pub struct Query {
    queryid: Option<String>,
    with: Option<String>,
    start: Option<u64>,
    end: Option<u64>,
    after_id: Option<String>,
    before_id: Option<String>,
    ids: Option<Vec<String>>,
    max: Option<usize>,
    rsm_after: Option<String>,
    /// `Some("")` is `<before/>`: the last page.
    rsm_before: Option<String>,
    index: Option<usize>,
    /// `<flip-page/>`: the page's results in reverse order.
    flip: bool,
}

/// XEP-0082 date-time to microseconds.
fn parse_micros(s: &str) -> Option<u64> {
    let secs = parse_datetime(s)?;
    let time = s.split_once('T')?.1;
    let frac = match time.split_once('.') {
        Some((_, f)) => {
            let digits: String = f
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .take(6)
                .collect();
            format!("{digits:0<6}").parse::<u64>().ok()?
        }
        None => 0,
    };
    secs.checked_mul(1_000_000)?.checked_add(frac)
}

impl TryFrom<&Element> for Query {
    type Error = StanzaError;
    fn try_from(el: &Element) -> Result<Query, StanzaError> {
        let bad = |t: &str| StanzaError::bad_request().with_text(t.to_string());
        let mut q = Query {
            queryid: el.attr("queryid").map(str::to_string),
            flip: el.has_child("flip-page", ns::MAM),
            ..Query::default()
        };
        if let Some(x) = el.child("x", ns::DATA_FORMS) {
            for f in x.children().filter(|c| c.name() == "field") {
                let values: Vec<String> = f
                    .children()
                    .filter(|v| v.name() == "value")
                    .map(|v| v.text().trim().to_string())
                    .collect();
                let first = values.first().cloned().filter(|v| !v.is_empty());
                match f.attr("var").unwrap_or("") {
                    "FORM_TYPE" => {
                        if first.as_deref().is_some_and(|v| v != ns::MAM) {
                            return Err(bad("unknown FORM_TYPE"));
                        }
                    }
                    "with" => {
                        let j = first.ok_or_else(|| bad("empty with"))?;
                        let j = Jid::new(&j).map_err(|_| bad("with is not a JID"))?;
                        q.with = Some(j.as_str().to_string());
                    }
                    "start" => {
                        let v = first.ok_or_else(|| bad("empty start"))?;
                        q.start = Some(parse_micros(&v).ok_or_else(|| bad("bad start"))?);
                    }
                    "end" => {
                        let v = first.ok_or_else(|| bad("empty end"))?;
                        q.end = Some(parse_micros(&v).ok_or_else(|| bad("bad end"))?);
                    }
                    "after-id" => q.after_id = first,
                    "before-id" => q.before_id = first,
                    // Normally one field with several values; a repeated field adds.
                    "ids" => q
                        .ids
                        .get_or_insert_with(Vec::new)
                        .extend(values.into_iter().filter(|v| !v.is_empty())),
                    other => {
                        return Err(StanzaError::feature_not_implemented()
                            .with_text(format!("no filter {other:?}")))
                    }
                }
            }
        }
        if let Some(set) = el.child("set", ns::RSM) {
            if let Some(m) = set.child_text("max", ns::RSM) {
                q.max = Some(m.trim().parse().map_err(|_| bad("bad max"))?);
            }
            q.rsm_after = set
                .child_text("after", ns::RSM)
                .map(|s| s.trim().to_string());
            q.rsm_before = set
                .child("before", ns::RSM)
                .map(|b| b.text().trim().to_string());
            if let Some(i) = set.child_text("index", ns::RSM) {
                q.index = Some(i.trim().parse().map_err(|_| bad("bad index"))?);
            }
        }
        Ok(q)
    }
}

pub fn form() -> Element {
    let field = |var: &str, ty: &str| {
        Element::new("field", ns::DATA_FORMS)
            .with_attr("var", var)
            .with_attr("type", ty)
    };
    let x = Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "form")
        .with_child(
            field("FORM_TYPE", "hidden")
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(ns::MAM)),
        )
        .with_child(field("with", "jid-single"))
        .with_child(field("start", "text-single"))
        .with_child(field("end", "text-single"))
        .with_child(field("before-id", "text-single"))
        .with_child(field("after-id", "text-single"))
        .with_child(field("ids", "text-multi"));
    Element::new("query", ns::MAM).with_child(x)
}

fn metadata(server: &ServerState, owner: &str) -> crate::module::IqResult {
    let ask = |from_end: bool| {
        server.store.archive_query(
            owner,
            &ArchiveQuery {
                max: 1,
                from_end,
                ..ArchiveQuery::default()
            },
        )
    };
    let mut md = Element::new("metadata", ns::MAM);
    for (name, from_end) in [("start", false), ("end", true)] {
        let page = ask(from_end).map_err(|_| StanzaError::internal_server_error())?;
        if let Some((id, _)) = page.items.first() {
            md.push(
                Element::new(name, ns::MAM)
                    .with_attr("id", id_to_string(*id))
                    .with_attr("timestamp", format_datetime(micros_of(*id) / 1_000_000)),
            );
        }
    }
    Ok(Some(md))
}

/// The most archive entries one query walks to count its full result set (XEP-0059
/// `<count/>` and the `index` of `<first/>`). A larger set gets neither, as XEP-0059
/// allows when counting would be expensive: a client paging through a huge archive would
/// otherwise make the server walk all of it for every page.
const COUNT_LIMIT: usize = 10_000;

/// Runs a query over `archive` for `requester`: sends the results as messages from
/// `from`, returns the `<fin/>` for the IQ result.
pub fn run_query(
    server: &ServerState,
    archive: &str,
    from: &str,
    requester: &FullJid,
    q: &Query,
) -> crate::module::IqResult {
    let parse_id = |s: &str| id_from_str(s).ok_or_else(StanzaError::item_not_found);
    let known = |id: u64| match server.store.archive_get(archive, id) {
        Ok(Some(_)) => Ok(id),
        Ok(None) => Err(StanzaError::item_not_found()),
        Err(_) => Err(StanzaError::internal_server_error()),
    };
    let cfg = &server.config.mam;
    let mut aq = ArchiveQuery {
        with: q.with.clone(),
        start: q.start,
        end: q.end,
        max: q.max.unwrap_or(cfg.default_page).min(cfg.max_page),
        index: q.index.unwrap_or(0),
        ..ArchiveQuery::default()
    };
    if let Some(a) = &q.after_id {
        aq.after_id = Some(known(parse_id(a)?)?);
    }
    if let Some(b) = &q.before_id {
        aq.before_id = Some(known(parse_id(b)?)?);
    }
    if let Some(ids) = &q.ids {
        aq.ids = Some(ids.iter().map(|i| parse_id(i)).collect::<Result<_, _>>()?);
    }
    // The full result set is what the form's filters select; XEP-0059 pages through it.
    let full = aq.clone();
    if let Some(a) = q.rsm_after.as_deref().filter(|a| !a.is_empty()) {
        let id = known(parse_id(a)?)?;
        aq.after_id = Some(aq.after_id.map_or(id, |x| x.max(id)));
    }
    if let Some(b) = &q.rsm_before {
        aq.from_end = true;
        if !b.is_empty() {
            let id = known(parse_id(b)?)?;
            aq.before_id = Some(aq.before_id.map_or(id, |x| x.min(id)));
        }
    }
    let mut page = server.store.archive_query(archive, &aq).map_err(|e| {
        tracing::error!(%archive, "archive query failed: {e}");
        StanzaError::internal_server_error()
    })?;
    // RSM's first and last are the page's oldest and newest: `flip-page` changes only
    // the order the results are delivered in.
    let first = page.items.first().map(|(id, _)| *id);
    let last = page.items.last().map(|(id, _)| *id);
    // An id list is its own full result set, all of it on this page.
    let figures = if aq.ids.is_some() {
        Some((page.items.len(), 0))
    } else {
        server
            .store
            .archive_count(archive, &full, first, COUNT_LIMIT)
            .map_err(|e| {
                tracing::error!(%archive, "counting an archive query failed: {e}");
                StanzaError::internal_server_error()
            })?
    };
    if q.flip {
        page.items.reverse();
    }
    let session = server.sessions.get(requester);
    for (id, rec) in &page.items {
        let original = match crate::xml::reader::parse_element(rec.xml.as_bytes()) {
            Ok(el) => el,
            Err(e) => {
                tracing::error!(%archive, id, "archived message unreadable: {e}");
                continue;
            }
        };
        let mut result = Element::new("result", ns::MAM).with_attr("id", id_to_string(*id));
        if let Some(qid) = &q.queryid {
            result.set_attr("queryid", qid.clone());
        }
        let stamp = micros_of(*id);
        result.push(
            Element::new("forwarded", ns::FORWARD)
                .with_child(
                    Element::new("delay", ns::DELAY)
                        .with_attr("stamp", format_datetime(stamp / 1_000_000)),
                )
                .with_child(original),
        );
        let msg = Element::new("message", ns::CLIENT)
            .with_attr("from", from)
            .with_attr("to", requester.as_str())
            .with_child(result);
        // Straight to the requesting session: a result is an answer, never something to
        // store offline if the session went away meanwhile.
        if let Some(r) = &session {
            let _ = r.handle.send(msg);
        }
    }
    let mut set = Element::new("set", ns::RSM);
    if let (Some(first), Some(last)) = (first, last) {
        let mut f = Element::new("first", ns::RSM).with_text(id_to_string(first));
        if let Some((_, index)) = figures {
            f.set_attr("index", index.to_string());
        }
        set.push(f);
        set.push(Element::new("last", ns::RSM).with_text(id_to_string(last)));
    }
    if let Some((count, _)) = figures {
        set.push(Element::new("count", ns::RSM).with_text(count.to_string()));
    }
    let mut fin = Element::new("fin", ns::MAM).with_child(set);
    if page.complete {
        fin.set_attr("complete", "true");
    }
    if let Some(qid) = &q.queryid {
        fin.set_attr("queryid", qid.clone());
    }
    Ok(Some(fin))
}

/// `<prefs/>`: `None` for a get (nothing to parse).
pub struct PrefsPayload(Option<ArchivePrefs>);

impl TryFrom<&Element> for PrefsPayload {
    type Error = StanzaError;
    fn try_from(el: &Element) -> Result<Self, StanzaError> {
        let Some(default) = el.attr("default") else {
            return Ok(PrefsPayload(None));
        };
        if !matches!(default, "always" | "never" | "roster") {
            return Err(StanzaError::bad_request().with_text("default is always, never or roster"));
        }
        let list = |name: &str| -> Result<Vec<String>, StanzaError> {
            let mut out = Vec::new();
            if let Some(l) = el.child(name, ns::MAM) {
                for j in l.children().filter(|c| c.name() == "jid") {
                    let jid =
                        Jid::new(j.text().trim()).map_err(|_| StanzaError::jid_malformed())?;
                    out.push(jid.to_bare().as_str().to_string());
                }
            }
            Ok(out)
        };
        Ok(PrefsPayload(Some(ArchivePrefs {
            default: default.to_string(),
            always: list("always")?,
            never: list("never")?,
        })))
    }
}

fn prefs_element(p: &ArchivePrefs) -> Element {
    let list = |name: &str, jids: &[String]| {
        let mut l = Element::new(name, ns::MAM);
        for j in jids {
            l.push(Element::new("jid", ns::MAM).with_text(j.clone()));
        }
        l
    };
    Element::new("prefs", ns::MAM)
        .with_attr("default", p.default.clone())
        .with_child(list("always", &p.always))
        .with_child(list("never", &p.never))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_timestamps() {
        assert_eq!(parse_micros("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(parse_micros("1970-01-01T00:00:01.5Z"), Some(1_500_000));
        assert_eq!(
            parse_micros("1970-01-01T00:00:01.123456789Z"),
            Some(1_123_456)
        );
        assert_eq!(parse_micros("nonsense"), None);
    }
}
