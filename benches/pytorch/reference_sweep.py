#!/usr/bin/env python3
"""The PyTorch reference's own training over a grid of seeds, logged like fdfa's sweep.

Runs the reference's `main.py` (its `main` function: its data pipeline, its networks and
feedback hooks, its optimizers and scheduler, its `train` and `test`) once per (dataset,
network, rule, seed), each run in a child process with a fixed thread count, and lays the
results out as `cargo run --release --example sweep` does:
`<out>/<dataset>/<network>/<rule>/seed-<s>/` with the run's CSV log in fdfa's format, its
captured output and `finished.json`. So `sweep --summary-only --out <out>` summarises the
reference's runs exactly as it summarises fdfa's, and `--compare` prints both summaries side by
side. Started again, it skips the runs that finished (the reference saves no checkpoint, so an
unfinished run starts over). See README.md beside this file.

Nothing of the reference is copied here: the checkout given with --reference is imported.
"""

import argparse
import csv
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RULES = ("BP", "DFA", "DKP", "FDFA")
# fdfa's dataset names, the folder fdfa looks for, and the reference's `--dataset` (which is
# also the folder torchvision reads under its root).
DATASETS = {
    "mnist": ("mnist", "MNIST"),
    "fashion-mnist": ("fashion-mnist", "FashionMNIST"),
}
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FINISHED = "finished.json"
LOG = "log.csv"
OUTPUT = "output.log"
# fdfa's log columns, which the reference's CSVLogger also writes.
COLUMNS = ["Epoch", "Training Loss", "Test Loss", "Test Accuracy"]


def parse_seeds(text):
    seeds = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            lo, hi = int(lo), int(hi)
            if hi < lo:
                raise SystemExit(f"--seeds: empty range {part}")
            seeds.extend(range(lo, hi + 1))
        elif part:
            seeds.append(int(part))
    if not seeds:
        raise SystemExit("--seeds: no seed given")
    return seeds


