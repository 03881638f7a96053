"""Label files as people write them: one row per image, with image, label and optionally patient
and split columns, in a CSV, TSV or Excel-exported CSV.

The file is read whatever the tool that wrote it: a UTF-8 / UTF-16 byte-order mark is dropped, a
file that is not UTF-8 is read as Windows-1252 (Excel on Windows), the separator (comma,
semicolon, tab or bar) is taken from the header row (or an Excel ``sep=;`` first line), and
spaces around column names and values are stripped. Columns are found by name
(``IMAGE_COLUMNS``, ``LABEL_COLUMNS``, ``PATIENT_COLUMNS``, ``SPLIT_COLUMNS``; case, spaces and
underscores ignored) unless named; without an image column an id column is matched against the
image file names, or ``image_pattern`` (``"head_ct/{id:03d}.png"``) builds the path.

Every problem of the file is a ``ValueError`` of one line naming the file, the column and what
was found (see :func:`manifest_items`).
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import logging
import os
import re
import string
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from toolkit.data.files import (
    DICOM_SUFFIXES,
    NIFTI_SUFFIXES,
    RASTER_SUFFIXES,
    find_image_files,
    is_image_file,
)
from toolkit.data.sources.base import SHOW, SPLIT_ALIASES, SourceItems, integer_classes, warn_list

logger = logging.getLogger(__name__)

# Column names that hold the image path / label / patient / split in label files met in the
# wild, most specific first; ``manifest_items`` takes the first one present. Names compare with
# case, spaces, hyphens and underscores ignored ("Patient ID" = "patient_id" = "PatientID").
IMAGE_COLUMNS = (
    "image",
    "image_path",
    "image_file",
    "filepath",
    "file_path",
    "path",
    "filename",
    "file_name",
    "file",
)
LABEL_COLUMNS = ("label", "class", "class_name", "diagnosis", "target", "category")
PATIENT_COLUMNS = ("patient_id", "patient", "subject_id", "subject")
SPLIT_COLUMNS = ("split", "subset", "partition")
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".txt")
# Cell values of a 0/1 label column (one column per class, multi-label), lower case.
TRUE_VALUES = ("1", "1.0", "true", "yes", "y", "positive", "pos", "x")
FALSE_VALUES = ("0", "0.0", "false", "no", "n", "negative", "neg", "")

_SEPARATORS = (",", ";", "\t", "|")
_INT = re.compile(r"-?\d+(?:\.0*)?")


def _key(name: str) -> str:
    """Column name as compared: lower case, without spaces, hyphens or underscores."""
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def _shown(values: Sequence, total: int | None = None) -> str:
    """``n (first five: a, b, ...)`` for an error message."""
    total = len(values) if total is None else total
    return f"{total} (first {min(SHOW, len(values))}: {', '.join(str(v) for v in values[:SHOW])})"


# ---------------------------------------------------------------------------------------------
# reading the file


def _decode(csv_path: Path, raw: bytes) -> str:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel "Unicode text"
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        logger.info("%s is not UTF-8: read as Windows-1252 (Excel's encoding on Windows)", csv_path)
        return raw.decode("cp1252", errors="replace")


def _separator(csv_path: Path, first_line: str) -> str:
    if csv_path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    unquoted = re.sub(r'"[^"]*"', "", first_line)
    counts = {sep: unquoted.count(sep) for sep in _SEPARATORS}
    best = max(_SEPARATORS, key=lambda sep: counts[sep])  # ties: the first listed (comma)
    return best if counts[best] else ","


def read_table(csv_path, header_only: bool = False) -> tuple[list[tuple[int, dict]], list[str]]:
    """``([(line number, row), ...], column names)`` of a label file with a header row.

    Column names and values are stripped of spaces and byte-order marks; empty column names (a
    trailing separator) and blank rows are left out. ``ValueError`` naming the file when it cannot
    be read, is an Excel workbook, has no header, or names a column twice.
    """
    csv_path = Path(csv_path)
    if csv_path.suffix.lower() in (".xlsx", ".xls", ".xlsm", ".ods"):
        raise ValueError(
            f"{csv_path} is a spreadsheet workbook: save it as CSV (e.g. 'CSV UTF-8') and pass that file"
        )
    try:
        with open(csv_path, "rb") as f:
            raw = f.read(65536) if header_only else f.read()
    except OSError as err:
        raise ValueError(f"cannot read label file {csv_path}: {err.strerror or err}") from err
    text = _decode(csv_path, raw)
    lines = text.splitlines(keepends=True)
    skipped = 0
    sep = None
    if lines and lines[0].strip().lower().startswith("sep=") and len(lines[0].strip()) == 5:
        sep, skipped, lines = lines[0].strip()[4], 1, lines[1:]  # Excel's separator hint
    while lines and not lines[0].strip():
        lines, skipped = lines[1:], skipped + 1
    if not lines:
        raise ValueError(f"label file {csv_path} is empty (no header row)")
    sep = sep or _separator(csv_path, lines[0])
    reader = csv.reader(io.StringIO("".join(lines[:1] if header_only else lines)), delimiter=sep)
    try:
        header = next(reader)
        names = [c.replace("\ufeff", "").strip() for c in header]
        if not any(names):
            raise ValueError(f"label file {csv_path} has an empty header row")
        seen = set()
        for name in names:
            if name and name in seen:
                raise ValueError(f"label file {csv_path} names column {name!r} twice")
            seen.add(name)
        rows = []
        for values in reader:
            if not any(v.strip() for v in values):
                continue
            row = {name: value.strip() for name, value in zip(names, values, strict=False) if name}
            rows.append((reader.line_num + skipped, row))
    except csv.Error as err:
        raise ValueError(
            f"cannot parse label file {csv_path}: line {reader.line_num + skipped}: {err}"
        ) from err
    return rows, [n for n in names if n]


def read_csv(csv_path: Path) -> tuple[list[dict], list[str]]:
    """(rows, column names) of a CSV / TSV with a header row; see :func:`read_table`."""
    rows, columns = read_table(csv_path)
    return [row for _, row in rows], columns


def csv_header(csv_path: Path) -> list[str]:
    """The column names of a label file (its header row only); ``ValueError`` if unreadable or empty."""
    return read_table(csv_path, header_only=True)[1]


def closest_column(name: str, columns: Sequence[str]) -> str | None:
    """The column most like ``name`` (for "did you mean"), or None."""
    keys = {_key(c): c for c in columns}
    match = difflib.get_close_matches(_key(name), list(keys), n=1, cutoff=0.5)
    return keys[match[0]] if match else None


def resolve_column(csv_path, columns: Sequence[str], name: str, what: str) -> str:
    """The column of ``columns`` called ``name`` (exactly, else ignoring case / spaces / underscores).

    ``ValueError`` naming the file, the closest column and all columns when there is none.
    """
    if name in columns:
        return name
    matches = [c for c in columns if _key(c) == _key(name)]
    if len(matches) == 1:
        return matches[0]
    close = closest_column(name, columns)
    hint = f" (closest: {close!r})" if close else ""
    raise ValueError(f"{csv_path}: no {what} column {name!r}{hint}; columns are {list(columns)}")


def require_columns(csv_path, columns, wanted) -> None:
    """``ValueError`` naming a missing column and the closest one (``None`` entries are optional)."""
    for name in wanted:
        if name and name not in columns:
            close = closest_column(name, columns)
            hint = f" (closest: {close!r})" if close else ""
            raise ValueError(f"{csv_path}: no column {name!r}{hint}; columns are {list(columns)}")


def _find_known(columns: Sequence[str], known: Sequence[str], exclude: Sequence[str] = ()) -> str | None:
    by_key = {_key(c): c for c in columns if c not in exclude}
    return next((by_key[_key(k)] for k in known if _key(k) in by_key), None)


# ---------------------------------------------------------------------------------------------
# finding the image of a row


def _stem(name: str) -> str:
    lower = name.lower()
    for suffix in (*NIFTI_SUFFIXES, *RASTER_SUFFIXES, *DICOM_SUFFIXES):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


class ImageIndex:
    """Image files below a folder, looked up by a row's value: a path (relative to the folder or
    absolute), a file name, a file stem (``"000"`` -> ``000.png``) or a number equal to a numeric
    stem (``"7"`` -> ``007.png``). :meth:`find` returns the path, ``None`` (no file) or a list
    (several files match)."""

    def __init__(self, root: Path):
        self.root = root
        self._tables: list[dict[str, list[Path]]] | None = None

    def _build(self) -> list[dict[str, list[Path]]]:
        names, stems, numbers = defaultdict(list), defaultdict(list), defaultdict(list)
        for path in find_image_files(self.root):
            names[path.name.lower()].append(path)
            stem = _stem(path.name)
            stems[stem.lower()].append(path)
            if stem.isdigit():
                numbers[str(int(stem))].append(path)
        return [names, stems, numbers]

    def find(self, value: str) -> Path | list[Path] | None:
        path = Path(value)
        direct = path if path.is_absolute() else self.root / path
        if direct.is_file():
            return direct
        if self._tables is None:
            self._tables = self._build()
        names, stems, numbers = self._tables
        name = path.name.lower()
        number = str(int(float(name))) if _INT.fullmatch(name) and not name.startswith("-") else None
        for table, key in ((names, name), (stems, _stem(name)), (numbers, number)):
            if key is not None and key in table:
                found = table[key]
                return found[0] if len(found) == 1 else found
        return None

    def matches(self, values: Sequence[str]) -> int:
        """How many of ``values`` name exactly one image."""
        return sum(1 for v in values if v and isinstance(self.find(v), Path))


class _Pattern:
    """``image_pattern`` such as ``"head_ct/{id:03d}.png"``: the fields are columns; a numeric
    format (``d``, ``x``, ``f`` ...) turns the cell into a number first."""

    def __init__(self, csv_path, pattern: str, columns: Sequence[str]):
        self.pattern = pattern
        self.fields: list[tuple[str, str, str]] = []  # (field in the pattern, column, type)
        try:
            parsed = list(string.Formatter().parse(pattern))
        except ValueError as err:
            raise ValueError(f"image pattern {pattern!r}: {err}") from err
        for _, field, spec, _ in parsed:
            if field is None:
                continue
            if not field:
                raise ValueError(f"image pattern {pattern!r}: name a column in every {{}}, e.g. {{id:03d}}")
            column = resolve_column(csv_path, columns, field, "image-pattern")
            kind = (
                "int"
                if spec and spec[-1] in "bcdoxXn"
                else "float"
                if spec and spec[-1] in "eEfFgG%"
                else "str"
            )
            self.fields.append((field, column, kind))
        if not self.fields:
            raise ValueError(f"image pattern {pattern!r} names no column: use e.g. 'images/{{id}}.png'")

    def format(self, row: dict) -> str:
        values = {}
        for field, column, kind in self.fields:
            value = row.get(column, "")
            if kind == "int":
                if not _INT.fullmatch(value):
                    raise ValueError(f"{column} = {value!r} is not an integer")
                value = int(float(value))
            elif kind == "float":
                try:
                    value = float(value)
                except ValueError:
                    raise ValueError(f"{column} = {value!r} is not a number") from None
            values[field] = value
        return self.pattern.format_map(values)


# ---------------------------------------------------------------------------------------------
# rows -> items


class _LabelColumns:
    """How a label file's rows name their classes: one column (a class name or index, or names joined by
    ``multi_label_sep``) or one 0/1 column per class. Problems go to ``problems`` ("line N: ..." entries)."""

    def __init__(self, csv_path: Path, columns: list[str], multi_label_sep, negative_labels, problems: dict):
        self.csv_path, self.columns, self.sep, self.problems = csv_path, columns, multi_label_sep, problems
        self.by_columns = len(columns) > 1
        self.multi = multi_label_sep is not None or self.by_columns
        self.negatives = {n.lower() for n in negative_labels}
        self.where = (
            f"{csv_path}: column {columns[0]!r}" if not self.by_columns else f"{csv_path}: label columns"
        )
        self.what = f"column {columns[0]!r}" if not self.by_columns else f"label columns {columns}"

    def names_of(self, line: int, row: dict):
        """The row's class names (a list for multi-label), or None (the problem is recorded)."""
        if self.by_columns:
            cells = {c: row.get(c, "") for c in self.columns}
            if not any(cells.values()):
                self.problems["unlabelled"].append(f"line {line}")
                return None
            odd = [f"{c} = {v!r}" for c, v in cells.items() if v.lower() not in (*TRUE_VALUES, *FALSE_VALUES)]
            if odd:
                self.problems["label"].append(f"line {line}: {', '.join(odd)}")
                return None
            return [c for c, v in cells.items() if v.lower() in TRUE_VALUES]
        value = row.get(self.columns[0], "")
        if self.multi:
            return [
                n.strip()
                for n in value.split(self.sep)
                if n.strip() and n.strip().lower() not in self.negatives
            ]
        if not value:
            self.problems["unlabelled"].append(f"line {line}")
            return None
        return value

    def classes(self, numbered: list, all_names: list, classes) -> list[str]:
        """The class names in label order: ``classes`` if given, else found in the rows (integer labels are
        class indices)."""
        labelled = [n for n in all_names if n is not None]
        if self.by_columns:
            if classes is None:
                return self.columns
            lowered = {c.lower(): c for c in self.columns}
            if sorted(c.lower() for c in classes) != sorted(lowered):
                raise ValueError(
                    f"{self.csv_path}: classes {list(classes)} must be the label columns {self.columns}"
                )
            return [lowered[c.lower()] for c in classes]
        if classes is not None:
            return [str(c) for c in classes]
        if self.multi:
            return sorted({n for names in labelled for n in names})
        if labelled and all(_INT.fullmatch(n) for n in labelled):
            values = [int(float(n)) for n in labelled]
            if min(values) < 0:
                negative = [
                    f"line {ln}: {n}"
                    for (ln, _), n in zip(numbered, all_names, strict=True)
                    if n and int(float(n)) < 0
                ]
                raise ValueError(
                    f"{self.where} has negative integer labels: {_shown(negative)}; integer labels are class "
                    "indices 0, 1, ..."
                )
            return integer_classes(values, self.where)
        return sorted(set(labelled))


