//! The certificates' lifecycle on a node, over the PKI and the kubeconfigs: when each expires,
//! renewing them, and CSRs for an external CA.

pub mod csr;
pub mod expiration;
pub mod renew;
