"""The start-up benchmark counts only the feature extraction outside the model-step window
against a stage's fixed phases (bench/stage_probe.py)."""

from __future__ import annotations

import pytest

from bench import stage_probe


def test_extraction_between_steps_is_not_a_fixed_cost() -> None:
    assert stage_probe._outside(12.0, 15.0, first=10.0, last=20.0) == 0.0


def test_extraction_before_and_after_the_steps_counts_whole() -> None:
    assert stage_probe._outside(2.0, 5.0, first=10.0, last=20.0) == 3.0
    assert stage_probe._outside(21.0, 25.0, first=10.0, last=20.0) == 4.0


def test_extraction_across_a_window_edge_counts_its_outer_part() -> None:
    assert stage_probe._outside(8.0, 12.0, first=10.0, last=20.0) == pytest.approx(2.0)
    assert stage_probe._outside(18.0, 23.0, first=10.0, last=20.0) == pytest.approx(3.0)
    assert stage_probe._outside(5.0, 25.0, first=10.0, last=20.0) == pytest.approx(10.0)


def test_without_model_steps_all_extraction_counts() -> None:
    assert stage_probe._outside(1.0, 4.0, first=None, last=None) == 3.0


def test_marks_sum_spans_outside_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    marks = {"steps": 2, "first_step": 10.0, "last_step_end": 20.0, "first_step_cpu": 1.0,
             "last_step_end_cpu": 5.0, "extract_spans": [(2.0, 4.0, 0.2, 0.6), (12.0, 14.0, 2.0, 3.0),
                                                      (21.0, 24.0, 5.5, 6.5)]}
    monkeypatch.setattr(stage_probe, "MARKS", marks)
    stage_probe._extraction_outside_steps()
    assert marks["extract_total_s"] == pytest.approx(7.0)
    assert marks["extract_s"] == pytest.approx(5.0)
    assert marks["extract_cpu"] == pytest.approx(1.4)
