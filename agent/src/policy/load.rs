//! Loading policy files: multi-document YAML, dispatched by `apiVersion` and `kind`,
//! every error pinned to file, line and column.
//!
//! Hostile or careless input is refused before the YAML parser sees it, with a
//! message that says what is wrong: a file that is not a regular file or is too
//! large ([`crate::input`]), a document larger than [`MAX_DOCUMENT`], flow
//! collections nested deeper than [`MAX_DEPTH`] (the parser's time grows with the
//! square of the depth), control characters (NUL included, with their line). A
//! UTF-8 byte order mark is skipped; tabs in indentation, sequences where a word
//! is expected and documents that are not objects get messages that say so.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, de::DeserializeOwned};

pub(crate) use super::model::quote_list;
use super::model::{
    AuthorizationPolicy, ConfigMap, DestinationRule, Inventory, LinkerdConfig, MeshConfig,
    MeshTlsAuthentication, Namespace, NetworkAuthentication, PeerAuthentication, Server,
    ServiceEntry, TransportPolicy,
};

/// Largest YAML document (one object) read: far above any real policy object
/// (the Kubernetes API stores objects up to about 1.5 MiB) and small enough that
/// the parser's working memory stays bounded (about 25 times the document).
pub const MAX_DOCUMENT: usize = 4 * 1024 * 1024;

/// Deepest nesting of flow collections (`{...}`, `[...]`) in a document. Policy
/// objects nest a handful of levels.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One finding about a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based; 0 when the finding is about the whole file.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        if self.line == 0 {
            write!(f, "{}: {sev}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {sev}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// A loaded object and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub object: T,
    pub file: PathBuf,
    /// First line of its YAML document.
    pub line: usize,
}

/// Everything the policy files declare.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyFiles {
    pub peer_authentications: Vec<Located<PeerAuthentication>>,
    pub destination_rules: Vec<Located<DestinationRule>>,
    pub service_entries: Vec<Located<ServiceEntry>>,
    pub transport_policies: Vec<Located<TransportPolicy>>,
    pub inventories: Vec<Located<Inventory>>,
    /// Istio's mesh config (`ConfigMap` `istio`, key `mesh`), parsed.
    pub mesh_configs: Vec<Located<MeshConfig>>,
    /// Linkerd's policy objects.
    pub servers: Vec<Located<Server>>,
    pub authorization_policies: Vec<Located<AuthorizationPolicy>>,
    pub meshtls_authentications: Vec<Located<MeshTlsAuthentication>>,
    pub network_authentications: Vec<Located<NetworkAuthentication>>,
    /// Namespaces (their `config.linkerd.io/default-inbound-policy` annotation).
    pub namespaces: Vec<Located<Namespace>>,
    /// Linkerd's control-plane values (`ConfigMap` `linkerd-config`, key `values`).
    pub linkerd_configs: Vec<Located<LinkerdConfig>>,
}

impl PolicyFiles {
    pub fn is_empty(&self) -> bool {
        self.object_count() == 0
    }

    /// How many objects were loaded.
    pub fn object_count(&self) -> usize {
        self.peer_authentications.len()
            + self.destination_rules.len()
            + self.service_entries.len()
            + self.transport_policies.len()
            + self.inventories.len()
            + self.mesh_configs.len()
            + self.linkerd_object_count()
    }

    /// How many of Linkerd's objects were loaded (policy kinds, Namespaces and
    /// the control plane's values).
    pub fn linkerd_object_count(&self) -> usize {
        self.servers.len()
            + self.authorization_policies.len()
            + self.meshtls_authentications.len()
            + self.network_authentications.len()
            + self.namespaces.len()
            + self.linkerd_configs.len()
    }
}

