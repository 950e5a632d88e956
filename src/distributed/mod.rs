//! Training across processes, over any [`Communicator`] (MPI with the `mpi` feature, or
//! threads of one process): data-parallel with synchronised BatchNorm
//! ([`Trainer::set_distributed`](crate::train::Trainer::set_distributed)), described here,
//! and block-parallel ([`Trainer::set_block_parallel`](crate::train::Trainer::set_block_parallel)),
//! where consecutive blocks live on consecutive ranks and DFA, DKP and FDFA update every
//! block at once from the broadcast error.
//!
//! Every rank holds the whole model and trains on its share of each global batch
//! ([`Shard::of`]): a contiguous slice of the batch the single-process trainer would draw.
//! The rank computes its gradients as the rule defines them for its slice, and the trainer
//! combines them with the weights `m_r / N` (its samples over the batch's), which is the
//! gradient of the global batch's mean loss: the same algorithm as one process, whatever the
//! rule, including FDFA's and DKP's feedback gradients. What couples samples is shared
//! explicitly:
//!
//! - **BatchNorm** ([`BatchNormSync::Synchronized`], the default): the batch mean and
//!   variance, the JVP's batch means (FDFA) and the backward pass's sums are summed over
//!   ranks, so the layer normalises over the global batch. [`BatchNormSync::PerRank`] is what
//!   PyTorch's `DistributedDataParallel` does by default, a different algorithm: each rank
//!   normalises over its own slice, and rank 0's running statistics are the ones kept.
//! - **Random directions** (FDFA, FG-A): each rank draws exactly its rows of the directions
//!   the single process would draw for the whole batch.
//! - **Augmentation** follows each sample's position in the whole batch
//!   ([`DataSource::fill_batch_at`](crate::data::DataSource::fill_batch_at)).
//!
//! Every sum over ranks runs in f64 in rank order and gives every rank the same bits, so all
//! ranks keep identical weights, a run is bit-identical from run to run for a given number of
//! ranks, and it matches the single process up to the order of f32 summation.
//!
//! ```
//! use fdfa::distributed::{Communicator, ThreadGroup};
//!
//! // Three ranks as threads of this process, one worker thread each; each adds `rank + 1`,
//! // weighted.
//! let sums = ThreadGroup::run(3, 1, |comm| {
//!     let mut v = [comm.rank() as f32 + 1.0];
//!     comm.sum_f32(&mut v, &[0.5, 0.25, 0.25]).map(|()| v[0])
//! })?;
//! let sums: Vec<f32> = sums.into_iter().collect::<fdfa::Result<_>>()?;
//! assert_eq!(sums, vec![0.5 + 0.5 + 0.75; 3]);
//! # Ok::<(), fdfa::Error>(())
//! ```

mod local;
#[cfg(feature = "mpi")]
mod mpi;

pub use local::ThreadGroup;
#[cfg(feature = "mpi")]
pub use mpi::MpiCommunicator;

use std::fmt::Debug;
use std::sync::Arc;

use crate::error::{Error, Result};

/// A group of ranks that can sum buffers and pass them along.
///
/// Implementations must give every rank the same bits: `out[j] = sum_r weights[r] *
/// values_r[j]`, accumulated in f64 from rank 0 upward (starting from `0.0`), then rounded
/// once to the buffer's type. [`reduce_in_rank_order`] is that arithmetic, for an
/// implementation to call on the values it gathered.
pub trait Communicator: Send + Sync + Debug {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn size(&self) -> usize;

    /// Replaces `values` on every rank by the weighted sum over ranks (see the trait's
    /// documentation); `weights` has one entry per rank, the same on every rank.
    ///
    /// # Errors
    /// [`Error::Distributed`] when the transport fails or ranks pass buffers of different
    /// lengths (where the transport can tell).
    fn sum_f64(&self, values: &mut [f64], weights: &[f64]) -> Result<()>;

