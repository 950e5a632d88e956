//! The MPI transport (feature `mpi`): rsmpi over the system's MPI library.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use mpi::collective::CommunicatorCollectives;
use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Threading;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, Destination, Equivalence, Root, Source};

use super::{Communicator, Shard, reduce_in_rank_order};
use crate::error::{Error, Result};

/// The MPI world as a [`Communicator`]: every process that `mpirun -n N` (or `srun`)
/// started is one rank.
///
/// Sums are deterministic and give every rank the same bits (MPI's own reductions promise
/// neither): each rank receives every rank's copy of one segment of the buffer
/// (`MPI_Alltoallv`), adds them in rank order in f64, and the summed segments go to everyone
/// (`MPI_Allgatherv`). Each rank sends and receives about `2 (P - 1) / P` times the buffer,
/// as a ring all-reduce does.
///
/// MPI's handles may not cross threads, while the crate computes on its worker threads: one
/// service thread initialises MPI (`MPI_THREAD_FUNNELED`), makes every call, and finalises
/// it when the communicator is dropped; the other threads hand it their buffers.
///
/// ```no_run
/// use std::sync::Arc;
/// use fdfa::distributed::{Communicator, MpiCommunicator};
/// let world = Arc::new(MpiCommunicator::init()?);
/// println!("rank {} of {}", world.rank(), world.size());
/// # Ok::<(), fdfa::Error>(())
/// ```
pub struct MpiCommunicator {
    requests: Mutex<Sender<Request>>,
    /// Buffers that carried earlier sums, reused for the next (see [`Scratch`]).
    spare32: Mutex<Vec<f32>>,
    spare64: Mutex<Vec<f64>>,
    service: Option<JoinHandle<()>>,
    rank: usize,
    size: usize,
}

impl std::fmt::Debug for MpiCommunicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiCommunicator")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish()
    }
}

/// What the service thread does, with the channel for its answer.
enum Request {
    SumF64(Vec<f64>, Vec<f64>, Sender<Result<Vec<f64>>>),
    SumF32(Vec<f32>, Vec<f64>, Sender<Result<Vec<f32>>>),
    Broadcast(usize, Vec<f32>, Sender<Result<Vec<f32>>>),
    Send(usize, Vec<f32>, Sender<Result<Vec<f32>>>),
    Receive(usize, Vec<f32>, Sender<Result<Vec<f32>>>),
}

/// Counts and displacements of the segments of `n` values over `size` ranks.
fn segments(n: usize, size: usize) -> Option<(Vec<i32>, Vec<i32>)> {
    let (mut counts, mut displs) = (Vec::new(), Vec::new());
    for r in 0..size {
        let s = Shard::of(n, r, size);
        counts.push(i32::try_from(s.len).ok()?);
        displs.push(i32::try_from(s.offset).ok()?);
    }
    Some((counts, displs))
}

/// The MPI side: owns the world and serves requests until the channel closes.
struct Service {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    /// Scratch kept from call to call: a fresh buffer of several MB every step costs its
    /// page faults each time.
    scratch32: Scratch<f32>,
    scratch64: Scratch<f64>,
}

/// The segments gathered from every rank, and their sums.
struct Scratch<T> {
    gathered: Vec<T>,
    summed: Vec<T>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Self {
            gathered: Vec::new(),
            summed: Vec::new(),
        }
    }
}

impl Service {
    fn failed(&self, reason: impl Into<String>) -> Error {
        Error::Distributed {
            rank: self.rank,
            reason: reason.into(),
        }
    }

