//! The determinism gate: every committed history (recorded from real runs by
//! `make histories`) must replay against the current workflow code.

use std::path::Path;

use mainloop_workflows::replay::{load_dir, replay_all};

#[tokio::test]
async fn committed_histories_replay_against_the_current_code() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/histories");
    let histories = load_dir(&dir)?;
    for kind in ["main_thread/", "task/"] {
        let found = histories
            .iter()
            .filter(|(name, _)| name.starts_with(kind))
            .count();
        assert!(
            found >= 2,
            "expected recorded {kind} histories in {}, found {found}",
            dir.display(),
        );
    }
    let replayed = replay_all(histories).await?;
    println!("{replayed} histories replayed");
    Ok(())
}
