//! Files of a checkpoint folder at the library's level: the lock (item 3) and the removal
//! of temporary files left by failed or interrupted saves (item 4).

use std::fs;

use fdfa::train::checkpoint::{CheckpointLock, load_trainer, remove_temporaries};

use super::{TempDir, names, saved, trainer};

#[test]
fn a_locked_checkpoint_folder_is_refused_until_released() {
    let tmp = TempDir::new("lock");
    let dir = tmp.path().join("ckpt");
    saved(&dir, 1);
    let held = CheckpointLock::acquire(&dir).unwrap();
    let err = CheckpointLock::acquire(&dir).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "checkpoint {}: in use by another run (a process holds {}); wait for it to finish \
             or stop it",
            dir.display(),
            dir.join("lock").display()
        )
    );
    drop(held);
    let again = CheckpointLock::acquire(&dir).unwrap();
    assert_eq!(again.dir(), dir);
    // The lock file is no part of the checkpoint: loading ignores it.
    load_trainer(&dir, &mut trainer(1)).unwrap();
}

#[test]
fn temporaries_of_interrupted_saves_are_removed_under_the_lock() {
    let tmp = TempDir::new("temporaries");
    let dir = tmp.path().join("ckpt");
    saved(&dir, 1);
    // What a save killed before its rename leaves: the next generation's partial tensors.
    let whole = fs::read(dir.join("model-000001.safetensors")).unwrap();
    fs::write(
        dir.join("model-000002.safetensors.tmp"),
        &whole[..whole.len() / 2],
    )
    .unwrap();
    fs::write(dir.join("state.json.tmp"), b"{\"format\": \"fdfa").unwrap();
    fs::write(dir.join("notes.txt.tmp"), b"not ours").unwrap();
    let lock = CheckpointLock::acquire(&dir).unwrap();
    let mut removed: Vec<String> = remove_temporaries(&lock)
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    removed.sort();
    assert_eq!(removed, ["model-000002.safetensors.tmp", "state.json.tmp"]);
    assert_eq!(
        names(&dir),
        [
            "lock",
            "model-000001.safetensors",
            "notes.txt.tmp",
            "state.json"
        ]
    );
    load_trainer(&dir, &mut trainer(1)).unwrap();
}
