"""Datasets by name (the `DATASETS` registry; plugins add theirs through the entry-point group
`mlflow_unlearn.datasets`), held as uint8 tensors on the training device.

Built-in names: `digits` (scikit-learn's 8x8 digits, shipped, offline), `digits-noisy[:<rate>]` (the same
with a seeded share of train labels flipped, default 0.1: the demo's default), `cifar10`, `cifar100`
(torchvision; downloaded only when `download=True`), and `imagefolder:<path>` (a tree with
`train/<class>/*` and `test/<class>/*`, or a .tar.gz of one, such as the CIFAR-10 JPEG copy).

Why the noisy digits: what a network memorises is what it cannot learn from the rest of the data,
and mislabelled examples are the plainest case. Clean digits has almost nothing in that tail (a
retrain without any forget set still classifies nearly all of it), so there is nothing to unlearn;
with flipped labels the examples a retrain gets wrong are exactly the high-memorisation tier.
Only train labels are flipped (validation and test stay clean), each to a uniformly drawn other
class, at exactly round(rate x n_train) train ids drawn with the spec's seed; the manifest records
the flipped ids and their clean labels.

Every train example has a stable integer id: its index in the train split as this spec defines it
(after the optional seeded subset and validation carve-out), so ids are always 0..n_train-1 and a
position in `train` is the id. `source_index` keeps the index in the original dataset for audits.

Images stay uint8 ([N, C, H, W], 1 byte per value: 150 MB for CIFAR-10) and are normalised per batch;
augmentation (random crop with padding, horizontal flip) is done with tensor ops on whole batches,
the airbench way, rather than a per-image Python DataLoader.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ._registry import Registry, declare

NOISY_DIGITS = "digits-noisy"
DEFAULT_LABEL_NOISE = 0.1  # 10% of 1,293 train labels: 129 flipped, enough for a tier of 30 and two calibration sets
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".webp")


class DatasetError(ValueError):
    """A dataset name, path or option that cannot be used; the message says which and how to fix it."""


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to load exactly the same data again (logged with every original model)."""

    name: str = "digits"
    root: str | None = None  # where cifar10/cifar100 live or are downloaded to
    subset: int | None = None  # keep a seeded random subset of this many train examples
    val_fraction: float = 0.0  # fraction of train carved out as a seeded validation split
    seed: int = 0  # seed of the subset and validation split (not of training)
    download: bool = False  # cifar10/cifar100: fetch when not under root (needs network)

    def __post_init__(self):
        validate_dataset_name(self.name)
        if self.subset is not None and (not isinstance(self.subset, int) or self.subset <= 0):
            raise DatasetError(f"subset must be a positive number of examples, got {self.subset!r}")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise DatasetError(
                f"val_fraction must be a fraction in [0, 1) (not a percentage), got {self.val_fraction!r}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def host_paths(self) -> list[str]:
        """The paths on this host the spec reads: an imagefolder tree (or archive), a torchvision root."""
        base, option = split_dataset_name(self.name)
        paths = [option] if option and DATASETS.declared(base).get("option") == PATH_OPTION else []
        return paths + ([self.root] if self.root else [])

    def check_within(self, roots: "list[str]") -> None:
        """Refuse a spec that reads outside `roots` (the registry hook's --data-root): a model's manifest
        is registry content, and loading a path it names would tell whoever registered it whether
        that path exists on the worker. The message names neither the path nor whether it exists."""
        allowed = [os.path.realpath(r) for r in roots]
        for path in self.host_paths():
            real = os.path.realpath(os.path.expanduser(path))  # symlinks resolved: no escaping a root through one
            if not any(os.path.commonpath([real, root]) == root for root in allowed):
                raise DatasetError("the source model's dataset reads files on this host outside the configured data "
                                   "roots; start the hook with --data-root <folder holding the training data> (or "
                                   "MLFLOW_UNLEARN_HOOK_DATA_ROOTS) to allow it")

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Split:
    x: torch.Tensor  # uint8 [N, C, H, W]
    y: torch.Tensor  # int64 [N]
    ids: torch.Tensor  # int64 [N]; for train these are 0..N-1, for test/val their own indices

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device), self.ids.to(device))

    def subset(self, positions) -> "Split":
        positions = torch.as_tensor(positions, dtype=torch.long, device=self.y.device)
        return Split(self.x[positions], self.y[positions], self.ids[positions])


