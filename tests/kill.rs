//! Kills at random instants, not only at phase boundaries: `init`, `certs renew` and a
//! control-plane join's `control-plane-prepare` (the join phase that writes the node's files;
//! the rest of a join needs a real etcd and kubelet) get SIGKILL after a random delay or abort
//! inside a random file write (before or after its rename), then the same command is run again.
//! Killed, no file is half-written or has another mode than an uninterrupted run gives it;
//! re-run, the node holds the same files as an uninterrupted run — the same modes, the same
//! bytes where the content does not depend on a fresh key, every certificate with its own key —
//! no temp file is left, and the journal lists exactly what exists.
//!
//! The kill points come from a seeded RNG; the seed is printed. `KUBEFORGE_KILL_SEED=<seed>`
//! replays a run, `KUBEFORGE_KILLS=<n>` sets the number of kills over the three commands
//! (default 30).

mod common;
use common::kill::{run_killed, Killer};
use common::standin::{control_plane_prepare, join_cluster};
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// File → (mode, content where comparable), relative to the node's root.
type Files = BTreeMap<PathBuf, (u32, Option<Vec<u8>>)>;

/// An uninterrupted run's result: file → (mode, content without fresh credentials), and the
/// journal without backup directories, all relative to the node's root.
struct Reference {
    files: Files,
    journal: BTreeSet<PathBuf>,
    took: Duration,
}

fn dirs(node: &Node) -> Vec<PathBuf> {
    ["etc/kubernetes", "var/lib/kubelet", "var/lib/etcd"]
        .iter()
        .map(|d| node.root().join(d))
        .collect()
}

/// Removes every file of the node but its config.
fn wipe(node: &Node) {
    for dir in ["etc", "var"] {
        let _ = std::fs::remove_dir_all(node.root().join(dir));
    }
}

/// A file's content where an independent run gives the same bytes: manifests and kubelet files
/// whole, kubeconfigs without their credentials, nothing of keys and certificates.
fn comparable(path: &Path) -> Option<Vec<u8>> {
    let text = std::fs::read(path).ok()?;
    match path.extension()?.to_str()? {
        "yaml" | "env" => Some(text),
        "conf" => Some(
            String::from_utf8_lossy(&text)
                .lines()
                .filter(|l| !l.contains("-data:"))
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes(),
        ),
        _ => None,
    }
}

fn state(node: &Node) -> (Files, BTreeSet<PathBuf>) {
    let root = node.root();
    let files = tree::files(&dirs(node))
        .into_iter()
        .filter(|(p, _)| !p.starts_with(node.kubernetes_dir().join("tmp")))
        .map(|(p, mode)| {
            let content = comparable(&p);
            (p.strip_prefix(root).unwrap().to_path_buf(), (mode, content))
        })
        .collect();
    let journal = tree::journal(&node.kubernetes_dir())
        .into_iter()
        .filter(|p| !p.ancestors().any(tree::backup_dir))
        .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
        .collect();
    (files, journal)
}

