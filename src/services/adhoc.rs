//! XEP-0050: Ad-Hoc Commands on the server's JID.
//!
//! Modules register commands with `Registry::command`; this service lists them in disco
//! (only those the requester may run), and runs the sessions: actions (execute, next,
//! prev, complete, cancel), checking each submitted form against the form that was shown,
//! access, and sessions that expire. A command handler is a plain function from the forms
//! submitted so far to the next step, so multi-stage commands need no state of their own.
//!
//! Sessions live in memory only: a command in progress is a conversation with one
//! connected client, which a restart ends anyway.

use crate::forms::{Form, FormType};
use crate::module::{IqKind, IqRequest, IqResult, IqTarget, Registry};
use crate::ns;
use crate::stanza::{ErrorType, StanzaError};
use crate::xml::Element;
use crate::{Config, ServerState};
use jid::{BareJid, Jid};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Open sessions one requester (full JID) may have; starting one more drops their oldest.
/// Bounds memory however many commands a client starts and abandons.
const MAX_SESSIONS_PER_REQUESTER: usize = 16;

/// Who is running a command, for handlers.
pub struct CommandCtx<'a> {
    pub server: &'a ServerState,
    /// The requester's full JID, as stamped by the server.
    pub from: &'a Jid,
    /// The requester is listed in `admins`.
    pub admin: bool,
}

impl CommandCtx<'_> {
    /// The requester's bare JID (who did it, for the logs).
    pub fn by(&self) -> BareJid {
        self.from.to_bare()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteType {
    Info,
    Warn,
    Error,
}

impl NoteType {
    fn as_str(self) -> &'static str {
        match self {
            NoteType::Info => "info",
            NoteType::Warn => "warn",
            NoteType::Error => "error",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub kind: NoteType,
    pub text: String,
}

/// What a command handler returns for one stage.
#[derive(Clone, Debug)]
pub enum CommandStep {
    /// Show this form and wait; `last` means submitting it completes the command.
    Form { form: Form, last: bool },
    /// The command is finished.
    Done {
        form: Option<Form>,
        notes: Vec<Note>,
    },
}

impl CommandStep {
    pub fn last_form(form: Form) -> CommandStep {
        CommandStep::Form { form, last: true }
    }

    pub fn note(kind: NoteType, text: impl Into<String>) -> CommandStep {
        CommandStep::Done {
            form: None,
            notes: vec![Note {
                kind,
                text: text.into(),
            }],
        }
    }

    pub fn result(form: Form) -> CommandStep {
        CommandStep::Done {
            form: Some(form),
            notes: Vec::new(),
        }
    }
}

fn with_app(err: StanzaError, condition: &str) -> StanzaError {
    StanzaError {
        app: Some(Box::new(Element::new(condition, ns::COMMANDS))),
        ..err
    }
}

/// The submitted data cannot be used (XEP-0050 §4.6 bad-payload). The session stays
/// open at the same stage so the user can correct the form.
pub fn bad_payload(text: impl Into<String>) -> StanzaError {
    with_app(StanzaError::bad_request().with_text(text), "bad-payload")
}

fn bad_action(text: &str) -> StanzaError {
    with_app(StanzaError::bad_request().with_text(text), "bad-action")
}

fn malformed_action(text: &str) -> StanzaError {
    with_app(
        StanzaError::bad_request().with_text(text),
        "malformed-action",
    )
}

fn bad_sessionid(text: &str) -> StanzaError {
    with_app(StanzaError::bad_request().with_text(text), "bad-sessionid")
}

fn session_expired() -> StanzaError {
    with_app(
        StanzaError::not_allowed()
            .with_type(ErrorType::Cancel)
            .with_text("the command session expired; start the command again"),
        "session-expired",
    )
}

fn is_bad_payload(e: &StanzaError) -> bool {
    e.app
        .as_ref()
        .is_some_and(|a| a.is("bad-payload", ns::COMMANDS))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Execute,
    Cancel,
    Prev,
    Next,
    Complete,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Execute => "execute",
            Action::Cancel => "cancel",
            Action::Prev => "prev",
            Action::Next => "next",
            Action::Complete => "complete",
        }
    }
}

/// A parsed `<command xmlns='http://jabber.org/protocol/commands'/>` request.
pub struct CommandRequest {
    node: String,
    action: Action,
    sessionid: Option<String>,
    form: Option<Form>,
}

