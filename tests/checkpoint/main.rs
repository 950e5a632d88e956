//! Checkpoints: exact resume, crash-safe saves, refused and malformed checkpoints, the
//! non-finite guard, and the examples' `--resume`, `--checkpoint-every` and Ctrl-C.
//!
//! One binary (`cargo test --test checkpoint`), one file per subject. Training runs use FC-2
//! of width 32 on the first 1024 training and 512 test samples of the real MNIST in
//! `data/mnist`; without it (the published package) those tests skip, saying so.

#[path = "../common/mod.rs"]
mod common;

mod example;
mod guard;
mod malformed;
mod resume;

use std::fs;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fdfa::data::{Dataset, load_mnist};
use fdfa::layers::{ParamRef, State};
use fdfa::rules::RuleKind;
use fdfa::train::checkpoint::{RunInfo, load_trainer, save_trainer};
use fdfa::train::{CsvLog, TrainConfig, Trainer};

/// The seed of every run here.
const SEED: u64 = 7;

/// The MNIST subsets every run trains and evaluates on.
fn mnist() -> &'static (Dataset, Dataset) {
    static DATA: OnceLock<(Dataset, Dataset)> = OnceLock::new();
    DATA.get_or_init(|| {
        let (train, test) = load_mnist(Path::new("data/mnist")).unwrap();
        (train.subset(0..1024).unwrap(), test.subset(0..512).unwrap())
    })
}

/// How a test run's trainer is built.
#[derive(Clone, Copy, Debug)]
struct Setup {
    rule: RuleKind,
    epochs: usize,
    layers: usize,
    width: usize,
    lr: f32,
}

impl Setup {
    fn new(rule: RuleKind) -> Self {
        Self {
            rule,
            epochs: 3,
            layers: 2,
            width: 32,
            lr: 1e-3,
        }
    }

    fn epochs(self, epochs: usize) -> Self {
        Self { epochs, ..self }
    }

    fn trainer(self) -> Trainer {
        let mut rng = fdfa::init::rng(SEED);
        let model = fdfa::model::fc(&[1, 28, 28], self.layers, self.width, 10, &mut rng).unwrap();
        let rule = self.rule.build(&model, 1, &mut rng).unwrap();
        let config = TrainConfig::default()
            .with_batch_size(64)
            .with_test_batch_size(256)
            .with_epochs(self.epochs)
            .with_lr(self.lr)
            .with_b_lr(1e-3)
            .with_seed(SEED);
        Trainer::new(model, rule, config).unwrap()
    }
}

/// A fresh folder under the system's temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fdfa-ckpt-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Every piece of a trainer's state, as bits, by name.
type Snapshot = Vec<(String, Vec<u64>)>;

fn bits(t: &fdfa::Tensor) -> Vec<u64> {
    t.data().iter().map(|v| u64::from(v.to_bits())).collect()
}

fn snapshot(t: &mut Trainer) -> Snapshot {
    let mut s: Snapshot = Vec::new();
    let mut moments: Snapshot = Vec::new();
    let forward = t.forward_optimizer();
    t.model().visit_state(&mut |name, state| {
        let b = match state {
            State::Param(p) => {
                if let Some((m, v)) = forward.moments(name, &p) {
                    moments.push((format!("forward exp_avg {name}"), bits(&m)));
                    moments.push((format!("forward exp_avg_sq {name}"), bits(&v)));
                }
                bits(&p.value())
            }
            State::Buffer(t) => bits(t),
            State::Counter(c) => vec![c],
        };
        s.push((name.to_string(), b));
    });
    let feedback = t.feedback_optimizer();
    if let Some(fb) = t.rule().feedback() {
        for (name, m) in fb.names().iter().zip(fb.matrices()) {
            s.push((name.to_string(), bits(&m.value)));
            if let Some((m, v)) = feedback.moments(name, &ParamRef::new(m)) {
                moments.push((format!("feedback exp_avg {name}"), bits(&m)));
                moments.push((format!("feedback exp_avg_sq {name}"), bits(&v)));
            }
        }
    }
    for (group, adam) in [("forward", forward), ("feedback", feedback)] {
        s.push((format!("{group} steps"), vec![adam.steps()]));
        s.push((format!("{group} lr"), vec![u64::from(adam.lr().to_bits())]));
        s.push((
            format!("{group} moments"),
            vec![adam.names().count() as u64],
        ));
    }
    s.extend(moments);
    let p = t.progress();
    let position = vec![p.epoch as u64, p.batch as u64, p.loss_sum.to_bits()];
    s.push(("position".into(), position));
    let rng = serde_json::to_string(&p.rng).unwrap();
    s.push(("rng".into(), rng.bytes().map(u64::from).collect()));
    for r in &p.records {
        let row = [r.train_loss, r.test_loss, r.test_accuracy].map(f64::to_bits);
        s.push((format!("record {}", r.epoch), row.to_vec()));
    }
    s
}

