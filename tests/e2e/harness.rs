//! The real node the e2e scenarios run on: prerequisites, a kubelet supervised the way systemd
//! would run it, and the clean-up that leaves the node as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{self, BIN};

pub const KUBERNETES_DIR: &str = "/etc/kubernetes";
pub const KUBELET_DIR: &str = "/var/lib/kubelet";
pub const NODE: &str = "kf-e2e";

/// What the suite needs from the host, each found or a failure that says what is missing.
pub struct Host {
    pub kubelet: PathBuf,
    /// Real kubeadm, to show that what kubeforge uploads is what kubeadm reads.
    pub kubeadm: PathBuf,
    pub kubectl: String,
    pub crictl: PathBuf,
    pub cri_socket: String,
    pub version: String,
    pub image_repository: String,
    pub etcd_tag: Option<String>,
    pub advertise_address: String,
    pub cgroup_v1: bool,
    pub log_dir: PathBuf,
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Host {
    pub fn discover() -> Host {
        let mut missing = Vec::new();
        let kubelet = env("KUBELET_BIN")
            .map(PathBuf::from)
            .or_else(|| which("kubelet"));
        if kubelet.is_none() {
            missing.push("a kubelet (set KUBELET_BIN or put it on PATH)".to_string());
        }
        let kubeadm = env("KUBEADM_BIN")
            .map(PathBuf::from)
            .or_else(|| which("kubeadm"));
        if kubeadm.is_none() {
            missing.push("kubeadm of the same version (set KUBEADM_BIN or put it on PATH)".into());
        }
        let crictl = env("CRICTL_BIN")
            .map(PathBuf::from)
            .or_else(|| which("crictl"));
        if crictl.is_none() {
            missing.push("crictl (cri-tools; set CRICTL_BIN or put it on PATH)".into());
        }
        if which("runc").is_none() {
            missing.push("runc".into());
        }
        if which("faketime").is_none() {
            missing.push("faketime (Debian's faketime: the expired-certificates scenario)".into());
        }
        let sock =
            env("CONTAINERD_SOCK").unwrap_or_else(|| "/run/containerd/containerd.sock".into());
        if !Path::new(&sock).exists() {
            missing.push(format!(
                "containerd running with its socket at {sock} (CONTAINERD_SOCK)"
            ));
        }
        if !nix::unistd::Uid::effective().is_root() {
            missing.push("root".into());
        }
        for dir in [KUBERNETES_DIR, KUBELET_DIR] {
            if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
                missing.push(format!("an empty {dir}: this host already holds a node (run `kubeforge reset` or clean it)"));
            }
        }
        assert!(
            missing.is_empty(),
            "the e2e suite needs: {}",
            missing.join("; ")
        );
        let kubelet = kubelet.unwrap();
        let version = env("KUBEFORGE_E2E_VERSION").unwrap_or_else(|| {
            let out = Command::new(&kubelet)
                .arg("--version")
                .output()
                .expect("kubelet --version");
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .last()
                .expect("kubelet --version prints a version")
                .to_string()
        });
        let advertise_address = env("KUBEFORGE_E2E_ADVERTISE_ADDRESS").unwrap_or_else(|| {
            // A documentation address on lo: a stable node IP on any host, without a network.
            let shown = Command::new("ip")
                .args(["-4", "addr", "show", "dev", "lo"])
                .output()
                .expect("ip");
            if !String::from_utf8_lossy(&shown.stdout).contains("192.0.2.2/") {
                run(Command::new("ip").args(["addr", "add", "192.0.2.2/32", "dev", "lo"]));
            }
            "192.0.2.2".into()
        });
        let log_dir = std::env::temp_dir().join(format!("kubeforge-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&log_dir).unwrap();
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        Host {
            kubelet,
            kubectl: common::kubectl(),
            kubeadm: kubeadm.unwrap(),
            crictl: crictl.unwrap(),
            cri_socket: format!("unix://{sock}"),
            version,
            image_repository: env("KUBEFORGE_E2E_IMAGE_REPOSITORY")
                .unwrap_or_else(|| "registry.k8s.io".into()),
            etcd_tag: env("KUBEFORGE_E2E_ETCD_TAG"),
            advertise_address,
            cgroup_v1: !Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
            log_dir,
        }
    }

    /// The kubeadm config of every scenario; `scheduler_args` goes into extraArgs.
    pub fn config(&self, scheduler_args: &[(&str, &str)]) -> PathBuf {
        let systemd = Path::new("/run/systemd/system").is_dir();
        let etcd = self.etcd_tag.as_ref().map_or(String::new(), |t| {
            format!("etcd:\n  local:\n    imageTag: {t}\n")
        });
        let scheduler = if scheduler_args.is_empty() {
            String::new()
        } else {
            let args: String = scheduler_args
                .iter()
                .map(|(n, v)| format!("  - name: {n}\n    value: \"{v}\"\n"))
                .collect();
            format!("scheduler:\n  extraArgs:\n{args}")
        };
        let text = format!(
            "apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: {adv}
nodeRegistration:
  name: {NODE}
  criSocket: {cri}
  imagePullPolicy: IfNotPresent
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: {version}
controlPlaneEndpoint: {adv}:6443
imageRepository: {repo}
networking:
  podSubnet: 10.244.0.0/16
{etcd}{scheduler}---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: {driver}
failCgroupV1: {fail_v1}
",
            adv = self.advertise_address,
            cri = self.cri_socket,
            version = self.version,
            repo = self.image_repository,
            driver = if systemd { "systemd" } else { "cgroupfs" },
            fail_v1 = !self.cgroup_v1,
        );
        let path = self.log_dir.join("kubeadm.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where the kubelet and kubeadm packages (pkgs.k8s.io) put kubelet.service and its drop-in.
pub const KUBELET_UNIT: &str = "/usr/lib/systemd/system/kubelet.service";
pub const KUBEADM_DROP_IN: &str = "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf";
/// The first line of the kubelet.service this harness installs (a package's has none).
const UNIT_MARK: &str = "# kubeforge's e2e harness: the kubelet package's unit, for one scenario";

/// The kubelet package's kubelet.service, running `kubelet`.
fn kubelet_unit(kubelet: &Path) -> String {
    format!(
        "{UNIT_MARK}
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart={}
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
",
        kubelet.display()
    )
}

/// The packages' part: kubelet.service and kubeadm's drop-in (kubeforge's copy of it) installed
/// at 0644, as dpkg leaves them; what kube-bench's 4.1.1 stats and what the `Supervisor` reads.
/// A unit this harness did not write is a package's: the suite refuses to replace it. Removed
/// again, with the directories made for them, when dropped.
pub struct KubeletUnits {
    dirs_made: Vec<PathBuf>,
}

impl KubeletUnits {
    pub fn install(kubelet: &Path) -> KubeletUnits {
        KubeletUnits {
            dirs_made: install_kubelet_units(kubelet),
        }
    }
}

impl Drop for KubeletUnits {
    fn drop(&mut self) {
        remove_kubelet_units(&self.dirs_made);
    }
}

fn install_kubelet_units(kubelet: &Path) -> Vec<PathBuf> {
    let drop_in = kubeforge::kubelet::service::DROP_IN;
    let mut made = Vec::new();
    for (path, text) in [
        (KUBELET_UNIT, kubelet_unit(kubelet)),
        (KUBEADM_DROP_IN, drop_in.into()),
    ] {
        let path = Path::new(path);
        let ours = |old: &str| old == text || old.starts_with(UNIT_MARK);
        if let Ok(old) = std::fs::read_to_string(path) {
            assert!(ours(&old), "{} is a package's (the suite installs its own): remove the kubelet and kubeadm packages from this host", path.display());
        }
        let missing = path.ancestors().skip(1).take_while(|d| !d.exists());
        made.extend(missing.map(Path::to_path_buf));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    made
}

/// The units `install_kubelet_units` wrote, and the directories it made, removed.
fn remove_kubelet_units(made: &[PathBuf]) {
    for path in [KUBEADM_DROP_IN, KUBELET_UNIT] {
        let _ = std::fs::remove_file(path);
    }
    let mut made = made.to_vec();
    made.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in made {
        let _ = std::fs::remove_dir(dir);
    }
}

/// kubelet.service and its drop-ins as systemd loads them (systemd.unit(5)): the unit from /etc
/// or else /usr/lib, then the `*.conf` drop-ins of both by file name, /etc's of a name winning.
fn kubelet_unit_texts() -> Vec<String> {
    let dirs = ["/etc/systemd/system", "/usr/lib/systemd/system"];
    let unit = dirs
        .iter()
        .find_map(|d| std::fs::read_to_string(Path::new(d).join("kubelet.service")).ok());
    let mut drop_ins = BTreeMap::new();
    for dir in dirs.iter().rev() {
        let entries = std::fs::read_dir(Path::new(dir).join("kubelet.service.d"));
        for e in entries.into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "conf") {
                drop_ins.insert(e.file_name(), e.path());
            }
        }
    }
    let drop_ins = drop_ins
        .values()
        .filter_map(|p| std::fs::read_to_string(p).ok());
    unit.into_iter().chain(drop_ins).collect()
}

/// Words as systemd splits a unit's value: at whitespace, double quotes keeping a word whole.
fn unit_words(value: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted, mut started) = (Vec::new(), String::new(), false, false);
    for c in value.chars() {
        match c {
            '"' => (quoted, started) = (!quoted, true),
            c if c.is_whitespace() && !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                }
                started = false;
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

/// The command line systemd starts from these unit texts (systemd.service(5), only what the
/// kubelet's units use): the last non-empty `ExecStart=` of their [Service] sections, a `$VAR`
/// word replaced by the variable's value split at whitespace, `${VAR}` by the value as is; the
/// variables from `Environment="K=V"`, overridden by the `EnvironmentFile=` files' KEY=VALUE
/// lines (`-path`: an optional file), each file read through `read`.
pub fn exec_start(units: &[String], read: &dyn Fn(&Path) -> Option<String>) -> Vec<String> {
    let (mut exec, mut env, mut files) = (Vec::new(), BTreeMap::new(), Vec::new());
    for text in units {
        let mut service = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                service = line == "[Service]";
            }
            let Some((key, value)) = line.split_once('=').filter(|_| service) else {
                continue;
            };
            match key.trim() {
                "ExecStart" if value.trim().is_empty() => exec.clear(),
                "ExecStart" => exec = unit_words(value),
                "Environment" => env.extend(unit_words(value).iter().filter_map(|w| {
                    w.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })),
                "EnvironmentFile" => files.push(value.trim().to_string()),
                _ => {}
            }
        }
    }
    for file in files {
        let text = read(Path::new(file.trim_start_matches('-'))).unwrap_or_default();
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            if let Some((k, v)) = line.split_once('=') {
                env.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
            }
        }
    }
    let value = |name: &str| env.get(name).cloned().unwrap_or_default();
    let mut argv = Vec::new();
    for word in exec {
        match word.strip_prefix('$').filter(|n| !n.starts_with('{')) {
            Some(name) => argv.extend(value(name).split_whitespace().map(String::from)),
            None => argv.push(expand_braced(&word, &value)),
        }
    }
    argv
}

/// `word` with each `${NAME}` replaced by the variable's value.
fn expand_braced(word: &str, value: &dyn Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some((before, after)) = rest.split_once("${") {
        let Some((name, tail)) = after.split_once('}') else {
            break;
        };
        out += before;
        out += &value(name);
        rest = tail;
    }
    out + rest
}

/// Runs the kubelet as systemd would from kubelet.service and its drop-ins (`exec_start`; the
/// packages' program, /usr/bin/kubelet, is the harness's kubelet binary): once config.yaml
/// exists, the `EnvironmentFile=`s read at each start, restarted 2 s after it exits.
pub struct Supervisor {
    stop: Arc<AtomicBool>,
    child: Arc<Mutex<Option<Child>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub log: PathBuf,
}

impl Supervisor {
    pub fn start(host: &Host) -> Supervisor {
        Supervisor::start_with(
            &host.kubelet,
            Path::new(KUBELET_DIR),
            &[],
            &[],
            host.log_dir.join("kubelet.log"),
        )
    }

    /// A kubelet whose directory the test sees at `kubelet_dir`, run through `wrap` (e.g.
    /// nsenter into another node's namespaces) with `extra` flags.
    pub fn start_with(
        kubelet: &Path,
        kubelet_dir: &Path,
        wrap: &[String],
        extra: &[String],
        log: PathBuf,
    ) -> Supervisor {
        let stop = Arc::new(AtomicBool::new(false));
        let child: Arc<Mutex<Option<Child>>> = Arc::default();
        let (kubelet, log_path, dir) = (
            kubelet.to_path_buf(),
            log.clone(),
            kubelet_dir.to_path_buf(),
        );
        let (wrap, extra) = (wrap.to_vec(), extra.to_vec());
        let units = kubelet_unit_texts();
        assert!(
            exec_start(&units, &|_| None)
                .first()
                .is_some_and(|program| program.ends_with("/kubelet")),
            "no kubelet ExecStart= in kubelet.service or its drop-ins (Scenario::start installs them)"
        );
        let (stop2, child2) = (stop.clone(), child.clone());
        let thread = std::thread::spawn(move || {
            let config = dir.join("config.yaml");
            while !stop2.load(Ordering::SeqCst) {
                if !config.exists() {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                // The kubelet's directory is at `dir` here, at /var/lib/kubelet where it runs.
                let read = |p: &Path| {
                    let here = p
                        .strip_prefix(KUBELET_DIR)
                        .map_or(p.into(), |r| dir.join(r));
                    std::fs::read_to_string(here).ok()
                };
                let argv = exec_start(&units, &read);
                let out = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)
                    .unwrap();
                let mut command = match wrap.split_first() {
                    Some((program, rest)) => {
                        let mut c = Command::new(program);
                        c.args(rest).arg(&kubelet);
                        c
                    }
                    None => Command::new(&kubelet),
                };
                let spawned = command
                    .args(&argv[1..])
                    .args(&extra)
                    .stdout(out.try_clone().unwrap())
                    .stderr(out)
                    .spawn()
                    .expect("starting the kubelet");
                *child2.lock().unwrap() = Some(spawned);
                loop {
                    std::thread::sleep(Duration::from_millis(100));
                    let mut guard = child2.lock().unwrap();
                    match guard.as_mut().map(|c| c.try_wait()) {
                        Some(Ok(None)) => continue,
                        _ => {
                            *guard = None;
                            break;
                        }
                    }
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        });
        Supervisor {
            stop,
            child,
            thread: Some(thread),
            log,
        }
    }

    /// The kubelet stopped (SIGTERM) and started again by this supervisor, as `systemctl restart
    /// kubelet` would: it reads its kubeconfig again.
    pub fn restart(&self) {
        if let Some(c) = self.child.lock().unwrap().as_ref() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(c) = self.child.lock().unwrap().as_mut() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// kubeforge with a line-by-line clock: (seconds since start, line) for every stdout line.
pub struct Run {
    pub success: bool,
    pub lines: Vec<(f64, String)>,
    pub stderr: String,
    pub seconds: f64,
    /// The process's peak resident set (VmHWM), KiB, as last sampled before it exited.
    pub peak_rss_kib: u64,
}

impl Run {
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|(_, l)| format!("{l}\n"))
            .collect::<String>()
            + &self.stderr
    }
    pub fn at(&self, needle: &str) -> Option<f64> {
        self.lines
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
    }
}

/// The binary under test: this build's, or `KUBEFORGE_E2E_BIN` (e.g. a release build).
pub fn binary() -> String {
    env("KUBEFORGE_E2E_BIN").unwrap_or_else(|| BIN.to_string())
}

pub fn kubeforge(args: &[&str], env: &[(&str, &str)]) -> Run {
    measured(Path::new(&binary()), args, env)
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Runs `program`: its stdout lines timed from the start, its stderr, and its peak RSS.
pub fn measured(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(vm_hwm_kib(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let stderr = child.stderr.take().unwrap();
    let err_thread =
        std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .map(|l| (start.elapsed().as_secs_f64(), l))
        .collect();
    let status = child.wait().unwrap();
    done.store(true, Ordering::Relaxed);
    Run {
        success: status.success(),
        lines,
        stderr: err_thread.join().unwrap(),
        seconds: start.elapsed().as_secs_f64(),
        peak_rss_kib: sampler.join().unwrap(),
    }
}

/// The control-plane pods (label `tier=control-plane`) on `node`, read with `kubeconfig`.
pub fn control_plane_pods(kubeconfig: &Path, node: &str) -> Vec<serde_json::Value> {
    let out = run(Command::new(crate::common::kubectl())
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args([
            "get",
            "pods",
            "-n",
            "kube-system",
            "-l",
            "tier=control-plane",
        ])
        .arg(format!("--field-selector=spec.nodeName={node}"))
        .args(["-o", "json"]));
    let pods: serde_json::Value = serde_json::from_str(&out).expect("kubectl prints JSON");
    pods["items"].as_array().cloned().unwrap_or_default()
}

/// A kube-system pod, read with admin.conf.
pub fn kube_system_pod(host: &Host, name: &str) -> serde_json::Value {
    kubectl_json(host, &["get", "pod", "-n", "kube-system", name])
}

/// kubectl with admin.conf, JSON out.
pub fn kubectl_json(host: &Host, args: &[&str]) -> serde_json::Value {
    let out = run(Command::new(&host.kubectl)
        .arg(format!("--kubeconfig={KUBERNETES_DIR}/admin.conf"))
        .args(args)
        .args(["-o", "json"]));
    serde_json::from_str(&out).expect("kubectl prints JSON")
}

fn iptables_chains() -> BTreeSet<(String, String)> {
    let mut chains = BTreeSet::new();
    let Ok(out) = Command::new("iptables-save").output() else {
        return chains;
    };
    let mut table = String::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(c) = line.strip_prefix(':') {
            chains.insert((
                table.clone(),
                c.split_whitespace().next().unwrap_or_default().to_string(),
            ));
        }
    }
    chains
}

/// Deletes the rules that jump into `chains` from chains outside it (kube-proxy's jumps from
/// the built-in chains), so the chains themselves can be deleted.
fn remove_jumps_into(chains: &BTreeSet<(String, String)>) {
    let Ok(out) = Command::new("iptables-save").output() else {
        return;
    };
    let mut table = String::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
            continue;
        }
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        let from = rule.split_whitespace().next().unwrap_or_default();
        let into = rule
            .rsplit_once(" -j ")
            .map(|(_, t)| t.split_whitespace().next());
        let is_new = |c: &str| chains.contains(&(table.clone(), c.to_string()));
        if !is_new(from) && into.flatten().is_some_and(is_new) {
            // iptables-save quotes the way a shell reads.
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("iptables -t {table} -D {rule}"))
                .status();
        }
    }
}

/// One scenario's node: the supervised kubelet, and on drop everything removed again —
/// `kubeforge reset`, then what the kubelet itself left (pods, mounts, iptables chains).
pub struct Scenario {
    pub host: Host,
    pub kubelet: Supervisor,
    chains_before: BTreeSet<(String, String)>,
    /// Dropped after the reset and the kubelet's stop.
    _units: KubeletUnits,
}

impl Scenario {
    pub fn start() -> Scenario {
        let host = Host::discover();
        let chains_before = iptables_chains();
        let units = KubeletUnits::install(&host.kubelet);
        let kubelet = Supervisor::start(&host);
        Scenario {
            host,
            kubelet,
            chains_before,
            _units: units,
        }
    }

    fn crictl(&self, args: &[&str]) -> String {
        let out = Command::new(&self.host.crictl)
            .arg(format!("--runtime-endpoint={}", self.host.cri_socket))
            .args(args)
            .output()
            .expect("crictl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The kubelet's log, for a failure report.
    pub fn kubelet_log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.kubelet.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let reset = kubeforge(&["reset", "--force"], &[]);
        if !reset.success {
            eprintln!("kubeforge reset failed:\n{}", reset.text());
        }
        self.kubelet.stop();
        for pod in self
            .crictl(&["pods", "-q", "--namespace", "kube-system"])
            .lines()
        {
            self.crictl(&["stopp", pod]);
            self.crictl(&["rmp", "-f", pod]);
        }
        let _ = Command::new("umount").args(["-R", KUBELET_DIR]).status();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for m in mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(KUBELET_DIR))
        {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        let _ = std::fs::remove_dir_all(KUBELET_DIR);
        let new_chains: BTreeSet<_> = iptables_chains()
            .difference(&self.chains_before)
            .cloned()
            .collect();
        remove_jumps_into(&new_chains);
        // Every chain emptied first: kube-proxy's chains jump into each other.
        for (flag, quiet) in [("-F", false), ("-X", true)] {
            for (table, chain) in &new_chains {
                let mut iptables = Command::new("iptables");
                iptables.args(["-t", table, flag, chain]);
                if quiet {
                    iptables.stderr(Stdio::null());
                }
                let _ = iptables.status();
            }
        }
        if let Ok(entries) = std::fs::read_dir("/var/log/pods") {
            let _ = std::fs::create_dir_all(self.host.log_dir.join("pods"));
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("kube-system_") {
                    // Kept beside the kubelet's log, for a failure's post-mortem.
                    let kept = self.host.log_dir.join("pods").join(e.file_name());
                    let _ = Command::new("cp")
                        .arg("-r")
                        .arg(e.path())
                        .arg(&kept)
                        .status();
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let left: Vec<_> = [KUBERNETES_DIR, KUBELET_DIR]
            .iter()
            .filter(|d| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()))
            .collect();
        if !left.is_empty() && !std::thread::panicking() {
            panic!("the node is not clean after the scenario: {left:?} still hold files");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packages' units give the kubelet the command line the harness gave it before it read
    /// them (kubeadm's drop-in's flags, kubeadm-flags.env's, the operator's /etc/default/kubelet);
    /// `${VAR}` stays one word, an empty `ExecStart=` resets, a missing optional file is nothing.
    #[test]
    fn exec_start_expands_the_units_like_systemd() {
        let units = [
            kubelet_unit(Path::new("/opt/bin/kubelet")),
            kubeforge::kubelet::service::DROP_IN.to_string(),
        ];
        let flags = "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///run/c.sock --node-ip=192.0.2.2\"\n";
        let read = |p: &Path| match p.to_str().unwrap() {
            "/var/lib/kubelet/kubeadm-flags.env" => Some(flags.to_string()),
            "/etc/default/kubelet" => Some("# the operator's\nKUBELET_EXTRA_ARGS=--v=2\n".into()),
            _ => None,
        };
        assert_eq!(
            exec_start(&units, &read),
            [
                "/usr/bin/kubelet",
                "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf",
                "--kubeconfig=/etc/kubernetes/kubelet.conf",
                "--config=/var/lib/kubelet/config.yaml",
                "--container-runtime-endpoint=unix:///run/c.sock",
                "--node-ip=192.0.2.2",
                "--v=2",
            ]
        );
        assert_eq!(exec_start(&units[..1], &read), ["/opt/bin/kubelet"]);
        let braced = "[Service]\nEnvironment=\"A=x y\" B=z\nExecStart=\nExecStart=/k --a=${A} $B $UNSET ${UNSET}\n";
        let with = [units[0].clone(), braced.to_string()];
        assert_eq!(exec_start(&with, &|_| None), ["/k", "--a=x y", "z", ""]);
        let reset = [units[0].clone(), "[Service]\nExecStart=\n".to_string()];
        assert!(exec_start(&reset, &|_| None).is_empty());
    }
}
