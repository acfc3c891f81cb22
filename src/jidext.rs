//! Cheap derivations from JIDs that are already parsed and normalised.
//!
//! `jid::Jid::to_bare` rebuilds the bare JID from its parts with `format!`, which showed
//! up as a large share of the per-message cost (several calls per routed stanza). The
//! normalised string of a full JID starts with its bare JID, so both can be had from it
//! directly.

use jid::{BareJid, Jid};

pub trait JidExt {
    /// The bare JID: a copy of the string, truncated before the resource.
    fn bare(&self) -> BareJid;
    /// The bare JID as a slice of this one's normalised string (no allocation).
    fn bare_str(&self) -> &str;
}

impl JidExt for Jid {
    fn bare(&self) -> BareJid {
        self.clone().into_bare()
    }

    fn bare_str(&self) -> &str {
        let s = self.as_str();
        match self.resource() {
            Some(r) => &s[..s.len() - r.as_str().len() - 1],
            None => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jid::FullJid;

    #[test]
    fn bare_matches_the_crate() {
        for s in ["a@b/c", "b/c", "a@b", "b", "a@b/c/d@e", "ä@b/ c"] {
            let j = Jid::new(s).unwrap();
            assert_eq!(j.bare(), j.to_bare(), "{s}");
            assert_eq!(j.bare_str(), j.to_bare().as_str(), "{s}");
        }
        let full = FullJid::new("x@y/z").unwrap();
        assert_eq!(full.bare().as_str(), "x@y");
        assert_eq!(full.bare_str(), "x@y");
    }
}
