"""The app's own operators, where the MONAI Deploy App SDK's are wrong for 2D classification.

The SDK's path for a bundle is DICOMDataLoaderOperator -> DICOMSeriesSelectorOperator ->
DICOMSeriesToVolumeOperator -> MonaiBundleInferenceOperator -> DICOMTextSRWriterOperator. Only the
selector is used as it is; each replacement below says which defect it avoids. The model, the
preprocessing and the postprocessing are the toolkit's (``toolkit.bundle.load_bundle``), and so is the
SR (``toolkit.inference.dicom_sr``), so the numbers equal ``cit infer`` on the same files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pydicom
import torch
from monai.deploy.core import Fragment, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_study import DICOMStudy
from monai.deploy.operators import DICOMDataLoaderOperator

from toolkit.bundle import InferenceBundle
from toolkit.inference.dicom_sr import SOURCE_ERRORS, SR_FOLDER, study_problem, write_report
from toolkit.inference.discovery import discover_inputs, quiet_dicom_warnings
from toolkit.inference.naming import inside, uid_file_stem
from toolkit.inference.runner import InferenceDataset
from toolkit.io import atomic_write_json

logger = logging.getLogger(__name__)

JSON_FOLDER = "json"
# header attributes carried into the JSON (the SR carries the Patient / Study modules itself)
IDENTIFIERS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
)


class StudyLoaderOperator(DICOMDataLoaderOperator):
    """DICOM study folder -> list of the SDK's ``DICOMStudy`` (headers only), for the SDK's series selector.

    Replaces the SDK's ``DICOMDataLoaderOperator._load_data``, which reads each file with
    ``dcmread(file)`` without ``force``: films without preamble / File Meta (ACR-NEMA style, such as the
    MONOCHROME1 ``CR-MONO1-10-chest.dcm``) are silently ignored; it catches only ``InvalidDicomError``,
    so one truncated or corrupt file stops the whole app; it keeps every file's pixel data in memory;
    and it drops instances that share an ImagePositionPatient. Here the files are found and their
    headers read by ``toolkit.inference.discovery`` (what ``cit infer`` uses: by content, headers
    only, a bad file is logged and left out), and multi-frame instances are left out as ``cit infer``
    leaves them out for a 2D model. Each header keeps its :class:`InputItem` as ``_cit_item``.
    """

    def load_data_to_studies(self, input_path: Path) -> list[DICOMStudy]:
        input_path = Path(input_path)
        if not input_path.is_dir():
            raise ValueError(f"input folder {input_path} does not exist")
        items, _ = discover_inputs(input_path)
        studies: dict[str, DICOMStudy] = {}
        series: dict[tuple[str, str], DICOMSeries] = {}
        for item in items:
            if item.kind != "dicom":
                continue
            if item.status is not None:
                logger.warning("not classified: %s (%s)", item.path, _deploy_reason(item.reason))
                continue
            with quiet_dicom_warnings():
                ds = pydicom.dcmread(item.abs_path, stop_before_pixels=True, force=True)
            if "SOPClassUID" not in ds:  # found in File Meta by the discovery; the selector reads the header
                ds.SOPClassUID = item.sop_class_uid
            ds._cit_item = item
            study_uid = item.study_instance_uid
            if study_uid not in studies:
                studies[study_uid] = DICOMStudy(study_uid)
                self._populate(self.populate_study_attributes, studies[study_uid], ds, item)
            key = (study_uid, item.series_instance_uid)
            if key not in series:
                series[key] = DICOMSeries(item.series_instance_uid)
                self._populate(self.populate_series_attributes, series[key], ds, item)
                studies[study_uid].add_series(series[key])
            series[key].add_sop_instance(ds)
        if not studies:
            raise ValueError(f"no classifiable DICOM image found below {input_path}")
        return list(studies.values())

    @staticmethod
    def _populate(populate, target, ds: pydicom.Dataset, item) -> None:
        """The SDK's ``populate_study_attributes`` / ``populate_series_attributes`` on a validated copy of
        the header: they cast what they read (``int(None)`` for an empty SeriesNumber stopped the whole
        app once), so empty or unreadable elements are left out of what they see; the series is still
        classified, its descriptive attributes then stay unset."""
        try:
            populate(target, _readable_elements(ds))
        except (TypeError, ValueError) as exc:
            logger.warning("%s: header attributes not passed to the SDK (%s)", item.path, exc)


def _readable_elements(ds: pydicom.Dataset) -> pydicom.Dataset:
    clean = pydicom.Dataset()
    for tag in list(ds.keys()):
        try:
            elem = ds[tag]
            empty = elem.value is None or elem.value == "" or elem.value == b""
        except Exception:  # noqa: BLE001 - any value pydicom cannot convert is left out, never fatal
            continue
        if not empty:
            clean.add(elem)
    return clean


def _deploy_reason(reason: str) -> str:
    """A discovery reason with `cit infer`'s option hint replaced by what holds for this app."""
    return reason.replace(
        "; use --frames each",
        "; this app classifies single-frame images only (`cit infer --frames each` classifies every frame)",
    )