impl TryFrom<&Element> for CommandRequest {
    type Error = StanzaError;
    fn try_from(el: &Element) -> Result<Self, StanzaError> {
        let node = el
            .attr("node")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| StanzaError::bad_request().with_text("a command needs a node"))?
            .to_string();
        let action = match el.attr("action") {
            None | Some("execute") => Action::Execute,
            Some("cancel") => Action::Cancel,
            Some("prev") => Action::Prev,
            Some("next") => Action::Next,
            Some("complete") => Action::Complete,
            Some(other) => {
                return Err(malformed_action(&format!("unknown action {other:?}")));
            }
        };
        let form = match el.child("x", ns::DATA_FORMS) {
            Some(x) => Some(Form::try_from(x).map_err(|e| {
                bad_payload(e.text.unwrap_or_else(|| "malformed data form".into()))
            })?),
            None => None,
        };
        Ok(CommandRequest {
            node,
            action,
            sessionid: el
                .attr("sessionid")
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            form,
        })
    }
}

struct Session {
    node: &'static str,
    /// The full JID that started it: nobody else may continue it.
    owner: String,
    submitted: Vec<Form>,
    /// The form shown at the current stage, which the next submission answers.
    shown: Form,
    last: bool,
    touched: Instant,
}

/// The open command sessions, keyed by session id.
pub struct CommandSessions {
    map: Mutex<HashMap<String, Session>>,
    timeout: Duration,
}

