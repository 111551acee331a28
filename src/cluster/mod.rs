//! The cluster side of `init` (contract 6): the objects kubeadm creates once the control plane
//! is up, rendered from `templates/cluster/` and applied server-side through the kube client.

pub mod apply;
pub mod certs_secret;
pub mod objects;
pub mod token;
pub mod tokens;
