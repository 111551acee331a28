//! Kills at random instants, reproducibly: a seeded RNG (`KUBEFORGE_KILL_SEED` replays a run,
//! `KUBEFORGE_KILLS` sets how many kills) chooses, for each kill, either a delay after which the
//! process gets SIGKILL or the n-th file write inside which the writer aborts
//! (`KUBEFORGE_FAULT=write:<n>` before the rename, `renamed:<n>` after it).

use rand::{Rng, SeedableRng};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Killer {
    pub seed: u64,
    pub rng: rand::rngs::StdRng,
}

/// One random instant.
#[derive(Debug, Clone, Copy)]
pub enum Kill {
    /// SIGKILL this long after the start.
    After(Duration),
    /// Abort with the n-th file written to its temp file, before the rename.
    AtWrite(u32),
    /// Abort right after the n-th file's rename, before the directory's fsync.
    AtRename(u32),
}

impl Killer {
    /// Seeded from `KUBEFORGE_KILL_SEED`, else from the clock; the seed is printed.
    pub fn from_env() -> Killer {
        let seed = std::env::var("KUBEFORGE_KILL_SEED")
            .ok()
            .map(|s| s.parse().expect("KUBEFORGE_KILL_SEED: a number"))
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        println!("kill seed: {seed} (replay with KUBEFORGE_KILL_SEED={seed})");
        Killer {
            seed,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    /// `KUBEFORGE_KILLS`, else `default`.
    pub fn count(default: usize) -> usize {
        std::env::var("KUBEFORGE_KILLS")
            .ok()
            .map(|s| s.parse().expect("KUBEFORGE_KILLS: a number"))
            .unwrap_or(default)
    }

    /// A random instant in a run that takes about `typical` and writes about `writes` files.
    pub fn instant(&mut self, typical: Duration, writes: u32) -> Kill {
        match self.rng.random_range(0..3) {
            0 => Kill::AtWrite(self.rng.random_range(1..=writes.max(1))),
            1 => Kill::AtRename(self.rng.random_range(1..=writes.max(1))),
            _ => Kill::After(typical.mul_f64(self.rng.random_range(0.0..1.0))),
        }
    }
}

/// Runs `command` killed at `kill`; whether it was killed (false: it finished first).
pub fn run_killed(mut command: Command, kill: Kill) -> bool {
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let delay = match kill {
        Kill::AtWrite(n) => {
            command.env("KUBEFORGE_FAULT", format!("write:{n}"));
            None
        }
        Kill::AtRename(n) => {
            command.env("KUBEFORGE_FAULT", format!("renamed:{n}"));
            None
        }
        Kill::After(d) => Some(d),
    };
    let mut child = command.spawn().expect("start kubeforge");
    let Some(delay) = delay else {
        return !child.wait().expect("wait").success();
    };
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return !status.success();
        }
        if start.elapsed() >= delay {
            child.kill().expect("SIGKILL");
            child.wait().expect("wait");
            return true;
        }
        std::thread::sleep(Duration::from_millis(1).min(delay));
    }
}
