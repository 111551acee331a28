//! Who holds the node lock: the kernel's own table of file locks (`/proc/locks`) names the
//! process holding a flock on the kubernetes directory, so a refused run can name it without
//! kubeforge keeping a PID file that a killed run would leave behind.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `PID 1234 (kubeforge init --config kubeadm.yaml)` for the process holding a flock on `dir`,
/// when the kernel says who it is.
pub fn holder(dir: &Path) -> Option<String> {
    let meta = std::fs::metadata(dir).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = flock_holder(&locks, meta.dev(), meta.ino())?;
    let command = std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|c| {
            String::from_utf8_lossy(&c)
                .split('\0')
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| !c.is_empty());
    Some(match command {
        Some(command) => format!("held by PID {pid} ({command})"),
        None => format!("held by PID {pid}"),
    })
}

/// The PID of the FLOCK in `/proc/locks` text on the file `dev`/`ino`. A line reads
/// `1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF`, the device as hex major:minor; a waiting
/// lock (`1: -> FLOCK …`) holds nothing.
fn flock_holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let file = format!(
        "{:02x}:{:02x}:{ino}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, f, ..] if *f == file => pid.parse().ok(),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_holder_of_a_flock_on_the_file_is_found_and_waiters_are_not() {
        let dev = nix::sys::stat::makedev(0x103, 2);
        let locks = "1: POSIX  ADVISORY  WRITE 11 103:02:77 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 22 103:02:78 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 33 103:02:77 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 44 103:02:77 0 EOF\n";
        assert_eq!(super::flock_holder(locks, dev, 77), Some(44));
        assert_eq!(super::flock_holder(locks, dev, 79), None);
    }
}
