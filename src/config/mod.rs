//! kubeadm.k8s.io v1beta4 (and v1beta3) configuration: types, defaults, validation.
