"""Synthetic head-scan data set: the toolkit's built-in demo data (no patient data involved).

Each synthetic patient has several axial "slices" of a head-like ellipse (skull, brain texture,
ventricles, bias field, noise) with one lesion pattern per class, at a random position and size:

- class 0 (default "glioma"): one large diffuse intra-axial blob (sometimes two lobes),
- class 1 ("meningioma"): a sharp dural-based crescent hugging the inner skull,
- class 2 ("pituitary"): a cluster of several small bright spots,
- class 3 (if a fourth class is asked for): no lesion.

Images are written as real DICOM (CT with HU rescale and window, 12-bit in 16-bit containers and
signed 16-bit; MR 16-bit and 12-bit MONOCHROME1 with inverted stored values) and PNG (8- and
16-bit grey), so every reader path of the toolkit is exercised by the demo.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from toolkit.data.datalist import save_datalist
from toolkit.data.generated import RATIOS, is_current
from toolkit.data.splits import check_no_leakage, class_counts, split_items
from toolkit.io import atomic_write_bytes

GENERATOR_VERSION = 1
PATTERNS = ("blob", "crescent", "spots", "none")
# Image formats, cycled over the images so every data set has each of them.
VARIANTS = ("ct12", "mr16", "mr12_mono1", "png8", "ct16", "png16")


def _zoom_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field in [-1, 1]: a coarse grid upsampled bilinearly to ``size``."""
    from scipy.ndimage import zoom  # ~0.3 s: only the generator needs it, not `import toolkit.data`

    coarse = rng.uniform(-1, 1, (cells, cells))
    return zoom(coarse, size / cells, order=1, mode="nearest")[:size, :size]


def _head(rng: np.random.Generator, size: int) -> dict:
    """Per-patient head geometry (centre, semi-axes, rotation, skull thickness), in pixels."""
    return {
        "cy": size * rng.uniform(0.46, 0.54),
        "cx": size * rng.uniform(0.46, 0.54),
        "ry": size * rng.uniform(0.38, 0.44),
        "rx": size * rng.uniform(0.30, 0.37),
        "angle": rng.uniform(-0.25, 0.25),
        "skull": size * rng.uniform(0.025, 0.04),
        # lesion anchor in head-relative polar coordinates, kept for all images of the patient
        "lesion_r": rng.uniform(0.1, 0.55),
        "lesion_t": rng.uniform(0, 2 * np.pi),
    }


