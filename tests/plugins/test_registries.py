"""The rules of the three registries (readers, sources, metrics) and of CIT_PLUGINS.

Each test registers into a copy of the registry (monkeypatched), so nothing it adds outlives it.
The recipes of docs/extending.md are followed end to end in tests/docs/test_extending.py.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import numpy as np
import pytest
from monai.data import ImageReader
from monai.utils import ensure_tuple
from PIL import Image

from toolkit.cli import main as cit
from toolkit.cli.datalist import add_source_options
from toolkit.data import build_datalist
from toolkit.data.plugins import PluginError, load_plugins
from toolkit.data.sources import registry as sources
from toolkit.data.sources.base import SourceItems
from toolkit.evaluation import metrics
from toolkit.evaluation.report import _metrics_html as report_metrics_table
from toolkit.transforms import readers
from toolkit.transforms.readers import ImageReadError, MedicalImageReader, register_reader


@pytest.fixture
def own_registries(monkeypatch):
    monkeypatch.setattr(readers, "_READERS", list(readers._READERS))
    monkeypatch.setattr(sources, "_SOURCES", list(sources._SOURCES))
    monkeypatch.setattr(metrics, "_METRICS", {task: dict(m) for task, m in metrics._METRICS.items()})
    monkeypatch.delenv("CIT_PLUGINS", raising=False)


class TextReader(ImageReader):
    """A one-line text file of numbers as a 1 x N image (enough to see who read the file)."""

    def verify_suffix(self, filename) -> bool:
        return all(str(f).endswith((".txt", ".png")) for f in ensure_tuple(filename))

    def read(self, data, **kwargs):
        return str(ensure_tuple(data)[0])

    def get_data(self, img):
        values = np.asarray([[float(v) for v in open(img).read().split()]], dtype=np.float32)
        return values, {"spatial_shape": np.asarray(values.shape), "original_channel_dim": "no_channel"}


def test_the_reader_registered_last_is_asked_first(own_registries, tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(png)
    assert type(MedicalImageReader().reader_for(png)).__name__ == "RasterReader"
    unknown = tmp_path / "a.txt"
    unknown.write_text("1 2 3")
    with pytest.raises(
        ImageReadError, match=r"unknown image format \(not DICOM, NIfTI, PNG, JPEG, BMP or TIFF\)"
    ):
        MedicalImageReader().reader_for(unknown)

    register_reader("text", formats=("text",))(TextReader)
    reader = MedicalImageReader()
    assert isinstance(reader.reader_for(unknown), TextReader)
    assert isinstance(reader.reader_for(png), TextReader)  # it claims .png too, and is asked first
    array, _ = reader.get_data(reader.read(str(unknown)))
    assert array.tolist() == [[1.0, 2.0, 3.0]]
    assert list(readers.registered_readers())[:2] == ["text", "raster"]

    register_reader("text")(TextReader)  # the same kind again replaces it
    assert list(readers.registered_readers()).count("text") == 1
    with pytest.raises(TypeError, match="takes a monai.data.ImageReader class"):
        register_reader("bad")(dict)


@dataclass(frozen=True)
class ListOptions(sources.SourceOptions):
    list_label: str = sources.option("", "label of every image of a .list file", group="lists")


def _list_items(source, out_path, options: ListOptions) -> SourceItems:
    folder = source.parent
    rows = [
        {"image": str(folder / n), "label_name": options.list_label or n[0]}
        for n in source.read_text().split()
    ]
    labels = sorted({r["label_name"] for r in rows})
    items = [{**r, "label": labels.index(r["label_name"])} for r in rows]
    return SourceItems(items, labels, False, "list")


def _image_list(tmp_path, n=10):
    names = []
    for i in range(n):
        name = f"{'ab'[i % 2]}{i}.png"
        Image.fromarray(np.full((4, 4), i, np.uint8)).save(tmp_path / name)
        names.append(name)
    (tmp_path / "images.list").write_text("\n".join(names))
    return tmp_path / "images.list"


def test_a_registered_source_and_its_options(own_registries, tmp_path):
    listed = _image_list(tmp_path)
    with pytest.raises(
        ValueError, match=r"expected a folder, a label file \(.csv / .tsv\), .npz or datalist .json"
    ):
        build_datalist(listed, tmp_path / "d.json")
    sources.register_source(
        "list", claims=lambda p: p.suffix == ".list", options=ListOptions, describes=".list"
    )(_list_items)
    doc = json.loads(build_datalist(listed, tmp_path / "d.json", ratios="60:20:20").read_text())
    assert doc["source_kind"] == "list" and doc["labels"] == ["a", "b"]

    # the option reaches the command line, and a value equal to its default is not "given"
    assert (
        cit(
            [
                "datalist",
                str(listed),
                "--out",
                str(tmp_path / "c.json"),
                "--list-label",
                "x",
                "--allow-single-class",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "c.json").read_text())["labels"] == ["x"]
    parser = argparse.ArgumentParser()
    add_source_options(parser)
    assert "lists:\n  --list-label LIST_LABEL" in parser.format_help()
    assert sources.command_line_values({"list_label": "", "image_column": None}) == {}

    # an option of another source is refused, naming it; an unknown one too
    with pytest.raises(ValueError, match=r"option\(s\) list_label do not apply to a source read as 'folder'"):
        build_datalist(tmp_path, tmp_path / "e.json", list_label="x")
    with pytest.raises(TypeError, match=r"unknown source option\(s\) \['colour'\]"):
        build_datalist(listed, tmp_path / "e.json", colour="x")
    with pytest.raises(
        ValueError, match=r"option\(s\) \['list_label'\] are already options of another source"
    ):
        sources.register_source("other", claims=lambda p: False, options=ListOptions)(_list_items)


def test_a_registered_metric_follows_the_built_in_ones(own_registries, tmp_path):
    y, p = [0, 1, 1, 0], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.4, 0.6]]
    before = metrics.classification_metrics(y, p, ["n", "p"])
    metrics.register_metric("errors", tasks=["single_label"])(lambda s: int((s.y_true != s.y_pred).sum()))
    after = metrics.classification_metrics(y, p, ["n", "p"])
    assert list(after) == [*list(before)[:-3], "errors", *list(before)[-3:]]
    assert after["errors"] == 2 and {k: v for k, v in after.items() if k != "errors"} == before
    assert metrics.plugin_metrics(after) == {"errors": 2}
    assert "<tr><td>errors</td><td>2.000</td></tr>" in report_metrics_table(after)  # the report's summary
    metrics.write_metrics(after, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["errors"] == 2
    assert "errors" not in metrics.multilabel_metrics([[0, 1], [1, 0]], [[0.2, 0.7], [0.6, 0.4]], ["a", "b"])
    with pytest.raises(ValueError, match="is a key of every metrics dict"):
        metrics.register_metric("num_samples")(len)
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['segmentation'\]"):
        metrics.register_metric("dice", tasks=["segmentation"])


def test_a_plugin_that_cannot_be_imported_stops_in_one_line(own_registries, monkeypatch, capsys):
    monkeypatch.setenv("CIT_PLUGINS", "toolkit.io, no_such_module_here")
    with pytest.raises(
        PluginError, match="CIT_PLUGINS names 'no_such_module_here', which cannot be imported"
    ):
        load_plugins()
    assert cit(["datalist", "x", "--out", "y.json"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "cit: error: CIT_PLUGINS names 'no_such_module_here', which cannot be imported: "
        "No module named 'no_such_module_here'"
    ]