    /// [`sum_f64`](Self::sum_f64) with a weight of 1 for every rank: the plain sum.
    ///
    /// # Errors
    /// As [`sum_f64`](Self::sum_f64).
    fn add_f64(&self, values: &mut [f64]) -> Result<()> {
        self.sum_f64(values, &vec![1.0; self.size()])
    }

    /// As [`sum_f64`](Self::sum_f64) for f32 buffers, accumulated in f64.
    ///
    /// # Errors
    /// As [`sum_f64`](Self::sum_f64).
    fn sum_f32(&self, values: &mut [f32], weights: &[f64]) -> Result<()>;

    /// As [`sum_f32`](Self::sum_f32) on a buffer the caller hands over and gets back, which
    /// spares a transport that must move the data elsewhere (MPI's service thread) a copy
    /// each way.
    ///
    /// # Errors
    /// As [`sum_f64`](Self::sum_f64).
    fn sum_f32_owned(&self, mut values: Vec<f32>, weights: &[f64]) -> Result<Vec<f32>> {
        self.sum_f32(&mut values, weights)?;
        Ok(values)
    }

    /// Replaces `values` on every rank by rank `root`'s.
    ///
    /// # Errors
    /// As [`sum_f64`](Self::sum_f64).
    fn broadcast_f32(&self, root: usize, values: &mut [f32]) -> Result<()>;

    /// Sends `values` to rank `to` (blocking until the receiver may reuse its buffer).
    ///
    /// # Errors
    /// [`Error::Distributed`] when the transport fails.
    fn send_f32(&self, to: usize, values: &[f32]) -> Result<()>;

    /// Receives exactly `values.len()` values from rank `from`.
    ///
    /// # Errors
    /// [`Error::Distributed`] when the transport fails or the message has another length.
    fn receive_f32(&self, from: usize, values: &mut [f32]) -> Result<()>;
}

/// Element `j` of the weighted sum of `gathered` (one slice per rank, in rank order), in f64
/// from rank 0 upward: the arithmetic every [`Communicator`] uses.
#[inline]
pub fn reduce_in_rank_order<T: Copy + Into<f64>>(
    gathered: &[&[T]],
    weights: &[f64],
    j: usize,
) -> f64 {
    let mut acc = 0.0f64;
    for (values, &w) in gathered.iter().zip(weights) {
        acc += w * values[j].into();
    }
    acc
}

/// One rank's share of a global batch: rows `offset..offset + len` of `total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// The first global row of this rank.
    pub offset: usize,
    /// Rows on this rank.
    pub len: usize,
    /// Rows in the global batch.
    pub total: usize,
}

impl Shard {
    /// The contiguous split of `total` rows over `size` ranks that the trainer uses: rank `r`
    /// takes rows `total * r / size` up to `total * (r + 1) / size`, so shares differ by one
    /// row at most.
    ///
    /// ```
    /// use fdfa::distributed::Shard;
    /// let shares: Vec<usize> = (0..3).map(|r| Shard::of(64, r, 3).len).collect();
    /// assert_eq!(shares, [21, 21, 22]);
    /// assert_eq!(Shard::of(64, 2, 3).offset, 42);
    /// ```
    pub fn of(total: usize, rank: usize, size: usize) -> Self {
        let size = size.max(1);
        let start = total * rank / size;
        let end = total * (rank + 1) / size;
        Self {
            offset: start,
            len: end - start,
            total,
        }
    }

    /// The whole batch on one process.
    pub fn whole(total: usize) -> Self {
        Self {
            offset: 0,
            len: total,
            total,
        }
    }

    /// Every rank's weight `m_r / N` in the global mean, for `size` ranks.
    pub fn weights(total: usize, size: usize) -> Vec<f64> {
        (0..size)
            .map(|r| Self::of(total, r, size).len as f64 / total.max(1) as f64)
            .collect()
    }
}

/// How BatchNorm layers behave when a batch is split over ranks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BatchNormSync {
    /// Statistics, JVP means and backward sums over the global batch: the single-process
    /// algorithm.
    #[default]
    Synchronized,
    /// Each rank normalises over its own slice (PyTorch DDP's default); the running
    /// statistics kept are rank 0's. A different algorithm from the single process.
    PerRank,
}

