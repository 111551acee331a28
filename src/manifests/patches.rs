//! kubeadm's `--patches DIR`: files named `<target>[suffix][+<type>].(json|yaml)`, applied in
//! alphabetical order to the object of their target; `<type>` is `strategic` (the default),
//! `merge` (RFC 7386) or `json` (RFC 6902). A file may hold several YAML documents, each one
//! patch. Strategic merge uses the merge keys Kubernetes declares for the PodSpec lists.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::BadInput;

/// The targets kubeadm knows; files for other targets are left alone, as kubeadm does.
pub const TARGETS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubeletconfiguration",
    "corednsdeployment",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Strategic,
    Merge,
    Json,
}

pub struct Patch {
    pub file: PathBuf,
    kind: Kind,
    body: Value,
}

/// Target, kind and extension from a file name, or None when it is not a patch file.
fn parse_name(name: &str) -> Option<(&'static str, Option<&str>, &str)> {
    let (stem, ext) = name.rsplit_once('.')?;
    let target = TARGETS
        .iter()
        .filter(|t| stem.starts_with(*t))
        .max_by_key(|t| t.len())?;
    let (_, kind) = stem[target.len()..]
        .split_once('+')
        .map_or((stem, None), |(a, k)| (a, Some(k)));
    Some((target, kind, ext))
}

