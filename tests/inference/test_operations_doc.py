"""docs/operations.md cannot rot: its systemd unit and cron line parse as `cit infer` command lines, its exit
code table is the toolkit's own codes, and its `summary.json` table names exactly what the file holds."""

from __future__ import annotations

import configparser
import dataclasses
import re
import shlex
from pathlib import Path

from toolkit.cli import build_parser
from toolkit.inference import runner
from toolkit.inference.operator_summary import OperatorSummary
from toolkit.inference.pacs.common import EXIT_NOT_STORED

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _block(language: str) -> str:
    (block,) = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)
    return block


def _table(after_heading: str) -> list[list[str]]:
    """The rows (cells stripped, header and rule left out) of the first table after ``after_heading``."""
    text = DOC.read_text().split(after_heading, 1)[1]
    rows = []
    for line in text.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def _cit_args(command: list[str]):
    assert Path(command[0]).name == "cit", command
    return build_parser().parse_args(command[1:])


def test_the_systemd_unit_runs_a_watch_and_names_the_codes_not_to_restart_on():
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string(_block("ini"))
    service = unit["Service"]
    args = _cit_args(shlex.split(service["ExecStart"]))
    assert args.command == "infer" and args.watch and args.input and args.output and args.bundle
    assert service["KillSignal"] == "SIGTERM" and service["Restart"] == "on-failure"
    no_restart = {int(code) for code in service["RestartPreventExitStatus"].split()}
    assert no_restart == {runner.EXIT_USAGE, runner.EXIT_LOCKED, runner.EXIT_RESUME_REFUSED}


def test_the_cron_line_is_a_cit_infer_command():
    (line,) = [x for x in _block("cron").splitlines() if x and not x.startswith("#")]
    fields = shlex.split(line)
    command = fields[6 : next(i for i, f in enumerate(fields) if f.startswith("2>"))]  # after time + user
    assert _cit_args(command).command == "infer"


def test_the_exit_code_table_is_complete():
    codes = {getattr(runner, name) for name in dir(runner) if name.startswith("EXIT_")} | {EXIT_NOT_STORED}
    assert {int(row[0]) for row in _table("## Exit codes")} == codes


def test_the_summary_table_names_every_field():
    documented = {
        key.strip("`")
        for row in _table("`summary.json`, for monitoring to read:")
        for key in row[0].split(", ")
    }
    assert documented == {f.name for f in dataclasses.fields(OperatorSummary)}
