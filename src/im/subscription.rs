//! The presence-subscription state machine of RFC 6121 Appendix A, kept as data.
//!
//! Each table maps (current state) -> (does the stanza go on?, new state). The outbound
//! tables apply when the user sends a subscription stanza to a contact; the inbound ones
//! when a contact's subscription stanza arrives for the user. Pre-approval (§3.4) is an
//! overlay handled by the caller: the tables are exactly the RFC's.

use serde::{Deserialize, Serialize};

/// The nine subscription states of RFC 6121 Appendix A.1, as seen from the user's roster
/// item for one contact. "Out" = the user asked for the contact's presence and awaits an
/// answer; "In" = the contact asked for the user's presence and awaits an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum State {
    #[default]
    None,
    NonePendingOut,
    NonePendingIn,
    NonePendingOutIn,
    To,
    ToPendingIn,
    From,
    FromPendingOut,
    Both,
}

use State::*;

/// The four subscription-related presence types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubType {
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
}

impl SubType {
    pub fn parse(ty: &str) -> Option<SubType> {
        match ty {
            "subscribe" => Some(SubType::Subscribe),
            "subscribed" => Some(SubType::Subscribed),
            "unsubscribe" => Some(SubType::Unsubscribe),
            "unsubscribed" => Some(SubType::Unsubscribed),
            _ => Option::None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SubType::Subscribe => "subscribe",
            SubType::Subscribed => "subscribed",
            SubType::Unsubscribe => "unsubscribe",
            SubType::Unsubscribed => "unsubscribed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The user sent it (A.2): "forward" means route it to the contact.
    Outbound,
    /// It arrived for the user (A.3): "forward" means deliver it to the user.
    Inbound,
}

/// One row: in state `from`, the stanza is forwarded (or not) and the state becomes `to`
/// (equal to `from` for "no state change").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub from: State,
    pub forward: bool,
    pub to: State,
}

const fn r(from: State, forward: bool, to: State) -> Row {
    Row { from, forward, to }
}

/// A.2.1 Outbound "subscribe".
pub const OUT_SUBSCRIBE: [Row; 9] = [
    r(None, true, NonePendingOut),
    r(NonePendingOut, true, NonePendingOut),
    r(NonePendingIn, true, NonePendingOutIn),
    r(NonePendingOutIn, true, NonePendingOutIn),
    r(To, true, To),
    r(ToPendingIn, true, ToPendingIn),
    r(From, true, FromPendingOut),
    r(FromPendingOut, true, FromPendingOut),
    r(Both, true, Both),
];

/// A.2.2 Outbound "unsubscribe".
pub const OUT_UNSUBSCRIBE: [Row; 9] = [
    r(None, true, None),
    r(NonePendingOut, true, None),
    r(NonePendingIn, true, NonePendingIn),
    r(NonePendingOutIn, true, NonePendingIn),
    r(To, true, None),
    r(ToPendingIn, true, NonePendingIn),
    r(From, true, From),
    r(FromPendingOut, true, From),
    r(Both, true, From),
];

/// A.2.3 Outbound "subscribed". The unforwarded rows in None, None+Pending Out and To
/// are where a pre-approval is recorded instead (§3.4).
pub const OUT_SUBSCRIBED: [Row; 9] = [
    r(None, false, None),
    r(NonePendingOut, false, NonePendingOut),
    r(NonePendingIn, true, From),
    r(NonePendingOutIn, true, FromPendingOut),
    r(To, false, To),
    r(ToPendingIn, true, Both),
    r(From, false, From),
    r(FromPendingOut, false, FromPendingOut),
    r(Both, false, Both),
];

/// A.2.4 Outbound "unsubscribed".
pub const OUT_UNSUBSCRIBED: [Row; 9] = [
    r(None, false, None),
    r(NonePendingOut, false, NonePendingOut),
    r(NonePendingIn, true, None),
    r(NonePendingOutIn, true, NonePendingOut),
    r(To, false, To),
    r(ToPendingIn, true, To),
    r(From, true, None),
    r(FromPendingOut, true, NonePendingOut),
    r(Both, true, To),
];

/// A.3.1 Inbound "subscribe". In From, From+Pending Out and Both the server answers
/// "subscribed" on the user's behalf instead of delivering.
pub const IN_SUBSCRIBE: [Row; 9] = [
    r(None, true, NonePendingIn),
    r(NonePendingOut, true, NonePendingOutIn),
    r(NonePendingIn, false, NonePendingIn),
    r(NonePendingOutIn, false, NonePendingOutIn),
    r(To, true, ToPendingIn),
    r(ToPendingIn, false, ToPendingIn),
    r(From, false, From),
    r(FromPendingOut, false, FromPendingOut),
    r(Both, false, Both),
];

/// A.3.2 Inbound "unsubscribe".
pub const IN_UNSUBSCRIBE: [Row; 9] = [
    r(None, false, None),
    r(NonePendingOut, false, NonePendingOut),
    r(NonePendingIn, true, None),
    r(NonePendingOutIn, true, NonePendingOut),
    r(To, false, To),
    r(ToPendingIn, true, To),
    r(From, true, None),
    r(FromPendingOut, true, NonePendingOut),
    r(Both, true, To),
];

/// A.3.3 Inbound "subscribed".
pub const IN_SUBSCRIBED: [Row; 9] = [
    r(None, false, None),
    r(NonePendingOut, true, To),
    r(NonePendingIn, false, NonePendingIn),
    r(NonePendingOutIn, true, ToPendingIn),
    r(To, false, To),
    r(ToPendingIn, false, ToPendingIn),
    r(From, false, From),
    r(FromPendingOut, true, Both),
    r(Both, false, Both),
];

/// A.3.4 Inbound "unsubscribed".
pub const IN_UNSUBSCRIBED: [Row; 9] = [
    r(None, false, None),
    r(NonePendingOut, true, None),
    r(NonePendingIn, false, NonePendingIn),
    r(NonePendingOutIn, true, NonePendingIn),
    r(To, true, None),
    r(ToPendingIn, true, NonePendingIn),
    r(From, false, From),
    r(FromPendingOut, true, From),
    r(Both, true, From),
];

pub fn table(dir: Direction, ty: SubType) -> &'static [Row; 9] {
    match (dir, ty) {
        (Direction::Outbound, SubType::Subscribe) => &OUT_SUBSCRIBE,
        (Direction::Outbound, SubType::Unsubscribe) => &OUT_UNSUBSCRIBE,
        (Direction::Outbound, SubType::Subscribed) => &OUT_SUBSCRIBED,
        (Direction::Outbound, SubType::Unsubscribed) => &OUT_UNSUBSCRIBED,
        (Direction::Inbound, SubType::Subscribe) => &IN_SUBSCRIBE,
        (Direction::Inbound, SubType::Unsubscribe) => &IN_UNSUBSCRIBE,
        (Direction::Inbound, SubType::Subscribed) => &IN_SUBSCRIBED,
        (Direction::Inbound, SubType::Unsubscribed) => &IN_UNSUBSCRIBED,
    }
}

