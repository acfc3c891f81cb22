//! Room configuration (XEP-0045 §10.2) and its muc#roomconfig data form (XEP-0004).

use crate::ns;
use crate::stanza::StanzaError;
use crate::xml::Element;
use serde::{Deserialize, Serialize};

/// Upper bounds a room owner may configure.
pub const MAX_HISTORY: usize = 200;
pub const MAX_OCCUPANTS: usize = 10_000;
const MAX_TEXT: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Whois {
    Moderators,
    Anyone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllowPm {
    Anyone,
    Participants,
    Moderators,
    None,
}

impl AllowPm {
    fn as_str(self) -> &'static str {
        match self {
            AllowPm::Anyone => "anyone",
            AllowPm::Participants => "participants",
            AllowPm::Moderators => "moderators",
            AllowPm::None => "none",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    pub persistent: bool,
    pub public: bool,
    pub members_only: bool,
    /// Empty: no password.
    pub password: String,
    pub moderated: bool,
    /// `None`: no limit beyond `MAX_OCCUPANTS`.
    pub max_occupants: Option<usize>,
    pub whois: Whois,
    /// Participants (not just moderators) may change the subject.
    pub change_subject: bool,
    /// Participants (not just moderators) may invite.
    pub allow_invites: bool,
    pub allow_pm: AllowPm,
    /// Messages kept for history on join.
    pub history_length: usize,
    /// The language of the room's discussion (a language tag such as `en` or `pt-BR`;
    /// empty: not said).
    pub lang: String,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            password: String::new(),
            moderated: false,
            max_occupants: None,
            whois: Whois::Moderators,
            change_subject: true,
            allow_invites: false,
            allow_pm: AllowPm::Anyone,
            history_length: 20,
            lang: String::new(),
        }
    }
}

fn field(var: &str, kind: &str, label: &str, values: &[String]) -> Element {
    let mut f = Element::new("field", ns::DATA_FORMS)
        .with_attr("var", var)
        .with_attr("type", kind);
    if !label.is_empty() {
        f.set_attr("label", label);
    }
    for v in values {
        f.push(Element::new("value", ns::DATA_FORMS).with_text(v.clone()));
    }
    f
}

fn bool_s(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

fn with_options(mut f: Element, options: &[(&str, &str)]) -> Element {
    for (value, label) in options {
        f.push(
            Element::new("option", ns::DATA_FORMS)
                .with_attr("label", *label)
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(*value)),
        );
    }
    f
}

/// The shape of a BCP 47 language tag (`en`, `pt-BR`, `zh-Hant-TW`): subtags of one to
/// eight ASCII letters or digits joined by hyphens, the first of letters only.
fn is_language_tag(s: &str) -> bool {
    s.len() <= 35
        && s.split('-').enumerate().all(|(i, sub)| {
            (1..=8).contains(&sub.len())
                && sub.bytes().all(|b| {
                    if i == 0 {
                        b.is_ascii_alphabetic()
                    } else {
                        b.is_ascii_alphanumeric()
                    }
                })
        })
}

pub fn form_type(value: &str) -> Element {
    field("FORM_TYPE", "hidden", "", &[value.to_string()])
}

