//! XEP-0004 data forms: building the forms a service shows, parsing what a client
//! submits, and checking a submission against the form it answers.
//!
//! Checking against the form that was shown means a handler only ever reads values that
//! have the type, the arity and the options it declared: a missing required field, a JID
//! that does not parse or a value outside a list's options is refused before the handler
//! runs, with a text naming the field.

use crate::ns;
use crate::stanza::StanzaError;
use crate::xml::Element;

/// The `type` of a whole form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormType {
    Form,
    Submit,
    Cancel,
    Result,
}

impl FormType {
    pub fn as_str(self) -> &'static str {
        match self {
            FormType::Form => "form",
            FormType::Submit => "submit",
            FormType::Cancel => "cancel",
            FormType::Result => "result",
        }
    }

    fn parse(s: &str) -> Option<FormType> {
        Some(match s {
            "form" => FormType::Form,
            "submit" => FormType::Submit,
            "cancel" => FormType::Cancel,
            "result" => FormType::Result,
            _ => return None,
        })
    }
}

/// The field types of XEP-0004 §3.3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    Boolean,
    Fixed,
    Hidden,
    JidMulti,
    JidSingle,
    ListMulti,
    ListSingle,
    TextMulti,
    TextPrivate,
    TextSingle,
}

impl FieldType {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Boolean => "boolean",
            FieldType::Fixed => "fixed",
            FieldType::Hidden => "hidden",
            FieldType::JidMulti => "jid-multi",
            FieldType::JidSingle => "jid-single",
            FieldType::ListMulti => "list-multi",
            FieldType::ListSingle => "list-single",
            FieldType::TextMulti => "text-multi",
            FieldType::TextPrivate => "text-private",
            FieldType::TextSingle => "text-single",
        }
    }

    fn parse(s: &str) -> Option<FieldType> {
        Some(match s {
            "boolean" => FieldType::Boolean,
            "fixed" => FieldType::Fixed,
            "hidden" => FieldType::Hidden,
            "jid-multi" => FieldType::JidMulti,
            "jid-single" => FieldType::JidSingle,
            "list-multi" => FieldType::ListMulti,
            "list-single" => FieldType::ListSingle,
            "text-multi" => FieldType::TextMulti,
            "text-private" => FieldType::TextPrivate,
            "text-single" => FieldType::TextSingle,
            _ => return None,
        })
    }

    fn multi(self) -> bool {
        matches!(
            self,
            FieldType::JidMulti | FieldType::ListMulti | FieldType::TextMulti
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Empty only for `fixed` fields, which carry no data.
    pub var: String,
    pub kind: Option<FieldType>,
    pub label: Option<String>,
    pub desc: Option<String>,
    pub required: bool,
    pub values: Vec<String>,
    /// (label, value) pairs of a list field.
    pub options: Vec<(String, String)>,
}

impl Field {
    pub fn new(var: impl Into<String>, kind: FieldType) -> Field {
        Field {
            var: var.into(),
            kind: Some(kind),
            label: None,
            desc: None,
            required: false,
            values: Vec::new(),
            options: Vec::new(),
        }
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn desc(mut self, desc: impl Into<String>) -> Self {
        self.desc = Some(desc.into());
        self
    }

    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    pub fn value(mut self, v: impl Into<String>) -> Self {
        self.values.push(v.into());
        self
    }

    pub fn values<I: IntoIterator<Item = S>, S: Into<String>>(mut self, vs: I) -> Self {
        self.values.extend(vs.into_iter().map(Into::into));
        self
    }

    pub fn option(mut self, label: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((label.into(), value.into()));
        self
    }

    fn to_element(&self) -> Element {
        let mut f = Element::new("field", ns::DATA_FORMS);
        if !self.var.is_empty() {
            f.set_attr("var", self.var.clone());
        }
        if let Some(k) = self.kind {
            f.set_attr("type", k.as_str());
        }
        if let Some(l) = &self.label {
            f.set_attr("label", l.clone());
        }
        if let Some(d) = &self.desc {
            f.push(Element::new("desc", ns::DATA_FORMS).with_text(d.clone()));
        }
        if self.required {
            f.push(Element::new("required", ns::DATA_FORMS));
        }
        for v in &self.values {
            f.push(Element::new("value", ns::DATA_FORMS).with_text(v.clone()));
        }
        for (label, value) in &self.options {
            f.push(
                Element::new("option", ns::DATA_FORMS)
                    .with_attr("label", label.clone())
                    .with_child(Element::new("value", ns::DATA_FORMS).with_text(value.clone())),
            );
        }
        f
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Form {
    pub kind: FormType,
    pub title: Option<String>,
    pub instructions: Vec<String>,
    pub fields: Vec<Field>,
    /// Extra payload carried inside the form (XEP-0133 puts a roster query there).
    pub extra: Vec<Element>,
}

impl Form {
    pub fn new(kind: FormType) -> Form {
        Form {
            kind,
            title: None,
            instructions: Vec::new(),
            fields: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// A form of this type with the hidden `FORM_TYPE` field (XEP-0068) first.
    pub fn typed(kind: FormType, form_type: &str) -> Form {
        Form::new(kind).field(Field::new("FORM_TYPE", FieldType::Hidden).value(form_type))
    }

    pub fn title(mut self, t: impl Into<String>) -> Self {
        self.title = Some(t.into());
        self
    }

    pub fn instructions(mut self, t: impl Into<String>) -> Self {
        self.instructions.push(t.into());
        self
    }

    pub fn field(mut self, f: Field) -> Self {
        self.fields.push(f);
        self
    }

    pub fn get(&self, var: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.var == var)
    }

    /// The first value of a field, if present and not empty.
    pub fn value(&self, var: &str) -> Option<&str> {
        self.get(var)
            .and_then(|f| f.values.first())
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Every non-empty value of a field.
    pub fn values(&self, var: &str) -> Vec<&str> {
        self.get(var)
            .map(|f| {
                f.values
                    .iter()
                    .map(String::as_str)
                    .filter(|v| !v.trim().is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn to_element(&self) -> Element {
        let mut x = Element::new("x", ns::DATA_FORMS).with_attr("type", self.kind.as_str());
        if let Some(t) = &self.title {
            x.push(Element::new("title", ns::DATA_FORMS).with_text(t.clone()));
        }
        for i in &self.instructions {
            x.push(Element::new("instructions", ns::DATA_FORMS).with_text(i.clone()));
        }
        for f in &self.fields {
            x.push(f.to_element());
        }
        for e in &self.extra {
            x.push(e.clone());
        }
        x
    }

    /// Checks a submission against this (shown) form: every required field has a value,
    /// single-valued fields have at most one, JIDs parse, booleans are booleans and list
    /// values are among the options. `Err` carries a text for the user.
    pub fn check_submission(&self, submitted: &Form) -> Result<(), String> {
        if submitted.kind != FormType::Submit {
            return Err(format!(
                "expected a form of type 'submit', got '{}'",
                submitted.kind.as_str()
            ));
        }
        for shown in &self.fields {
            let kind = shown.kind.unwrap_or(FieldType::TextSingle);
            if shown.var.is_empty() || kind == FieldType::Fixed {
                continue;
            }
            let name = shown.label.as_deref().unwrap_or(&shown.var);
            let values: Vec<&str> = submitted
                .get(&shown.var)
                .map(|f| f.values.iter().map(String::as_str).collect())
                .unwrap_or_default();
            let non_empty: Vec<&str> = values
                .iter()
                .copied()
                .filter(|v| !v.trim().is_empty())
                .collect();
            if shown.required && non_empty.is_empty() {
                return Err(format!("{name} is required"));
            }
            if !kind.multi() && values.len() > 1 {
                return Err(format!("{name} takes a single value"));
            }
            for v in &non_empty {
                let problem = match kind {
                    FieldType::JidSingle | FieldType::JidMulti
                        if jid::Jid::new(v.trim()).is_err() =>
                    {
                        "is not a valid JID"
                    }
                    FieldType::Boolean if !matches!(*v, "0" | "1" | "true" | "false") => {
                        "is not a boolean"
                    }
                    FieldType::ListSingle | FieldType::ListMulti
                        if !shown.options.is_empty()
                            && !shown.options.iter().any(|(_, o)| o == v) =>
                    {
                        "is not one of the options"
                    }
                    // FORM_TYPE and other hidden values come back unchanged or not at all.
                    FieldType::Hidden
                        if !shown.values.is_empty() && !shown.values.iter().any(|s| s == v) =>
                    {
                        "is not the value this form carries"
                    }
                    _ => continue,
                };
                return Err(format!("{name}: {v:?} {problem}"));
            }
        }
        Ok(())
    }
}

impl TryFrom<&Element> for Form {
    type Error = StanzaError;

    /// Parses `<x xmlns='jabber:x:data'/>`. Structural problems are `bad-request`.
    fn try_from(x: &Element) -> Result<Form, StanzaError> {
        let bad = |t: &str| StanzaError::bad_request().with_text(t.to_string());
        if !x.is("x", ns::DATA_FORMS) {
            return Err(bad("not a data form"));
        }
        let kind = x
            .attr("type")
            .and_then(FormType::parse)
            .ok_or_else(|| bad("data form without a valid type"))?;
        let mut form = Form::new(kind);
        for c in x.children() {
            if c.ns() != ns::DATA_FORMS {
                form.extra.push(c.clone());
                continue;
            }
            match c.name() {
                "title" => form.title = Some(c.text()),
                "instructions" => form.instructions.push(c.text()),
                "field" => {
                    let kind = match c.attr("type") {
                        Some(t) => {
                            Some(FieldType::parse(t).ok_or_else(|| bad("unknown field type"))?)
                        }
                        None => None,
                    };
                    let var = c.attr("var").unwrap_or("").to_string();
                    if var.is_empty() && kind != Some(FieldType::Fixed) {
                        return Err(bad("a field without 'var'"));
                    }
                    if form.kind == FormType::Submit && form.get(&var).is_some() {
                        return Err(bad("the same field submitted twice"));
                    }
                    let mut field = Field {
                        var,
                        kind,
                        label: c.attr("label").map(str::to_string),
                        desc: c.child_text("desc", ns::DATA_FORMS),
                        required: c.has_child("required", ns::DATA_FORMS),
                        values: Vec::new(),
                        options: Vec::new(),
                    };
                    for v in c.children() {
                        if v.is("value", ns::DATA_FORMS) {
                            field.values.push(v.text());
                        } else if v.is("option", ns::DATA_FORMS) {
                            field.options.push((
                                v.attr("label").unwrap_or("").to_string(),
                                v.child_text("value", ns::DATA_FORMS).unwrap_or_default(),
                            ));
                        }
                    }
                    form.fields.push(field);
                }
                _ => {}
            }
        }
        Ok(form)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown() -> Form {
        Form::typed(FormType::Form, "urn:test")
            .field(Field::new("jid", FieldType::JidSingle).required())
            .field(Field::new("jids", FieldType::JidMulti))
            .field(
                Field::new("max", FieldType::ListSingle)
                    .option("25", "25")
                    .option("none", "none"),
            )
    }

    fn submit(fields: &[(&str, &[&str])]) -> Form {
        let mut f = Form::new(FormType::Submit);
        for (var, vals) in fields {
            f.fields
                .push(Field::new(*var, FieldType::TextSingle).values(vals.iter().copied()));
        }
        f
    }

    #[test]
    fn round_trips_through_xml() {
        let f = shown().title("T").instructions("do it");
        let parsed = Form::try_from(&f.to_element()).unwrap();
        assert_eq!(parsed, f);
    }

    #[test]
    fn checks_required_type_arity_and_options() {
        let s = shown();
        assert!(s.check_submission(&submit(&[("jid", &["a@b"])])).is_ok());
        assert!(s
            .check_submission(&submit(&[("jid", &[""])]))
            .unwrap_err()
            .contains("required"));
        assert!(s
            .check_submission(&submit(&[("jid", &["a@b", "c@d"])]))
            .unwrap_err()
            .contains("single"));
        assert!(s
            .check_submission(&submit(&[("jid", &["@@"])]))
            .unwrap_err()
            .contains("not a valid JID"));
        assert!(s
            .check_submission(&submit(&[("jid", &["a@b"]), ("max", &["7"])]))
            .unwrap_err()
            .contains("options"));
        assert!(s
            .check_submission(&submit(&[("jid", &["a@b"]), ("FORM_TYPE", &["urn:other"])]))
            .is_err());
        let mut not_submit = submit(&[("jid", &["a@b"])]);
        not_submit.kind = FormType::Form;
        assert!(s.check_submission(&not_submit).is_err());
    }

    #[test]
    fn refuses_malformed_forms() {
        let no_type = Element::new("x", ns::DATA_FORMS);
        assert!(Form::try_from(&no_type).is_err());
        let no_var = Element::new("x", ns::DATA_FORMS)
            .with_attr("type", "submit")
            .with_child(Element::new("field", ns::DATA_FORMS));
        assert!(Form::try_from(&no_var).is_err());
        let twice = Element::new("x", ns::DATA_FORMS)
            .with_attr("type", "submit")
            .with_child(Element::new("field", ns::DATA_FORMS).with_attr("var", "a"))
            .with_child(Element::new("field", ns::DATA_FORMS).with_attr("var", "a"));
        assert!(Form::try_from(&twice).is_err());
    }
}
