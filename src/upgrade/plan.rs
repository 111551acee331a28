//! `upgrade plan`: the versions running in the cluster, the upgrades this kubeforge can offer from
//! its own version table (no network), and kubeadm's two outputs for them — the text tables and
//! the `UpgradePlan` object (output.kubeadm.k8s.io/v1alpha3).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use crate::config::semver;
use crate::versions;

/// What runs in the cluster now, as kubeadm's plan reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    /// The API server's version, `v1.35.6`.
    pub version: String,
    /// kubelet version → node names.
    pub kubelets: BTreeMap<String, Vec<String>>,
    /// component (`kube-apiserver`, `kube-controller-manager`, `kube-scheduler`, `etcd`) →
    /// version (image tag) → node names.
    pub components: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// The CoreDNS Deployment's image tag, if it exists.
    pub dns: Option<String>,
    /// The component configs' stored apiVersions (kube-proxy, kubelet), when found.
    pub kube_proxy_config: Option<String>,
    pub kubelet_config: Option<String>,
}

impl ClusterState {
    pub fn etcd_is_local(&self) -> bool {
        self.components.get("etcd").is_some_and(|v| !v.is_empty())
    }
}

/// One upgrade on offer: its description and target version.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub description: String,
    pub version: String,
}

/// The upgrades on offer: the newest known patch of the cluster's minor and the newest of the
/// next minor, when newer than the cluster; or exactly `requested`.
pub fn offers(cluster: &str, requested: Option<&str>) -> Vec<Offer> {
    let Some(c) = semver(cluster) else {
        return Vec::new();
    };
    let series = |minor: u32| format!("version in the v1.{minor} series");
    if let Some(v) = requested {
        let same_minor = semver(v).is_some_and(|t| t.1 == c.1);
        return vec![Offer {
            description: if same_minor {
                series(c.1)
            } else {
                "stable version".into()
            },
            version: v.to_string(),
        }];
    }
    let mut offers = Vec::new();
    if let Some(patch) = versions::known(c.1).filter(|r| semver(&r.latest) > Some(c)) {
        offers.push(Offer {
            description: series(c.1),
            version: patch.latest.clone(),
        });
    }
    if let Some(next) = versions::known(c.1 + 1) {
        offers.push(Offer {
            description: "stable version".into(),
            version: next.latest.clone(),
        });
    }
    offers
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentUpgrade {
    pub name: String,
    pub current_version: String,
    pub new_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node_name: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AvailableUpgrade {
    pub description: String,
    pub components: Vec<ComponentUpgrade>,
}

/// The targets of an offer beyond the Kubernetes version itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    pub etcd: Option<String>,
    pub dns: String,
}

fn row(name: &str, current: &str, new: &str, node: &str) -> ComponentUpgrade {
    ComponentUpgrade {
        name: name.into(),
        current_version: current.into(),
        new_version: new.into(),
        node_name: node.into(),
    }
}

/// kubeadm's rows for one offer, in its order: kubelets (when any would change), the control
/// plane per node, kube-proxy, CoreDNS, etcd per node.
pub fn available(state: &ClusterState, offer: &Offer, targets: &Targets) -> AvailableUpgrade {
    let to = &offer.version;
    let mut rows = Vec::new();
    let kubelets_change =
        state.kubelets.len() > 1 || (state.kubelets.len() == 1 && !state.kubelets.contains_key(to));
    if kubelets_change {
        for (version, nodes) in &state.kubelets {
            rows.extend(nodes.iter().map(|n| row("kubelet", version, to, n)));
        }
    }
    let per_node = |rows: &mut Vec<ComponentUpgrade>, name: &str, target: &str| {
        for (version, nodes) in state.components.get(name).into_iter().flatten() {
            rows.extend(nodes.iter().map(|n| row(name, version, target, n)));
        }
    };
    for name in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        per_node(&mut rows, name, to);
    }
    rows.push(row(
        "kube-proxy",
        state.version.trim_start_matches('v'),
        to,
        "",
    ));
    if let Some(dns) = &state.dns {
        rows.push(row("CoreDNS", dns, &targets.dns, ""));
    }
    if let Some(etcd) = &targets.etcd {
        per_node(&mut rows, "etcd", etcd);
    }
    AvailableUpgrade {
        description: offer.description.clone(),
        components: rows,
    }
}

/// kubeadm's `ComponentConfigVersionState` rows.
pub fn config_versions(state: &ClusterState) -> Value {
    let entry = |group: &str, current: &Option<String>, preferred: &str| {
        let current = current
            .as_deref()
            .map(|v| v.rsplit('/').next().unwrap_or(v).to_string())
            .unwrap_or_default();
        json!({
            "group": group,
            "currentVersion": current,
            "preferredVersion": preferred,
            "manualUpgradeRequired": !current.is_empty() && current != preferred,
        })
    };
    json!([
        entry(
            "kubeproxy.config.k8s.io",
            &state.kube_proxy_config,
            "v1alpha1"
        ),
        entry("kubelet.config.k8s.io", &state.kubelet_config, "v1beta1"),
    ])
}

/// The `UpgradePlan` object of `plan -o json`.
pub fn json(upgrades: &[AvailableUpgrade], state: &ClusterState) -> Value {
    let mut plan = json!({
        "kind": "UpgradePlan",
        "apiVersion": "output.kubeadm.k8s.io/v1alpha3",
    });
    if !upgrades.is_empty() {
        plan["availableUpgrades"] = serde_json::to_value(upgrades).expect("serializes");
    }
    plan["configVersions"] = config_versions(state);
    plan
}