/// Looks up the transition for a stanza in a state.
pub fn transition(dir: Direction, ty: SubType, state: State) -> Row {
    // Every table has one row per state, so the lookup always succeeds; the fallback
    // (no forwarding, no change) is the RFC's "ignore" and is never reached.
    table(dir, ty)
        .iter()
        .copied()
        .find(|row| row.from == state)
        .unwrap_or(Row {
            from: state,
            forward: false,
            to: state,
        })
}

impl State {
    /// The contact receives the user's presence.
    pub fn has_from(self) -> bool {
        matches!(self, From | FromPendingOut | Both)
    }

    /// The user receives the contact's presence.
    pub fn has_to(self) -> bool {
        matches!(self, To | ToPendingIn | Both)
    }

    pub fn pending_out(self) -> bool {
        matches!(self, NonePendingOut | NonePendingOutIn | FromPendingOut)
    }

    pub fn pending_in(self) -> bool {
        matches!(self, NonePendingIn | NonePendingOutIn | ToPendingIn)
    }

    /// The roster's `subscription` attribute (pending states are not shown there).
    pub fn attr(self) -> &'static str {
        match self {
            None | NonePendingOut | NonePendingIn | NonePendingOutIn => "none",
            To | ToPendingIn => "to",
            From | FromPendingOut => "from",
            Both => "both",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test per row of Appendix A: the name says table and state, the body the
    /// RFC's "forward?" and "new state" columns.
    macro_rules! rows {
        ($($name:ident: $dir:ident $ty:ident $from:ident => $fwd:literal, $to:ident;)*) => {$(
            #[test]
            fn $name() {
                let row = transition(Direction::$dir, SubType::$ty, State::$from);
                assert_eq!((row.forward, row.to), ($fwd, State::$to));
            }
        )*};
    }

    rows! {
        a21_out_subscribe_none: Outbound Subscribe None => true, NonePendingOut;
        a21_out_subscribe_none_pout: Outbound Subscribe NonePendingOut => true, NonePendingOut;
        a21_out_subscribe_none_pin: Outbound Subscribe NonePendingIn => true, NonePendingOutIn;
        a21_out_subscribe_none_pinout: Outbound Subscribe NonePendingOutIn => true, NonePendingOutIn;
        a21_out_subscribe_to: Outbound Subscribe To => true, To;
        a21_out_subscribe_to_pin: Outbound Subscribe ToPendingIn => true, ToPendingIn;
        a21_out_subscribe_from: Outbound Subscribe From => true, FromPendingOut;
        a21_out_subscribe_from_pout: Outbound Subscribe FromPendingOut => true, FromPendingOut;
        a21_out_subscribe_both: Outbound Subscribe Both => true, Both;

        a22_out_unsubscribe_none: Outbound Unsubscribe None => true, None;
        a22_out_unsubscribe_none_pout: Outbound Unsubscribe NonePendingOut => true, None;
        a22_out_unsubscribe_none_pin: Outbound Unsubscribe NonePendingIn => true, NonePendingIn;
        a22_out_unsubscribe_none_pinout: Outbound Unsubscribe NonePendingOutIn => true, NonePendingIn;
        a22_out_unsubscribe_to: Outbound Unsubscribe To => true, None;
        a22_out_unsubscribe_to_pin: Outbound Unsubscribe ToPendingIn => true, NonePendingIn;
        a22_out_unsubscribe_from: Outbound Unsubscribe From => true, From;
        a22_out_unsubscribe_from_pout: Outbound Unsubscribe FromPendingOut => true, From;
        a22_out_unsubscribe_both: Outbound Unsubscribe Both => true, From;

        a23_out_subscribed_none: Outbound Subscribed None => false, None;
        a23_out_subscribed_none_pout: Outbound Subscribed NonePendingOut => false, NonePendingOut;
        a23_out_subscribed_none_pin: Outbound Subscribed NonePendingIn => true, From;
        a23_out_subscribed_none_pinout: Outbound Subscribed NonePendingOutIn => true, FromPendingOut;
        a23_out_subscribed_to: Outbound Subscribed To => false, To;
        a23_out_subscribed_to_pin: Outbound Subscribed ToPendingIn => true, Both;
        a23_out_subscribed_from: Outbound Subscribed From => false, From;
        a23_out_subscribed_from_pout: Outbound Subscribed FromPendingOut => false, FromPendingOut;
        a23_out_subscribed_both: Outbound Subscribed Both => false, Both;

        a24_out_unsubscribed_none: Outbound Unsubscribed None => false, None;
        a24_out_unsubscribed_none_pout: Outbound Unsubscribed NonePendingOut => false, NonePendingOut;
        a24_out_unsubscribed_none_pin: Outbound Unsubscribed NonePendingIn => true, None;
        a24_out_unsubscribed_none_pinout: Outbound Unsubscribed NonePendingOutIn => true, NonePendingOut;
        a24_out_unsubscribed_to: Outbound Unsubscribed To => false, To;
        a24_out_unsubscribed_to_pin: Outbound Unsubscribed ToPendingIn => true, To;
        a24_out_unsubscribed_from: Outbound Unsubscribed From => true, None;
        a24_out_unsubscribed_from_pout: Outbound Unsubscribed FromPendingOut => true, NonePendingOut;
        a24_out_unsubscribed_both: Outbound Unsubscribed Both => true, To;

        a31_in_subscribe_none: Inbound Subscribe None => true, NonePendingIn;
        a31_in_subscribe_none_pout: Inbound Subscribe NonePendingOut => true, NonePendingOutIn;
        a31_in_subscribe_none_pin: Inbound Subscribe NonePendingIn => false, NonePendingIn;
        a31_in_subscribe_none_pinout: Inbound Subscribe NonePendingOutIn => false, NonePendingOutIn;
        a31_in_subscribe_to: Inbound Subscribe To => true, ToPendingIn;
        a31_in_subscribe_to_pin: Inbound Subscribe ToPendingIn => false, ToPendingIn;
        a31_in_subscribe_from: Inbound Subscribe From => false, From;
        a31_in_subscribe_from_pout: Inbound Subscribe FromPendingOut => false, FromPendingOut;
        a31_in_subscribe_both: Inbound Subscribe Both => false, Both;

        a32_in_unsubscribe_none: Inbound Unsubscribe None => false, None;
        a32_in_unsubscribe_none_pout: Inbound Unsubscribe NonePendingOut => false, NonePendingOut;
        a32_in_unsubscribe_none_pin: Inbound Unsubscribe NonePendingIn => true, None;
        a32_in_unsubscribe_none_pinout: Inbound Unsubscribe NonePendingOutIn => true, NonePendingOut;
        a32_in_unsubscribe_to: Inbound Unsubscribe To => false, To;
        a32_in_unsubscribe_to_pin: Inbound Unsubscribe ToPendingIn => true, To;
        a32_in_unsubscribe_from: Inbound Unsubscribe From => true, None;
        a32_in_unsubscribe_from_pout: Inbound Unsubscribe FromPendingOut => true, NonePendingOut;
        a32_in_unsubscribe_both: Inbound Unsubscribe Both => true, To;

        a33_in_subscribed_none: Inbound Subscribed None => false, None;
        a33_in_subscribed_none_pout: Inbound Subscribed NonePendingOut => true, To;
        a33_in_subscribed_none_pin: Inbound Subscribed NonePendingIn => false, NonePendingIn;
        a33_in_subscribed_none_pinout: Inbound Subscribed NonePendingOutIn => true, ToPendingIn;
        a33_in_subscribed_to: Inbound Subscribed To => false, To;
        a33_in_subscribed_to_pin: Inbound Subscribed ToPendingIn => false, ToPendingIn;
        a33_in_subscribed_from: Inbound Subscribed From => false, From;
        a33_in_subscribed_from_pout: Inbound Subscribed FromPendingOut => true, Both;
        a33_in_subscribed_both: Inbound Subscribed Both => false, Both;

        a34_in_unsubscribed_none: Inbound Unsubscribed None => false, None;
        a34_in_unsubscribed_none_pout: Inbound Unsubscribed NonePendingOut => true, None;
        a34_in_unsubscribed_none_pin: Inbound Unsubscribed NonePendingIn => false, NonePendingIn;
        a34_in_unsubscribed_none_pinout: Inbound Unsubscribed NonePendingOutIn => true, NonePendingIn;
        a34_in_unsubscribed_to: Inbound Unsubscribed To => true, None;
        a34_in_unsubscribed_to_pin: Inbound Unsubscribed ToPendingIn => true, NonePendingIn;
        a34_in_unsubscribed_from: Inbound Unsubscribed From => false, From;
        a34_in_unsubscribed_from_pout: Inbound Unsubscribed FromPendingOut => true, From;
        a34_in_unsubscribed_both: Inbound Unsubscribed Both => true, From;
    }

    #[test]
    fn every_table_covers_every_state_once() {
        let all = [
            None,
            NonePendingOut,
            NonePendingIn,
            NonePendingOutIn,
            To,
            ToPendingIn,
            From,
            FromPendingOut,
            Both,
        ];
        for dir in [Direction::Outbound, Direction::Inbound] {
            for ty in [
                SubType::Subscribe,
                SubType::Subscribed,
                SubType::Unsubscribe,
                SubType::Unsubscribed,
            ] {
                for s in all {
                    assert_eq!(table(dir, ty).iter().filter(|r| r.from == s).count(), 1);
                }
            }
        }
    }
}
