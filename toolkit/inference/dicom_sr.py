"""DICOM Structured Reports of the predictions: one Comprehensive 3D SR per study, built with highdicom.

Each report is a TID 1500 Measurement Report. Every classified image (or frame, or series) is one
TID 1501 measurement group that references its source instance (and frame), holds the predicted
class as a qualitative evaluation (concept DCM 121071 "Finding") and the probability of every
class as a unitless measurement, and names the model (bundle name + version) as the algorithm.
Class codes use the private coding scheme ``99CIT`` because a bundle's class names are not
standard codes. UIDs are derived from the study and the model, so rerunning replaces a report
instead of adding a second one.

What a report carries about the patient: highdicom copies the Patient and Study modules of the first
source image (PatientName, PatientID, PatientBirthDate, PatientSex, AccessionNumber, StudyDate, ...) so
that a PACS files the report with its study. With ``anonymise`` the sources are reduced to what the
references need (UIDs, modality, image size, frames) first, so the report holds no patient or study attribute but
the StudyInstanceUID (the Type 2 ones are present and empty).

A study gets no report, and its rows say why, when its instances name different patients, when its
UID is missing or invalid, or when a source's UIDs or modality are invalid (:func:`study_problem`).
Type 2 patient / study values that are invalid for their VR (a PatientName with a line break or
longer than the VR allows) are left empty rather than copied.

The file of a study is ``sr/<StudyInstanceUID>.dcm`` when the UID is valid (digits and dots, at most
64 characters), else ``sr/uid-<hash>.dcm``; it is checked to resolve inside the output folder.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import highdicom as hd
import pydicom
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import validate_value

from toolkit.inference.discovery import DICOM_PARSE_ERRORS, quiet_dicom_warnings
from toolkit.inference.naming import UnsafeOutputPath, inside, safe_uid, uid_file_stem
from toolkit.inference.privacy import scrub_paths
from toolkit.io import atomic_write_bytes

SR_FOLDER = "sr"

CODING_SCHEME = "99CIT"
# Patient / study attributes highdicom copies from the evidence into the SR (Type 2 there).
_TYPE2_FROM_EVIDENCE = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
MANUFACTURER = "clinical-imaging-toolkit"
# Attributes highdicom reads from every source image (Type 1 there).
_REQUIRED_IN_SOURCE = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID", "Modality")
# What an anonymised report's sources keep: what the references and the frame numbers need.
_KEPT_WHEN_ANONYMISED = (
    *_REQUIRED_IN_SOURCE,
    "NumberOfFrames",
    "SpecificCharacterSet",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PixelRepresentation",
)
# What an odd source study raises while its report is built: its headers cannot be read again, or
# highdicom / pydicom reject one of its values. Anything else is a bug and surfaces. UnsafeOutputPath: the
# report's path would leave the output folder (e.g. its sr/ folder is a link elsewhere).
SOURCE_ERRORS = (*DICOM_PARSE_ERRORS, KeyError, UnsafeOutputPath)


def _class_code(index: int, name: str) -> CodedConcept:
    return CodedConcept(value=f"class-{index}", scheme_designator=CODING_SCHEME, meaning=name[:64])


def write_study_reports(
    results: Sequence[tuple], output: str | os.PathLike, bundle, anonymise: bool = False
) -> tuple[list[Path], dict[str, str]]:
    """Write one SR per study for the successful DICOM results, to ``output/sr/``.

    ``results`` holds ``(InputItem, row)`` pairs as produced by the runner; rows whose status is not
    ``ok`` or whose input is not DICOM are left out. Returns the files written and, for studies
    whose report could not be built, ``{file stem: one-line reason}`` (never a crash: the
    predictions are already saved). ``anonymise``: see the module docstring.
    """
    by_study: dict[str, list[tuple]] = {}
    for item, row in results:
        if row.get("status") == "ok" and item.kind == "dicom":
            by_study.setdefault(item.study_instance_uid, []).append((item, row))
    written, failed = [], {}
    for study_uid, entries in by_study.items():
        stem = uid_file_stem(study_uid)  # a crafted UID ('../../x', '/etc/x') must not name the file
        problem = study_problem(study_uid, [(item.patient_id, item.patient_name) for item, _ in entries])
        if problem:
            failed[stem] = problem
            continue
        try:
            path = inside(output, f"{SR_FOLDER}/{stem}.dcm")
            with quiet_dicom_warnings():
                write_report(entries, path, bundle, anonymise=anonymise)
            written.append(path)
        except SOURCE_ERRORS as exc:  # one odd study must not cost the others their report
            # quoted values may be patient data, and paths are the user's: keep them out of the message
            text = re.sub(r"'[^']*'", "'...'", " ".join(str(exc).split()))
            failed[stem] = f"{type(exc).__name__}: {scrub_paths(text)[:200]}"
    return written, failed


def study_problem(study_uid: str, patients: Iterable[tuple]) -> str | None:
    """Why the instances of one study, with ``patients`` their (PatientID, PatientName), cannot share
    one report, or None.

    One report is filed under one patient: instances of a StudyInstanceUID that name different
    patients (PatientID or PatientName differ: a PACS export mixing two patients, or a forged UID)
    are never merged, since the report would carry one patient's identity and reference the other's
    image. The UID must be digits and dots, at most 64 characters (:func:`~toolkit.inference.naming.safe_uid`;
    a component with a leading zero, which real archives hold, is let through)."""
    if not study_uid:
        return "the image has no StudyInstanceUID"
    if not safe_uid(study_uid):
        return "its StudyInstanceUID is not a valid DICOM UID"
    patients = {(str(pid or "").strip(), str(name or "").strip()) for pid, name in patients}
    if len(patients) > 1:
        return (
            f"instances of this study name {len(patients)} different patients (PatientID / PatientName differ); "
            "not merged into one report: check the study in the PACS"
        )
    return None


def _references_only(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of a source header with only what the report's references need (``_KEPT_WHEN_ANONYMISED``)."""
    kept = pydicom.Dataset()
    for keyword in _KEPT_WHEN_ANONYMISED:
        if keyword in ds:
            kept[keyword] = ds[keyword]
    return kept


