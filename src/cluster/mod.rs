//! The cluster side (contract 6, 7): the objects kubeadm creates once the control plane is up,
//! rendered from `templates/cluster/` and applied server-side; bootstrap tokens and the
//! cluster-info signature; the encrypted `kubeadm-certs`; a joining node's discovery; marking a
//! control-plane node.

pub mod certs_secret;
pub mod control_plane;
pub mod discovery;
pub mod objects;
pub mod stored;
pub mod token;
pub mod tokens;
