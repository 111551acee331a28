//! The images a node runs, on the node before anything waits on them: kubeadm's `ImagePull`
//! preflight check (`imagePullPolicy`, `imagePullSerial`) and `config images pull`, through the
//! CRI on the kubelet's socket. Every pull has a deadline, so a registry that stalls is named
//! with the image being pulled when time ran out instead of looking like a component that will
//! not start.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use crate::config::{Config, GoDuration};
use crate::cri::Runtime;
use crate::manifests;
use crate::output::{Format, Output};
use crate::preflight::{Finding, Severity};

/// How long one image may take, as a Go duration (`90s`, `5m`); five minutes by default.
pub const TIMEOUT_ENV: &str = "KUBEFORGE_IMAGE_PULL_TIMEOUT";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The images this node runs: its static pods', kube-proxy's and the pod sandbox's. CoreDNS's
/// pods run wherever the scheduler puts them once a pod network exists, and nothing a
/// control-plane node waits on needs them (`config images pull` takes the whole list).
pub fn for_node(cfg: &Config) -> Vec<String> {
    let coredns = manifests::coredns_image(cfg);
    manifests::images(cfg)
        .into_iter()
        .filter(|i| *i != coredns)
        .collect()
}

/// The registry an image reference names (Docker's rule: a first part with a dot, a colon or
/// `localhost` is a host).
pub fn registry(image: &str) -> &str {
    match image.split_once('/') {
        Some((host, _)) if host.contains(['.', ':']) || host == "localhost" => host,
        _ => "docker.io",
    }
}

/// Where one image stands.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Waiting,
    Pulling(Instant),
    /// On the node already (IfNotPresent, Never).
    Present,
    Pulled(Duration),
    /// Why it is not on the node: the image, the registry and the runtime's error.
    Failed(String),
}

/// One pass over a list of images.
pub struct Pull<'a> {
    pub out: &'a Output,
    /// The `[phase]` of the lines printed.
    pub phase: &'a str,
    pub cri_socket: &'a str,
    /// `Always`, `IfNotPresent` or `Never` (validated with the config).
    pub policy: &'a str,
    pub serial: bool,
}