def _class_index(labels: list[str]) -> Callable[[str], int | None]:
    """A class name's index in ``labels``: exact, then case-insensitive, then as an integer index."""
    index = {n: i for i, n in enumerate(labels)}
    lowered = {n.lower(): i for i, n in enumerate(labels)}

    def index_of(name: str) -> int | None:
        if name in index:
            return index[name]
        if name.lower() in lowered:
            return lowered[name.lower()]
        if _INT.fullmatch(name) and 0 <= int(float(name)) < len(labels):
            return int(float(name))
        return None

    return index_of


def _image_path(rel: str, line: int, base: Path, image_lookup, finder, problems: dict) -> Path | None:
    """The image a row names, or None (the problem is recorded); one outside ``base`` is kept and noted."""
    path = image_lookup(rel) if image_lookup else None
    if path is None and finder is not None:
        path = finder.find(rel)
        if isinstance(path, list):
            problems["ambiguous"].append(f"{rel} ({len(path)} files, e.g. {path[0]})")
            return None
    if path is None:
        path = Path(rel) if os.path.isabs(rel) else base / rel
    if not path.is_file():
        problems["missing"].append(rel)
        return None
    if not is_image_file(path):
        problems["not an image"].append(f"line {line}: {rel}")
        return None
    if not path.resolve().is_relative_to(base):
        problems["outside"].append(f"line {line}: {rel}")
    return path


