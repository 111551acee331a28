//! Comparing static pod manifests: semantically (as the Pods they decode to, kubeadm's test for
//! "unchanged"), and against what kubeforge (or kubeadm) would have written, to find hand edits
//! that an upgrade would silently drop; and unified diffs to show either.

use serde_json::Value;

/// The manifest as a value, or None when it is not YAML.
fn parse(text: &str) -> Option<Value> {
    serde_yaml::from_str(text).ok()
}

/// Whether two manifests describe the same Pod (key order, quoting and layout aside).
pub fn same(a: &str, b: &str) -> bool {
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

/// Not an operator's edit: the probe timings kubeforge and kubeadm choose differently, the image
/// (the configuration's version and imageTag say it, and an operator may change those before an
/// upgrade), and the etcd flags that only matter when a member's data dir is first created (a
/// joined member's list of peers; kubeadm's upgrade drops them).
const NOT_EDITS: [&str; 2] = ["--initial-cluster=", "--initial-cluster-state="];
const PROBE_TIMINGS: [&str; 4] = [
    "initialDelaySeconds",
    "periodSeconds",
    "failureThreshold",
    "timeoutSeconds",
];

fn normalized(text: &str) -> Option<Value> {
    let mut pod = parse(text)?;
    for container in pod["spec"]["containers"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if let Some(c) = container.as_object_mut() {
            c.remove("image");
        }
        if let Some(command) = container["command"].as_array_mut() {
            command.retain(|a| {
                !a.as_str()
                    .is_some_and(|a| NOT_EDITS.iter().any(|p| a.starts_with(p)))
            });
        }
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            if let Some(p) = container[probe].as_object_mut() {
                for field in PROBE_TIMINGS {
                    p.remove(field);
                }
            }
        }
    }
    Some(pod)
}

/// Whether `live` is what one of `written` (the renders of the cluster's configuration) put
/// there, up to probe timings and first-boot etcd flags.
pub fn as_written(live: &str, written: &[String]) -> bool {
    let Some(live) = normalized(live) else {
        return false;
    };
    written
        .iter()
        .any(|w| normalized(w).as_ref() == Some(&live))
}

/// A unified diff from `old` (labelled `from`) to `new` (labelled `to`).
pub fn unified(from: &str, to: &str, old: &str, new: &str, context: usize) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(context)
        .header(from, to)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-scheduler\nspec:\n  containers:\n  - command:\n    - kube-scheduler\n    - --leader-elect=true\n    image: registry.k8s.io/kube-scheduler:v1.35.6\n    startupProbe:\n      failureThreshold: 240\n      periodSeconds: 1\n";

    #[test]
    fn layout_is_not_a_change_and_an_edit_is_found() {
        let reordered = POD.replace(
            "    startupProbe:\n      failureThreshold: 240\n      periodSeconds: 1\n",
            "    startupProbe: {periodSeconds: 1, failureThreshold: 240}\n",
        );
        assert!(same(POD, &reordered));
        let kubeadms = POD
            .replace("240", "24")
            .replace("periodSeconds: 1", "periodSeconds: 10");
        assert!(!same(POD, &kubeadms));
        assert!(as_written(&kubeadms, &[POD.to_string()]));
        let edited = POD.replace("--leader-elect=true", "--leader-elect=false");
        assert!(!as_written(&edited, &[POD.to_string()]));
        let diff = unified("live", "written", &edited, POD, 3);
        assert!(
            diff.contains("-    - --leader-elect=false\n+    - --leader-elect=true"),
            "{diff}"
        );
    }
}