impl<'a> Pull<'a> {
    /// The node's own settings: `nodeRegistration`'s criSocket, imagePullPolicy, imagePullSerial.
    pub fn for_node(cfg: &'a Config, out: &'a Output, phase: &'a str) -> Pull<'a> {
        let nr = &cfg.init.node_registration;
        Pull {
            out,
            phase,
            cri_socket: &nr.cri_socket,
            policy: &nr.image_pull_policy,
            serial: nr.image_pull_serial.unwrap_or(true),
        }
    }

    /// Brings `images` onto the node as the policy says; one state per image, none `Waiting`.
    pub fn run(&self, images: &[String]) -> Vec<State> {
        let timeout = timeout();
        let board = Board::new(*self.out, self.phase, images);
        let start = Instant::now();
        let connected = crate::block_on(async {
            let runtime = Runtime::connect(self.cri_socket).await?;
            tokio::select! {
                () = self.pull_all(&runtime, &board, timeout) => {}
                () = board.animate() => unreachable!("the animation never ends"),
            }
            Ok::<_, anyhow::Error>(())
        });
        match connected {
            Ok(()) => {
                board.finish(start);
                board.states()
            }
            Err(e) => vec![State::Failed(format!("{e:#}")); images.len()],
        }
    }

    async fn pull_all(&self, runtime: &Runtime, board: &Board<'_>, timeout: Duration) {
        for (i, image) in board.images.iter().enumerate() {
            if self.policy == "Always" {
                continue;
            }
            match runtime.clone().has_image(image).await {
                Ok(true) => board.set(i, State::Present),
                Ok(false) if self.policy == "Never" => board.set(
                    i,
                    State::Failed(format!(
                        "image {image} is not on the node and imagePullPolicy is Never"
                    )),
                ),
                Ok(false) => {}
                Err(e) => board.set(
                    i,
                    State::Failed(format!(
                        "could not ask the container runtime whether {image} is on the node: {e:#}"
                    )),
                ),
            }
        }
        let todo: Vec<usize> = (0..board.images.len())
            .filter(|i| board.state(*i) == State::Waiting)
            .collect();
        if self.serial {
            for i in todo {
                pull_one(runtime.clone(), board, i, timeout).await;
            }
        } else {
            let pulls = todo
                .into_iter()
                .map(|i| pull_one(runtime.clone(), board, i, timeout));
            futures::future::join_all(pulls).await;
        }
    }
}

/// Pulls image `i`, unless its registry already stalled in this pass (then it is not tried).
async fn pull_one(mut runtime: Runtime, board: &Board<'_>, i: usize, timeout: Duration) {
    let image = &board.images[i];
    let from = registry(image);
    if let Some(stalled) = board.stalled(from) {
        let why = format!(
            "did not pull image {image}: the pull of {stalled} from the same registry ran out of time"
        );
        return board.set(i, State::Failed(why));
    }
    let start = Instant::now();
    board.set(i, State::Pulling(start));
    let state = match tokio::time::timeout(timeout, runtime.pull(image)).await {
        Ok(Ok(())) => State::Pulled(start.elapsed()),
        Ok(Err(e)) => State::Failed(format!(
            "failed to pull image {image} from registry {from}: {e:#}"
        )),
        Err(_) => {
            board
                .stalls
                .borrow_mut()
                .push((from.to_string(), image.clone()));
            State::Failed(format!(
                "failed to pull image {image}: the pull from registry {from} had not finished after {} (the limit, {TIMEOUT_ENV}); it was stopped",
                seconds(timeout)
            ))
        }
    };
    board.set(i, state);
}

/// The deadline of one pull: `$KUBEFORGE_IMAGE_PULL_TIMEOUT`, else five minutes.
fn timeout() -> Duration {
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| {
            GoDuration::parse(&v)
                .map_err(|e| tracing::warn!("{TIMEOUT_ENV}={v:?}: {e}; using 5m"))
                .ok()
        })
        .map_or(DEFAULT_TIMEOUT, |d| d.0)
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Why each image is not on the node, each reason once (no runtime: one reason for all).
fn failures(states: Vec<State>) -> Vec<String> {
    let mut failed: Vec<String> = Vec::new();
    for state in states {
        if let State::Failed(why) = state {
            if !failed.contains(&why) {
                failed.push(why);
            }
        }
    }
    failed
}

/// kubeadm's `ImagePull` check: every image not on the node is an error.
pub fn findings(states: Vec<State>) -> Vec<Finding> {
    failures(states)
        .into_iter()
        .map(|message| Finding {
            check: "ImagePull".into(),
            severity: Severity::Error,
            message,
        })
        .collect()
}

/// `kubeforge config images pull`: every image of `config images list`, pulled whether or not it
/// is on the node (kubeadm's), serially unless `imagePullSerial` is false.
pub fn pull_command(cfg: &Config, out: &Output) -> Result<()> {
    let mut pull = Pull::for_node(cfg, out, "config/images");
    pull.policy = "Always";
    let failed = failures(pull.run(&manifests::images(cfg)));
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

/// What a pass shows: a line per image as it finishes when stdout is not a terminal (a JSON
/// object with `-o json`), a live block of every image's state on a terminal.
struct Board<'a> {
    out: Output,
    phase: &'a str,
    images: &'a [String],
    states: RefCell<Vec<State>>,
    /// (registry, the image being pulled) for each registry whose pull ran out of time.
    stalls: RefCell<Vec<(String, String)>>,
    live: bool,
    drawn: std::cell::Cell<usize>,
}

impl<'a> Board<'a> {
    fn new(out: Output, phase: &'a str, images: &'a [String]) -> Board<'a> {
        Board {
            out,
            phase,
            images,
            states: RefCell::new(vec![State::Waiting; images.len()]),
            stalls: RefCell::new(Vec::new()),
            live: out.format == Format::Text && std::io::stdout().is_terminal(),
            drawn: std::cell::Cell::new(0),
        }
    }

