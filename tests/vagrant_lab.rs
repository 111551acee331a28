//! The vagrant/ lab is consistent: lab.env is the single source of its names, addresses and
//! versions (the Vagrantfile and the scripts read it and spell none of it out), every variable a
//! script uses is defined there, the addresses fit the network, and shellcheck passes.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

fn lab() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vagrant")
}

fn lab_env() -> BTreeMap<String, String> {
    std::fs::read_to_string(lab().join("lab.env"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=VALUE");
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

fn scripts() -> Vec<PathBuf> {
    let mut list: Vec<PathBuf> = std::fs::read_dir(lab().join("scripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    list.sort();
    list
}

struct Node {
    name: String,
    ip: Ipv4Addr,
    role: String,
}

fn nodes(env: &BTreeMap<String, String>) -> Vec<Node> {
    env["LAB_NODES"]
        .split_whitespace()
        .map(|e| {
            let parts: Vec<&str> = e.split(':').collect();
            assert_eq!(parts.len(), 3, "LAB_NODES entry {e:?} is not name:ip:role");
            Node {
                name: parts[0].into(),
                ip: parts[1].parse().expect("an IPv4 address"),
                role: parts[2].into(),
            }
        })
        .collect()
}

#[test]
fn lab_env_is_the_single_source_and_consistent() {
    let env = lab_env();
    let nodes = nodes(&env);
    let (net, prefix) = env["LAB_NETWORK"].split_once('/').unwrap();
    let net: Ipv4Addr = net.parse().unwrap();
    let mask = u32::MAX << (32 - prefix.parse::<u32>().unwrap());
    let mut names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    names.dedup();
    assert_eq!(names.len(), nodes.len(), "node names repeat");
    for n in &nodes {
        assert_eq!(
            u32::from(n.ip) & mask,
            u32::from(net),
            "{} is outside LAB_NETWORK",
            n.name
        );
        assert!(
            ["control-plane", "worker"].contains(&n.role.as_str()),
            "{}: role {}",
            n.name,
            n.role
        );
        assert_eq!(
            nodes.iter().filter(|m| m.ip == n.ip).count(),
            1,
            "{} shares its address",
            n.name
        );
    }
    assert_eq!(nodes[0].role, "control-plane", "the first node runs init");
    assert!(nodes.iter().filter(|n| n.role == "control-plane").count() >= 3);
    assert!(nodes.iter().any(|n| n.role == "worker"));
    assert_eq!(
        env["LAB_ENDPOINT_IP"],
        nodes[0].ip.to_string(),
        "the endpoint must resolve to the node that runs init"
    );
    let version = env["LAB_KUBERNETES_VERSION"].trim_start_matches('v');
    assert!(env["LAB_KUBERNETES_VERSION"].starts_with(&format!("{}.", env["LAB_KUBERNETES_MINOR"])));
    assert!(env["LAB_KUBERNETES_PACKAGE_VERSION"].starts_with(&format!("{version}-")));

    // Nothing in the Vagrantfile or the scripts spells out a value of lab.env.
    let literals: Vec<String> = nodes
        .iter()
        .flat_map(|n| [n.ip.to_string(), format!("\"{}\"", n.name)])
        .chain(
            [
                "LAB_ENDPOINT_NAME",
                "LAB_ENDPOINT_IP",
                "LAB_KUBERNETES_VERSION",
                "LAB_KUBERNETES_PACKAGE_VERSION",
                "LAB_BOX",
                "LAB_POD_SUBNET",
                "LAB_NETWORK",
            ]
            .iter()
            .map(|k| env[*k].clone()),
        )
        .collect();
    let mut files = scripts();
    files.push(lab().join("Vagrantfile"));
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for literal in &literals {
            assert!(
                !text.contains(literal.as_str()),
                "{} spells out {literal:?}: read it from lab.env",
                file.display()
            );
        }
        // Every LAB_ variable used is defined in lab.env.
        for (i, _) in text.match_indices("LAB_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            assert!(
                env.contains_key(&name),
                "{} uses {name}, which lab.env does not define",
                file.display()
            );
        }
    }

    // Every script is provisioned by the Vagrantfile, and every provisioned script exists.
    let vagrantfile = std::fs::read_to_string(lab().join("Vagrantfile")).unwrap();
    for script in scripts() {
        let name = format!("scripts/{}", script.file_name().unwrap().to_string_lossy());
        assert!(
            vagrantfile.contains(&name),
            "the Vagrantfile never runs {name}"
        );
    }
    for (i, _) in vagrantfile.match_indices("scripts/") {
        let name: String = vagrantfile[i..].chars().take_while(|c| *c != '"').collect();
        assert!(
            lab().join(&name).exists(),
            "the Vagrantfile runs {name}, which does not exist"
        );
    }
    for provider in [":libvirt", ":virtualbox"] {
        assert!(
            vagrantfile.contains(&format!("config.vm.provider {provider}")),
            "no {provider} provider"
        );
    }
}

#[test]
fn the_lab_scripts_pass_shellcheck() {
    require_tool("shellcheck");
    let mut args = vec!["-x".to_string()];
    args.extend(scripts().iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_tool("shellcheck", &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
