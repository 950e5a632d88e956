//! After warm-up, a training step allocates nothing of its own whose size grows with the
//! batch: every batch-sized buffer (activations, tangents, gradients, directions, scratch) is
//! reused, for FC-2 and the CNN under every rule and AlexNet under BP and FDFA.
//!
//! A counting allocator records every allocation during steady-state steps at two batch
//! sizes, one 1.5 times the other, and splits the bytes in two:
//!
//! - **sgemm's packing buffers.** `matrixmultiply::sgemm` allocates one packing buffer on
//!   every call, aligned to its kernel's vector width (16 bytes or more), and frees it before
//!   returning; it takes no buffer from its caller. Each is at most `(mc + nc) * kc` floats
//!   ([`SGEMM_PACKING_CAP`]). A dense network's products are a fixed number of calls per
//!   step, so its packing bytes are the same at every batch; a convolution multiplies one
//!   sample at a time (so that a sample's bits do not depend on which others share its
//!   batch), so its packing bytes per step grow in proportion to the batch, and this test
//!   holds them to at most a constant per sample.
//! - **Everything else** (the crate's own buffers, rayon's bookkeeping): at most
//!   [`OTHER_CAP`] bytes per step at both batch sizes, less than any buffer a step holds per
//!   batch, so that none of them can hide in it.
//!
//! Batches of 256 and 384 for FC-2 and the CNN, so that the packing buffers reach their full
//! `kc = 256` depth at both; 2 and 3 for AlexNet, whose steps are long, with one measured step.

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
static OTHER: AtomicUsize = AtomicUsize::new(0);

/// The smallest alignment sgemm asks of its packing buffers (16 bytes for 128-bit kernels,
/// 32 or 64 for AVX and AVX-512); the crate's own buffers are `Vec`s of at most 8-byte
/// values.
const PACKING_ALIGN: usize = 16;

fn count(layout: Layout, size: usize) {
    if ON.load(Ordering::Relaxed) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
        let bucket = if layout.align() >= PACKING_ALIGN {
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
    OTHER.store(0, Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
    for _ in 0..steps {
        step(&mut model, &mut rng);
    }
    ON.store(false, Ordering::Relaxed);
    PerStep {
        largest: LARGEST.load(Ordering::Relaxed),
        packing: PACKING.load(Ordering::Relaxed) / steps,
        other: OTHER.load(Ordering::Relaxed) / steps,
    }
}

/// Whether the network multiplies one sample at a time (a convolution), so that its
/// packing bytes follow the batch.
#[derive(Clone, Copy, PartialEq)]
enum Products {
    Dense,
    PerSample,
}

fn check(
    name: &str,
    build: &dyn Fn(&mut init::Rng) -> Model,
    products: Products,
    rules: &[RuleKind],
    small: usize,
    steps: usize,
) {
    let large = small * 3 / 2;
    for &kind in rules {
        let s = measure(build, kind, small, steps);
        let l = measure(build, kind, large, steps);
        eprintln!(
            "{name} {kind}, batch {small} -> {large}: per step {} -> {} B of sgemm packing, \
             {} -> {} B else; largest allocation {} -> {} B",
            s.packing, l.packing, s.other, l.other, s.largest, l.largest
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
        match products {
            Products::Dense => assert_eq!(
                s.packing, l.packing,
                "{name} {kind}: sgemm's packing bytes per step changed with the batch"
            ),
            // At most as much per sample at the larger batch as at the smaller one.
            Products::PerSample => assert!(
                l.packing * small <= s.packing * large,
                "{name} {kind}: sgemm's packing bytes grew from {} to {} per step, faster \
                 than the batch",
                s.packing,
                l.packing
            ),
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

/// Steps after the first one that may still grow a worker's scratch.
const MAX_WARM_UP: usize = 6;

/// One test, so that nothing else allocates while the counters run.
#[test]
#[cfg_attr(debug_assertions, ignore = "large batches: run with --release")]
fn training_steps_reuse_their_buffers() {
    check(
        "FC-2",
        &|rng| fdfa::model::fc(&[1, 28, 28], 2, 256, 10, rng).unwrap(),
        Products::Dense,
        &RuleKind::ALL,
        256,
        3,
    );
    check(
        "CNN",
        &|rng| fdfa::model::shallow_cnn(&[1, 28, 28], 10, rng).unwrap(),
        Products::PerSample,
        &RuleKind::ALL,
        256,
        3,
    );
    check(
        "AlexNet",
        &|rng| fdfa::model::alexnet_bn(100, rng).unwrap(),
        // The CNN already runs every rule through each layer kind; AlexNet adds the shapes
        // (strides, padding, pooling to a fixed size), which backward (BP) and the dual
        // forward (FDFA) cover, at a fraction of the time of all six rules.
        Products::PerSample,
        &[RuleKind::Bp, RuleKind::Fdfa],
        2,
        1,
    );
}
