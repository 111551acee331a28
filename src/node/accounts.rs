//! The system accounts non-root control-plane components run as. An account that exists is
//! used as it is (Debian's etcd-server makes `etcd`); a missing one is made with the system's
//! own tools (`groupadd`/`useradd --system`, which lock and update passwd, group, shadow and
//! gshadow together) at an ID kubeforge picks, so a dry-run can say which ID it would get.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// System IDs as Debian's login.defs has them (SYS_UID_MIN..SYS_UID_MAX); taken from the top.
const SYSTEM_IDS: std::ops::RangeInclusive<u32> = 100..=999;

pub const ETCD_USER: &str = "etcd";
pub const APISERVER_USER: &str = "kube-apiserver";
pub const CONTROLLER_MANAGER_USER: &str = "kube-controller-manager";
pub const SCHEDULER_USER: &str = "kube-scheduler";

/// The accounts of the control plane in the order their IDs are planned: a missing one gets the
/// free ID below those planned for the missing ones before it. Whichever is made first takes
/// exactly the ID planned for it, so the others' plans hold, and a dry-run shows the IDs a run
/// makes.
const PLANNED_ORDER: [&str; 4] = [
    ETCD_USER,
    APISERVER_USER,
    CONTROLLER_MANAGER_USER,
    SCHEDULER_USER,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    /// The group of the same name when there is one, else the user's primary group.
    pub gid: u32,
}

/// The fields of `name`'s line in a colon-separated database (`/etc/passwd`, `/etc/group`).
/// Read from the files, not through NSS as getpwnam does: kubeforge is linked statically (the
/// approver pod runs it), and a static glibc that loads an NSS module (libnss_systemd for a name
/// the files lack) crashes. kubeadm reads the same two files; system accounts live there.
fn entry(file: &str, name: &str) -> Result<Option<Vec<String>>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    Ok(text
        .lines()
        .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
        .find(|fields| fields.first().map(String::as_str) == Some(name)))
}

fn id_field(fields: &[String], index: usize, file: &str) -> Result<u32> {
    fields
        .get(index)
        .and_then(|f| f.parse().ok())
        .with_context(|| format!("{file}: {} has no numeric ID", fields[0]))
}

/// The group `name`'s ID.
fn group_id(name: &str) -> Result<Option<u32>> {
    entry("/etc/group", name)?
        .map(|g| id_field(&g, 2, "/etc/group"))
        .transpose()
}

/// The user `name`'s (uid, primary gid).
fn user_ids(name: &str) -> Result<Option<(u32, u32)>> {
    let Some(user) = entry("/etc/passwd", name)? else {
        return Ok(None);
    };
    Ok(Some((
        id_field(&user, 2, "/etc/passwd")?,
        id_field(&user, 3, "/etc/passwd")?,
    )))
}

/// The account `name` as the system knows it.
pub fn lookup(name: &str) -> Result<Option<Account>> {
    let Some((uid, primary_gid)) = user_ids(name)? else {
        return Ok(None);
    };
    Ok(Some(Account {
        name: name.to_string(),
        uid,
        gid: group_id(name)?.unwrap_or(primary_gid),
    }))
}

/// The IDs used in a colon-separated database (`/etc/passwd`, `/etc/group`: the third field).
fn used_ids(file: &str) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect())
}

/// The account `name` exists as, or the IDs `create` would give it.
pub fn existing_or_planned(name: &str) -> Result<Account> {
    planned_after(name, &PLANNED_ORDER)
}

/// The account `name`, or its plan after those of the missing accounts before it in `order`.
fn planned_after(name: &str, order: &[&str]) -> Result<Account> {
    if let Some(account) = lookup(name)? {
        return Ok(account);
    }
    let mut uids = used_ids("/etc/passwd")?;
    let mut gids = used_ids("/etc/group")?;
    for earlier in order.iter().take_while(|n| **n != name) {
        if lookup(earlier)?.is_none() {
            let planned = plan(earlier, &uids, &gids)?;
            uids.push(planned.uid);
            gids.push(planned.gid);
        }
    }
    plan(name, &uids, &gids)
}

