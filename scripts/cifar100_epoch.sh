#!/usr/bin/env bash
# AlexNet on CIFAR-100 end to end, on files this script writes (the data set is not
# shipped): CIFAR-100 binary files in the official layout with patterned pixels, then
#
# 1. the input pipeline's share of the epoch: `cifar100_pipeline` runs BATCHES training
#    batches as `Trainer::train_epoch` does (fill the batch: random resized crop to 224,
#    flip, normalise; then the step) and times the two parts apart;
# 2. the `cifar100` example's real epoch (data loading, training, test, log, checkpoint)
#    on the first TRAIN_SAMPLES training and TEST_SAMPLES test records, timed whole.
#
#   scripts/cifar100_epoch.sh
#   THREADS=2 BATCHES=20 TRAIN_SAMPLES=50000 TEST_SAMPLES=10000 scripts/cifar100_epoch.sh
#
# Environment: THREADS (default 2), RULE (default FDFA), BATCHES (default 12),
# TRAIN_SAMPLES (default 640, ten batches of 64; 50000 for the full epoch, about 17
# minutes at 50 samples/s), TEST_SAMPLES (default 1000), DATA_DIR (default: a temporary
# folder, removed at the end). Run from the repository's root.
set -euo pipefail

threads=${THREADS:-2}
rule=${RULE:-FDFA}
batches=${BATCHES:-12}
train=${TRAIN_SAMPLES:-640}
test=${TEST_SAMPLES:-1000}
work=$(mktemp -d -t fdfa-cifar100.XXXXXX)
trap 'rm -rf "$work"' EXIT
data=${DATA_DIR:-$work/cifar-100-binary}

cargo build --release --quiet --example cifar100_pipeline --example cifar100

echo "== input pipeline against the training step ($threads threads, $rule)"
target/release/examples/cifar100_pipeline --data-dir "$data" --write --batches "$batches" \
  --threads "$threads" --train-mode "$rule"

echo "== cifar100 example, one epoch of $train training and $test test samples"
start=$(date +%s.%N)
target/release/examples/cifar100 --data-dir "$data" --epochs 1 --threads "$threads" \
  --train-mode "$rule" --train-samples "$train" --test-samples "$test" \
  --log-dir "$work/results"
end=$(date +%s.%N)
awk -v s="$start" -v e="$end" -v n="$train" \
  'BEGIN { printf "epoch wall time %.1f s (%.1f training samples/s, test pass included)\n", e - s, n / (e - s) }'
