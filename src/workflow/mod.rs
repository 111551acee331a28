//! The workflow layer: each command is a table of phases (data), run by one runner. A phase has a
//! name, a one-line description, child phases, a `run_if`, a `run` and, where it changes
//! something that can be put back, an `undo`; when a phase fails, the runner undoes the phases
//! that completed, in reverse, and the error names the phase. `kubeforge <cmd> phase <name>
//! [child]` runs one phase; `--skip-phases name` or `name/child` leaves some out, with kubeadm's
//! names. Phases never call each other: shared work is a domain function both call.

pub mod certs;
mod effects;
pub mod encryption;
mod env;
pub(crate) mod fault;
pub mod init;
pub mod join;
pub mod reset;
pub mod upgrade;

use anyhow::{anyhow, Context as _, Result};
use serde_json::json;

pub use effects::Effects;
pub use env::Env;

use crate::output::Output;
use crate::BadInput;

/// What a phase's `run` is told: where it is in the table, and which of its children will run
/// (a parent that plans for its children, like `certs`, plans for those only).
pub struct Step<'a> {
    /// `certs/apiserver`.
    pub path: &'a str,
    /// `apiserver`.
    pub name: &'a str,
    pub children: Vec<String>,
}

type RunFn<D> = fn(&mut D, &Step) -> Result<()>;
/// Undoes a completed phase, told its name (one function can undo several sibling phases).
type UndoFn<D> = fn(&mut D, &str) -> Result<()>;
/// When a phase runs, and what it says when it does not.
type RunIf<D> = (fn(&D) -> bool, Option<&'static str>);

/// One row of a workflow's table.
pub struct Phase<D> {
    pub name: String,
    pub description: String,
    pub children: Vec<Phase<D>>,
    /// When it returns false the phase and its children are left out; the note, if any, is
    /// printed as the phase's line.
    run_if: Option<RunIf<D>>,
    run: Option<RunFn<D>>,
    undo: Option<UndoFn<D>>,
    /// Once this phase completes, what ran before it is no longer undone: the point after which
    /// a failure leaves the run to be completed by a re-run, not rolled back.
    commits: bool,
}

impl<D> Phase<D> {
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Phase<D> {
        Phase {
            name: name.into(),
            description: description.into(),
            children: Vec::new(),
            run_if: None,
            run: None,
            undo: None,
            commits: false,
        }
    }

    pub fn run(mut self, run: RunFn<D>) -> Self {
        self.run = Some(run);
        self
    }

    pub fn children(mut self, children: Vec<Phase<D>>) -> Self {
        self.children = children;
        self
    }

    pub fn run_if(mut self, when: fn(&D) -> bool) -> Self {
        self.run_if = Some((when, None));
        self
    }

    /// `run_if`, saying `note` when the phase is left out.
    pub fn run_if_noted(mut self, when: fn(&D) -> bool, note: &'static str) -> Self {
        self.run_if = Some((when, Some(note)));
        self
    }

    pub fn undo(mut self, undo: UndoFn<D>) -> Self {
        self.undo = Some(undo);
        self
    }

    /// Marks the phase as the run's point of no return (see `commits`).
    pub fn commits(mut self) -> Self {
        self.commits = true;
        self
    }
}

/// What every workflow's data offers the runner.
pub trait Data {
    fn out(&self) -> &Output;
}

/// Which phases to run: all (`phase` None) or one phase, optionally one of its children; minus
/// what `skip` names (`phase` or `phase/child`).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub phase: Option<String>,
    pub child: Option<String>,
    pub skip: Vec<String>,
}

/// The phases that completed and can be undone, in the order they ran: (path, name, undo).
struct Done<D> {
    undo: Vec<(String, String, UndoFn<D>)>,
}

/// Runs `phases` on `data` as `selection` says. When a phase fails, the completed phases'
/// `undo`s run in reverse before the error (naming the failed phase) is returned.
pub fn run<D: Data>(phases: &[Phase<D>], data: &mut D, selection: &Selection) -> Result<()> {
    check(phases, selection)?;
    let mut done = Done { undo: Vec::new() };
    let result = match &selection.phase {
        Some(name) => {
            let phase = phases.iter().find(|p| &p.name == name).expect("checked");
            let only = selection.child.as_deref().filter(|c| *c != "all");
            run_phase(phase, &phase.name, only, data, &selection.skip, &mut done)
        }
        None => run_all(phases, data, &selection.skip, &mut done),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(unwind(done, data, e)),
    }
}

