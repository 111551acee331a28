//! Before etcd changes: the cluster's health (every member answers, a quorum of voters, no alarm)
//! and a consistent snapshot taken through the Maintenance API — never a copy of a live data dir —
//! verified by the SHA-256 etcd appends to it. When the old etcd cannot start on its data again,
//! `restore_command` is what the old etcd image runs to rebuild the data dir from the snapshot.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{answers, connect, Tls};

/// What was saved: enough to tell later which state a restore brings back.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// The revision of the store when the snapshot was taken.
    pub revision: i64,
    /// SHA-256 of the whole file, hex.
    pub sha256: String,
    pub size: u64,
    /// The version of the etcd that served it.
    pub etcd_version: String,
}

/// The etcd cluster as seen from this node's member.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub members: usize,
    pub voters: usize,
    /// Client URLs of the members that answered.
    pub answering: Vec<String>,
    /// Members that did not answer, by name or peer URL.
    pub silent: Vec<String>,
    pub alarms: Vec<String>,
}

impl Health {
    /// Why changing etcd now would be unsafe, if it would.
    pub fn problem(&self) -> Option<String> {
        let answering_voters = self.members - self.silent.len();
        if !self.alarms.is_empty() {
            return Some(format!("etcd raises alarms: {}", self.alarms.join(", ")));
        }
        if !self.silent.is_empty() {
            let quorum = self.voters / 2 + 1;
            let lost = answering_voters < quorum;
            return Some(format!(
                "etcd members do not answer: {}{}",
                self.silent.join(", "),
                if lost {
                    format!(
                        " (quorum lost: {answering_voters} of {} voters answer)",
                        self.voters
                    )
                } else {
                    String::new()
                }
            ));
        }
        None
    }
}

/// Asks every member of the cluster `client_url` belongs to for its status.
pub async fn health(client_url: &str, tls: &Tls) -> Result<Health> {
    let mut local = connect(&[client_url.to_string()], tls).await?;
    let members = local
        .member_list()
        .await
        .map_err(|e| anyhow!("listing etcd members at {client_url}: {e}"))?;
    let alarms = local
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        )
        .await
        .map(|r| {
            r.alarms()
                .iter()
                .map(|a| format!("{:?} on member {:x}", a.alarm(), a.member_id()))
                .collect()
        })
        .unwrap_or_default();
    let mut health = Health {
        members: members.members().len(),
        voters: members.members().iter().filter(|m| !m.is_learner()).count(),
        answering: Vec::new(),
        silent: Vec::new(),
        alarms,
    };
    for member in members.members() {
        let url = member.client_urls().first().cloned().unwrap_or_default();
        if !url.is_empty() && answers(&url, tls).await {
            health.answering.push(url);
        } else {
            let name = if member.name().is_empty() {
                member.peer_urls().join(",")
            } else {
                member.name().to_string()
            };
            health.silent.push(name);
        }
    }
    Ok(health)
}

/// Streams a snapshot from the member at `client_url` into `dest` (through `dest.part`, renamed
/// only once etcd's own checksum at its end matches).
pub async fn save(client_url: &str, tls: &Tls, dest: &Path, limit: Duration) -> Result<Snapshot> {
    let mut client = connect(&[client_url.to_string()], tls).await?;
    let status = client.status().await?;
    let etcd_version = status.version().to_string();
    let mut revision = status.header().map_or(0, |h| h.revision());
    let part = dest.with_extension("part");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&part)
        .with_context(|| format!("creating {}", part.display()))?;
    let stream = async {
        let mut stream = client.snapshot().await?;
        while let Some(chunk) = stream.message().await? {
            if let Some(h) = chunk.header().filter(|h| h.revision() > 0) {
                revision = h.revision();
            }
            file.write_all(chunk.blob())?;
        }
        file.sync_all()?;
        Ok::<_, anyhow::Error>(())
    };
    match tokio::time::timeout(limit, stream).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = std::fs::remove_file(&part);
            return Err(e.context(format!("taking an etcd snapshot from {client_url}")));
        }
        Err(_) => {
            let _ = std::fs::remove_file(&part);
            bail!("the etcd snapshot from {client_url} did not finish within {limit:?}");
        }
    }
    let (sha256, size) = verify(&part)?;
    std::fs::rename(&part, dest)?;
    Ok(Snapshot {
        revision,
        sha256,
        size,
        etcd_version,
    })
}

/// Checks the SHA-256 etcd appends to a snapshot (the last 32 bytes hash everything before
/// them); the hash of the whole file and its size.
pub fn verify(path: &Path) -> Result<(String, u64)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() < 32 + 4096 {
        bail!(
            "{} is too short to be an etcd snapshot ({} bytes)",
            path.display(),
            bytes.len()
        );
    }
    let (db, trailer) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(db).as_slice() != trailer {
        bail!(
            "{} is not intact: its checksum does not match its content",
            path.display()
        );
    }
    Ok((hex::encode(Sha256::digest(&bytes)), bytes.len() as u64))
}

/// The command the old etcd image runs to restore `snapshot` into `data_dir` as member `name`
/// of a one-member cluster: `etcdutl` from etcd 3.5 on, `etcdctl` (API v3) before. From 3.6 the
/// revision is bumped and marked compacted, so the API servers' watches, which saw revisions
/// past the snapshot, start over instead of missing what changed.
pub fn restore_command(
    etcd_version: &str,
    snapshot: &str,
    data_dir: &str,
    name: &str,
    peer_url: &str,
) -> Vec<String> {
    let minor = crate::config::semver(etcd_version).map_or(6, |v| v.1);
    let tool = if minor >= 5 { "etcdutl" } else { "etcdctl" };
    let mut command = vec![
        tool.to_string(),
        "snapshot".into(),
        "restore".into(),
        snapshot.to_string(),
        format!("--data-dir={data_dir}"),
        format!("--name={name}"),
        format!("--initial-cluster={name}={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
    ];
    if minor >= 6 {
        command.push("--bump-revision=1000000000".into());
        command.push("--mark-compacted".into());
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_checked_against_its_trailing_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let db = vec![7u8; 8192];
        let mut file = db.clone();
        file.extend_from_slice(&Sha256::digest(&db));
        std::fs::write(&path, &file).unwrap();
        let (hash, size) = verify(&path).unwrap();
        assert_eq!(size, 8192 + 32);
        assert_eq!(hash, hex::encode(Sha256::digest(&file)));
        file[100] = 8;
        std::fs::write(&path, &file).unwrap();
        assert!(verify(&path)
            .unwrap_err()
            .to_string()
            .contains("not intact"));
    }

    #[test]
    fn the_restore_tool_follows_the_old_etcds_version() {
        let c = restore_command("3.4.23-0", "/b/s.db", "/d", "n1", "https://10.0.0.1:2380");
        assert_eq!(c[0], "etcdctl");
        assert!(!c.iter().any(|a| a.contains("bump")));
        let c = restore_command("3.6.5-0", "/b/s.db", "/d", "n1", "https://10.0.0.1:2380");
        assert_eq!(c[0], "etcdutl");
        assert!(c.contains(&"--initial-cluster=n1=https://10.0.0.1:2380".to_string()));
        assert!(c.contains(&"--mark-compacted".to_string()));
    }
}
