//! The runner on its own: order, skips, run_if, one phase alone, undo in reverse, errors naming
//! the phase.

use super::*;

#[derive(Default)]
struct Log {
    out: Output,
    ran: Vec<String>,
    fail_at: Option<&'static str>,
    undo_fails: Option<&'static str>,
    enabled: bool,
}

impl Default for Output {
    fn default() -> Self {
        Output {
            format: crate::output::Format::Json,
        }
    }
}

impl Data for Log {
    fn out(&self) -> &Output {
        &self.out
    }
}

fn record(d: &mut Log, step: &Step) -> Result<()> {
    d.ran.push(format!("{}{:?}", step.path, step.children));
    if d.fail_at == Some(step.name) {
        anyhow::bail!("{} broke", step.name);
    }
    Ok(())
}

fn undo_a(d: &mut Log, _: &str) -> Result<()> {
    d.ran.push("undo a".into());
    Ok(())
}

fn undo_b(d: &mut Log, _: &str) -> Result<()> {
    d.ran.push("undo b".into());
    if d.undo_fails == Some("b") {
        anyhow::bail!("b stuck");
    }
    Ok(())
}

fn table() -> Vec<Phase<Log>> {
    vec![
        Phase::new("a", "first").run(record).undo(undo_a),
        Phase::new("b", "second")
            .run(record)
            .undo(undo_b)
            .children(vec![
                Phase::new("x", "child x").run(record),
                Phase::new("y", "child y").run(record),
            ]),
        Phase::new("c", "only when enabled")
            .run_if(|d: &Log| d.enabled)
            .run(record),
        Phase::new("d", "last").run(record),
    ]
}

fn run_with(log: &mut Log, selection: Selection) -> Result<()> {
    run(&table(), log, &selection)
}

#[test]
fn phases_run_in_order_parents_before_their_children() {
    let mut log = Log::default();
    run_with(&mut log, Selection::default()).unwrap();
    assert_eq!(log.ran, ["a[]", "b[\"x\", \"y\"]", "b/x[]", "b/y[]", "d[]"]);
    let mut log = Log {
        enabled: true,
        ..Log::default()
    };
    run_with(&mut log, Selection::default()).unwrap();
    assert!(log.ran.contains(&"c[]".to_string()));
}

#[test]
fn skipped_phases_and_children_are_left_out() {
    let mut log = Log::default();
    let skip = vec!["a".to_string(), "b/x".to_string()];
    run_with(
        &mut log,
        Selection {
            skip,
            ..Selection::default()
        },
    )
    .unwrap();
    assert_eq!(log.ran, ["b[\"y\"]", "b/y[]", "d[]"]);
}

#[test]
fn one_phase_alone_and_one_child_alone() {
    let mut log = Log::default();
    let one = |phase: &str, child: Option<&str>| Selection {
        phase: Some(phase.into()),
        child: child.map(Into::into),
        skip: Vec::new(),
    };
    run_with(&mut log, one("b", None)).unwrap();
    assert_eq!(log.ran, ["b[\"x\", \"y\"]", "b/x[]", "b/y[]"]);
    log.ran.clear();
    run_with(&mut log, one("b", Some("y"))).unwrap();
    assert_eq!(log.ran, ["b[\"y\"]", "b/y[]"]);
    log.ran.clear();
    run_with(&mut log, one("b", Some("all"))).unwrap();
    assert_eq!(log.ran.len(), 3);
    let e = run_with(&mut log, one("b", Some("z"))).unwrap_err();
    assert!(
        e.to_string()
            .contains("unknown sub-phase \"z\" of phase b; valid: all, x, y"),
        "{e}"
    );
    assert_eq!(crate::exit_code(&e), 2);
}

#[test]
fn an_unknown_skip_is_bad_input() {
    let mut log = Log::default();
    let skip = vec!["b/nope".to_string()];
    let e = run_with(
        &mut log,
        Selection {
            skip,
            ..Selection::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "invalid phase name: b/nope");
    assert_eq!(crate::exit_code(&e), 2);
    assert!(log.ran.is_empty());
}

#[test]
fn a_failure_names_its_phase_and_undoes_what_completed_in_reverse() {
    let mut log = Log {
        fail_at: Some("y"),
        ..Log::default()
    };
    let e = run_with(&mut log, Selection::default()).unwrap_err();
    assert_eq!(format!("{e:#}"), "phase b/y: y broke");
    assert_eq!(crate::exit_code(&e), 1);
    assert_eq!(
        log.ran,
        [
            "a[]",
            "b[\"x\", \"y\"]",
            "b/x[]",
            "b/y[]",
            "undo b",
            "undo a"
        ]
    );
}

#[test]
fn a_failed_undo_is_named_and_the_others_still_run() {
    let mut log = Log {
        fail_at: Some("d"),
        undo_fails: Some("b"),
        ..Log::default()
    };
    let e = run_with(&mut log, Selection::default()).unwrap_err();
    let text = format!("{e:#}");
    assert!(text.contains("phase d: d broke"), "{text}");
    assert!(text.contains("undoing failed for b (b stuck)"), "{text}");
    assert!(log
        .ran
        .ends_with(&["undo b".to_string(), "undo a".to_string()]));
}

#[test]
fn nothing_before_a_committing_phase_is_undone() {
    let phases = vec![
        Phase::new("a", "first").run(record).undo(undo_a),
        Phase::new("b", "the point of no return")
            .run(record)
            .undo(undo_b)
            .commits(),
        Phase::new("d", "last").run(record),
    ];
    let mut log = Log {
        fail_at: Some("d"),
        ..Log::default()
    };
    let e = run(&phases, &mut log, &Selection::default()).unwrap_err();
    assert_eq!(format!("{e:#}"), "phase d: d broke");
    assert_eq!(log.ran, ["a[]", "b[]", "d[]"]);
}

#[test]
fn bad_input_inside_a_phase_keeps_exit_code_2() {
    fn bad(_: &mut Log, _: &Step) -> Result<()> {
        Err(crate::BadInput("no".into()).into())
    }
    let phases = vec![Phase::new("p", "bad input").run(bad)];
    let e = run(&phases, &mut Log::default(), &Selection::default()).unwrap_err();
    assert_eq!(format!("{e:#}"), "phase p: no");
    assert_eq!(crate::exit_code(&e), 2);
}

#[test]
fn the_help_lists_phases_and_children() {
    let help = help_table(&table());
    assert!(
        help.contains("  b                    second\n    /x                 child x\n"),
        "{help}"
    );
}
