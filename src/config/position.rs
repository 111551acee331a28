//! Where each field of a multi-document YAML file is, so that an error found after parsing (a bad
//! CIDR, an unsupported version) still names the line and column it came from.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, Parser};

/// (document index, dotted path such as `networking.serviceSubnet` or `bootstrapTokens[0].token`)
/// → (line, column), both 1-based. A path points at its key; a document's root path "" at its start.
#[derive(Debug, Default)]
pub struct Index {
    marks: HashMap<(usize, String), (usize, usize)>,
    pub documents: usize,
    /// Where each document starts by its `---` lines: the fallback for a text this parser gives
    /// up on where serde_yaml's does not.
    starts: Vec<(usize, usize)>,
}

impl Index {
    pub fn build(text: &str) -> Index {
        let mut index = Index::default();
        let mut parser = Parser::new_from_str(text);
        // One frame per open collection: (path of the collection, Some(pending key) for maps or
        // next item number for sequences).
        enum Frame {
            Map { path: String, key: Option<String> },
            Seq { path: String, next: usize },
        }
        let mut stack: Vec<Frame> = Vec::new();
        let mut doc = 0usize;
        let mut doc_start = (1, 1);
        while let Ok((event, mark)) = parser.next_token() {
            let pos = (mark.line(), mark.col() + 1);
            // The path of the node this event starts (None when the event is a map key).
            let node_path = |stack: &mut Vec<Frame>| -> Option<String> {
                match stack.last_mut() {
                    None => Some(String::new()),
                    Some(Frame::Map { path, key }) => key.take().map(|k| join(path, &k)),
                    Some(Frame::Seq { path, next }) => {
                        let p = format!("{path}[{next}]");
                        *next += 1;
                        Some(p)
                    }
                }
            };
            match event {
                Event::StreamEnd => break,
                // A document's root is where its content starts, else its `---`.
                Event::DocumentStart => doc_start = pos,
                Event::DocumentEnd => {
                    index.marks.entry((doc, String::new())).or_insert(doc_start);
                    doc += 1;
                    stack.clear();
                }
                Event::Scalar(value, ..) => {
                    let is_key = matches!(stack.last(), Some(Frame::Map { key: None, .. }));
                    if is_key {
                        if let Some(Frame::Map { path, key }) = stack.last_mut() {
                            if path.is_empty() {
                                // The document's root: its first key (a mapping's own mark
                                // is after that key).
                                index.marks.entry((doc, String::new())).or_insert(pos);
                            }
                            index.marks.insert((doc, join(path, &value)), pos);
                            *key = Some(value);
                        }
                    } else if let Some(path) = node_path(&mut stack) {
                        index.marks.entry((doc, path)).or_insert(pos);
                    }
                }
                Event::Alias(_) => {
                    node_path(&mut stack);
                }
                Event::MappingStart(..) => {
                    let path = node_path(&mut stack).unwrap_or_default();
                    if !path.is_empty() {
                        index.marks.entry((doc, path.clone())).or_insert(pos);
                    }
                    stack.push(Frame::Map { path, key: None });
                }
                Event::SequenceStart(..) => {
                    let path = node_path(&mut stack).unwrap_or_default();
                    index.marks.entry((doc, path.clone())).or_insert(pos);
                    stack.push(Frame::Seq { path, next: 0 });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                _ => {}
            }
        }
        index.documents = doc;
        index.starts = document_starts(text);
        index
    }

    /// The position of `path` itself, if it is in the file.
    pub fn get(&self, doc: usize, path: &str) -> Option<(usize, usize)> {
        self.marks.get(&(doc, path.to_string())).copied()
    }

    /// The position of `path`, or of its nearest ancestor that is in the file.
    pub fn find(&self, doc: usize, path: &str) -> Option<(usize, usize)> {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.marks.get(&(doc, p.clone())) {
                return Some(*pos);
            }
            if p.is_empty() {
                return self.starts.get(doc).copied();
            }
            p = match p.rfind(['.', '[']) {
                Some(i) => p[..i].to_string(),
                None => String::new(),
            };
        }
    }
}

/// The first line of each document: the lines opening with `---`, and line 1 when something
/// other than comments comes before the first of them.
fn document_starts(text: &str) -> Vec<(usize, usize)> {
    let mut starts = Vec::new();
    let mut content = false;
    for (n, line) in text.lines().enumerate() {
        let marker = line
            .strip_prefix("---")
            .is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t']));
        if marker {
            starts.push((n + 1, 1));
        } else if !content
            && starts.is_empty()
            && !line.trim().is_empty()
            && !line.trim_start().starts_with('#')
        {
            content = true;
            starts.push((1, 1));
        }
    }
    starts
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_across_documents() {
        let text =
            "a: 1\nb:\n  c: x\n  d:\n  - e: 1\n  - e: 2\n---\nkind: K\nnet:\n  sub: 10.0.0.0/8\n";
        let idx = Index::build(text);
        assert_eq!(idx.documents, 2);
        assert_eq!(idx.find(0, "b.c"), Some((3, 3)));
        assert_eq!(idx.find(0, "b.d[1].e"), Some((6, 5)));
        assert_eq!(idx.find(1, "net.sub"), Some((10, 3)));
        assert_eq!(idx.find(1, "net.missing"), Some((9, 1)));
        let idx = Index::build("sans:\n- a\n- b\n");
        assert_eq!(idx.find(0, "sans[1]"), Some((3, 3)));
        // A multi-line quoted scalar in a flow sequence, which serde_yaml reads and this parser
        // gives up on (found by tests/fuzz_corpus.rs): the later document still has a line.
        let text = include_str!("../../fuzz/corpus/config/crash-unindexed-document.yaml");
        let idx = Index::build(text);
        assert!(idx.documents < 2);
        assert_eq!(idx.find(1, "nodeRegistration.na\"me"), Some((18, 1)));
    }
}
