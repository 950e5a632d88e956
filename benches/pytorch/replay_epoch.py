#!/usr/bin/env python3
"""The reference and fdfa trained from the same initial state in the same batch order.

For each seed, runs the reference's own `main` (from the checkout given with --reference) for
--epochs epochs (default 1), recording the state its model starts from (its parameters,
BatchNorm buffers and feedback matrices, saved after its first `test` call, which creates the
feedback matrices, and before any training step) and the order in which its loader visits the
training set; then runs fdfa's `replay_epoch` example from that state in that order, and prints
both sides' training loss, test loss and test accuracy per epoch. Under BP, DFA and DKP
nothing else is random, so the two should agree up to float32 rounding (amplified over the
steps); under FDFA the random directions still differ. This
separates the deterministic part of training (data pipeline, layers, rules, optimizers,
BatchNorm statistics, evaluation) from the random draws (initial weights, shuffles,
directions), whose distributions the seed sweep compares. See README.md beside this file.

Nothing of the reference is copied here: its checkout is imported, and its DataLoader class
and `test` function are wrapped (not replaced) to record the order and the initial state.
"""

import argparse
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
from reference_sweep import (DATASETS, find_dataset, network_flags,  # noqa: E402
                             parse_seeds, prepare_torchvision)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", type=Path,
                   help="checkout of the PyTorch reference (the folder holding main.py)")
    p.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    p.add_argument("--network", default="fc2", help="fc1, fc2, ... or cnn")
    p.add_argument("--rule", default="BP", choices=["BP", "DFA", "DKP", "FDFA"])
    p.add_argument("--seeds", default="0-4", help="the reference's seeds, e.g. 0-4")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="threads on each side")
    p.add_argument("--work", type=Path, default=Path("target/replay-epoch"),
                   help="folder for the initial states, orders and logs")
    p.add_argument("--data-root", type=Path,
                   help="folder holding mnist/ or fashion-mnist/ (default: as fdfa looks)")
    p.add_argument("--fdfa-bin", type=Path,
                   help="a built replay_epoch example (default: built here with cargo)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is None and args.reference is None:
        p.error("--reference is required")
    return args


# fdfa's shallow CNN names its modules as the golden files do, not as the reference's
# networks/conv_mnist.py does: the reference's state is saved under fdfa's names.
CNN_NAMES = {"conv1": "conv_1", "conv1_bn": "bn_1", "conv1_dfa": "conv_1_dfa",
             "conv2": "conv_2", "conv2_bn": "bn_2", "conv2_dfa": "conv_2_dfa",
             "fc1": "linear_1", "fc1_bn": "linear_1_bn", "fc1_dfa": "linear_1_dfa"}


def fdfa_names(state, network):
    if network != "cnn":
        return state
    renamed = {}
    for name, value in state.items():
        module, _, rest = name.partition(".")
        renamed[f"{CNN_NAMES.get(module, module)}.{rest}"] = value
    return renamed


def save_safetensors(path, state):
    """Writes a state_dict as safetensors (float32 and int64 tensors)."""
    header, blobs, offset = {}, [], 0
    for name, value in state.items():
        a = value.detach().cpu().contiguous().numpy()
        dtype = {"float32": "F32", "int64": "I64"}[str(a.dtype)]
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def worker(spec):
    """The reference's `main` for one epoch, recording its initial state and its order."""
    import torch
    import torch.utils.data as tud

    torch.set_num_threads(spec["threads"])
    sys.path.insert(0, spec["reference"])
    os.chdir(spec["scratch"])
    import main as reference_main

    order = []

    class Recording(tud.Sampler):
        """Yields what the loader's own RandomSampler yields (drawing its seed from the
        global generator when iterated, as the loader would), and records it."""

        def __init__(self, inner):
            self.inner = inner

        def __iter__(self):
            for i in self.inner:
                order.append(int(i))
                yield i

        def __len__(self):
            return len(self.inner)

    class Loader(tud.DataLoader):
        def __init__(self, dataset, *a, shuffle=False, **kw):
            if shuffle:
                kw["sampler"] = Recording(tud.RandomSampler(dataset))
            super().__init__(dataset, *a, **kw)

    tud.DataLoader = Loader
    test = reference_main.test
    saved = []

    def first_test_saves(model, device, loader):
        # main's first test call creates the feedback matrices (at the hooks' first forward)
        # and changes nothing else: in evaluation mode BatchNorm keeps its statistics.
        result = test(model, device, loader)
        if not saved:
            saved.append(True)
            save_safetensors(spec["init"], fdfa_names(model.state_dict(), spec["network"]))
        return result

    reference_main.test = first_test_saves
    reference_main.main(spec["argv"])
    Path(spec["order"]).write_text("".join(f"{i}\n" for i in order))


def reference_log(scratch, rule):
    logs = sorted((scratch / "results" / rule).glob("*.csv"))
    if len(logs) != 1:
        raise SystemExit(f"{scratch}: expected one log of the reference, found {len(logs)}")
    import csv
    rows = list(csv.DictReader(logs[0].read_text().splitlines()[1:]))
    return [{"train_loss": float(r["Training Loss"]), "test_loss": float(r["Test Loss"]),
             "test_accuracy": float(r["Test Accuracy"])} for r in rows]


def fdfa_binary(args):
    if args.fdfa_bin:
        return args.fdfa_bin
    subprocess.run(["cargo", "build", "--release", "--example", "replay_epoch"], cwd=ROOT,
                   check=True)
    return ROOT / "target" / "release" / "examples" / "replay_epoch"


def main(argv):
    args = parse_args(argv)
    if args.worker is not None:
        worker(json.loads(args.worker))
        return
    network_flags(args.network)
    reference = args.reference.resolve()
    if not (reference / "main.py").exists():
        raise SystemExit(f"{reference}: no main.py (give the reference's checkout)")
    source = find_dataset(args.dataset, args.data_root)
    work = args.work.resolve()
    tv_root = work / "torchvision-data"
    prepare_torchvision(args.dataset, source, tv_root)
    binary = fdfa_binary(args)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    if args.epochs < 1:
        raise SystemExit("--epochs must be at least 1")
    print("| seed | epoch | training loss, reference / fdfa | test loss, reference / fdfa | "
          "test accuracy (%), reference / fdfa |")
    print("|---:|---:|---:|---:|---:|")
    diffs = {}
    for seed in parse_seeds(args.seeds):
        run = work / f"{args.dataset}-{args.network}-{args.rule}-seed-{seed}"
        scratch = run / "reference"
        scratch.mkdir(parents=True, exist_ok=True)
        for old in (scratch / "results" / args.rule).glob("*.csv"):
            old.unlink()
        if not (scratch / "data").exists():
            (scratch / "data").symlink_to(tv_root)
        spec = {"reference": str(reference), "scratch": str(scratch), "threads": args.threads,
                "network": args.network,
                "init": str(run / "init.safetensors"), "order": str(run / "order.txt"),
                "argv": [f"--dataset={DATASETS[args.dataset][1]}",
                         *network_flags(args.network), f"--train-mode={args.rule}",
                         f"--seed={seed}", f"--epochs={args.epochs}", "--log-dir=results/"]}
        with open(run / "reference.log", "wb") as log:
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker",
                            json.dumps(spec)], stdout=log, stderr=subprocess.STDOUT, env=env,
                           check=True)
        refs = reference_log(scratch, args.rule)
        out = subprocess.run([str(binary), "--init", spec["init"], "--order", spec["order"],
                              "--epochs", str(args.epochs), "--dataset", args.dataset,
                              "--data-dir", str(source), "--network", args.network,
                              "--rule", args.rule, "--threads", str(args.threads)],
                             capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(f"seed {seed}: replay_epoch failed: {out.stderr.strip()}")
        ours = [json.loads(line) for line in out.stdout.strip().splitlines()]
        if len(refs) != args.epochs or len(ours) != args.epochs:
            raise SystemExit(f"seed {seed}: {len(refs)} epochs of the reference and "
                             f"{len(ours)} of fdfa, not {args.epochs}")
        for epoch, (ref, our) in enumerate(zip(refs, ours), start=1):
            keys = ("train_loss", "test_loss", "test_accuracy")
            diffs.setdefault(epoch, []).append([our[k] - ref[k] for k in keys])
            print(f"| {seed} | {epoch} | {ref['train_loss']:.5f} / {our['train_loss']:.5f} | "
                  f"{ref['test_loss']:.5f} / {our['test_loss']:.5f} | "
                  f"{ref['test_accuracy']:.2f} / {our['test_accuracy']:.2f} |", flush=True)
    print()
    for epoch, d in sorted(diffs.items()):
        n = len(d)
        mean = [sum(x[i] for x in d) / n for i in range(3)]
        worst = [max(abs(x[i]) for x in d) for i in range(3)]
        print(f"epoch {epoch}, fdfa minus reference over {n} seeds: training loss mean "
              f"{mean[0]:+.5f} (largest {worst[0]:.5f}), test loss mean {mean[1]:+.5f} "
              f"(largest {worst[1]:.5f}), test accuracy mean {mean[2]:+.3f} "
              f"(largest {worst[2]:.2f})")

if __name__ == "__main__":
    main(sys.argv[1:])
