//! Starling, an XMPP server.

pub mod xml;
