//! After warm-up, a training step allocates nothing whose size grows with the batch: every
//! batch-sized buffer (activations, tangents, gradients, directions, scratch) is reused.
//!
//! A counting allocator records the largest single allocation during steady-state steps at
//! batches of 256 and 384 (the sgemm packing buffers grow with the inner dimension up to a
//! fixed panel, kc = 256, which smaller batches would not yet reach). The largest allocation
//! must not grow with the batch and must stay below the size of the batch's input: what is
//! left is per-call packing inside matrixmultiply and small bookkeeping, never a
//! batch-sized buffer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use fdfa::model::Model;
use fdfa::optim::{AdamConfig, Parameters};
use fdfa::rules::{Learned, RuleKind};
use fdfa::{Tensor, init};

struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static TOTAL: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ON.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
            TOTAL.fetch_add(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ON.load(Ordering::Relaxed) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
            TOTAL.fetch_add(new_size, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// (largest allocation, bytes allocated per step) over steady-state training steps.
fn measure(
    build: &dyn Fn(&mut init::Rng) -> Model,
    kind: RuleKind,
    batch: usize,
) -> (usize, usize) {
    let mut rng = init::rng(1);
    let mut model = build(&mut rng);
    let mut rule = kind.build(&model, 1, &mut rng).unwrap();
    let mut shape = vec![batch];
    shape.extend_from_slice(model.input_shape());
    let mut x = Tensor::zeros(&shape);
    init::fill_normal(x.data_mut(), &mut rng);
    let targets: Vec<usize> = (0..batch).map(|i| i % model.classes()).collect();
    let mut fwd = AdamConfig::default().init().unwrap();
    let mut fb = AdamConfig::default().init().unwrap();
    let mut step = |model: &mut Model, rng: &mut init::Rng| {
        rule.step(model, &x, &targets, rng).unwrap();
        let _ = fb.step(&mut Learned(rule.as_mut()));
        let _ = fwd.step(model as &mut dyn Parameters);
    };
    for _ in 0..3 {
        step(&mut model, &mut rng);
    }
    LARGEST.store(0, Ordering::Relaxed);
    TOTAL.store(0, Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
    let steps = 3;
    for _ in 0..steps {
        step(&mut model, &mut rng);
    }
    ON.store(false, Ordering::Relaxed);
    (
        LARGEST.load(Ordering::Relaxed),
        TOTAL.load(Ordering::Relaxed) / steps,
    )
}

fn check(name: &str, build: &dyn Fn(&mut init::Rng) -> Model, input_floats: usize) {
    for kind in [RuleKind::Bp, RuleKind::Dfa, RuleKind::Dkp, RuleKind::Fdfa] {
        let (largest_small, per_step_small) = measure(build, kind, 256);
        let (largest_large, per_step_large) = measure(build, kind, 384);
        eprintln!(
            "{name} {kind}: largest allocation {largest_small} -> {largest_large} B, \
             {per_step_small} -> {per_step_large} B allocated per step"
        );
        assert!(
            largest_large <= largest_small,
            "{name} {kind}: the largest allocation grew from {largest_small} to {largest_large} bytes with the batch"
        );
        assert!(
            largest_large <= SGEMM_PACKING_CAP,
            "{name} {kind}: an allocation of {largest_large} bytes, larger than sgemm's packing buffer"
        );
        let input_bytes = 384 * input_floats * 4;
        assert!(
            largest_large < input_bytes,
            "{name} {kind}: {largest_large} bytes is a batch-sized allocation"
        );
    }
}

/// The largest buffer matrixmultiply's sgemm allocates for packing, whatever the shapes:
/// `(mc + nc) * kc` floats with `mc = 64`, `nc = 1024`, `kc = 256`, plus alignment slack.
const SGEMM_PACKING_CAP: usize = (64 + 1024) * 256 * 4 + 4096;

/// One test, so that nothing else allocates while the counters run.
#[test]
#[cfg_attr(debug_assertions, ignore = "large batches: run with --release")]
fn training_steps_reuse_their_buffers() {
    check(
        "FC-2",
        &|rng| fdfa::model::fc(&[1, 28, 28], 2, 256, 10, rng).unwrap(),
        784,
    );
    check(
        "CNN",
        &|rng| fdfa::model::shallow_cnn(&[1, 28, 28], 10, rng).unwrap(),
        784,
    );
}
