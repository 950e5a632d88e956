#!/bin/bash
# Data-parallel FDFA on MNIST over 4 nodes, one MPI rank per node with all its cores.
# Build first, on a node or where the nodes share the file system:
#   cargo build --release --features mpi --example mnist
# then `sbatch scripts/slurm_mnist.sh` from the repository root.
#SBATCH --job-name=fdfa-mnist
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --time=02:00:00
set -euo pipefail
srun target/release/examples/mnist --distributed --threads "$SLURM_CPUS_PER_TASK" \
  --train-mode FDFA --epochs 100 --log-dir runs
