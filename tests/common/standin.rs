//! The stand-in of `tests/standin/apiserver.py`: client logic only (see its docstring).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// This host's first non-loopback IPv4 address: kubeforge refuses to advertise a loopback one.
pub fn host_ip() -> String {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .expect("hostname -I");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .expect("a non-loopback IPv4 address on this host")
        .to_string()
}

pub struct StandIn {
    child: Child,
    pub log: PathBuf,
}

impl StandIn {
    /// Starts the stand-in with `config` (its `log` is set here) and waits until it listens.
    pub fn start(dir: &Path, config: Value) -> StandIn {
        StandIn::start_in(dir, config, Command::new("python3"))
    }

    /// The same, run by `launcher` (e.g. `ip netns exec …`, to which python3 is appended
    /// unless it is python3 itself).
    pub fn start_in(dir: &Path, mut config: Value, mut launcher: Command) -> StandIn {
        let log = dir.join("standin.log");
        config["log"] = Value::String(log.display().to_string());
        let path = dir.join("standin.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standin/apiserver.py");
        if launcher.get_program() != "python3" {
            launcher.arg("python3");
        }
        let mut child = launcher
            .arg(script)
            .arg(&path)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the stand-in did not start");
        StandIn { child, log }
    }

    /// Every request so far: method, path, query, user, groups.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn count(&self, method: &str, path_part: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r["method"] == method && r["path"].as_str().unwrap().contains(path_part))
            .count()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
