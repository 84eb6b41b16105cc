//! The replay corpus covers every workflow path: each thing the workflow code can do (read
//! from the sources, see `code`) must occur in some committed history (see `corpus`).
//! Adding an activity, signal, command kind, task status, job mode or patch without
//! recording a history that exercises it (`make histories`) fails here.

mod code;
mod corpus;

use anyhow::Result;

#[test]
fn the_corpus_exercises_everything_the_workflows_can_do() -> Result<()> {
    let names = code::activity_names()?;
    let registered = code::registered_implementers()?;
    let histories = code::workspace().join("workflows/tests/histories");
    let mut missing = Vec::new();
    let mut scheduled = std::collections::BTreeSet::new();
    let mut handled = std::collections::BTreeMap::new();
    let mut sent = Vec::new();
    for (kind, file) in [("main_thread", "main_thread.rs"), ("task", "task.rs")] {
        let code = code::capabilities(file, &names)?;
        let seen = corpus::exercised(&histories.join(kind))?;
        println!(
            "{kind}: {} activities, {} signals, {} queries (not in histories: {:?}), {} command \
             kinds, {} statuses, {} job modes, {} patches",
            code.activities.len(),
            code.signals.len(),
            code.queries.len(),
            code.queries,
            code.events.len(),
            code.statuses.len(),
            code.job_modes.len(),
            code.patches.len(),
        );
        missing.extend(corpus::uncovered(kind, &code, &seen));
        scheduled.extend(code.activities.iter().cloned());
        handled.insert(kind, code.signals.clone());
        sent.extend(code.sends.iter().cloned());
    }
    // Every activity a worker registers is scheduled by some workflow (or it is dead code
    // the corpus could never cover).
    for implementer in &registered {
        let methods = names.get(implementer).into_iter().flatten();
        for (_, name) in methods {
            if !scheduled.contains(name) {
                missing.push(format!(
                    "registered activity `{name}` is scheduled by no workflow"
                ));
            }
        }
    }
    for implementer in names.keys() {
        if !registered.contains(implementer) {
            missing.push(format!(
                "{implementer} has activities but the worker does not register it"
            ));
        }
    }
    // What one workflow sends, another handles.
    for signal in sent {
        if !handled.values().any(|signals| signals.contains(&signal)) {
            missing.push(format!(
                "signal `{signal}` is sent but no workflow handles it"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "the replay corpus (workflows/tests/histories) misses {} workflow paths; record \
         histories that take them (a scenario in tests/stack/histories.rs, then `make \
         histories`):\n  {}",
        missing.len(),
        missing.join("\n  ")
    );
    Ok(())
}
