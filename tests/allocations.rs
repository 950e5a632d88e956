//! After warm-up, a training step allocates the same bytes whatever its batch, and few: every
//! batch-sized buffer (activations, tangents, gradients, directions, scratch, the
//! convolutions' packed operands) is reused, for FC-2 and the CNN under every rule and
//! AlexNet under BP and FDFA.
//!
//! A counting allocator records every allocation during steady-state steps at two batch
//! sizes, one 1.5 times the other, and splits the bytes in two:
//!
//! - **sgemm's packing buffers.** `matrixmultiply::sgemm` allocates one packing buffer on
//!   every call, aligned to its kernel's vector width (16 bytes or more), and frees it before
//!   returning; it takes no buffer from its caller. Each is at most `(mc + nc) * kc` floats
//!   ([`SGEMM_PACKING_CAP`]). The dense layers' products are a fixed number of calls per step
//!   at the batch sizes here (every dimension that depends on the batch is past sgemm's block
//!   size), so their packing bytes are the same at both batches. The convolutions multiply
//!   one sample at a time through the crate's own product, whose packing buffers are kept
//!   per thread, so they add nothing here.
//! - **Everything else** (the crate's own buffers, rayon's bookkeeping): at most
//!   [`OTHER_CAP`] bytes per step at both batch sizes, less than any buffer a step holds per
//!   batch, so that none of them can hide in it.
//!
//! So the bytes a step allocates are bounded by a constant that does not depend on its batch:
//! at most [`MAX_SGEMM_CALLS`] packing buffers of at most [`SGEMM_PACKING_CAP`], the same
//! number or fewer at the larger batch (exactly the same bytes for FC-2 and the CNN, whose
//! batches here are past sgemm's blocking), and [`OTHER_CAP`].
//!
//! Batches of 256 and 384 for FC-2 and the CNN, so that the packing buffers reach their full
//! `kc = 256` depth at both; 64 and 96 for AlexNet, past sgemm's 64-row block (below it, the
//! packing buffer of a product with one row per sample shrinks with the batch), with one
//! measured step, since its steps are long.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use fdfa::model::Model;
use fdfa::optim::{AdamConfig, Parameters};
use fdfa::rules::{Learned, RuleKind};
use fdfa::{Tensor, init};

struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static PACKING: AtomicUsize = AtomicUsize::new(0);
static PACKING_CALLS: AtomicUsize = AtomicUsize::new(0);
static OTHER: AtomicUsize = AtomicUsize::new(0);

/// The smallest alignment sgemm asks of its packing buffers (16 bytes for 128-bit kernels,
/// 32 or 64 for AVX and AVX-512); the crate's own buffers are `Vec`s of at most 8-byte
/// values.
const PACKING_ALIGN: usize = 16;

fn count(layout: Layout, size: usize) {
    if ON.load(Ordering::Relaxed) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
        let bucket = if layout.align() >= PACKING_ALIGN {
            PACKING_CALLS.fetch_add(1, Ordering::Relaxed);
            &PACKING
        } else {
            &OTHER
        };
        bucket.fetch_add(size, Ordering::Relaxed);
    }
}

// SAFETY: defers every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout, layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout, new_size);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What steady-state training steps allocate.
#[derive(Clone, Copy, Debug)]
struct PerStep {
    /// The largest single allocation.
    largest: usize,
    /// Bytes of sgemm packing buffers per step.
    packing: usize,
    /// sgemm packing buffers per step.
    packing_calls: usize,
    /// All other bytes per step.
    other: usize,
}

