"""Plain data: sandbox records (versioned dicts in the store), specs, results, events."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .ttl import expiry

#: Version of the stored record layout; bump and migrate in ``SandboxRecord.from_dict``.
RECORD_VERSION = 1

LANGUAGES = ("python", "javascript", "bash")
LANGUAGE_ALIASES = {
    "py": "python",
    "python3": "python",
    "js": "javascript",
    "node": "javascript",
    "nodejs": "javascript",
    "sh": "bash",
    "shell": "bash",
}


class Status(str, enum.Enum):
    CREATING = "creating"
    ACTIVE = "active"
    PAUSED = "paused"
    STOPPED = "stopped"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


#: Key of a provider's handle: when the platform ends the sandbox whatever its TTL (epoch
#: seconds; its runtime cap), for providers on a platform that has one.
HARD_END = "hard_end"
#: Key of such a handle: what the platform does at the hard end, "pause" (the next run
#: resumes the sandbox, its memory kept) or "end".
AT_CAP = "at_cap"


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> ISO-8601 UTC string (offset-aware, so clients never mix naive/aware)."""
    if ts is None:
        return None
    from datetime import datetime, timezone  # not for `nexus --help` or an empty list

    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


@dataclass(frozen=True)
class Limits:
    """Resource caps applied to one sandbox."""

    memory_mb: int = 512
    pids: int = 256
    cpus: float = 1.0
    disk_mb: int = 1024
    output_bytes: int = 10 * 1024 * 1024


@dataclass(frozen=True)
class SandboxSpec:
    """What a provider needs to create one sandbox."""

    sandbox_id: str
    owner: str
    template_id: str | None = None
    network: bool = False
    #: Egress allow-list (``egress.parse_allow`` entries); used only when ``network`` is False.
    allow: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    #: Epoch seconds after which the agent ends the sandbox on its own (None = no watchdog).
    deadline: float | None = None
    #: Identifies the state store; providers label resources with it for reconcile.
    store_id: str = ""
    #: A fork (providers whose snapshots are the platform's): ``{"handle": the source's
    #: handle, "snapshot": a platform snapshot id or None (the source now)}``. The new
    #: sandbox's handle keeps the source's agent token; the manager rotates it.
    origin: dict[str, Any] | None = None


@dataclass
class SandboxRecord:
    """One sandbox as stored: the provider's handle plus lifecycle and TTL bookkeeping."""

    sandbox_id: str
    name: str
    owner: str
    provider: str
    status: Status
    ttl_minutes: float
    created_at: float
    last_active_at: float
    expires_at: float | None
    template_id: str | None = None
    network: bool = False
    #: Hosts (and ports) it may reach through its egress proxy when ``network`` is False.
    network_allow: list[str] = field(default_factory=list)
    handle: dict[str, Any] = field(default_factory=dict)
    paused_at: float | None = None
    stopped_at: float | None = None
    error: str | None = None
    #: Who is creating it (host, pid, start time): a creating record whose creator died is
    #: reaped at once instead of after STALE_CREATING_SECONDS.
    creator: dict[str, Any] | None = None
    #: What its runs cost so far: ``{"runs", "cpu_s", "max_peak_memory_bytes"}`` (see
    #: :func:`add_usage`).
    usage_totals: dict[str, Any] = field(default_factory=dict)
    #: Who uses it, when that is a long-lived client (``jupyter-kernel:<kernel id>``): a
    #: restarted kernel finds the sandbox of its previous run by it.
    client_id: str | None = None
    version: int = RECORD_VERSION

    @classmethod
    def new(cls, *, sandbox_id: str, name: str, owner: str, provider: str, status: Status,
            ttl_minutes: float, now: float, **other: Any) -> SandboxRecord:
        """A record created at ``now`` whose TTL runs from then (``other``: optional fields)."""
        return cls(sandbox_id=sandbox_id, name=name, owner=owner, provider=provider,
                   status=status, ttl_minutes=ttl_minutes, created_at=now, last_active_at=now,
                   expires_at=expiry(now, ttl_minutes), **other)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SandboxRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["status"] = Status(values["status"])
        values["version"] = RECORD_VERSION
        return cls(**values)

    def public(self, now: float) -> dict[str, Any]:
        """The seed's dict shape: ids, name, status, ISO times, uptime."""
        end = self.stopped_at if self.stopped_at is not None else now
        return {
            "sandbox_id": self.sandbox_id,
            "name": self.name,
            "status": self.status.value,
            "provider": self.provider,
            "owner": self.owner,
            "template_id": self.template_id,
            "ttl_minutes": int(self.ttl_minutes) if float(self.ttl_minutes).is_integer()
            else self.ttl_minutes,
            "network": self.network,
            "network_allow": list(self.network_allow),
            "runtime": self.handle.get("runtime"),
            "created_at": iso(self.created_at),
            "last_active_at": iso(self.last_active_at),
            "expires_at": iso(self.expires_at),
            "paused_at": iso(self.paused_at),
            "stopped_at": iso(self.stopped_at),
            "uptime_seconds": round(max(0.0, end - self.created_at), 3),
            "hard_end_at": iso(self.handle.get(HARD_END)),
            "error": self.error,
            "usage_totals": run_totals(self.usage_totals),
        }