/// Go's tabwriter as kubeadm sets it up (min width 10, padding 3): every column but the last
/// padded to its widest cell plus 3.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            let widest = rows
                .iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count());
            (widest.max().unwrap_or(0) + 3).max(10)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}", width = widths[c]));
            }
        }
        out.push('\n');
    }
    out
}

const SEPARATOR: &str = "_____________________________________________________________________\n\n";

fn header() -> Vec<String> {
    ["COMPONENT", "NODE", "CURRENT", "TARGET"]
        .map(String::from)
        .to_vec()
}

fn cells(c: &ComponentUpgrade) -> Vec<String> {
    vec![
        c.name.clone(),
        c.node_name.clone(),
        c.current_version.clone(),
        c.new_version.clone(),
    ]
}

/// kubeadm's text: per upgrade the kubelet table, the component table and the command; then the
/// component configs' table.
pub fn text(upgrades: &[AvailableUpgrade], state: &ClusterState) -> String {
    let mut out = String::new();
    for up in upgrades {
        let target = up
            .components
            .iter()
            .find(|c| c.name == "kube-apiserver")
            .map_or("", |c| c.new_version.as_str());
        let flag = match target.split_once('-') {
            Some((_, pre)) if pre.starts_with("rc") => " --allow-release-candidate-upgrades",
            Some(_) => " --allow-experimental-upgrades",
            None => "",
        };
        out.push_str("Components that must be upgraded manually after you have upgraded the control plane with 'kubeforge upgrade apply':\n");
        let mut kubelets = vec![header()];
        kubelets.extend(
            up.components
                .iter()
                .filter(|c| c.name == "kubelet")
                .map(cells),
        );
        out.push_str(&table(&kubelets));
        out.push_str(&format!("\nUpgrade to the latest {}:\n\n", up.description));
        let mut rest = vec![header()];
        rest.extend(
            up.components
                .iter()
                .filter(|c| c.name != "kubelet")
                .map(cells),
        );
        out.push_str(&table(&rest));
        out.push_str("\nYou can now apply the upgrade by executing the following command:\n\n");
        out.push_str(&format!("\tkubeforge upgrade apply {target}{flag}\n\n"));
        out.push_str(SEPARATOR);
    }
    out.push_str("\nThe table below shows the current state of component configs as understood by this version of kubeforge.\nConfigs that have a \"yes\" mark in the \"MANUAL UPGRADE REQUIRED\" column require manual config upgrade or\nresetting to kubeforge defaults before a successful upgrade can be performed. The version to manually\nupgrade to is denoted in the \"PREFERRED VERSION\" column.\n\n");
    let mut configs = vec![[
        "API GROUP",
        "CURRENT VERSION",
        "PREFERRED VERSION",
        "MANUAL UPGRADE REQUIRED",
    ]
    .map(String::from)
    .to_vec()];
    for c in config_versions(state).as_array().expect("a list") {
        let dash = |k: &str| match c[k].as_str() {
            Some("") | None => "-".to_string(),
            Some(s) => s.to_string(),
        };
        configs.push(vec![
            dash("group"),
            dash("currentVersion"),
            dash("preferredVersion"),
            if c["manualUpgradeRequired"] == json!(true) {
                "yes"
            } else {
                "no"
            }
            .into(),
        ]);
    }
    out.push_str(&table(&configs));
    out.push_str(SEPARATOR);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ClusterState {
        let node = |v: &str| BTreeMap::from([(v.to_string(), vec!["cp1".to_string()])]);
        ClusterState {
            version: "v1.35.6".into(),
            kubelets: node("v1.35.6"),
            components: BTreeMap::from([
                ("kube-apiserver".into(), node("v1.35.6")),
                ("kube-controller-manager".into(), node("v1.35.6")),
                ("kube-scheduler".into(), node("v1.35.6")),
                ("etcd".into(), node("3.4.23-0")),
            ]),
            dns: Some("v1.13.1".into()),
            kube_proxy_config: Some("kubeproxy.config.k8s.io/v1alpha1".into()),
            kubelet_config: Some("kubelet.config.k8s.io/v1beta1".into()),
        }
    }

    #[test]
    fn the_tables_line_up_as_kubeadms_do() {
        let offer = Offer {
            description: "version in the v1.35 series".into(),
            version: "v1.36.3".into(),
        };
        let targets = Targets {
            etcd: Some("3.6.8-0".into()),
            dns: "v1.14.2".into(),
        };
        let up = available(&state(), &offer, &targets);
        let text = text(&[up], &state());
        // Lines as real kubeadm v1.36.3 printed them for the same cluster.
        for line in [
            "COMPONENT   NODE      CURRENT   TARGET\nkubelet     cp1       v1.35.6   v1.36.3\n",
            "COMPONENT                 NODE      CURRENT    TARGET\n",
            "kube-controller-manager   cp1       v1.35.6    v1.36.3\n",
            "kube-proxy                          1.35.6     v1.36.3\n",
            "CoreDNS                             v1.13.1    v1.14.2\n",
            "etcd                      cp1       3.4.23-0   3.6.8-0\n",
            "API GROUP                 CURRENT VERSION   PREFERRED VERSION   MANUAL UPGRADE REQUIRED\n",
            "kubeproxy.config.k8s.io   v1alpha1          v1alpha1            no\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }

    #[test]
    fn offers_come_from_the_table() {
        let o = offers("v1.35.2", None);
        assert_eq!(o[0].version, "v1.35.6");
        assert_eq!(o[1].version, versions::known(36).unwrap().latest);
        assert_eq!(offers("v1.35.6", None).len(), 1);
        assert_eq!(
            offers("v1.35.6", Some("v1.35.6"))[0].description,
            "version in the v1.35 series"
        );
    }
}
