#!/usr/bin/env bash
# Soak test of crash-safe checkpoints: kills a training run of the `mnist` example with
# SIGKILL at random moments (while it loads data, trains, or saves), resumes it each time,
# and checks that its final weights (the tensor file's bytes) and its CSV log are identical
# to those of a run that was never interrupted.
#
#   scripts/soak.sh            # 40 kills
#   KILLS=100 SOAK_SEED=7 scripts/soak.sh
#
# Environment: KILLS (default 40), SOAK_SEED (the random moments; default: the time),
# MAX_DELAY_MS (longest a run lives before its kill; default 1500), and the run's size:
# TRAIN_SAMPLES (default 60000), EPOCHS (default 2), CHECKPOINT_EVERY (default 8 batches).
# Run from the repository's root; needs bash, sha256sum and the MNIST files in data/mnist.
set -euo pipefail

kills=${KILLS:-40}
seed=${SOAK_SEED:-$(date +%s)}
max_delay=${MAX_DELAY_MS:-1500}
train=${TRAIN_SAMPLES:-60000}
epochs=${EPOCHS:-2}
every=${CHECKPOINT_EVERY:-8}
RANDOM=$seed

cargo build --release --quiet --example mnist
bin=target/release/examples/mnist
work=$(mktemp -d -t fdfa-soak.XXXXXX)
trap 'rm -rf "$work"' EXIT

flags=(--train-samples "$train" --test-samples 512 --n-layers 1 --seed 11 --epochs "$epochs"
  --checkpoint-every "$every" --data-dir data/mnist)

# The last tensor file of a checkpoint folder, and a digest of it.
tensors_of() { ls "$1"/model-*.safetensors | tail -n 1; }
digest() { sha256sum "$1" | cut -d' ' -f1; }

echo "soak: seed $seed, $kills kills, $train samples x $epochs epochs, a checkpoint every $every batches"
start=$(date +%s)
"$bin" "${flags[@]}" --log-dir "$work/ref" >"$work/ref.out" 2>&1
ref_csv=$(sed -n 's/^logging to //p' "$work/ref.out")
ref_ckpt=${ref_csv%.csv}.ckpt
echo "reference run: $(( $(date +%s) - start )) s, $(tail -n 1 "$ref_csv")"

done_kills=0 saved_kills=0 fresh_starts=0 csv="" ckpt=""
while (( done_kills < kills )); do
  if [[ -n "$ckpt" && -f "$ckpt/state.json" ]]; then
    "$bin" --resume "$ckpt" >"$work/run.out" 2>&1 &
  else
    # Killed before its first checkpoint: nothing to resume, start again from scratch.
    rm -rf "$work/runs"
    csv="" ckpt=""
    fresh_starts=$((fresh_starts + 1))
    "$bin" "${flags[@]}" --log-dir "$work/runs" >"$work/run.out" 2>&1 &
  fi
  pid=$!
  delay=$(( RANDOM % max_delay + 1 ))
  sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
  if kill -9 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    done_kills=$((done_kills + 1))
    if grep -q "checkpoint saved to" "$work/run.out"; then saved_kills=$((saved_kills + 1)); fi
  else
    # It finished before the kill: the run is complete.
    wait "$pid" || { cat "$work/run.out"; echo "soak: a run failed"; exit 1; }
  fi
  if [[ -z "$csv" ]]; then
    csv=$(sed -n 's/^logging to //p' "$work/run.out" || true)
    [[ -n "$csv" ]] && ckpt=${csv%.csv}.ckpt
  fi
  if grep -q "nothing to train" "$work/run.out"; then break; fi
done
# Train to the end.
if [[ -n "$ckpt" && -f "$ckpt/state.json" ]]; then
  "$bin" --resume "$ckpt" >"$work/run.out" 2>&1 || { cat "$work/run.out"; exit 1; }
else
  rm -rf "$work/runs"
  "$bin" "${flags[@]}" --log-dir "$work/runs" >"$work/run.out" 2>&1
  csv=$(sed -n 's/^logging to //p' "$work/run.out"); ckpt=${csv%.csv}.ckpt
fi

status=0
if [[ "$(digest "$(tensors_of "$ckpt")")" != "$(digest "$(tensors_of "$ref_ckpt")")" ]]; then
  echo "soak: the final weights differ"; status=1
fi
if ! cmp -s "$csv" "$ref_csv"; then
  echo "soak: the CSV logs differ"; diff "$ref_csv" "$csv" || true; status=1
fi
leftovers=$(ls "$ckpt" | grep -c '\.tmp$' || true)
if (( leftovers > 0 )); then echo "soak: $leftovers temporary file(s) left"; status=1; fi
echo "soak: $done_kills kills ($saved_kills after a checkpoint had been saved in that process, $fresh_starts fresh start(s)) in $(( $(date +%s) - start )) s"
if (( status == 0 )); then
  echo "soak: identical final weights ($(digest "$(tensors_of "$ckpt")")) and CSV ($(wc -l <"$csv") lines)"
fi
exit $status
