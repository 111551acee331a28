//! Kubelet serving certificates signed by the cluster CA (profile hardened, docs/security.md):
//! the rule that says which `kubernetes.io/kubelet-serving` CSRs kubeforge approves, and one
//! approval pass over a cluster's CSRs. A CSR is approved only when its requester, its subject,
//! its usages and every name and address it asks for belong to one existing Node; anything else
//! is left pending (never denied: an operator may still approve it by hand).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, PostParams};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509CertificationRequest};

pub const SIGNER: &str = "kubernetes.io/kubelet-serving";
/// The approver's identity (its client certificate's CN), bound to `kubeforge:csr-approver`.
pub const APPROVER_USER: &str = "kubeforge:csr-approver";
const NODE_PREFIX: &str = "system:node:";
const NODES_GROUP: &str = "system:nodes";
const ALLOWED_USAGES: [&str; 3] = ["digital signature", "key encipherment", "server auth"];

/// What the rule says about one CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approve,
    /// Left pending, with the reason (logged, never written to the CSR).
    Leave(String),
    /// Approved, denied or failed already: nothing to do.
    Decided,
}

/// The node a CSR claims to come from: its requester's `system:node:<name>`.
pub fn requesting_node(csr: &CertificateSigningRequest) -> Option<&str> {
    let name = csr.spec.username.as_deref()?.strip_prefix(NODE_PREFIX)?;
    (!name.is_empty()).then_some(name)
}

fn decided(csr: &CertificateSigningRequest) -> bool {
    let conditions = csr.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|c| {
        c.iter()
            .any(|c| matches!(c.type_.as_str(), "Approved" | "Denied" | "Failed"))
    })
}

/// The rule. `node` is the Node named by the requester (None: no such Node).
pub fn decide(csr: &CertificateSigningRequest, node: Option<&Node>) -> Decision {
    if decided(csr) {
        return Decision::Decided;
    }
    match check(csr, node) {
        Ok(()) => Decision::Approve,
        Err(reason) => Decision::Leave(reason),
    }
}

fn check(csr: &CertificateSigningRequest, node: Option<&Node>) -> Result<(), String> {
    let spec = &csr.spec;
    if spec.signer_name != SIGNER {
        return Err(format!("signer {:?} is not {SIGNER}", spec.signer_name));
    }
    let username = spec.username.as_deref().unwrap_or_default();
    let name = requesting_node(csr)
        .ok_or_else(|| format!("requested by {username:?}, not by a node (system:node:<name>)"))?;
    if !spec.groups.iter().flatten().any(|g| g == NODES_GROUP) {
        return Err(format!(
            "requester {username:?} is not in group {NODES_GROUP}"
        ));
    }
    let usages: Vec<&str> = spec.usages.iter().flatten().map(String::as_str).collect();
    if let Some(extra) = usages.iter().find(|u| !ALLOWED_USAGES.contains(u)) {
        return Err(format!("usage {extra:?} is not a kubelet serving usage"));
    }
    if !usages.contains(&"server auth") {
        return Err("usages lack \"server auth\"".into());
    }
    let request = parse_request(&spec.request.0)?;
    if request.common_names != [username] || request.organizations != [NODES_GROUP] {
        return Err(format!(
            "subject CN={:?} O={:?} is not CN={username} O={NODES_GROUP}",
            request.common_names, request.organizations
        ));
    }
    if let Some(other) = &request.other_name {
        return Err(format!("the request asks for a {other} name"));
    }
    if request.dns.is_empty() && request.ips.is_empty() {
        return Err("the request names no DNS name and no IP address".into());
    }
    let node = node.ok_or_else(|| format!("there is no Node {name}"))?;
    let (dns, ips) = node_names(node);
    if let Some(d) = request.dns.iter().find(|d| !dns.contains(d)) {
        return Err(format!("DNS name {d} is not an address of Node {name}"));
    }
    if let Some(ip) = request.ips.iter().find(|ip| !ips.contains(ip)) {
        return Err(format!("IP address {ip} is not an address of Node {name}"));
    }
    Ok(())
}

/// What a PEM certificate request asks for.
#[derive(Debug, Default)]
struct Request {
    common_names: Vec<String>,
    organizations: Vec<String>,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    /// The kind of the first SAN that is neither a DNS name nor an IP address (e-mail, URI, …).
    other_name: Option<String>,
}

