//! XEP-0045 §5: roles, affiliations and what each may do, kept as data so that the rules
//! can be read against the XEP's tables (and are unit-tested cell by cell).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::None,
        Role::Visitor,
        Role::Participant,
        Role::Moderator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl Affiliation {
    pub const ALL: [Affiliation; 5] = [
        Affiliation::Outcast,
        Affiliation::None,
        Affiliation::Member,
        Affiliation::Admin,
        Affiliation::Owner,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Affiliation> {
        Affiliation::ALL.into_iter().find(|a| a.as_str() == s)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Privileges of §5.1.1 (Table 1), by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolePriv {
    PresentInRoom,
    ReceiveMessages,
    ReceiveOccupantPresence,
    BroadcastPresence,
    ChangeAvailability,
    ChangeNick,
    SendPrivateMessages,
    InviteUsers,
    SendToAll,
    ModifySubject,
    Kick,
    GrantVoice,
    RevokeVoice,
}

/// A cell of a privilege table. `Configurable` is the XEP's asterisk: the default is the
/// value given, but a room setting may change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    No,
    Yes,
    /// Yes by default, the room configuration may switch it off.
    YesConfigurable,
    /// No by default, the room configuration may switch it on.
    NoConfigurable,
}

use Cell::*;

/// Columns: none, visitor, participant, moderator (XEP-0045 §5.1.1 Table 1).
pub const ROLE_TABLE: [(RolePriv, [Cell; 4]); 13] = [
    (RolePriv::PresentInRoom, [No, Yes, Yes, Yes]),
    (RolePriv::ReceiveMessages, [No, Yes, Yes, Yes]),
    (RolePriv::ReceiveOccupantPresence, [No, Yes, Yes, Yes]),
    (RolePriv::BroadcastPresence, [No, YesConfigurable, Yes, Yes]),
    (RolePriv::ChangeAvailability, [No, Yes, Yes, Yes]),
    (RolePriv::ChangeNick, [No, YesConfigurable, Yes, Yes]),
    (
        RolePriv::SendPrivateMessages,
        [No, YesConfigurable, Yes, Yes],
    ),
    (
        RolePriv::InviteUsers,
        [No, YesConfigurable, YesConfigurable, Yes],
    ),
    (RolePriv::SendToAll, [No, No, Yes, Yes]),
    (RolePriv::ModifySubject, [No, No, YesConfigurable, Yes]),
    (RolePriv::Kick, [No, No, No, Yes]),
    (RolePriv::GrantVoice, [No, No, No, Yes]),
    (RolePriv::RevokeVoice, [No, No, No, Yes]),
];

/// Privileges of §5.2.1 (Table 3), by affiliation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AffPriv {
    EnterOpenRoom,
    RetrieveMemberList,
    EnterMembersOnlyRoom,
    Ban,
    EditMemberList,
    EditModeratorList,
    EditAdminList,
    EditOwnerList,
    ChangeConfiguration,
    DestroyRoom,
}

/// Columns: outcast, none, member, admin, owner (XEP-0045 §5.2.1 Table 3; the
/// "register with an open room" row is left out: registration is not offered).
pub const AFFILIATION_TABLE: [(AffPriv, [Cell; 5]); 10] = [
    (AffPriv::EnterOpenRoom, [No, Yes, Yes, Yes, Yes]),
    (
        AffPriv::RetrieveMemberList,
        [No, YesConfigurable, Yes, Yes, Yes],
    ),
    (AffPriv::EnterMembersOnlyRoom, [No, No, Yes, Yes, Yes]),
    (AffPriv::Ban, [No, No, No, Yes, Yes]),
    (AffPriv::EditMemberList, [No, No, No, Yes, Yes]),
    (
        AffPriv::EditModeratorList,
        [No, No, No, YesConfigurable, Yes],
    ),
    (AffPriv::EditAdminList, [No, No, No, No, Yes]),
    (AffPriv::EditOwnerList, [No, No, No, No, Yes]),
    (AffPriv::ChangeConfiguration, [No, No, No, No, Yes]),
    (AffPriv::DestroyRoom, [No, No, No, No, Yes]),
];

pub fn role_cell(role: Role, p: RolePriv) -> Cell {
    ROLE_TABLE
        .iter()
        .find(|(q, _)| *q == p)
        .map(|(_, row)| row[role.index()])
        .unwrap_or(No)
}

pub fn affiliation_cell(aff: Affiliation, p: AffPriv) -> Cell {
    AFFILIATION_TABLE
        .iter()
        .find(|(q, _)| *q == p)
        .map(|(_, row)| row[aff.index()])
        .unwrap_or(No)
}

/// Resolves a cell with the room's setting for the configurable ones.
pub fn allowed(cell: Cell, configured: bool) -> bool {
    match cell {
        No => false,
        Yes => true,
        YesConfigurable | NoConfigurable => configured,
    }
}

/// §5.1.2: the role an affiliation gets on entering; `None` = may not enter.
pub fn default_role(aff: Affiliation, moderated: bool, members_only: bool) -> Option<Role> {
    match aff {
        Affiliation::Outcast => None,
        Affiliation::None if members_only => None,
        Affiliation::None if moderated => Some(Role::Visitor),
        Affiliation::None => Some(Role::Participant),
        Affiliation::Member => Some(Role::Participant),
        Affiliation::Admin | Affiliation::Owner => Some(Role::Moderator),
    }
}

/// §9 and §10: may `actor` move a user from affiliation `from` to `to`? Admins manage
/// the member list and bans below their own rank; owners manage every list. (Removing
/// the last owner is refused separately: it depends on the room, not the table.)
pub fn may_change_affiliation(actor: Affiliation, from: Affiliation, to: Affiliation) -> bool {
    let lower = |a: Affiliation| {
        matches!(
            a,
            Affiliation::Outcast | Affiliation::None | Affiliation::Member
        )
    };
    match actor {
        Affiliation::Owner => true,
        Affiliation::Admin => lower(from) && lower(to),
        _ => false,
    }
}

/// §8 and §9.6/9.7: may an occupant with (`actor_aff`, `actor_role`) give role `to` to an
/// occupant with affiliation `target_aff` and role `from`? Moderators kick and manage
/// voice; only admins and owners grant or revoke moderator status; nobody changes the
/// role of an admin or owner (theirs follows from the affiliation).
pub fn may_change_role(
    actor_aff: Affiliation,
    actor_role: Role,
    target_aff: Affiliation,
    from: Role,
    to: Role,
) -> bool {
    if actor_role != Role::Moderator {
        return false;
    }
    if matches!(target_aff, Affiliation::Admin | Affiliation::Owner) {
        return false;
    }
    if from == Role::Moderator || to == Role::Moderator {
        return matches!(actor_aff, Affiliation::Admin | Affiliation::Owner);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    // The XEP's tables written out again, independently of the data above, as
    // (privilege, column, expected): one assertion per cell.
    fn y(c: Cell) -> &'static str {
        match c {
            Yes => "yes",
            No => "no",
            YesConfigurable => "yes*",
            NoConfigurable => "no*",
        }
    }

    #[test]
    fn role_table_every_cell() {
        use RolePriv as P;
        let expected: &[(P, &str, &str, &str, &str)] = &[
            (P::PresentInRoom, "no", "yes", "yes", "yes"),
            (P::ReceiveMessages, "no", "yes", "yes", "yes"),
            (P::ReceiveOccupantPresence, "no", "yes", "yes", "yes"),
            (P::BroadcastPresence, "no", "yes*", "yes", "yes"),
            (P::ChangeAvailability, "no", "yes", "yes", "yes"),
            (P::ChangeNick, "no", "yes*", "yes", "yes"),
            (P::SendPrivateMessages, "no", "yes*", "yes", "yes"),
            (P::InviteUsers, "no", "yes*", "yes*", "yes"),
            (P::SendToAll, "no", "no", "yes", "yes"),
            (P::ModifySubject, "no", "no", "yes*", "yes"),
            (P::Kick, "no", "no", "no", "yes"),
            (P::GrantVoice, "no", "no", "no", "yes"),
            (P::RevokeVoice, "no", "no", "no", "yes"),
        ];
        let mut cells = 0;
        for (p, none, visitor, participant, moderator) in expected {
            for (role, want) in [
                (Role::None, none),
                (Role::Visitor, visitor),
                (Role::Participant, participant),
                (Role::Moderator, moderator),
            ] {
                assert_eq!(y(role_cell(role, *p)), *want, "{p:?} for {role:?}");
                cells += 1;
            }
        }
        assert_eq!(cells, ROLE_TABLE.len() * 4);
    }

    #[test]
    fn affiliation_table_every_cell() {
        use AffPriv as P;
        let expected: &[(P, [&str; 5])] = &[
            (P::EnterOpenRoom, ["no", "yes", "yes", "yes", "yes"]),
            (P::RetrieveMemberList, ["no", "yes*", "yes", "yes", "yes"]),
            (P::EnterMembersOnlyRoom, ["no", "no", "yes", "yes", "yes"]),
            (P::Ban, ["no", "no", "no", "yes", "yes"]),
            (P::EditMemberList, ["no", "no", "no", "yes", "yes"]),
            (P::EditModeratorList, ["no", "no", "no", "yes*", "yes"]),
            (P::EditAdminList, ["no", "no", "no", "no", "yes"]),
            (P::EditOwnerList, ["no", "no", "no", "no", "yes"]),
            (P::ChangeConfiguration, ["no", "no", "no", "no", "yes"]),
            (P::DestroyRoom, ["no", "no", "no", "no", "yes"]),
        ];
        let mut cells = 0;
        for (p, row) in expected {
            for (aff, want) in Affiliation::ALL.into_iter().zip(row) {
                assert_eq!(y(affiliation_cell(aff, *p)), *want, "{p:?} for {aff:?}");
                cells += 1;
            }
        }
        assert_eq!(cells, AFFILIATION_TABLE.len() * 5);
    }

    #[test]
    fn default_roles_every_cell() {
        use Affiliation as A;
        // (affiliation, moderated, members-only) -> role, §5.1.2 Table 2.
        let expected = [
            (A::Owner, false, false, Some(Role::Moderator)),
            (A::Owner, true, false, Some(Role::Moderator)),
            (A::Owner, false, true, Some(Role::Moderator)),
            (A::Admin, false, false, Some(Role::Moderator)),
            (A::Admin, true, false, Some(Role::Moderator)),
            (A::Admin, false, true, Some(Role::Moderator)),
            (A::Member, false, false, Some(Role::Participant)),
            (A::Member, true, false, Some(Role::Participant)),
            (A::Member, false, true, Some(Role::Participant)),
            (A::None, false, false, Some(Role::Participant)),
            (A::None, true, false, Some(Role::Visitor)),
            (A::None, false, true, None),
            (A::Outcast, false, false, None),
            (A::Outcast, true, false, None),
            (A::Outcast, false, true, None),
        ];
        for (aff, moderated, members_only, want) in expected {
            assert_eq!(
                default_role(aff, moderated, members_only),
                want,
                "{aff:?} moderated={moderated} members_only={members_only}"
            );
        }
    }

    #[test]
    fn affiliation_changes_every_cell() {
        use Affiliation as A;
        for actor in A::ALL {
            for from in A::ALL {
                for to in A::ALL {
                    let lower = |a| matches!(a, A::Outcast | A::None | A::Member);
                    let want = match actor {
                        A::Owner => true,
                        A::Admin => lower(from) && lower(to),
                        A::Member | A::None | A::Outcast => false,
                    };
                    assert_eq!(
                        may_change_affiliation(actor, from, to),
                        want,
                        "{actor:?}: {from:?} -> {to:?}"
                    );
                }
            }
        }
        // The case the issue names: an admin may not ban an owner (or another admin).
        assert!(!may_change_affiliation(A::Admin, A::Owner, A::Outcast));
        assert!(!may_change_affiliation(A::Admin, A::Admin, A::Outcast));
        assert!(may_change_affiliation(A::Admin, A::Member, A::Outcast));
    }

    #[test]
    fn role_changes() {
        use Affiliation as A;
        // A moderator with no affiliation kicks and (de)voices ordinary occupants...
        assert!(may_change_role(
            A::None,
            Role::Moderator,
            A::None,
            Role::Participant,
            Role::None
        ));
        assert!(may_change_role(
            A::None,
            Role::Moderator,
            A::Member,
            Role::Participant,
            Role::Visitor
        ));
        assert!(may_change_role(
            A::None,
            Role::Moderator,
            A::None,
            Role::Visitor,
            Role::Participant
        ));
        // ...but cannot make or unmake moderators, and cannot touch admins or owners.
        assert!(!may_change_role(
            A::None,
            Role::Moderator,
            A::None,
            Role::Participant,
            Role::Moderator
        ));
        assert!(!may_change_role(
            A::None,
            Role::Moderator,
            A::None,
            Role::Moderator,
            Role::Participant
        ));
        assert!(!may_change_role(
            A::Owner,
            Role::Moderator,
            A::Admin,
            Role::Moderator,
            Role::None
        ));
        assert!(!may_change_role(
            A::Admin,
            Role::Moderator,
            A::Owner,
            Role::Moderator,
            Role::Visitor
        ));
        // Admins and owners grant and revoke moderator status.
        assert!(may_change_role(
            A::Admin,
            Role::Moderator,
            A::Member,
            Role::Participant,
            Role::Moderator
        ));
        assert!(may_change_role(
            A::Owner,
            Role::Moderator,
            A::None,
            Role::Moderator,
            Role::Participant
        ));
        // Participants and visitors change nobody's role.
        for actor_role in [Role::None, Role::Visitor, Role::Participant] {
            for to in Role::ALL {
                assert!(!may_change_role(
                    A::Owner,
                    actor_role,
                    A::None,
                    Role::Participant,
                    to
                ));
            }
        }
    }
}
