//! The approval rule against real PEM requests made with rcgen, as a kubelet makes them.

use super::*;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequestSpec, CertificateSigningRequestStatus,
};
use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
use k8s_openapi::ByteString;
use rcgen::{CertificateParams, DnType, KeyPair, SanType};

const NODE: &str = "node-a";

fn node(name: &str) -> Node {
    let address = |t: &str, a: &str| NodeAddress {
        type_: t.into(),
        address: a.into(),
    };
    Node {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        status: Some(NodeStatus {
            addresses: Some(vec![
                address("InternalIP", "10.0.0.5"),
                address("ExternalIP", "2001:db8::5"),
                address("Hostname", name),
                address("InternalDNS", "node-a.internal"),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A PEM request with subject CN=`cn`, O=`org` and these SANs.
fn request(cn: &str, org: &str, sans: Vec<SanType>) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, org);
    params.subject_alt_names = sans;
    let key = KeyPair::generate().unwrap();
    params
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
        .into_bytes()
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

fn ip(text: &str) -> SanType {
    SanType::IpAddress(text.parse().unwrap())
}

fn kubelet_sans() -> Vec<SanType> {
    vec![dns(NODE), ip("10.0.0.5"), ip("2001:db8::5")]
}

/// The CSR a kubelet of node `name` submits: requester and subject system:node:<name>.
fn csr(name: &str, pem: Vec<u8>) -> CertificateSigningRequest {
    let user = format!("system:node:{name}");
    CertificateSigningRequest {
        metadata: kube::api::ObjectMeta {
            name: Some("csr-1".into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            signer_name: SIGNER.into(),
            username: Some(user),
            groups: Some(vec!["system:nodes".into(), "system:authenticated".into()]),
            usages: Some(vec!["digital signature".into(), "server auth".into()]),
            request: ByteString(pem),
            ..Default::default()
        },
        status: None,
    }
}

fn kubelet_csr() -> CertificateSigningRequest {
    csr(
        NODE,
        request("system:node:node-a", "system:nodes", kubelet_sans()),
    )
}

fn left(decision: Decision, says: &str) {
    match decision {
        Decision::Leave(reason) => assert!(reason.contains(says), "{reason:?} lacks {says:?}"),
        other => panic!("expected pending ({says}), got {other:?}"),
    }
}

#[test]
fn the_kubelets_own_request_is_approved() {
    assert_eq!(decide(&kubelet_csr(), Some(&node(NODE))), Decision::Approve);
    // key encipherment (RSA keys) is a serving usage too; a subset of the node's names suffices.
    let mut c = csr(
        NODE,
        request("system:node:node-a", "system:nodes", vec![ip("10.0.0.5")]),
    );
    c.spec.usages = Some(vec![
        "digital signature".into(),
        "key encipherment".into(),
        "server auth".into(),
    ]);
    assert_eq!(decide(&c, Some(&node(NODE))), Decision::Approve);
}

#[test]
fn a_name_or_address_the_node_does_not_have_stays_pending() {
    let n = node(NODE);
    let with = |sans| csr(NODE, request("system:node:node-a", "system:nodes", sans));
    left(
        decide(&with(vec![dns(NODE), ip("10.0.0.6")]), Some(&n)),
        "IP address 10.0.0.6",
    );
    left(
        decide(
            &with(vec![dns("kubernetes.default"), ip("10.0.0.5")]),
            Some(&n),
        ),
        "DNS name kubernetes.default",
    );
    left(decide(&with(vec![]), Some(&n)), "no DNS name and no IP");
    let email = SanType::Rfc822Name("a@example.com".try_into().unwrap());
    left(
        decide(&with(vec![ip("10.0.0.5"), email]), Some(&n)),
        "e-mail",
    );
    let uri = SanType::URI("spiffe://x/y".try_into().unwrap());
    left(decide(&with(vec![ip("10.0.0.5"), uri]), Some(&n)), "URI");
}

#[test]
fn another_nodes_name_or_a_missing_node_stays_pending() {
    // node-b asking for a certificate in node-a's name.
    let mut c = kubelet_csr();
    c.spec.username = Some("system:node:node-b".into());
    left(decide(&c, Some(&node("node-b"))), "subject CN");
    // Its own name but node-a's address: node-b's Node has other addresses.
    let mut other = node("node-b");
    other.status.as_mut().unwrap().addresses.as_mut().unwrap()[0].address = "10.0.0.9".into();
    let c = csr(
        "node-b",
        request("system:node:node-b", "system:nodes", vec![ip("10.0.0.5")]),
    );
    left(decide(&c, Some(&other)), "IP address 10.0.0.5");
    // A node that does not exist.
    let c = csr(
        "ghost",
        request("system:node:ghost", "system:nodes", vec![ip("10.0.0.5")]),
    );
    left(decide(&c, None), "no Node ghost");
}

#[test]
fn the_requester_subject_signer_and_usages_must_be_a_kubelets() {
    let n = node(NODE);
    let mut c = kubelet_csr();
    c.spec.signer_name = "kubernetes.io/kube-apiserver-client-kubelet".into();
    left(decide(&c, Some(&n)), "signer");
    let mut c = kubelet_csr();
    c.spec.username = Some("kubernetes-admin".into());
    left(decide(&c, Some(&n)), "not by a node");
    let mut c = kubelet_csr();
    c.spec.groups = Some(vec!["kubeadm:cluster-admins".into()]);
    left(decide(&c, Some(&n)), "not in group system:nodes");
    let mut c = kubelet_csr();
    c.spec.usages = Some(vec!["server auth".into(), "client auth".into()]);
    left(decide(&c, Some(&n)), "usage \"client auth\"");
    let mut c = kubelet_csr();
    c.spec.usages = Some(vec!["digital signature".into()]);
    left(decide(&c, Some(&n)), "server auth");
    let c = csr(
        NODE,
        request("system:node:node-a", "system:masters", kubelet_sans()),
    );
    left(decide(&c, Some(&n)), "subject");
    let mut c = kubelet_csr();
    c.spec.request = ByteString(b"not a request".to_vec());
    left(decide(&c, Some(&n)), "not PEM");
}

#[test]
fn a_decided_csr_is_left_alone() {
    for kind in ["Approved", "Denied", "Failed"] {
        let mut c = kubelet_csr();
        c.status = Some(CertificateSigningRequestStatus {
            conditions: Some(vec![CertificateSigningRequestCondition {
                type_: kind.into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(decide(&c, Some(&node(NODE))), Decision::Decided);
    }
}