def network_flags(network):
    """The reference's flags for a network key of fdfa's sweep: fcN or cnn."""
    if network == "cnn":
        return ["--conv"]
    if network.startswith("fc") and network[2:].isdigit() and int(network[2:]) >= 1:
        return [f"--n-layers={int(network[2:])}"]
    raise SystemExit(f"unknown network {network!r}: fc1, fc2, ... or cnn")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", type=Path,
                   help="checkout of the PyTorch reference (the folder holding main.py)")
    p.add_argument("--datasets", default="mnist", help="mnist, fashion-mnist (comma-separated)")
    p.add_argument("--networks", default="fc2", help="fc1, fc2, ..., cnn (comma-separated)")
    p.add_argument("--rules", default="BP,DFA,DKP,FDFA", help="comma-separated")
    p.add_argument("--seeds", default="0-4", help="ranges and seeds, e.g. 0-4 or 1-3,7")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--out", type=Path, default=Path("sweeps/reference"),
                   help="the sweep folder (laid out like fdfa's sweep)")
    p.add_argument("--data-root", type=Path,
                   help="folder holding mnist/ and fashion-mnist/ with the four IDX files "
                        "(default: as fdfa looks: $FDFA_DATA, ./data, /usr/share/datasets)")
    p.add_argument("--torchvision-root", type=Path,
                   help="scratch folder for the reference's copy of the data in torchvision's "
                        "layout (default: <out>/torchvision-data)")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("FDFA_CSV", "REFERENCE_CSV"),
                   help="train nothing: print the side-by-side table of two summary.csv files "
                        "written by `sweep --summary-only`")
    p.add_argument("--compare-epochs", default="",
                   help="epochs of the --compare table (default: every epoch in both)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.compare is None and args.worker is None and args.reference is None:
        p.error("--reference is required to train")
    return args


# --- data ---------------------------------------------------------------------------------


def find_dataset(key, data_root):
    folder, _ = DATASETS[key]
    candidates = []
    if data_root is not None:
        candidates.append(data_root / folder)
    if os.environ.get("FDFA_DATA"):
        candidates.append(Path(os.environ["FDFA_DATA"]) / folder)
    candidates += [Path("data") / folder, ROOT / "data" / folder,
                   Path("/usr/share/datasets") / folder]
    for c in candidates:
        if all((c / f).exists() or (c / (f + ".gz")).exists() for f in IDX_FILES):
            return c
    raise SystemExit(f"{key}: none of {', '.join(str(c) for c in candidates)} holds its four "
                     "IDX files (give --data-root)")


def prepare_torchvision(key, source, root):
    """Lays the IDX files out as torchvision reads them (`<root>/<Name>/raw/`, unpacked), so
    the reference's dataset class finds them and downloads nothing."""
    _, name = DATASETS[key]
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in IDX_FILES:
        target = raw / f
        if target.exists():
            continue
        tmp = raw / (f + ".tmp")
        if (source / f).exists():
            shutil.copyfile(source / f, tmp)
        else:
            with gzip.open(source / (f + ".gz"), "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        tmp.rename(target)


# --- one run (the child) ------------------------------------------------------------------


def worker(spec):
    """Trains one run through the reference's `main`, in the run's folder."""
    import torch

    torch.set_num_threads(spec["threads"])
    sys.path.insert(0, spec["reference"])
    os.chdir(spec["scratch"])
    import main as reference_main

    reference_main.main(spec["argv"])


# --- the grid -----------------------------------------------------------------------------


def read_finished(run_dir):
    try:
        return json.loads((run_dir / FINISHED).read_text())
    except (OSError, ValueError):
        return None


def convert_log(scratch, rule, run_dir, epochs):
    """Copies the reference's CSV log (its arguments on the first line, then a header and one
    row per epoch) into fdfa's log format; returns the number of epochs it holds."""
    logs = sorted((scratch / "results" / rule).glob("*.csv"))
    if len(logs) != 1:
        raise RuntimeError(f"{scratch}: expected one log of the reference, found {len(logs)}")
    lines = logs[0].read_text().splitlines()[1:]
    rows = list(csv.DictReader(lines))
    tmp = run_dir / (LOG + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r[c] for c in COLUMNS])
    tmp.rename(run_dir / LOG)
    return len(rows)


def run_grid(args):
    seeds = parse_seeds(args.seeds)
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    for r in rules:
        if r not in RULES:
            raise SystemExit(f"--rules: the reference trains {', '.join(RULES)}, not {r}")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for d in datasets:
        if d not in DATASETS:
            raise SystemExit(f"--datasets: {', '.join(DATASETS)}, not {d}")
    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    for n in networks:
        network_flags(n)
    if args.epochs < 1 or args.threads < 1:
        raise SystemExit("--epochs and --threads must be at least 1")
    reference = args.reference.resolve()
    if not (reference / "main.py").exists():
        raise SystemExit(f"{reference}: no main.py (give the reference's checkout)")
    out = args.out.resolve()
    tv_root = (args.torchvision_root or out / "torchvision-data").resolve()
    for d in datasets:
        prepare_torchvision(d, find_dataset(d, args.data_root), tv_root)

    runs = [(d, n, r, s) for d in datasets for n in networks for r in rules for s in seeds]
    done = 0
    for i, (d, n, r, s) in enumerate(runs):
        run_dir = out / d / n / r / f"seed-{s}"
        name = f"{d}/{n}/{r}/seed-{s}"
        finished = read_finished(run_dir)
        if finished and finished.get("epochs", 0) >= args.epochs:
            done += 1
            print(f"[{i + 1}/{len(runs)}] {name}: finished, skipped", flush=True)
            continue
        # No checkpoint to resume from: an unfinished run starts over in a clean folder. A
        # folder this script did not make (an fdfa run, with its checkpoint) is left alone.
        if run_dir.exists():
            if any(run_dir.iterdir()) and not (run_dir / "reference").is_dir():
                raise SystemExit(f"{run_dir} holds something other than a reference run (an "
                                 "fdfa sweep's?): give the reference its own --out")
            shutil.rmtree(run_dir)
        scratch = run_dir / "reference"
        scratch.mkdir(parents=True)
        (scratch / "data").symlink_to(tv_root)
        argv = [f"--dataset={DATASETS[d][1]}", *network_flags(n), f"--train-mode={r}",
                f"--seed={s}", f"--epochs={args.epochs}", "--log-dir=results/"]
        spec = {"reference": str(reference), "scratch": str(scratch), "argv": argv,
                "threads": args.threads}
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
                   MKL_NUM_THREADS=str(args.threads))
        print(f"[{i + 1}/{len(runs)}] {name}: training ({' '.join(argv)})", flush=True)
        start = time.monotonic()
        with open(run_dir / OUTPUT, "ab") as log:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker",
                                   json.dumps(spec)], stdout=log, stderr=subprocess.STDOUT,
                                  env=env)
        seconds = time.monotonic() - start
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed (status {proc.returncode}): see "
                             f"{run_dir / OUTPUT}")
        epochs = convert_log(scratch, r, run_dir, args.epochs)
        if epochs < args.epochs:
            raise SystemExit(f"{name}: the reference logged {epochs} of {args.epochs} epochs")
        tmp = run_dir / (FINISHED + ".tmp")
        tmp.write_text(json.dumps({"epochs": args.epochs, "log": LOG,
                                   "threads": args.threads, "seconds": round(seconds, 1)},
                                  indent=2))
        tmp.rename(run_dir / FINISHED)
        done += 1
        print(f"[{i + 1}/{len(runs)}] {name}: done in {seconds:.0f} s", flush=True)
    print(f"{done}/{len(runs)} runs finished; summarise with: cargo run --release --example "
          f"sweep -- --summary-only --datasets {','.join(datasets)} --networks "
          f"{','.join(networks)} --rules {','.join(rules)} --seeds {args.seeds} --epochs "
          f"{args.epochs} --out {args.out}")


