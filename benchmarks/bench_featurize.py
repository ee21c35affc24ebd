"""Featurization benchmark: images/s of the backbone at 224 px on each runtime and precision, the
cosine of every embedding to torch eager fp32, decode+preprocess ms per image, and end to end
(image bytes to cached embedding, through ``featurize`` with its thread pool) for JPEG 640x480
and PNG inputs. The baseline, torch eager fp32, is measured in the same run.

    python benchmarks/bench_featurize.py --quick      # 64 images, one repeat
    python benchmarks/bench_featurize.py              # 256 images, best of 3

Images are scikit-image's sample photographs (shipped with the package), cut at random offsets,
scales and flips to 640x480, so they compress like photographs. Threads are pinned with
``--threads`` (torch intra-op, OpenVINO, BLAS); the decode pool uses ``--decode-workers``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from backend.model.backbones import TorchBackbone

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GOAL_IMG_S = 100.0
GOAL_SPEEDUP = 5.0


def pin_threads(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def photos(n: int, fmt: str, seed: int = 0) -> list[bytes]:
    """``n`` 640x480 crops of scikit-image's sample photographs, encoded as JPEG or PNG."""
    from PIL import Image
    from skimage import data

    sources = [
        data.astronaut(),
        data.chelsea(),
        data.coffee(),
        data.rocket(),
        np.stack([data.camera()] * 3, axis=-1),
        data.immunohistochemistry(),
    ]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        src = Image.fromarray(sources[i % len(sources)])
        scale = rng.uniform(1.3, 2.2)
        big = src.resize((int(640 * scale), int(480 * scale)), Image.Resampling.BILINEAR)
        left = int(rng.integers(0, big.width - 640 + 1))
        top = int(rng.integers(0, big.height - 480 + 1))
        crop = big.crop((left, top, left + 640, top + 480))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        if fmt == "jpeg":
            crop.save(buffer, format="JPEG", quality=90)
        else:
            crop.save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def best_of(run: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of ``repeats`` runs (after one warm-up)."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def pil_image(data: bytes) -> Any:
    """The image as plain PIL opens it: the baseline's decoder (featurize reads common PNGs
    itself, :func:`backend.model.png.decode_png`)."""
    from PIL import Image

    return Image.open(io.BytesIO(data))


def decode_section(
    jpeg: list[bytes], png: list[bytes], base: TorchBackbone, eager: TorchBackbone, n: int
) -> None:
    """Decode + preprocess, one thread: our uint8 path beside PIL's decoder and beside
    torch-style normalization."""
    from backend.model.featurize import decode_image

    rows = []
    for name, images in (("JPEG 640x480", jpeg), ("PNG 640x480", png)):
        seconds = best_of(lambda imgs=images: [base.pixels(decode_image(d)) for d in imgs], 1)
        pil = best_of(lambda imgs=images: [base.pixels(pil_image(d)) for d in imgs], 1)
        torch_style = best_of(lambda imgs=images: [eager.preprocess(pil_image(d)) for d in imgs], 1)
        rows.append(
            [
                name,
                f"{1000 * seconds / n:.2f}",
                f"{1000 * pil / n:.2f}",
                f"{1000 * torch_style / n:.2f}",
            ]
        )
    print_table(
        [
            "input",
            "labelloop: decode+resize to uint8 (ms/img)",
            "baseline: PIL's decoder, same resize",
            "PIL + normalize to a torch tensor",
        ],
        rows,
        "decode + preprocess, one thread",
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 images, one repeat")
    parser.add_argument("--images", type=int, default=None, help="images per set (256)")
    parser.add_argument("--threads", type=int, default=2, help="inference threads (2)")
    parser.add_argument("--decode-workers", type=int, default=4, help="featurize's thread pool")
    parser.add_argument("--batch", type=int, default=16, help="images per forward pass")
    parser.add_argument("--int8", action="store_true", help="also convert and time int8 (nncf)")
    parser.add_argument("--cache-tasks", type=int, default=None, help="cache load size (100000)")
    parser.add_argument("--skip-speed", action="store_true", help="only the cache load table")
    args = parser.parse_args(argv)
    n = args.images or (64 if args.quick else 256)
    repeats = 1 if args.quick else 3
    pin_threads(args.threads)
    if args.skip_speed:
        cache_section(args.cache_tasks or (20_000 if args.quick else 100_000), 1280)
        return

    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from backend.model.backbones import build_backbone
    from backend.model.cache import EmbeddingCache
    from backend.model.engines import RuntimeBackbone, cosines
    from backend.model.featurize import decode_image, featurize
    from backend.settings import ModelSettings

    print(
        f"# featurize benchmark: {n} images per set, {args.threads} inference threads, "
        f"{args.decode_workers} decode workers, batch {args.batch}, {os.cpu_count()} CPUs "
        f"visible (load average {os.getloadavg()[0]:.1f})"
    )
    jpeg, png = photos(n, "jpeg"), photos(n, "png", seed=1)
    eager = build_backbone(ModelSettings(fine_tune=True, channels_last=False, num_threads=0))
    base = build_backbone(ModelSettings(num_threads=0))  # batch norms folded, channels-last

    decode_section(jpeg, png, base, eager, n)

    # -- forward pass only, on the same pixels
    pixels = np.stack([base.pixels(decode_image(d)) for d in jpeg])
    batches = [pixels[i : i + args.batch] for i in range(0, n, args.batch)]

    def forward(embed: Callable[[np.ndarray], np.ndarray]) -> Callable[[], np.ndarray]:
        return lambda: np.concatenate([embed(b) for b in batches])

    reference = forward(eager.embed_pixels)()
    eager_s = best_of(forward(eager.embed_pixels), repeats)
    rows = [["torch eager fp32 (baseline)", f"{n / eager_s:.1f}", "1.00x", "1.000000", "-"]]
    contenders: dict[str, object] = {"torch fused channels-last fp32": base}
    with tempfile.TemporaryDirectory() as tmp:
        for runtime, precision in (
            ("openvino", "fp32"),
            ("openvino", "bf16"),
            ("onnxruntime", "fp32"),
            *([("openvino", "int8")] if args.int8 else []),
        ):
            settings = ModelSettings(
                runtime=runtime, precision=precision, device="cpu", num_threads=args.threads
            )
            wrapped = RuntimeBackbone(base, settings, Path(tmp) / "runtimes")
            try:
                wrapped.embed_pixels(pixels if precision == "int8" else batches[0])
            except Exception as exc:  # a runtime that is not installed is reported, not fatal
                rows.append([f"{runtime} {precision}", "-", "-", "-", f"unavailable: {exc}"[:80]])
                continue
            contenders[f"{runtime} {precision}"] = wrapped
        for label, backbone in contenders.items():
            embed = backbone.embed_pixels  # type: ignore[attr-defined]
            seconds = best_of(forward(embed), repeats)
            cos = cosines(reference, forward(embed)())
            check = getattr(backbone, "check", None)
            rows.append(
                [
                    label,
                    f"{n / seconds:.1f}",
                    f"{eager_s / seconds:.2f}x",
                    f"{cos.min():.6f}",
                    f"{check.min_cosine:.6f} on {check.images}" if check else "-",
                ]
            )
        print_table(
            ["forward pass (224 px)", "img/s", "vs eager", "min cosine to eager", "stored check"],
            rows,
            f"forward pass only, {n} JPEG-sourced images",
        )

        # -- end to end: bytes -> embedding through featurize (fetch from memory, cache miss)
        chosen = RuntimeBackbone(
            base, ModelSettings(num_threads=args.threads), Path(tmp) / "runtimes"
        )
        chosen.embed_pixels(batches[0])
        rows = []
        for name, images in (("JPEG 640x480", jpeg), ("PNG 640x480", png)):
            items = [(i, (lambda d=d: d)) for i, d in enumerate(images)]
            ref_vectors = eager.embed_pixels(np.stack([base.pixels(pil_image(d)) for d in images]))
            for label, backbone, workers in (
                ("torch eager fp32, no pool (baseline)", eager, 0),
                ("labelloop default", chosen, args.decode_workers),
            ):
                timings = []
                result = None
                for r in range(repeats):
                    cache = EmbeddingCache(Path(tmp) / f"cache-{name[:3]}-{label[:5]}-{r}")
                    started = time.perf_counter()
                    if workers == 0:
                        vectors = [
                            eager.embed_pixels(
                                np.stack(
                                    [base.pixels(pil_image(d)) for d in images[i : i + args.batch]]
                                )
                            )
                            for i in range(0, n, args.batch)
                        ]
                        got = np.concatenate(vectors)
                    else:
                        result = featurize(
                            items,
                            backbone,
                            cache,
                            batch_size=args.batch,
                            workers=workers,
                            log_every=0,
                        )
                        got = np.stack([result.embeddings[i] for i in range(n)])
                    timings.append(time.perf_counter() - started)
                cos = cosines(ref_vectors, got)
                rows.append([name, label, f"{n / min(timings):.1f}", f"{cos.min():.6f}"])
            base_rate = float(rows[-2][2])
            rows[-1].append(f"{float(rows[-1][2]) / base_rate:.2f}x")
            rows[-2].append("1.00x")
        chosen_check = chosen.check
        print_table(
            ["input", "path", "img/s end to end", "min cosine to eager", "vs eager"],
            rows,
            "end to end (bytes -> embedding, cache empty): labelloop default = "
            + (
                f"{chosen_check.runtime} {chosen_check.precision}" if chosen_check else "torch fp32"
            ),
        )
    cache_section(args.cache_tasks or (20_000 if args.quick else 100_000), eager.dim)
    print(
        f"\ngoal: >= {GOAL_IMG_S:.0f} img/s end to end with cosine >= 0.999 and >= "
        f"{GOAL_SPEEDUP:.0f}x torch eager on 2 cores (the machine may be shared: compare ratios)"
    )


def cache_section(n: int, dim: int) -> None:
    """Seconds to load ``n`` cached embeddings into one matrix (the cycle's read, in task order,
    against the per-hash dict stacked into one, and one ``.npy`` file per embedding, the layout
    before: timed on at most 5,000 files and scaled); then the warm featurize stage of ``n``
    tasks through the store (nothing fetched), with the cycle's collector pause and without."""
    from backend.model.cache import EmbeddingCache

    rng = np.random.default_rng(0)
    shas = [f"{i:064x}" for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(Path(tmp))
        for start in range(0, n, 10_000):
            block = rng.normal(size=(min(10_000, n - start), dim)).astype(np.float32)
            cache.put_many(dict(zip(shas[start : start + 10_000], block, strict=True)), "bb")
        rows = []
        for name, load in (
            ("cache, the cycle's read into one matrix (take_in_order)", _take_in_order),
            ("cache, per-hash dict then stacked (before; baseline)", _dict_then_stack),
        ):
            for when in ("first load", "next load"):  # a new cache object each time
                started = time.perf_counter()
                matrix = load(EmbeddingCache(Path(tmp)), shas)
                rows.append([f"{name}, {when}", f"{time.perf_counter() - started:.2f}"])
                assert matrix.shape == (n, dim)
                del matrix
        files = min(n, 5_000)
        folder = Path(tmp) / "per-file"
        for sha in shas[:files]:
            (folder / sha[:2]).mkdir(parents=True, exist_ok=True)
            np.save(folder / sha[:2] / f"{sha}.npy", rng.normal(size=dim).astype(np.float32))
        started = time.perf_counter()
        loaded = [np.load(folder / sha[:2] / f"{sha}.npy") for sha in shas[:files]]
        per_file = (time.perf_counter() - started) * n / files
        assert len(loaded) == files
        rows.append(["one .npy per embedding (before; baseline)", f"{per_file:.2f} (scaled)"])
        print_table(
            ["layout", f"seconds to load {n:,} x {dim} embeddings"],
            rows,
            "embedding cache load into one matrix (page cache warm; a first load also pays for "
            "touching fresh memory)",
        )
        stage_section(Path(tmp), shas)


def _take_in_order(cache: Any, shas: list[str]) -> np.ndarray:
    hit, block = cache.take_in_order(shas, "bb")
    assert hit.all()
    return np.asarray(block)


def _dict_then_stack(cache: Any, shas: list[str]) -> np.ndarray:
    found = cache.get_many(shas, "bb")
    return np.stack([found[sha] for sha in shas])


class _CachedOnly:
    """A backbone for the warm stage: every vector is cached, so nothing may reach it."""

    name, dim = "bb", 1280

    def pixels(self, image: object) -> np.ndarray:
        raise AssertionError("the warm stage decoded an image")

    def embed_pixels(self, batch: np.ndarray) -> np.ndarray:
        raise AssertionError("the warm stage ran the backbone")


def stage_section(cache_dir: Path, shas: list[str]) -> None:
    """The cycle's featurize stage (``embed_tasks``) on ``len(shas)`` tasks whose images the
    store remembers and the cache holds: known hashes, the cache read and the bookkeeping."""
    from sqlalchemy import insert, select

    from backend.loop.cycle import CollectorPause
    from backend.loop.embed import embed_tasks
    from backend.settings import load_settings
    from backend.store.db import Store
    from backend.store.models import Project, Task, TaskImage

    n = len(shas)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "embeddings").symlink_to(cache_dir)
        base = load_settings(None)
        settings = base.model_copy(
            update={"store": base.store.model_copy(update={"data_dir": Path(tmp)})}
        )
        store = Store(f"sqlite:///{Path(tmp) / 'bench.db'}")
        store.upgrade()
        refs = [f"/data/local-files/?d=images/{i}.jpg" for i in range(n)]
        with store.session() as session:
            session.add(Project(id=1, title="bench"))
            session.flush()
            session.execute(
                insert(Task),
                [{"id": i + 1, "project_id": 1, "image_ref": r, "data": {"image": r}}
                 for i, r in enumerate(refs)],
            )  # fmt: skip
            session.execute(
                insert(TaskImage),
                [{"task_id": i + 1, "project_id": 1, "sha": shas[i], "backbone": "bb",
                  "image_ref": r} for i, r in enumerate(refs)],
            )  # fmt: skip
        with store.session() as session:
            tasks = list(session.scalars(select(Task).where(Task.project_id == 1)))
            session.expunge_all()

        def fetch(ref: str) -> bytes:
            raise AssertionError(f"the warm stage fetched {ref}")

        rows = []
        variants = (("collector paused (as the runner runs cycles)", True), ("collector on", False))
        for name, pause in variants:
            times = []
            for _ in range(3):
                started = time.perf_counter()
                with CollectorPause() if pause else contextlib.nullcontext():
                    result, _ = embed_tasks(settings, store, tasks, fetch, backbone=_CachedOnly())
                times.append(time.perf_counter() - started)
                assert len(result.embeddings) == n and result.n_fetched == 0
                del result
            rows.append([name] + [f"{t:.2f}" for t in times])
        store.dispose()
    print_table(
        ["variant", "first", "second", "third"],
        rows,
        f"warm featurize stage, {n:,} tasks through the store (sqlite), nothing fetched; seconds",
    )


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str) -> None:
    from benchmarks._common import print_table as table

    table(headers, rows, title=title)


if __name__ == "__main__":
    main()