def _labelled(item: dict, names, line: int, labels: list[str], index_of, unknown_kind: str, problems) -> bool:
    """Put the class of ``names`` (a list: multi-label) into ``item`` (``label``, ``label_name``); False when
    a name is no class (recorded as ``unknown_kind``; multi-label: "unknown")."""
    if isinstance(names, list):
        unknown = [n for n in names if index_of(n) is None]
        if unknown:
            problems["unknown"].append(f"line {line}: {unknown}")
            return False
        hot = [0] * len(labels)
        for n in names:
            hot[index_of(n)] = 1
        item["label"], item["label_name"] = hot, [labels[i] for i, v in enumerate(hot) if v]
        return True
    i = index_of(names)
    if i is None:
        problems[unknown_kind].append(f"line {line}: {names!r}")
        return False
    item["label"], item["label_name"] = i, labels[i]
    return True


def _report_problems(csv_path: Path, problems: dict, messages: dict, strict: bool, errors: list[str]) -> None:
    """Raise on the first kind of problem in ``errors`` (``strict``); warn about every kind otherwise."""
    for kind in errors if strict else ():
        if problems[kind]:
            raise ValueError(f"{csv_path}: {messages[kind]}: {_shown(problems[kind])}")
    for kind, message in messages.items():
        skipped = f"{csv_path}: skipping {message.split(': ', 1)[1]}"
        warn_list(skipped if kind != "split" else f"{csv_path}: {message} (no split)", problems[kind])