def _single_character_set(ds) -> None:
    """'ISO 2022 IR 100' alone (seen in real files) is the code-extension form of 'ISO_IR 100'; highdicom
    rejects a lone code-extension term, so use the plain one (IR 6 is the default repertoire)."""
    value = ds.get("SpecificCharacterSet")
    if isinstance(value, str) and value.startswith("ISO 2022 IR "):
        number = value[len("ISO 2022 IR ") :]
        if number == "6":
            del ds.SpecificCharacterSet
        else:
            ds.SpecificCharacterSet = f"ISO_IR {number}"


def _source_image(cls, ds, frames):
    """Reference ``ds`` (and the frame); highdicom refuses frame numbers for instances of single-frame
    SOP classes that still carry NumberOfFrames > 1 (legacy multi-frame MR), so those are referenced whole."""
    try:
        return cls.from_source_image(ds, referenced_frame_numbers=frames)
    except TypeError:
        if frames is None:
            raise
        return cls.from_source_image(ds)


def _valid(ds, keyword: str) -> bool:
    """Whether ``ds.<keyword>`` is valid for its VR: pydicom's check (characters, length), and no control
    character (pydicom lets a line break or NUL through in names; DICOM allows only ESC there)."""
    elem = ds[keyword]
    try:
        values = elem.value if elem.VM > 1 else [elem.value]
        for value in values:
            validate_value(elem.VR, value, 2)  # 2 = raise
            if any(ord(c) < 32 and c != "\x1b" for c in str(value)):
                return False
        return True
    except ValueError:  # validate_value(..., 2) raises ValueError
        return False


