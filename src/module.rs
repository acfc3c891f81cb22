//! How features plug in. Each extension is a module that *declares* what it handles:
//! IQ payloads by (namespace, element) and target, disco features and identities, the
//! XEPs it implements, and hooks. The dispatcher owns the protocol plumbing: a payload
//! that does not parse becomes `bad-request`, a namespace nobody claims becomes
//! `service-unavailable`, and handlers just return their reply.

use crate::forms::Form;
use crate::services::adhoc::{CommandCtx, CommandStep};
use crate::sessions::SessionHandle;
use crate::stanza::StanzaError;
use crate::store::Store;
use crate::xml::Element;
use crate::ServerState;
use jid::{BareJid, Jid};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IqKind {
    Get,
    Set,
}

/// Who an IQ is addressed to, from the dispatcher's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IqTarget {
    /// The server itself (`to` is the domain).
    Server,
    /// An account's bare JID (or no `to` at all from a client: its own account); the
    /// server answers on the account's behalf.
    Account,
}

pub struct IqRequest<'a> {
    pub server: &'a ServerState,
    /// The sender, as stamped by the server.
    pub from: &'a Jid,
    /// The addressee (the domain or the account's bare JID).
    pub to: &'a Jid,
    pub kind: IqKind,
    /// The whole IQ, for the rare handler that needs more than the payload.
    pub iq: &'a Element,
}

impl IqRequest<'_> {
    /// The sender is the account addressed (a user talking to their own account).
    pub fn from_owner(&self) -> bool {
        self.from.to_bare().as_str() == self.to.to_bare().as_str()
    }

    pub fn from_bare(&self) -> BareJid {
        self.from.to_bare()
    }

    pub fn from_admin(&self) -> bool {
        let bare = self.from.to_bare();
        self.server
            .config
            .admins
            .iter()
            .any(|a| BareJid::new(a).is_ok_and(|a| a == bare))
    }
}

pub type IqResult = Result<Option<Element>, StanzaError>;