@dataclass
class ImageData:
    spec: DatasetSpec
    train: Split
    test: Split
    val: Split | None
    classes: list[str]
    mean: torch.Tensor  # per channel, in [0, 1] units, from the train split
    std: torch.Tensor
    augment: bool  # whether crop+flip suits these images (CIFAR-like: yes; digits: no)
    source_index: np.ndarray = field(repr=False, default=None)  # train id -> index in the source data
    digest: str = ""
    flipped_ids: np.ndarray | None = field(repr=False, default=None)  # train ids whose label was flipped (noisy data)
    clean_labels: np.ndarray | None = field(repr=False, default=None)  # their labels before the flip

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.train.x.device

    def to(self, device) -> "ImageData":
        return dataclasses.replace(
            self,
            train=self.train.to(device),
            test=self.test.to(device),
            val=None if self.val is None else self.val.to(device),
            mean=self.mean.to(device),
            std=self.std.to(device),
        )

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] -> float32, zero mean and unit variance per channel."""
        x = x_uint8.float().div_(255.0)
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def manifest(self) -> dict:
        """The training-set manifest: what a forget set's ids refer to."""
        return {
            "dataset": self.spec.name,
            "dataset_spec": self.spec.to_dict(),
            "dataset_digest": self.digest,
            "n_train": len(self.train),
            "n_test": len(self.test),
            "n_val": 0 if self.val is None else len(self.val),
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "input_shape": list(self.input_shape),
            "ids": self.train.ids.cpu().tolist(),
            "labels": self.train.y.cpu().tolist(),
            "source_index": [int(i) for i in self.source_index],
            **({} if self.flipped_ids is None else {
                "label_noise": label_noise_rate(self.spec.name),
                "flipped_ids": [int(i) for i in self.flipped_ids],
                "clean_labels": [int(c) for c in self.clean_labels]}),
        }


# ------------------------------------------------------------------------------------------------
# The dataset registry
#
# A dataset is a loader `fn(spec: DatasetSpec, option) -> RawImages`, registered under the part of
# the name before the first ':'; what follows is its option (`digits-noisy:0.1`,
# `imagefolder:/data/tree`). Declarations (`DATASETS.register(name, ...)` or
# `mlflow_unlearn._registry.declare` on a plugin's loader): `form`, how the name is written in help
# and errors (default: the name); `option`, None (takes none), a function `text -> value` that checks
# the option without touching the file system (raising DatasetError) and whose value reaches the
# loader, or PATH_OPTION (a path on this host: the registry hook refuses one outside its data roots);
# `option_required`; `check`, `fn(spec, option)` run before any MLflow run is created (file-system
# checks). Plugins register through the entry-point group `mlflow_unlearn.datasets`.

DATASETS = Registry("dataset", "mlflow_unlearn.datasets")
PATH_OPTION = "path"


def declare_dataset(*, form: str | None = None, option: Callable[[str], Any] | str | None = None,
                    option_required: bool = False, check: Callable[..., None] | None = None):
    """Decorator for a plugin's loader (its entry point registers it): the declarations above."""
    declared = {"form": form, "option": option, "option_required": option_required, "check": check}
    return declare(**{k: v for k, v in declared.items() if v not in (None, False)})


@dataclass(frozen=True)
class RawImages:
    """What a dataset loader returns: both splits as uint8 [N, C, H, W] images with int labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    augment: bool  # whether crop+flip suits these images (CIFAR-like: yes; 8x8 digits: no)
    label_noise: float = 0.0  # the share of train labels to flip (after the validation carve-out)


def split_dataset_name(name: str) -> tuple[str, str | None]:
    """'imagefolder:/data/x' -> ('imagefolder', '/data/x'); 'digits' -> ('digits', None)."""
    base, sep, option = name.partition(":")
    return base, (option if sep else None)


def dataset_forms() -> list[str]:
    """How each registered dataset's name is written (`digits-noisy[:<rate>]`, ...), for help text."""
    return [DATASETS.declared(name).get("form", name) for name in DATASETS.registered()]


