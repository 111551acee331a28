//! The last lines a static pod's container wrote, read from the kubelet's log files:
//! `<root>/<namespace>_<pod>_<uid>/<container>/<restart>.log`, in the CRI log format
//! (`<time> <stream> <P|F> <text>`, P = a partial line continued by the next entry).

use std::path::{Path, PathBuf};

pub const POD_LOG_ROOT: &str = "/var/log/pods";

/// The newest non-empty log of `container` in pod `kube-system/<pod>`, and its last `n` lines.
pub fn tail(root: &Path, pod: &str, container: &str, n: usize) -> Option<(PathBuf, Vec<String>)> {
    let prefix = format!("kube-system_{pod}_");
    let newest = |paths: Vec<PathBuf>| {
        paths
            .into_iter()
            .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
            .max()
            .map(|(_, p)| p)
    };
    let pod_dirs = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().join(container))
        .collect();
    let dir = newest(pod_dirs)?;
    let logs = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.metadata().is_ok_and(|m| m.is_file() && m.len() > 0))
        .collect();
    let file = newest(logs)?;
    Some((file.clone(), last_lines(&read_end(&file).ok()?, n)))
}

/// The last 64 KiB of a log (an API server's can be megabytes); the first, cut line is dropped.
fn read_end(file: &Path) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    const END: u64 = 64 * 1024;
    let mut f = std::fs::File::open(file)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(END)))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Ok(match (len > END, text.split_once('\n')) {
        (true, Some((_, rest))) => rest.to_string(),
        _ => text,
    })
}

/// The text of the last `n` log lines, partial entries joined.
pub fn last_lines(cri_log: &str, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut partial = String::new();
    for entry in cri_log.lines() {
        let mut fields = entry.splitn(4, ' ');
        let (_time, _stream, tag, text) =
            (fields.next(), fields.next(), fields.next(), fields.next());
        match tag {
            Some("P") => partial.push_str(text.unwrap_or_default()),
            Some("F") => {
                partial.push_str(text.unwrap_or_default());
                lines.push(std::mem::take(&mut partial));
            }
            _ => lines.push(entry.to_string()),
        }
    }
    if !partial.is_empty() {
        lines.push(partial);
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_newest_log_of_the_newest_pod() {
        let root = tempfile::tempdir().unwrap();
        let old = root
            .path()
            .join("kube-system_kube-scheduler-n1_aaa/kube-scheduler");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("0.log"), "2026-01-01T00:00:00Z stderr F old pod\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let new = root
            .path()
            .join("kube-system_kube-scheduler-n1_bbb/kube-scheduler");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(
            new.join("0.log"),
            "2026-01-01T00:00:00Z stderr F first run\n",
        )
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let lines: String = (0..30)
            .map(|i| format!("2026-01-01T00:00:01Z stderr F line {i}\n"))
            .collect();
        std::fs::write(new.join("1.log"), lines + "2026-01-01T00:00:02Z stderr P Error: unknown \n2026-01-01T00:00:02Z stderr F flag: --bogus\n").unwrap();
        std::fs::write(new.join("2.log"), "").unwrap();
        let (file, tail) = tail(root.path(), "kube-scheduler-n1", "kube-scheduler", 20).unwrap();
        assert!(file.ends_with("kube-system_kube-scheduler-n1_bbb/kube-scheduler/1.log"));
        assert_eq!(tail.len(), 20);
        assert_eq!(tail.last().unwrap(), "Error: unknown flag: --bogus");
        assert_eq!(tail[0], "line 11");
        assert!(tail_missing(root.path()));
    }

    fn tail_missing(root: &Path) -> bool {
        tail(root, "etcd-n1", "etcd", 20).is_none()
    }
}