impl std::str::FromStr for BatchNormSync {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "sync" | "synchronized" => Ok(Self::Synchronized),
            "per-rank" | "local" => Ok(Self::PerRank),
            _ => Err(Error::config(
                "distributed",
                "batch_norm",
                format!("`{s}` is not one of sync, per-rank"),
            )),
        }
    }
}

/// What a model needs to know while it trains on one rank's share of a batch: the group,
/// the share, and how BatchNorm behaves. The trainer sets it around each step
/// ([`Model::set_batch_group`](crate::model::Model::set_batch_group)).
#[derive(Clone, Debug)]
pub struct BatchGroup {
    comm: Arc<dyn Communicator>,
    shard: Shard,
    batch_norm: BatchNormSync,
    weights: Arc<[f64]>,
}

impl BatchGroup {
    /// The share `shard` of a batch split over `comm`'s ranks.
    pub fn new(comm: Arc<dyn Communicator>, shard: Shard, batch_norm: BatchNormSync) -> Self {
        Self {
            weights: Shard::weights(shard.total, comm.size()).into(),
            comm,
            shard,
            batch_norm,
        }
    }

    /// The ranks.
    pub fn comm(&self) -> &dyn Communicator {
        self.comm.as_ref()
    }

    /// This rank's rows of the batch.
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// How BatchNorm layers share statistics.
    pub fn batch_norm(&self) -> BatchNormSync {
        self.batch_norm
    }

    /// Every rank's weight `m_r / N`.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Sums `values` over the ranks (weight 1 each).
    ///
    /// # Errors
    /// As [`Communicator::sum_f64`].
    pub fn sum(&self, values: &mut [f64]) -> Result<()> {
        self.comm.add_f64(values)
    }

    /// This rank's weight `m_r / N`.
    pub fn weight(&self) -> f64 {
        self.shard.len as f64 / self.shard.total.max(1) as f64
    }
}

/// Checks that every rank holds the same `fingerprint` (a hash of what must agree: the
/// configuration, the architecture, the initial state), naming the first rank that differs.
///
/// # Errors
/// [`Error::Distributed`] when a rank differs, or as the transport fails.
pub fn check_agreement(comm: &dyn Communicator, what: &str, fingerprint: u64) -> Result<()> {
    let size = comm.size();
    // Each rank writes its halves into its own slots and zeros elsewhere: the sum carries
    // every rank's value exactly (32-bit integers are exact in f64).
    let mut slots = vec![0.0f64; 2 * size];
    let r = comm.rank();
    slots[2 * r] = (fingerprint >> 32) as f64;
    slots[2 * r + 1] = (fingerprint & 0xffff_ffff) as f64;
    comm.add_f64(&mut slots)?;
    let value = |k: usize| ((slots[2 * k] as u64) << 32) | slots[2 * k + 1] as u64;
    if let Some(k) = (0..size).find(|&k| value(k) != value(0)) {
        return Err(Error::Distributed {
            rank: r,
            reason: format!("rank {k} disagrees with rank 0 on {what}"),
        });
    }
    Ok(())
}

/// A 64-bit FNV-1a hash, for [`check_agreement`]'s fingerprints (stable across processes and
/// platforms, unlike `std`'s hasher).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_in_order() {
        for total in [1usize, 2, 7, 64, 65] {
            for size in 1..=5 {
                let mut next = 0;
                for r in 0..size {
                    let s = Shard::of(total, r, size);
                    assert_eq!(s.offset, next);
                    next += s.len;
                }
                assert_eq!(next, total);
                let w: f64 = Shard::weights(total, size).iter().sum();
                assert!((w - 1.0).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn fingerprints_differ_for_different_bytes() {
        assert_ne!(fingerprint(b"fc2"), fingerprint(b"cnn"));
        assert_eq!(fingerprint(b""), 0xcbf2_9ce4_8422_2325);
    }
}
