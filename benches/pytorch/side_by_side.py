#!/usr/bin/env python3
"""fdfa and the PyTorch reference side by side, on this machine, in one run.

Times the cells of `examples/throughput.rs` (network, rule, batch, threads) in both programs,
alternating them cell by cell within each repeat so that the machine's drift hits both alike,
and prints one table with both rates, their ratio and the CPU model. See README.md beside this
file.

The reference is imported from a checkout given with --reference: its network classes, its
feedback hooks and its `train`/`test` functions from main.py, set up as main.py sets them up
(one evaluation pass to create the feedback matrices, then Adam on the forward parameters and,
for DKP and FDFA, a second Adam on the feedback matrices). Data are synthetic and in memory on
both sides.
"""

import argparse
import contextlib
import csv
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_VENV = ROOT / "target" / "pytorch-venv"
NETWORKS = {"fc2": 2, "fc3": 3, "cnn": None}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", type=Path, required=True,
                   help="checkout of the PyTorch reference (the folder holding main.py)")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                   help="virtual environment with torch (default: target/pytorch-venv)")
    p.add_argument("--setup", action="store_true",
                   help="create the virtual environment and install torch and torchvision "
                        "into it first")
    p.add_argument("--networks", default="fc2,cnn", help="fc2, fc3, cnn (comma-separated)")
    p.add_argument("--rules", default="BP,DFA,DKP,FDFA", help="comma-separated")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--infer-batch", type=int, default=1000,
                   help="inference batch; 0 leaves inference out")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--steps", type=int, default=20, help="training steps per timing")
    p.add_argument("--repeats", type=int, default=5, help="timings per cell (median)")
    p.add_argument("--fdfa-bin", type=Path,
                   help="a built throughput example (default: built here with cargo)")
    return p.parse_args(argv)


def ensure_torch(args):
    """Runs this script again under the virtual environment's Python when this one lacks
    torch, creating the environment first with --setup."""
    venv_python = args.venv / "bin" / "python"
    if args.setup:
        if not venv_python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(args.venv)], check=True)
        subprocess.run([str(venv_python), "-m", "pip", "install", "--quiet", "torch",
                        "torchvision"], check=True)
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
        return
    except ImportError:
        pass
    # The environment's python is a link to this one's binary: mark the second run instead.
    if venv_python.exists() and not os.environ.get("FDFA_SIDE_BY_SIDE_IN_VENV"):
        os.environ["FDFA_SIDE_BY_SIDE_IN_VENV"] = "1"
        argv = [a for a in sys.argv[1:] if a != "--setup"]
        os.execv(str(venv_python), [str(venv_python), str(Path(__file__).resolve()), *argv])
    sys.exit(f"torch and torchvision are not importable by {sys.executable}: run again with "
             f"--setup to install them into {args.venv}, or point --venv at an environment "
             "that has them")


def cpu_model():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model, flags = platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == platform.machine():
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    isa = [f for f in ("avx2", "fma", "avx512f") if f in flags]
    return f"{model} ({', '.join(isa) if isa else 'no AVX2'})"


class Fdfa:
    """The throughput example, one cell per call."""

    def __init__(self, args):
        if args.fdfa_bin:
            self.bin = args.fdfa_bin
        else:
            subprocess.run(["cargo", "build", "--quiet", "--release", "--example", "throughput"],
                           cwd=ROOT, check=True)
            target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
            if not target.is_absolute():
                target = ROOT / target
            self.bin = target / "release" / "examples" / "throughput"
        self.args = args
        self.csv = Path(tempfile.mkdtemp(prefix="fdfa-side-by-side-")) / "cell.csv"

    def _run(self, network, flags):
        cmd = [str(self.bin), "--networks", network, "--threads", str(self.args.threads),
               "--repeats", "1", "--scaling", "false", "--csv", str(self.csv), *flags]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(self.csv, newline="") as f:
            return next(csv.DictReader(f))

    def train(self, network, rule):
        row = self._run(network, ["--rules", rule, "--batch", str(self.args.batch),
                                  "--steps", str(self.args.steps), "--inference", "false"])
        return float(row["train_samples_per_s"])

    def infer(self, network):
        row = self._run(network, ["--training", "false",
                                  "--infer-batch", str(self.args.infer_batch)])
        return float(row["infer_samples_per_s"])


