"""Timing primitives: samples, paired subject/baseline measurement, result rows."""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    """Repeated measurements of one thing, in ``unit`` (milliseconds unless told)."""

    values: list[float] = field(default_factory=list)
    unit: str = "ms"

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float | None:
        return percentile(self.values, 50)

    @property
    def p95(self) -> float | None:
        return percentile(self.values, 95)

    def to_dict(self) -> dict[str, Any]:
        vals = self.values
        return {
            "n": len(vals),
            "unit": self.unit,
            "median": self.median,
            "p95": self.p95,
            "min": min(vals) if vals else None,
            "max": max(vals) if vals else None,
            "mean": sum(vals) / len(vals) if vals else None,
        }


def percentile(values: list[float], pct: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def timed_ms(fn: Callable[[], Any]) -> float:
    """Wall time of one call of ``fn`` in milliseconds."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def measure(
    fn: Callable[[], Any], reps: int, warmup: int = 2, *, setup: Callable[[], Any] | None = None
) -> Sample:
    """Call ``fn`` ``warmup`` times untimed, then ``reps`` times timed. ``setup`` (untimed)
    runs before every call; when given, ``fn`` receives its return value."""
    sample = Sample()
    with _no_gc():
        for i in range(warmup + reps):
            arg = setup() if setup is not None else None
            start = time.perf_counter()
            fn(arg) if setup is not None else fn()
            elapsed = (time.perf_counter() - start) * 1000.0
            if i >= warmup:
                sample.add(elapsed)
    return sample


def compare(
    subject: Callable[[], Any], baseline: Callable[[], Any], reps: int, warmup: int = 2
) -> tuple[Sample, Sample]:
    """Measure ``subject`` and ``baseline`` interleaved (A, B, A, B ...), so drift in the
    machine's load hits both alike."""
    a, b = Sample(), Sample()
    with _no_gc():
        for i in range(warmup + reps):
            for fn, sample in ((subject, a), (baseline, b)):
                start = time.perf_counter()
                fn()
                elapsed = (time.perf_counter() - start) * 1000.0
                if i >= warmup:
                    sample.add(elapsed)
    return a, b


def alternating(a: Callable[[], Any], b: Callable[[], Any], reps: int,
                warmup: int = 5) -> tuple[Sample, Sample]:
    """Time ``a`` and ``b`` ``reps`` times each, in the order A B, then B A, and so on (so
    an order effect, such as the second call finding warm caches, hits both alike)."""
    samples: dict[Any, Sample] = {a: Sample(), b: Sample()}
    with _no_gc():
        for i in range(warmup + reps):
            for fn in ((a, b) if i % 2 else (b, a)):
                start = time.perf_counter()
                fn()
                if i >= warmup:
                    samples[fn].add((time.perf_counter() - start) * 1000.0)
    return samples[a], samples[b]


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Collect once, then keep the cyclic GC out of the timed loop (as ``timeit`` does). A
    collection before every call is no better: it leaves the next round trip ~1 ms slower."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class Row:
    """One line of the results table.

    ``target`` is the highest acceptable ratio subject/baseline (of medians); without a
    baseline, ``limit`` is the highest acceptable median itself (e.g. MB of RSS).
    """

    group: str
    name: str
    sample: Sample | None
    baseline_name: str | None = None
    baseline: Sample | None = None
    target: float | None = None
    limit: float | None = None
    note: str = ""
    available: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.sample is None or self.baseline is None:
            return None
        a, b = self.sample.median, self.baseline.median
        if a is None or not b:
            return None
        return a / b

    @property
    def verdict(self) -> str:
        if not self.available:
            return "n/a"
        if self.target is not None and self.ratio is not None:
            return "PASS" if self.ratio <= self.target else "MISS"
        if self.limit is not None and self.sample is not None and self.sample.median is not None:
            return "PASS" if self.sample.median <= self.limit else "MISS"
        return "-"

    @property
    def goal(self) -> str:
        if self.target is not None:
            return f"<= {self.target:g}x"
        if self.limit is not None and self.sample is not None:
            return f"<= {self.limit:g} {self.sample.unit}"
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "name": self.name,
            "available": self.available,
            "sample": self.sample.to_dict() if self.sample else None,
            "baseline_name": self.baseline_name,
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "ratio": self.ratio,
            "target": self.target,
            "limit": self.limit,
            "verdict": self.verdict,
            "note": self.note,
            **({"extra": self.extra} if self.extra else {}),
        }


def unavailable(group: str, name: str, why: str, baseline_name: str | None = None,
                target: float | None = None) -> Row:
    """A row for a measurement that cannot run here (missing kernel, engine down ...)."""
    return Row(group, name, None, baseline_name=baseline_name, target=target,
               note=f"not available: {why}", available=False)
