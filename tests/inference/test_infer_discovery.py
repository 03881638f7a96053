"""Input discovery (content-based, filters, series grouping) and the durable journal, without a model."""

from __future__ import annotations

import json

from infer_helpers import make_dicom, write_input_tree

from toolkit.inference.discovery import DicomFilters, Ignored, discover_inputs
from toolkit.inference.locking import LOCK_NAME
from toolkit.inference.writers import ResultJournal, read_journals


def test_discovery_finds_dicom_by_content_and_decides_hopeless_files(tmp_path):
    expected = write_input_tree(tmp_path)
    items, ignored = discover_inputs(tmp_path)
    assert sorted(i.path for i in items) == sorted(expected)
    assert ignored == Ignored(other=1, hidden=2)  # README.txt; .DS_Store and .thumbnails/
    by_path = {i.path: i for i in items}
    assert by_path["pacs/study1/series_m2/IM0000"].kind == "dicom"  # no extension
    assert by_path["broken/empty.dcm"].status == "error"
    assert by_path["broken/report_sr.dcm"].status == "error"
    assert by_path["pacs/study2/multiframe/MF0001"].status == "error"
    assert by_path["raster/grey.png"].status is None  # left to the bundle's reader


def test_filters_skip_with_a_reason(tmp_path):
    make_dicom(tmp_path / "ct", study=1, series="a", index=0)
    (tmp_path / "x.png").write_bytes(b"not really")
    items, _ = discover_inputs(tmp_path, DicomFilters(modalities=("MR",)))
    assert {i.path: i.status for i in items} == {"ct": "skipped", "x.png": "skipped"}
    assert "modality 'CT'" in items[0].reason
    items, _ = discover_inputs(
        tmp_path, DicomFilters(modalities=("ct",), body_parts=("HEAD",), sop_classes=("CTImageStorage",))
    )
    assert {i.path: i.status for i in items} == {"ct": None, "x.png": "skipped"}
    items, _ = discover_inputs(tmp_path, DicomFilters(body_parts=("CHEST",)))
    assert "body part 'HEAD'" in items[0].reason


def test_frames_each_and_series_grouping_in_slice_order(tmp_path):
    make_dicom(tmp_path / "mf", study=1, series="m", index=0, frames=4)
    for i in (2, 0, 1):  # written out of order, named against slice order
        make_dicom(tmp_path / "s" / f"z{2 - i}", study=1, series="s", index=i)
    items, _ = discover_inputs(tmp_path, frames="each")
    assert [(i.path, i.frame) for i in items if i.path == "mf"] == [("mf", f) for f in range(4)]
    assert len({i.key for i in items}) == len(items)
    items, _ = discover_inputs(tmp_path, series_mode=True)
    series = [i for i in items if i.files]
    assert len(series) == 2
    stack = next(i for i in series if len(i.files) == 3)
    assert [p.rsplit("/", 1)[-1] for p in stack.files] == ["z2", "z1", "z0"]  # z position 0, 1, 2


def test_journal_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "part.jsonl"
    with ResultJournal(path) as journal:
        journal.append([{"key": "a", "status": "ok"}, {"key": "b", "status": "error"}])
    with open(path, "a") as f:
        f.write(json.dumps({"key": "c", "status": "ok"})[:10])  # a kill in the middle of a write
    assert set(read_journals([path])) == {"a", "b"}
    with ResultJournal(path) as journal:  # reopening cuts the torn line
        journal.append([{"key": "b", "status": "ok"}])
    records = read_journals([path])
    assert set(records) == {"a", "b"} and records["b"]["status"] == "ok"


def test_output_folder_inside_the_input_is_not_an_input(tmp_path):
    make_dicom(tmp_path / "IM1", study=1, series="a", index=0)
    make_dicom(
        tmp_path / "out" / "sr" / "report", study=1, series="b", index=0
    )  # e.g. an SR of a previous run
    earlier = tmp_path / "earlier_run"  # results of an earlier run kept in the input: not inputs, named
    earlier.mkdir()
    (earlier / LOCK_NAME).write_text("")
    (earlier / "predictions.csv").write_text("path,status\n")
    finished = tmp_path / "finished_run"  # a run that ended removed its lock file: its run.json tells
    make_dicom(finished / "sr" / "1.2.3.dcm", study=2, series="c", index=0)
    make_dicom(
        finished / "pacs" / "cache" / "1.2" / "1.2.4.dcm", study=2, series="c", index=1
    )  # --keep-cache
    (finished / "run.json").write_text(json.dumps({"fingerprint": "0" * 16, "weights_sha256": "1" * 64}))
    not_ours = tmp_path / "other"  # someone else's run.json is no reason to skip anything
    make_dicom(not_ours / "sr" / "x.dcm", study=3, series="d", index=0)
    (not_ours / "run.json").write_text('{"fingerprint": 1}')
    items, ignored = discover_inputs(tmp_path, exclude=tmp_path / "out")
    assert [i.path for i in items] == ["IM1", "other/sr/x.dcm"]
    assert ignored.earlier_output == [
        "earlier_run/.cit-infer.lock",
        "earlier_run/predictions.csv",
        "finished_run/pacs",
        "finished_run/sr",
        "finished_run/run.json",
    ]
    assert (ignored.other, ignored.hidden) == (1, 0)  # other/run.json: not an image, not ours
    assert "5 entries of an earlier `cit infer` output (earlier_run/.cit-infer.lock" in str(ignored)
