"""The conftest rule for the real data: a missing ../shared/data skips on a developer machine, fails on CI.

Runs a one-test session (in a subprocess, with the repo's own tests/conftest.py) against a missing folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


@pytest.fixture
def session_without_data(pytester, monkeypatch, tmp_path):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile("def test_needs_data(shared_data):\n    assert shared_data.is_dir()\n")
    monkeypatch.setenv("CIT_SHARED_DATA", str(tmp_path / "no_such_data"))
    return pytester


def test_missing_data_fails_on_ci(session_without_data, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = session_without_data.runpytest()
    result.assert_outcomes(errors=1)  # the fixture fails, so the test is reported as an error at set-up
    result.stdout.fnmatch_lines(["*real data not found at *no_such_data*CI=true*fails instead of skipping*"])
    assert result.ret != 0


@pytest.mark.parametrize("ci", [None, "false"])
def test_missing_data_skips_on_a_developer_machine(session_without_data, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    result = session_without_data.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*real data not found at *no_such_data*"])
    assert result.ret == 0