def csv_items(
    csv_path,
    image_column="image",
    label_column="label",
    root=None,
    patient_column=None,
    multi_label_sep=None,
    classes=None,
    split_column=None,
    negative_labels=(),
    image_lookup: Callable[[str], Path | None] | None = None,
    *,
    image_pattern: str | None = None,
    strict: bool = False,
    skip_missing: bool = False,
    known_splits_only: bool = False,
) -> SourceItems:
    """The items of a label file; see :func:`from_csv` and :func:`manifest_items`.

    ``label_column`` is one column, or a list of 0/1 columns, one per class (multi-label).
    ``negative_labels`` (multi-label) name "no class" values such as "No Finding";
    ``image_lookup`` finds an image by the row's value where a plain join with ``root`` does not;
    ``image_pattern`` builds the path from the row instead of ``image_column``.

    ``strict`` (what ``manifest_items`` uses): a row whose image is missing (unless
    ``skip_missing``), a row without a label, an unusable label value and an image listed twice
    are errors, each one line with the count and the first five; otherwise such rows are
    reported and skipped. ``known_splits_only``: a ``split_column`` value that names no split is
    an error instead of "no split".
    """
    csv_path = Path(csv_path).expanduser().resolve()
    numbered, columns = read_table(csv_path)
    base = Path(root).expanduser().resolve() if root is not None else csv_path.parent
    cols = _resolve_columns(
        csv_path, columns, image_column, label_column, patient_column, split_column, image_pattern
    )
    problems: dict[str, list[str]] = defaultdict(list)  # kind of problem -> "line N: ..." entries
    label_reader = _LabelColumns(csv_path, cols.labels, multi_label_sep, negative_labels, problems)
    all_names = [label_reader.names_of(line, row) for line, row in numbered]
    labels = label_reader.classes(numbered, all_names, classes)
    unknown_kind = "other class" if classes is not None else "unknown"
    items = _row_items(numbered, all_names, cols, labels, unknown_kind, base, image_lookup, strict, problems)

    image_what = f"image pattern {image_pattern!r}" if cols.pattern is not None else f"column {cols.image!r}"
    messages = _problem_messages(image_what, label_reader.what, base, labels, cols.split)
    _report_problems(csv_path, problems, messages, strict, _error_kinds(skip_missing, known_splits_only))
    _warn_kept_or_left_out(csv_path, problems, labels, image_what, base)
    if not items:
        raise ValueError(f"{csv_path}: no usable rows (images resolved against {base})")
    meta = _csv_meta(csv_path, base, cols, image_pattern, label_reader.by_columns)
    return SourceItems(items, labels, multi_label=label_reader.multi, kind="csv", meta=meta)


