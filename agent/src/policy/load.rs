//! Loading policy files: multi-document YAML, dispatched by `apiVersion` and `kind`,
//! every error pinned to file, line and column.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, de::DeserializeOwned};

use super::model::{DestinationRule, Inventory, PeerAuthentication, TransportPolicy};

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
    pub transport_policies: Vec<Located<TransportPolicy>>,
    pub inventories: Vec<Located<Inventory>>,
}

impl PolicyFiles {
    pub fn is_empty(&self) -> bool {
        self.peer_authentications.is_empty()
            && self.destination_rules.is_empty()
            && self.transport_policies.is_empty()
            && self.inventories.is_empty()
    }
}

const PA_VERSIONS: &[&str] = &["security.istio.io/v1", "security.istio.io/v1beta1"];
const DR_VERSIONS: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];
const OWN_VERSIONS: &[&str] = &["mtls-auditor.io/v1alpha1"];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
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

/// yaml_serde's message without its trailing " at line L column C".
fn strip_location(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    }
}

fn yaml_error(file: &Path, doc: &Document<'_>, err: &yaml_serde::Error) -> Diagnostic {
    let text = err.to_string();
    let (line, column, message) = match err.location() {
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

/// Parses one file's text into `out`.
pub fn load_text(file: &Path, text: &str, out: &mut PolicyFiles, diags: &mut Vec<Diagnostic>) {
    for doc in documents(text) {
        let meta: TypeMeta = match parse(file, &doc) {
            Ok(m) => m,
            Err(d) => {
                diags.push(d);
                continue;
            }
        };
        let (Some(api), Some(kind)) = (meta.api_version.as_deref(), meta.kind.as_deref()) else {
            let missing = if meta.api_version.is_none() {
                "apiVersion"
            } else {
                "kind"
            };
            diags.push(Diagnostic {
                severity: Severity::Error,
                file: file.to_path_buf(),
                line: doc.first_line,
                column: 1,
                message: format!("missing field `{missing}`"),
            });
            continue;
        };
        let check_version = |allowed: &[&str], diags: &mut Vec<Diagnostic>| -> bool {
            if allowed.contains(&api) {
                return true;
            }
            let (line, column) = locate(doc.text, doc.first_line, api);
            diags.push(Diagnostic {
                severity: Severity::Error,
                file: file.to_path_buf(),
                line,
                column,
                message: format!(
                    "apiVersion: `{api}` is not a version of {kind}; expected one of {}",
                    quote_list(allowed)
                ),
            });
            false
        };
        match kind {
            "PeerAuthentication" => {
                if check_version(PA_VERSIONS, diags) {
                    match parse::<PeerAuthentication>(file, &doc) {
                        Ok(o) => {
                            out.peer_authentications.push(Located {
                                object: o,
                                file: file.to_path_buf(),
                                line: doc.first_line,
                            });
                        }
                        Err(d) => diags.push(d),
                    }
                }
            }
            "DestinationRule" => {
                if check_version(DR_VERSIONS, diags) {
                    match parse::<DestinationRule>(file, &doc) {
                        Ok(o) => {
                            out.destination_rules.push(Located {
                                object: o,
                                file: file.to_path_buf(),
                                line: doc.first_line,
                            });
                        }
                        Err(d) => diags.push(d),
                    }
                }
            }
            "TransportPolicy" => {
                if check_version(OWN_VERSIONS, diags) {
                    match parse::<TransportPolicy>(file, &doc) {
                        Ok(o) => {
                            out.transport_policies.push(Located {
                                object: o,
                                file: file.to_path_buf(),
                                line: doc.first_line,
                            });
                        }
                        Err(d) => diags.push(d),
                    }
                }
            }
            "Inventory" => {
                if check_version(OWN_VERSIONS, diags) {
                    match parse::<Inventory>(file, &doc) {
                        Ok(o) => {
                            out.inventories.push(Located {
                                object: o,
                                file: file.to_path_buf(),
                                line: doc.first_line,
                            });
                        }
                        Err(d) => diags.push(d),
                    }
                }
            }
            other => {
                let (line, column) = locate(doc.text, doc.first_line, other);
                diags.push(Diagnostic {
                    severity: Severity::Warning,
                    file: file.to_path_buf(),
                    line,
                    column,
                    message: format!(
                        "kind `{other}` is not a policy kind and was skipped (expected one of {})",
                        quote_list(&[
                            "PeerAuthentication",
                            "DestinationRule",
                            "TransportPolicy",
                            "Inventory"
                        ])
                    ),
                });
            }
        }
    }
}

pub(crate) fn quote_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
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
}
