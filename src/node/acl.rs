//! POSIX access ACLs as the kernel stores them (the `system.posix_acl_access` extended
//! attribute): the owner's, group's and others' bits from the mode, plus one named-user entry per
//! extra reader and the mask that lets those entries through.

use anyhow::{bail, Result};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const NAME: &[u8] = b"system.posix_acl_access\0";
const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;

/// The attribute for a file of `mode` that the users `readers` may also read (`r`, and `x` on
/// a directory): entries in the kernel's order, named users by increasing uid.
pub fn encode(mode: u32, readers: &[u32], dir: bool) -> Vec<u8> {
    let named: u16 = if dir { 0o5 } else { 0o4 };
    let group = ((mode >> 3) & 0o7) as u16;
    let mut uids = readers.to_vec();
    uids.sort_unstable();
    uids.dedup();
    let mut entries = vec![(USER_OBJ, ((mode >> 6) & 0o7) as u16, UNDEFINED_ID)];
    entries.extend(uids.iter().map(|&uid| (USER, named, uid)));
    entries.push((GROUP_OBJ, group, UNDEFINED_ID));
    entries.push((MASK, group | named, UNDEFINED_ID));
    entries.push((OTHER, (mode & 0o7) as u16, UNDEFINED_ID));
    let mut bytes = VERSION.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        bytes.extend(tag.to_le_bytes());
        bytes.extend(perm.to_le_bytes());
        bytes.extend(id.to_le_bytes());
    }
    bytes
}

/// The mode `stat` shows once the ACL of `encode(mode, readers, dir)` is set: the group bits
/// are the mask's.
pub fn shown_mode(mode: u32, readers: &[u32], dir: bool) -> u32 {
    if readers.is_empty() {
        return mode;
    }
    let named = if dir { 0o5 } else { 0o4 };
    mode | (named << 3)
}

fn c_path(path: &Path) -> Result<CString> {
    Ok(CString::new(path.as_os_str().as_bytes())?)
}

/// The access ACL of `path` beyond its mode, if it has one.
pub fn get(path: &Path) -> Result<Option<Vec<u8>>> {
    let p = c_path(path)?;
    let mut buf = vec![0u8; 512];
    // SAFETY: both pointers are valid for the lengths given; the kernel writes at most `len`.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            NAME.as_ptr().cast(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::EOPNOTSUPP) => Ok(None),
            _ => bail!("reading the ACL of {}: {err}", path.display()),
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

/// Sets the access ACL of the open file `fd` (`path` names it in errors).
pub fn set_fd(fd: std::os::fd::RawFd, acl: &[u8], path: &Path) -> Result<()> {
    // SAFETY: `acl` is valid for its length; `fd` is an open descriptor the caller owns.
    let rc =
        unsafe { libc::fsetxattr(fd, NAME.as_ptr().cast(), acl.as_ptr().cast(), acl.len(), 0) };
    if rc != 0 {
        bail!(
            "setting the ACL of {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Sets the access ACL of `path` in place.
pub fn set(path: &Path, acl: &[u8]) -> Result<()> {
    let file = std::fs::File::open(path)?;
    set_fd(std::os::fd::AsRawFd::as_raw_fd(&file), acl, path)
}

/// Removes the access ACL of `path` (its mode alone says who reads it again).
pub fn remove(path: &Path) -> Result<()> {
    let p = c_path(path)?;
    // SAFETY: `p` and `NAME` are NUL-terminated.
    let rc = unsafe { libc::removexattr(p.as_ptr(), NAME.as_ptr().cast()) };
    let err = std::io::Error::last_os_error();
    if rc != 0 && err.raw_os_error() != Some(libc::ENODATA) {
        bail!("removing the ACL of {}: {err}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_read_by_one_user_shows_mode_0640_and_the_kernel_keeps_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k.key");
        std::fs::write(&f, b"x").unwrap();
        let acl = encode(0o600, &[4242], false);
        set(&f, &acl).unwrap();
        assert_eq!(get(&f).unwrap().as_deref(), Some(&acl[..]));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, shown_mode(0o600, &[4242], false));
        assert_eq!(mode, 0o640);
        remove(&f).unwrap();
        assert_eq!(get(&f).unwrap(), None);
    }
}