def _parse_dataset_name(name: str) -> tuple[str, Any]:
    """The registered base name and its checked option value; DatasetError naming the fix otherwise."""
    if not isinstance(name, str) or not name:
        raise DatasetError(f"dataset name must be a non-empty string, got {name!r}; valid: {', '.join(dataset_forms())}")
    base, option = split_dataset_name(name)
    if base not in DATASETS:
        close = difflib.get_close_matches(base[:60], DATASETS.names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DatasetError(f"unknown dataset {base[:60]!r}{hint}; valid names: {', '.join(dataset_forms())}")
    declared = DATASETS.declared(base)
    form, parse = declared.get("form", base), declared.get("option")
    if option is None:
        if declared.get("option_required"):
            raise DatasetError(f"dataset {base!r} needs an option: write it as {form!r}; valid names: "
                               f"{', '.join(dataset_forms())}")
        return base, None
    if parse is None:
        raise DatasetError(f"dataset {base!r} takes no option after ':'; write it as {form!r}; valid names: "
                           f"{', '.join(dataset_forms())}")
    if parse == PATH_OPTION:
        if not option:
            raise DatasetError(f"dataset {base!r} needs a path: write it as {form!r} (a folder with train/ and test/ "
                               f"inside, or a .tar.gz of one); valid names: {', '.join(dataset_forms())}")
        return base, option
    return base, parse(option)


def validate_dataset_name(name: str) -> None:
    """Check a dataset name without touching the file system (done once per CLI value)."""
    _parse_dataset_name(name)


def label_noise_rate(name: str) -> float | None:
    """The share of flipped train labels a dataset name asks for (`digits-noisy[:<rate>]`), else None."""
    base, rate = _parse_dataset_name(name)
    return (DEFAULT_LABEL_NOISE if rate is None else rate) if base == NOISY_DIGITS else None


def check_dataset(spec: DatasetSpec) -> None:
    """Cheap checks that need the file system, done before any run is created."""
    base, option = _parse_dataset_name(spec.name)
    check = DATASETS.declared(base).get("check")
    if check is not None:
        check(spec, option)


def load_dataset(spec: DatasetSpec | str, device: str | torch.device = "cpu") -> ImageData:
    if isinstance(spec, str):
        spec = DatasetSpec(name=spec)
    base, option = _parse_dataset_name(spec.name)
    raw = DATASETS.get(base)(spec, option)
    if not isinstance(raw, RawImages):
        raise DatasetError(f"dataset {base!r}'s loader returned {type(raw).__name__}, not data.RawImages")
    return _build(spec, raw.x_train, raw.y_train, raw.x_test, raw.y_test, raw.classes, raw.augment,
                  label_noise=raw.label_noise).to(device)


def _noise_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = float("nan")
    if not 0.0 <= rate < 0.5:  # NaN fails too; at 0.5 a flipped class would outnumber the true one
        raise DatasetError(f"{NOISY_DIGITS} takes a label-noise rate, a fraction in [0, 0.5) (not a percentage): "
                           f"use '{NOISY_DIGITS}' ({DEFAULT_LABEL_NOISE:g}) or for example '{NOISY_DIGITS}:0.1'; "
                           f"got {text[:20]!r}")
    return rate


@DATASETS.register("digits")
def _digits(spec: DatasetSpec, option: None) -> RawImages:
    """scikit-learn's 8x8 digits (shipped, offline). No crop or flip: flipping a 2 or cropping an
    8x8 digit changes what it is."""
    return RawImages(*_load_digits(), augment=False)


@DATASETS.register(NOISY_DIGITS, form=f"{NOISY_DIGITS}[:<rate>]", option=_noise_rate)
def _noisy_digits(spec: DatasetSpec, rate: float | None) -> RawImages:
    """digits with a seeded share of train labels flipped (default 0.1): see the module docstring."""
    return RawImages(*_load_digits(), augment=False, label_noise=DEFAULT_LABEL_NOISE if rate is None else rate)


@DATASETS.register("cifar10")
def _cifar10(spec: DatasetSpec, option: None) -> RawImages:
    return RawImages(*_load_torchvision_cifar(spec), augment=True)


@DATASETS.register("cifar100")
def _cifar100(spec: DatasetSpec, option: None) -> RawImages:
    return RawImages(*_load_torchvision_cifar(spec), augment=True)


@DATASETS.register("imagefolder", form="imagefolder:<path>", option=PATH_OPTION, option_required=True,
                   check=lambda spec, path: _imagefolder_root(Path(path)))
def _imagefolder(spec: DatasetSpec, path: str) -> RawImages:
    """A tree with train/<class>/* and test/<class>/* (or a .tar.gz of one). Crop+flip from 16x16 up."""
    x_tr, y_tr, x_te, y_te, classes = _load_imagefolder(Path(path))
    return RawImages(x_tr, y_tr, x_te, y_te, classes, augment=x_tr.shape[-1] >= 16)


def _build(spec, x_tr, y_tr, x_te, y_te, classes, augment, *, label_noise: float = 0.0) -> ImageData:
    source_index = np.arange(len(y_tr))
    rng = np.random.RandomState(spec.seed)
    if spec.subset is not None:
        if spec.subset > len(y_tr):
            raise DatasetError(f"subset={spec.subset} is larger than the train split ({len(y_tr)} examples)")
        source_index = np.sort(rng.choice(len(y_tr), size=spec.subset, replace=False))
    val_index = None
    if spec.val_fraction > 0:
        n_val = int(round(spec.val_fraction * len(source_index)))
        perm = rng.permutation(len(source_index))
        val_index = np.sort(source_index[perm[:n_val]])
        source_index = np.sort(source_index[perm[n_val:]])
    x_train, y_train = x_tr[source_index], y_tr[source_index].astype(np.int64)
    flipped = clean = None
    if label_noise > 0:  # train only, after the validation carve-out: validation and test labels stay clean
        flip_rng = np.random.RandomState([spec.seed, 1])  # its own stream: the subset and split do not move
        flipped = np.sort(flip_rng.choice(len(y_train), size=int(round(label_noise * len(y_train))), replace=False))
        clean = y_train[flipped].copy()
        n_classes = len(classes)
        y_train = y_train.copy()
        y_train[flipped] = (clean + flip_rng.randint(1, n_classes, size=len(flipped))) % n_classes  # never itself
    train = Split(torch.from_numpy(np.ascontiguousarray(x_train)), torch.from_numpy(y_train.astype(np.int64)),
                  torch.arange(len(y_train), dtype=torch.long))
    test = Split(torch.from_numpy(np.ascontiguousarray(x_te)), torch.from_numpy(y_te.astype(np.int64)),
                 torch.arange(len(y_te), dtype=torch.long))
    val = None
    if val_index is not None:
        val = Split(torch.from_numpy(np.ascontiguousarray(x_tr[val_index])),
                    torch.from_numpy(y_tr[val_index].astype(np.int64)), torch.from_numpy(val_index.astype(np.int64)))
    xf = train.x.float().div_(255.0)
    mean = xf.mean(dim=(0, 2, 3))
    std = xf.std(dim=(0, 2, 3)).clamp_min(1e-3)
    h = hashlib.sha256()
    for arr in (x_train, y_train.astype(np.int64), x_te, y_te.astype(np.int64)):
        h.update(np.ascontiguousarray(arr).tobytes())
    return ImageData(spec=spec, train=train, test=test, val=val, classes=list(classes), mean=mean, std=std,
                     augment=augment, source_index=source_index, digest=h.hexdigest(), flipped_ids=flipped,
                     clean_labels=clean)


def _load_digits():
    from sklearn.datasets import load_digits  # ships with scikit-learn, which MLflow depends on

    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]  # 0..16 -> 0..255
    y = bunch.target.astype(np.int64)
    # A fixed 80/20 split (seed 0, independent of the spec's seed): the test set never moves.
    perm = np.random.RandomState(0).permutation(len(y))
    n_test = len(y) // 5
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx], [str(c) for c in range(10)]


