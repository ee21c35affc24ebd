"""Model benchmark: label efficiency, featurization speed, training time. Prints markdown tables.

    python benchmarks/bench_model.py            # full run (a few minutes on 2 CPU cores)
    python benchmarks/bench_model.py --quick    # smaller sets, one repeat

Datasets (all offline, shipped inside installed packages):
- ``digits``: scikit-learn's 8x8 handwritten digits (10 classes), rendered as RGB images;
- ``textures``: scikit-image's brick / grass / gravel photographs cut into 32 px tiles (3 classes);
- ``lfw``: scikit-image's LFW subset, 100 faces vs 100 non-faces (2 classes).

For each label budget, a random labeled subset is drawn (same draw for every method) and the
rest of the set is the test set. Methods: our head (``train_model``, default settings) on
EfficientNet-Lite0 embeddings; scikit-learn logistic regression on the same embeddings; logistic
regression on raw pixels.
"""

from __future__ import annotations

import argparse
import copy
import io
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.logs import quiet_third_party
from backend.model import EmbeddingCache, build_backbone, featurize, train_model
from backend.model.backbones import TorchBackbone
from backend.settings import ModelSettings

BUDGETS = (20, 50, 100, 200, 300)
TRAIN_SIZES = (100, 1_000, 10_000)
LITE0_MFLOPS = 2 * 407  # ~407 M multiply-adds per 224 px image (EfficientNet-Lite0)


@dataclass(frozen=True)
class ImageSet:
    name: str
    images: list[bytes]  # PNG bytes, as the loop would fetch them
    labels: np.ndarray  # (n,)
    pixels: np.ndarray  # (n, p) raw pixels for the pixel baseline


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def digits_set(limit: int | None) -> ImageSet:
    from sklearn.datasets import load_digits

    digits = load_digits()
    n = len(digits.target) if limit is None else limit
    ink = (255 - digits.images[:n] * 255 / 16).astype(np.uint8)  # dark ink on white paper
    images = [_png(np.kron(img, np.ones((4, 4), np.uint8))) for img in ink]  # 32 px, crisp edges
    return ImageSet("digits", images, digits.target[:n], digits.data[:n] / 16.0)


def textures_set(limit: int | None, tile: int = 32) -> ImageSet:
    from skimage import data

    images, labels, pixels = [], [], []
    for label, load in enumerate((data.brick, data.grass, data.gravel)):
        photo = load()
        for top in range(0, photo.shape[0] - tile + 1, tile):
            for left in range(0, photo.shape[1] - tile + 1, tile):
                patch = photo[top : top + tile, left : left + tile]
                images.append(_png(patch))
                labels.append(label)
                pixels.append(patch.ravel() / 255.0)
    order = np.random.default_rng(0).permutation(len(labels))[:limit]
    return ImageSet(
        "textures",
        [images[i] for i in order],
        np.asarray(labels)[order],
        np.asarray(pixels)[order],
    )


def lfw_set() -> ImageSet:
    from skimage import data

    faces = data.lfw_subset()  # first 100 are faces, last 100 are not
    images = [_png((f * 255).astype(np.uint8)) for f in faces]
    labels = np.array([1] * 100 + [0] * 100)
    return ImageSet("lfw faces", images, labels, faces.reshape(len(faces), -1))


def embed_set(dataset: ImageSet, backbone: TorchBackbone, cache_dir: Path) -> np.ndarray:
    items = [(i, (lambda data=data: data)) for i, data in enumerate(dataset.images)]
    result = featurize(items, backbone, EmbeddingCache(cache_dir), batch_size=8, log_every=0)
    if result.failures:
        raise RuntimeError(f"{len(result.failures)} images failed: {result.failures}")
    return np.stack([result.embeddings[i] for i in range(len(items))])


def _logreg_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(train_x, train_y)
    return float((model.predict(test_x) == test_y).mean())


def accuracy_rows(
    dataset: ImageSet, embeddings: np.ndarray, repeats: int, settings: ModelSettings
) -> list[list[str]]:
    classes = [str(c) for c in range(int(dataset.labels.max()) + 1)]
    rows = []
    for budget in BUDGETS:
        if budget > len(dataset.labels) - 50:
            continue
        scores: dict[str, list[float]] = {"head": [], "lr_emb": [], "lr_pix": []}
        for seed in range(repeats):
            chosen = np.random.default_rng(seed).permutation(len(dataset.labels))
            train, test = chosen[:budget], chosen[budget:]
            y = dataset.labels
            if len(np.unique(y[train])) < 2:
                continue
            model = train_model(
                embeddings[train], y[train], classes=classes, multilabel=False, settings=settings
            )
            scores["head"].append(
                float((model.predict_proba(embeddings[test]).argmax(1) == y[test]).mean())
            )
            scores["lr_emb"].append(
                _logreg_accuracy(embeddings[train], y[train], embeddings[test], y[test])
            )
            scores["lr_pix"].append(
                _logreg_accuracy(dataset.pixels[train], y[train], dataset.pixels[test], y[test])
            )
        rows.append(
            [dataset.name, str(budget)]
            + [f"{np.mean(scores[k]):.3f}" for k in ("head", "lr_emb", "lr_pix")]
        )
    return rows


def _naive_embed(module: torch.nn.Module, tensors: Sequence[torch.Tensor]) -> None:
    """The starting point: one image per forward, NCHW, autograd bookkeeping off via no_grad."""
    with torch.no_grad():
        for tensor in tensors:
            module(tensor[None])


def _throughput(run: Callable[[], None], n_images: int, repeats: int = 2) -> float:
    run()  # warm up (oneDNN primitive creation)
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = max(best, n_images / (time.perf_counter() - started))
    return best


