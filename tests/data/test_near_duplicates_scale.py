"""The embedding stage at scale: the graph index (HNSW, faiss) that replaces the exact search above
``EXACT_MAX`` images finds the same planted copies, and keypoint verification in worker processes
gives what it gives in one process. Timings at 100,000 images: scripts/bench_audit.py."""

from __future__ import annotations

import numpy as np
from PIL import Image

from toolkit.data.audit import embeddings
from toolkit.data.audit.registration import REG_SIZE


def _planted(n=2000, copies=100, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[n - copies :] = x[:copies] + 0.05 * rng.normal(size=(copies, dim)).astype(np.float32)
    return x, {(i, n - copies + i) for i in range(copies)}


def test_graph_index_finds_the_planted_copies_the_exact_search_finds(monkeypatch):
    x, planted = _planted()
    exact = {(i, j) for i, j, _ in embeddings.candidate_pairs(x, k=5, min_similarity=0.9)}
    reports = []
    monkeypatch.setattr(embeddings, "EXACT_MAX", 500)  # 2,000 vectors: the HNSW path
    monkeypatch.setattr(embeddings, "QUERY_BLOCK", 1000)
    graph = {
        (i, j)
        for i, j, _ in embeddings.candidate_pairs(
            x, k=5, min_similarity=0.9, progress=lambda d, t: reports.append((d, t))
        )
    }
    assert exact == planted  # random 64-d vectors are far apart; only the copies pass 0.9
    assert graph == planted
    assert reports == [(1000, 2000), (2000, 2000)]
    assert "HNSW" in type(embeddings.neighbour_index(x)).__name__


def test_keypoint_verification_in_worker_processes_matches_one_process(shared_data):
    root = shared_data / "lc25000_lung_224" / "lung_n"
    files = sorted(root.glob("*.jpeg"))[:2]
    thumbs = {
        i: np.asarray(Image.open(p).convert("L").resize((REG_SIZE, REG_SIZE), Image.Resampling.BILINEAR))
        for i, p in enumerate(files)
    }
    thumbs[2] = np.ascontiguousarray(np.rot90(thumbs[0]))  # a turned copy: must be confirmed
    candidates = [(0, 2, 0.9), (0, 1, 0.8), (1, 2, 0.8)]
    one = embeddings.verify_candidates(candidates, thumbs, workers=1)
    two = embeddings.verify_candidates(candidates, thumbs, workers=2)
    assert one == two
    assert one[0]["inliers"] >= 50, one[0]
    assert min(abs(one[0]["angle"] - 90), abs(one[0]["angle"] - 270)) < 2, one[0]
