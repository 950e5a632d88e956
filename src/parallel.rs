//! All rayon plumbing in one place.
//!
//! Work is split into chunks whose boundaries depend only on the problem's shape, never on
//! the number of threads, and reductions add partial results in chunk order. Hence a
//! training step gives bit-identical results with 1 or 64 threads.

use rayon::prelude::*;

/// Below this many multiply-adds a kernel runs on the calling thread: rayon's hand-off costs
/// more than it saves.
pub(crate) const PAR_MIN_WORK: usize = 1 << 16;

/// Runs `f(chunk_index, chunk)` on consecutive chunks of `rows_per_chunk * row_len` values of
/// `data`, in parallel when `work` (an estimate of the multiply-adds) is large enough.
pub(crate) fn par_chunks_mut<F>(
    data: &mut [f32],
    row_len: usize,
    rows_per_chunk: usize,
    work: usize,
    f: F,
) where
    F: Fn(usize, &mut [f32]) + Send + Sync,
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

/// The number of worker threads rayon uses.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Runs `f(scratch, i, chunk)` over consecutive chunks of `chunk_len` values of `data`, each
/// worker with a scratch value made by `init` (reused across the chunks it runs).
pub(crate) fn par_chunks_init<S, I, F>(
    data: &mut [f32],
    chunk_len: usize,
    work: usize,
    init: I,
    f: F,
) where
    I: Fn() -> S + Send + Sync,
    F: Fn(&mut S, usize, &mut [f32]) + Send + Sync,
{
    let chunk_len = chunk_len.max(1);
    if work < PAR_MIN_WORK {
        let mut s = init();
        data.chunks_mut(chunk_len)
            .enumerate()
            .for_each(|(i, c)| f(&mut s, i, c));
    } else {
        data.par_chunks_mut(chunk_len)
            .enumerate()
            .for_each_init(init, |s, (i, c)| f(s, i, c));
    }
}

/// Like [`par_chunks_init`] over two buffers split into the same number of chunks.
pub(crate) fn par_zip_chunks_init<S, I, F>(
    a: &mut [f32],
    a_len: usize,
    b: &mut [f32],
    b_len: usize,
    work: usize,
    init: I,
    f: F,
) where
    I: Fn() -> S + Send + Sync,
    F: Fn(&mut S, usize, &mut [f32], &mut [f32]) + Send + Sync,
{
    let (a_len, b_len) = (a_len.max(1), b_len.max(1));
    debug_assert_eq!(a.len().div_ceil(a_len), b.len().div_ceil(b_len));
    if work < PAR_MIN_WORK {
        let mut s = init();
        a.chunks_mut(a_len)
            .zip(b.chunks_mut(b_len))
            .enumerate()
            .for_each(|(i, (x, y))| f(&mut s, i, x, y));
    } else {
        a.par_chunks_mut(a_len)
            .zip(b.par_chunks_mut(b_len))
            .enumerate()
            .for_each_init(init, |s, (i, (x, y))| f(s, i, x, y));
    }
}
