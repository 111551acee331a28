//! kubeadm's version-skew policy for an upgrade (contract 2), with kubeforge's version table
//! standing where kubeadm puts its own version, plus the etcd step kubeadm does not check.

use crate::config::semver;
use crate::versions;

/// kubeadm v1.35's MaximumAllowedMinorVersionKubeletSkew.
const KUBELET_SKEW: u32 = 3;

/// The versions a policy decision looks at.
#[derive(Debug, Clone)]
pub struct Versions<'a> {
    /// The API server's version; None when it could not be read.
    pub cluster: Option<&'a str>,
    pub target: &'a str,
    /// Every node's kubelet version; None when the nodes could not be listed.
    pub kubelets: Option<&'a [String]>,
    pub allow_experimental: bool,
    pub allow_rc: bool,
}

/// The errors `--force` cannot skip, and those it can.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Verdict {
    pub mandatory: Vec<String>,
    pub skippable: Vec<String>,
}

fn pre_release(v: &str) -> Option<&str> {
    v.split_once('-').map(|(_, p)| p)
}

/// kubeadm's `EnforceVersionPolicies`, row for row (contract 2's table); rows 7–9 ask
/// kubeforge's table instead of a kubeadm binary's version, since kubeforge renders every minor
/// it knows.
pub fn enforce(v: &Versions) -> Verdict {
    let mut verdict = Verdict::default();
    let Some(cluster) = v.cluster else {
        verdict
            .mandatory
            .push("Unable to fetch cluster version".into());
        return verdict;
    };
    let (Some(c), Some(t)) = (semver(cluster), semver(v.target)) else {
        verdict.mandatory.push(format!(
            "{:?} is not a Kubernetes version like v1.36.3",
            v.target
        ));
        return verdict;
    };
    let target = v.target;
    let unstable = pre_release(target).is_some();
    // Rows 5-7: fatal for a release, skippable for a pre-release.
    let mut minor_rules = Vec::new();
    let oldest = versions::releases()[0].minor;
    let newest = versions::newest();
    if t.1 < oldest {
        verdict.mandatory.push(format!(
            "Specified version to upgrade to {target:?} is equal to or lower than the minimum supported version \"v1.{oldest}.0\". Please specify a higher version to upgrade to"
        ));
    }
    if t.1 > c.1 + 1 {
        minor_rules.push(format!(
            "Specified version to upgrade to {target:?} is too high; kubeforge can upgrade only 1 minor version at a time"
        ));
    }
    if t.1 + 1 < c.1 {
        minor_rules.push(format!(
            "Specified version to downgrade to {target:?} is too low; kubeforge can downgrade only 1 minor version at a time"
        ));
    }
    match versions::known(t.1) {
        None => minor_rules.push(format!(
            "Specified version to upgrade to {target:?} is at least one minor release higher than the newest this kubeforge knows ({}). Such an upgrade is not supported",
            newest.latest
        )),
        Some(release) => {
            let known = semver(&release.latest).expect("table versions parse");
            if t > known {
                verdict.skippable.push(format!(
                    "Specified version to upgrade to {target:?} is higher than the newest v1.{} patch this kubeforge knows ({}): its images and flags were not checked against it",
                    t.1, release.latest
                ));
            }
        }
    }
    if unstable {
        verdict.skippable.extend(minor_rules);
    } else {
        verdict.mandatory.extend(minor_rules);
    }
    if let Some(pre) = pre_release(target) {
        let rc_allowed = pre.starts_with("rc") && v.allow_rc;
        if !v.allow_experimental && !rc_allowed {
            verdict.skippable.push(format!(
                "Specified version to upgrade to {target:?} is an unstable version and such upgrades weren't allowed via setting the --allow-*-upgrades flags"
            ));
        }
    }
    match v.kubelets {
        None => verdict
            .skippable
            .push("Unable to fetch kubelet version".into()),
        Some(kubelets) => {
            let too_old: Vec<&String> = kubelets
                .iter()
                .filter(|k| semver(k).is_some_and(|k| t.1 > k.1 + KUBELET_SKEW))
                .collect();
            if !too_old.is_empty() {
                verdict.skippable.push(format!(
                    "There are kubelets in this cluster that are too old that have these versions {too_old:?}"
                ));
            }
        }
    }
    verdict
}