def _evidence_header(file: str, anonymise: bool) -> pydicom.Dataset:
    """The header of one source image as the SR may reference it; ValueError for one it may not."""
    ds = pydicom.dcmread(file, stop_before_pixels=True, force=True)
    missing = [k for k in _REQUIRED_IN_SOURCE if k not in ds]
    if missing:  # highdicom would raise AttributeError, the type of a bug, not of a bad file
        raise ValueError(f"a source image lacks {', '.join(missing)}")
    invalid = [
        k
        for k in _REQUIRED_IN_SOURCE
        if not (safe_uid(str(ds[k].value)) if ds[k].VR == "UI" else _valid(ds, k))
    ]
    if invalid:  # e.g. a UID with a line break, or of 200 characters: never copied into a report
        raise ValueError(f"a source image has an invalid {', '.join(invalid)}")
    if anonymise:
        ds = _references_only(ds)
    for keyword in _TYPE2_FROM_EVIDENCE:
        # often absent or invalid in real (e.g. anonymised) files; empty is valid for Type 2
        if keyword not in ds or not _valid(ds, keyword):
            setattr(ds, keyword, "")
    _single_character_set(ds)
    return ds


def _measurement_group(
    number: int, item, row: dict, bundle, algorithm, seed: list[str], sources: list
) -> MeasurementsAndQualitativeEvaluations:
    """One input's classification: the class (or findings) called, and every class's probability."""
    # the predicted class, or every finding a multi-label model called present ("0|1|1")
    if bundle.model_info.multi_label:
        positives = [i for i, f in enumerate(str(row["pred"]).split("|")) if f == "1"]
    else:
        positives = [int(row["pred"])]
    measurements = [
        Measurement(
            name=CodedConcept(f"prob-{i}", CODING_SCHEME, f"Probability of {name}"[:64]),
            value=float(row[f"prob_{name}"]),
            unit=CodedConcept("1", "UCUM", "no units"),
            algorithm_id=algorithm,
        )
        for i, name in enumerate(bundle.class_names)
    ]
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[*seed, item.key]), identifier=f"Classification {number}"
        ),
        algorithm_id=algorithm,
        qualitative_evaluations=[
            QualitativeEvaluation(name=codes.DCM.Finding, value=_class_code(i, bundle.class_names[i]))
            for i in positives
        ]
        or None,
        measurements=measurements,
        source_images=sources,
    )


def write_report(entries: Sequence[tuple], path: str | os.PathLike, bundle, anonymise: bool = False) -> None:
    """Build the SR of one study from ``(InputItem, row)`` pairs and write it atomically to ``path``."""
    headers: dict[str, pydicom.Dataset] = {}  # source file -> its header, read once
    study_uid = entries[0][0].study_instance_uid
    seed = [study_uid, bundle.name, bundle.version]
    algorithm = AlgorithmIdentification(name=bundle.name, version=bundle.version or "unversioned")
    groups = []
    for number, (item, row) in enumerate(entries, start=1):
        frames = [item.frame + 1] if item.frame is not None else None
        sources = []
        for file in item.files or [item.abs_path]:
            if file not in headers:
                headers[file] = _evidence_header(file, anonymise)
            sources.append(_source_image(SourceImageForMeasurementGroup, headers[file], frames))
        groups.append(_measurement_group(number, item, row, bundle, algorithm, seed, sources))
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[bundle.name, bundle.version]),
            name=f"{bundle.name} {bundle.version}".strip()[:64],
            manufacturer_name=MANUFACTURER,
        ),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=CodedConcept("363679005", "SCT", "Imaging procedure"),
        imaging_measurements=groups,
    )
    evidence = list(headers.values())
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=generate_uid(entropy_srcs=[*seed, "series"]),
        series_number=9000,
        sop_instance_uid=generate_uid(entropy_srcs=[*seed, "instance"]),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=f"AI classification: {bundle.name}"[:64],
    )
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    atomic_write_bytes(path, buffer.getvalue())
