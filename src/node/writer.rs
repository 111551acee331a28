//! The one writer for host files: atomic, exact modes, identical content left untouched, replaced
//! content backed up first, a lock so two runs never interleave, and a dry-run that redirects
//! every write into a temporary directory.

use anyhow::{anyhow, bail, Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::accounts::{self, Account};
use super::{acl, Layout};

/// Run backup directories are `<kubernetes-dir>/tmp/kubeforge-backup-<time>`.
const BACKUP_PREFIX: &str = "kubeforge-backup-";
/// How many runs' backups are kept: this one and the two before it.
const KEEP_RUNS: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Same bytes and mode were already there: not touched at all.
    Unchanged,
    Created,
    /// Different content was there; the old file was copied to `backup` first.
    Replaced {
        backup: PathBuf,
    },
    /// Same bytes, wrong mode (or owner, or ACL of a granted path): only those were fixed.
    ModeFixed,
    /// Dry-run: written under the dry-run directory instead.
    WouldWrite,
}

/// Who may use a path besides root: the account (user and group of that name) owning it, and
/// the accounts that may read it (search, on a directory) through POSIX ACL entries. A `grant`
/// holds for the writer's run: every write of the path applies it to the temp file before the
/// rename, and a write of identical content fixes it when it was lost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// The mode a re-run puts back (`apply_grants`) on a path it does not rewrite.
    pub mode: u32,
    pub owner: Option<String>,
    pub readers: Vec<String>,
}

/// An `Access` with its accounts' IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ids {
    uid: u32,
    gid: u32,
    readers: Vec<u32>,
}

pub struct HostWriter {
    /// A dry-run's directory: every write lands under it instead of the node.
    dry_run_root: Option<PathBuf>,
    /// A preview (`reset --dry-run`): nothing is written or removed, and there is no lock.
    preview: bool,
    backup_root: PathBuf,
    backup_run_dir: Option<PathBuf>,
    /// Every path kubeforge created on this node, written ahead of creating it, so that `reset`
    /// knows exactly what to remove even after a crash.
    journal: Option<Journal>,
    grants: std::collections::BTreeMap<PathBuf, Access>,
    accounts: std::collections::BTreeMap<String, Account>,
    /// The accounts this node's runs made (`Layout::accounts_record`), for `reset`.
    accounts_record: PathBuf,
    _lock: Option<nix::fcntl::Flock<File>>,
}

struct Journal {
    path: PathBuf,
    entries: std::collections::BTreeSet<PathBuf>,
    /// Directories created for the lock: journaled at once (a run killed next leaves them
    /// listed), removed again with the journal when the run writes nothing else.
    provisional: Vec<PathBuf>,
    /// Whether this run journaled anything beyond `provisional`.
    wrote: bool,
}

impl Journal {
    fn load(path: PathBuf) -> Result<Journal> {
        let entries = read_opt(&path)?
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .lines()
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Journal {
            path,
            entries,
            provisional: Vec::new(),
            wrote: false,
        })
    }

    fn note(&mut self, path: &Path) -> Result<()> {
        self.wrote = true;
        if self.entries.contains(path) {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            if !dir.is_dir() {
                fs::create_dir_all(dir)?;
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
                self.entries.insert(dir.to_path_buf());
                append_line(&self.path, dir)?;
            }
        }
        append_line(&self.path, path)?;
        self.entries.insert(path.to_path_buf());
        Ok(())
    }
}

fn append_line(journal: &Path, entry: &Path) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(journal)
        .with_context(|| format!("opening the journal {}", journal.display()))?;
    let before = f.metadata()?.len();
    let written = f
        .write_all(format!("{}\n", entry.display()).as_bytes())
        .and_then(|()| f.sync_all());
    if written.is_err() {
        // A full disk can take half a line: cut it off again, so the next entry starts a line.
        let _ = f.set_len(before);
    }
    written.with_context(|| format!("writing the journal {}", journal.display()))
}

/// The journal of a node: every path kubeforge created there, in creation order's set.
pub fn journal_entries(layout: &Layout) -> Result<Vec<PathBuf>> {
    Ok(Journal::load(layout.journal())?
        .entries
        .into_iter()
        .collect())
}