class _Columns(NamedTuple):
    """The columns of a label file that :func:`csv_items` reads, resolved to the file's own names."""

    image: str  # as given (not resolved) when ``pattern`` builds the path
    pattern: _Pattern | None
    labels: list[str]
    patient: str | None
    split: str | None


def _resolve_columns(
    csv_path: Path, columns, image_column, label_column, patient_column, split_column, image_pattern
) -> _Columns:
    """The columns named, resolved (``ValueError`` naming the file and the closest column)."""
    label_columns = [label_column] if isinstance(label_column, str) else list(label_column)
    if not label_columns:
        raise ValueError(f"{csv_path}: no label column given")
    label_columns = [resolve_column(csv_path, columns, c, "label") for c in label_columns]
    pattern = _Pattern(csv_path, image_pattern, columns) if image_pattern else None
    if pattern is None:
        image_column = resolve_column(csv_path, columns, image_column, "image")
    patient_column = resolve_column(csv_path, columns, patient_column, "patient") if patient_column else None
    split_column = resolve_column(csv_path, columns, split_column, "split") if split_column else None
    return _Columns(image_column, pattern, label_columns, patient_column, split_column)


def _row_image(row: dict, line: int, cols: _Columns, problems: dict) -> str | None:
    """The image a row names (its image column, or the pattern filled in), or None (recorded)."""
    if cols.pattern is not None:
        try:
            rel = cols.pattern.format(row)
        except ValueError as err:
            problems["pattern"].append(f"line {line}: {err}")
            return None
    else:
        rel = row.get(cols.image, "")
    if not rel:
        problems["no image"].append(f"line {line}")
        return None
    return rel