/// The patches for `target` under `dir`, in file-name order. Any unreadable or malformed patch
/// file is bad input naming the file (and line).
pub fn load(dir: &Path, target: &str) -> Result<Vec<Patch>> {
    let bad = |file: &Path, message: String| BadInput(format!("{}: {message}", file.display()));
    let entries = std::fs::read_dir(dir).map_err(|e| {
        BadInput(format!(
            "--patches {}: cannot read the directory: {e}",
            dir.display()
        ))
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut patches = Vec::new();
    for name in names {
        let Some((file_target, kind, ext)) = parse_name(&name) else {
            continue;
        };
        if file_target != target {
            continue;
        }
        let file = dir.join(&name);
        let kind = match kind {
            None | Some("strategic") => Kind::Strategic,
            Some("merge") => Kind::Merge,
            Some("json") => Kind::Json,
            Some(other) => {
                return Err(bad(
                    &file,
                    format!("unknown patch type {other:?} (valid: strategic, merge, json)"),
                )
                .into())
            }
        };
        if ext != "yaml" && ext != "json" && ext != "yml" {
            return Err(bad(
                &file,
                format!("unknown extension {ext:?} (valid: json, yaml)"),
            )
            .into());
        }
        let text = std::fs::read_to_string(&file).map_err(|e| bad(&file, e.to_string()))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let body = Value::deserialize(doc).map_err(|e| {
                let at = e
                    .location()
                    .map_or(String::new(), |l| format!("line {}: ", l.line()));
                bad(&file, format!("{at}not a valid patch: {e}"))
            })?;
            if body.is_null() {
                continue;
            }
            let fits = match kind {
                Kind::Json => body.is_array(),
                _ => body.is_object(),
            };
            if !fits {
                let want = if kind == Kind::Json {
                    "a list of operations"
                } else {
                    "a mapping"
                };
                return Err(bad(&file, format!("a {kind:?} patch must be {want}")).into());
            }
            patches.push(Patch {
                file: file.clone(),
                kind,
                body,
            });
        }
    }
    Ok(patches)
}

/// Applies `patches` to `object` in order; a patch that does not apply names its file.
pub fn apply(mut object: Value, patches: &[Patch]) -> Result<Value> {
    for p in patches {
        match p.kind {
            Kind::Strategic => object = strategic(object, &p.body, ""),
            Kind::Merge => json_patch::merge(&mut object, &p.body),
            Kind::Json => {
                let ops: json_patch::Patch = serde_json::from_value(p.body.clone())
                    .map_err(|e| BadInput(format!("{}: {e}", p.file.display())))?;
                json_patch::patch(&mut object, &ops)
                    .map_err(|e| BadInput(format!("{}: {e}", p.file.display())))?;
            }
        }
    }
    Ok(object)
}

/// `object` with the config's patches for `target` applied (unchanged without `--patches`).
pub fn for_target(cfg: &crate::config::Config, target: &str, object: Value) -> Result<Value> {
    match cfg
        .init
        .patches
        .as_ref()
        .filter(|p| !p.directory.is_empty())
    {
        Some(p) => apply(object, &load(Path::new(&p.directory), target)?),
        None => Ok(object),
    }
}

/// The merge key of a list field of the PodSpec (Kubernetes' `patchMergeKey`); lists without
/// one are replaced whole.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "readinessGates" => "conditionType",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" => "containerPort",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

/// Kubernetes' strategic merge patch for maps and lists of maps, with the `$patch: delete` and
/// `$patch: replace` directives; `$setElementOrder` and `$retainKeys` are accepted and the
/// first ignored.
fn strategic(original: Value, patch: &Value, field: &str) -> Value {
    match (original, patch) {
        (Value::Object(mut orig), Value::Object(p)) => {
            match p.get("$patch").and_then(Value::as_str) {
                Some("replace") => {
                    let mut p = p.clone();
                    p.remove("$patch");
                    return Value::Object(p);
                }
                Some("delete") => return Value::Object(Map::new()),
                _ => {}
            }
            if let Some(Value::Array(keep)) = p.get("$retainKeys") {
                orig.retain(|k, _| keep.iter().any(|x| x == k));
            }
            for (k, v) in p {
                if k.starts_with('$') {
                    continue;
                }
                if v.is_null() {
                    orig.remove(k);
                    continue;
                }
                let merged = match orig.remove(k) {
                    Some(o) => strategic(o, v, k),
                    None => strip_directives(v.clone()),
                };
                orig.insert(k.clone(), merged);
            }
            Value::Object(orig)
        }
        (Value::Array(orig), Value::Array(p)) => match merge_key(field) {
            Some(key) => merge_list(orig, p, key),
            None => Value::Array(p.iter().cloned().map(strip_directives).collect()),
        },
        (_, p) => strip_directives(p.clone()),
    }
}

/// A list merged by `key`, in the order Kubernetes gives it (apimachinery's
/// `normalizeElementOrder`): the patch's items in patch order, interleaved with the items only the
/// original has, each kept before a patch item that followed it in the original.
fn merge_list(orig: Vec<Value>, patch: &[Value], key: &str) -> Value {
    if patch.iter().any(|i| i["$patch"] == "replace") {
        return Value::Array(
            patch
                .iter()
                .filter(|i| i["$patch"] != "replace")
                .cloned()
                .map(strip_directives)
                .collect(),
        );
    }
    let in_patch = |o: &Value| !o[key].is_null() && patch.iter().any(|p| p[key] == o[key]);
    let patched: Vec<Value> = patch
        .iter()
        .filter(|p| p["$patch"] != "delete")
        .map(
            |p| match orig.iter().find(|o| !p[key].is_null() && o[key] == p[key]) {
                Some(o) => strategic(o.clone(), p, ""),
                None => strip_directives(p.clone()),
            },
        )
        .collect();
    let server_only: Vec<Value> = orig.iter().filter(|o| !in_patch(o)).cloned().collect();
    let position = |v: &Value| {
        orig.iter()
            .position(|o| !v[key].is_null() && o[key] == v[key])
    };
    let (mut left, mut right) = (
        server_only.into_iter().peekable(),
        patched.into_iter().peekable(),
    );
    let mut merged = Vec::new();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => matches!((position(l), position(r)), (Some(a), Some(b)) if a < b),
        };
        merged.extend(if take_left { left.next() } else { right.next() });
    }
    Value::Array(merged)
}

fn strip_directives(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k, strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_directives).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_kubeadm() {
        assert_eq!(
            parse_name("kube-apiserver0+merge.yaml"),
            Some(("kube-apiserver", Some("merge"), "yaml"))
        );
        assert_eq!(parse_name("etcd.json"), Some(("etcd", None, "json")));
        assert_eq!(
            parse_name("kubeletconfiguration+strategic.yaml"),
            Some(("kubeletconfiguration", Some("strategic"), "yaml"))
        );
        assert_eq!(parse_name("README"), None);
        assert_eq!(parse_name("notes.txt"), None);
    }
}
