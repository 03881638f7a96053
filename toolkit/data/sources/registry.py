"""The data sources ``build_datalist`` reads, and the options that say how to read them.

A source registers itself with :func:`register_source` (as timm's ``@register_model``): a name, a
test of the path it claims, and the function that reads it into :class:`SourceItems`. Its options
are the fields of a frozen dataclass (:class:`SourceOptions`, or a subclass adding the source's
own); that one declaration is what ``cit datalist`` / ``cit audit`` / ``cit compare`` turn into
command-line options, what ``toolkit.bundle.datalist_for`` takes from a bundle's ``split`` and
an experiment's ``data``, and what the split spec records. ``docs/extending.md`` has a recipe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.data.plugins import load_plugins
from toolkit.data.sources.base import SourceItems

LABEL_FILE_GROUP = "label files (CSV / TSV)"
CLASSES_GROUP = "classes"


def option(
    default: Any,
    help: str,
    *,
    group: str = LABEL_FILE_GROUP,
    rule: bool = False,
    parse: Callable[[Any], Any] | None = None,
    **argparse_kwargs: Any,
) -> Any:
    """A field of a source's options. ``help`` / ``group`` / ``argparse_kwargs`` (``action``,
    ``metavar`` ...) make its command-line option (``--image-column`` for ``image_column``);
    ``parse`` turns the command-line value into the option's value. ``rule``: a split rule that
    the split spec always records (``classes``); other options are recorded only when given, so a
    new option keeps every earlier fingerprint."""
    meta = {"help": help, "group": group, "rule": rule, "parse": parse, "argparse": argparse_kwargs}
    return field(default=default, metadata=meta)


def _comma_list(value: str | None) -> list[str] | None:
    return [c.strip() for c in value.split(",") if c.strip()] if value else None


def _label_columns(given: list[str] | None) -> str | list[str] | None:
    """``--label-column a --label-column b,c`` -> ``["a", "b", "c"]``; one column stays a string."""
    labels = [c.strip() for value in given or [] for c in value.split(",") if c.strip()]
    return (labels[0] if len(labels) == 1 else labels) or None


@dataclass(frozen=True)
class SourceOptions:
    """How the built-in sources are read (a label file's columns, which classes, name presets)."""

    image_column: str | None = option(None, "column with the image path, file name or id")
    label_column: str | list[str] | None = option(
        None,
        "column with the label; repeat it (or separate with commas) for several 0/1 columns, "
        "one per class (multi-label)",
        action="append",
        metavar="COLUMN",
        parse=_label_columns,
    )
    patient_column: str | None = option(None, "column with the patient id")
    split_column: str | None = option(None, "column naming each row's split (train / val / test)")
    image_pattern: str | None = option(
        None,
        "image path built from a row, relative to the label file's folder, e.g. "
        "'head_ct/{id:03d}.png' (fields are columns; :03d formats a number)",
        metavar="PATTERN",
    )
    skip_missing: bool = option(
        False,
        "skip rows whose image file is missing (with a warning) instead of stopping",
        action="store_true",
    )
    classes: list[str] | None = option(
        None,
        "comma-separated class names, in label order; images of other classes are left out",
        group=CLASSES_GROUP,
        rule=True,
        parse=_comma_list,
    )
    allow_single_class: bool = option(
        False,
        "accept a source whose images all get one class (otherwise an error)",
        group=CLASSES_GROUP,
        action="store_true",
    )
    label_from_name: str | None = option(
        None, "label preset from file names, e.g. kermany_3class", group=CLASSES_GROUP, rule=True
    )
    patient_from_name: str | None = option(
        None, "patient-id preset from file names, e.g. kermany", group=CLASSES_GROUP, rule=True
    )

    @property
    def table(self) -> dict:
        """The label-file options that were given (``image_column`` ... ``image_pattern``)."""
        return {k: v for k in TABLE_OPTIONS if (v := getattr(self, k))}


# How a label file is read: the options that apply to a label file (CSV / TSV) only.
TABLE_OPTIONS = ("image_column", "label_column", "patient_column", "split_column", "image_pattern")

SourceReader = Callable[[Path, Path, Any], SourceItems]


@dataclass(frozen=True)
class RegisteredSource:
    name: str
    claims: Callable[[Path], bool]
    read: SourceReader  # (source, datalist path, options) -> SourceItems
    options: type[SourceOptions]
    describes: str  # what it reads, for the error about a source no one claims


_SOURCES: list[RegisteredSource] = []  # in registration order; the last registered is asked first


def register_source(
    name: str,
    claims: Callable[[Path], bool],
    options: type[SourceOptions] = SourceOptions,
    describes: str = "",
) -> Callable[[SourceReader], SourceReader]:
    """Decorator over ``read(source: Path, out_path: Path, options) -> SourceItems``: ``build_datalist``
    (so ``cit datalist``, ``cit audit``, bundles and experiments) reads with it every source path for
    which ``claims(path)`` is true, asking the source registered last first. ``options``: the
    dataclass (:class:`SourceOptions` or a subclass adding fields made with :func:`option`) whose
    instance ``read`` gets; its new fields become command-line options and ``datalist_for``
    keywords. Registering a name again replaces it."""
    if not (dataclasses.is_dataclass(options) and issubclass(options, SourceOptions)):
        raise TypeError(f"register_source({name!r}): options must be a dataclass subclassing SourceOptions")

    def add(read: SourceReader) -> SourceReader:
        others = [s for s in _SOURCES if s.name != name]
        known = {f.name: s.name for s in others for f in dataclasses.fields(s.options)}
        base = {f.name for f in dataclasses.fields(SourceOptions)}
        clash = sorted(f.name for f in dataclasses.fields(options) if f.name in known and f.name not in base)
        if clash:
            raise ValueError(
                f"register_source({name!r}): option(s) {clash} are already options of another source"
            )
        _SOURCES[:] = [*others, RegisteredSource(name, claims, read, options, describes or name)]
        return read

    return add


def registered_sources() -> list[RegisteredSource]:
    """The sources, in the order they are asked (after importing the modules ``CIT_PLUGINS`` names)."""
    load_plugins()
    return list(reversed(_SOURCES))


def source_for(path: Path) -> RegisteredSource | None:
    """The first registered source that claims ``path``."""
    return next((s for s in registered_sources() if s.claims(path)), None)


def option_fields() -> dict[str, dataclasses.Field]:
    """Every source option, by name: :class:`SourceOptions`' fields first, then each registered
    source's own in registration order (what the command line shows, in that order)."""
    found = {f.name: f for f in dataclasses.fields(SourceOptions)}
    for source in reversed(registered_sources()):
        for f in dataclasses.fields(source.options):
            found.setdefault(f.name, f)
    return found


def given_options(options: Mapping[str, Any], where: str) -> dict:
    """``options`` checked against :func:`option_fields` (``TypeError`` naming the unknown ones)."""
    unknown = sorted(set(options) - set(option_fields()))
    if unknown:
        raise TypeError(f"{where}: unknown source option(s) {unknown}; known: {list(option_fields())}")
    return dict(options)


def options_for(source: RegisteredSource, options: Mapping[str, Any], path: Path) -> SourceOptions:
    """The instance of ``source``'s options dataclass from the given ``options`` (for ``path``); an
    option that belongs to another source is refused, naming it."""
    own = {f.name for f in dataclasses.fields(source.options)}
    defaults = {name: f.default for name, f in option_fields().items()}
    foreign = sorted(k for k, v in options.items() if k not in own and v and v != defaults.get(k))
    if foreign:
        raise ValueError(
            f"{path}: option(s) {', '.join(foreign)} do not apply to a source read as {source.name!r}"
        )
    return source.options(**{k: v for k, v in options.items() if k in own})


def command_line_values(values: Mapping[str, Any]) -> dict:
    """Option values from an ``argparse`` namespace's dict (``parse`` applied), only those given
    (set, and not the default)."""
    out = {}
    for name, f in option_fields().items():
        value = values.get(name)
        parse = f.metadata.get("parse")
        value = parse(value) if parse else value
        if value and value != f.default:
            out[name] = value
    return out


def recorded_options() -> tuple[str, ...]:
    """The options a split spec records when given (every option but the split rules)."""
    return tuple(name for name, f in option_fields().items() if not f.metadata.get("rule"))
