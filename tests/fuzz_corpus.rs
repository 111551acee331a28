//! The fuzz targets' short run on stable Rust: every input of fuzz/corpus/<target>/ (the seeds
//! and the inputs that once crashed) through the same entry points as `cargo fuzz`, then
//! thousands of byte-level mutants of them (bits flipped, bytes inserted, deleted, truncated,
//! spliced from another input). A panic is a failure. `PROPTEST_CASES=N` sets the number of
//! mutants per target (default 2000); docs/testing.md has the longer `cargo +nightly fuzz` runs.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;

use kubeforge::cluster::discovery::{read_cluster_info, ClusterInfoSays};
use kubeforge::config::join::Trust;
use kubeforge::config::Token;
use kubeforge::fuzzing::TOKEN;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} is empty", dir.display());
    inputs
}

#[test]
fn the_config_corpus_replays() {
    for (path, bytes) in corpus("config") {
        eprintln!("{}", path.display());
        kubeforge::fuzzing::config(&bytes);
    }
}

#[test]
fn the_discovery_corpus_replays() {
    for (path, bytes) in corpus("discovery") {
        eprintln!("{}", path.display());
        kubeforge::fuzzing::discovery(&bytes);
    }
}

fn seed(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus/discovery")
        .join(name);
    std::fs::read(path).unwrap()
}

/// The signed seed reaches the signature check and passes it: the fuzzer starts from inputs that
/// go all the way through discovery.
#[test]
fn the_discovery_seed_is_signed_for_the_token() {
    let token = Token::parse(TOKEN).unwrap();
    let config_map = serde_json::from_slice(&seed("seed-cluster-info-signed.json")).unwrap();
    let says = read_cluster_info(&config_map, "cp.example.com:6443", &token, &Trust::Unpinned);
    assert!(
        matches!(says, Ok(ClusterInfoSays::Signed { .. })),
        "{says:?}"
    );
    let pin = String::from_utf8(seed("seed-ca-pin.txt")).unwrap();
    let pinned = Trust::Pins(vec![pin.trim().to_string()]);
    let says = read_cluster_info(&config_map, "cp.example.com:6443", &token, &pinned);
    assert!(
        matches!(says, Ok(ClusterInfoSays::Signed { .. })),
        "{says:?}"
    );
    let other = Token::parse("abcdef.0000000000000000").unwrap();
    let says = read_cluster_info(&config_map, "cp.example.com:6443", &other, &Trust::Unpinned);
    assert!(says.is_err(), "a wrong secret verified: {says:?}");
}

/// Writes the discovery seeds: a made-up CA (its certificate only; the key is dropped), the
/// cluster-info kubeconfig naming it, signed with [`TOKEN`]. Run by hand to renew them:
/// `cargo test --test fuzz_corpus -- --ignored write_discovery_seeds`.
#[test]
#[ignore]
fn write_discovery_seeds() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kubernetes");
    let ca = params.self_signed(&key).unwrap();
    let kubeconfig = format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://cp.example.com:6443\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\nusers: null\n",
        b64.encode(ca.pem())
    );
    let token = Token::parse(TOKEN).unwrap();
    let jws = kubeforge::cluster::token::detached_jws(&kubeconfig, &token);
    let config_map = |data: serde_json::Value| {
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cluster-info", "namespace": "kube-public"}, "data": data})
    };
    let signed =
        config_map(serde_json::json!({"kubeconfig": kubeconfig, "jws-kubeconfig-abcdef": jws}));
    let other =
        config_map(serde_json::json!({"kubeconfig": kubeconfig, "jws-kubeconfig-zzzzzz": jws}));
    let unsigned = config_map(serde_json::json!({ "kubeconfig": kubeconfig }));
    let pin = kubeforge::cluster::token::ca_pin(ca.der()).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/discovery");
    for (name, text) in [
        (
            "seed-cluster-info-signed.json",
            serde_json::to_string_pretty(&signed).unwrap(),
        ),
        ("seed-cluster-info-other-token.json", other.to_string()),
        ("seed-cluster-info-unsigned.json", unsigned.to_string()),
        ("seed-kubeconfig.yaml", kubeconfig.clone()),
        ("seed-jws.txt", jws),
        ("seed-ca-pin.txt", pin),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// A byte-level change, as a fuzzer makes them.
#[derive(Debug, Clone)]
enum Edit {
    FlipBit(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, Index),
    Truncate(Index),
    Splice(Index, Index, Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let interesting = prop::sample::select(vec![
        b"\"".to_vec(),
        b"{".to_vec(),
        b"[".to_vec(),
        b"\n---\n".to_vec(),
        b": ".to_vec(),
        b"\\u0000".to_vec(),
        b"&a *a".to_vec(),
        b"!!binary ".to_vec(),
        b"\xff\xfe".to_vec(),
        b"-----BEGIN CERTIFICATE-----".to_vec(),
        b"..".to_vec(),
        b"=".to_vec(),
    ]);
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(i, b)| Edit::FlipBit(i, b)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), interesting).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Delete(a, b)),
        any::<Index>().prop_map(Edit::Truncate),
        (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(a, b, c)| Edit::Splice(a, b, c)),
    ]
}

fn apply(mut bytes: Vec<u8>, edit: &Edit, others: &[Vec<u8>]) -> Vec<u8> {
    let at = |i: &Index, len: usize| i.index(len + 1);
    match edit {
        Edit::FlipBit(i, bit) if !bytes.is_empty() => {
            let n = i.index(bytes.len());
            bytes[n] ^= 1 << bit;
        }
        Edit::Insert(i, b) => {
            let n = at(i, bytes.len());
            bytes.splice(n..n, b.iter().copied());
        }
        Edit::Delete(a, b) => {
            let (x, y) = (at(a, bytes.len()), at(b, bytes.len()));
            bytes.drain(x.min(y)..x.max(y));
        }
        Edit::Truncate(i) => bytes.truncate(at(i, bytes.len())),
        Edit::Splice(which, from, to) => {
            let other = &others[which.index(others.len())];
            let (x, y) = (at(from, other.len()), at(to, other.len()));
            let n = at(from, bytes.len());
            bytes.splice(n..n, other[x.min(y)..x.max(y)].iter().copied());
        }
        _ => {}
    }
    bytes
}

fn mutants(target: &str) -> impl Strategy<Value = Vec<u8>> {
    let inputs: Vec<Vec<u8>> = corpus(target).into_iter().map(|(_, b)| b).collect();
    let others = inputs.clone();
    (
        prop::sample::select(inputs),
        prop::collection::vec(edit(), 1..=4),
    )
        .prop_map(move |(input, edits)| edits.iter().fold(input, |b, e| apply(b, e, &others)))
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/fuzz_corpus.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_configs_never_panic(data in mutants("config")) {
        kubeforge::fuzzing::config(&data);
    }

    #[test]
    fn mutated_discovery_inputs_never_panic(data in mutants("discovery")) {
        kubeforge::fuzzing::discovery(&data);
    }
}