impl CommandSessions {
    pub fn new(timeout: Duration) -> CommandSessions {
        CommandSessions {
            map: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // Every update is a single insert or remove, so a poisoned map is still sound.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a session out of the map for one request; it goes back with `put` if it
    /// continues. A request racing on the same id meanwhile gets bad-sessionid.
    fn take(&self, id: &str, owner: &str, node: &str) -> Result<Session, StanzaError> {
        let mut map = self.lock();
        let Some(s) = map.get(id) else {
            return Err(bad_sessionid("no such command session"));
        };
        // Someone else's session looks exactly like a missing one: ids reveal nothing.
        if s.owner != owner || s.node != node {
            return Err(bad_sessionid("no such command session"));
        }
        let expired = s.touched.elapsed() > self.timeout;
        match map.remove(id) {
            Some(_) if expired => Err(session_expired()),
            Some(s) => Ok(s),
            None => Err(bad_sessionid("no such command session")),
        }
    }

    fn put(&self, id: String, mut session: Session) {
        session.touched = Instant::now();
        let mut map = self.lock();
        // Expired sessions are kept one more timeout so that a late request is told
        // "expired" rather than "unknown"; after that they go.
        let keep = self.timeout * 2;
        map.retain(|_, s| s.touched.elapsed() <= keep);
        let mine: Vec<(String, Instant)> = map
            .iter()
            .filter(|(_, s)| s.owner == session.owner)
            .map(|(k, s)| (k.clone(), s.touched))
            .collect();
        if mine.len() >= MAX_SESSIONS_PER_REQUESTER {
            if let Some((oldest, _)) = mine.iter().min_by_key(|(_, t)| *t) {
                map.remove(oldest);
            }
        }
        map.insert(id, session);
    }

    /// Drops every session of a requester whose stream has ended.
    pub fn forget(&self, owner: &Jid) {
        let owner = owner.as_str();
        self.lock().retain(|_, s| s.owner != owner);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn handle(&self, req: &IqRequest<'_>, cmd: CommandRequest) -> IqResult {
        if req.kind != IqKind::Set {
            return Err(StanzaError::bad_request().with_text("commands are run with an IQ set"));
        }
        let registry = &req.server.registry;
        let def = registry
            .find_command(&cmd.node)
            .ok_or_else(|| StanzaError::item_not_found().with_text("no such command"))?;
        let admin = req.from_admin();
        if def.admin_only && !admin {
            tracing::info!(from = %req.from, node = def.node, "ad-hoc command refused: not an admin");
            return Err(StanzaError::forbidden());
        }
        let ctx = CommandCtx {
            server: req.server,
            from: req.from,
            admin,
        };
        let owner = req.from.as_str().to_string();
        let Some(id) = cmd.sessionid else {
            if cmd.action != Action::Execute {
                return Err(bad_sessionid(&format!(
                    "'{}' needs the sessionid of a command in progress",
                    cmd.action.as_str()
                )));
            }
            let mut step = (def.handler)(&ctx, &[])?;
            let mut submitted = Vec::new();
            // A client may submit the first form with the execute request itself.
            if let (Some(form), CommandStep::Form { form: shown, .. }) = (&cmd.form, &step) {
                if form.kind == FormType::Submit {
                    shown.check_submission(form).map_err(bad_payload)?;
                    submitted.push(form.clone());
                    step = (def.handler)(&ctx, &submitted)?;
                }
            }
            let id = new_session_id();
            return Ok(Some(match step {
                CommandStep::Form { form, last } => {
                    let reply = executing(def.node, &id, &form, last, !submitted.is_empty());
                    self.put(
                        id,
                        Session {
                            node: def.node,
                            owner,
                            submitted,
                            shown: form,
                            last,
                            touched: Instant::now(),
                        },
                    );
                    reply
                }
                CommandStep::Done { form, notes } => {
                    finished(def.node, &id, "completed", form.as_ref(), &notes)
                }
            }));
        };
        let mut session = self.take(&id, &owner, def.node)?;
        match cmd.action {
            Action::Cancel => Ok(Some(finished(def.node, &id, "canceled", None, &[]))),
            Action::Prev => {
                let Some(previous) = session.submitted.pop() else {
                    self.put(id, session);
                    return Err(bad_action("this is the first stage"));
                };
                let step = (def.handler)(&ctx, &session.submitted)?;
                self.advance(id, session, step, Some(&previous))
            }
            Action::Execute | Action::Next | Action::Complete => {
                let expected = if session.last {
                    Action::Complete
                } else {
                    Action::Next
                };
                if cmd.action != Action::Execute && cmd.action != expected {
                    self.put(id, session);
                    return Err(bad_action(&format!(
                        "this stage accepts '{}', not '{}'",
                        expected.as_str(),
                        cmd.action.as_str()
                    )));
                }
                let Some(form) = cmd.form else {
                    self.put(id, session);
                    return Err(bad_payload("submit the form shown at this stage"));
                };
                if form.kind == FormType::Cancel {
                    return Ok(Some(finished(def.node, &id, "canceled", None, &[])));
                }
                if let Err(text) = session.shown.check_submission(&form) {
                    self.put(id, session);
                    return Err(bad_payload(text));
                }
                session.submitted.push(form);
                match (def.handler)(&ctx, &session.submitted) {
                    Err(e) if is_bad_payload(&e) => {
                        session.submitted.pop();
                        self.put(id, session);
                        Err(e)
                    }
                    Err(e) => Err(e),
                    Ok(step) => self.advance(id, session, step, None),
                }
            }
        }
    }

    /// Shows the next form (keeping the session) or finishes.
    fn advance(
        &self,
        id: String,
        mut session: Session,
        step: CommandStep,
        refill: Option<&Form>,
    ) -> IqResult {
        match step {
            CommandStep::Form { mut form, last } => {
                if let Some(previous) = refill {
                    prefill(&mut form, previous);
                }
                let reply = executing(
                    session.node,
                    &id,
                    &form,
                    last,
                    !session.submitted.is_empty(),
                );
                session.shown = form;
                session.last = last;
                self.put(id, session);
                Ok(Some(reply))
            }
            CommandStep::Done { form, notes } => Ok(Some(finished(
                session.node,
                &id,
                "completed",
                form.as_ref(),
                &notes,
            ))),
        }
    }
}

/// Going back shows the earlier form with what the user had entered (never passwords).
fn prefill(form: &mut Form, previous: &Form) {
    for field in &mut form.fields {
        if field.kind == Some(crate::forms::FieldType::TextPrivate)
            || field.kind == Some(crate::forms::FieldType::Hidden)
        {
            continue;
        }
        if let Some(old) = previous.get(&field.var) {
            field.values = old.values.clone();
        }
    }
}

fn new_session_id() -> String {
    use base64::Engine;
    use rand::Rng;
    let bytes: [u8; 15] = rand::thread_rng().gen();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn command_el(node: &str, id: &str, status: &str) -> Element {
    Element::new("command", ns::COMMANDS)
        .with_attr("node", node)
        .with_attr("sessionid", id)
        .with_attr("status", status)
}

fn executing(node: &str, id: &str, form: &Form, last: bool, can_go_back: bool) -> Element {
    let default = if last { "complete" } else { "next" };
    let mut actions = Element::new("actions", ns::COMMANDS).with_attr("execute", default);
    if can_go_back {
        actions.push(Element::new("prev", ns::COMMANDS));
    }
    actions.push(Element::new(default, ns::COMMANDS));
    command_el(node, id, "executing")
        .with_child(actions)
        .with_child(form.to_element())
}

fn finished(node: &str, id: &str, status: &str, form: Option<&Form>, notes: &[Note]) -> Element {
    let mut el = command_el(node, id, status);
    for n in notes {
        el.push(
            Element::new("note", ns::COMMANDS)
                .with_attr("type", n.kind.as_str())
                .with_text(n.text.clone()),
        );
    }
    if let Some(f) = form {
        el.push(f.to_element());
    }
    el
}

/// disco#items on the commands node: the commands this requester may run.
pub fn disco_items(req: &IqRequest<'_>) -> Element {
    let admin = req.from_admin();
    let domain = &req.server.config.domain;
    let mut q = Element::new("query", ns::DISCO_ITEMS).with_attr("node", ns::COMMANDS);
    for c in req.server.registry.commands() {
        if c.admin_only && !admin {
            continue;
        }
        q.push(
            Element::new("item", ns::DISCO_ITEMS)
                .with_attr("jid", domain.clone())
                .with_attr("node", c.node)
                .with_attr("name", c.name),
        );
    }
    q
}

/// disco#info on the commands node or on one command's node. `None` when the node is
/// not ours. A command the requester may not run is as invisible here as in the list.
pub fn disco_info(req: &IqRequest<'_>, node: &str) -> Option<Result<Element, StanzaError>> {
    let q = Element::new("query", ns::DISCO_INFO).with_attr("node", node);
    if node == ns::COMMANDS {
        return Some(Ok(q.with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "automation")
                .with_attr("type", "command-list")
                .with_attr("name", "Commands"),
        )));
    }
    let c = req.server.registry.find_command(node)?;
    if c.admin_only && !req.from_admin() {
        return Some(Err(StanzaError::item_not_found()));
    }
    Some(Ok(q
        .with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "automation")
                .with_attr("type", "command-node")
                .with_attr("name", c.name),
        )
        .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::COMMANDS))
        .with_child(
            Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DATA_FORMS),
        )))
}