fn measure(
    build: &dyn Fn(&mut init::Rng) -> Model,
    kind: RuleKind,
    batch: usize,
    steps: usize,
) -> PerStep {
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
    // Warm-up: the first step grows every buffer; the following ones may still grow the
    // per-thread scratch of a worker that rayon hands a layer's largest sample for the first
    // time. Warm-up ends at the first step after that which allocates at most `OTHER_CAP`
    // bytes besides sgemm's packing; every measured step after it must do the same.
    step(&mut model, &mut rng);
    for _ in 0..MAX_WARM_UP {
        OTHER.store(0, Ordering::Relaxed);
        ON.store(true, Ordering::Relaxed);
        step(&mut model, &mut rng);
        ON.store(false, Ordering::Relaxed);
        if OTHER.load(Ordering::Relaxed) <= OTHER_CAP {
            break;
        }
    }
    LARGEST.store(0, Ordering::Relaxed);
    PACKING.store(0, Ordering::Relaxed);
    PACKING_CALLS.store(0, Ordering::Relaxed);
    OTHER.store(0, Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
    for _ in 0..steps {
        step(&mut model, &mut rng);
    }
    ON.store(false, Ordering::Relaxed);
    PerStep {
        largest: LARGEST.load(Ordering::Relaxed),
        packing: PACKING.load(Ordering::Relaxed) / steps,
        packing_calls: PACKING_CALLS.load(Ordering::Relaxed) / steps,
        other: OTHER.load(Ordering::Relaxed) / steps,
    }
}

/// `exact`: both batches are past sgemm's blocking in every product (every split block of
/// rows at least 64), so that even the packing bytes are the same.
fn check(
    name: &str,
    build: &dyn Fn(&mut init::Rng) -> Model,
    exact: bool,
    rules: &[RuleKind],
    small: usize,
    steps: usize,
) {
    let large = small * 3 / 2;
    for &kind in rules {
        let s = measure(build, kind, small, steps);
        let l = measure(build, kind, large, steps);
        eprintln!(
            "{name} {kind}, batch {small} -> {large}: per step {} -> {} B of sgemm packing in \
             {} -> {} buffers, {} -> {} B else; largest allocation {} -> {} B",
            s.packing,
            l.packing,
            s.packing_calls,
            l.packing_calls,
            s.other,
            l.other,
            s.largest,
            l.largest
        );
        for (batch, m) in [(small, s), (large, l)] {
            assert!(
                m.other <= OTHER_CAP,
                "{name} {kind}, batch {batch}: {} bytes per step besides sgemm's packing",
                m.other
            );
            assert!(
                m.largest <= SGEMM_PACKING_CAP,
                "{name} {kind}, batch {batch}: an allocation of {} bytes, larger than \
                 sgemm's packing buffer",
                m.largest
            );
        }
        // The dense products are a fixed number of sgemm calls per step, split over the
        // threads into blocks of at least 16 rows: at a larger batch the same number or fewer.
        assert!(
            l.packing_calls <= s.packing_calls && s.packing_calls <= MAX_SGEMM_CALLS,
            "{name} {kind}: {} -> {} sgemm packing buffers per step",
            s.packing_calls,
            l.packing_calls
        );
        if exact {
            assert_eq!(
                s.packing, l.packing,
                "{name} {kind}: sgemm's packing bytes per step changed with the batch"
            );
        }
    }
}

/// The largest buffer matrixmultiply's sgemm allocates for packing, whatever the shapes:
/// `(mc + nc) * kc` floats with `mc = 64`, `nc = 1024`, `kc = 256`, plus alignment slack.
const SGEMM_PACKING_CAP: usize = (64 + 1024) * 256 * 4 + 4096;

/// Bytes per step allowed besides sgemm's packing. A step allocates a few hundred of them;
/// rayon's work-stealing deques also grow or shrink their job buffers (2 KiB) now and then,
/// as the scheduling happens to go. 4 KiB is less than the smallest buffer a step holds per
/// batch in FC-2 and the CNN, the logits at 384 samples (15 KiB), and than one sample's
/// smallest activation in AlexNet (256 * 6 * 6 floats, 36 KiB); the loss and the rules run
/// the same code for all three networks.
const OTHER_CAP: usize = 4096;

/// sgemm calls a step may make: the dense layers' products (forward, input and weight
/// gradients, and the rules' feedback products: AlexNet under FDFA, with a feedback point
/// after each of its seven blocks, makes 92), each split into a few blocks per thread. With
/// [`SGEMM_PACKING_CAP`] per call, this bounds a step's packing bytes by a constant.
const MAX_SGEMM_CALLS: usize = 128;

/// Steps after the first one that may still grow a worker's scratch.
const MAX_WARM_UP: usize = 6;

/// One test, so that nothing else allocates while the counters run.
#[test]
#[cfg_attr(debug_assertions, ignore = "large batches: run with --release")]
fn training_steps_reuse_their_buffers() {
    check(
        "FC-2",
        &|rng| fdfa::model::fc(&[1, 28, 28], 2, 256, 10, rng).unwrap(),
        true,
        &RuleKind::ALL,
        256,
        3,
    );
    check(
        "CNN",
        &|rng| fdfa::model::shallow_cnn(&[1, 28, 28], 10, rng).unwrap(),
        true,
        &RuleKind::ALL,
        256,
        3,
    );
    check(
        "AlexNet",
        &|rng| fdfa::model::alexnet_bn(100, rng).unwrap(),
        false,
        // The CNN already runs every rule through each layer kind; AlexNet adds the shapes
        // (strides, padding, pooling to a fixed size), which backward (BP) and the dual
        // forward (FDFA) cover, at a fraction of the time of all six rules.
        &[RuleKind::Bp, RuleKind::Fdfa],
        64,
        1,
    );
}