/// Asserts two snapshots are bit-identical, naming the first tensor that is not.
fn assert_same(a: &Snapshot, b: &Snapshot) {
    let names = |s: &Snapshot| s.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(a), names(b));
    for ((name, x), (_, y)) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len(), "{name}: lengths differ");
        if let Some(i) = x.iter().zip(y).position(|(p, q)| p != q) {
            panic!(
                "{name} differs first at element {i}: {:#x} vs {:#x}",
                x[i], y[i]
            );
        }
    }
}

/// Trains an epoch to its end (or to a pause) and records it in `log` when it completes.
fn epoch(
    t: &mut Trainer,
    log: &mut CsvLog,
    pause: &mut dyn FnMut(&fdfa::train::BatchEvent) -> ControlFlow<()>,
) {
    let (train, test) = mnist();
    if let Some(loss) = t.train_epoch(train, pause).unwrap() {
        let record = t.finish_epoch(loss, test).unwrap();
        log.append(&record).unwrap();
    }
}

fn go(_: &fdfa::train::BatchEvent) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

/// The uninterrupted run: its final state and its CSV log.
fn whole(setup: Setup, dir: &Path) -> (Snapshot, String) {
    let path = dir.join("whole.csv");
    let mut log = CsvLog::open(&path).unwrap();
    let mut t = setup.trainer();
    while !t.finished() {
        epoch(&mut t, &mut log, &mut go);
    }
    (snapshot(&mut t), fs::read_to_string(&path).unwrap())
}

/// The same run as a new process after every checkpoint: one epoch per process (each asked
/// for one more epoch), or, with `every`, a checkpoint every `every` batches and after every
/// epoch. Returns the final state, the CSV log and the number of processes.
fn in_pieces(setup: Setup, every: Option<usize>, dir: &Path) -> (Snapshot, String, usize) {
    let ckpt = dir.join("ckpt");
    let path = dir.join("pieces.csv");
    let run = RunInfo {
        log: Some(path.clone()),
        ..RunInfo::default()
    };
    let target = |done: usize| match every {
        Some(_) => setup.epochs,
        None => done + 1,
    };
    let mut t = setup.epochs(target(0)).trainer();
    let mut log = CsvLog::open(&path).unwrap();
    let mut processes = 1;
    loop {
        epoch(&mut t, &mut log, &mut |ev| match every {
            Some(n) if ev.batch % n == 0 && ev.batch < ev.batches => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        });
        save_trainer(&ckpt, &mut t, &run).unwrap();
        let done = t.progress().epoch;
        if done >= setup.epochs {
            break;
        }
        t = setup.epochs(target(done)).trainer();
        let saved = load_trainer(&ckpt, &mut t).unwrap();
        assert_eq!(saved, run);
        log = CsvLog::rewrite(&path, &t.progress().records).unwrap();
        processes += 1;
    }
    (
        snapshot(&mut t),
        fs::read_to_string(&path).unwrap(),
        processes,
    )
}
