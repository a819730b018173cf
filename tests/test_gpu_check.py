"""bench/gpu_check.py, the GPU path's check, on the CPU at the smallest size: its exactness checks
pass on the test pipeline, and a failed or broken check sets the exit code."""

from __future__ import annotations

import pytest

from bench import gpu_check



def small(dtype: str = "float32") -> list[str]:
    return ["--device", "cpu", "--small", "--widths", "sd15", "--dtypes", dtype]


def rows(output: str) -> dict[str, str]:
    """check -> status, from the printed table."""
    found = {}
    for line in output.splitlines():
        for check in ("1 noop: no ops", "1 noop: captures only", "2 restore every site", "7 attention maps",
                      "8 cpu offload"):
            if check in line:
                found[check] = line.split(check)[1].split()[0]
    return found


def test_exactness_checks_pass_on_the_small_pipeline(capsys):
    assert gpu_check.main([*small(), "--checks", "noop", "restore", "attention", "offload"]) == 0
    assert rows(capsys.readouterr().out) == {
        "1 noop: no ops": "pass", "1 noop: captures only": "pass", "2 restore every site": "pass",
        "7 attention maps": "pass", "8 cpu offload": "pass",
    }


def test_edit_check_compares_with_float64_in_bfloat16(capsys):
    assert gpu_check.main([*small("bfloat16"), "--checks", "edits"]) == 0
    out = capsys.readouterr().out
    assert "5 DiffQuickFix" in out and "5 LoCoEdit" in out and "8 to_k/to_v of" in out
    assert out.count(" pass ") == 2


@pytest.mark.parametrize("broken", ["fail", "raise"])
def test_a_failed_or_broken_check_sets_the_exit_code(monkeypatch, capsys, broken):
    def check(model, setup):
        if broken == "raise":
            raise RuntimeError("device placement")
        yield gpu_check.Row("1 noop: no ops", "FAIL", "max |runner - pipe| 1.0e+00")

    monkeypatch.setitem(gpu_check.CHECK_FUNCTIONS, "noop", check)
    assert gpu_check.main([*small(), "--checks", "noop"]) == 1
    out = capsys.readouterr().out
    assert ("ERROR   RuntimeError: device placement" if broken == "raise" else "FAIL") in out
    assert "1 failed" in out


def test_a_missed_target_fails_only_when_strict():
    table = gpu_check.Table(strict=False)
    setup = next(gpu_check.setups(gpu_check.parse(small())))
    table.add(setup, gpu_check.Row("4 overhead", "MISSED", "runner/plain 1.2"))
    assert not table.failed
    table.strict = True
    assert table.failed