const PA_VERSIONS: &[&str] = &["security.istio.io/v1", "security.istio.io/v1beta1"];
const NET_VERSIONS: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];
const OWN_VERSIONS: &[&str] = &["mtls-auditor.io/v1alpha1"];
const SERVER_VERSIONS: &[&str] = &[
    "policy.linkerd.io/v1beta3",
    "policy.linkerd.io/v1beta2",
    "policy.linkerd.io/v1beta1",
    "policy.linkerd.io/v1alpha1",
];
const LINKERD_AUTH_VERSIONS: &[&str] = &["policy.linkerd.io/v1alpha1"];
const CORE_VERSIONS: &[&str] = &["v1"];
const KINDS: &[&str] = &[
    "PeerAuthentication",
    "DestinationRule",
    "ServiceEntry",
    "Server",
    "AuthorizationPolicy",
    "MeshTLSAuthentication",
    "NetworkAuthentication",
    "Namespace",
    "TransportPolicy",
    "Inventory",
    "ConfigMap",
];

/// `apiVersion` and `kind` of a document, which must be a mapping.
struct TypeMeta {
    api_version: Option<String>,
    kind: Option<String>,
    /// The document is `null` (or `~`).
    null: bool,
}

impl<'de> Deserialize<'de> for TypeMeta {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const NOT_OBJECT: &str = "a policy document must be a Kubernetes object (a mapping with `apiVersion` and `kind`)";
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TypeMeta;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping with `apiVersion` and `kind`")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<TypeMeta, A::Error> {
                let mut out = TypeMeta {
                    api_version: None,
                    kind: None,
                    null: false,
                };
                while let Some(key) = m.next_key::<KeyName>()? {
                    match key.0.as_deref() {
                        Some("apiVersion") => out.api_version = Some(m.next_value::<Word>()?.0),
                        Some("kind") => out.kind = Some(m.next_value::<Word>()?.0),
                        _ => {
                            m.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<TypeMeta, E> {
                Ok(TypeMeta {
                    api_version: None,
                    kind: None,
                    null: true,
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TypeMeta, E> {
                let shown: String = v.chars().take(40).collect();
                Err(E::custom(format!(
                    "{NOT_OBJECT}, not a string ({:?}{})",
                    shown,
                    if shown.len() < v.len() { "..." } else { "" }
                )))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<TypeMeta, E> {
                Err(E::custom(format!("{NOT_OBJECT}, not a boolean ({v})")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<TypeMeta, E> {
                Err(E::custom(format!("{NOT_OBJECT}, not a number ({v})")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<TypeMeta, E> {
                Err(E::custom(format!("{NOT_OBJECT}, not a number ({v})")))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<TypeMeta, E> {
                Err(E::custom(format!("{NOT_OBJECT}, not a number ({v})")))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<TypeMeta, A::Error> {
                Err(serde::de::Error::custom(format!(
                    "{NOT_OBJECT}, not a list (a `kind: List` has its objects under `items`; put each object in its own `---` document)"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A mapping key, when it is a string.
struct KeyName(Option<String>);

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = KeyName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyName, E> {
                Ok(KeyName(Some(v.to_owned())))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<KeyName, E> {
                Ok(KeyName(None))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<KeyName, E> {
                Ok(KeyName(None))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<KeyName, E> {
                Ok(KeyName(None))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<KeyName, E> {
                Ok(KeyName(None))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<KeyName, E> {
                Ok(KeyName(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string value (`apiVersion`, `kind`).
struct Word(String);

impl<'de> Deserialize<'de> for Word {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Word;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Word, E> {
                Ok(Word(v.to_owned()))
            }
        }
        d.deserialize_str(V)
    }
}

/// A YAML document of a file: its text and the line it starts on.
struct Document<'a> {
    text: &'a str,
    first_line: usize,
}

/// Splits a multi-document YAML stream on `---` / `...` marker lines.
fn documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        let marker = trimmed == "---"
            || trimmed.starts_with("--- ")
            || trimmed.starts_with("---\t")
            || trimmed == "...";
        if marker {
            docs.push(Document {
                text: &text[start..offset],
                first_line: start_line,
            });
            // Content after `--- ` on the marker line belongs to the next document;
            // blank it out by starting after the marker line.
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push(Document {
        text: &text[start..],
        first_line: start_line,
    });
    docs.into_iter()
        .filter(|d| {
            d.text
                .lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// Line (1-based, relative to `text`) and column of byte offset `at`.
fn position(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Control characters YAML does not allow (tab, line feed and carriage return
/// are allowed; so is NEL).
fn forbidden(c: char) -> bool {
    (c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\u{85}')) || c == '\u{feff}'
}

/// What makes a document unsafe or impossible to parse, found before the parser
/// runs: control characters, and flow collections nested deeper than
/// [`MAX_DEPTH`]. Returns the offset within the document and the message.
fn prescan(text: &str) -> Option<(usize, String)> {
    #[derive(PartialEq)]
    enum Quote {
        No,
        Single,
        Double,
    }
    let mut quote = Quote::No;
    let mut depth = 0usize;
    let mut comment = false;
    let mut prev = '\n';
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if forbidden(c) {
            let what = if c == '\u{feff}' {
                "a byte order mark (U+FEFF) inside the text".to_owned()
            } else {
                format!("control character U+{:04X}", u32::from(c))
            };
            return Some((
                i,
                format!(
                    "{what} is not allowed in YAML (only tabs, line breaks and printable characters are)"
                ),
            ));
        }
        if c == '\n' {
            comment = false;
            prev = c;
            continue;
        }
        if comment {
            continue;
        }
        match quote {
            Quote::Double => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    quote = Quote::No;
                }
            }
            Quote::Single => {
                if c == '\'' {
                    quote = Quote::No;
                }
            }
            Quote::No => match c {
                '#' if prev.is_whitespace() => comment = true,
                '"' if depth > 0
                    || matches!(prev, ' ' | '\t' | ':' | '-' | '[' | '{' | ',' | '\n') =>
                {
                    quote = Quote::Double;
                }
                '\'' if depth > 0
                    || matches!(prev, ' ' | '\t' | ':' | '-' | '[' | '{' | ',' | '\n') =>
                {
                    quote = Quote::Single;
                }
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Some((
                            i,
                            format!(
                                "flow collections (`{{...}}`, `[...]`) nested more than {MAX_DEPTH} levels deep: no policy object nests so deep"
                            ),
                        ));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        prev = c;
    }
    None
}

/// yaml_serde's message without its trailing " at line L column C".
fn strip_location(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    }
}

fn yaml_error(file: &Path, doc: &Document<'_>, err: &yaml_serde::Error) -> Diagnostic {
    let text = err.to_string();
    let (line, column, mut message) = match err.location() {
        Some(l) => {
            // The parser's own "at line L column C" is relative to the document; the
            // diagnostic carries the position in the file instead.
            let rel = format!(" at line {} column {}", l.line(), l.column());
            (
                doc.first_line + l.line() - 1,
                l.column(),
                text.replace(&rel, ""),
            )
        }
        None => (doc.first_line, 1, strip_location(&text).to_owned()),
    };
    // A tab where indentation belongs: libyaml says "found character that cannot
    // start any token", which names neither the tab nor the rule.
    let rel_line = line.saturating_sub(doc.first_line);
    if let Some(src) = doc.text.lines().nth(rel_line)
        && src
            .chars()
            .take_while(|c| c.is_whitespace())
            .any(|c| c == '\t')
    {
        message = "a tab in the indentation: YAML indents with spaces only".into();
    }
    Diagnostic {
        severity: Severity::Error,
        file: file.to_path_buf(),
        line,
        column,
        message,
    }
}

/// Line and column of the first occurrence of `needle` in a document, for values
/// whose errors are found after parsing.
pub(crate) fn locate(text: &str, first_line: usize, needle: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        if let Some(col) = line.find(needle) {
            return (first_line + i, col + 1);
        }
    }
    (first_line, 1)
}

fn parse<T: DeserializeOwned>(file: &Path, doc: &Document<'_>) -> Result<T, Diagnostic> {
    yaml_serde::from_str::<T>(doc.text).map_err(|e| yaml_error(file, doc, &e))
}

/// Reads `paths` (files, or directories whose `*.yaml`/`*.yml` are read in name
/// order) and returns what loaded plus every finding.
pub fn load(paths: &[PathBuf]) -> (PolicyFiles, Vec<Diagnostic>) {
    let mut out = PolicyFiles::default();
    let mut diags = Vec::new();
    for path in expand(paths, &mut diags) {
        match crate::input::read_text(&path, crate::input::MAX_TEXT_FILE) {
            Ok(text) => load_text(&path, &text, &mut out, &mut diags),
            Err(e) => {
                let (line, column) = match &e {
                    crate::input::InputError::NotUtf8 { line, column, .. } => (*line, *column),
                    _ => (0, 0),
                };
                // The error names the path itself; the diagnostic prints it first.
                let message = e.to_string();
                let message = message
                    .strip_prefix(&format!("{}: ", path.display()))
                    .unwrap_or(&message);
                diags.push(Diagnostic {
                    severity: Severity::Error,
                    file: path.clone(),
                    line,
                    column,
                    message: format!("cannot read: {message}"),
                });
            }
        }
    }
    super::validate::validate(&out, &mut diags);
    diags.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    (out, diags)
}

/// [`load`] of text already in memory (named `file` in findings).
pub fn load_str(file: &Path, text: &str) -> (PolicyFiles, Vec<Diagnostic>) {
    let mut out = PolicyFiles::default();
    let mut diags = Vec::new();
    load_text(file, text, &mut out, &mut diags);
    super::validate::validate(&out, &mut diags);
    diags.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    (out, diags)
}

fn expand(paths: &[PathBuf], diags: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            match std::fs::read_dir(p) {
                Ok(entries) => {
                    let mut inner: Vec<PathBuf> = entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                        .collect();
                    inner.sort();
                    if inner.is_empty() {
                        diags.push(Diagnostic {
                            severity: Severity::Warning,
                            file: p.clone(),
                            line: 0,
                            column: 0,
                            message: "directory has no *.yaml or *.yml file: no policy from here"
                                .into(),
                        });
                    }
                    files.extend(inner);
                }
                Err(e) => diags.push(Diagnostic {
                    severity: Severity::Error,
                    file: p.clone(),
                    line: 0,
                    column: 0,
                    message: format!("cannot read directory: {e}"),
                }),
            }
        } else {
            files.push(p.clone());
        }
    }
    files
}

fn push<T>(list: &mut Vec<Located<T>>, object: T, file: &Path, doc: &Document<'_>) {
    list.push(Located {
        object,
        file: file.to_path_buf(),
        line: doc.first_line,
    });
}

/// Parses one file's text into `out`.
pub fn load_text(file: &Path, text: &str, out: &mut PolicyFiles, diags: &mut Vec<Diagnostic>) {
    // A UTF-8 byte order mark may start a YAML stream; libyaml would take the rest
    // for a second document.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let docs = documents(text);
    if docs.is_empty() {
        diags.push(Diagnostic {
            severity: Severity::Warning,
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            message: if text.trim().is_empty() {
                "empty file: no policy objects".into()
            } else {
                "no YAML documents (only comments and `---`): no policy objects".into()
            },
        });
    }
    for doc in docs {
        load_document(file, &doc, out, diags);
    }
}

fn load_document(
    file: &Path,
    doc: &Document<'_>,
    out: &mut PolicyFiles,
    diags: &mut Vec<Diagnostic>,
) {
    let error = |line: usize, column: usize, message: String| Diagnostic {
        severity: Severity::Error,
        file: file.to_path_buf(),
        line,
        column,
        message,
    };
    if doc.text.len() > MAX_DOCUMENT {
        diags.push(error(
            doc.first_line,
            1,
            format!(
                "this YAML document is {} bytes, more than the {MAX_DOCUMENT} one policy object may have: split it into several objects (`---` between them)",
                doc.text.len()
            ),
        ));
        return;
    }
    if let Some((at, message)) = prescan(doc.text) {
        let (line, column) = position(doc.text, at);
        diags.push(error(doc.first_line + line - 1, column, message));
        return;
    }
    let meta: TypeMeta = match parse(file, doc) {
        Ok(m) => m,
        Err(d) => {
            diags.push(d);
            return;
        }
    };
    if meta.null {
        diags.push(Diagnostic {
            severity: Severity::Warning,
            file: file.to_path_buf(),
            line: doc.first_line,
            column: 1,
            message: "an empty (null) YAML document: skipped".into(),
        });
        return;
    }
    let (Some(api), Some(kind)) = (meta.api_version.as_deref(), meta.kind.as_deref()) else {
        let missing = if meta.api_version.is_none() {
            "apiVersion"
        } else {
            "kind"
        };
        diags.push(error(
            doc.first_line,
            1,
            format!("missing field `{missing}`"),
        ));
        return;
    };
    let check_version = |allowed: &[&str], diags: &mut Vec<Diagnostic>| -> bool {
        if allowed.contains(&api) {
            return true;
        }
        let (line, column) = locate(doc.text, doc.first_line, api);
        diags.push(error(
            line,
            column,
            format!(
                "apiVersion: `{api}` is not a version of {kind}; expected one of {}",
                quote_list(allowed)
            ),
        ));
        false
    };
    macro_rules! load_kind {
        ($versions:expr, $ty:ty, $list:expr) => {
            if check_version($versions, diags) {
                match parse::<$ty>(file, doc) {
                    Ok(o) => {
                        super::validate::object(file, doc.text, doc.first_line, &o, diags);
                        push(&mut $list, o, file, doc);
                    }
                    Err(d) => diags.push(d),
                }
            }
        };
    }
    match kind {
        "PeerAuthentication" => {
            load_kind!(PA_VERSIONS, PeerAuthentication, out.peer_authentications)
        }
        "DestinationRule" => load_kind!(NET_VERSIONS, DestinationRule, out.destination_rules),
        "ServiceEntry" => load_kind!(NET_VERSIONS, ServiceEntry, out.service_entries),
        "TransportPolicy" => load_kind!(OWN_VERSIONS, TransportPolicy, out.transport_policies),
        "Inventory" => load_kind!(OWN_VERSIONS, Inventory, out.inventories),
        "Server" => load_kind!(SERVER_VERSIONS, Server, out.servers),
        "AuthorizationPolicy" => load_kind!(
            LINKERD_AUTH_VERSIONS,
            AuthorizationPolicy,
            out.authorization_policies
        ),
        "MeshTLSAuthentication" => load_kind!(
            LINKERD_AUTH_VERSIONS,
            MeshTlsAuthentication,
            out.meshtls_authentications
        ),
        "NetworkAuthentication" => load_kind!(
            LINKERD_AUTH_VERSIONS,
            NetworkAuthentication,
            out.network_authentications
        ),
        "Namespace" => load_kind!(CORE_VERSIONS, Namespace, out.namespaces),
        "ServerAuthorization" | "HTTPRoute" | "GRPCRoute" if api.contains("linkerd.io") || api.starts_with("gateway.networking.k8s.io/") => {
            diags.push(skipped(
                file,
                doc,
                kind,
                "not read by the auditor (it judges connections; Linkerd's per-request and legacy kinds are not interpreted, see docs/policy.md)",
            ));
        }
        "ConfigMap" if api == "v1" => match parse::<ConfigMap>(file, doc) {
            Ok(cm) if is_mesh_config(&cm) => load_mesh_config(file, doc, &cm, out, diags),
            Ok(cm) if cm.metadata.name == "linkerd-config" && cm.data.contains_key("values") => {
                super::validate_linkerd::load_linkerd_config(file, doc.text, doc.first_line, &cm, out, diags);
            }
            Ok(cm) => diags.push(skipped(
                file,
                doc,
                &format!("ConfigMap {}", cm.metadata.name),
                "it is neither Istio's mesh config (`istio` with a `mesh` key) nor Linkerd's (`linkerd-config` with a `values` key)",
            )),
            Err(d) => diags.push(d),
        },
        other => diags.push(skipped(
            file,
            doc,
            other,
            &format!("not a policy kind (expected one of {})", quote_list(KINDS)),
        )),
    }
}

fn skipped(file: &Path, doc: &Document<'_>, what: &str, why: &str) -> Diagnostic {
    let needle = what.rsplit(' ').next().unwrap_or(what);
    let (line, column) = locate(doc.text, doc.first_line, needle);
    Diagnostic {
        severity: Severity::Warning,
        file: file.to_path_buf(),
        line,
        column,
        message: if what.contains(' ') {
            format!("{what} was skipped: {why}")
        } else {
            format!("kind `{what}` is {why} and was skipped")
        },
    }
}

/// Istio's mesh config map: `istio` (or `istio-<revision>`) with a `mesh` key.
fn is_mesh_config(cm: &ConfigMap) -> bool {
    let n = &cm.metadata.name;
    (n == "istio" || n.starts_with("istio-")) && cm.data.contains_key("mesh")
}

fn load_mesh_config(
    file: &Path,
    doc: &Document<'_>,
    cm: &ConfigMap,
    out: &mut PolicyFiles,
    diags: &mut Vec<Diagnostic>,
) {
    let Some(mesh) = cm.data.get("mesh") else {
        return;
    };
    let (line, column) = locate(doc.text, doc.first_line, "mesh:");
    match yaml_serde::from_str::<Option<MeshConfig>>(mesh) {
        Ok(m) => out.mesh_configs.push(Located {
            object: m.unwrap_or_default(),
            file: file.to_path_buf(),
            line,
        }),
        Err(e) => diags.push(Diagnostic {
            severity: Severity::Error,
            file: file.to_path_buf(),
            line,
            column,
            message: format!("data.mesh (MeshConfig): {}", strip_location(&e.to_string())),
        }),
    }
}

/// Where a finding about an object of the Kubernetes API points: the object, as
/// `kubernetes:KIND/NAMESPACE/NAME` (the same name the policy's reasons use).
pub fn cluster_object_name(kind: &str, namespace: &str, name: &str) -> PathBuf {
    PathBuf::from(format!("kubernetes:{kind}/{namespace}/{name}"))
}

/// An object read from the Kubernetes API, checked as a file's would be: written
/// out as YAML, then parsed and validated from that text, so that every finding
/// names the object ([`cluster_object_name`]), the field (`spec.targetRef: ...`)
/// and the line of that rendering. `Err` with the findings when it has errors (the
/// caller ignores the object, as Linkerd's policy controller ignores what it
/// cannot index); `Ok` with its warnings otherwise.
pub(crate) fn cluster_object<T>(
    kind: &str,
    object: &serde_json::Value,
) -> Result<(T, Vec<Diagnostic>), Vec<Diagnostic>>
where
    T: DeserializeOwned + super::validate::Checked,
{
    let meta = &object["metadata"];
    let file = cluster_object_name(
        kind,
        meta["namespace"].as_str().unwrap_or("default"),
        meta["name"].as_str().unwrap_or(""),
    );
    // Server-side bookkeeping says nothing about the policy and only lengthens
    // the rendering the line numbers point into.
    let mut object = object.clone();
    if let Some(m) = object
        .get_mut("metadata")
        .and_then(serde_json::Value::as_object_mut)
    {
        m.remove("managedFields");
    }
    let text = yaml_serde::to_string(&object).map_err(|e| {
        vec![Diagnostic {
            severity: Severity::Error,
            file: file.clone(),
            line: 0,
            column: 0,
            message: format!("cannot render the object as YAML: {e}"),
        }]
    })?;
    let doc = Document {
        text: &text,
        first_line: 1,
    };
    let parsed: T = parse(&file, &doc).map_err(|d| vec![d])?;
    let mut diags = Vec::new();
    super::validate::object(&file, &text, 1, &parsed, &mut diags);
    if diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(diags);
    }
    Ok((parsed, diags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_keeps_line_numbers() {
        let text = "# header\n---\na: 1\n---\n\n---\nb: 2\nc: 3\n";
        let docs = documents(text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].first_line, 3);
        assert_eq!(docs[1].first_line, 7);
        assert!(docs[1].text.starts_with("b: 2"));
    }

    #[test]
    fn strips_the_location_suffix() {
        assert_eq!(
            strip_location("spec: unknown field `x` at line 3 column 5"),
            "spec: unknown field `x`"
        );
    }

    fn messages(text: &str) -> Vec<String> {
        let mut files = PolicyFiles::default();
        let mut diags = Vec::new();
        load_text(Path::new("t.yaml"), text, &mut files, &mut diags);
        diags.iter().map(ToString::to_string).collect()
    }

    const PA: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: p\n  namespace: default\n";

    #[test]
    fn hostile_and_careless_yaml_gets_messages_that_say_what_is_wrong() {
        let cases: &[(String, &str)] = &[
            (
                format!("{PA}spec:\n  mtls:\n    mode: [STRICT]\n"),
                "t.yaml:8:11: error: spec.mtls.mode: invalid type: sequence, expected one of `UNSET`, `DISABLE`, `PERMISSIVE`, `STRICT`",
            ),
            (
                "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n\tname: p\n".into(),
                "t.yaml:4:1: error: a tab in the indentation: YAML indents with spaces only",
            ),
            (
                format!("{PA}  labels:\n    a: \"x\0y\"\n"),
                "t.yaml:7:10: error: control character U+0000 is not allowed in YAML (only tabs, line breaks and printable characters are)",
            ),
            (
                "just a string\n".into(),
                "t.yaml:1:1: error: a policy document must be a Kubernetes object (a mapping with `apiVersion` and `kind`), not a string (\"just a string\")",
            ),
            (
                "- a\n- b\n".into(),
                "t.yaml:1:1: error: a policy document must be a Kubernetes object (a mapping with `apiVersion` and `kind`), not a list (a `kind: List` has its objects under `items`; put each object in its own `---` document)",
            ),
            ("".into(), "t.yaml: warning: empty file: no policy objects"),
            (
                "# nothing\n---\n".into(),
                "t.yaml: warning: no YAML documents (only comments and `---`): no policy objects",
            ),
            (
                format!("{PA}spec: {}{}\n", "{a: ".repeat(70), "}".repeat(70)),
                "t.yaml:6:263: error: flow collections (`{...}`, `[...]`) nested more than 64 levels deep: no policy object nests so deep",
            ),
        ];
        for (text, want) in cases {
            let got = messages(text);
            assert_eq!(got.first().map(String::as_str), Some(*want), "{got:?}");
        }
        // A byte order mark at the start is skipped.
        assert_eq!(messages(&format!("\u{feff}{PA}")), Vec::<String>::new());
        // Brackets inside quotes and comments do not count as nesting.
        let quoted = format!(
            "{PA}  labels:\n    a: \"{}\" # {}\n",
            "[".repeat(100),
            "{".repeat(100)
        );
        assert_eq!(messages(&quoted), Vec::<String>::new());
    }
}