impl RoomConfig {
    /// The configuration form sent to an owner (type `form`, current values filled in).
    pub fn to_form(&self) -> Element {
        let whois = match self.whois {
            Whois::Moderators => "moderators",
            Whois::Anyone => "anyone",
        };
        let max = self
            .max_occupants
            .map(|n| n.to_string())
            .unwrap_or_else(|| "none".into());
        Element::new("x", ns::DATA_FORMS)
            .with_attr("type", "form")
            .with_child(Element::new("title", ns::DATA_FORMS).with_text("Room configuration"))
            .with_child(form_type(ns::MUC_ROOMCONFIG))
            .with_child(field(
                "muc#roomconfig_roomname",
                "text-single",
                "Name",
                std::slice::from_ref(&self.name),
            ))
            .with_child(field(
                "muc#roomconfig_roomdesc",
                "text-single",
                "Description",
                std::slice::from_ref(&self.description),
            ))
            .with_child(field(
                "muc#roomconfig_persistentroom",
                "boolean",
                "Persistent (kept when empty and across restarts)",
                &[bool_s(self.persistent)],
            ))
            .with_child(field(
                "muc#roomconfig_publicroom",
                "boolean",
                "Listed in the room directory",
                &[bool_s(self.public)],
            ))
            .with_child(field(
                "muc#roomconfig_membersonly",
                "boolean",
                "Members only",
                &[bool_s(self.members_only)],
            ))
            .with_child(field(
                "muc#roomconfig_passwordprotectedroom",
                "boolean",
                "Password required to enter",
                &[bool_s(!self.password.is_empty())],
            ))
            .with_child(field(
                "muc#roomconfig_roomsecret",
                "text-private",
                "Password",
                std::slice::from_ref(&self.password),
            ))
            .with_child(field(
                "muc#roomconfig_moderatedroom",
                "boolean",
                "Moderated (only occupants with voice may speak)",
                &[bool_s(self.moderated)],
            ))
            .with_child(with_options(
                field(
                    "muc#roomconfig_maxusers",
                    "list-single",
                    "Maximum occupants",
                    &[max],
                ),
                &[
                    ("10", "10"),
                    ("20", "20"),
                    ("50", "50"),
                    ("100", "100"),
                    ("none", "No limit"),
                ],
            ))
            .with_child(with_options(
                field(
                    "muc#roomconfig_whois",
                    "list-single",
                    "Who may discover real JIDs",
                    &[whois.to_string()],
                ),
                &[("moderators", "Moderators only"), ("anyone", "Anyone")],
            ))
            .with_child(field(
                "muc#roomconfig_changesubject",
                "boolean",
                "Participants may change the subject",
                &[bool_s(self.change_subject)],
            ))
            .with_child(field(
                "muc#roomconfig_allowinvites",
                "boolean",
                "Participants may invite others",
                &[bool_s(self.allow_invites)],
            ))
            .with_child(with_options(
                field(
                    "muc#roomconfig_allowpm",
                    "list-single",
                    "Who may send private messages",
                    &[self.allow_pm.as_str().to_string()],
                ),
                &[
                    ("anyone", "Anyone"),
                    ("participants", "Participants"),
                    ("moderators", "Moderators"),
                    ("none", "Nobody"),
                ],
            ))
            .with_child(field(
                "muc#maxhistoryfetch",
                "text-single",
                "Messages of history sent on join",
                &[self.history_length.to_string()],
            ))
            .with_child(field(
                "muc#roomconfig_lang",
                "text-single",
                "Language of the discussion (e.g. en)",
                std::slice::from_ref(&self.lang),
            ))
    }

