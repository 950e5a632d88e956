//! What the fuzz targets share: the readers take paths, so every input is written to a
//! scratch file first (in `/dev/shm` where there is one, to keep it off the disk).

use std::path::{Path, PathBuf};

/// A folder of this process's scratch files, created on first use.
pub fn scratch_dir() -> PathBuf {
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("fdfa-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("cannot create the scratch folder");
    dir
}

/// Writes `data` to the scratch file `name` and returns its path.
pub fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, data).expect("cannot write the scratch file");
    path
}

/// The tiny network the checkpoint targets load into: FC-1 of width 3 on 1x2x2 inputs with 2
/// classes (the seeds in `fuzz/seeds/checkpoint_*` were saved from it).
pub fn tiny_model() -> fdfa::model::Model {
    let mut rng = fdfa::init::rng(0);
    fdfa::model::fc(&[1, 2, 2], 1, 3, 2, &mut rng).expect("a valid network")
}

/// A trainer of [`tiny_model`] with FDFA, as the `checkpoint_trainer` seed was saved.
pub fn tiny_trainer() -> fdfa::train::Trainer {
    let model = tiny_model();
    let mut rng = fdfa::init::rng(1);
    let rule = fdfa::rules::RuleKind::Fdfa
        .build(&model, 1, &mut rng)
        .expect("a valid rule");
    let config = fdfa::train::TrainConfig::default()
        .with_batch_size(4)
        .with_epochs(2);
    fdfa::train::Trainer::new(model, rule, config).expect("a valid trainer")
}

/// Whether every tensor of the model's state is finite (what a successful load promises).
pub fn all_finite(model: &fdfa::model::Model) -> bool {
    let mut ok = true;
    model.visit_state(&mut |_, state| match state {
        fdfa::layers::State::Param(p) => ok &= p.value().is_finite(),
        fdfa::layers::State::Buffer(t) => ok &= t.is_finite(),
        fdfa::layers::State::Counter(_) => {}
    });
    ok
}
