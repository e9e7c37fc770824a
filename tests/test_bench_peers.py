"""The peers harness (benchmarks/peers.py, peer_driver.py) without installing a peer: fake
adapters, each run by this interpreter through the real driver and its JSON-lines protocol,
measured interleaved and tabulated. About 1 s."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import peers
from benchmarks.run import render_text

FAKE = '''
import os, time
from pathlib import Path

class Fake:
    """Its image argument is "NAME:MS": that name, and MS ms per create and per run."""
    version = "0.0-fake"

    def __init__(self, image):
        self.dist, ms = image.split(":")
        self.delay = float(ms) / 1000
        self.dir = Path(os.environ["FAKE_DIR"]) / self.dist
        self.dir.mkdir(exist_ok=True)
        self.unsupported = {"pause_resume": "fakes cannot pause"} if self.dist == "nopause" else {}
        self.n = 0

    def create(self):
        time.sleep(self.delay)
        self.n += 1
        (self.dir / str(self.n)).touch()
        return self.n

    def run(self, handle, code):
        assert (self.dir / str(handle)).exists()
        time.sleep(self.delay)
        print("noise on stdout must not reach the harness")
        return "2\\n" if "broken" in self.dist else "1\\n"

    def pause(self, handle):
        pass

    def resume(self, handle):
        pass

    def stop(self, handle):
        (self.dir / str(handle)).unlink()
'''


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "fake.py"
    path.write_text(textwrap.dedent(FAKE))
    monkeypatch.setenv("FAKE_DIR", str(tmp_path))
    made: list[peers.PeerSubject] = []

    def start(image: str) -> peers.PeerSubject:
        made.append(peers.PeerSubject(peers.PeerProcess(sys.executable, f"{path}:Fake", image)))
        return made[-1]

    yield start
    for s in made:
        s.close()


def test_driver_protocol_measurement_and_tables(fake, tmp_path: Path):
    ours, raw, slow, nopause = (fake("ours:1"), fake("raw:1"), fake("slow:20"),
                                fake("nopause:1"))
    assert slow.label == "slow 0.0-fake" and nopause.why == {"pause_resume": "fakes cannot pause"}
    samples = peers.measure_all([ours, raw, slow, nopause], creates=3, runs=4, stops=2)
    assert len(samples["stateless print(1)"]["slow 0.0-fake"].values) == 4
    assert "nopause 0.0-fake" not in samples["pause + resume"]
    first = samples[peers.FIRST]["slow 0.0-fake"].median  # the run's share of create + run
    assert 20 <= first < samples["create + first result"]["slow 0.0-fake"].median - 15
    assert len(samples["stop"]["ours 0.0-fake"].values) == 2
    nopause.create()  # measure_all stops or discards what it made; the driver, the rest:
    for s in (ours, raw, slow, nopause):
        s.close()  # quit: whatever was not stopped is discarded by the driver
    for name in ("ours", "raw", "slow", "nopause"):
        assert list((tmp_path / name).iterdir()) == [], f"{name} left sandboxes behind"

    rows = peers.rows_from(samples, ours.label, raw.label, [slow, nopause])
    by_name = {r.name: r for r in rows}
    vs_slow = by_name["stateless print(1): nexus docker vs slow"]
    assert vs_slow.baseline_name == "slow 0.0-fake" and vs_slow.ratio < 0.5
    assert vs_slow.target is None  # targets are named for the real peers only
    lacking = by_name["pause + resume: nexus docker vs nopause"]
    assert not lacking.available and "fakes cannot pause" in lacking.note
    assert "n/a (fakes cannot pause)" in render_text(rows)

    table = peers.side_by_side(rows)
    lines = table.splitlines()
    assert lines[0] == ("| operation (median ms) | nexus (docker) | docker-py | slow 0.0-fake | "
                        "nopause 0.0-fake | us / slow | us / nopause |")
    pause = next(ln for ln in lines if ln.startswith("| pause + resume")).split(" | ")
    assert (pause[4], pause[6]) == ("n/a", "n/a |") and pause[5].endswith("x")
    assert len(lines) == 2 + len(peers.OPS)


def test_a_failing_peer_is_na_and_a_failure_of_ours_ends_the_run(fake):
    ours, raw, broken = fake("ours:0"), fake("raw:0"), fake("broken:0")
    samples = peers.measure_all([ours, raw, broken], creates=2, runs=2, stops=1, warmup=0)
    assert "broken 0.0-fake" in samples["create -> ready"]
    assert "broken 0.0-fake" not in samples["stateless print(1)"]
    assert "broken 0.0-fake" not in samples[peers.FIRST]
    rows = {r.name: r for r in peers.rows_from(samples, ours.label, raw.label, [broken])}
    row = rows["stateless print(1): nexus docker vs broken"]
    assert not row.available and row.note.endswith("print(1) gave '2\\n'")
    assert rows["pause + resume: nexus docker vs broken"].available

    broken.why.clear()
    broken.may_fail = False  # as our own subjects: a wrong answer ends the run
    with pytest.raises(RuntimeError, match=r"broken 0.0-fake: print\(1\) gave '2\\n'"):
        peers.measure_all([ours, raw, broken], creates=1, runs=1, stops=1, warmup=0)
    with pytest.raises(RuntimeError, match="run: KeyError: 999"):
        broken.run(999)
