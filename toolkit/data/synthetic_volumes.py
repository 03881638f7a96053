"""Synthetic 3D demo data: small gland-like shape volumes (no patient data), the 3D bundles' default.

Modelled loosely on AdrenalMNIST3D (binary masks of an adrenal gland, normal vs hyperplasia):
each volume is a 0 / 255 mask of a Y-shaped "gland" (a body and two limbs, randomly placed,
rotated and sized). Class 0 ("normal") has thin limbs; class 1 ("hyperplasia") has limbs about
1.6x as thick and one or two nodules on them. Further classes (up to 4) add more nodules.
Volumes are NIfTI files with 1.5 mm voxels, half of them stored in LPS voxel order (an affine
with flipped x / y), so the 3D chain's reorientation is exercised by the demo.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from toolkit.data.datalist import save_datalist
from toolkit.data.generated import RATIOS, is_current
from toolkit.data.splits import check_no_leakage, class_counts, split_items
from toolkit.io import atomic_write_bytes

GENERATOR_VERSION = 1
VOXEL_MM = 1.5


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A random rotation of up to ~25 degrees about each axis."""
    ax, ay, az = rng.uniform(-0.45, 0.45, 3)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of each point (N, 3) to the segment a-b."""
    ab = b - a
    t = np.clip(((points - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def render_gland(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    """One ``size``^3 uint8 mask (0 / 255) of class ``label`` (see the module docstring)."""
    grid = np.stack(np.meshgrid(*(np.arange(size),) * 3, indexing="ij"), -1).reshape(-1, 3).astype(float)
    centre = size * (0.5 + rng.uniform(-0.08, 0.08, 3))
    rot = _rotation(rng)
    length = size * rng.uniform(0.22, 0.3)
    spread = rng.uniform(0.35, 0.6)  # half-angle between the limbs, radians
    body_end = centre + rot @ np.array([0.0, 0.0, -0.6 * length])
    limbs = [centre + rot @ (length * np.array([np.sin(s * spread), 0.0, np.cos(spread)])) for s in (-1, 1)]
    thick = size * rng.uniform(0.045, 0.06) * (1.6 if label >= 1 else 1.0)
    inside = _segment_distance(grid, body_end, centre) <= thick * 1.1
    for end in limbs:
        inside |= _segment_distance(grid, centre, end) <= thick
    for _ in range(0 if label == 0 else int(rng.integers(1, 3)) + (label - 1)):
        end = limbs[int(rng.integers(0, 2))]
        spot = centre + rng.uniform(0.4, 0.9) * (end - centre) + rng.normal(0, thick * 0.5, 3)
        inside |= np.linalg.norm(grid - spot, axis=1) <= thick * rng.uniform(1.3, 1.8)
    return (inside.reshape(size, size, size) * 255).astype(np.uint8)


def _write_nifti(path: Path, volume: np.ndarray, lps: bool) -> None:
    import nibabel as nib  # ~0.4 s: only needed when volumes are written

    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    if lps:  # same anatomy stored with x and y reversed: the affine says so
        volume = volume[::-1, ::-1, :]
        affine = affine @ np.array(
            [[-1, 0, 0, volume.shape[0] - 1], [0, -1, 0, volume.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]]
        )
    image = nib.Nifti1Image(np.ascontiguousarray(volume), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    atomic_write_bytes(path, gzip.compress(image.to_bytes(), compresslevel=1, mtime=0))


def make_synthetic_volumes(
    out_dir,
    n_patients: int = 30,
    images_per_patient: int = 1,
    image_size: int = 32,
    seed: int = 0,
    classes=("normal", "hyperplasia"),
) -> Path:
    """Write the synthetic 3D data set to ``out_dir`` and return its ``datalist.json``.

    ``n_patients`` patients (classes balanced, one class per patient) with ``images_per_patient``
    volumes of ``image_size``^3 voxels each under ``out_dir/volumes/<patient>/``; split 80/10/10 by
    patient, stratified by class. Idempotent like :func:`toolkit.data.make_synthetic_dataset`.
    """
    classes = [str(c) for c in classes]
    if not 2 <= len(classes) <= 4:
        raise ValueError(f"synthetic volumes support 2 to 4 classes, got {classes}")
    if n_patients < 1 or images_per_patient < 1 or not 16 <= image_size <= 128:
        raise ValueError("need n_patients >= 1, images_per_patient >= 1 and 16 <= image_size <= 128")
    out_dir = Path(out_dir).expanduser().resolve()
    datalist = out_dir / "datalist.json"
    params = {
        "version": GENERATOR_VERSION,
        "spatial_dims": 3,
        "n_patients": int(n_patients),
        "images_per_patient": int(images_per_patient),
        "image_size": int(image_size),
        "seed": int(seed),
        "classes": classes,
    }
    if is_current(datalist, params, out_dir / "volumes"):
        return datalist

    labels = np.arange(n_patients) % len(classes)
    np.random.default_rng(seed).shuffle(labels)
    items = []
    for p in range(n_patients):
        patient, label = f"V{p + 1:03d}", int(labels[p])
        prng = np.random.default_rng([seed, p, 3])
        for k in range(images_per_patient):
            path = out_dir / "volumes" / patient / f"{patient}_{k:02d}.nii.gz"
            lps = bool((p + k) % 2)
            _write_nifti(path, render_gland(prng, image_size, label), lps)
            items.append(
                {
                    "image": str(path),
                    "label": label,
                    "label_name": classes[label],
                    "patient_id": patient,
                    "format": "nifti_lps" if lps else "nifti_ras",
                }
            )
    splits = split_items(items, RATIOS, seed=seed, group_key="patient_id")
    check_no_leakage(splits)
    return save_datalist(
        datalist,
        splits,
        classes,
        name="synthetic-gland-3d",
        description="Synthetic 3D gland-shape masks (NIfTI, RAS / LPS voxel order); demo data, no patients.",
        seed=int(seed),
        ratios=RATIOS,
        generator=params,
        class_counts={k: class_counts(v, len(classes)) for k, v in splits.items()},
    )
