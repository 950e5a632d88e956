//! Ranks as threads of one process: the same arithmetic as MPI without MPI, for tests, for
//! trying a distributed configuration on one machine, and as the reference the MPI
//! transport is checked against.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Barrier, Mutex};

use super::{Communicator, reduce_in_rank_order};
use crate::error::{Error, Result};

#[derive(Debug)]
struct Shared {
    size: usize,
    barrier: Barrier,
    slots: Mutex<Vec<Vec<f64>>>,
    /// `links[from * size + to]`.
    senders: Vec<Mutex<Sender<Vec<f32>>>>,
    receivers: Vec<Mutex<Receiver<Vec<f32>>>>,
}

/// One rank of a group of threads ([`ThreadGroup::new`] makes every rank's handle; give each
/// to its own thread).
#[derive(Clone, Debug)]
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

impl ThreadGroup {
    /// The handles of `size` ranks, rank 0 first.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `size` is zero.
    pub fn new(size: usize) -> Result<Vec<ThreadGroup>> {
        if size == 0 {
            return Err(Error::config("ThreadGroup", "size", "must be at least 1"));
        }
        let (mut senders, mut receivers) = (Vec::new(), Vec::new());
        for _ in 0..size * size {
            let (s, r) = channel();
            senders.push(Mutex::new(s));
            receivers.push(Mutex::new(r));
        }
        let shared = Arc::new(Shared {
            size,
            barrier: Barrier::new(size),
            slots: Mutex::new(vec![Vec::new(); size]),
            senders,
            receivers,
        });
        Ok((0..size)
            .map(|rank| ThreadGroup {
                rank,
                shared: shared.clone(),
            })
            .collect())
    }

    /// Runs `f` on `size` ranks, each a thread of its own with a rayon pool of
    /// `threads_per_rank` workers; returns every rank's result, rank 0 first.
    ///
    /// Each rank needs its own pool: a rank waiting for the others inside a sum holds a worker
    /// thread, and ranks sharing one pool could all be waiting on workers that the waiting
    /// ranks hold.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `size` or `threads_per_rank` is zero;
    /// [`Error::Distributed`] when a pool cannot be built or a rank panics.
    pub fn run<T: Send>(
        size: usize,
        threads_per_rank: usize,
        f: impl Fn(ThreadGroup) -> T + Sync,
    ) -> Result<Vec<T>> {
        if threads_per_rank == 0 {
            return Err(Error::config(
                "ThreadGroup",
                "threads_per_rank",
                "must be at least 1",
            ));
        }
        let ranks = Self::new(size)?;
        std::thread::scope(|s| {
            let f = &f;
            let handles: Vec<_> = ranks
                .into_iter()
                .map(|comm| {
                    s.spawn(move || {
                        let rank = comm.rank;
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(threads_per_rank)
                            .build()
                            .map_err(|e| Error::Distributed {
                                rank,
                                reason: format!("cannot build the rank's thread pool: {e}"),
                            })?;
                        Ok(pool.install(|| f(comm)))
                    })
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .map(|(rank, h)| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::Distributed {
                            rank,
                            reason: "the rank panicked".into(),
                        })
                    })
                })
                .collect()
        })
    }

    fn failed(&self, reason: impl Into<String>) -> Error {
        Error::Distributed {
            rank: self.rank,
            reason: reason.into(),
        }
    }

    /// Publishes `mine`, waits for every rank, runs `read` on all slots, and waits again so
    /// that no rank overwrites its slot while another still reads it.
    fn exchange<R>(&self, mine: Vec<f64>, read: impl FnOnce(&[Vec<f64>]) -> R) -> Result<R> {
        let lock = || {
            self.shared
                .slots
                .lock()
                .map_err(|_| self.failed("another rank panicked"))
        };
        lock()?[self.rank] = mine;
        self.shared.barrier.wait();
        let out = read(&lock()?);
        self.shared.barrier.wait();
        Ok(out)
    }

    fn sum(&self, mine: Vec<f64>, weights: &[f64], out: &mut dyn FnMut(usize, f64)) -> Result<()> {
        if weights.len() != self.shared.size {
            return Err(self.failed(format!(
                "{} weights for {} ranks",
                weights.len(),
                self.shared.size
            )));
        }
        let n = mine.len();
        self.exchange(mine, |slots| {
            if slots.iter().any(|s| s.len() != n) {
                let lens: Vec<usize> = slots.iter().map(Vec::len).collect();
                return Err(self.failed(format!("ranks sum buffers of lengths {lens:?}")));
            }
            let views: Vec<&[f64]> = slots.iter().map(Vec::as_slice).collect();
            for j in 0..n {
                out(j, reduce_in_rank_order(&views, weights, j));
            }
            Ok(())
        })?
    }
}