fn parse_request(pem_bytes: &[u8]) -> Result<Request, String> {
    let block = pem::parse(pem_bytes).map_err(|e| format!("the request is not PEM: {e}"))?;
    if block.tag() != "CERTIFICATE REQUEST" {
        return Err(format!("the request is a PEM {:?} block", block.tag()));
    }
    let (_, csr) = X509CertificationRequest::from_der(block.contents())
        .map_err(|e| format!("the request does not parse: {e}"))?;
    let subject = &csr.certification_request_info.subject;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue| {
        a.as_str().map(str::to_string).unwrap_or_default()
    };
    let mut request = Request {
        common_names: subject.iter_common_name().map(text).collect(),
        organizations: subject.iter_organization().map(text).collect(),
        ..Request::default()
    };
    if subject.iter_attributes().count() != request.common_names.len() + request.organizations.len()
    {
        request.other_name = Some("subject attribute other than CN and O".into());
    }
    for ext in csr.requested_extensions().into_iter().flatten() {
        let ParsedExtension::SubjectAlternativeName(san) = ext else {
            continue;
        };
        for name in &san.general_names {
            match name {
                GeneralName::DNSName(d) => request.dns.push(d.to_string()),
                GeneralName::IPAddress(bytes) => match ip_from_bytes(bytes) {
                    Some(ip) => request.ips.push(ip),
                    None => request.other_name = Some("malformed IP".into()),
                },
                GeneralName::RFC822Name(_) => {
                    request.other_name.get_or_insert("e-mail".into());
                }
                GeneralName::URI(_) => {
                    request.other_name.get_or_insert("URI".into());
                }
                _ => {
                    request.other_name.get_or_insert("non-DNS, non-IP".into());
                }
            }
        }
    }
    Ok(request)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// A Node's DNS names (Hostname, InternalDNS, ExternalDNS) and IPs (InternalIP, ExternalIP).
fn node_names(node: &Node) -> (Vec<String>, Vec<IpAddr>) {
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for a in addresses.into_iter().flatten() {
        match a.type_.as_str() {
            "Hostname" | "InternalDNS" | "ExternalDNS" => dns.push(a.address.clone()),
            "InternalIP" | "ExternalIP" => ips.extend(a.address.parse::<IpAddr>().ok()),
            _ => {}
        }
    }
    (dns, ips)
}

/// One CSR an approval pass looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Looked {
    pub csr: String,
    pub node: Option<String>,
    /// Approved by this pass.
    pub approved: bool,
    /// Why it stays pending (None when approved).
    pub reason: Option<String>,
}

/// Every CSR for the kubelet-serving signer.
async fn serving_csrs(
    csrs: &Api<CertificateSigningRequest>,
) -> Result<Vec<CertificateSigningRequest>> {
    let params = ListParams::default().fields(&format!("spec.signerName={SIGNER}"));
    let list = csrs
        .list(&params)
        .await
        .context("listing the kubelet-serving CSRs")?;
    Ok(list.items)
}

/// One pass: every undecided kubelet-serving CSR (of `only_node`'s, when given) decided by the
/// rule; the matching ones approved through the `approval` subresource (an update, as the
/// approver's ClusterRole allows).
pub async fn approval_pass(client: &kube::Client, only_node: Option<&str>) -> Result<Vec<Looked>> {
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let mut looked = Vec::new();
    for mut csr in serving_csrs(&csrs).await? {
        let node_name = requesting_node(&csr).map(str::to_string);
        if only_node.is_some() && node_name.as_deref() != only_node {
            continue;
        }
        let node = match &node_name {
            Some(n) => nodes
                .get_opt(n)
                .await
                .with_context(|| format!("reading Node {n}"))?,
            None => None,
        };
        let name = csr.metadata.name.clone().unwrap_or_default();
        let (approved, reason) = match decide(&csr, node.as_ref()) {
            Decision::Decided => continue,
            Decision::Leave(reason) => (false, Some(reason)),
            Decision::Approve => match approve(&csrs, &mut csr, &name).await {
                Ok(()) => (true, None),
                // Decided meanwhile (another approver): nothing left to do.
                Err(e) if crate::kube::api_status(&e) == Some(409) => continue,
                Err(e) => return Err(e),
            },
        };
        looked.push(Looked {
            csr: name,
            node: node_name,
            approved,
            reason,
        });
    }
    Ok(looked)
}

async fn approve(
    csrs: &Api<CertificateSigningRequest>,
    csr: &mut CertificateSigningRequest,
    name: &str,
) -> Result<()> {
    let status = csr.status.get_or_insert_with(Default::default);
    status
        .conditions
        .get_or_insert_with(Vec::new)
        .push(CertificateSigningRequestCondition {
        type_: "Approved".into(),
        status: "True".into(),
        reason: Some("KubeforgeNodeMatch".into()),
        message: Some(
            "kubeforge: the requester, subject, usages and every name and address match its Node"
                .into(),
        ),
        ..Default::default()
    });
    csrs.replace_subresource("approval", name, &PostParams::default(), csr)
        .await
        .with_context(|| format!("approving CSR {name}"))?;
    Ok(())
}

/// Whether a certificate is issued (approved and signed) for one of `node`'s serving CSRs.
pub async fn issued_for(client: &kube::Client, node: &str) -> Result<bool> {
    let csrs = serving_csrs(&Api::all(client.clone())).await?;
    Ok(csrs.iter().any(|c| {
        requesting_node(c) == Some(node)
            && c.status
                .as_ref()
                .and_then(|s| s.certificate.as_ref())
                .is_some_and(|cert| !cert.0.is_empty())
    }))
}

/// This node's serving CSRs approved as the rule says until one is issued, or `limit` passes
/// (false): the kubelet submits its CSR some seconds after it registers its Node and retries
/// with a backoff, so the first passes may find nothing.
pub async fn approve_own(client: &kube::Client, node: &str, limit: Duration) -> Result<bool> {
    let start = Instant::now();
    loop {
        match approval_pass(client, Some(node)).await {
            Ok(looked) => {
                for l in looked.iter().filter(|l| !l.approved) {
                    let reason = l.reason.as_deref().unwrap_or_default();
                    tracing::warn!("left {} pending: {reason}", l.csr);
                }
            }
            Err(e) => tracing::info!("approval pass: {e:#}"),
        }
        if issued_for(client, node).await.unwrap_or(false) {
            return Ok(true);
        }
        if start.elapsed() > limit {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
#[path = "serving_tests.rs"]
mod tests;
