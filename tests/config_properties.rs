//! Generated bad input: valid configs (the seed corpus in fuzz/corpus/config and this suite's own
//! node config) mutated at random — a field removed, retyped, out of range, a key duplicated, a
//! document reordered or repeated, the bytes truncated or garbage inserted. Every mutant either
//! loads or is refused with the file, a line and the field, never a panic; through the binary,
//! a refusal is exit code 2 with nothing written.
//!
//! `PROPTEST_CASES=N` sets the number of generated configs of the library-level property
//! (default 3000, a few seconds) and `KUBEFORGE_BINARY_CASES=N` of the binary one (default 40,
//! about a second each). Failures are kept in tests/config_properties.proptest-regressions and
//! replayed first.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use serde_yaml::Value;

fn cases(variable: &str, default: u32) -> ProptestConfig {
    let cases = std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/config_properties.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/config")
}

/// The valid configs of the seed corpus (init, join, upgrade; v1beta4 and v1beta3).
fn seeds() -> Vec<String> {
    let mut seeds: Vec<String> = std::fs::read_dir(corpus())
        .expect("fuzz/corpus/config")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
        })
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 8, "the seed corpus is missing");
    seeds
}

/// One change to a config.
#[derive(Debug, Clone)]
enum Mutation {
    Remove(Index),
    Replace(Index, Value),
    DuplicateKey(Index),
    SwapDocuments(Index, Index),
    RepeatDocument(Index),
    Truncate(Index),
    Insert(Index, Vec<u8>),
}

/// Values a field should not hold: other types, out of range, malformed.
fn bad_value() -> impl Strategy<Value = Value> {
    let specials = [
        "",
        " ",
        "~",
        "true",
        "0x10",
        "1.5",
        "-1",
        "0",
        "65536",
        "70000",
        "4294967296",
        "10.96.0.0/33",
        "10.96.0.0/0",
        "0.0.0.0/0",
        "::/0",
        "10.96.0.0/12,10.97.0.0/16",
        "10.244.0.0/16",
        "fd00::/8",
        "256.0.0.1",
        "127.0.0.1",
        "::1",
        "-1h",
        "0s",
        "1ns",
        "2562048h",
        "99999999h",
        "v1.99.0",
        "v0.0.0",
        "1.35",
        "sha256:00",
        "abcdef",
        "*",
        "Node_1",
        "UPPER",
        "a..b",
        "ÿ\u{0}\u{7f}",
        "{{ .x }}",
        "%s%n",
    ];
    prop_oneof![
        prop::sample::select(specials.to_vec()).prop_map(|s| Value::String(s.into())),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<u64>().prop_map(|n| Value::Number(n.into())),
        prop::sample::select(vec![-1i64, 0, 1, 65535, 65536, i32::MAX as i64 + 1])
            .prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|f| Value::Number(f.into())),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        "[a-z0-9./:,*-]{0,24}".prop_map(Value::String),
        "[a-z]{1,8}".prop_map(|s| Value::Sequence(vec![Value::String(s)])),
        ("[a-z]{1,8}", any::<i32>()).prop_map(|(k, v)| {
            let mut m = serde_yaml::Mapping::new();
            m.insert(Value::String(k), Value::Number(v.into()));
            Value::Mapping(m)
        }),
        Just(Value::String("x".repeat(300))),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<Index>().prop_map(Mutation::Remove),
        3 => (any::<Index>(), bad_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => any::<Index>().prop_map(Mutation::DuplicateKey),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapDocuments(a, b)),
        1 => any::<Index>().prop_map(Mutation::RepeatDocument),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
    ]
}

/// A path to a node of a document: mapping keys and sequence indices.
#[derive(Debug, Clone)]
enum Step {
    Key(Value),
    Item(usize),
}

