//! `kubeforge kubeconfig user`: a kubeconfig for another user of the cluster, on stdout — a
//! client certificate signed by the cluster CA on this node (CN = the user, O = its groups), or
//! a token. No RBAC is created: what the user may do is the operator's to grant.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use time::OffsetDateTime;

use super::{Kubeconfig, User};
use crate::config::Config;
use crate::node::{HostWriter, Layout};
use crate::pki::{self, keys, Spec, Usage, BACKDATE};

/// What `kubeconfig user` was asked for.
pub struct Request {
    pub client_name: String,
    pub organizations: Vec<String>,
    pub validity: Duration,
    pub token: Option<String>,
}

/// The kubeconfig, for the control-plane endpoint of `cfg`.
pub fn kubeconfig(
    cfg: &Config,
    layout: &Layout,
    request: &Request,
    now: OffsetDateTime,
) -> Result<String> {
    let reader = HostWriter::preview(layout);
    let ca = pki::plan::load_cluster_ca(&reader, layout)?;
    let server = cfg.control_plane_endpoint_url();
    let cluster = &cfg.cluster.cluster_name;
    if let Some(token) = &request.token {
        let user = User {
            token: Some(token.clone()),
            ..User::default()
        };
        return Ok(
            Kubeconfig::new(cluster, &server, &ca.cert_pem, &request.client_name, user).to_yaml(),
        );
    }
    if ca.key.is_none() {
        bail!("{} has no key beside it (an external CA): give --token, or sign a certificate with the CA yourself", layout.pki_dir.join("ca.crt").display());
    }
    let spec = Spec {
        cn: request.client_name.clone(),
        organizations: request.organizations.clone(),
        dns: vec![],
        ips: vec![],
        usages: vec![Usage::Client],
        is_ca: false,
        validity: request.validity,
    };
    let key = keys::generate_many(cfg.cluster.encryption_algorithm, 1)?
        .pop()
        .ok_or_else(|| anyhow!("no key was made"))?;
    let cert = pki::sign(&spec, &key, Some(&ca), now - BACKDATE, now)?;
    Ok(Kubeconfig::with_client_cert(
        cluster,
        &server,
        &ca.cert_pem,
        &request.client_name,
        &cert,
        &key.pem,
    )
    .to_yaml())
}