/// Free IDs for the missing account `name`, given the IDs in use.
fn plan(name: &str, uids: &[u32], gids: &[u32]) -> Result<Account> {
    let group = group_id(name)?;
    let free_uid = |id: &u32| !uids.contains(id);
    let pick = match group {
        Some(gid) if free_uid(&gid) => Some((gid, gid)),
        Some(gid) => SYSTEM_IDS.rev().find(free_uid).map(|uid| (uid, gid)),
        None => SYSTEM_IDS
            .rev()
            .find(|id| free_uid(id) && !gids.contains(id))
            .map(|id| (id, id)),
    };
    let Some((uid, gid)) = pick else {
        bail!("no free system user and group ID ({SYSTEM_IDS:?}) for the account {name}");
    };
    Ok(Account {
        name: name.to_string(),
        uid,
        gid,
    })
}

fn run(tool: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .with_context(|| format!("running {tool} (Debian package passwd)"))?;
    if !out.status.success() {
        bail!(
            "{tool} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Makes the system user and group `name` (no home, no login shell) with `planned`'s IDs.
pub fn create(planned: &Account) -> Result<Account> {
    let name = planned.name.as_str();
    let (uid, gid) = (planned.uid.to_string(), planned.gid.to_string());
    if group_id(name)?.is_none() {
        run("groupadd", &["--system", "--gid", &gid, name])?;
    }
    run(
        "useradd",
        &[
            "--system",
            "--uid",
            &uid,
            "--gid",
            &gid,
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "kubeforge control plane",
            name,
        ],
    )?;
    lookup(name)?.with_context(|| format!("useradd made no account {name}"))
}

/// Removes the user `name` and its group; an account already gone is nothing to do. While a
/// process still runs as the user (a static pod the kubelet is stopping), userdel refuses
/// (exit 8): retried for 10 s.
pub fn remove(name: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while user_ids(name)?.is_some() {
        let out = Command::new("userdel")
            .arg(name)
            .output()
            .context("running userdel (Debian package passwd)")?;
        if out.status.success() {
            break;
        }
        if out.status.code() != Some(8) || std::time::Instant::now() > deadline {
            bail!(
                "userdel {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    if group_id(name)?.is_some() {
        run("groupdel", &[name])?;
    }
    Ok(())
}

/// The accounts listed in `record` (one name a line): the ones kubeforge made on this node.
pub fn recorded(record: &Path) -> Result<Vec<String>> {
    match std::fs::read_to_string(record) {
        Ok(text) => Ok(text.lines().map(str::to_string).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", record.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_accounts_are_planned_distinct_ids_in_order() {
        let order = ["kubeforge-no-such-a", "nobody", "kubeforge-no-such-b"];
        let a = planned_after(order[0], &order).unwrap();
        let b = planned_after(order[2], &order).unwrap();
        let alone = planned_after(order[2], &[]).unwrap();
        assert_eq!(alone.uid, a.uid, "b alone would get a's ID");
        assert!(b.uid < a.uid && b.gid < a.gid, "{a:?} {b:?}");
        assert!(!used_ids("/etc/passwd").unwrap().contains(&b.uid));
        assert!(!used_ids("/etc/group").unwrap().contains(&b.gid));
    }

    #[test]
    fn an_existing_account_is_used_and_a_missing_one_gets_a_free_system_id() {
        let nobody = existing_or_planned("nobody").unwrap();
        assert_eq!(Some(nobody.clone()), lookup("nobody").unwrap());
        let planned = existing_or_planned("kubeforge-no-such-account").unwrap();
        assert!(SYSTEM_IDS.contains(&planned.uid), "{planned:?}");
        assert_eq!(
            planned.uid, planned.gid,
            "a fresh user and group share the ID"
        );
        assert!(!used_ids("/etc/passwd").unwrap().contains(&planned.uid));
        assert!(!used_ids("/etc/group").unwrap().contains(&planned.gid));
    }
}
