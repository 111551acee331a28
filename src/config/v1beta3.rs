//! kubeadm.k8s.io/v1beta3 → v1beta4, as kubeadm's own conversion does it: `extraArgs` maps become
//! `{name, value}` lists sorted by name, and `apiServer.timeoutForControlPlane` moves to
//! `InitConfiguration.timeouts.controlPlaneComponentHealthCheck`. Everything else keeps its shape,
//! so the v1beta4 types (which reject unknown fields) still catch typos.

use serde_yaml::{Mapping, Value};

use super::GoDuration;

fn args_map_to_list(parent: &mut Mapping, key: &str) {
    let Some(Value::Mapping(map)) = parent.get(key) else {
        return;
    };
    let mut args: Vec<(String, Value)> = map
        .iter()
        .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v.clone()))
        .collect();
    args.sort_by(|a, b| a.0.cmp(&b.0));
    let list = args
        .into_iter()
        .map(|(name, value)| {
            let mut m = Mapping::new();
            m.insert("name".into(), name.into());
            m.insert("value".into(), value);
            Value::Mapping(m)
        })
        .collect();
    parent.insert(key.into(), Value::Sequence(list));
}

fn child<'a>(map: &'a mut Mapping, key: &str) -> Option<&'a mut Mapping> {
    map.get_mut(key).and_then(Value::as_mapping_mut)
}

pub fn convert_init(map: &mut Mapping) {
    if let Some(nr) = child(map, "nodeRegistration") {
        args_map_to_list(nr, "kubeletExtraArgs");
    }
}

/// v1beta3 JoinConfiguration → v1beta4: kubeletExtraArgs as a list, `discovery.timeout` as
/// `timeouts.discovery`.
pub fn convert_join(map: &mut Mapping) {
    convert_init(map);
    let timeout = child(map, "discovery").and_then(|d| d.remove("timeout"));
    if let Some(t) = timeout {
        let mut timeouts = Mapping::new();
        timeouts.insert("discovery".into(), t);
        map.insert("timeouts".into(), serde_yaml::Value::Mapping(timeouts));
    }
}

/// Returns the v1beta3 `apiServer.timeoutForControlPlane`, if set; an error when it is not a
/// duration.
pub fn convert_cluster(map: &mut Mapping) -> Result<Option<GoDuration>, String> {
    let mut timeout = None;
    for component in ["apiServer", "controllerManager", "scheduler"] {
        if let Some(c) = child(map, component) {
            args_map_to_list(c, "extraArgs");
            if component == "apiServer" {
                if let Some(v) = c.remove("timeoutForControlPlane") {
                    timeout = Some(serde_yaml::from_value(v).map_err(|e| e.to_string())?);
                }
            }
        }
    }
    if let Some(local) = child(map, "etcd").and_then(|e| child(e, "local")) {
        args_map_to_list(local, "extraArgs");
    }
    Ok(timeout)
}