def _add_patient_and_split(item: dict, row: dict, line: int, cols: _Columns, problems: dict) -> None:
    """The row's patient id and split into ``item``; a split value that names no split is recorded."""
    if cols.patient and row.get(cols.patient):
        item["patient_id"] = row[cols.patient]
    if cols.split and row.get(cols.split):
        split = SPLIT_ALIASES.get(row[cols.split].lower())
        if split:
            item["split"] = split
        else:
            problems["split"].append(f"line {line}: {row[cols.split]!r}")


def _row_items(
    numbered, all_names, cols: _Columns, labels, unknown_kind, base: Path, image_lookup, strict, problems
) -> list[dict]:
    """An item per usable row; the problems of the others are recorded (an image listed twice: ``strict``)."""
    index_of = _class_index(labels)
    finder = ImageIndex(base) if strict and image_lookup is None else None
    items, first_line = [], {}
    for (line, row), names in zip(numbered, all_names, strict=True):
        rel = _row_image(row, line, cols, problems)
        if rel is None:
            continue
        path = _image_path(rel, line, base, image_lookup, finder, problems)
        if path is None or names is None:  # no label, or an unusable one: recorded by names_of
            continue
        item = {"image": str(path.resolve())}
        if not _labelled(item, names, line, labels, index_of, unknown_kind, problems):
            continue
        _add_patient_and_split(item, row, line, cols, problems)
        if strict and item["image"] in first_line:
            problems["duplicate"].append(f"{rel} (lines {first_line[item['image']]} and {line})")
            continue
        first_line.setdefault(item["image"], line)
        items.append(item)
    return items


def _problem_messages(image_what: str, label_what: str, base: Path, labels, split_column) -> dict[str, str]:
    """What each kind of row problem means, for the error or warning that lists those rows."""
    return {
        "pattern": f"{image_what}: rows whose values do not fit the pattern",
        "no image": f"{image_what}: rows without an image",
        "ambiguous": f"{image_what}: rows matching several image files (name the file with a path)",
        "missing": f"{image_what}: rows whose image file is missing under {base}",
        "not an image": f"{image_what}: rows naming a file that is not an image (DICOM, NIfTI, PNG, JPEG, BMP, "
        "TIFF, MHA, NRRD)",
        "unlabelled": f"{label_what}: rows without a label",
        "label": f"{label_what}: values that are neither 0/1 nor yes/no",
        "unknown": f"{label_what}: labels that are not classes {labels}",
        "duplicate": f"{image_what}: images listed more than once",
        "split": f"split column {split_column!r}: values that name no split (train / val / test ...)",
    }