# --- the side-by-side table ---------------------------------------------------------------


def read_summary(path):
    table = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if not r["seeds"] or int(r["seeds"]) == 0:
                continue  # a cell of the grid with no finished run
            key = (r["dataset"], r["network"], r["rule"], int(r["epoch"]))
            std = float(r["accuracy_std"]) if r["accuracy_std"] else float("nan")
            loss_std = float(r["test_loss_std"]) if r["test_loss_std"] else float("nan")
            table[key] = (int(r["seeds"]), float(r["accuracy_mean"]), std,
                          float(r["test_loss_mean"]), loss_std)
    return table


def z_score(a, b):
    """(mean_a - mean_b) / sqrt(s_a^2/n_a + s_b^2/n_b), with the standard deviations of the
    summaries (n - 1 in the denominator)."""
    n1, m1, s1 = a
    n2, m2, s2 = b
    se = math.sqrt(s1 * s1 / n1 + s2 * s2 / n2)
    return (m1 - m2) / se if se > 0 else float("nan")


def compare(args):
    ours = read_summary(args.compare[0])
    ref = read_summary(args.compare[1])
    wanted = {int(e) for e in args.compare_epochs.split(",") if e.strip()}
    keys = sorted((k for k in ours if k in ref and (not wanted or k[3] in wanted)),
                  key=lambda k: (list(DATASETS).index(k[0]) if k[0] in DATASETS else 99, k[0],
                                 k[1], RULES.index(k[2]) if k[2] in RULES else 99, k[3]))
    if not keys:
        raise SystemExit("the two summaries share no (dataset, network, rule, epoch)")
    print("| dataset | network | rule | epoch | seeds (fdfa / ref.) | accuracy, fdfa | "
          "accuracy, reference | difference | z | test loss, fdfa | test loss, reference | z |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in keys:
        a, b = ours[k], ref[k]
        za = z_score((a[0], a[1], a[2]), (b[0], b[1], b[2]))
        zl = z_score((a[0], a[3], a[4]), (b[0], b[3], b[4]))
        print(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {a[0]} / {b[0]} | "
              f"{a[1]:.2f} ± {a[2]:.2f} | {b[1]:.2f} ± {b[2]:.2f} | {a[1] - b[1]:+.2f} | "
              f"{za:+.1f} | {a[3]:.4f} ± {a[4]:.4f} | {b[3]:.4f} ± {b[4]:.4f} | {zl:+.1f} |")


def main(argv):
    args = parse_args(argv)
    if args.worker is not None:
        worker(json.loads(args.worker))
    elif args.compare is not None:
        compare(args)
    else:
        run_grid(args)


if __name__ == "__main__":
    main(sys.argv[1:])
