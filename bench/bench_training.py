"""Training benchmark: (1) cost of recording per-example confidences during training, (2) images/s
of the tensor-resident data path vs a standard torchvision DataLoader pipeline.

Every figure is a ratio of two variants measured side by side in one run, interleaved (A, B, then
B, A, ...) and summarised by medians, so load from other processes on the machine hits both alike.

    .venv/bin/python bench/bench_training.py                  # full run (5-13 min on 2 shared CPU cores)
    .venv/bin/python bench/bench_training.py --quick          # smoke run (2-3.5 min on 2 shared CPU cores)
    .venv/bin/python bench/bench_training.py --out docs/bench_training.md
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlflow_unlearn.confidences import ConfidenceRecorder  # noqa: E402
from mlflow_unlearn.data import DatasetSpec, _imagefolder_root, augment_batch, load_dataset  # noqa: E402
from mlflow_unlearn.models import build_model  # noqa: E402
from mlflow_unlearn.training import TrainConfig, batches, make_generator, train_model, use_amp  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    """Wall seconds of fn(), with the device drained before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleave(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Run each variant `repeats` times, alternating A, B / B, A so drift in load cancels out."""
    out = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in (names if r % 2 == 0 else names[::-1]):
            out[k].append(fns[k]())
    return out


def ratio(b: list[float], a: list[float]) -> tuple[float, float]:
    """(median(b) / median(a), median of per-repeat b/a): the second is robust to slow drifts."""
    return statistics.median(b) / statistics.median(a), statistics.median(x / y for x, y in zip(b, a))


# ---------------------------------------------------------------- 1. confidence-recording overhead
def bench_recording(data, model_name, model_kw, repeats, batch_size, device) -> dict:
    """s/epoch of train_model with vs without a ConfidenceRecorder, same data, model init and seed."""
    n = len(data.train)
    models = {k: build_model(model_name, num_classes=data.num_classes, input_shape=data.input_shape, seed=0, **model_kw)
              for k in ("without", "with")}
    recorder = ConfidenceRecorder(n)
    cfg = TrainConfig(epochs=1, batch_size=batch_size, seed=0)

    def epoch(k):  # one epoch, timed around train_model (setup is ~ms, the same for both)
        rec = recorder if k == "with" else None
        return lambda: timed(lambda: train_model(models[k], data, cfg, recorder=rec, progress=False, eval_test=False), device)

    for k in models:  # warm-up: two batches each (allocator, kernels), not counted
        train_model(models[k], data, cfg, train_ids=torch.arange(2 * batch_size), progress=False, eval_test=False)
    t = interleave({k: epoch(k) for k in models}, repeats)

    # The recorder alone, on a realistic batch of logits: what it adds to one epoch, in seconds.
    steps = -(-n // batch_size)
    logits = torch.randn(batch_size, data.num_classes, device=device)
    ids, y = torch.arange(batch_size, device=device), data.train.y[:batch_size]
    solo = ConfidenceRecorder(n)

    def rec_epoch():
        for _ in range(steps):
            solo.update(ids, logits, y)
        solo.end_epoch()

    rec_alone = statistics.median(timed(rec_epoch, device) for _ in range(20))
    return {"without": t["without"], "with": t["with"], "recorder_s": rec_alone, "steps": steps}


# ---------------------------------------------------------------- 2. tensor path vs torchvision DataLoader
def tensor_stream(data, batch_size, seed):
    """Batches as train_model makes them: uint8 on the device -> normalise -> crop+flip, per batch."""
    gen = make_generator(seed, data.device)
    while True:
        for idx in batches(len(data.train), batch_size, gen, data.device, drop_last=True):
            yield augment_batch(data.normalize(data.train.x[idx]), generator=gen), data.train.y[idx]


def torchvision_loader(data, root, batch_size, num_workers, device):
    """The standard pipeline over the same images: ImageFolder of JPEGs -> PIL transforms -> DataLoader."""
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(data.mean.tolist(), data.std.tolist())])
    folder = ImageFolder(str(root / "train"), transform=tf)
    idx = data.source_index.tolist()  # the same subset of train images as the tensor path
    assert [folder.targets[i] for i in idx] == data.train.y.tolist(), "ImageFolder order differs from load_dataset's"
    return DataLoader(Subset(folder, idx), batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
                      pin_memory=device.type == "cuda", persistent_workers=num_workers > 0)


def loader_stream(loader, device):
    while True:  # persistent workers: no respawn at epoch boundaries
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def bench_throughput(data, root, width, batch_size, num_workers, warmup, steps, repeats, device) -> dict:
    """images/s of training resnet18 (and of the data pipeline alone) for both data paths."""
    loader = torchvision_loader(data, root, batch_size, num_workers, device)
    streams = {"tensor": lambda r: tensor_stream(data, batch_size, seed=r), "torchvision": lambda r: loader_stream(loader, device)}
    amp = use_amp(None, device)
    models = {k: build_model("resnet18", num_classes=data.num_classes, input_shape=data.input_shape, seed=0, width=width).to(device)
              for k in streams}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4) for k, m in models.items()}

    def train_steps(k, it, n):
        for _ in range(n):
            x, y = next(it)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(models[k](x).float(), y)
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            opts[k].step()

    def fetch(it, n):
        for _ in range(n):
            x, _ = next(it)
        x.sum().item()  # make sure the last batch really exists on the device

    rounds = {"train": 0, "data": 0}

    def run(k, kind):
        def go():
            rounds[kind] += 1
            it = streams[k](rounds[kind])  # fresh iterator each round: worker start-up lands in the warm-up
            n = steps if kind == "train" else 2 * steps
            if kind == "train":
                train_steps(k, it, warmup)
                return n * batch_size / timed(lambda: train_steps(k, it, n), device)
            fetch(it, warmup)
            return n * batch_size / timed(lambda: fetch(it, n), device)
        return go

    train = interleave({k: run(k, "train") for k in streams}, repeats)
    pipe = interleave({k: run(k, "data") for k in streams}, max(repeats, 3))
    return {"train": train, "data": pipe}


# ---------------------------------------------------------------- main
def line(row) -> str:
    """One markdown table row: (benchmark, baseline, variant, ratio, paired ratio, samples); NaN -> blank."""
    b, x, y, r1, r2, n = row
    fmt = lambda v: "" if v != v else f"{v:.3f}"  # noqa: E731
    return f"| {b.strip()} | {x} | {y} | {fmt(r1)} | {fmt(r2)} | {n} |"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="smoke run, ~1 minute")
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz", help="CIFAR-10 JPEG copy (.tar.gz or tree), relative to the repo root")
    p.add_argument("--subset", type=int, default=None, help="CIFAR-10 train images to use (default 2000; quick 512)")
    p.add_argument("--width", type=int, default=None, help="resnet18 width (64 = the standard network; default 64 on CUDA, 16 on CPU)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers of the torchvision pipeline")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPU core count)")
    p.add_argument("--out", default=None, help="also write the results as a markdown table here (e.g. docs/bench_training.md)")
    a = p.parse_args(argv)

    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(a.threads or cores)
    width = a.width or (64 if device.type == "cuda" else 16)
    subset = a.subset or (512 if a.quick else 2000)
    q = a.quick
    digits_repeats, cifar_repeats = (3, 1) if q else (10, 3)  # epochs per variant
    warmup, steps, tp_repeats = (1, 4, 1) if q else (3, 20, 2)  # optimiser steps; rounds per variant
    archive = Path(a.data) if Path(a.data).is_absolute() else (REPO / a.data).resolve()

    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    header = [f"machine: {platform.machine()}, {cores} CPU cores, torch {torch.__version__}, device {device}{gpu}, "
              f"threads {torch.get_num_threads()}, mode {'quick' if q else 'full'}",
              f"resnet18 width {width} (64 = standard), batch {a.batch_size}, CIFAR-10 JPEG copy {archive} (subset {subset})"]
    print("\n".join(header), flush=True)
    t_start = time.perf_counter()

    rows = []  # (benchmark, baseline, variant, ratio of medians, median of paired ratios, samples)
    digits = load_dataset("digits", device=device)
    t0 = time.perf_counter()
    cifar = load_dataset(DatasetSpec(name=f"imagefolder:{archive}", subset=subset), device=device)
    print(f"loaded CIFAR-10 JPEG subset {tuple(cifar.train.x.shape)} in {time.perf_counter() - t0:.1f} s", flush=True)

    for label, data, model, kw, reps in [("digits small_cnn", digits, "small_cnn", {}, digits_repeats),
                                         (f"CIFAR-10 resnet18 w{width}", cifar, "resnet18", {"width": width}, cifar_repeats)]:
        r = bench_recording(data, model, kw, reps, a.batch_size, device)
        off, off_paired = ratio(r["with"], r["without"])
        without = statistics.median(r["without"])
        rows.append((f"C-proxy recording, {label}, {len(data.train)} imgs, {r['steps']} steps/epoch: s/epoch",
                     f"without {without:.3f}", f"with {statistics.median(r['with']):.3f}", off, off_paired, f"{reps} epochs each"))
        rows.append((f"  recorder alone (update x {r['steps']} + end_epoch): s/epoch, share of an epoch",
                     f"{r['recorder_s'] * 1e3:.2f} ms", f"{100 * r['recorder_s'] / without:.2f}%",
                     1 + r["recorder_s"] / without, float("nan"), "median of 20"))
        print(line(rows[-2]), line(rows[-1]), sep="\n", flush=True)

    root = _imagefolder_root(archive)
    t = bench_throughput(cifar, root, width, a.batch_size, a.num_workers, warmup, steps, tp_repeats, device)
    for kind, what in [("train", f"resnet18 w{width} training, {steps} steps after {warmup} warm-up: images/s"),
                       ("data", f"data pipeline only (no model), {2 * steps} batches: images/s")]:
        tv, tn = t[kind]["torchvision"], t[kind]["tensor"]
        rows.append((what, f"torchvision {statistics.median(tv):.0f}", f"tensor {statistics.median(tn):.0f}",
                     *ratio(tn, tv), f"{len(tn)} rounds each, {a.num_workers} workers"))
        print(line(rows[-1]), flush=True)

    table = ["| benchmark | baseline | variant | ratio variant/baseline (medians) | median of paired ratios | samples |",
             "|---|---|---|---|---|---|"] + [line(r) for r in rows]
    total = f"total {time.perf_counter() - t_start:.0f} s"
    print("\n" + "\n".join(table) + "\n" + total)
    if a.out:
        cmd = "python bench/bench_training.py " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text("# Training benchmark\n\n`" + cmd.strip() + "`\n\n" + "\n".join(f"- {h}" for h in header)
                               + "\n\n" + "\n".join(table) + f"\n\n{total}\n")


if __name__ == "__main__":
    main()
