"""Benchmark of `cit audit`: reading and hashing real files, the pair searches at data-set scale, and
a whole audit of N generated images. Prints one JSON object.

    python scripts/bench_audit.py [--folder DIR] [--images 300] [--pairs-n 25000 50000 100000]
                                  [--embeddings-n 20000] [--synthetic 100000 --workers 2]

- ``read_and_hash_ms_per_image``: `cit audit`'s per-image work on real files (``--folder``).
- ``pair_search``: the pHash range search (faiss multi-index hashing, ``near_duplicate_pairs``) on
  random 64-bit hashes with planted copies a few bits away, at each ``--pairs-n``; ``growth`` is the
  exponent k of time ~ N^k between consecutive sizes (1 linear, 2 quadratic; N log N gives ~1.1),
  ``growth_from_first`` the same from the first size to the last.
- ``embedding_search``: the embedding stage's candidate search (faiss: exact up to ``EXACT_MAX``
  vectors, an HNSW graph above) on random unit vectors.
- ``synthetic_audit`` (``--synthetic N``): writes N grey 64 px PNGs (smooth random images) and a
  datalist splitting them 80 / 20, with one copy of every 100th image placed in the other split
  (turned or mirrored, re-encoded as JPEG); then runs `cit audit` on it as a user does (a subprocess)
  and reports its wall time, CPU time, peak memory (its largest process) and how many of the planted
  copies it found.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from toolkit.cli.audit import read_image
from toolkit.data.audit import describe_images, near_duplicate_pairs
from toolkit.data.audit.embeddings import candidate_pairs
from toolkit.data.files import find_image_files


def pair_search_series(sizes: list[int], threshold: int = 6) -> list[dict]:
    """Seconds of the pHash range search at each size, with 1 % planted copies within ``threshold`` bits."""
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        hashes = rng.integers(0, 2**64 - 1, size=(n, 8), dtype=np.uint64)
        sources = rng.integers(0, n, size=n // 100)
        for k, (src, dst) in enumerate(zip(sources, rng.integers(0, n, size=n // 100), strict=True)):
            noise = sum(1 << int(b) for b in rng.choice(64, size=k % (threshold + 1), replace=False))
            hashes[dst, k % 8] = hashes[src, 0] ^ np.uint64(noise)
        start = time.perf_counter()
        pairs = near_duplicate_pairs(hashes, threshold=threshold)
        rows.append({"n": n, "seconds": round(time.perf_counter() - start, 3), "pairs": len(pairs)})
    for before, after in zip(rows[:-1], rows[1:], strict=True):
        after["growth"] = _exponent(before, after)
    if len(rows) > 2:
        rows[-1]["growth_from_first"] = _exponent(rows[0], rows[-1])
    return rows


def _exponent(before: dict, after: dict) -> float:
    """k in time ~ N^k between two sizes."""
    return round(math.log(after["seconds"] / before["seconds"]) / math.log(after["n"] / before["n"]), 2)


def write_synthetic_set(folder: Path, n: int, seed: int = 0) -> tuple[Path, int]:
    """N smooth random grey images and a datalist; every 100th image has a copy in the other split."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list] = {"training": [], "test": []}
    planted = 0
    for i in range(n):
        grid = (rng.random((6, 6)) * 255).astype(np.uint8)
        pixels = np.asarray(
            Image.fromarray(grid).resize((64, 64), Image.Resampling.BICUBIC), dtype=np.float32
        )
        image = Image.fromarray((pixels + rng.normal(0, 4, pixels.shape)).clip(0, 255).astype(np.uint8))
        path = folder / f"{i // 1000:03d}" / f"img{i:06d}.png"
        path.parent.mkdir(exist_ok=True)
        image.save(path)
        split = "test" if i % 5 == 0 else "training"
        splits[split].append({"image": str(path), "label": i % 2, "patient_id": f"P{i}"})
        if i % 100 == 1:  # a copy in the other split: turned or mirrored, re-encoded
            copy = image.transpose([Image.Transpose.ROTATE_90, Image.Transpose.FLIP_LEFT_RIGHT][planted % 2])
            copy_path = path.with_name(f"copy{i:06d}.jpg")
            copy.save(copy_path, quality=90)
            other = "training" if split == "test" else "test"
            splits[other].append({"image": str(copy_path), "label": i % 2, "patient_id": f"C{i}"})
            planted += 1
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"labels": ["a", "b"], **splits}))
    return datalist, planted


def synthetic_audit(n: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_audit_") as tmp:
        start = time.perf_counter()
        datalist, planted = write_synthetic_set(Path(tmp) / "images", n)
        write_s = time.perf_counter() - start
        out = Path(tmp) / "audit"
        command = [
            sys.executable,
            "-m",
            "toolkit",
            "audit",
            "--datalist",
            str(datalist),
            "--out-dir",
            str(out),
            "--workers",
            str(workers),
            "--no-regroup",
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        report = json.loads((out / "audit.json").read_text())
    pairs = report["leakage"]["near_duplicates"]
    found = [(Path(p["a"]["image"]).stem[-6:], Path(p["b"]["image"]).stem[-6:]) for p in pairs]
    copies = sum(1 for a, b in found if a == b)
    return {
        "images": n + planted,
        "planted_copies": planted,
        "copies_found": copies,
        "other_pairs_found": len(pairs) - copies,
        "workers": workers,
        "write_s": round(write_s, 1),
        "audit_wall_s": round(wall, 1),
        "audit_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
        "audit_peak_rss_mib": round(after.ru_maxrss / 1024, 1),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=str(here.parent / "shared" / "data" / "kermany_cxr_224"))
    parser.add_argument("--images", type=int, default=300, help="images to read and hash")
    parser.add_argument(
        "--pairs-n",
        type=int,
        nargs="+",
        default=[25000, 50000, 100000],
        help="sizes of the pHash range search",
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--embeddings-n", type=int, default=20000, help="random 1280-d embeddings to search")
    parser.add_argument("--synthetic", type=int, default=0, help="images of the whole-audit run (0: none)")
    args = parser.parse_args()

    files = [str(p) for p in find_image_files(args.folder)[: args.images]]
    start = time.perf_counter()
    described = describe_images(files, read_image, workers=args.workers)
    read_s = time.perf_counter() - start
    result = {
        "folder": args.folder,
        "images": len(files),
        "unreadable": sum("error" in d for d in described),
        "workers": args.workers,
        "read_and_hash_ms_per_image": round(1000 * read_s / max(len(files), 1), 2),
        "pair_search": pair_search_series(args.pairs_n),
    }
    if args.embeddings_n:
        vectors = np.random.default_rng(0).normal(size=(args.embeddings_n, 1280)).astype(np.float32)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        candidates = candidate_pairs(vectors)
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["embedding_search"] = {
            "n": args.embeddings_n,
            "seconds": round(time.perf_counter() - start, 2),
            "peak_rss_mib": round(peak_mib, 1),
            "rss_growth_mib": round(peak_mib - before / 1024, 1),
            "candidates_in_random_vectors": len(candidates),
        }
    if args.synthetic:
        result["synthetic_audit"] = synthetic_audit(args.synthetic, args.workers)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
