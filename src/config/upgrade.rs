//! kubeadm.k8s.io/v1beta4 UpgradeConfiguration, field for field (unknown fields are errors, as for
//! init), read from `--config` by the `upgrade` commands; never uploaded to the cluster.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::documents::{self, typed, Origin};
use super::{ConfigError, Patches, Timeouts, V1BETA4};

fn yes() -> bool {
    true
}

fn if_not_present() -> String {
    "IfNotPresent".into()
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpgradeConfiguration {
    #[serde(default)]
    pub apply: UpgradeApply,
    #[serde(default)]
    pub diff: UpgradeDiff,
    #[serde(default)]
    pub node: UpgradeNode,
    #[serde(default)]
    pub plan: UpgradePlan,
    #[serde(default)]
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpgradeApply {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kubernetes_version: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_experimental_upgrades: bool,
    #[serde(default, rename = "allowRCUpgrades", skip_serializing_if = "is_false")]
    pub allow_rc_upgrades: bool,
    #[serde(default = "yes")]
    pub certificate_renewal: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    #[serde(default = "yes")]
    pub etcd_upgrade: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub force_upgrade: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_preflight_errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patches: Option<Patches>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub print_config: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_phases: Vec<String>,
    #[serde(default = "if_not_present")]
    pub image_pull_policy: String,
    #[serde(default = "yes")]
    pub image_pull_serial: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpgradeNode {
    #[serde(default = "yes")]
    pub certificate_renewal: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    #[serde(default = "yes")]
    pub etcd_upgrade: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_preflight_errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_phases: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patches: Option<Patches>,
    #[serde(default = "if_not_present")]
    pub image_pull_policy: String,
    #[serde(default = "yes")]
    pub image_pull_serial: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpgradePlan {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kubernetes_version: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_experimental_upgrades: bool,
    #[serde(default, rename = "allowRCUpgrades", skip_serializing_if = "is_false")]
    pub allow_rc_upgrades: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    #[serde(default = "yes")]
    pub etcd_upgrade: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_preflight_errors: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub print_config: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpgradeDiff {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kubernetes_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_lines: Option<usize>,
}

/// The defaults, as serde fills an empty document.
fn empty<T: serde::de::DeserializeOwned>() -> T {
    serde_yaml::from_value(serde_yaml::Value::Mapping(Default::default())).expect("all default")
}

impl Default for UpgradeConfiguration {
    fn default() -> Self {
        empty()
    }
}
impl Default for UpgradeApply {
    fn default() -> Self {
        empty()
    }
}
impl Default for UpgradeNode {
    fn default() -> Self {
        empty()
    }
}
impl Default for UpgradePlan {
    fn default() -> Self {
        empty()
    }
}

/// `--config FILE` for the upgrade commands: one UpgradeConfiguration document (other kubeadm
/// kinds beside it are passed over, as kubeadm does); an error names the file, field and line.
pub fn load(path: &Path) -> Result<UpgradeConfiguration, ConfigError> {
    let (file, text) = super::read_file(path)?;
    parse(&text, &file)
}

pub fn parse(text: &str, file: &str) -> Result<UpgradeConfiguration, ConfigError> {
    let origin = Origin::new(file, text);
    let document = documents::split(&origin, text)?
        .into_iter()
        .find(|d| d.kind == "UpgradeConfiguration")
        .ok_or_else(|| {
            origin.doc_error(
                None,
                "kind",
                "no UpgradeConfiguration found in the supplied config",
            )
        })?;
    if document.api_version != V1BETA4 {
        return Err(origin.error_in(
            document.number,
            "apiVersion",
            &format!("UpgradeConfiguration must be {V1BETA4}"),
        ));
    }
    let doc = document.number;
    typed(&origin, doc, "UpgradeConfiguration", document.fields())
}

/// `kubeforge config print upgrade-defaults`: kubeadm's text (keys sorted, through a JSON map).
pub fn print_defaults() -> String {
    let mut value = serde_json::to_value(UpgradeConfiguration::default()).expect("serializes");
    value["apiVersion"] = V1BETA4.into();
    value["kind"] = "UpgradeConfiguration".into();
    serde_yaml::to_string(&value).expect("serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_kubeadms() {
        let text = print_defaults();
        for line in [
            "apply:\n  certificateRenewal: true\n  etcdUpgrade: true\n  imagePullPolicy: IfNotPresent\n  imagePullSerial: true\n",
            "diff: {}\n",
            "plan:\n  etcdUpgrade: true\n",
            "  upgradeManifests: 5m0s\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        assert_eq!(parse(&text, "x").unwrap(), UpgradeConfiguration::default());
    }

    #[test]
    fn an_unknown_field_is_named_with_its_line() {
        let text = "apiVersion: kubeadm.k8s.io/v1beta4\nkind: UpgradeConfiguration\napply:\n  etcdUpgrade: false\n  forceUpgrad: true\n";
        let e = parse(text, "up.yaml").unwrap_err();
        assert_eq!(e.field, "UpgradeConfiguration.apply.forceUpgrad");
        assert_eq!(e.line, Some(5));
        let ok = parse(&text.replace("forceUpgrad", "forceUpgrade"), "up.yaml").unwrap();
        assert!(!ok.apply.etcd_upgrade && ok.apply.force_upgrade);
    }
}