def _render(
    rng: np.random.Generator, head: dict, patterns: tuple[str, ...], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(tissue map in [0, 1], mask of bone) for one slice with the lesions of ``patterns``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c, s = np.cos(head["angle"]), np.sin(head["angle"])
    dy, dx = yy - head["cy"], xx - head["cx"]
    u, v = c * dx + s * dy, -s * dx + c * dy  # head-aligned coordinates

    def radius(ry, rx):
        return np.sqrt((u / rx) ** 2 + (v / ry) ** 2)

    scale = rng.uniform(0.93, 1.0)  # slice level changes the section size a little
    ry, rx = head["ry"] * scale, head["rx"] * scale
    outer = radius(ry, rx) <= 1
    inner = radius(ry - head["skull"], rx - head["skull"]) <= 1
    bone = outer & ~inner

    tissue = np.zeros((size, size), np.float32)
    tissue[inner] = 0.45
    tissue += inner * 0.05 * _zoom_noise(rng, size, 6)  # grey/white texture
    # ventricles: two dark ellipses near the midline
    vy, vx = size * rng.uniform(0.05, 0.09), size * rng.uniform(0.02, 0.035)
    for side in (-1, 1):
        off = side * size * rng.uniform(0.03, 0.05)
        vent = ((u - off) / vx) ** 2 + ((v + size * rng.uniform(-0.03, 0.03)) / vy) ** 2 <= 1
        tissue[vent & inner] = 0.22
    # faint distractor blobs in every class (normal variation)
    for _ in range(rng.integers(0, 3)):
        py, px = _point_in_head(rng, head, ry, rx, 0.7)
        sig = size * rng.uniform(0.02, 0.05)
        tissue += inner * 0.06 * np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * sig**2))

    lesion = np.zeros_like(tissue)
    for pattern in patterns:
        amp = rng.uniform(0.2, 0.35)
        # lesion anchor: the patient's site plus a little jitter between slices
        lr = float(np.clip(head["lesion_r"] + rng.normal(0, 0.15), 0.05, 0.6))
        lt = head["lesion_t"] + rng.normal(0, 0.6)
        if pattern == "blob":
            for lobe in range(rng.integers(1, 3)):
                jitter = 0.0 if lobe == 0 else rng.uniform(0.05, 0.12)
                py, px = _polar(head, ry, rx, lr + jitter, lt + jitter)
                sig = size * rng.uniform(0.07, 0.12)
                lesion += amp * np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * sig**2))
        elif pattern == "crescent":
            # disc centred on the inner skull surface, clipped to the brain: a dural-based crescent
            py, px = _polar(head, ry - head["skull"], rx - head["skull"], 1.0, lt)
            rad = size * rng.uniform(0.09, 0.15)
            disc = (yy - py) ** 2 + (xx - px) ** 2 <= rad**2
            lesion[disc] = amp
        elif pattern == "spots":
            cy, cx = _polar(head, ry, rx, lr, lt)
            for _ in range(rng.integers(4, 8)):
                py, px = cy + rng.normal(0, size * 0.06), cx + rng.normal(0, size * 0.06)
                sig = size * rng.uniform(0.015, 0.025)
                lesion += (amp + 0.1) * np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * sig**2))
        elif pattern != "none":
            raise ValueError(f"unknown lesion pattern {pattern!r}")
    tissue += lesion * inner

    tissue *= 1 + 0.08 * _zoom_noise(rng, size, 3) * outer  # smooth coil / beam bias field
    tissue[bone] = rng.uniform(0.85, 0.95)
    tissue += rng.normal(0, 0.02, tissue.shape).astype(np.float32) * outer
    return np.clip(tissue, 0, 1), bone


def _polar(head, ry, rx, r, t):
    """Image (y, x) of head-relative polar coordinates (r = 1 is the ellipse edge)."""
    u, v = r * rx * np.cos(t), r * ry * np.sin(t)
    c, s = np.cos(head["angle"]), np.sin(head["angle"])
    return head["cy"] + s * u + c * v, head["cx"] + c * u - s * v


def _point_in_head(rng, head, ry, rx, rmax):
    return _polar(head, ry, rx, rng.uniform(0, rmax), rng.uniform(0, 2 * np.pi))


# ---------------------------------------------------------------------------------------------
# writers


def _hounsfield(tissue: np.ndarray, bone: np.ndarray) -> np.ndarray:
    """Tissue map -> CT numbers: air -1000, CSF ~0, brain ~30, lesions up to ~80, bone ~700+."""
    hu = np.where(tissue > 0, 32 + 200 * (tissue - 0.45), -1000.0)
    hu[bone] = 700 + 600 * (tissue[bone] - 0.85)
    return hu


def _write_dicom(path: Path, tissue, bone, variant, patient, uids, number, size, rng) -> None:
    # pydicom ~0.3 s: imported when the demo data is written, not by `import toolkit.data`
    from pydicom.dataset import validate_file_meta

    ds = _dicom_header(variant, patient, uids, number, size)
    ds.PixelData = _store_pixels(ds, variant, tissue, bone, rng).tobytes()
    ds.BurnedInAnnotation = "NO"
    validate_file_meta(ds.file_meta, enforce_standard=True)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    atomic_write_bytes(path, buffer.getvalue())