class ClassifierOperator(Operator):
    """Selected series -> per study, ``(InputItem, row)`` pairs with the class probabilities and name.

    Replaces DICOMSeriesToVolumeOperator + MonaiBundleInferenceOperator, which are wrong for 2D
    classification: the volume operator fails on single-frame DX / CT slices (no affine from one
    slice; ``numpy.object_`` arrays); the bundle operator calls ``.transforms`` on ``postprocessing``
    (a bare transform has none), needs a MetaTensor out of the preprocessing, and maps probabilities
    to class names by ``int(prob)`` (every probability < 1 becomes class 0). Here each selected
    instance goes through the bundle's own preprocessing from its file (the toolkit's DICOM reader:
    MONOCHROME1, modality LUT, as ``cit infer``), the network, the bundle's postprocessing, and the
    class name is that of the arg-max probability.
    """

    def __init__(self, fragment: Fragment, *args, bundle: InferenceBundle, device: torch.device, **kwargs):
        self.bundle = bundle
        self.device = device
        self.input_name = "study_selected_series_list"
        self.output_name = "study_results"
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input(self.input_name)
        spec.output(self.output_name)

    def compute(self, op_input, op_output, context):
        selected = op_input.receive(self.input_name) or []
        results = []
        for study_selection in selected:
            entries, seen = [], set()
            for selection in study_selection.selected_series:
                for instance in selection.series.get_sop_instances():
                    ds = instance.get_native_sop_instance()
                    item = ds._cit_item
                    if item.abs_path in seen:  # a series matched by two selections is classified once
                        continue
                    seen.add(item.abs_path)
                    entries.append((item, self.classify(item, selection.selection_name), ds))
            if entries:
                results.append(entries)
        if not results:
            logger.warning("no series matched the selection rules; nothing to report")
        op_output.emit(results, self.output_name)

    def classify(self, item, selection_name: str) -> dict:
        """One row as ``cit infer`` writes it: status, pred, pred_name, prob_<class>."""
        bundle = self.bundle
        row = {"path": item.path, "selection": selection_name, "status": "error", "reason": ""}
        if bundle.spatial_dims != 2:
            row["reason"] = "the app classifies single 2D images; this model is 3D"
            return row
        record = InferenceDataset([item], bundle.preprocessing, bundle.image_size)[0]
        if record["error"] is not None:
            row["reason"] = record["error"]
            logger.warning("not classified: %s (%s)", item.path, record["error"])
            return row
        x = record["image"][None].to(self.device).contiguous(memory_format=torch.channels_last)
        # as toolkit.inference.runner._forward: float16 autocast on a GPU, float32 on the CPU
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=x.is_cuda):
            logits = bundle.network(x).float().cpu()[0]
        probs = bundle.probabilities(logits)
        if probs.numel() != len(bundle.class_names) or not torch.isfinite(probs).all():
            row["reason"] = f"the network gave {probs.numel()} outputs for {len(bundle.class_names)} classes"
            return row
        pred, pred_name = bundle.decide(
            probs
        )  # arg-max class, or multi-label flags at the model's thresholds
        row.update(status="ok", pred=pred, pred_name=pred_name)
        for name, p in zip(bundle.class_names, probs.tolist(), strict=True):
            row[f"prob_{name}"] = float(p)
        return row