class Loader:
    """What the reference's `train` and `test` read from a DataLoader: batches, a length
    and `.dataset`'s length."""

    def __init__(self, x, y, batches):
        self.batches = [(x, y)] * batches
        self.dataset = range(x.shape[0] * batches)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class Reference:
    """The reference's networks, hooks and training step, kept warm across repeats."""

    def __init__(self, args):
        sys.path.insert(0, str(args.reference.resolve()))
        import torch
        # main.py imports torchvision, which the timing does not use.
        import main as reference_main
        from networks.conv_mnist import Network as Conv
        from networks.fc_mnist import Network as Fc
        from utils.MultiOptimizer import MultipleOptimizer

        self.torch, self.main = torch, reference_main
        self.fc, self.conv, self.multi = Fc, Conv, MultipleOptimizer
        torch.set_num_threads(args.threads)
        torch.manual_seed(1)
        self.args = args
        self.cells = {}

    def _data(self, batch):
        x = self.torch.randn(batch, 1, 28, 28)
        y = self.torch.arange(batch) % 10
        return x, y

    def _cell(self, network, rule):
        key = (network, rule)
        if key in self.cells:
            return self.cells[key]
        torch, cpu, batch = self.torch, self.torch.device("cpu"), self.args.batch
        layers = NETWORKS[network]
        model = (self.conv(batch, rule, cpu) if layers is None
                 else self.fc(batch, layers, rule, cpu)).to(cpu)
        x, y = self._data(batch)
        # As main.py: one evaluation pass creates the hooks' feedback matrices, then one Adam
        # for the forward parameters and, for DKP and FDFA, one for the feedback matrices.
        with contextlib.redirect_stdout(io.StringIO()):
            self.main.test(model, cpu, Loader(x, y, 1))
        lr = 1e-4
        if rule in ("DKP", "FDFA"):
            feedback = [p for n, p in model.named_parameters() if "feedbacks" in n]
            forward = [p for n, p in model.named_parameters() if "feedbacks" not in n]
            optimizer = self.multi(torch.optim.Adam([{"params": feedback}], lr=lr),
                                   torch.optim.Adam([{"params": forward}], lr=lr))
        else:
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        train_args = argparse.Namespace(log_interval=10**9, dry_run=False)
        cell = (model, optimizer, train_args, x, y)
        self.cells[key] = cell
        self._steps(cell, rule, 3)  # warm-up
        return cell

    def _steps(self, cell, rule, steps):
        model, optimizer, train_args, x, y = cell
        cpu = self.torch.device("cpu")
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            self.main.train(train_args, model, cpu, Loader(x, y, steps), optimizer,
                            rule == "FDFA", 1, None)
        return time.perf_counter() - start

    def train(self, network, rule):
        cell = self._cell(network, rule)
        return self.args.steps * self.args.batch / self._steps(cell, rule, self.args.steps)

    def infer(self, network):
        key = (network, "infer")
        if key not in self.cells:
            cpu = self.torch.device("cpu")
            layers = NETWORKS[network]
            # The hooks' mode does not matter in evaluation; BP creates no feedback matrices.
            model = (self.conv(self.args.infer_batch, "BP", cpu) if layers is None
                     else self.fc(self.args.infer_batch, layers, "BP", cpu)).to(cpu)
            x, y = self._data(self.args.infer_batch)
            self.cells[key] = (model, Loader(x, y, 1))
            self._infer_once(*self.cells[key])
        return self.args.infer_batch / self._infer_once(*self.cells[key])

    def _infer_once(self, model, loader):
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            self.main.test(model, self.torch.device("cpu"), loader)
        return time.perf_counter() - start


def main(argv):
    args = parse_args(argv)
    if not (args.reference / "main.py").exists():
        sys.exit(f"{args.reference} does not hold the reference's main.py")
    ensure_torch(args)
    import torch

    networks = [n for n in args.networks.split(",") if n]
    rules = [r for r in args.rules.split(",") if r]
    unknown = [n for n in networks if n not in NETWORKS]
    if unknown:
        sys.exit(f"unknown networks {unknown}: expected some of {sorted(NETWORKS)}")
    cells = [(n, r) for n in networks for r in rules]
    if args.infer_batch > 0:
        cells += [(n, None) for n in networks]

    fdfa, reference = Fdfa(args), Reference(args)
    rates = {c: ([], []) for c in cells}
    for repeat in range(args.repeats):
        for cell in cells:
            network, rule = cell
            programs = [(0, fdfa), (1, reference)]
            if repeat % 2:
                programs.reverse()  # neither program always goes first
            for side, program in programs:
                rate = program.infer(network) if rule is None else program.train(network, rule)
                rates[cell][side].append(rate)
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)

    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores")
    if hasattr(os, "getloadavg"):
        # Other work on the machine slows both sides, PyTorch's OpenMP threads the most.
        print("load average over the last 1, 5 and 15 minutes (at the end): "
              + ", ".join(f"{v:.1f}" for v in os.getloadavg()))
    print(f"torch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()}), "
          f"{args.threads} thread(s) on both sides, training batch {args.batch}, "
          f"inference batch {args.infer_batch}; medians of {args.repeats} timings of "
          f"{args.steps} steps; the ratio is the median of per-repeat ratios\n")
    print("| network | rule | fdfa (samples/s) | PyTorch reference (samples/s) "
          "| fdfa / reference |")
    print("|---|---|---|---|---|")
    for cell in cells:
        network, rule = cell
        ours, theirs = rates[cell]
        ratio = statistics.median(a / b for a, b in zip(ours, theirs))
        label = "inference" if rule is None else rule
        print(f"| {network} | {label} | {statistics.median(ours):,.0f} | "
              f"{statistics.median(theirs):,.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main(sys.argv[1:])