    fn serve(&mut self, requests: Receiver<Request>) {
        // A requester that went away no longer needs its answer.
        for request in requests {
            match request {
                Request::SumF64(mut v, w, reply) => {
                    let mut scratch = std::mem::take(&mut self.scratch64);
                    let done = self.sum(&mut v, &w, &mut scratch, |x| x);
                    self.scratch64 = scratch;
                    let _ = reply.send(done.map(|()| v));
                }
                Request::SumF32(mut v, w, reply) => {
                    let mut scratch = std::mem::take(&mut self.scratch32);
                    let done = self.sum(&mut v, &w, &mut scratch, |x| x as f32);
                    self.scratch32 = scratch;
                    let _ = reply.send(done.map(|()| v));
                }
                Request::Broadcast(root, mut v, reply) => {
                    self.world
                        .process_at_rank(root as i32)
                        .broadcast_into(&mut v[..]);
                    let _ = reply.send(Ok(v));
                }
                Request::Send(to, v, reply) => {
                    self.world.process_at_rank(to as i32).send(&v[..]);
                    let _ = reply.send(Ok(Vec::new()));
                }
                Request::Receive(from, mut v, reply) => {
                    let status = self
                        .world
                        .process_at_rank(from as i32)
                        .receive_into(&mut v[..]);
                    let got = status.count(f32::equivalent_datatype()) as usize;
                    let answer = if got == v.len() {
                        Ok(v)
                    } else {
                        Err(self.failed(format!(
                            "rank {from} sent {got} values, {} expected",
                            v.len()
                        )))
                    };
                    let _ = reply.send(answer);
                }
            }
        }
    }

    /// The deterministic weighted sum: segments to their owners, a rank-ordered sum there,
    /// and the sums to everyone.
    fn sum<T>(
        &self,
        values: &mut [T],
        weights: &[f64],
        scratch: &mut Scratch<T>,
        round: impl Fn(f64) -> T,
    ) -> Result<()>
    where
        T: Equivalence + Copy + Default + Into<f64>,
    {
        let Some((counts, displs)) = segments(values.len(), self.size) else {
            return Err(self.failed(format!(
                "a buffer of {} values is too large for one MPI call",
                values.len()
            )));
        };
        let mine = counts[self.rank] as usize;
        let Scratch { gathered, summed } = scratch;
        gathered.resize(mine * self.size, T::default());
        let recv_counts = vec![mine as i32; self.size];
        let recv_displs: Vec<i32> = (0..self.size).map(|q| (q * mine) as i32).collect();
        self.world.all_to_all_varcount_into(
            &Partition::new(&*values, &counts[..], &displs[..]),
            &mut PartitionMut::new(&mut gathered[..], &recv_counts[..], &recv_displs[..]),
        );
        let views: Vec<&[T]> = gathered.chunks(mine.max(1)).collect();
        summed.clear();
        summed.extend((0..mine).map(|j| round(reduce_in_rank_order(&views, weights, j))));
        self.world.all_gather_varcount_into(
            &summed[..],
            &mut PartitionMut::new(values, &counts[..], &displs[..]),
        );
        Ok(())
    }
}

impl MpiCommunicator {
    /// Initialises MPI (on a service thread of its own) and takes the world communicator.
    /// Call it once per process; dropping the communicator finalises MPI.
    ///
    /// # Errors
    /// [`Error::Distributed`] when MPI is already initialised or cannot be.
    pub fn init() -> Result<Self> {
        let (ready_tx, ready_rx) = channel();
        let (requests, inbox) = channel::<Request>();
        let service = std::thread::Builder::new()
            .name("fdfa-mpi".into())
            .spawn(move || {
                let Some((universe, _)) = mpi::initialize_with_threading(Threading::Funneled)
                else {
                    let _ = ready_tx.send(None);
                    return;
                };
                let world = universe.world();
                let mut service = Service {
                    rank: world.rank() as usize,
                    size: world.size() as usize,
                    world,
                    scratch32: Scratch::default(),
                    scratch64: Scratch::default(),
                };
                let _ = ready_tx.send(Some((service.rank, service.size)));
                service.serve(inbox);
                drop(service);
                drop(universe);
            })
            .map_err(|e| Error::Distributed {
                rank: 0,
                reason: format!("cannot start the MPI thread: {e}"),
            })?;
        let Ok(Some((rank, size))) = ready_rx.recv() else {
            let _ = service.join();
            return Err(Error::Distributed {
                rank: 0,
                reason: "MPI is already initialised in this process, or cannot be".into(),
            });
        };
        Ok(Self {
            requests: Mutex::new(requests),
            spare32: Mutex::new(Vec::new()),
            spare64: Mutex::new(Vec::new()),
            service: Some(service),
            rank,
            size,
        })
    }

