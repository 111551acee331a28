//! `kubeforge exec-as` (docs/security.md, "Non-root components"): how kube-controller-manager
//! and kube-scheduler run as their own accounts while their kubeconfigs stay 0600 root:root (CIS
//! 1.1.15–1.1.18). Started as root in the component's container, it copies each file it is told
//! to read into a sealed memfd kept open across exec, points the command's arguments naming that
//! file at `/proc/self/fd/N`, drops to the account (no supplementary groups, no capabilities, no
//! new privileges), checks root cannot come back, and execs the component.

use anyhow::{anyhow, bail, Context, Result};
use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// The hidden subcommand's name.
pub const SUBCOMMAND: &str = "exec-as";

/// What one `exec-as` runs: `command` as `uid`:`gid`, each file of `reads` handed over open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub uid: u32,
    pub gid: u32,
    pub reads: Vec<PathBuf>,
    pub command: Vec<String>,
}

impl Launch {
    /// The container command that runs `self` through the kubeforge binary `binary`.
    pub fn container_command(&self, binary: &Path) -> Vec<String> {
        let mut out = vec![
            binary.display().to_string(),
            SUBCOMMAND.to_string(),
            format!("--uid={}", self.uid),
            format!("--gid={}", self.gid),
        ];
        out.extend(self.reads.iter().map(|r| format!("--read={}", r.display())));
        out.push("--".into());
        out.extend(self.command.iter().cloned());
        out
    }
}

/// `command` with every argument that names `path` (the argument itself, or the value of a
/// `--flag=PATH`) naming `replacement` instead; how many it replaced.
pub fn substitute(command: &mut [String], path: &Path, replacement: &str) -> usize {
    let path = path.to_string_lossy();
    let mut replaced = 0;
    for arg in command.iter_mut() {
        let new = match arg.split_once('=') {
            _ if *arg == path => replacement.to_string(),
            Some((flag, value)) if flag.starts_with('-') && value == path => {
                format!("{flag}={replacement}")
            }
            _ => continue,
        };
        *arg = new;
        replaced += 1;
    }
    replaced
}

fn os_error(what: String) -> anyhow::Error {
    anyhow!("{what}: {}", std::io::Error::last_os_error())
}

/// A read-only descriptor, kept open across exec, of a sealed memfd holding `path`'s content.
fn sealed_copy(path: &Path) -> Result<RawFd> {
    let content = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // The name shows in /proc/<pid>/fd (at most 249 bytes: the file's name, not its path).
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let short: String = file_name.chars().take(200).collect();
    let name = CString::new(format!("kubeforge-exec-as:{short}"))?;
    // SAFETY: `name` is a valid C string; no MFD_CLOEXEC: the component inherits it.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(os_error(format!(
            "copying {}: memfd_create",
            path.display()
        )));
    }
    let mut written = 0;
    while written < content.len() {
        let rest = &content[written..];
        // SAFETY: `rest` is valid for `rest.len()` bytes; `fd` is ours.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            return Err(os_error(format!("copying {}", path.display())));
        }
        written += n as usize;
    }
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: plain fcntl on our own descriptor.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } != 0 {
        return Err(os_error(format!("sealing the copy of {}", path.display())));
    }
    // Reopened read-only, the descriptor the component gets cannot even try to write.
    let reopen = CString::new(format!("/proc/self/fd/{fd}"))?;
    // SAFETY: a valid C string; no O_CLOEXEC: the component inherits it.
    let read_only = unsafe { libc::open(reopen.as_ptr(), libc::O_RDONLY) };
    if read_only < 0 {
        return Err(os_error(format!(
            "reopening the copy of {} through /proc/self/fd",
            path.display()
        )));
    }
    // SAFETY: closing our own descriptor, no longer used.
    unsafe { libc::close(fd) };
    Ok(read_only)
}