def _error_kinds(skip_missing: bool, known_splits_only: bool) -> list[str]:
    """The kinds of row problem that are errors in strict mode."""
    errors = [
        "pattern",
        "no image",
        "ambiguous",
        "not an image",
        "unlabelled",
        "label",
        "unknown",
        "duplicate",
    ]
    errors += [kind for kind, on in (("missing", not skip_missing), ("split", known_splits_only)) if on]
    return errors


def _warn_kept_or_left_out(csv_path: Path, problems: dict, labels, image_what: str, base: Path) -> None:
    """Warn about the rows left out for their class and those kept with an image outside ``base``."""
    warn_list(f"{csv_path}: leaving out rows of a class not in {labels}", problems["other class"])
    warn_list(
        f"{csv_path}: {image_what}: rows whose image lies outside the image root {base} (kept; check that the "
        "label file is the one you meant, or name the folder that holds the images with --root)",
        problems["outside"],
    )


def _csv_meta(csv_path: Path, base: Path, cols: _Columns, image_pattern, by_columns: bool) -> dict:
    """The label file, image root and columns a datalist records about where its items came from."""
    return {
        "label_file": str(csv_path),
        "image_root": str(base),
        "columns": {
            "image": cols.image if cols.pattern is None else None,
            "image_pattern": image_pattern,
            "label": cols.labels if by_columns else cols.labels[0],
            "patient": cols.patient,
            "split": cols.split,
        },
    }


def _named_or_known(csv_path: Path, columns, name: str | None, known: Sequence[str], what: str) -> str | None:
    """The column ``name`` (resolved), or when not named the first of ``known`` present, or None."""
    return resolve_column(csv_path, columns, name, what) if name else _find_known(columns, known)


def _manifest_image_column(
    csv_path: Path, numbered, columns, base: Path, image_column, image_pattern, taken, chosen: dict
) -> str | None:
    """The image column: named, else the first of ``IMAGE_COLUMNS``, else the one whose values match
    image file names (said in ``chosen``); None when ``image_pattern`` builds the path."""
    if image_pattern:
        _Pattern(csv_path, image_pattern, columns)  # unknown fields fail here, naming the closest column
        return None
    if image_column:
        return resolve_column(csv_path, columns, image_column, "image")
    image = _find_known(columns, IMAGE_COLUMNS, exclude=taken)
    if image is None:
        image = _match_id_column(csv_path, numbered, columns, base, taken)
        chosen["image"] = f"{image!r} (its values match image file names below {base})"
    return image


def _manifest_label_column(csv_path: Path, columns, taken: list, chosen: dict) -> str:
    """The label column when none is named: the first of ``LABEL_COLUMNS``, else the only column not
    ``taken`` (said in ``chosen``)."""
    found = _find_known(columns, LABEL_COLUMNS, exclude=taken)
    if found is None:
        rest = [c for c in columns if c not in taken]
        if len(rest) != 1:
            raise ValueError(
                f"{csv_path}: no label column: none of {list(LABEL_COLUMNS)} is present and "
                f"{len(rest)} other columns are {rest}; name it with --label-column (several for multi-label)"
            )
        found = rest[0]
        chosen["label"] = f"{found!r} (the only other column)"
    return found


def _log_manifest_columns(csv_path: Path, chosen: dict, image, image_pattern, labels, patient, split) -> None:
    """Say in the log which columns are read, and how those not named were found."""
    chosen.setdefault("image", repr(image) if image else f"pattern {image_pattern!r}")
    chosen.setdefault("label", ", ".join(repr(c) for c in labels))
    logger.info(
        "%s: image %s, label %s, patient %s, split %s",
        csv_path,
        chosen["image"],
        chosen["label"],
        repr(patient) if patient else "-",
        repr(split) if split else "-",
    )