def _dicom_header(variant: str, patient: str, uids: dict, number: int, size: int):
    """The synthetic slice's header: patient, study / series / instance, geometry."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

    ct = variant.startswith("ct")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage if ct else MRImageStorage
    meta.MediaStorageSOPInstanceUID = uids["sop"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = uids["sop"]
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = uids["accession"]
    ds.Modality = "CT" if ct else "MR"
    ds.Manufacturer = "clinical-imaging-toolkit synthetic"
    ds.StudyDescription = "SYNTHETIC HEAD"
    ds.SeriesDescription = {"ct12": "HEAD 12-bit", "ct16": "HEAD 16-bit signed", "mr16": "T1 16-bit"}.get(
        variant, "T1 12-bit MONOCHROME1"
    )
    ds.PatientName = f"SYNTH^{patient}"
    ds.PatientID = patient
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.BodyPartExamined = "HEAD"
    ds.StudyID = "1"
    ds.SeriesNumber = VARIANTS.index(variant) + 1
    ds.InstanceNumber = number + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(5 * number)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    spacing = 220.0 / size
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = 5.0
    ds.SamplesPerPixel = 1
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = 16
    return ds


def _store_pixels(ds, variant: str, tissue: np.ndarray, bone: np.ndarray, rng) -> np.ndarray:
    """Set the pixel encoding (and display / acquisition details) of ``variant`` on ``ds``; returns the stored
    values."""
    if variant == "ct12":  # unsigned 12-bit stored values, HU = stored - 1024
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        pixels = np.clip(np.round(_hounsfield(tissue, bone) + 1024), 0, 4095).astype(np.uint16)
    elif variant == "ct16":  # signed 16-bit stored HU
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        pixels = np.round(_hounsfield(tissue, bone)).astype(np.int16)
    elif variant == "mr16":
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 0
        gain = rng.uniform(20000, 40000)
        pixels = np.clip(np.round(tissue * gain), 0, 65535).astype(np.uint16)
    elif variant == "mr12_mono1":  # MONOCHROME1: stored values inverted, display inverts them back
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
        gain = rng.uniform(2500, 4000)
        pixels = (4095 - np.clip(np.round(tissue * gain), 0, 4095)).astype(np.uint16)
    else:
        raise ValueError(f"not a DICOM variant: {variant}")
    if variant.startswith("ct"):
        ds.WindowCenter, ds.WindowWidth = 40, 80  # brain window
        ds.KVP, ds.ConvolutionKernel = 120, "STANDARD"
    else:
        ds.MagneticFieldStrength, ds.RepetitionTime, ds.EchoTime = 1.5, 500, 15
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
    return pixels


def _write_png(path: Path, tissue: np.ndarray, variant: str) -> None:
    if variant == "png8":
        image = Image.fromarray(np.round(tissue * 255).astype(np.uint8))
    else:
        image = Image.fromarray(np.round(tissue * 60000).astype(np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------


def _patient_classes(seed: int, n_patients: int, classes: list[str], multi_label: bool) -> list[tuple]:
    """``(label, label name, lesion patterns)`` of each patient: classes balanced and shuffled, or (multi-label)
    each pattern present with probability 0.4."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_patients) % len(classes)
    rng.shuffle(labels)
    if not multi_label:
        return [(int(c), classes[int(c)], (PATTERNS[int(c)],)) for c in labels]
    present = rng.random((n_patients, len(classes))) < 0.4
    found = []
    for row in present:
        label = row.astype(int).tolist()
        chosen = [k for k in range(len(classes)) if label[k]]
        found.append((label, [classes[k] for k in chosen], tuple(PATTERNS[k] for k in chosen)))
    return found