impl Communicator for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn sum_f64(&self, values: &mut [f64], weights: &[f64]) -> Result<()> {
        self.sum(values.to_vec(), weights, &mut |j, v| values[j] = v)
    }

    fn sum_f32(&self, values: &mut [f32], weights: &[f64]) -> Result<()> {
        let mine = values.iter().map(|&v| v as f64).collect();
        self.sum(mine, weights, &mut |j, v| values[j] = v as f32)
    }

    fn broadcast_f32(&self, root: usize, values: &mut [f32]) -> Result<()> {
        if root >= self.shared.size {
            return Err(self.failed(format!("no rank {root}")));
        }
        let mine = if self.rank == root {
            values.iter().map(|&v| v as f64).collect()
        } else {
            Vec::new()
        };
        self.exchange(mine, |slots| {
            if slots[root].len() != values.len() {
                return Err(self.failed(format!(
                    "rank {root} broadcasts {} values, rank {} expects {}",
                    slots[root].len(),
                    self.rank,
                    values.len()
                )));
            }
            for (v, &s) in values.iter_mut().zip(&slots[root]) {
                *v = s as f32;
            }
            Ok(())
        })?
    }

    fn send_f32(&self, to: usize, values: &[f32]) -> Result<()> {
        let link = self
            .shared
            .senders
            .get(self.rank * self.shared.size + to)
            .filter(|_| to < self.shared.size)
            .ok_or_else(|| self.failed(format!("no rank {to}")))?;
        link.lock()
            .map_err(|_| self.failed("another rank panicked"))?
            .send(values.to_vec())
            .map_err(|_| self.failed(format!("rank {to} has gone")))
    }

    fn receive_f32(&self, from: usize, values: &mut [f32]) -> Result<()> {
        let link = self
            .shared
            .receivers
            .get(from * self.shared.size + self.rank)
            .filter(|_| from < self.shared.size)
            .ok_or_else(|| self.failed(format!("no rank {from}")))?;
        let message = link
            .lock()
            .map_err(|_| self.failed("another rank panicked"))?
            .recv()
            .map_err(|_| self.failed(format!("rank {from} has gone")))?;
        if message.len() != values.len() {
            return Err(self.failed(format!(
                "rank {from} sent {} values, {} expected",
                message.len(),
                values.len()
            )));
        }
        values.copy_from_slice(&message);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_ranks<T: Send>(size: usize, f: impl Fn(ThreadGroup) -> T + Sync) -> Vec<T> {
        ThreadGroup::run(size, 1, f).unwrap()
    }

    #[test]
    fn sums_are_weighted_in_rank_order_and_equal_on_every_rank() {
        let out = on_ranks(3, |c| {
            let mut v = vec![1e8f32 * (c.rank() as f32 - 1.0), 1.0, c.rank() as f32];
            c.sum_f32(&mut v, &[1.0, 1.0, 1.0]).unwrap();
            v
        });
        assert!(out.iter().all(|v| v == &out[0]));
        assert_eq!(out[0], vec![0.0, 3.0, 3.0]);
    }

    #[test]
    fn mismatched_lengths_fail_on_every_rank_without_hanging() {
        let out = on_ranks(2, |c| {
            let mut v = vec![0.0f64; 1 + c.rank()];
            c.sum_f64(&mut v, &[1.0, 1.0]).is_err()
        });
        assert_eq!(out, vec![true, true]);
    }

    #[test]
    fn broadcast_and_point_to_point() {
        let out = on_ranks(3, |c| {
            let mut v = [c.rank() as f32; 2];
            c.broadcast_f32(2, &mut v).unwrap();
            let mut got = [0.0f32; 1];
            if c.rank() == 0 {
                c.send_f32(1, &[7.0]).unwrap();
            } else if c.rank() == 1 {
                c.receive_f32(0, &mut got).unwrap();
            }
            (v, got[0])
        });
        assert_eq!(out, vec![([2.0; 2], 0.0), ([2.0; 2], 7.0), ([2.0; 2], 0.0)]);
    }
}
