//! How the wait shows the components' states: a live block on a terminal, a line per change
//! otherwise, a JSON event per change with `-o json`.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::json;

use super::Component;
use crate::output::Output;

pub fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

pub struct Display {
    pub out: Output,
    live: bool,
    drawn: usize,
}

impl Display {
    pub fn new(out: Output) -> Display {
        use std::io::IsTerminal;
        Display {
            out,
            live: out.format == crate::output::Format::Text && std::io::stdout().is_terminal(),
            drawn: 0,
        }
    }

    pub fn change(&mut self, c: &Component, at: Duration) {
        if self.out.json() {
            self.out.print_json(&json!({
                "phase": "wait-control-plane",
                "component": c.name(),
                "state": c.state,
                "seconds": (at.as_secs_f64() * 10.0).round() / 10.0,
                "container": c.container,
            }));
        } else if !self.live {
            println!(
                "[wait-control-plane] {}: {} ({})",
                c.name(),
                c.state,
                seconds(at)
            );
        }
    }

    pub fn draw(&mut self, components: &[Component], start: Instant) {
        if !self.live {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A", self.drawn);
        }
        for c in components {
            let at = c.ready.or(c.healthy).unwrap_or_else(|| start.elapsed());
            let _ = writeln!(
                out,
                "\x1b[2K  {:<24} {:<48} {:>7}",
                c.name(),
                c.state,
                seconds(at)
            );
        }
        let _ = out.flush();
        self.drawn = components.len();
    }

    /// Plain lines from here on (a report, or the next phase).
    pub fn end(&mut self) {
        self.drawn = 0;
    }
}