fn paths(value: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match value {
        Value::Mapping(m) => {
            for (k, v) in m {
                prefix.push(Step::Key(k.clone()));
                out.push(prefix.clone());
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        Value::Sequence(s) => {
            for (i, v) in s.iter().enumerate() {
                prefix.push(Step::Item(i));
                out.push(prefix.clone());
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

/// The parent collection of `path` and the last step to it.
fn parent<'v>(doc: &'v mut Value, path: &[Step]) -> Option<(&'v mut Value, Step)> {
    let (last, init) = path.split_last()?;
    let mut node = doc;
    for step in init {
        node = match step {
            Step::Key(k) => node.as_mapping_mut()?.get_mut(k)?,
            Step::Item(i) => node.as_sequence_mut()?.get_mut(*i)?,
        };
    }
    Some((node, last.clone()))
}

fn documents(text: &str) -> Option<Vec<Value>> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).ok())
        .collect()
}

fn render(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// `text` changed by `m` (unchanged when `m` does not apply to it).
fn apply(text: &str, m: &Mutation) -> String {
    let at = |i: &Index, len: usize| i.index(len + 1);
    match m {
        Mutation::Truncate(i) => {
            let bytes = text.as_bytes();
            String::from_utf8_lossy(&bytes[..at(i, bytes.len())]).into_owned()
        }
        Mutation::Insert(i, garbage) => {
            let mut bytes = text.as_bytes().to_vec();
            let pos = at(i, bytes.len());
            bytes.splice(pos..pos, garbage.iter().copied());
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Mutation::DuplicateKey(i) => {
            let lines: Vec<&str> = text.lines().collect();
            let keys: Vec<usize> = (0..lines.len()).filter(|&n| is_key(lines[n])).collect();
            if keys.is_empty() {
                return text.to_string();
            }
            let n = keys[i.index(keys.len())];
            // The same key once more in the same mapping: `- key: v` continues as `  key: v`.
            let copy = lines[n].replacen("- ", "  ", 1);
            let mut out: Vec<&str> = lines.clone();
            out.insert(n + 1, &copy);
            out.join("\n") + "\n"
        }
        _ => structural(text, m).unwrap_or_else(|| text.to_string()),
    }
}

/// A block mapping's `key:` line (maybe a sequence item's first key).
fn is_key(line: &str) -> bool {
    let body = line.trim_start().trim_start_matches("- ");
    body.split_once(':').is_some_and(|(k, rest)| {
        !k.is_empty()
            && k.bytes().all(|b| b.is_ascii_alphanumeric())
            && (rest.is_empty() || rest.starts_with(' '))
    })
}

fn structural(text: &str, m: &Mutation) -> Option<String> {
    let mut docs = documents(text)?;
    if docs.is_empty() {
        return None;
    }
    match m {
        Mutation::SwapDocuments(a, b) => {
            let (a, b) = (a.index(docs.len()), b.index(docs.len()));
            docs.swap(a, b);
        }
        Mutation::RepeatDocument(i) => {
            let d = docs[i.index(docs.len())].clone();
            docs.push(d);
        }
        Mutation::Remove(i) | Mutation::Replace(i, _) => {
            let mut all = Vec::new();
            for (n, d) in docs.iter().enumerate() {
                let mut found = Vec::new();
                paths(d, &mut Vec::new(), &mut found);
                all.extend(found.into_iter().map(|p| (n, p)));
            }
            if all.is_empty() {
                return None;
            }
            let (n, path) = &all[i.index(all.len())];
            let (node, last) = parent(&mut docs[*n], path)?;
            match (m, node, last) {
                (Mutation::Remove(_), Value::Mapping(map), Step::Key(k)) => {
                    map.remove(&k);
                }
                (Mutation::Remove(_), Value::Sequence(seq), Step::Item(i)) => {
                    seq.remove(i);
                }
                (Mutation::Replace(_, v), Value::Mapping(map), Step::Key(k)) => {
                    map.insert(k, v.clone());
                }
                (Mutation::Replace(_, v), Value::Sequence(seq), Step::Item(i)) => {
                    seq[i] = v.clone()
                }
                _ => return None,
            }
        }
        _ => return None,
    }
    Some(render(&docs))
}

fn mutant() -> impl Strategy<Value = String> {
    let seeds = seeds();
    (
        prop::sample::select(seeds),
        prop::collection::vec(mutation(), 1..=2),
    )
        .prop_map(|(seed, ms)| ms.iter().fold(seed, |text, m| apply(&text, m)))
}

#[test]
fn the_seeds_are_valid() {
    for seed in seeds() {
        let kubernetes_dir = Path::new("/etc/kubernetes");
        let init = kubeforge::config::load_str(&seed, "s", &Default::default(), kubernetes_dir);
        let join = kubeforge::config::join::validate(&seed, "s");
        let upgrade = kubeforge::config::upgrade::parse(&seed, "s");
        assert!(
            init.is_ok() || join.is_ok() || upgrade.is_ok(),
            "no loader takes the seed {seed}: {init:?} {join:?} {upgrade:?}"
        );
    }
}

/// The generator is not idle: of its mutants some load and many are refused, at many different
/// fields (a generator that changed nothing would prove nothing).
#[test]
fn the_mutants_reach_many_fields() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = mutant();
    let (mut loaded, mut fields) = (0, std::collections::BTreeSet::new());
    for _ in 0..500 {
        let text = strategy.new_tree(&mut runner).unwrap().current();
        let kubernetes_dir = Path::new("/etc/kubernetes");
        let init = kubeforge::config::load_str(&text, "m", &Default::default(), kubernetes_dir);
        let join = kubeforge::config::join::validate(&text, "m");
        for outcome in [init.map(drop), join] {
            match outcome {
                Ok(()) => loaded += 1,
                Err(e) => {
                    fields.insert(e.field);
                }
            }
        }
    }
    eprintln!(
        "of 500 mutants, {loaded} loads; refusals at {} fields: {fields:?}",
        fields.len()
    );
    assert!(
        loaded >= 25 && fields.len() >= 25,
        "{loaded} loads, fields {fields:?}"
    );
}

proptest! {
    #![proptest_config(cases("PROPTEST_CASES", 3000))]

    /// Library level: the loaders of init, join and upgrade on every mutant.
    #[test]
    fn every_mutant_loads_or_is_named(text in mutant()) {
        if let Err(why) = kubeforge::fuzzing::check_config(&text) {
            prop_assert!(false, "{why}\n--- mutant ---\n{text}");
        }
    }
}

/// This node's own config (every path under its temp dir), as tests/common writes it.
fn node_seed(node: &Node) -> String {
    std::fs::read_to_string(
        node.write_config("ECDSA-P256", "networking:\n  podSubnet: 10.244.0.0/16\n"),
    )
    .unwrap()
}

/// Whether the mutant still keeps the node's certificates and etcd data under its temp dir (a
/// default would be /etc/kubernetes/pki or /var/lib/etcd, which these tests never touch).
fn stays_in_the_node(text: &str, node: &Node) -> bool {
    let root = node.root().display();
    text.contains(&format!("certificatesDir: {root}/"))
        && text.contains(&format!("dataDir: {root}/var/lib/etcd"))
}

proptest! {
    #![proptest_config(cases("KUBEFORGE_BINARY_CASES", 40))]

    /// Through the binary: `init --dry-run` exits 0, or 2 naming file:line with nothing written.
    #[test]
    fn the_binary_refuses_mutants_with_exit_2_and_writes_nothing(
        ms in prop::collection::vec(mutation(), 1..=2)
    ) {
        let node = Node::new();
        let text = ms.iter().fold(node_seed(&node), |t, m| apply(&t, m));
        prop_assume!(stays_in_the_node(&text, &node));
        let path = node.config_path();
        std::fs::write(&path, &text).unwrap();
        let tmp = node.root().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let before = node.snapshot();
        let out = node
            .command(&["init", "--dry-run", "--skip-phases", "preflight", "--config", path.to_str().unwrap()])
            .env("TMPDIR", &tmp)
            .current_dir(node.root())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => {}
            Some(2) => {
                let named = err.split_once(&format!("error: {}:", path.display()))
                    .is_some_and(|(_, rest)| rest.starts_with(|c: char| c.is_ascii_digit()));
                prop_assert!(named, "exit 2 without file:line: {err}\n--- mutant ---\n{text}");
                prop_assert_eq!(node.snapshot(), before, "a refused config wrote files: {}", err);
            }
            code => prop_assert!(false, "exit {code:?}: {err}\n--- mutant ---\n{text}"),
        }
    }
}