pub fn register(reg: &mut Registry, config: &Config) {
    reg.spec("0050", "1.3.0", "Ad-Hoc Commands");
    reg.server_feature(ns::COMMANDS);
    let sessions = Arc::new(CommandSessions::new(Duration::from_secs(
        config.limits.command_session_timeout_secs,
    )));
    let s = sessions.clone();
    reg.iq(
        IqTarget::Server,
        ns::COMMANDS,
        "command",
        move |req, cmd: CommandRequest| s.handle(req, cmd),
    );
    reg.on_session_end(move |_, jid| sessions.forget(jid));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_actions_and_refuses_unknown_ones() {
        let el = Element::new("command", ns::COMMANDS)
            .with_attr("node", "n")
            .with_attr("action", "next")
            .with_attr("sessionid", "s");
        let c = CommandRequest::try_from(&el).unwrap();
        assert_eq!(c.action, Action::Next);
        assert_eq!(c.sessionid.as_deref(), Some("s"));
        let bad = el.clone().with_attr("action", "jump");
        let e = CommandRequest::try_from(&bad).err().unwrap();
        assert_eq!(e.condition, "bad-request");
        assert!(e.app.unwrap().is("malformed-action", ns::COMMANDS));
        let no_node = Element::new("command", ns::COMMANDS);
        assert!(CommandRequest::try_from(&no_node).is_err());
    }

    #[test]
    fn sessions_expire_and_belong_to_their_owner() {
        let s = CommandSessions::new(Duration::from_millis(50));
        let session = || Session {
            node: "n",
            owner: "a@x/r".into(),
            submitted: Vec::new(),
            shown: Form::new(FormType::Form),
            last: true,
            touched: Instant::now(),
        };
        s.put("1".into(), session());
        let e = s.take("1", "b@x/r", "n").err().unwrap();
        assert!(e.app.unwrap().is("bad-sessionid", ns::COMMANDS));
        let e = s.take("1", "a@x/r", "other").err().unwrap();
        assert!(e.app.unwrap().is("bad-sessionid", ns::COMMANDS));
        assert!(s.take("1", "a@x/r", "n").is_ok());
        s.put("2".into(), session());
        std::thread::sleep(Duration::from_millis(80));
        let e = s.take("2", "a@x/r", "n").err().unwrap();
        assert_eq!(e.condition, "not-allowed");
        assert!(e.app.unwrap().is("session-expired", ns::COMMANDS));
        // Once reported, an expired session is gone.
        assert!(s.take("2", "a@x/r", "n").is_err());
    }

    /// A registry with the ad-hoc service and one three-stage command (two forms, then a
    /// result echoing both), run on a server state with no listeners.
    fn three_stage_server() -> (ServerState, tempfile::TempDir) {
        use crate::forms::{Field, FieldType};
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let mut reg = Registry::default();
        register(&mut reg, &config);
        reg.command("test#wizard", "Wizard", false, |_ctx, forms| {
            let ask = |var: &str| {
                Form::new(FormType::Form).field(Field::new(var, FieldType::TextSingle).required())
            };
            Ok(match forms {
                [] => CommandStep::Form {
                    form: ask("first"),
                    last: false,
                },
                [_] => CommandStep::last_form(ask("second")),
                [a, b, ..] => CommandStep::note(
                    NoteType::Info,
                    format!(
                        "{}+{}",
                        a.value("first").unwrap_or(""),
                        b.value("second").unwrap_or("")
                    ),
                ),
            })
        });
        let tls = crate::net::tls::TlsSetup::load(&config).unwrap();
        let state = ServerState::new(config, crate::store::Store::temporary().unwrap(), reg, tls);
        (state, dir)
    }

    fn send(state: &ServerState, attrs: &[(&str, &str)], form: Option<(&str, &str)>) -> IqResult {
        let mut cmd = Element::new("command", ns::COMMANDS).with_attr("node", "test#wizard");
        for (k, v) in attrs {
            cmd.set_attr(*k, *v);
        }
        if let Some((var, value)) = form {
            cmd.push(
                Element::new("x", ns::DATA_FORMS)
                    .with_attr("type", "submit")
                    .with_child(
                        Element::new("field", ns::DATA_FORMS)
                            .with_attr("var", var)
                            .with_child(Element::new("value", ns::DATA_FORMS).with_text(value)),
                    ),
            );
        }
        let from = Jid::new("user@localhost/r").unwrap();
        let to = Jid::new("localhost").unwrap();
        let iq = Element::new("iq", ns::CLIENT).with_child(cmd.clone());
        let req = IqRequest {
            server: state,
            from: &from,
            to: &to,
            kind: IqKind::Set,
            iq: &iq,
        };
        state
            .registry
            .dispatch_iq(IqTarget::Server, &req, &cmd)
            .expect("handled")
    }

    fn default_action(reply: &Element) -> Option<String> {
        reply
            .child("actions", ns::COMMANDS)
            .and_then(|a| a.attr("execute"))
            .map(str::to_string)
    }

    #[test]
    fn multi_stage_next_prev_complete() {
        let (state, _dir) = three_stage_server();
        let r = send(&state, &[("action", "execute")], None)
            .unwrap()
            .unwrap();
        assert_eq!(r.attr("status"), Some("executing"));
        assert_eq!(default_action(&r).as_deref(), Some("next"));
        let sid = r.attr("sessionid").unwrap().to_string();
        let s = |action| [("sessionid", sid.as_str()), ("action", action)];
        // 'complete' is not what the first stage offers.
        let e = send(&state, &s("complete"), Some(("first", "a"))).unwrap_err();
        assert!(e.app.unwrap().is("bad-action", ns::COMMANDS));
        let r = send(&state, &s("next"), Some(("first", "a")))
            .unwrap()
            .unwrap();
        assert_eq!(default_action(&r).as_deref(), Some("complete"));
        assert!(r
            .child("actions", ns::COMMANDS)
            .unwrap()
            .has_child("prev", ns::COMMANDS));
        // Back to the first stage: the form comes back with what was entered.
        let r = send(&state, &s("prev"), None).unwrap().unwrap();
        let x = r.child("x", ns::DATA_FORMS).unwrap();
        assert_eq!(Form::try_from(x).unwrap().value("first"), Some("a"));
        assert_eq!(default_action(&r).as_deref(), Some("next"));
        // 'execute' means the stage's default action.
        send(&state, &s("execute"), Some(("first", "b"))).unwrap();
        let r = send(&state, &s("complete"), Some(("second", "c")))
            .unwrap()
            .unwrap();
        assert_eq!(r.attr("status"), Some("completed"));
        assert_eq!(r.child_text("note", ns::COMMANDS).as_deref(), Some("b+c"));
        let e = send(&state, &s("complete"), Some(("second", "c"))).unwrap_err();
        assert!(e.app.unwrap().is("bad-sessionid", ns::COMMANDS));
    }

    #[test]
    fn a_requester_cannot_pile_up_sessions() {
        let s = CommandSessions::new(Duration::from_secs(60));
        for i in 0..(MAX_SESSIONS_PER_REQUESTER + 5) {
            s.put(
                i.to_string(),
                Session {
                    node: "n",
                    owner: "a@x/r".into(),
                    submitted: Vec::new(),
                    shown: Form::new(FormType::Form),
                    last: true,
                    touched: Instant::now(),
                },
            );
        }
        assert_eq!(s.len(), MAX_SESSIONS_PER_REQUESTER);
        s.forget(&Jid::new("a@x/r").unwrap());
        assert!(s.is_empty());
    }
}
