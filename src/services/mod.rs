//! Server services: each file is one XEP (or RFC feature), registered here.

pub mod adhoc;
pub mod admin;
pub mod blocking;
pub mod carbons;
pub mod disco;
pub mod last;
pub mod mam;
pub mod ping;
pub mod private;
pub mod register;
pub mod session;
pub mod time;
pub mod vcard;
pub mod version;

use crate::module::Registry;
use crate::Config;

/// Every built-in module, in one list.
pub fn register_all(reg: &mut Registry, config: &Config) {
    reg.spec("RFC 6120", "core", "XMPP Core");
    // Stream-level features implemented in c2s rather than by a module of their own.
    reg.spec("0368", "1.1.0", "SRV records for XMPP over TLS");
    reg.spec("0440", "0.4.1", "SASL Channel-Binding Type Capability");
    crate::c2s::register(reg);
    // Web transports, implemented in src/http/ next to the HTTP listener.
    reg.spec("RFC 7395", "rfc", "XMPP Subprotocol for WebSocket");
    reg.spec(
        "0124",
        "1.11.2",
        "Bidirectional-streams Over Synchronous HTTP (BOSH)",
    );
    reg.spec("0206", "1.4", "XMPP Over BOSH");
    reg.spec(
        "0156",
        "1.4.0",
        "Discovering Alternative XMPP Connection Methods",
    );
    disco::register(reg, config);
    ping::register(reg);
    version::register(reg);
    session::register(reg);
    register::register(reg, config);
    crate::s2s::register(reg);
    adhoc::register(reg, config);
    admin::register(reg);
    crate::im::register(reg, config);
    vcard::register(reg);
    private::register(reg);
    blocking::register(reg);
    carbons::register(reg);
    mam::register(reg, config);
    last::register(reg);
    time::register(reg);
    crate::muc::register(reg, config);
}
