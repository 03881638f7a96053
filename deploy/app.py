"""The MONAI Deploy application: DICOM study folder -> series selection -> classification -> SR + JSON.

Graph (one pass, like the SDK's example apps)::

    StudyLoaderOperator --dicom_study_list--> DICOMSeriesSelectorOperator (SDK, deploy/rules.json)
      --study_selected_series_list--> ClassifierOperator --study_results--> ReportWriterOperator

Arguments are the SDK's: ``-i`` DICOM folder, ``-o`` output folder, ``-m`` model (an exported bundle
folder, a ``model.ts`` with ``model_info.json`` beside it, or a folder holding one), ``-l`` log level;
in a MAP they come from ``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` / ``HOLOSCAN_MODEL_PATH``.
Environment: ``CIT_DEPLOY_RULES`` (rules file or JSON text), ``CIT_DEPLOY_DEVICE`` (cpu, cuda; default
the GPU when there is one), ``CIT_DEPLOY_BACKEND`` (auto, pytorch, onnxruntime, onnxruntime-int8: what
``cit infer --backend`` takes; default auto).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application
from monai.deploy.operators import DICOMSeriesSelectorOperator

from deploy.model import load_model, resolve_device, select_backend
from deploy.operators import ClassifierOperator, ReportWriterOperator, StudyLoaderOperator, load_rules

logger = logging.getLogger(__name__)


class ClassificationApp(Application):
    """Classify the selected DICOM images of each study with one of our bundles; an SR + JSON per study."""

    name = "cit-classification"
    description = "2D image classification with a clinical-imaging-toolkit bundle; DICOM SR + JSON out"
    version = "0.1.0"

    def compose(self):
        # the SDK's context; ModelFactory finds no model type of its own in a bundle folder and leaves it
        context: AppContext = Application.init_app_context(self.argv)
        input_path, output_path = Path(context.input_path), Path(context.output_path)
        output_path.mkdir(parents=True, exist_ok=True)
        device = resolve_device()
        bundle = load_model(context.model_path, device)
        backend, precision = select_backend(bundle, device)
        logger.info(
            "model %s %s (%s) on %s, backend %s (%s)",
            bundle.name,
            bundle.version,
            bundle.ckpt_path,
            device,
            backend,
            precision,
        )

        loader = StudyLoaderOperator(
            self, CountCondition(self, 1), input_folder=input_path, name="study_loader"
        )
        selector = DICOMSeriesSelectorOperator(
            self, rules=load_rules(os.environ.get("CIT_DEPLOY_RULES")), all_matched=True, name="selector"
        )
        classifier = ClassifierOperator(self, bundle=bundle, device=device, name="classifier")
        writer = ReportWriterOperator(
            self,
            bundle=bundle,
            output_folder=output_path,
            name="report_writer",
            model_run={"backend": backend, "precision": precision},
        )
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, classifier, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(classifier, writer, {("study_results", "study_results")})


def main() -> int:
    ClassificationApp().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