fn run_all<D: Data>(
    phases: &[Phase<D>],
    data: &mut D,
    skip: &[String],
    done: &mut Done<D>,
) -> Result<()> {
    for phase in phases {
        if skip.contains(&phase.name) {
            data.out().step(
                &phase.name,
                "Skipped (--skip-phases)",
                json!({"skipped": true}),
            );
            continue;
        }
        run_phase(phase, &phase.name, None, data, skip, done)?;
        fault::after_phase(&phase.name);
    }
    Ok(())
}

fn run_phase<D: Data>(
    phase: &Phase<D>,
    path: &str,
    only: Option<&str>,
    data: &mut D,
    skip: &[String],
    done: &mut Done<D>,
) -> Result<()> {
    if let Some((when, note)) = phase.run_if {
        if !when(data) {
            if let Some(note) = note {
                data.out()
                    .step(&phase.name, note, json!({ "skipped": true }));
            }
            return Ok(());
        }
    }
    let children: Vec<&Phase<D>> = phase
        .children
        .iter()
        .filter(|c| only.is_none_or(|o| o == c.name))
        .filter(|c| !skip.contains(&format!("{path}/{}", c.name)))
        .collect();
    if let Some(run) = phase.run {
        let step = Step {
            path,
            name: &phase.name,
            children: children.iter().map(|c| c.name.clone()).collect(),
        };
        run(data, &step).with_context(|| format!("phase {path}"))?;
    }
    if let Some(undo) = phase.undo {
        done.undo.push((path.to_string(), phase.name.clone(), undo));
    }
    for child in children {
        let child_path = format!("{path}/{}", child.name);
        run_phase(child, &child_path, None, data, skip, done)?;
    }
    if phase.commits {
        done.undo.clear();
    }
    Ok(())
}

/// Undoes what completed, newest first. An undo that fails is reported and the others still
/// run; the returned error is the original one, with the failed undos named.
fn unwind<D: Data>(done: Done<D>, data: &mut D, error: anyhow::Error) -> anyhow::Error {
    let mut failed = Vec::new();
    for (path, name, undo) in done.undo.into_iter().rev() {
        match undo(data, &name) {
            Ok(()) => data.out().step(
                "undo",
                &format!("Undid phase {path}"),
                json!({ "phase": path, "undone": true }),
            ),
            Err(e) => {
                data.out().step(
                    "undo",
                    &format!("Undoing phase {path} failed: {e:#}"),
                    json!({ "phase": path, "undone": false, "error": format!("{e:#}") }),
                );
                failed.push(format!("{path} ({e:#})"));
            }
        }
    }
    if failed.is_empty() {
        error
    } else {
        error.context(format!("and undoing failed for {}", failed.join(", ")))
    }
}

/// Every phase path of a table: `certs`, `certs/ca`, ….
fn paths<D>(phases: &[Phase<D>], prefix: &str) -> Vec<String> {
    let mut all = Vec::new();
    for p in phases {
        let path = if prefix.is_empty() {
            p.name.clone()
        } else {
            format!("{prefix}/{}", p.name)
        };
        all.extend(paths(&p.children, &path));
        all.push(path);
    }
    all
}

/// kubeadm's rules: every `--skip-phases` entry names a phase or `phase/child`; a phase run
/// alone exists, and so does its child.
fn check<D>(phases: &[Phase<D>], selection: &Selection) -> Result<()> {
    let known = paths(phases, "");
    if let Some(entry) = selection.skip.iter().find(|s| !known.contains(s)) {
        return Err(anyhow!(BadInput(format!("invalid phase name: {entry}"))));
    }
    let Some(name) = &selection.phase else {
        return Ok(());
    };
    let phase = phases
        .iter()
        .find(|p| &p.name == name)
        .ok_or_else(|| BadInput(format!("unknown phase {name:?}")))?;
    if let Some(child) = selection.child.as_deref().filter(|c| *c != "all") {
        if !phase.children.iter().any(|c| c.name == child) {
            let valid: Vec<&str> = phase.children.iter().map(|c| c.name.as_str()).collect();
            return Err(anyhow!(BadInput(format!(
                "unknown sub-phase {child:?} of phase {name}; valid: all, {}",
                valid.join(", ")
            ))));
        }
    }
    Ok(())
}

/// `kubeforge <cmd> phase --help`: every phase with its children.
pub fn help_table<D>(phases: &[Phase<D>]) -> String {
    let mut s = String::from("Phases:\n");
    for p in phases {
        s.push_str(&format!("  {:<20} {}\n", p.name, p.description));
        for c in &p.children {
            s.push_str(&format!(
                "    {:<18} {}\n",
                format!("/{}", c.name),
                c.description
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests;