/// The directories `create_dir_all_mode(path)` would create, outermost first.
fn missing_dirs(path: &Path) -> Vec<PathBuf> {
    let mut missing: Vec<PathBuf> = path
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
        .map(Path::to_path_buf)
        .collect();
    missing.reverse();
    missing
}

impl HostWriter {
    /// Takes the node lock (an exclusive flock on the kubernetes dir) for a real run; a dry-run
    /// takes no lock and creates a fresh temporary directory instead.
    pub fn open(layout: &Layout, dry_run: bool) -> Result<Self> {
        if dry_run {
            let dir = tempfile::Builder::new()
                .prefix("kubeforge-dryrun-")
                .tempdir()
                .context("creating the dry-run directory")?
                .keep();
            return Ok(HostWriter {
                dry_run_root: Some(dir),
                preview: false,
                backup_root: layout.backup_dir.clone(),
                backup_run_dir: None,
                journal: None,
                grants: Default::default(),
                accounts: Default::default(),
                accounts_record: layout.accounts_record(),
                _lock: None,
            });
        }
        let new_dirs = missing_dirs(&layout.kubernetes_dir);
        create_dir_all_mode(&layout.kubernetes_dir, 0o755)?;
        let dir = File::open(&layout.kubernetes_dir)
            .with_context(|| format!("opening {}", layout.kubernetes_dir.display()))?;
        let lock = nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| {
                anyhow!(
                    "another kubeforge run holds the lock on {} ({errno}){}; wait for it to finish",
                    layout.kubernetes_dir.display(),
                    super::lock::holder(&layout.kubernetes_dir)
                        .map(|h| format!(": {h}"))
                        .unwrap_or_default()
                )
            })?;
        let mut journal = Journal::load(layout.journal())?;
        for dir in &new_dirs {
            journal.note(dir)?;
        }
        // A run that writes nothing (a failed preflight) leaves no trace: Drop removes these.
        journal.provisional = new_dirs;
        journal.wrote = false;
        Ok(HostWriter {
            dry_run_root: None,
            preview: false,
            backup_root: layout.backup_dir.clone(),
            backup_run_dir: None,
            journal: Some(journal),
            grants: Default::default(),
            accounts: Default::default(),
            accounts_record: layout.accounts_record(),
            _lock: Some(lock),
        })
    }

    /// A writer that changes nothing and takes no lock: what `reset --dry-run` removes is only
    /// listed.
    pub fn preview(layout: &Layout) -> Self {
        HostWriter {
            dry_run_root: None,
            preview: true,
            backup_root: layout.backup_dir.clone(),
            backup_run_dir: None,
            journal: None,
            grants: Default::default(),
            accounts: Default::default(),
            accounts_record: layout.accounts_record(),
            _lock: None,
        }
    }

    pub fn dry_run_dir(&self) -> Option<&Path> {
        self.dry_run_root.as_deref()
    }

    /// Whether this writer leaves the node as it is (a dry-run or a preview).
    pub fn changes_nothing(&self) -> bool {
        self.dry_run_root.is_some() || self.preview
    }

    /// Whether `path` exists as this run sees it (a dry-run sees what it wrote, then the host).
    pub fn exists(&self, path: &Path) -> bool {
        self.target(path).exists() || path.exists()
    }

    /// A file of the dry-run's own (the cluster objects a dry-run would apply), at `relative`
    /// under the dry-run directory; its path. Outside a dry-run there is no such file.
    pub fn write_dry_run_file(&mut self, relative: &Path, contents: &[u8]) -> Result<PathBuf> {
        let root = self
            .dry_run_root
            .as_ref()
            .ok_or_else(|| anyhow!("not a dry-run: {} is not written", relative.display()))?;
        let path = root.join(relative);
        if let Some(parent) = path.parent() {
            create_dir_all_mode(parent, 0o755)?;
        }
        write_atomic(&path, contents, 0o644, None)?;
        Ok(path)
    }

    /// Where a write to `path` really lands (under the dry-run dir in a dry-run).
    pub fn target(&self, path: &Path) -> PathBuf {
        match &self.dry_run_root {
            Some(root) => root.join(strip_root(path)),
            None => path.to_path_buf(),
        }
    }

    /// Current content of `path` as this run sees it: in a dry-run, what this run already wrote
    /// to the dry-run dir, else what is on the host.
    pub fn read(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        let target = self.target(path);
        if target != path {
            if let Some(bytes) = read_opt(&target)? {
                return Ok(Some(bytes));
            }
        }
        read_opt(path)
    }

    /// mkdir -p; a granted directory also gets (back) its mode, owner and ACL.
    pub fn ensure_dir(&mut self, path: &Path, mode: u32) -> Result<()> {
        self.note_new_dirs(path)?;
        create_dir_all_mode(&self.target(path), mode)?;
        if let (Some(ids), false) = (self.ids(path)?, self.changes_nothing()) {
            if !access_matches(path, mode, &ids, true)? {
                fix_access(path, mode, &ids, true)?;
            }
        }
        Ok(())
    }

    /// Grants `access` to `path` for the rest of this run (see `Access`).
    pub fn grant(&mut self, path: &Path, access: Access) {
        self.grants.insert(path.to_path_buf(), access);
    }

    /// Puts back the mode, owner and ACL of every granted path that exists: a re-run converges
    /// even where it rewrites nothing (a key kept as it was). Nothing happens in a dry-run.
    pub fn apply_grants(&mut self) -> Result<()> {
        if self.changes_nothing() {
            return Ok(());
        }
        let grants: Vec<(PathBuf, u32)> = self
            .grants
            .iter()
            .map(|(p, a)| (p.clone(), a.mode))
            .collect();
        for (path, mode) in grants {
            let dir = match fs::metadata(&path) {
                Ok(meta) => meta.is_dir(),
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            let ids = self.ids(&path)?.expect("granted");
            if !access_matches(&path, mode, &ids, dir)? {
                fix_access(&path, mode, &ids, dir)?;
                tracing::info!("put back the owner and ACL of {}", path.display());
            }
        }
        Ok(())
    }

    /// The account `name` as it exists, or made now: recorded first (so `reset` removes it even
    /// when this run is killed next), then created. A run that changes nothing makes none and
    /// answers with the IDs it would get.
    pub fn account(&mut self, name: &str) -> Result<Account> {
        if let Some(account) = self.accounts.get(name) {
            return Ok(account.clone());
        }
        let account = match accounts::lookup(name)? {
            Some(account) => account,
            None if self.changes_nothing() => accounts::existing_or_planned(name)?,
            None => {
                let planned = accounts::existing_or_planned(name)?;
                if let Some(journal) = &mut self.journal {
                    journal.note(&self.accounts_record)?;
                }
                append_line(&self.accounts_record, Path::new(name))?;
                let made = accounts::create(&planned)?;
                tracing::info!(
                    uid = made.uid,
                    gid = made.gid,
                    "created the system account {name}"
                );
                made
            }
        };
        self.accounts.insert(name.to_string(), account.clone());
        Ok(account)
    }

    /// The IDs of `path`'s grant, its accounts made when missing.
    fn ids(&mut self, path: &Path) -> Result<Option<Ids>> {
        let Some(access) = self.grants.get(path).cloned() else {
            return Ok(None);
        };
        let (uid, gid) = match &access.owner {
            Some(name) => {
                let a = self.account(name)?;
                (a.uid, a.gid)
            }
            None => (0, 0),
        };
        let mut readers = Vec::new();
        for name in &access.readers {
            readers.push(self.account(name)?.uid);
        }
        Ok(Some(Ids { uid, gid, readers }))
    }

    /// Whether `path` is granted to an owner other than root.
    pub fn has_owner_granted(&self, path: &Path) -> bool {
        self.grants
            .get(path)
            .is_some_and(|access| access.owner.is_some())
    }

    /// Gives everything under the granted directory `path` its owner (what a tool run as root
    /// made there: a restored etcd snapshot), then the directory its whole access.
    pub fn own_tree(&mut self, path: &Path, mode: u32) -> Result<()> {
        let Some(ids) = self.ids(path)? else {
            bail!("{} has no owner granted", path.display());
        };
        if self.changes_nothing() {
            return Ok(());
        }
        let mut stack = vec![path.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    stack.push(entry.path());
                }
                chown(&entry.path(), ids.uid, ids.gid)?;
            }
        }
        fix_access(path, mode, &ids, true)
    }

    fn note_new_dirs(&mut self, dir: &Path) -> Result<()> {
        if let Some(journal) = &mut self.journal {
            for d in missing_dirs(dir) {
                journal.note(&d)?;
            }
        }
        Ok(())
    }

    /// Removes a file kubeforge wrote once it has served (it stays in the journal; `reset`
    /// passes over what is gone). Nothing happens in a dry-run.
    pub fn remove(&mut self, path: &Path) -> Result<()> {
        if self.changes_nothing() {
            return Ok(());
        }
        match fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    /// Removes a directory kubeforge filled (etcd's member data, backups) with everything in it.
    pub fn remove_tree(&mut self, path: &Path) -> Result<()> {
        if self.changes_nothing() {
            return Ok(());
        }
        match fs::remove_dir_all(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    /// Removes the system account `name` and its group (`reset`: one kubeforge made); nothing
    /// happens in a preview.
    pub fn remove_account(&mut self, name: &str) -> Result<()> {
        if self.changes_nothing() {
            return Ok(());
        }
        accounts::remove(name)
    }

    /// Removes a directory if it is empty; true when it is gone (or would be, in a preview).
    pub fn remove_empty_dir(&mut self, path: &Path) -> Result<bool> {
        let empty = fs::read_dir(path)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty || self.changes_nothing() {
            return Ok(empty);
        }
        fs::remove_dir(path).with_context(|| format!("removing {}", path.display()))?;
        Ok(true)
    }

    /// Renames `from` to `to` (same filesystem), journaling `to` when it is new; nothing happens
    /// in a dry-run.
    pub fn rename(&mut self, from: &Path, to: &Path) -> Result<()> {
        if self.changes_nothing() {
            return Ok(());
        }
        if let Some(journal) = &mut self.journal {
            journal.note(to)?;
        }
        fs::rename(from, to)
            .with_context(|| format!("renaming {} to {}", from.display(), to.display()))
    }

    pub fn write(&mut self, path: &Path, contents: &[u8], mode: u32) -> Result<Outcome> {
        if self.preview {
            bail!("{} is not written: this run only previews", path.display());
        }
        if self.journal.is_some() {
            remove_stale_temp_files(path)?;
        }
        let existing = read_opt(path)?;
        let ids = self.ids(path)?;
        if existing.as_deref() == Some(contents) {
            let current = fs::metadata(path)?.permissions().mode() & 0o7777;
            let matches = match &ids {
                Some(ids) => access_matches(path, mode, ids, false)?,
                None => current == mode,
            };
            if matches {
                return Ok(Outcome::Unchanged);
            }
            if self.dry_run_root.is_none() {
                match &ids {
                    Some(ids) => fix_access(path, mode, ids, false)?,
                    None => fs::set_permissions(path, fs::Permissions::from_mode(mode))
                        .with_context(|| format!("setting the mode of {}", path.display()))?,
                }
                return Ok(Outcome::ModeFixed);
            }
        }
        let target = self.target(path);
        if let Some(parent) = target.parent() {
            self.note_new_dirs(parent)?;
            create_dir_all_mode(parent, 0o755)?;
        }
        if self.dry_run_root.is_some() {
            write_atomic(&target, contents, mode, None)?;
            return Ok(Outcome::WouldWrite);
        }
        match existing {
            Some(_) => {
                let backup = self.backup(path)?;
                write_atomic(path, contents, mode, ids.as_ref())?;
                Ok(Outcome::Replaced { backup })
            }
            None => {
                if let Some(journal) = &mut self.journal {
                    journal.note(path)?;
                }
                write_atomic(path, contents, mode, ids.as_ref())?;
                Ok(Outcome::Created)
            }
        }
    }

    /// Gives a file kubeforge did not write (a package's) owner root:root, no ACL and `mode`,
    /// its content untouched and nothing journaled: Unchanged when it has them already,
    /// WouldWrite (and nothing changes) in a dry-run. A symlink is refused, never followed.
    pub fn restrict(&mut self, path: &Path, mode: u32) -> Result<Outcome> {
        if self.preview {
            bail!("{} is not changed: this run only previews", path.display());
        }
        let meta =
            fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if !meta.file_type().is_file() {
            bail!("{} is not a regular file: left as it is", path.display());
        }
        let root = Ids {
            uid: 0,
            gid: 0,
            readers: Vec::new(),
        };
        if access_matches(path, mode, &root, false)? {
            return Ok(Outcome::Unchanged);
        }
        if self.dry_run_root.is_some() {
            return Ok(Outcome::WouldWrite);
        }
        fix_access(path, mode, &root, false)?;
        Ok(Outcome::ModeFixed)
    }

    /// This run's backup directory, `<kubernetes-dir>/tmp/kubeforge-backup-<time>`: made and
    /// journaled on first use, and then the runs before it beyond the newest `KEEP_RUNS - 1` are
    /// removed. Everything the run replaces is kept here, and what it saves beside (an etcd
    /// snapshot).
    pub fn run_backup_dir(&mut self) -> Result<PathBuf> {
        if let Some(dir) = &self.backup_run_dir {
            return Ok(dir.clone());
        }
        if self.changes_nothing() {
            bail!("a dry-run keeps no backups");
        }
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year]-[month]-[day]-[hour]-[minute]-[second]"
            ))
            .expect("static format");
        let mut dir = self.backup_root.join(format!("{BACKUP_PREFIX}{stamp}"));
        for n in 2.. {
            if !dir.exists() {
                break;
            }
            dir = self.backup_root.join(format!("{BACKUP_PREFIX}{stamp}-{n}"));
        }
        self.prune_backups(KEEP_RUNS - 1)?;
        remove_temp_files_under(&self.backup_root)?;
        if let Some(journal) = &mut self.journal {
            journal.note(&dir)?;
        }
        create_dir_all_mode(&dir, 0o700)?;
        self.backup_run_dir = Some(dir.clone());
        Ok(dir)
    }

    /// Removes every run backup directory but the newest `keep`; what it removed.
    fn prune_backups(&mut self, keep: usize) -> Result<Vec<PathBuf>> {
        let mut runs: Vec<PathBuf> = match fs::read_dir(&self.backup_root) {
            Ok(entries) => entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(BACKUP_PREFIX))
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect(),
            Err(_) => return Ok(Vec::new()),
        };
        // Names sort by time (and a same-second run's -N after it).
        runs.sort_by_key(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let (stamp, n) = match name.rsplit_once('-') {
                Some((s, n)) if n.len() < 3 && s.len() > BACKUP_PREFIX.len() + 18 => {
                    (s.to_string(), n.parse().unwrap_or(0))
                }
                _ => (name.clone(), 0),
            };
            (stamp, n)
        });
        let old = runs.len().saturating_sub(keep);
        let removed: Vec<PathBuf> = runs.into_iter().take(old).collect();
        for dir in &removed {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
            tracing::info!("removed the old backup {}", dir.display());
        }
        Ok(removed)
    }

    /// Copies `path` into this run's backup directory, unless the run backed it up already (a
    /// run's backup holds the state before the run, even of a file it writes twice).
    pub fn backup(&mut self, path: &Path) -> Result<PathBuf> {
        let dest = self.run_backup_dir()?.join(strip_root(path));
        if dest.exists() {
            return Ok(dest);
        }
        if let Some(parent) = dest.parent() {
            create_dir_all_mode(parent, 0o700)?;
        }
        let mode = fs::metadata(path)?.permissions().mode() & 0o7777;
        let bytes = fs::read(path)?;
        write_atomic(&dest, &bytes, mode, None)?;
        Ok(dest)
    }
}

