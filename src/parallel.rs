//! All rayon plumbing in one place.
//!
//! Work is split into chunks whose boundaries depend only on the problem's shape, never on
//! the number of threads, and reductions add partial results in chunk order. Hence a
//! training step gives bit-identical results with 1 or 64 threads.

use std::cell::RefCell;

use rayon::prelude::*;

/// Below this many multiply-adds a kernel runs on the calling thread: rayon's hand-off costs
/// more than it saves.
pub(crate) const PAR_MIN_WORK: usize = 1 << 16;

/// Runs `f(chunk_index, chunk)` on consecutive chunks of `rows_per_chunk * row_len` values of
/// `data`, in parallel when `work` (an estimate of the multiply-adds) is large enough.
pub(crate) fn par_chunks_mut<T, F>(
    data: &mut [T],
    row_len: usize,
    rows_per_chunk: usize,
    work: usize,
    f: F,
) where
    T: Send,
    F: Fn(usize, &mut [T]) + Send + Sync,
{
    let size = (row_len * rows_per_chunk.max(1)).max(1);
    if work < PAR_MIN_WORK {
        data.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        data.par_chunks_mut(size)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    }
}

/// Runs `f` on a worker thread of the current rayon pool, or directly when the caller is
/// already one of its workers.
///
/// A parallel kernel called from outside the pool hands its work to the workers and puts the
/// caller to sleep until they are done: two context switches for every kernel, dozens per
/// training step, a cost that rivals a small network's arithmetic. The crate's
/// entry points (a rule's `step`, [`Model`](crate::model::Model)'s passes, the optimizers'
/// `step`) each enter the pool once through this function, so that the kernels inside fork
/// and join among workers that are already awake. A training loop of your own gets the same
/// by running inside it once:
///
/// ```
/// use fdfa::{Tensor, init, model::fc, optim::AdamConfig, rules::{Dfa, LearningRule}};
/// let mut rng = init::rng(0);
/// let mut model = fc(&[1, 2, 2], 1, 8, 3, &mut rng)?;
/// let mut rule = Dfa::new(&model, &mut rng);
/// let mut adam = AdamConfig::default().init()?;
/// let x = Tensor::from_vec(&[2, 1, 2, 2], vec![0.1, -0.4, 0.3, 0.9, -0.2, 0.5, 0.7, -0.8])?;
/// let losses = fdfa::parallel::run(|| -> fdfa::Result<Vec<f32>> {
///     (0..3)
///         .map(|_| {
///             let report = rule.step(&mut model, &x, &[0, 2], &mut rng)?;
///             adam.step(&mut model);
///             Ok(report.loss)
///         })
///         .collect()
/// })?;
/// assert_eq!(losses.len(), 3);
/// # Ok::<(), fdfa::Error>(())
/// ```
pub fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// The number of worker threads rayon uses.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Per-thread scratch buffers, kept from call to call so that a training step allocates
/// nothing once it has warmed up (rayon's workers live as long as the pool).
#[derive(Default)]
pub(crate) struct Scratch {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    /// Packing buffers for the products on this thread.
    pub pack: crate::kernels::packed::Packing,
    /// A sample's im2col matrix, packed as a product's right operand.
    pub cols: crate::kernels::packed::Prepacked,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch buffers (fresh ones if they are already in use
/// further up the stack).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// A buffer that a layer keeps for a result it computes whole, then adds to another, in a
/// method that takes `&self` (a parameter direction's JVP): kept from call to call, so that
/// a steady step allocates nothing for it. A clone starts empty.
#[derive(Default)]
pub(crate) struct KeptBuffer<T = crate::Tensor>(std::sync::Mutex<T>);

impl<T: Default> KeptBuffer<T> {
    /// Runs `f` with the buffer (a fresh one if another call holds it).
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        match self.0.try_lock() {
            Ok(mut t) => f(&mut t),
            Err(_) => f(&mut T::default()),
        }
    }
}

impl<T: Default> Clone for KeptBuffer<T> {
    fn clone(&self) -> Self {
        Self(Default::default())
    }
}

impl<T> std::fmt::Debug for KeptBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeptBuffer")
    }
}

/// The length to which [`reserve_scratch`] has grown every worker's scratch.
static RESERVED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Grows both scratch buffers of every worker of the current pool to hold `len` values, its
/// packing buffers to their most, and its packed operand to an `inner x len / inner` matrix,
/// the first time a kernel asks for that much. Which worker runs a task is up to rayon: without
/// this, a worker first handed a layer's largest sample many steps into training would
/// allocate its scratch then, and a steady step would not be free of allocations. A pool
/// created later with threads of its own grows theirs on first use instead.
pub(crate) fn reserve_scratch(len: usize, inner: usize) {
    use std::sync::atomic::Ordering;
    if len <= RESERVED.load(Ordering::Relaxed) {
        return;
    }
    rayon::broadcast(|_| {
        with_scratch(|s| {
            for v in [&mut s.a, &mut s.b] {
                v.reserve(len.saturating_sub(v.len()));
            }
            s.pack.reserve();
            // Either way round: the forward packs `[inner, len / inner]`, the backward its
            // transpose.
            let outer = len / inner.max(1);
            s.cols.reserve_b(inner, outer);
            s.cols.reserve_b(outer, inner);
        })
    });
    RESERVED.fetch_max(len, Ordering::Relaxed);
}

/// Runs `f(scratch, i, chunk)` over consecutive chunks of `chunk_len` values of `data`, with
/// the running thread's [`Scratch`].
pub(crate) fn par_chunks_scratch<T, F>(data: &mut [T], chunk_len: usize, work: usize, f: F)
where
    T: Send,
    F: Fn(&mut Scratch, usize, &mut [T]) + Send + Sync,
{
    let chunk_len = chunk_len.max(1);
    let run = |(i, c): (usize, &mut [T])| with_scratch(|s| f(s, i, c));
    if work < PAR_MIN_WORK {
        data.chunks_mut(chunk_len).enumerate().for_each(run);
    } else {
        data.par_chunks_mut(chunk_len).enumerate().for_each(run);
    }
}

/// Like [`par_chunks_scratch`] over two buffers split into the same number of chunks.
pub(crate) fn par_zip_chunks_scratch<A, B, F>(
    a: &mut [A],
    a_len: usize,
    b: &mut [B],
    b_len: usize,
    work: usize,
    f: F,
) where
    A: Send,
    B: Send,
    F: Fn(&mut Scratch, usize, &mut [A], &mut [B]) + Send + Sync,
{
    let (a_len, b_len) = (a_len.max(1), b_len.max(1));
    debug_assert_eq!(a.len().div_ceil(a_len), b.len().div_ceil(b_len));
    let run = |(i, (x, y)): (usize, (&mut [A], &mut [B]))| with_scratch(|s| f(s, i, x, y));
    if work < PAR_MIN_WORK {
        a.chunks_mut(a_len)
            .zip(b.chunks_mut(b_len))
            .enumerate()
            .for_each(run);
    } else {
        a.par_chunks_mut(a_len)
            .zip(b.par_chunks_mut(b_len))
            .enumerate()
            .for_each(run);
    }
}