def manifest_items(
    csv_path,
    classes=None,
    *,
    root=None,
    image_column: str | None = None,
    label_column: str | Sequence[str] | None = None,
    patient_column: str | None = None,
    split_column: str | None = None,
    image_pattern: str | None = None,
    skip_missing: bool = False,
) -> SourceItems:
    """The items of a label file (CSV / TSV / Excel CSV), its columns named or found.

    Not named, the image column is the first of ``IMAGE_COLUMNS`` present, else the column whose
    values match the most image file names below ``root`` (default: the file's folder) - an id
    column such as ``id`` = ``7`` for ``007.png``; ``image_pattern`` builds the path instead. The
    label column is the first of ``LABEL_COLUMNS``, else the only column left; several label
    columns (0/1, one per class) make a multi-label set. Patient and split columns are used when
    named or found (``PATIENT_COLUMNS``, ``SPLIT_COLUMNS``).

    One-line ``ValueError`` naming the file and the column for: an unknown column (with the
    closest name), a missing image file (count and first five; ``skip_missing`` skips them with a
    warning), a row without a label, an image listed twice, a split value that names no split (a
    named split column only). Labels are class names or indices; ``classes`` fixes the order, and
    rows of other classes are left out with a warning.
    """
    csv_path = Path(csv_path).expanduser().resolve()
    if not csv_path.is_file():
        raise FileNotFoundError(f"label file not found: {csv_path}")
    numbered, columns = read_table(csv_path)
    base = Path(root).expanduser().resolve() if root is not None else csv_path.parent
    chosen: dict[str, str] = {}  # how a column that was not named was found, for the log

    patient = _named_or_known(csv_path, columns, patient_column, PATIENT_COLUMNS, "patient")
    split = _named_or_known(csv_path, columns, split_column, SPLIT_COLUMNS, "split")
    labels_given = [label_column] if isinstance(label_column, str) else list(label_column or [])
    labels_given = [resolve_column(csv_path, columns, c, "label") for c in labels_given]
    taken = [c for c in (patient, split, *labels_given) if c]
    image = _manifest_image_column(
        csv_path, numbered, columns, base, image_column, image_pattern, taken, chosen
    )
    if not labels_given:
        labels_given = [_manifest_label_column(csv_path, columns, [image, *taken], chosen)]
    if image is not None and image in labels_given:
        raise ValueError(f"{csv_path}: column {image!r} cannot be both the image and a label column")
    _log_manifest_columns(csv_path, chosen, image, image_pattern, labels_given, patient, split)
    return csv_items(
        csv_path,
        image_column=image or "",
        label_column=labels_given if len(labels_given) > 1 else labels_given[0],
        root=base,
        patient_column=patient,
        classes=classes,
        split_column=split,
        image_pattern=image_pattern,
        strict=True,
        skip_missing=skip_missing,
        known_splits_only=bool(split_column),
    )


def _match_id_column(csv_path, numbered, columns, base: Path, taken) -> str:
    """The column whose values name the most image files below ``base`` (at least half the rows)."""
    sample = [row for _, row in numbered[:200]]
    index = ImageIndex(base)
    scores = {c: index.matches([r.get(c, "") for r in sample]) for c in columns if c not in taken}
    best = max(scores, key=lambda c: scores[c], default=None)
    if best is None or not sample or scores[best] * 2 < len(sample):
        raise ValueError(
            f"{csv_path}: no image column: none of {list(IMAGE_COLUMNS)} is present and no column's values "
            f"match image file names below {base} (columns are {list(columns)}); name it with --image-column, "
            "or build the path with --image-pattern (e.g. 'images/{id:03d}.png')"
        )
    return best


def from_csv(
    csv_path,
    image_column="image",
    label_column="label",
    root=None,
    patient_column=None,
    multi_label_sep=None,
    classes=None,
    split_column=None,
) -> list[dict]:
    """Items of a CSV manifest (one row per image).

    Relative image paths are resolved against ``root`` (default: the CSV's folder). Labels are
    class names or indices; ``classes`` fixes the order (default: sorted names, or 0..max for
    integer labels). With ``multi_label_sep`` (e.g. ``"|"``) a row may name several classes and
    ``label`` is a multi-hot list. Rows whose image is missing are reported and skipped.
    """
    return csv_items(
        csv_path, image_column, label_column, root, patient_column, multi_label_sep, classes, split_column
    ).items