def _load_torchvision_cifar(spec: DatasetSpec):
    import torchvision

    cls = torchvision.datasets.CIFAR10 if spec.name == "cifar10" else torchvision.datasets.CIFAR100
    root = spec.root or os.environ.get("MLFLOW_UNLEARN_DATA", "./data")
    try:
        tr = cls(root, train=True, download=spec.download)
        te = cls(root, train=False, download=spec.download)
    except RuntimeError as exc:
        raise DatasetError(
            f"{spec.name} not found under root {root!r} ({exc}); pass download=True when online, "
            f"set root to a folder that holds it, or use imagefolder:<path> for a local copy"
        ) from None
    to_nchw = lambda a: np.ascontiguousarray(np.asarray(a, dtype=np.uint8).transpose(0, 3, 1, 2))
    return to_nchw(tr.data), np.asarray(tr.targets), to_nchw(te.data), np.asarray(te.targets), list(tr.classes)


def _cache_dir() -> Path:
    return Path(os.environ.get("MLFLOW_UNLEARN_CACHE", Path.home() / ".cache" / "mlflow_unlearn"))


def _imagefolder_root(path: Path) -> Path:
    """The folder that holds train/ and test/; a .tar.gz is unpacked once into the cache."""
    if not path.exists():
        raise DatasetError(f"imagefolder path {str(path)!r} does not exist")
    if path.is_file():
        if not path.name.endswith((".tar.gz", ".tgz", ".tar")):
            raise DatasetError(f"imagefolder path {str(path)!r} is a file but not a .tar.gz archive of a tree")
        st = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
        out = _cache_dir() / f"extract-{key}"
        if not (out / ".complete").exists():
            out.mkdir(parents=True, exist_ok=True)
            with tarfile.open(path) as tf:
                tf.extractall(out, filter="data")
            (out / ".complete").touch()
        path = out
    for candidate in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    missing = [d for d in ("train", "test") if not (path / d).is_dir()]
    raise DatasetError(
        f"imagefolder path {str(path)!r} has no {' or '.join(d + '/' for d in missing)} folder; expected "
        f"{path}/train/<class>/<image> and {path}/test/<class>/<image>"
    )