impl Drop for HostWriter {
    fn drop(&mut self) {
        if let Some(journal) = &self.journal {
            if !journal.wrote && !journal.provisional.is_empty() {
                let _ = fs::remove_file(&journal.path);
                if let Some(dir) = journal.path.parent() {
                    let _ = fs::remove_dir(dir);
                }
                for dir in journal.provisional.iter().rev() {
                    let _ = fs::remove_dir(dir);
                }
            }
        }
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .with_context(|| format!("setting the owner of {}", path.display()))
}

/// Whether `path` has the mode, owner and ACL of `ids` (for a file or directory of `mode`).
fn access_matches(path: &Path, mode: u32, ids: &Ids, dir: bool) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path)?;
    let want_acl = (!ids.readers.is_empty()).then(|| acl::encode(mode, &ids.readers, dir));
    Ok(
        meta.mode() & 0o7777 == acl::shown_mode(mode, &ids.readers, dir)
            && (meta.uid(), meta.gid()) == (ids.uid, ids.gid)
            && acl::get(path)? == want_acl,
    )
}

/// Gives `path` the mode, owner and ACL of `ids`.
fn fix_access(path: &Path, mode: u32, ids: &Ids, dir: bool) -> Result<()> {
    chown(path, ids.uid, ids.gid)?;
    acl::remove(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    if !ids.readers.is_empty() {
        acl::set(path, &acl::encode(mode, &ids.readers, dir))?;
    }
    Ok(())
}

fn strip_root(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// mkdir -p where every directory this call creates gets `mode` exactly (umask bypassed);
/// existing directories are left as they are.
fn create_dir_all_mode(path: &Path, mode: u32) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            create_dir_all_mode(parent, 0o755)?;
        }
    }
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// The temp files of `path` a killed run left beside it (`.<name>.kubeforge-<pid>-<n>`): with
/// the node lock held, no other run is writing them.
fn remove_stale_temp_files(path: &Path) -> Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let prefix = format!(".{}.kubeforge-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let stale = entry.path();
            fs::remove_file(&stale)
                .with_context(|| format!("removing the stale temp file {}", stale.display()))?;
            tracing::info!("removed {}, left by a run that was killed", stale.display());
        }
    }
    Ok(())
}