    fn failed(&self, reason: impl Into<String>) -> Error {
        Error::Distributed {
            rank: self.rank,
            reason: reason.into(),
        }
    }

    /// Hands a request to the service thread and waits for its answer.
    fn ask<T>(&self, request: impl FnOnce(Sender<Result<T>>) -> Request) -> Result<T> {
        let (reply, answer) = channel();
        self.requests
            .lock()
            .map_err(|_| self.failed("a thread panicked while talking to MPI"))?
            .send(request(reply))
            .map_err(|_| self.failed("the MPI thread has stopped"))?;
        answer
            .recv()
            .map_err(|_| self.failed("the MPI thread has stopped"))?
    }

    fn check_weights(&self, weights: &[f64]) -> Result<()> {
        if weights.len() == self.size {
            Ok(())
        } else {
            Err(self.failed(format!("{} weights for {} ranks", weights.len(), self.size)))
        }
    }

    fn check_rank(&self, rank: usize) -> Result<()> {
        if rank < self.size {
            Ok(())
        } else {
            Err(self.failed(format!("no rank {rank}")))
        }
    }
}

/// The spare buffer (or a new one) holding a copy of `values`.
fn refill<T: Copy>(spare: &Mutex<Vec<T>>, values: &[T]) -> Vec<T> {
    let mut buf = spare
        .lock()
        .map(|mut s| std::mem::take(&mut *s))
        .unwrap_or_default();
    buf.clear();
    buf.extend_from_slice(values);
    buf
}

/// Keeps `buf` for the next call.
fn give_back<T>(spare: &Mutex<Vec<T>>, buf: Vec<T>) {
    if let Ok(mut s) = spare.lock() {
        *s = buf;
    }
}

impl Drop for MpiCommunicator {
    fn drop(&mut self) {
        // Closing the channel ends the service loop, which finalises MPI.
        if let Ok(requests) = self.requests.get_mut() {
            let (closed, _) = channel();
            *requests = closed;
        }
        if let Some(service) = self.service.take() {
            let _ = service.join();
        }
    }
}

impl Communicator for MpiCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn sum_f64(&self, values: &mut [f64], weights: &[f64]) -> Result<()> {
        self.check_weights(weights)?;
        let buf = refill(&self.spare64, values);
        let sum = self.ask(|r| Request::SumF64(buf, weights.to_vec(), r))?;
        values.copy_from_slice(&sum);
        give_back(&self.spare64, sum);
        Ok(())
    }

    fn sum_f32(&self, values: &mut [f32], weights: &[f64]) -> Result<()> {
        self.check_weights(weights)?;
        let buf = refill(&self.spare32, values);
        let sum = self.ask(|r| Request::SumF32(buf, weights.to_vec(), r))?;
        values.copy_from_slice(&sum);
        give_back(&self.spare32, sum);
        Ok(())
    }

    fn sum_f32_owned(&self, values: Vec<f32>, weights: &[f64]) -> Result<Vec<f32>> {
        self.check_weights(weights)?;
        self.ask(|r| Request::SumF32(values, weights.to_vec(), r))
    }

    fn broadcast_f32(&self, root: usize, values: &mut [f32]) -> Result<()> {
        self.check_rank(root)?;
        let got = self.ask(|r| Request::Broadcast(root, values.to_vec(), r))?;
        values.copy_from_slice(&got);
        Ok(())
    }

    fn send_f32(&self, to: usize, values: &[f32]) -> Result<()> {
        self.check_rank(to)?;
        self.ask(|r| Request::Send(to, values.to_vec(), r))
            .map(drop)
    }

    fn receive_f32(&self, from: usize, values: &mut [f32]) -> Result<()> {
        self.check_rank(from)?;
        let got = self.ask(|r| Request::Receive(from, vec![0.0; values.len()], r))?;
        values.copy_from_slice(&got);
        Ok(())
    }
}