type IqFn = Box<dyn Fn(&IqRequest<'_>, &Element) -> IqResult + Send + Sync>;
type SessionHook = Box<dyn Fn(&ServerState, &Jid) + Send + Sync>;
type AccountHook = Box<dyn Fn(&Store, &BareJid) + Send + Sync>;
type DomainFn = Box<dyn Fn(&ServerState, Element) + Send + Sync>;
type StartHook = Box<dyn Fn(&Arc<ServerState>) + Send + Sync>;
/// Stores a message for an account with no available resource, or says why it cannot.
pub type OfflineFn = Box<dyn Fn(&ServerState, &Element) -> Result<(), StanzaError> + Send + Sync>;
/// Presence addressed to an account's bare JID (subscriptions, probes, directed presence).
pub type PresenceToAccountFn = Box<dyn Fn(&ServerState, &BareJid, Element) + Send + Sync>;
/// A session's broadcast presence, after the server recorded it.
pub type PresenceBroadcastFn = Box<dyn Fn(&ServerState, &PresenceEvent<'_>) + Send + Sync>;
/// Presence a session addressed to someone (directed presence, subscription stanzas):
/// returns what is to be routed, or `None` when the module consumed it.
pub type PresenceOutboundFn =
    Box<dyn Fn(&ServerState, &SessionHandle, Element) -> Option<Element> + Send + Sync>;
type AvailableHook = Box<dyn Fn(&ServerState, &SessionHandle, &Element) + Send + Sync>;
type FilterFn = Box<dyn Fn(&ServerState, &Filtered<'_>) -> Verdict + Send + Sync>;
type DeliveredHook = Box<dyn Fn(&ServerState, &BareJid, &Element, &[u64]) + Send + Sync>;
type SentHook = Box<dyn Fn(&ServerState, &SessionHandle, &Element) + Send + Sync>;
type InboundHook = Box<dyn Fn(&ServerState, &BareJid, &mut Element) + Send + Sync>;

/// A change of a session's broadcast presence.
pub struct PresenceEvent<'a> {
    pub handle: &'a SessionHandle,
    /// The presence as broadcast (`from` stamped; type unavailable when going away).
    pub presence: &'a Element,
    /// The resource was available before this presence.
    pub was_available: bool,
    /// Directed-presence recipients, handed over when the resource goes unavailable.
    pub directed: Vec<Jid>,
}

/// A stanza on its way through the router, for filters (blocking).
pub enum Filtered<'a> {
    /// Sent by one of a local user's sessions, to `to` (already parsed).
    Outbound {
        handle: &'a SessionHandle,
        to: &'a Jid,
        stanza: &'a Element,
    },
    /// About to be delivered to a local account (or stored for it).
    Inbound {
        from: &'a Jid,
        to: &'a BareJid,
        stanza: &'a Element,
    },
}

/// What a filter decides.
pub enum Verdict {
    Pass,
    /// Dropped on purpose (the spec says so: blocked presence, for instance).
    Drop,
    /// Refused: the sender gets this error (never for errors themselves).
    Bounce(StanzaError),
}

/// A XEP (or RFC) a module implements, for the catalogue in `xep/` and disco.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub number: &'static str,
    pub version: &'static str,
    pub name: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Identity {
    pub category: &'static str,
    pub kind: &'static str,
    pub name: &'static str,
}

#[derive(Default)]
pub struct Registry {
    /// target -> namespace -> element name -> handler. Nested so lookups borrow `&str`.
    iqs: HashMap<IqTarget, HashMap<&'static str, HashMap<&'static str, IqFn>>>,
    server_features: BTreeSet<&'static str>,
    account_features: BTreeSet<&'static str>,
    identities: BTreeSet<Identity>,
    specs: Vec<Spec>,
    session_end: Vec<SessionHook>,
    account_removed: Vec<AccountHook>,
    domains: HashMap<String, DomainFn>,
    start: Vec<StartHook>,
    offline: Option<OfflineFn>,
    presence_to_account: Option<PresenceToAccountFn>,
    presence_broadcast: Option<PresenceBroadcastFn>,
    presence_outbound: Option<PresenceOutboundFn>,
    available: Vec<AvailableHook>,
    filters: Vec<FilterFn>,
    delivered: Vec<DeliveredHook>,
    sent: Vec<SentHook>,
    inbound: Vec<InboundHook>,
    stream_features: Vec<Element>,
    /// XEP-0050 commands, in registration order (the order disco lists them).
    commands: Vec<CommandDef>,
    session_start: Vec<SessionStartHook>,
}

/// Runs one stage of an ad-hoc command: it gets every form submitted so far (none on
/// the first call) and returns the next form or the final result.
pub type CommandFn =
    Box<dyn Fn(&CommandCtx<'_>, &[Form]) -> Result<CommandStep, StanzaError> + Send + Sync>;
type SessionStartHook = Box<dyn Fn(&ServerState, &SessionHandle) + Send + Sync>;

/// An XEP-0050 command a module offers on the server's JID.
pub struct CommandDef {
    pub node: &'static str,
    pub name: &'static str,
    /// Only the JIDs in `admins` may see it in disco or run it.
    pub admin_only: bool,
    pub(crate) handler: CommandFn,
}

impl Registry {
    /// Registers an IQ handler for payload `<name xmlns=ns>` sent to `target`. The
    /// payload is parsed into `P` first; a parse failure is answered with the error the
    /// parser returns (normally `bad-request`).
    pub fn iq<P, F>(&mut self, target: IqTarget, ns: &'static str, name: &'static str, f: F)
    where
        P: for<'e> TryFrom<&'e Element, Error = StanzaError>,
        F: Fn(&IqRequest<'_>, P) -> IqResult + Send + Sync + 'static,
    {
        let previous = self
            .iqs
            .entry(target)
            .or_default()
            .entry(ns)
            .or_default()
            .insert(
                name,
                Box::new(move |req, payload| f(req, P::try_from(payload)?)),
            );
        debug_assert!(previous.is_none(), "two handlers for {ns} {name}");
    }

    /// A feature advertised in disco#info on the server.
    pub fn server_feature(&mut self, var: &'static str) {
        self.server_features.insert(var);
    }

    /// A feature advertised in disco#info on every account's bare JID.
    pub fn account_feature(&mut self, var: &'static str) {
        self.account_features.insert(var);
    }

    pub fn identity(&mut self, category: &'static str, kind: &'static str, name: &'static str) {
        self.identities.insert(Identity {
            category,
            kind,
            name,
        });
    }

    pub fn spec(&mut self, number: &'static str, version: &'static str, name: &'static str) {
        self.specs.push(Spec {
            number,
            version,
            name,
        });
    }

    /// Called after a session has ended (with the session's full JID).
    pub fn on_session_end(&mut self, f: impl Fn(&ServerState, &Jid) + Send + Sync + 'static) {
        self.session_end.push(Box::new(f));
    }

    /// Called after an account was deleted, so modules remove what they stored for it.
    /// It gets only the store: accounts are also deleted by the CLI with no server running.
    pub fn on_account_removed(&mut self, f: impl Fn(&Store, &BareJid) + Send + Sync + 'static) {
        self.account_removed.push(Box::new(f));
    }

    /// A local service (MUC, a component) takes every stanza addressed to `domain`.
    pub fn domain(
        &mut self,
        domain: impl Into<String>,
        f: impl Fn(&ServerState, Element) + Send + Sync + 'static,
    ) {
        self.domains.insert(domain.into(), Box::new(f));
    }

    /// Called once the server state exists, before any listener accepts: for modules
    /// that run tasks of their own (MUC rooms) and need a handle on the server.
    pub fn on_start(&mut self, f: impl Fn(&Arc<ServerState>) + Send + Sync + 'static) {
        self.start.push(Box::new(f));
    }

    pub(crate) fn run_start(&self, server: &Arc<ServerState>) {
        for hook in &self.start {
            hook(server);
        }
    }

    pub fn set_offline(
        &mut self,
        f: impl Fn(&ServerState, &Element) -> Result<(), StanzaError> + Send + Sync + 'static,
    ) {
        self.offline = Some(Box::new(f));
    }

    pub fn set_presence_to_account(
        &mut self,
        f: impl Fn(&ServerState, &BareJid, Element) + Send + Sync + 'static,
    ) {
        self.presence_to_account = Some(Box::new(f));
    }

    pub fn set_presence_broadcast(
        &mut self,
        f: impl Fn(&ServerState, &PresenceEvent<'_>) + Send + Sync + 'static,
    ) {
        self.presence_broadcast = Some(Box::new(f));
    }

    pub fn set_presence_outbound(
        &mut self,
        f: impl Fn(&ServerState, &SessionHandle, Element) -> Option<Element> + Send + Sync + 'static,
    ) {
        self.presence_outbound = Some(Box::new(f));
    }

    /// Called after a session's initial presence was broadcast (in registration order):
    /// pending subscription requests, offline messages.
    pub fn on_available(
        &mut self,
        f: impl Fn(&ServerState, &SessionHandle, &Element) + Send + Sync + 'static,
    ) {
        self.available.push(Box::new(f));
    }

    /// A filter every stanza from a session, and every stanza for a local account,
    /// passes through; the first verdict other than `Pass` wins.
    pub fn filter(
        &mut self,
        f: impl Fn(&ServerState, &Filtered<'_>) -> Verdict + Send + Sync + 'static,
    ) {
        self.filters.push(Box::new(f));
    }

    /// Called after a message was handed to some of an account's sessions (their ids).
    /// For a message to a full JID it runs only when another resource of the account
    /// has asked for carbon copies (the router skips copying the message otherwise):
    /// these hooks are for copies to the account's other resources.
    pub fn on_message_delivered(
        &mut self,
        f: impl Fn(&ServerState, &BareJid, &Element, &[u64]) + Send + Sync + 'static,
    ) {
        self.delivered.push(Box::new(f));
    }

    /// Called for every message a session sends, before it is routed.
    pub fn on_message_sent(
        &mut self,
        f: impl Fn(&ServerState, &SessionHandle, &Element) + Send + Sync + 'static,
    ) {
        self.sent.push(Box::new(f));
    }

    /// Called once for every message routed to a local account, before delivery or
    /// offline storage, and allowed to change it (the archive stamps its id on it).
    pub fn on_message_inbound(
        &mut self,
        f: impl Fn(&ServerState, &BareJid, &mut Element) + Send + Sync + 'static,
    ) {
        self.inbound.push(Box::new(f));
    }

    pub(crate) fn run_inbound(&self, server: &ServerState, to: &BareJid, m: &mut Element) {
        for hook in &self.inbound {
            hook(server, to, m);
        }
    }

    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// Domains served by local services, for disco#items on the server.
    pub fn service_domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    pub(crate) fn deliver_to_domain(&self, server: &ServerState, domain: &str, stanza: Element) {
        if let Some(f) = self.domains.get(domain) {
            f(server, stanza);
        }
    }

    pub(crate) fn offline_hook(&self) -> Option<&OfflineFn> {
        self.offline.as_ref()
    }

    pub(crate) fn presence_to_account_hook(&self) -> Option<&PresenceToAccountFn> {
        self.presence_to_account.as_ref()
    }

    pub(crate) fn presence_broadcast_hook(&self) -> Option<&PresenceBroadcastFn> {
        self.presence_broadcast.as_ref()
    }

    pub(crate) fn presence_outbound_hook(&self) -> Option<&PresenceOutboundFn> {
        self.presence_outbound.as_ref()
    }

    pub(crate) fn run_available(&self, server: &ServerState, h: &SessionHandle, p: &Element) {
        for hook in &self.available {
            hook(server, h, p);
        }
    }

    pub(crate) fn run_filters(&self, server: &ServerState, f: &Filtered<'_>) -> Verdict {
        for filter in &self.filters {
            match filter(server, f) {
                Verdict::Pass => {}
                other => return other,
            }
        }
        Verdict::Pass
    }

    pub(crate) fn run_delivered(
        &self,
        server: &ServerState,
        to: &BareJid,
        m: &Element,
        ids: &[u64],
    ) {
        for hook in &self.delivered {
            hook(server, to, m, ids);
        }
    }

    pub(crate) fn run_sent(&self, server: &ServerState, h: &SessionHandle, m: &Element) {
        for hook in &self.sent {
            hook(server, h, m);
        }
    }

    /// A stream feature offered to authenticated clients (roster versioning...).
    pub fn stream_feature(&mut self, feature: Element) {
        self.stream_features.push(feature);
    }

    pub fn stream_features(&self) -> &[Element] {
        &self.stream_features
    }

    pub fn server_features(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.server_features.iter().copied()
    }

    pub fn account_features(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.account_features.iter().copied()
    }

    pub fn identities(&self) -> impl Iterator<Item = &Identity> {
        self.identities.iter()
    }

    pub fn specs(&self) -> &[Spec] {
        &self.specs
    }

    /// Runs the handler for an IQ get/set; `None` when nobody handles this payload.
    pub fn dispatch_iq(
        &self,
        target: IqTarget,
        req: &IqRequest<'_>,
        payload: &Element,
    ) -> Option<IqResult> {
        let handler = self
            .iqs
            .get(&target)?
            .get(payload.ns())?
            .get(payload.name())?;
        Some(handler(req, payload))
    }

    pub(crate) fn run_session_end(&self, server: &ServerState, jid: &Jid) {
        for hook in &self.session_end {
            hook(server, jid);
        }
    }

    pub(crate) fn run_account_removed(&self, store: &Store, jid: &BareJid) {
        for hook in &self.account_removed {
            hook(store, jid);
        }
    }

    /// Offers an XEP-0050 command on the server's JID. The module that owns a feature
    /// registers its commands; the ad-hoc service lists and runs them (sessions,
    /// actions, form checks, access) so a handler only computes the next step.
    pub fn command<F>(&mut self, node: &'static str, name: &'static str, admin_only: bool, f: F)
    where
        F: Fn(&CommandCtx<'_>, &[Form]) -> Result<CommandStep, StanzaError> + Send + Sync + 'static,
    {
        debug_assert!(
            self.find_command(node).is_none(),
            "two commands on node {node}"
        );
        self.commands.push(CommandDef {
            node,
            name,
            admin_only,
            handler: Box::new(f),
        });
    }

    pub fn commands(&self) -> &[CommandDef] {
        &self.commands
    }

    pub fn find_command(&self, node: &str) -> Option<&CommandDef> {
        self.commands.iter().find(|c| c.node == node)
    }

    /// Called once a client session has bound its resource (the user has logged in).
    pub fn on_session_start(
        &mut self,
        f: impl Fn(&ServerState, &SessionHandle) + Send + Sync + 'static,
    ) {
        self.session_start.push(Box::new(f));
    }

    pub(crate) fn run_session_start(&self, server: &ServerState, handle: &SessionHandle) {
        for hook in &self.session_start {
            hook(server, handle);
        }
    }
}

/// A payload with nothing to parse (ping, version query...): accepts any element.
pub struct Empty;

impl TryFrom<&Element> for Empty {
    type Error = StanzaError;
    fn try_from(_: &Element) -> Result<Self, StanzaError> {
        Ok(Empty)
    }
}
