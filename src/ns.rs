//! Namespace strings, in one place.

pub const CLIENT: &str = "jabber:client";
pub const SERVER: &str = "jabber:server";
pub const STREAM: &str = "http://etherx.jabber.org/streams";
pub const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
/// XEP-0440 channel-binding type capability.
pub const SASL_CB: &str = "urn:xmpp:sasl-cb:0";
pub const PING: &str = "urn:xmpp:ping";
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
pub const VERSION: &str = "jabber:iq:version";
pub const REGISTER: &str = "jabber:iq:register";
pub const REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
pub const DATA_FORMS: &str = "jabber:x:data";
/// XEP-0045 §7.13/§8.6 voice requests and their approval forms.
pub const MUC_REQUEST: &str = "http://jabber.org/protocol/muc#request";
/// XEP-0045 §7.10 nickname registration form.
pub const MUC_REGISTER: &str = "http://jabber.org/protocol/muc#register";
pub const DELAY: &str = "urn:xmpp:delay";
/// RFC 7395 WebSocket framing (`<open/>`, `<close/>`).
pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
/// XEP-0124 BOSH body wrapper.
pub const HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
/// XEP-0206 attributes on the BOSH body (`xmpp:version`, `xmpp:restart`).
pub const XBOSH: &str = "urn:xmpp:xbosh";
/// XEP-0220 dialback elements (`db:` prefix on the wire).
pub const DIALBACK: &str = "jabber:server:dialback";
/// XEP-0220 stream feature advertising dialback (with `<errors/>` support).
pub const DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
/// XEP-0050 ad-hoc commands (also the disco node listing them).
pub const COMMANDS: &str = "http://jabber.org/protocol/commands";
/// XEP-0133 service administration: FORM_TYPE, and the prefix of its command nodes.
pub const ADMIN: &str = "http://jabber.org/protocol/admin";
pub const ROSTER: &str = "jabber:iq:roster";
pub const ROSTER_VER: &str = "urn:xmpp:features:rosterver";
pub const PRE_APPROVAL: &str = "urn:xmpp:features:pre-approval";
pub const VCARD: &str = "vcard-temp";
pub const PRIVATE: &str = "jabber:iq:private";
pub const BLOCKING: &str = "urn:xmpp:blocking";
pub const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
pub const CARBONS: &str = "urn:xmpp:carbons:2";
pub const FORWARD: &str = "urn:xmpp:forward:0";
pub const HINTS: &str = "urn:xmpp:hints";
pub const LAST: &str = "jabber:iq:last";
pub const TIME: &str = "urn:xmpp:time";
pub const OFFLINE: &str = "msgoffline";
pub const MUC: &str = "http://jabber.org/protocol/muc";
pub const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
pub const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const MUC_ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
pub const MUC_ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";
/// XEP-0410: the service answers self-pings itself.
pub const MUC_SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";
/// XEP-0249 direct invitations.
pub const CONFERENCE: &str = "jabber:x:conference";
/// XEP-0421 anonymous unique occupant identifiers.
pub const OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
/// XEP-0198 stream management.
pub const SM: &str = "urn:xmpp:sm:3";
/// XEP-0313 message archive management.
pub const MAM: &str = "urn:xmpp:mam:2";
/// XEP-0059 result set management.
pub const RSM: &str = "http://jabber.org/protocol/rsm";
/// XEP-0359 unique and stable stanza ids.
pub const SID: &str = "urn:xmpp:sid:0";
/// XEP-0352 client state indication.
pub const CSI: &str = "urn:xmpp:csi:0";
/// XEP-0085 chat state notifications.
pub const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
