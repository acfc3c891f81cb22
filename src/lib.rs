//! Starling, an XMPP server.

pub mod sasl;
pub mod xml;