/// Whether etcd is to move from `current` to `target`: one minor at a time (3.4 → 3.5 → 3.6), a
/// skipped minor refused naming the step in between, and never down (kubeadm's rule: false, the
/// running etcd stays).
pub fn etcd_step(current: &str, target: &str) -> Result<bool, String> {
    let (Some(c), Some(t)) = (semver(current), semver(target)) else {
        return Ok(current != target);
    };
    if (t.0, t.1) > (c.0, c.1 + 1) {
        return Err(format!(
            "etcd {current} cannot be upgraded to {target} in one step: etcd supports upgrades of one minor version at a time, so move it to 3.{}.x first (set etcd.local.imageTag in the kubeadm-config ConfigMap to a 3.{} image and run `upgrade apply` at the current version), then upgrade",
            c.1 + 1,
            c.1 + 1
        ));
    }
    Ok(t > c || (t == c && current != target))
}

/// kubeadm's text for a verdict: the fatal errors, else the skippable ones unless `force`.
pub fn refusal(verdict: &Verdict, force: bool) -> Option<String> {
    let list = |errors: &[String]| {
        errors
            .iter()
            .map(|e| format!("\t- {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if !verdict.mandatory.is_empty() {
        return Some(format!(
            "the version argument is invalid due to these fatal errors:\n\n{}\n\nPlease fix the misalignments highlighted above and try upgrading again",
            list(&verdict.mandatory)
        ));
    }
    if !verdict.skippable.is_empty() && !force {
        return Some(format!(
            "the version argument is invalid due to these errors:\n\n{}\n\nCan be bypassed if you pass the --force flag",
            list(&verdict.skippable)
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions<'a>(cluster: &'a str, target: &'a str, kubelets: &'a [String]) -> Versions<'a> {
        Versions {
            cluster: Some(cluster),
            target,
            kubelets: Some(kubelets),
            allow_experimental: false,
            allow_rc: false,
        }
    }

    #[test]
    fn one_minor_up_to_a_known_patch_passes() {
        let kubelets = vec!["v1.35.6".to_string()];
        assert_eq!(
            enforce(&versions("v1.35.6", "v1.36.3", &kubelets)),
            Verdict::default()
        );
        assert_eq!(
            enforce(&versions("v1.35.6", "v1.35.6", &kubelets)),
            Verdict::default()
        );
    }

    #[test]
    fn two_minors_up_is_fatal_and_a_newer_patch_needs_force() {
        let kubelets = vec!["v1.34.3".to_string()];
        let v = enforce(&versions("v1.34.3", "v1.36.3", &kubelets));
        assert!(
            v.mandatory[0].contains("only 1 minor version at a time"),
            "{v:?}"
        );
        let v = enforce(&versions("v1.35.6", "v1.36.9", &kubelets));
        assert!(v.mandatory.is_empty() && v.skippable.len() == 1, "{v:?}");
        assert!(refusal(&v, false).unwrap().contains("--force"));
        assert!(refusal(&v, true).is_none());
        let v = enforce(&versions("v1.35.6", "v1.36.0-rc.1", &kubelets));
        assert!(v.skippable[0].contains("unstable"), "{v:?}");
    }

    #[test]
    fn old_kubelets_and_unknown_minors_are_named() {
        let kubelets = vec!["v1.32.1".to_string()];
        let v = enforce(&versions("v1.35.6", "v1.36.3", &kubelets));
        assert!(v.skippable[0].contains("too old"), "{v:?}");
        let v = enforce(&versions("v1.36.3", "v1.37.0", &[]));
        assert!(
            v.mandatory[0].contains("newest this kubeforge knows"),
            "{v:?}"
        );
    }

    #[test]
    fn etcd_moves_one_minor_at_a_time() {
        assert_eq!(etcd_step("3.5.24-0", "3.6.8-0"), Ok(true));
        assert_eq!(etcd_step("3.6.8-0", "3.6.8-0"), Ok(false));
        assert_eq!(etcd_step("3.6.8-0", "3.6.6-0"), Ok(false));
        let e = etcd_step("3.4.23-0", "3.6.8-0").unwrap_err();
        assert!(e.contains("3.5.x first"), "{e}");
    }
}
