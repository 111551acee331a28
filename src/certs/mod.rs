//! The certificates' lifecycle on a node, over the PKI and the kubeconfigs: when each expires.

pub mod expiration;