def matmul_gflops() -> float:
    """Sustained float32 GEMM throughput of this machine: the ceiling for a conv network."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    started, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    return 2 * 1024**3 * reps / (time.perf_counter() - started) / 1e9


def _batched(backbone: TorchBackbone, batch: torch.Tensor, size: int) -> Callable[[], None]:
    def run() -> None:
        for start in range(0, len(batch), size):
            backbone.embed(batch[start : start + size])

    return run


def speed_rows(images: list[bytes], threads: int) -> list[list[str]]:
    from backend.model.featurize import decode_image

    torch.set_num_threads(threads)
    # fine_tune=True builds the network as shipped (separate batch norms and pads)
    plain = build_backbone(ModelSettings(channels_last=False, fine_tune=True))
    tensors = [plain.preprocess(decode_image(data)) for data in images]
    batch = torch.stack(tensors)
    naive = copy.deepcopy(plain.module)
    rows = [
        (
            f"before: batch 1, NCHW, no_grad, as shipped, {threads} threads",
            _throughput(lambda: _naive_embed(naive, tensors), len(tensors)),
        )
    ]
    configs = [
        (8, False, False),
        (8, True, False),
        (8, True, True),
        (16, True, True),
        (32, True, True),
    ]
    for size, channels_last, fused in configs:
        backbone = build_backbone(ModelSettings(channels_last=channels_last, fine_tune=not fused))
        label = (
            f"batch {size}, {'channels_last' if channels_last else 'NCHW'}, inference_mode, "
            f"{'BN folded' if fused else 'as shipped'}, {threads} threads"
        )
        rows.append((label, _throughput(_batched(backbone, batch, size), len(batch))))
    torch.set_num_threads(1)
    rows.append(
        (
            "(reference: batch 8, channels_last, BN folded, 1 thread)",
            _throughput(_batched(backbone, batch, 8), len(batch)),
        )
    )
    torch.set_num_threads(threads)
    items = [(i, (lambda data=data: data)) for i, data in enumerate(images)]

    def end_to_end() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            featurize(items, backbone, EmbeddingCache(Path(tmp)), batch_size=8, log_every=0)

    rows.append(
        (
            "after, end to end: featurize(), batch 8, incl. decode, resize, cache",
            _throughput(end_to_end, len(items)),
        )
    )
    return [[label, f"{rate:.1f}"] for label, rate in rows]


def train_rows(sizes: Sequence[int], settings: ModelSettings) -> list[list[str]]:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 1280))
    rows = []
    for n in sizes:
        y = np.arange(n) % 10
        x = (centers[y] + rng.normal(scale=3.0, size=(n, 1280))).astype(np.float32)
        started = time.perf_counter()
        model = train_model(
            x, y, classes=[str(c) for c in range(10)], multilabel=False, settings=settings
        )
        seconds = time.perf_counter() - started
        rows.append([f"{n:,}", f"{seconds:.2f}", f"{model.metrics['accuracy']:.3f}"])
    return rows


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sets, one repeat")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", type=Path, help="embedding cache to reuse between runs")
    parser.add_argument("--skip-speed", action="store_true", help="skip the featurization timing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    quiet_third_party()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*treespec.*LeafSpec", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    repeats = 1 if args.quick else 3
    settings = ModelSettings(num_threads=args.threads)
    backbone = build_backbone(settings)
    mode = "quick" if args.quick else "full"
    load = os.getloadavg()[0]
    print(f"# bench_model ({mode}; torch {torch.__version__}; {args.threads} threads)\n")
    print(f"1-minute load average at start: {load:.1f} on {os.cpu_count()} cores\n")
    if not args.skip_speed:
        speed_section(digits_set(32 if args.quick else 96).images, args.threads)
    accuracy_section(args, backbone, settings, repeats)
    train_section(args, settings)


def speed_section(speed_images: list[bytes], threads: int) -> None:
    gflops = matmul_gflops()
    print(f"## Featurization speed, EfficientNet-Lite0 at 224 px ({len(speed_images)} images)\n")
    ceiling = gflops * 1e3 / LITE0_MFLOPS
    print(f"float32 GEMM here: {gflops:.0f} GFLOP/s, so at most ~{ceiling:.0f} images/s\n")
    print(table(["configuration", "images/s"], speed_rows(speed_images, threads)) + "\n")


def accuracy_section(
    args: argparse.Namespace, backbone: TorchBackbone, settings: ModelSettings, repeats: int
) -> None:
    sets = [
        digits_set(600 if args.quick else None),
        textures_set(450 if args.quick else None),
        lfw_set(),
    ]
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache or Path(tmp)
        for dataset in sets:
            started = time.perf_counter()
            embeddings = embed_set(dataset, backbone, cache_dir)
            seconds = time.perf_counter() - started
            print(
                f"embedded {dataset.name}: {len(dataset.labels)} in {seconds:.1f}s", file=sys.stderr
            )
            rows += accuracy_rows(dataset, embeddings, repeats, settings)
    print(f"## Test accuracy by number of random labels (mean of {repeats} draw(s))\n")
    print(
        table(
            [
                "dataset",
                "labels",
                "our head (Lite0 emb.)",
                "LogReg (Lite0 emb.)",
                "LogReg (raw pixels)",
            ],
            rows,
        )
        + "\n"
    )


def train_section(args: argparse.Namespace, settings: ModelSettings) -> None:
    sizes = TRAIN_SIZES[:2] + ((3_000,) if args.quick else (10_000,))
    print("## Training time per cycle (5 fold heads + 5 bootstrap heads + main head; d=1280)\n")
    print(table(["labels", "seconds", "cv accuracy"], train_rows(sizes, settings)))


if __name__ == "__main__":
    main()