def attribute_runs(events: list[dict[str, Any]],
                   windows: list[tuple[float, float, str]]) -> list[dict[str, Any]]:
    """``events`` (each with a ``time``) with ``run``: the id of the run whose window
    ``(start, end, run_id)`` holds it (the latest such run), or None."""
    out = []
    for event in events:
        run = None
        for start, end, run_id in windows:
            if start <= event["time"] <= end:
                run = run_id
        out.append({**event, "run": run})
    return out


#: Why a run ended (``ExecResult.ended_by``): a cap it hit, how it was ended, or its exit.
ENDED_BY = ("exit", "timeout", "oom", "interrupt", "output_cap", "pids_cap", "stopped")
#: The numeric fields of ``ExecResult.usage``.
USAGE_NUMBERS = ("wall_s", "cpu_user_s", "cpu_system_s", "peak_memory_bytes", "processes")
#: Where ``usage`` came from: the sandbox's cgroup counters (oom, pids cap) or rusage only.
USAGE_SOURCES = ("cgroup", "rusage")


def ended_by_flags(*, timed_out: bool, interrupted: bool, truncated: bool,
                   oom_killed: bool) -> str:
    """``ended_by`` from a result's flags (agents that do not report it)."""
    if oom_killed:
        return "oom"
    if timed_out:
        return "timeout"
    if interrupted:
        return "interrupt"
    return "output_cap" if truncated else "exit"


def run_totals(totals: dict[str, Any] | None) -> dict[str, Any]:
    """A record's run totals with every key present (zero before the first run)."""
    totals = totals or {}
    return {"runs": int(totals.get("runs", 0)), "cpu_s": round(totals.get("cpu_s", 0.0), 3),
            "max_peak_memory_bytes": totals.get("max_peak_memory_bytes")}


def _megabytes(size: int | None) -> str:
    return "?" if size is None else f"{size / 1e6:.1f} MB"


def usage_summary(ended_by: str, usage: dict[str, Any] | None) -> str:
    """One line: ``ended by exit · 0.41 s wall · 0.38 s CPU · peak 23.1 MB · 3 processes``."""
    if not usage:
        return f"ended by {ended_by} · usage not measured (the sandbox's agent is older)"
    cpu = (usage.get("cpu_user_s") or 0) + (usage.get("cpu_system_s") or 0)
    wall = usage.get("wall_s")
    processes = usage.get("processes")
    return " · ".join([
        f"ended by {ended_by}",
        "? s wall" if wall is None else f"{wall:.2f} s wall",
        f"{cpu:.2f} s CPU",
        f"peak {_megabytes(usage.get('peak_memory_bytes'))}",
        "? processes" if processes is None else
        f"{processes} process{'' if processes == 1 else 'es'}",
    ])


#: How many finished runs ``%sandbox usage`` shows (the kernel and the magics keep as many).
USAGE_LOG_SIZE = 20