/// The temp files a run killed while it backed a file up left in its backup directory.
fn remove_temp_files_under(backup_root: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(backup_root) else {
        return Ok(());
    };
    let runs = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(BACKUP_PREFIX));
    let mut stack: Vec<PathBuf> = runs.map(|e| e.path()).collect();
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if entry.file_name().to_string_lossy().contains(".kubeforge-") {
                fs::remove_file(&path)
                    .with_context(|| format!("removing the stale temp file {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// How many files this process has written (`write_atomic`), for `KUBEFORGE_FAULT`.
static WRITES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Test-only crash injection inside a write: `KUBEFORGE_FAULT=write:<n>` kills the process when
/// its n-th file is written to its temp file but not yet renamed, `renamed:<n>` right after the
/// rename, before the directory's fsync — the two instants a power cut could split.
fn crash_if(point: &str, n: u32, path: &Path) {
    let Ok(spec) = std::env::var("KUBEFORGE_FAULT") else {
        return;
    };
    if spec.strip_prefix(point).and_then(|s| s.strip_prefix(':')) == Some(&n.to_string()) {
        eprintln!(
            "KUBEFORGE_FAULT: killing the process at {point} {n} ({})",
            path.display()
        );
        std::process::abort();
    }
}

/// Temp file in the same directory, fsync, rename over the target, fsync the directory: a crash
/// leaves either the old file or the new one, never half of one.
/// Replaces a file a kubeforge run created (and journaled) with new contents, atomically and
/// without the node lock: for `kubeforge endpoint sync`, which runs for as long as its pod does
/// beside kubeforge's own runs and rewrites only haproxy.cfg. No backup: the file is
/// re-rendered from the cluster's state, never edited by hand.
pub fn replace_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    if !path.exists() {
        bail!(
            "{} does not exist: only a file a kubeforge run wrote is replaced",
            path.display()
        );
    }
    write_atomic(path, contents, mode, None)
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32, ids: Option<&Ids>) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", path.display()))?
        .to_string_lossy();
    let mut attempt = 0u32;
    let (tmp, mut file) = loop {
        let tmp = dir.join(format!(
            ".{name}.kubeforge-{}-{attempt}",
            std::process::id()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
            Err(e) => return Err(e).with_context(|| format!("creating {}", tmp.display())),
        }
    };
    let result = (|| -> Result<()> {
        file.write_all(contents)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some(ids) = ids {
            use std::os::fd::AsRawFd;
            std::os::unix::fs::fchown(&file, Some(ids.uid), Some(ids.gid))?;
            if !ids.readers.is_empty() {
                acl::set_fd(
                    file.as_raw_fd(),
                    &acl::encode(mode, &ids.readers, false),
                    path,
                )?;
            }
        }
        file.sync_all()?;
        drop(file);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        crash_if("write", n, path);
        fs::rename(&tmp, path)?;
        crash_if("renamed", n, path);
        File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        bail!("writing {}: {e:#}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(root: &Path) -> Layout {
        Layout::new(
            &root.join("etc/kubernetes"),
            &root.join("var/lib/kubelet"),
            &root.join("etc/kubernetes/pki"),
            &root.join("var/lib/etcd"),
        )
    }

    #[test]
    fn identical_content_is_left_untouched_and_changes_are_backed_up() {
        let root = tempfile::tempdir().unwrap();
        let l = layout(root.path());
        let mut w = HostWriter::open(&l, false).unwrap();
        let f = l.pki_dir.join("x.key");
        assert_eq!(w.write(&f, b"one", 0o600).unwrap(), Outcome::Created);
        let mtime = fs::metadata(&f).unwrap().modified().unwrap();
        assert_eq!(w.write(&f, b"one", 0o600).unwrap(), Outcome::Unchanged);
        assert_eq!(fs::metadata(&f).unwrap().modified().unwrap(), mtime);
        assert_eq!(w.write(&f, b"one", 0o644).unwrap(), Outcome::ModeFixed);
        match w.write(&f, b"two", 0o600).unwrap() {
            Outcome::Replaced { backup } => {
                assert_eq!(fs::read(&backup).unwrap(), b"one");
                assert!(backup.starts_with(&l.backup_dir));
                assert_eq!(
                    fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
                    0o644
                );
            }
            other => panic!("expected a replacement, got {other:?}"),
        }
        assert_eq!(fs::read(&f).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = fs::read_dir(&l.pki_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("x.key")]);
    }

    #[test]
    fn a_run_keeps_the_first_backup_of_a_file_and_the_last_three_runs_are_kept() {
        let root = tempfile::tempdir().unwrap();
        let l = layout(root.path());
        for old in [
            "2026-01-01-00-00-00",
            "2026-01-02-00-00-00",
            "2026-01-02-00-00-00-2",
        ] {
            fs::create_dir_all(l.backup_dir.join(format!("{BACKUP_PREFIX}{old}"))).unwrap();
        }
        fs::create_dir_all(l.backup_dir.join("kubeadm-backup-manifests-x")).unwrap();
        let mut w = HostWriter::open(&l, false).unwrap();
        let f = l.manifests_dir.join("etcd.yaml");
        w.write(&f, b"old", 0o600).unwrap();
        w.write(&f, b"new", 0o600).unwrap();
        let Outcome::Replaced { backup } = w.write(&f, b"old", 0o600).unwrap() else {
            panic!("replaced")
        };
        assert_eq!(
            fs::read(&backup).unwrap(),
            b"old",
            "the state before the run"
        );
        let mut left: Vec<String> = fs::read_dir(&l.backup_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("backup"))
            .collect();
        left.sort();
        assert_eq!(left.len(), 4, "{left:?}");
        assert!(left.contains(&"kubeadm-backup-manifests-x".to_string()));
        assert!(
            !left.iter().any(|n| n.ends_with("2026-01-01-00-00-00")),
            "{left:?}"
        );
        assert!(
            left.iter().any(|n| n.ends_with("2026-01-02-00-00-00-2")),
            "{left:?}"
        );
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_holds_the_lock() {
        let root = tempfile::tempdir().unwrap();
        let l = layout(root.path());
        let first = HostWriter::open(&l, false).unwrap();
        let err = HostWriter::open(&l, false).err().unwrap();
        assert!(err.to_string().contains("holds the lock"), "{err}");
        drop(first);
        HostWriter::open(&l, false).unwrap();
    }

    #[test]
    fn the_directories_made_for_the_lock_are_journaled_at_once_and_gone_if_nothing_is_written() {
        let root = tempfile::tempdir().unwrap();
        let l = layout(root.path());
        drop(HostWriter::open(&l, false).unwrap());
        assert!(
            !root.path().join("etc").exists(),
            "a run that wrote nothing left a trace"
        );
        // Killed before its first write (no Drop): what it made is in the journal.
        std::mem::forget(HostWriter::open(&l, false).unwrap());
        let journal = journal_entries(&l).unwrap();
        assert!(journal.contains(&root.path().join("etc")), "{journal:?}");
        assert!(journal.contains(&l.kubernetes_dir), "{journal:?}");
    }

    #[test]
    fn a_granted_key_keeps_its_reader_and_a_granted_tree_gets_its_owner() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let l = layout(root.path());
        let mut w = HostWriter::open(&l, false).unwrap();
        let nobody = accounts::lookup("nobody")
            .unwrap()
            .expect("Debian's nobody");
        let key = l.pki_dir.join("k.key");
        let reads = Access {
            mode: 0o600,
            owner: None,
            readers: vec!["nobody".into()],
        };
        w.grant(&key, reads);
        let acl = acl::encode(0o600, &[nobody.uid], false);
        assert_eq!(w.write(&key, b"k", 0o600).unwrap(), Outcome::Created);
        assert_eq!(acl::get(&key).unwrap(), Some(acl.clone()));
        acl::remove(&key).unwrap();
        assert_eq!(w.write(&key, b"k", 0o600).unwrap(), Outcome::ModeFixed);
        assert_eq!(acl::get(&key).unwrap(), Some(acl.clone()));
        assert_eq!(w.write(&key, b"k", 0o600).unwrap(), Outcome::Unchanged);
        assert!(matches!(
            w.write(&key, b"k2", 0o600).unwrap(),
            Outcome::Replaced { .. }
        ));
        assert_eq!(acl::get(&key).unwrap(), Some(acl));

        // What a restore run as root made: owned by the account after own_tree.
        let data = l.etcd_data_dir.clone();
        fs::create_dir_all(data.join("member/snap")).unwrap();
        fs::write(data.join("member/snap/db"), b"x").unwrap();
        let owns = Access {
            mode: 0o700,
            owner: Some("nobody".into()),
            readers: Vec::new(),
        };
        w.grant(&data, owns);
        w.own_tree(&data, 0o700).unwrap();
        for p in [
            &data,
            &data.join("member/snap"),
            &data.join("member/snap/db"),
        ] {
            let meta = fs::metadata(p).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (nobody.uid, nobody.gid), "{p:?}");
        }
        assert_eq!(fs::metadata(&data).unwrap().mode() & 0o7777, 0o700);
    }

    #[test]
    fn restrict_fixes_mode_and_owner_in_place_and_never_follows_a_symlink() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let l = layout(root.path());
        let unit = root.path().join("kubelet.service");
        fs::write(&unit, "[Service]\n").unwrap();
        fs::set_permissions(&unit, fs::Permissions::from_mode(0o644)).unwrap();
        let nobody = accounts::lookup("nobody")
            .unwrap()
            .expect("Debian's nobody");
        chown(&unit, nobody.uid, nobody.gid).unwrap();
        let state = |p: &Path| {
            let m = fs::metadata(p).unwrap();
            (
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                m.ctime(),
                m.ctime_nsec(),
            )
        };
        let before = state(&unit);
        let mut dry = HostWriter::open(&l, true).unwrap();
        assert_eq!(dry.restrict(&unit, 0o600).unwrap(), Outcome::WouldWrite);
        assert_eq!(state(&unit), before, "a dry-run changed it");
        fs::remove_dir_all(dry.dry_run_dir().unwrap()).unwrap();
        let mut w = HostWriter::open(&l, false).unwrap();
        assert_eq!(w.restrict(&unit, 0o600).unwrap(), Outcome::ModeFixed);
        let after = state(&unit);
        assert_eq!((after.0, after.1, after.2), (0o600, 0, 0));
        assert_eq!(w.restrict(&unit, 0o600).unwrap(), Outcome::Unchanged);
        assert_eq!(state(&unit), after);
        assert_eq!(fs::read_to_string(&unit).unwrap(), "[Service]\n");
        assert!(!journal_entries(&l).unwrap().contains(&unit));

        let target = root.path().join("target");
        fs::write(&target, "x").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        let masked = root.path().join("masked.service");
        std::os::unix::fs::symlink(&target, &masked).unwrap();
        assert!(w.restrict(&masked, 0o600).is_err());
        assert_eq!(state(&target).0, 0o644, "the symlink was followed");
    }

    #[test]
    fn dry_run_writes_only_under_its_own_directory() {
        let root = tempfile::tempdir().unwrap();
        let l = layout(root.path());
        let mut w = HostWriter::open(&l, true).unwrap();
        let f = l.pki_dir.join("ca.crt");
        assert_eq!(w.write(&f, b"pem", 0o644).unwrap(), Outcome::WouldWrite);
        assert!(!root.path().join("etc").exists());
        let dry = w.dry_run_dir().unwrap().to_path_buf();
        assert_eq!(fs::read(w.target(&f)).unwrap(), b"pem");
        assert!(w.target(&f).starts_with(&dry));
        assert_eq!(w.read(&f).unwrap().unwrap(), b"pem");
        fs::remove_dir_all(dry).unwrap();
    }
}