    fn state(&self, i: usize) -> State {
        self.states.borrow()[i].clone()
    }

    fn states(&self) -> Vec<State> {
        self.states.borrow().clone()
    }

    fn stalled(&self, registry: &str) -> Option<String> {
        let stalls = self.stalls.borrow();
        stalls
            .iter()
            .find(|(r, _)| r == registry)
            .map(|(_, i)| i.clone())
    }

    fn set(&self, i: usize, state: State) {
        self.states.borrow_mut()[i] = state.clone();
        if !self.live {
            self.line(&self.images[i], &state);
        }
    }

    fn line(&self, image: &str, state: &State) {
        let (word, text) = match state {
            State::Waiting | State::Pulling(_) => return,
            State::Present => ("present", format!("{image} is on the node already")),
            State::Pulled(d) => ("pulled", format!("Pulled {image} ({})", seconds(*d))),
            State::Failed(why) => ("failed", why.clone()),
        };
        let mut fields = json!({ "image": image, "state": word });
        if let State::Pulled(d) = state {
            fields["seconds"] = json!((d.as_secs_f64() * 10.0).round() / 10.0);
        }
        if let State::Failed(why) = state {
            fields["error"] = json!(why);
        }
        self.out.step(self.phase, &text, fields);
    }

    /// Redraws the live block four times a second (only on a terminal), forever.
    async fn animate(&self) {
        loop {
            self.draw();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn draw(&self) {
        if !self.live {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.drawn.get() > 0 {
            let _ = write!(out, "\x1b[{}A", self.drawn.get());
        }
        for (image, state) in self.images.iter().zip(self.states.borrow().iter()) {
            let text = match state {
                State::Waiting => "waiting".to_string(),
                State::Pulling(since) => format!("pulling… {}", seconds(since.elapsed())),
                State::Present => "on the node already".into(),
                State::Pulled(d) => format!("pulled in {}", seconds(*d)),
                State::Failed(_) => "failed".into(),
            };
            let _ = writeln!(out, "\x1b[2K  {image:<56} {text}");
        }
        let _ = out.flush();
        self.drawn.set(self.images.len());
    }

    /// The last picture, and a summary line.
    fn finish(&self, start: Instant) {
        self.draw();
        let states = self.states.borrow();
        let count = |f: fn(&State) -> bool| states.iter().filter(|s| f(s)).count();
        let pulled = count(|s| matches!(s, State::Pulled(_)));
        let present = count(|s| *s == State::Present);
        let failed = count(|s| matches!(s, State::Failed(_)));
        self.out.step(
            self.phase,
            &format!(
                "{} images: {pulled} pulled, {present} on the node already, {failed} failed ({})",
                states.len(),
                seconds(start.elapsed())
            ),
            json!({ "images": self.images, "pulled": pulled, "present": present, "failed": failed,
                    "seconds": (start.elapsed().as_secs_f64() * 10.0).round() / 10.0 }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_of_an_image() {
        assert_eq!(
            registry("registry.k8s.io/kube-apiserver:v1.35.6"),
            "registry.k8s.io"
        );
        assert_eq!(registry("127.0.0.1:5000/etcd:3.6.5-0"), "127.0.0.1:5000");
        assert_eq!(registry("localhost/pause:3.10.1"), "localhost");
        assert_eq!(registry("library/busybox:1"), "docker.io");
        assert_eq!(registry("busybox"), "docker.io");
    }

    #[test]
    fn a_failed_image_is_an_image_pull_error() {
        let states = [
            State::Present,
            State::Pulled(Duration::from_secs(1)),
            State::Failed("failed to pull image x".into()),
            State::Failed("failed to pull image x".into()),
        ];
        let found = findings(states.to_vec());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].check, "ImagePull");
        assert_eq!(found[0].message, "failed to pull image x");
    }
}