/// One command killed at random instants and re-run, `kills` times; `prepare` readies the
/// wiped node before each run.
fn kill_and_rerun(name: &str, node: &Node, args: &[&str], prepare: &dyn Fn(), kills: usize) {
    let mut killer = Killer::from_env();
    let modes_of = |files: &Files| files.iter().map(|(p, (m, _))| (p.clone(), *m)).collect();
    prepare();
    let start = Instant::now();
    node.run_ok(args);
    let (files, journal) = state(node);
    let reference = Reference {
        files,
        journal,
        took: start.elapsed(),
    };
    let modes: BTreeMap<PathBuf, u32> = modes_of(&reference.files);
    let writes = 2 * reference.files.len() as u32;
    let (mut killed, mut attempts) = (0, 0);
    let mut kinds = BTreeMap::new();
    while killed < kills && attempts < 3 * kills {
        attempts += 1;
        let kill = killer.instant(reference.took, writes);
        let at = format!("{name}, seed {}, kill #{attempts} {kill:?}", killer.seed);
        wipe(node);
        prepare();
        if !run_killed(node.command(args), kill) {
            continue;
        }
        killed += 1;
        *kinds
            .entry(format!("{kill:?}").split('(').next().unwrap().to_string())
            .or_insert(0) += 1;
        let problems = tree::problems(node.root(), &dirs(node), Some(&modes));
        assert!(problems.is_empty(), "{at}: killed, {problems:#?}");
        let out = node.run(args);
        assert!(
            out.status.success(),
            "{at}: the re-run failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        check_converged(node, &reference, &modes, &at);
    }
    println!("{name}: {killed} kills {kinds:?} (of {attempts} tries; the others finished first), every re-run converged");
    assert_eq!(killed, kills, "{name}: too few kill points hit the run");
}

fn check_converged(node: &Node, reference: &Reference, modes: &BTreeMap<PathBuf, u32>, at: &str) {
    let (files, journal) = state(node);
    let names = |f: &Files| f.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&files), names(&reference.files), "{at}: other files");
    for (path, (mode, content)) in &files {
        let (want_mode, want_content) = &reference.files[path];
        assert_eq!(mode, want_mode, "{at}: the mode of {}", path.display());
        assert!(
            content == want_content,
            "{at}: {} differs from an uninterrupted run's",
            path.display()
        );
    }
    let problems = tree::problems(node.root(), &dirs(node), Some(modes));
    assert!(problems.is_empty(), "{at}: re-run, {problems:#?}");
    assert_eq!(
        tree::temp_files(&dirs(node)),
        Vec::<PathBuf>::new(),
        "{at}: temp files left"
    );
    assert_eq!(
        tree::mismatched_pairs(&node.pki()),
        Vec::<PathBuf>::new(),
        "{at}: a certificate without its key"
    );
    assert_eq!(journal, reference.journal, "{at}: the journal");
    let unjournaled = tree::unjournaled(&node.kubernetes_dir(), &dirs(node));
    assert!(
        unjournaled.is_empty(),
        "{at}: not in the journal: {unjournaled:?}"
    );
}

fn share(part: usize, of: usize) -> usize {
    (Killer::count(30) * part).div_ceil(of)
}

#[test]
fn init_killed_at_random_instants_converges_on_a_rerun() {
    let node = Node::new();
    let cfg = node.write_config("ECDSA-P256", "");
    let args = [
        "init",
        "--skip-phases",
        HOST_PHASES_ONLY,
        "--config",
        cfg.to_str().unwrap(),
    ];
    kill_and_rerun("init", &node, &args, &|| {}, share(2, 5));
    // And a further run changes nothing at all.
    let before = node.snapshot();
    node.run_ok(&args);
    assert_eq!(node.snapshot(), before, "a third run changed files");
}

#[test]
fn certs_renew_killed_at_random_instants_converges_on_a_rerun() {
    let node = Node::new();
    let cfg = node.write_config("ECDSA-P256", "");
    let cfg = cfg.to_str().unwrap();
    let init = ["init", "--skip-phases", HOST_PHASES_ONLY, "--config", cfg];
    let renew = ["certs", "renew", "all", "--no-restart", "--config", cfg];
    kill_and_rerun(
        "certs renew",
        &node,
        &renew,
        &|| {
            node.run_ok(&init);
        },
        share(1, 3),
    );
}

#[test]
fn a_control_plane_join_killed_at_random_instants_converges_on_a_rerun() {
    let cluster = Node::new();
    let joiner = Node::new();
    let (_standin, endpoint) = join_cluster(&cluster, &joiner.pki());
    let key = upload_certs(&cluster);
    let pin = openssl_ca_pin(&cluster.pki().join("ca.crt"));
    let args = control_plane_prepare(&endpoint, &pin, &key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let kills = Killer::count(30) - share(2, 5) - share(1, 3);
    kill_and_rerun("join control-plane-prepare", &joiner, &args, &|| {}, kills);
}