def _read_image_tree(folder: Path, classes: list[str]):
    from PIL import Image

    xs, ys = [], []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (folder / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for p in files:
            with Image.open(p) as im:
                xs.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            ys.append(label)
    if not xs:
        raise DatasetError(f"no images under {folder}")
    shapes = {a.shape for a in xs}
    if len(shapes) > 1:
        raise DatasetError(f"images under {folder} differ in size ({sorted(shapes)[:3]}...); resize them to one size first")
    return np.stack(xs).transpose(0, 3, 1, 2).copy(), np.asarray(ys, dtype=np.int64)


def _load_imagefolder(path: Path):
    root = _imagefolder_root(path)
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{root / 'train'} has no class folders")
    test_classes = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
    if test_classes != classes:
        raise DatasetError(f"class folders differ between {root / 'train'} and {root / 'test'}: {classes} vs {test_classes}")
    # Decoding 60k JPEGs takes tens of seconds: keep a decoded copy keyed by the tree's listing.
    listing = hashlib.sha256()
    for split in ("train", "test"):
        for cls in classes:
            d = root / split / cls
            listing.update(f"{split}/{cls}:{len(os.listdir(d))}:{d.stat().st_mtime_ns}".encode())
    cache = _cache_dir() / f"imagefolder-{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]}-{listing.hexdigest()[:12]}.npz"
    if cache.exists():
        z = np.load(cache)
        return z["x_tr"], z["y_tr"], z["x_te"], z["y_te"], classes
    x_tr, y_tr = _read_image_tree(root / "train", classes)
    x_te, y_te = _read_image_tree(root / "test", classes)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, x_tr=x_tr, y_tr=y_tr, x_te=x_te, y_te=y_te)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only home only costs the decode next time
    return x_tr, y_tr, x_te, y_te, classes


def augment_batch(x: torch.Tensor, *, pad: int = 4, flip: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with `pad` pixels of zero padding and random horizontal flip, for a whole batch.

    `x` is a normalised float batch [N, C, H, W], so zero padding is the mean colour. One gather
    over precomputed index grids; no Python loop over images.
    """
    n, c, h, w = x.shape
    dev = x.device
    if pad > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
        rows = (dy[:, None] + torch.arange(h, device=dev)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=dev)[None, :])[:, None, None, :]
        x = padded[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(n, device=dev, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x
