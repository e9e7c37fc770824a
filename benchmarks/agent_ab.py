"""``python3 -m benchmarks.agent_ab --baseline-agent DIR``: this tree's sandbox agent against
another one (e.g. an older commit's: ``git archive COMMIT nexus_kernel/agent/sandbox_agent |
tar -x -C /tmp/old`` then ``DIR=/tmp/old/nexus_kernel/agent``), both on the local provider,
driven by this tree's host code, round trips interleaved in alternating order (A B, B A,
A B ...) so the machine's load and any order effect hit both alike. Prints the medians and
the ratio of a session round trip and of a stateless run (issue 15: the run accounting may
add at most 5 % to a session round trip). ``--subject-agent`` replaces this tree's agent:
the baseline against itself shows the noise floor of the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from nexus_kernel.config import Settings
from nexus_kernel.manager import SandboxManager

from .timing import alternating

#: What may be added to a session round trip (ratio of medians, this agent / the baseline).
SESSION_TARGET = 1.05


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.agent_ab",
                                description=__doc__.split("\n")[0])
    p.add_argument("--baseline-agent", required=True, type=Path, metavar="DIR",
                   help="directory holding the baseline's sandbox_agent package")
    p.add_argument("--subject-agent", type=Path, metavar="DIR",
                   help="directory holding the subject's sandbox_agent (default: this tree's)")
    p.add_argument("--reps", type=int, default=300, help="round trips of each (default 300)")
    args = p.parse_args(argv)
    for given in filter(None, (args.baseline_agent, args.subject_agent)):
        if not (given / "sandbox_agent" / "__main__.py").is_file():
            p.error(f"{given} has no sandbox_agent package: give the directory that "
                    "contains sandbox_agent/")
    with tempfile.TemporaryDirectory(prefix="nexus-agent-ab-") as home:
        settings = Settings.load(home=Path(home), default_template="minimal")
        ours = SandboxManager(settings, provider_options={
            "local": {"agent_dir": str(args.subject_agent)}} if args.subject_agent else None)
        theirs = SandboxManager(settings, provider_options={
            "local": {"agent_dir": str(args.baseline_agent)}})
        sandboxes = []
        try:
            a = ours.create("ab-subject", provider="local").sandbox_id
            sandboxes.append((ours, a))
            b = theirs.create("ab-baseline", provider="local").sandbox_id
            sandboxes.append((theirs, b))
            ok = True
            for label, session, code, target in (
                ("session round trip", "ab", "print(1)", SESSION_TARGET),
                ("stateless run", None, "print(1)", None),
            ):
                subject, baseline = alternating(
                    lambda: ours.run(a, "python", code, session=session),  # noqa: B023
                    lambda: theirs.run(b, "python", code, session=session),  # noqa: B023
                    args.reps)
                ratio = subject.median / baseline.median
                verdict = "" if target is None else (
                    f"  (target <= {target:.2f}: {'ok' if ratio <= target else 'MISSED'})")
                ok = ok and (target is None or ratio <= target)
                print(f"{label}: this agent {subject.median:.3f} ms (p95 {subject.p95:.3f}), "
                      f"baseline {baseline.median:.3f} ms (p95 {baseline.p95:.3f}), "
                      f"ratio {ratio:.3f}{verdict}  [{args.reps} each, alternating]")
        finally:
            for manager, sandbox_id in sandboxes:
                manager.stop(sandbox_id)
            ours.close()
            theirs.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
