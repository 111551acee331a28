//! The Kubernetes releases this kubeforge knows (`templates/versions.yaml`): per minor, its newest
//! known patch and the etcd, CoreDNS and pause images that go with it. Everything that names a
//! default image, and `upgrade plan`, reads this one table.

use std::sync::OnceLock;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub minor: u32,
    /// The newest patch of this minor kubeforge knows, `v1.35.6`.
    pub latest: String,
    /// etcd's image tag, `3.6.6-0`.
    pub etcd: String,
    /// CoreDNS's image tag, `v1.13.1`.
    pub coredns: String,
    /// The pause (sandbox) image tag.
    pub pause: String,
}

/// Every known release, oldest minor first.
pub fn releases() -> &'static [Release] {
    static TABLE: OnceLock<Vec<Release>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let table: Vec<Release> = serde_yaml::from_str(include_str!("../templates/versions.yaml"))
            .expect("templates/versions.yaml is a list of releases");
        assert!(!table.is_empty() && table.windows(2).all(|w| w[0].minor < w[1].minor));
        table
    })
}

/// The release of `minor`; a minor newer or older than the table gets its nearest entry (kubeadm
/// falls back the same way for etcd).
pub fn for_minor(minor: u32) -> &'static Release {
    let table = releases();
    table.iter().find(|r| r.minor == minor).unwrap_or_else(|| {
        if minor < table[0].minor {
            &table[0]
        } else {
            table.last().expect("not empty")
        }
    })
}

/// The release of `minor`, only when the table has it.
pub fn known(minor: u32) -> Option<&'static Release> {
    releases().iter().find(|r| r.minor == minor)
}

/// The newest Kubernetes version kubeforge knows: what it stands for where kubeadm uses its own
/// version (the version-skew policy).
pub fn newest() -> &'static Release {
    releases().last().expect("not empty")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_covers_each_minor_once_with_its_own_patch() {
        for r in releases() {
            let (major, minor, _) = crate::config::semver(&r.latest).unwrap();
            assert_eq!((major, minor), (1, r.minor), "{r:?}");
            assert!(crate::config::semver(&r.etcd).is_some(), "{r:?}");
        }
        assert_eq!(for_minor(35).etcd, "3.6.6-0");
        assert_eq!(for_minor(99).minor, newest().minor);
        assert_eq!(for_minor(1).minor, releases()[0].minor);
        assert!(known(99).is_none());
    }
}