    /// Applies a submitted form (type `submit`) to a copy of this configuration. Unknown
    /// fields and out-of-range values are refused as a whole: an owner never ends up
    /// with half a configuration.
    pub fn apply_form(&self, form: &Element) -> Result<RoomConfig, StanzaError> {
        let bad = |text: String| StanzaError::not_acceptable().with_text(text);
        let mut c = self.clone();
        let mut password_protected: Option<bool> = None;
        for f in form.children().filter(|f| f.is("field", ns::DATA_FORMS)) {
            let var = f.attr("var").unwrap_or("");
            let values: Vec<String> = f
                .children()
                .filter(|v| v.is("value", ns::DATA_FORMS))
                .map(|v| v.text())
                .collect();
            let one = values.first().cloned().unwrap_or_default();
            let boolean = || -> Result<bool, StanzaError> {
                match one.as_str() {
                    "1" | "true" => Ok(true),
                    "0" | "false" => Ok(false),
                    other => Err(bad(format!("{var}: '{other}' is not a boolean"))),
                }
            };
            let text = || -> Result<String, StanzaError> {
                if one.chars().count() > MAX_TEXT {
                    Err(bad(format!("{var}: longer than {MAX_TEXT} characters")))
                } else {
                    Ok(one.clone())
                }
            };
            match var {
                "FORM_TYPE" => {
                    if one != ns::MUC_ROOMCONFIG {
                        return Err(bad(format!("FORM_TYPE must be {}", ns::MUC_ROOMCONFIG)));
                    }
                }
                "muc#roomconfig_roomname" => c.name = text()?,
                "muc#roomconfig_roomdesc" => c.description = text()?,
                "muc#roomconfig_persistentroom" => c.persistent = boolean()?,
                "muc#roomconfig_publicroom" => c.public = boolean()?,
                "muc#roomconfig_membersonly" => c.members_only = boolean()?,
                "muc#roomconfig_passwordprotectedroom" => password_protected = Some(boolean()?),
                "muc#roomconfig_roomsecret" => c.password = text()?,
                "muc#roomconfig_moderatedroom" => c.moderated = boolean()?,
                "muc#roomconfig_maxusers" => {
                    c.max_occupants = match one.as_str() {
                        "" | "none" | "0" => None,
                        n => match n.parse::<usize>() {
                            Ok(n) if (1..=MAX_OCCUPANTS).contains(&n) => Some(n),
                            _ => {
                                return Err(bad(format!(
                                    "{var}: must be 1 to {MAX_OCCUPANTS} or 'none'"
                                )))
                            }
                        },
                    }
                }
                "muc#roomconfig_whois" => {
                    c.whois = match one.as_str() {
                        "moderators" => Whois::Moderators,
                        "anyone" => Whois::Anyone,
                        other => return Err(bad(format!("{var}: unknown value '{other}'"))),
                    }
                }
                "muc#roomconfig_changesubject" => c.change_subject = boolean()?,
                "muc#roomconfig_allowinvites" => c.allow_invites = boolean()?,
                "muc#roomconfig_allowpm" => {
                    c.allow_pm = match one.as_str() {
                        "anyone" => AllowPm::Anyone,
                        "participants" => AllowPm::Participants,
                        "moderators" => AllowPm::Moderators,
                        "none" => AllowPm::None,
                        other => return Err(bad(format!("{var}: unknown value '{other}'"))),
                    }
                }
                "muc#maxhistoryfetch" | "muc#roomconfig_historylength" => {
                    c.history_length = match one.parse::<usize>() {
                        Ok(n) if n <= MAX_HISTORY => n,
                        _ => return Err(bad(format!("{var}: must be 0 to {MAX_HISTORY}"))),
                    }
                }
                "muc#roomconfig_lang" => {
                    if !(one.is_empty() || is_language_tag(&one)) {
                        return Err(bad(format!("{var}: '{one}' is not a language tag")));
                    }
                    c.lang = one.clone();
                }
                "" => return Err(bad("a field without 'var'".to_string())),
                other => return Err(bad(format!("unknown field {other}"))),
            }
        }
        // An explicit "no password" switch clears the secret; a secret without the switch
        // is taken as meaning it (clients differ in which of the two they send).
        if password_protected == Some(false) {
            c.password.clear();
        } else if password_protected == Some(true) && c.password.is_empty() {
            return Err(bad("a password-protected room needs a password".into()));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(fields: &[(&str, &str)]) -> Element {
        let mut x = Element::new("x", ns::DATA_FORMS).with_attr("type", "submit");
        x.push(form_type(ns::MUC_ROOMCONFIG));
        for (var, value) in fields {
            x.push(field(var, "text-single", "", &[value.to_string()]));
        }
        x
    }

    #[test]
    fn form_round_trips() {
        let mut c = RoomConfig {
            name: "Lounge".into(),
            persistent: true,
            members_only: true,
            password: "pw".into(),
            max_occupants: Some(50),
            whois: Whois::Anyone,
            history_length: 7,
            lang: "pt-BR".into(),
            ..RoomConfig::default()
        };
        c.allow_pm = AllowPm::Moderators;
        let mut form = c.to_form();
        form.set_attr("type", "submit");
        let back = RoomConfig::default().apply_form(&form).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn refuses_unknown_fields_and_bad_values() {
        let base = RoomConfig::default();
        for fields in [
            &[("muc#roomconfig_bogus", "1")][..],
            &[("muc#roomconfig_persistentroom", "maybe")],
            &[("muc#roomconfig_maxusers", "-3")],
            &[("muc#roomconfig_maxusers", "99999999")],
            &[("muc#maxhistoryfetch", "100000")],
            &[("muc#roomconfig_whois", "everyone")],
            &[("muc#roomconfig_lang", "en_GB")],
            &[("muc#roomconfig_lang", "-en")],
            &[("muc#roomconfig_passwordprotectedroom", "1")],
        ] {
            let err = base.apply_form(&submit(fields)).unwrap_err();
            assert_eq!(err.condition, "not-acceptable", "{fields:?}");
        }
        let ok = base
            .apply_form(&submit(&[("muc#roomconfig_maxusers", "none")]))
            .unwrap();
        assert_eq!(ok.max_occupants, None);
    }
}
