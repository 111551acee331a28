//! A config file as kubeadm reads it (its `SplitYAMLDocuments`): YAML documents, each a mapping
//! with apiVersion and kind, no kind twice; and where each came from, so that every later error
//! names the file, the field and its line.

use serde::Deserialize;
use serde_yaml::Mapping;

use super::{position, ConfigError};

/// Where the documents of a config file came from.
pub(crate) struct Origin {
    pub file: String,
    pub index: position::Index,
    /// The document each kind came from: (kind, document number).
    pub docs: Vec<(String, usize)>,
    /// Fields set by flags: dotted field path (with kind prefix) → flag name.
    pub flags: Vec<(String, &'static str)>,
}

/// One document of a config file.
pub(crate) struct Document {
    /// Its number in the file, from 0 (empty documents count).
    pub number: usize,
    pub api_version: String,
    pub kind: String,
    /// The whole document.
    pub body: Mapping,
}

impl Document {
    /// The document without apiVersion and kind, for its typed struct.
    pub fn fields(mut self) -> Mapping {
        self.body.remove("apiVersion");
        self.body.remove("kind");
        self.body
    }
}

impl Origin {
    pub fn new(file: &str, text: &str) -> Origin {
        Origin {
            file: file.to_string(),
            index: position::Index::build(text),
            docs: Vec::new(),
            flags: Vec::new(),
        }
    }

    /// The document `kind` came from.
    pub fn doc(&self, kind: &str) -> Option<usize> {
        self.docs.iter().find(|(k, _)| k == kind).map(|(_, d)| *d)
    }

    /// An error at `field` (`Kind.path.to.field`): the flag that set it, or its line in the file
    /// (or the line of its nearest ancestor there).
    pub fn error(&self, field: &str, message: impl Into<String>) -> ConfigError {
        if let Some((_, flag)) = self.flags.iter().find(|(f, _)| f == field) {
            return ConfigError {
                file: format!("flag --{flag}"),
                field: field.into(),
                line: None,
                column: None,
                message: message.into(),
            };
        }
        let pos = self
            .split(field)
            .and_then(|(doc, rest)| self.index.find(doc, rest));
        self.at(pos, field, message)
    }

    /// Where `field` was given, exactly: `file:line:column`, `flag --name`, or None (a default).
    pub fn source_of(&self, field: &str) -> Option<String> {
        if let Some((_, flag)) = self.flags.iter().find(|(f, _)| f == field) {
            return Some(format!("flag --{flag}"));
        }
        let (doc, rest) = self.split(field)?;
        let (line, column) = self.index.get(doc, rest)?;
        Some(format!("{}:{line}:{column}", self.file))
    }

    /// `Kind.path` → (the document of Kind, path).
    fn split<'f>(&self, field: &'f str) -> Option<(usize, &'f str)> {
        let (kind, rest) = field.split_once('.')?;
        Some((self.doc(kind)?, rest))
    }

    /// An error at a (line, column) of this file.
    pub fn at(
        &self,
        pos: Option<(usize, usize)>,
        field: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            field: field.into(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            message: message.into(),
        }
    }

    /// An error at `path` of document `doc`, the field named as `path`.
    pub fn error_in(&self, doc: usize, path: &str, message: &str) -> ConfigError {
        self.at(self.index.find(doc, path), path, message)
    }

    /// An error about a whole document (or, with None, the whole file): at its start.
    pub fn doc_error(&self, doc: Option<usize>, field: &str, message: &str) -> ConfigError {
        let pos = doc.and_then(|d| self.index.find(d, "")).or(Some((1, 1)));
        self.at(pos, field, message)
    }
}

/// The documents of `text`, in order. An empty document (nothing, or only comments) is passed
/// over; any other must be a mapping with apiVersion and kind, and no kind may come twice.
pub(crate) fn split(origin: &Origin, text: &str) -> Result<Vec<Document>, ConfigError> {
    let mut documents: Vec<Document> = Vec::new();
    for (number, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(de).map_err(|e| yaml_error(origin, &e))?;
        let body = match value {
            serde_yaml::Value::Null => continue,
            serde_yaml::Value::Mapping(m) => m,
            _ => {
                return Err(origin.doc_error(
                    Some(number),
                    "kind",
                    "a document must be a YAML mapping with apiVersion and kind",
                ))
            }
        };
        let take = |key: &str| match body.get(key) {
            Some(serde_yaml::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => {
                Err(origin.error_in(number, key, &format!("{key} must be a non-empty string")))
            }
            None => Err(origin.doc_error(Some(number), key, &format!("the document has no {key}"))),
        };
        let api_version = take("apiVersion")?;
        let kind = take("kind")?;
        if documents.iter().any(|d| d.kind == kind) {
            return Err(origin.error_in(
                number,
                "kind",
                &format!("invalid configuration: kind {kind:?} is specified twice in YAML file"),
            ));
        }
        documents.push(Document {
            number,
            api_version,
            kind,
            body,
        });
    }
    Ok(documents)
}

/// A YAML syntax error, at the line and column the parser stopped.
pub(crate) fn yaml_error(origin: &Origin, e: &serde_yaml::Error) -> ConfigError {
    let pos = e.location().map(|l| (l.line(), l.column()));
    origin.at(pos, "", format!("invalid YAML: {e}"))
}

/// A document's body as the typed `T`; an error names `Kind.path` and its line.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(
    origin: &Origin,
    doc: usize,
    kind: &str,
    map: Mapping,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(serde_yaml::Value::Mapping(map)).map_err(|e| {
        let mut path = e.path().to_string();
        if path == "." {
            path.clear();
        }
        let inner = e.into_inner().to_string();
        // An unknown field is reported at its parent; point at the field itself.
        if let Some(name) = inner
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
        {
            if path.is_empty() {
                path = name.to_string();
            } else if !path.ends_with(name) {
                path = format!("{path}.{name}");
            }
        }
        let field = if path.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{path}")
        };
        origin.at(origin.index.find(doc, &path), &field, inner)
    })
}