def usage_table(runs: list[tuple[str, str, dict[str, Any] | None]]) -> str:
    """A text table of finished runs, given as (label, ended_by, usage), oldest first."""
    if not runs:
        return "No runs yet.\n"
    rows = [("RUN", "ENDED BY", "WALL S", "CPU S", "PEAK MB", "PROCESSES", "SOURCE")]
    for label, ended_by, usage in runs:
        usage = usage or {}
        wall, peak = usage.get("wall_s"), usage.get("peak_memory_bytes")
        processes = usage.get("processes")
        cpu = (None if not usage else
               (usage.get("cpu_user_s") or 0) + (usage.get("cpu_system_s") or 0))
        rows.append((label, ended_by, "?" if wall is None else f"{wall:.2f}",
                     "?" if cpu is None else f"{cpu:.2f}",
                     "?" if peak is None else f"{peak / 1e6:.1f}",
                     "?" if processes is None else str(processes),
                     usage.get("source") or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows)
    return "".join(line + "\n" for line in lines)


def totals_summary(totals: dict[str, Any] | None) -> str:
    """One line of a sandbox's run totals: ``3 runs · 1.20 s CPU · max peak 23.1 MB``."""
    totals = run_totals(totals)
    runs = totals["runs"]
    return (f"{runs} run{'' if runs == 1 else 's'} · {totals['cpu_s']:.2f} s CPU · "
            f"max peak {_megabytes(totals['max_peak_memory_bytes'])}")


def add_usage(totals: dict[str, Any] | None, usage: dict[str, Any] | None) -> dict[str, Any]:
    """``totals`` with one more run of ``usage`` (None: counted, cost unknown)."""
    out = run_totals(totals)
    out["runs"] += 1
    if usage:
        out["cpu_s"] = round(out["cpu_s"] + (usage.get("cpu_user_s") or 0)
                             + (usage.get("cpu_system_s") or 0), 3)
        peak = usage.get("peak_memory_bytes")
        if peak is not None:
            out["max_peak_memory_bytes"] = max(peak, out["max_peak_memory_bytes"] or 0)
    return out


@dataclass(frozen=True)
class OutputEvent:
    """One streamed event from a run.

    ``kind`` is stdout or stderr (``data``: the text), or display, result, error,
    clear_output, input_request (``data``: the agent's event without ``id``/``ev``, e.g.
    ``{"data": {mime: value}, "metadata": {...}}`` for display and result)."""

    kind: str
    data: Any


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one run: what the seed's ``sandbox_run`` returns, plus rich output."""

    stdout: str
    stderr: str
    exit_code: int
    execution_time: float
    timed_out: bool = False
    interrupted: bool = False
    truncated: bool = False
    #: MIME bundles of ``display()`` calls and matplotlib figures (python sessions).
    display: tuple[dict[str, Any], ...] = ()
    error: dict[str, Any] | None = None
    #: MIME bundle of the last expression's value (python/javascript sessions), or None.
    result: dict[str, Any] | None = None
    #: The sandbox's memory limit was reached during the run: the OOM killer ended a process.
    oom_killed: bool = False
    #: The session had to be killed to end the run (its code ignored the interrupt or the
    #: timeout's interrupt): its variables are gone, the next run starts it fresh.
    session_restarted: bool = False
    #: What the run cost, measured in the sandbox: ``wall_s``, ``cpu_user_s``,
    #: ``cpu_system_s``, ``peak_memory_bytes``, ``processes`` (None where unknown) and
    #: ``source`` (``cgroup`` / ``rusage``); None from an agent that does not measure.
    usage: dict[str, Any] | None = None
    #: Why it ended: one of :data:`ENDED_BY`.
    ended_by: str = "exit"
    #: Connections and DNS lookups the egress policy refused during the run:
    #: ``{time, host, port, reason, run}`` each (port None for a lookup).
    network_denials: tuple[dict[str, Any], ...] = ()
    #: The run's id (``sb_…:r…``): ``sandbox_attach`` / ``nexus sandbox logs`` replay it.
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["display"] = list(self.display)
        data["network_denials"] = list(self.network_denials)
        return data


#: Warn this many seconds before a platform ends a sandbox at its runtime cap.
CAP_LEAD_SECONDS = 600.0


def cap_warning(record: SandboxRecord, now: float) -> str | None:
    """The one-time warning for a sandbox within CAP_LEAD_SECONDS of its platform's runtime
    cap (the handle's hard end), whatever its TTL, saying what happens there (the handle's
    AT_CAP); None when there is nothing to say."""
    end = record.handle.get(HARD_END) if record.handle else None
    if record.status is not Status.ACTIVE or end is None or end - now > CAP_LEAD_SECONDS:
        return None
    when = f"in {max(0, round((end - now) / 60))} min ({iso(end)}), whatever its TTL"
    if record.handle.get(AT_CAP) == "pause":
        return (f"Nexus: {record.provider} pauses sandbox {record.sandbox_id} {when}: it "
                "reaches the platform's runtime cap. The next cell resumes it where it was "
                "(variables kept); a cell still running then is cut off.\n")
    return (f"Nexus: {record.provider} ends sandbox {record.sandbox_id} {when}: it reaches "
            "the platform's runtime cap. Save what you need; the next cell after that starts "
            "a new sandbox.\n")