def _write_patient(
    images: Path, p: int, seed: int, classes: tuple, count: int, image_size: int
) -> list[dict]:
    """The ``count`` images of patient number ``p`` (DICOM CT / MR and PNG, cycling through ``VARIANTS``) in
    ``images/P<p+1>/``, seeded by ``(seed, p)``; ``classes``: its label, label name and lesion patterns."""
    from pydicom.uid import generate_uid  # pydicom ~0.3 s: see _write_dicom

    label, name, patterns = classes
    patient = f"P{p + 1:03d}"
    prng = np.random.default_rng([seed, p])
    head = _head(prng, image_size)
    folder = images / patient
    folder.mkdir(parents=True, exist_ok=True)

    def uid(*parts):
        return generate_uid(entropy_srcs=["cit-synthetic", str(seed), str(p), *map(str, parts)])

    study = {"CT": uid("study", "CT"), "MR": uid("study", "MR")}
    items = []
    for k in range(count):
        variant = VARIANTS[(p * count + k) % len(VARIANTS)]
        tissue, bone = _render(prng, head, patterns, image_size)
        item = {"label": label, "label_name": name, "patient_id": patient, "format": variant}
        if variant.startswith("png"):
            path = folder / f"{patient}_{k:02d}.png"
            _write_png(path, tissue, variant)
        else:
            path = folder / f"{patient}_{k:02d}.dcm"
            modality = "CT" if variant.startswith("ct") else "MR"
            uids = {
                "study": study[modality],
                "series": uid("series", variant),
                "frame": uid("frame", variant),
                "sop": uid("sop", k),
                "accession": f"SYN{p + 1:04d}{modality}",
            }
            _write_dicom(path, tissue, bone, variant, patient, uids, k, image_size, prng)
            item.update(study_uid=uids["study"], series_uid=uids["series"], sop_instance_uid=uids["sop"])
        item["image"] = str(path)
        items.append(item)
    return items


def make_synthetic_dataset(
    out_dir,
    n_patients: int = 30,
    images_per_patient: int = 4,
    image_size: int = 256,
    seed: int = 0,
    classes=("glioma", "meningioma", "pituitary"),
    multi_label: bool = False,
    spatial_dims: int = 2,
) -> Path:
    """Write the synthetic demo data set to ``out_dir`` and return its ``datalist.json``.

    ``n_patients`` patients (classes balanced, one class per patient) with ``images_per_patient``
    images each, as DICOM and PNG under ``out_dir/images/<patient>/``; the datalist is split
    80/10/10 by patient, stratified by class. With ``multi_label`` (up to 3 classes) each patient
    has each lesion pattern with probability 0.4, several or none (multi-hot labels). Idempotent: if ``out_dir/datalist.json`` was made
    with the same parameters and its files exist, it is returned unchanged.
    """
    if spatial_dims == 3:  # 3D demo volumes instead (toolkit.data.synthetic_volumes)
        from toolkit.data.synthetic_volumes import make_synthetic_volumes

        if multi_label:
            raise ValueError("synthetic 3D volumes are single-label (multi_label=False)")
        return make_synthetic_volumes(out_dir, n_patients, images_per_patient, image_size, seed, classes)
    if spatial_dims != 2:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    classes = [str(c) for c in classes]
    if not 2 <= len(classes) <= len(PATTERNS) - multi_label:  # "none" is no class of its own when multi-label
        raise ValueError(f"synthetic data supports 2 to {len(PATTERNS) - multi_label} classes, got {classes}")
    if n_patients < 1 or images_per_patient < 1 or image_size < 16:
        raise ValueError("need n_patients >= 1, images_per_patient >= 1 and image_size >= 16")
    out_dir = Path(out_dir).expanduser().resolve()
    datalist = out_dir / "datalist.json"
    params = {
        "version": GENERATOR_VERSION,
        "n_patients": int(n_patients),
        "images_per_patient": int(images_per_patient),
        "image_size": int(image_size),
        "seed": int(seed),
        "classes": classes,
        **({"multi_label": True} if multi_label else {}),
    }
    if is_current(datalist, params, out_dir / "images"):
        return datalist

    items = []
    for p, (label, name, patterns) in enumerate(_patient_classes(seed, n_patients, classes, multi_label)):
        items += _write_patient(
            out_dir / "images", p, seed, (label, name, patterns), images_per_patient, image_size
        )

    splits = split_items(items, RATIOS, seed=seed, group_key="patient_id")
    check_no_leakage(splits)
    return save_datalist(
        datalist,
        splits,
        classes,
        multi_label=multi_label,
        name="synthetic-head",
        description="Synthetic head scans (DICOM CT/MR and PNG) with one lesion pattern per class; demo data, no patients.",
        seed=int(seed),
        ratios=RATIOS,
        generator=params,
        class_counts={k: class_counts(v, len(classes), multi_label) for k, v in splits.items()},
    )
