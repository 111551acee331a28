//! What a node's files must look like after any run, finished or killed: every file parses with
//! the tool that reads it, no temp file of the writer is left, and the writer's journal lists
//! exactly the paths that exist. Used by the random-kill tests (tests/kill.rs, the e2e suite).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::run_tool;

/// Every file under `dirs` (recursively): path → mode.
pub fn files(dirs: &[PathBuf]) -> BTreeMap<PathBuf, u32> {
    let mut out = BTreeMap::new();
    for dir in dirs.iter().filter(|d| d.exists()) {
        for (path, (_, _, mode)) in super::snapshot(dir) {
            out.insert(path, mode);
        }
    }
    out
}

/// Every path under `dirs`, directories included.
fn paths(dirs: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack: Vec<PathBuf> = dirs.iter().filter(|d| d.exists()).cloned().collect();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            out.insert(path);
        }
    }
    out
}

/// The temp files the host writer makes beside a file it writes (`.<name>.kubeforge-<pid>-<n>`).
pub fn temp_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    files(dirs)
        .into_keys()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(".kubeforge-"))
        })
        .collect()
}

/// What is wrong with `path` as the file its name says it is (None: it parses).
pub fn parse_problem(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    let p = path.to_str()?;
    let check = |args: &[&str]| {
        let out = run_tool("openssl", args);
        (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let yaml = || {
        let text = std::fs::read_to_string(path).ok()?;
        serde_yaml::from_str::<serde_yaml::Value>(&text)
            .err()
            .map(|e| e.to_string())
            .or_else(|| text.trim().is_empty().then(|| "empty".to_string()))
    };
    if name.contains(".kubeforge-") || path.components().any(|c| c.as_os_str() == "tmp") {
        return None; // temp files and backups: checked on their own
    }
    match path.extension()?.to_str()? {
        "crt" => check(&["x509", "-noout", "-in", p]),
        "key" => check(&["pkey", "-noout", "-in", p]),
        "pub" => check(&["pkey", "-pubin", "-noout", "-in", p]),
        "conf" | "yaml" => yaml(),
        "env" => {
            let text = std::fs::read_to_string(path).ok()?;
            (!text.starts_with("KUBELET_KUBEADM_ARGS=\"") || !text.ends_with("\"\n"))
                .then(|| format!("not one KUBELET_KUBEADM_ARGS line: {text:?}"))
        }
        _ => None,
    }
}

/// Every problem with the node's files: one that does not parse, and (with `expected_modes`,
/// the modes of an uninterrupted run's files, by path under `root`) one with another mode.
pub fn problems(
    root: &Path,
    dirs: &[PathBuf],
    expected_modes: Option<&BTreeMap<PathBuf, u32>>,
) -> Vec<String> {
    let mut found = Vec::new();
    for (path, mode) in files(dirs) {
        if let Some(problem) = parse_problem(&path) {
            found.push(format!("{} does not parse: {problem}", path.display()));
        }
        let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        if let Some(want) = expected_modes.and_then(|m| m.get(&relative)) {
            if *want != mode {
                found.push(format!(
                    "{} has mode {mode:o}, not {want:o}",
                    path.display()
                ));
            }
        }
    }
    found
}

/// The writer's journal of the node whose kubernetes dir is `kubernetes_dir`: every entry.
pub fn journal(kubernetes_dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_to_string(kubernetes_dir.join("tmp/kubeforge-journal"))
        .unwrap_or_default()
        .lines()
        .map(PathBuf::from)
        .collect()
}

/// Paths under `dirs` that exist but are not in the journal (the journal itself, and what lies
/// inside a journaled backup directory, need no entry of their own).
pub fn unjournaled(kubernetes_dir: &Path, dirs: &[PathBuf]) -> Vec<PathBuf> {
    let journal = journal(kubernetes_dir);
    let journal_file = kubernetes_dir.join("tmp/kubeforge-journal");
    paths(dirs)
        .into_iter()
        .filter(|p| *p != journal_file && !dirs.contains(p))
        .filter(|p| {
            !p.ancestors()
                .skip(1)
                .any(|a| backup_dir(a) && journal.contains(a))
        })
        .filter(|p| !journal.contains(p))
        .collect()
}

/// A run's backup directory, `tmp/kubeforge-backup-<time>`.
pub fn backup_dir(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("kubeforge-backup-"))
}

/// The certificates under `pki` that have a key beside them which is not theirs.
pub fn mismatched_pairs(pki: &Path) -> Vec<PathBuf> {
    let pubkey = |args: &[&str]| super::tool_ok("openssl", args);
    files(&[pki.to_path_buf()])
        .into_keys()
        .filter(|p| p.extension().is_some_and(|e| e == "crt") && p.with_extension("key").exists())
        .filter(|crt| {
            let key = crt.with_extension("key");
            pubkey(&["x509", "-noout", "-pubkey", "-in", crt.to_str().unwrap()])
                != pubkey(&["pkey", "-pubout", "-in", key.to_str().unwrap()])
        })
        .collect()
}
