"""Benchmark of `cit audit`: image reading + hashing rate on real files, and the pair search at
data-set scale. Prints one JSON object.

    python scripts/bench_audit.py [--folder DIR] [--images 300] [--pairs-n 6000] [--embeddings-n 20000]

The embedding stage's candidate search (faiss: exact up to ``EXACT_MAX`` vectors, growing as N^2 in
time; an HNSW graph above, about N log N) is timed on random unit vectors.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from toolkit.cli.audit import read_image
from toolkit.data.audit import describe_images, near_duplicate_pairs
from toolkit.data.audit.embeddings import candidate_pairs
from toolkit.data.files import find_image_files


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=str(here.parent / "shared" / "data" / "kermany_cxr_224"))
    parser.add_argument("--images", type=int, default=300, help="images to read and hash")
    parser.add_argument("--pairs-n", type=int, default=6000, help="hashes in the all-pairs search")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--embeddings-n", type=int, default=20000, help="random 1280-d embeddings to search")
    args = parser.parse_args()

    files = [str(p) for p in find_image_files(args.folder)[: args.images]]
    start = time.perf_counter()
    described = describe_images(files, read_image, workers=args.workers)
    read_s = time.perf_counter() - start

    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=(args.pairs_n, 8), dtype=np.uint64)
    start = time.perf_counter()
    pairs = near_duplicate_pairs(hashes, threshold=4, transforms=True)
    pairs_s = time.perf_counter() - start
    vectors = rng.normal(size=(args.embeddings_n, 1280)).astype(np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    candidates = candidate_pairs(vectors)
    embed_s = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "folder": args.folder,
        "images": len(files),
        "unreadable": sum("error" in d for d in described),
        "workers": args.workers,
        "read_and_hash_ms_per_image": round(1000 * read_s / max(len(files), 1), 2),
        "pair_search_n": args.pairs_n,
        "pair_search_comparisons": args.pairs_n * (args.pairs_n - 1) // 2 * 8,
        "pair_search_s": round(pairs_s, 2),
        "pairs_found_in_random_hashes": len(pairs),
        "embedding_search_n": args.embeddings_n,
        "embedding_search_s": round(embed_s, 2),
        "embedding_search_peak_rss_mib": round(peak_mib, 1),
        "embedding_search_rss_growth_mib": round(peak_mib - before / 1024, 1),
        "embedding_candidates_in_random_vectors": len(candidates),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
