//! The XEP catalogue (`xep/xeps.toml`), the modules' own declarations, the disco features
//! the server advertises, and the DOAP file must all tell the same story.

use serde::Deserialize;
use starling::module::Registry;
use starling::xml::reader::parse_element;
use starling::xml::Element;
use starling::{services, Config};
use std::collections::BTreeSet;
use std::path::Path;

#[derive(Deserialize)]
struct Catalogue {
    xep: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    number: String,
    #[allow(dead_code)]
    name: String,
    version: String,
    status: String,
    features: Vec<String>,
    tests: Vec<String>,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn catalogue() -> Catalogue {
    let text = std::fs::read_to_string(root().join("xep/xeps.toml")).expect("xep/xeps.toml");
    toml::from_str(&text).expect("catalogue parses")
}

fn full_registry() -> Registry {
    let mut config = Config::default();
    // Optional features are advertised only when enabled: turn them all on here.
    config.c2s.allow_registration = true;
    let mut reg = Registry::default();
    services::register_all(&mut reg, &config);
    reg
}

#[test]
fn catalogue_matches_module_declarations() {
    let cat: BTreeSet<(String, String)> = catalogue()
        .xep
        .into_iter()
        .map(|e| (e.number, e.version))
        .collect();
    let declared: BTreeSet<(String, String)> = full_registry()
        .specs()
        .iter()
        .map(|s| (s.number.to_string(), s.version.to_string()))
        .collect();
    assert_eq!(
        cat, declared,
        "xep/xeps.toml vs Registry::spec declarations"
    );
}

#[test]
fn catalogue_features_match_disco() {
    let cat: BTreeSet<String> = catalogue()
        .xep
        .into_iter()
        .flat_map(|e| e.features)
        .collect();
    let advertised: BTreeSet<String> = full_registry()
        .server_features()
        .map(str::to_string)
        .collect();
    assert_eq!(cat, advertised, "catalogue features vs server disco#info");
}

#[test]
fn every_entry_names_existing_tests_and_a_known_status() {
    for e in catalogue().xep {
        assert!(
            e.status == "complete" || e.status == "partial",
            "{}: status {}",
            e.number,
            e.status
        );
        assert!(!e.tests.is_empty(), "{} has no tests", e.number);
        for t in &e.tests {
            assert!(
                root().join(t).exists(),
                "{}: test {t} does not exist",
                e.number
            );
        }
    }
}

fn find_all<'a>(el: &'a Element, name: &str, out: &mut Vec<&'a Element>) {
    for c in el.children() {
        if c.name() == name {
            out.push(c);
        }
        find_all(c, name, out);
    }
}

#[test]
fn doap_lists_the_catalogue() {
    let doap = std::fs::read(root().join("xep/doap.xml")).expect("xep/doap.xml");
    let rdf = parse_element(&doap).expect("doap.xml is well-formed");
    let mut supported = Vec::new();
    find_all(&rdf, "SupportedXep", &mut supported);
    let xmpp = "https://linkmauve.fr/ns/xmpp-doap#";
    let rdf_ns = "http://www.w3.org/1999/02/22-rdf-syntax-ns#";
    let in_doap: BTreeSet<(String, String, String)> = supported
        .iter()
        .map(|s| {
            let url = s
                .child("xep", xmpp)
                .and_then(|x| x.attr(&format!("{{{rdf_ns}}}resource")))
                .expect("xep resource");
            let number = url
                .trim_end_matches(".html")
                .rsplit("xep-")
                .next()
                .expect("number")
                .to_string();
            (
                number,
                s.child_text("version", xmpp).expect("version"),
                s.child_text("status", xmpp).expect("status"),
            )
        })
        .collect();
    let cat: BTreeSet<(String, String, String)> = catalogue()
        .xep
        .into_iter()
        .filter(|e| !e.number.starts_with("RFC"))
        .map(|e| (e.number, e.version, e.status))
        .collect();
    assert_eq!(in_doap, cat, "xep/doap.xml vs xep/xeps.toml");
}