/// Becomes `uid`:`gid` with no supplementary group and no way back: no_new_privs set, and
/// setuid(0)/setgid(0) checked to fail. Without keepcaps the kernel clears every capability
/// when the last user ID leaves 0.
fn drop_to(uid: u32, gid: u32) -> Result<()> {
    use nix::unistd::{getgroups, getresgid, getresuid, setgroups, setresgid, setresuid};
    use nix::unistd::{Gid, Uid};
    setgroups(&[]).context("dropping the supplementary groups (setgroups; needs CAP_SETGID)")?;
    let (g, u) = (Gid::from_raw(gid), Uid::from_raw(uid));
    setresgid(g, g, g).with_context(|| format!("setresgid {gid} (needs CAP_SETGID)"))?;
    setresuid(u, u, u).with_context(|| format!("setresuid {uid} (needs CAP_SETUID)"))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(os_error("setting no_new_privs".into()));
    }
    let back_to_root = nix::unistd::setuid(Uid::from_raw(0)).is_ok()
        || nix::unistd::setgid(Gid::from_raw(0)).is_ok();
    let ids = (getresuid()?, getresgid()?);
    let ids_held = [ids.0.real, ids.0.effective, ids.0.saved] == [u; 3]
        && [ids.1.real, ids.1.effective, ids.1.saved] == [g; 3];
    if back_to_root || !ids_held || !getgroups()?.is_empty() {
        bail!("after dropping to {uid}:{gid} the process could still become root, or kept other IDs or groups");
    }
    Ok(())
}

/// `kubeforge exec-as`: returns only with the error that stopped it.
pub fn run(launch: &Launch) -> anyhow::Error {
    match prepare(launch) {
        Ok(command) => {
            let err = std::process::Command::new(&command[0])
                .args(&command[1..])
                .exec();
            anyhow!(
                "running {} as {}:{}: {err}",
                command[0],
                launch.uid,
                launch.gid
            )
        }
        Err(e) => e,
    }
}

/// The files copied, the command pointed at them, the account taken: the command to exec.
fn prepare(launch: &Launch) -> Result<Vec<String>> {
    let mut command = launch.command.clone();
    if command.is_empty() {
        bail!(crate::BadInput("exec-as: no command after --".into()));
    }
    if launch.uid == 0 || launch.gid == 0 {
        bail!(crate::BadInput(format!(
            "exec-as --uid={} --gid={}: the account must not be root",
            launch.uid, launch.gid
        )));
    }
    for path in &launch.reads {
        let fd = sealed_copy(path)?;
        if substitute(&mut command, path, &format!("/proc/self/fd/{fd}")) == 0 {
            bail!(crate::BadInput(format!(
                "exec-as --read={}: no argument of the command names that file",
                path.display()
            )));
        }
    }
    drop_to(launch.uid, launch.gid)?;
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_replaced_as_a_flag_value_and_as_an_argument_and_nowhere_else() {
        let mut command: Vec<String> = [
            "kube-scheduler",
            "--kubeconfig=/etc/kubernetes/scheduler.conf",
            "--authentication-kubeconfig=/etc/kubernetes/scheduler.conf",
            "/etc/kubernetes/scheduler.conf",
            "--other=/etc/kubernetes/scheduler.conf.bak",
            "--x=/etc/kubernetes/scheduler.conf=",
        ]
        .map(String::from)
        .to_vec();
        let n = substitute(
            &mut command,
            Path::new("/etc/kubernetes/scheduler.conf"),
            "/proc/self/fd/3",
        );
        assert_eq!(n, 3);
        assert_eq!(
            command,
            [
                "kube-scheduler",
                "--kubeconfig=/proc/self/fd/3",
                "--authentication-kubeconfig=/proc/self/fd/3",
                "/proc/self/fd/3",
                "--other=/etc/kubernetes/scheduler.conf.bak",
                "--x=/etc/kubernetes/scheduler.conf=",
            ]
        );
    }

    #[test]
    fn the_container_command_puts_the_launcher_before_the_component() {
        let launch = Launch {
            uid: 990,
            gid: 991,
            reads: vec![PathBuf::from("/etc/kubernetes/scheduler.conf")],
            command: vec!["kube-scheduler".into(), "--v=2".into()],
        };
        assert_eq!(
            launch.container_command(Path::new("/usr/local/bin/kubeforge")),
            [
                "/usr/local/bin/kubeforge",
                "exec-as",
                "--uid=990",
                "--gid=991",
                "--read=/etc/kubernetes/scheduler.conf",
                "--",
                "kube-scheduler",
                "--v=2",
            ]
        );
    }
}
