"""vocab/metrics.py: the histogram type in Prometheus text format (cumulative ``le`` buckets, _sum, _count)."""

from __future__ import annotations

import pytest

from vocab.metrics import Histogram, Registry


def test_buckets_are_cumulative_and_upper_bounds_inclusive() -> None:
    h = Histogram("x_seconds", "test", (0.5, 0.1, 1.0))  # given unsorted
    for value in (0.1, 0.3, 0.5, 0.7, 7.0):
        h.observe(value, stage="asr")
    h.observe(0.05)
    assert h.render() == [
        "# HELP x_seconds test",
        "# TYPE x_seconds histogram",
        'x_seconds_bucket{le="0.1"} 1',
        'x_seconds_bucket{le="0.5"} 1',
        'x_seconds_bucket{le="1"} 1',
        'x_seconds_bucket{le="+Inf"} 1',
        "x_seconds_sum 0.05",
        "x_seconds_count 1",
        'x_seconds_bucket{stage="asr",le="0.1"} 1',  # 0.1 <= 0.1: le is inclusive
        'x_seconds_bucket{stage="asr",le="0.5"} 3',
        'x_seconds_bucket{stage="asr",le="1"} 4',
        'x_seconds_bucket{stage="asr",le="+Inf"} 5',
        'x_seconds_sum{stage="asr"} 8.6',
        'x_seconds_count{stage="asr"} 5',
    ]
    assert h.count(stage="asr") == 5
    assert h.sum(stage="asr") == pytest.approx(8.6)
    assert h.count(stage="tts") == 0


def test_a_histogram_with_no_observations_renders_its_type_only() -> None:
    registry = Registry()
    registry.histogram("y_seconds", "nothing yet", (1.0,))
    assert registry.render() == "# HELP y_seconds nothing yet\n# TYPE y_seconds histogram\n"


def test_a_name_is_one_kind_and_buckets_must_be_distinct() -> None:
    registry = Registry()
    registry.counter("z_total", "a counter")
    with pytest.raises(AssertionError):
        registry.histogram("z_total", "again", (1.0,))
    assert registry.histogram("h", "x", (1.0,)) is registry.histogram("h", "x", (1.0,))
    with pytest.raises(ValueError, match="distinct"):
        Histogram("bad", "x", (1.0, 1.0))