class ReportWriterOperator(Operator):
    """Per study: ``<out>/sr/<StudyInstanceUID>.dcm`` (Comprehensive 3D SR, TID 1500) and
    ``<out>/json/<StudyInstanceUID>.json`` (identifiers, probabilities, predicted class names; the model
    section also names the ``backend`` and ``precision`` the network ran in).

    Replaces DICOMTextSRWriterOperator, which writes one free-text string (the bundle operator's
    class name, wrong as said above) with no per-class probability as a coded measurement. The SR
    is the one ``cit infer --dicom-sr`` writes (``toolkit.inference.dicom_sr``): the predicted class as
    a coded finding and every class probability as a measurement, referencing its source instance,
    with the Patient and Study modules of the images carried over.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args,
        bundle: InferenceBundle,
        output_folder: Path,
        model_run: dict | None = None,
        **kwargs,
    ):
        self.bundle = bundle
        self.output_folder = Path(output_folder)
        self.model_run = model_run or {"backend": "pytorch", "precision": "fp32"}
        self.input_name = "study_results"
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input(self.input_name)

    def compute(self, op_input, op_output, context):
        for entries in op_input.receive(self.input_name) or []:
            self.write_study(entries)

    def write_study(self, entries: list[tuple]) -> None:
        first_item, _, first_ds = entries[0]
        stem = uid_file_stem(first_item.study_instance_uid)
        ok = [(item, row) for item, row, _ in entries if row["status"] == "ok"]
        patients = [(ds.get("PatientID", ""), ds.get("PatientName", "")) for item, row, ds in entries]
        sr_problem = study_problem(first_item.study_instance_uid, patients) if ok else None
        if sr_problem:  # never one report across two patients, never a crafted UID copied into one
            logger.warning("no DICOM SR for study %s: %s", stem, sr_problem)
        sr_path = None
        if ok and not sr_problem:
            try:
                sr_path = inside(self.output_folder, f"{SR_FOLDER}/{stem}.dcm")
                sr_path.parent.mkdir(parents=True, exist_ok=True)
                with quiet_dicom_warnings():
                    write_report(ok, sr_path, self.bundle)
            except SOURCE_ERRORS as exc:  # one odd study costs only its own report, as in `cit infer`
                sr_path, sr_problem = None, f"{type(exc).__name__}: {exc}"[:200]
                logger.warning("no DICOM SR for study %s: %s", stem, sr_problem)
        bundle = self.bundle
        doc = {
            "model": {
                "name": bundle.name,
                "version": bundle.version,
                "class_names": bundle.class_names,
                **self.model_run,
            },
            "identifiers": {k: str(first_ds.get(k, "") or "") for k in IDENTIFIERS},
            "sr": str(sr_path.relative_to(self.output_folder)) if sr_path else None,
            "sr_problem": sr_problem,
            "results": [
                {
                    "file": item.path,
                    "series_instance_uid": item.series_instance_uid,
                    "sop_instance_uid": item.sop_instance_uid,
                    "sop_class_uid": item.sop_class_uid,
                    "modality": item.modality,
                    "selection": row["selection"],
                    "status": row["status"],
                    "reason": row["reason"],
                    "pred": row.get("pred"),
                    "pred_name": row.get("pred_name"),
                    "probabilities": {n: row[f"prob_{n}"] for n in bundle.class_names if f"prob_{n}" in row},
                }
                for item, row, _ in entries
            ],
        }
        json_path = inside(self.output_folder, f"{JSON_FOLDER}/{stem}.json")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(json_path, doc)
        logger.info("study %s: %d image(s) classified, written %s", stem, len(ok), json_path)


def load_rules(text_or_path: str | None) -> str:
    """Selection rules as JSON text: ``text_or_path`` (a file or JSON text), else ``deploy/rules.json``."""
    if not text_or_path:
        return (Path(__file__).with_name("rules.json")).read_text()
    path = Path(text_or_path)
    text = path.read_text() if not text_or_path.lstrip().startswith("{") and path.is_file() else text_or_path
    if not json.loads(text).get("selections"):
        raise ValueError("selection rules need a non-empty 'selections' list")
    return text
