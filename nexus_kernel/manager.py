"""SandboxManager: lifecycle, user scoping, and the deadlines agents and providers keep.

Every surface (API, CLI, magics, kernel) goes through this class. It keeps the store and
the providers consistent: records are written in short transactions, provider calls happen
outside them under a per-sandbox lock, and every call lazily reaps what has expired
(:mod:`nexus_kernel.reaper`). TTL arithmetic is :mod:`nexus_kernel.ttl`; every "now" comes
from the manager's ``clock``.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .config import Settings
from .egress import parse_allow, parse_policy
from .errors import (
    CLI_COMMAND,
    AgentError,
    DiskFullError,
    ExecutionTimeoutError,
    InvalidArgumentError,
    PermissionDeniedError,
    SandboxNotFoundError,
    SandboxStateError,
    StoreDamagedError,
    UnsupportedOperationError,
)
from .models import (
    ExecResult,
    OutputEvent,
    SandboxRecord,
    SandboxSpec,
    Status,
    add_usage,
    attribute_runs,
    iso,
)
from .providers import Provider, provider_class
from .providers.base import KEEPS_MEMORY
from .reaper import Reaper
from .store import DB_NAME, Store, move_aside, process_identity
from .ttl import Clock, expiry, run_needs_write, watchdog_deadline
from .validation import (
    MAX_CODE_BYTES,
    MAX_TIMEOUT,
    check_code,
    check_name,
    check_timeout,
    check_ttl,
    normalize_language,
)

if TYPE_CHECKING:  # imported where used: `nexus sandbox list` needs neither
    from .agent.client import AgentClient, Channel
    from .pool import WarmPool

#: Most sandboxes one fork call makes, and the most state (bytes of the archive) it carries.
MAX_FORKS = 8
MAX_FORK_BYTES = 48 * 2**20
#: How long a run whose stream broke waits for the provider to tell whether the sandbox died.
GONE_GRACE_SECONDS = 2.0
#: Seconds an attach waits past the run's own timeout before giving up on the agent.
RUN_WAIT_GRACE = 30.0

EventCallback = Callable[[OutputEvent], None]


class SandboxManager:
    """Creates, runs, pauses, resumes, stops, lists and reaps sandboxes of one user.

    ``clock``: a zero-argument callable returning epoch seconds (default ``time.time``),
    used for every expiry and deadline here, in the pool and in the reaper."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        user: str | None = None,
        is_admin: bool | None = None,
        store: Store | None = None,
        provider_options: dict[str, dict[str, Any]] | None = None,
        clock: Clock = time.time,
    ):
        self.clock = clock
        self.settings = settings or Settings.load()
        self.user = user or self.settings.user
        self.is_admin = self.settings.admin if is_admin is None else is_admin
        self.store = store or Store(self.settings.store_dir)
        self._provider_options = provider_options or {}
        self._providers: dict[str, Provider] = {}
        self._checked: set[str] = set()  # providers whose check_available passed
        self._clients: dict[str, AgentClient] = {}
        self._lock = threading.Lock()
        self._pool: WarmPool | None = None
        self.reaper = Reaper(self)

    # ----------------------------------------------------------------- plumbing

    def provider(self, name: str, *, check: bool = True) -> Provider:
        """The (cached) provider instance called ``name``, its ``check_available`` passed.
        ``check=False`` skips that check, for a liveness question the provider answers
        without it (``Provider.alive_without_check``), a stream it opens without it
        (``Provider.connect_needs_check``) and the cleanup of a dead sandbox."""
        options = self._provider_options.get(name, {})
        with self._lock:
            if check and name not in self._checked:
                provider_class(name).check_available(self.settings, **options)
                self._checked.add(name)
            if name not in self._providers:
                self._providers[name] = provider_class(name)(self.settings, **options)
            return self._providers[name]

    def loaded_providers(self) -> set[str]:
        """Names of the providers this manager has instantiated."""
        with self._lock:
            return set(self._providers)

    def _client(self, record: SandboxRecord) -> AgentClient:
        """The agent client of this sandbox, kept open for the life of this manager."""
        with self._lock:
            client = self._clients.get(record.sandbox_id)
        if client is not None:
            return client
        handle = record.handle
        check = provider_class(record.provider).connect_needs_check(self.settings, handle)
        provider = self.provider(record.provider, check=check)
        from .agent.client import AgentClient

        def connect() -> Channel:
            before = dict(handle)
            channel = provider.connect(handle)
            if handle != before:  # the provider moved it (E2B resumed the sandbox at its cap)
                self._save(record.sandbox_id, handle=dict(handle))
            return channel

        client = AgentClient(connect, handle["token"])
        with self._lock:
            return self._clients.setdefault(record.sandbox_id, client)

    @property
    def pool(self) -> WarmPool:
        """The warm pool of this store (``nexus_kernel/pool.py``; off unless pool_size > 0)."""
        if self._pool is None:
            from .pool import WarmPool

            self._pool = WarmPool(self)
        return self._pool

    def forget_client(self, sandbox_id: str) -> None:
        """Close and drop the cached agent connection of a sandbox (it ended, or broke)."""
        with self._lock:
            client = self._clients.pop(sandbox_id, None)
        if client is not None:
            client.close()

    def _load(self, sandbox_id: Any) -> SandboxRecord:
        if not isinstance(sandbox_id, str) or not sandbox_id:
            raise InvalidArgumentError("sandbox_id must be a non-empty string")
        data = self.store.get(sandbox_id)
        if data is None:
            raise SandboxNotFoundError(sandbox_id)
        record = SandboxRecord.from_dict(data)
        if not self._visible(record):
            raise SandboxNotFoundError(sandbox_id)
        return record

    def _visible(self, record: SandboxRecord) -> bool:
        return self.is_admin or record.owner == self.user

    def _save(self, sandbox_id: str, **changes: Any) -> SandboxRecord:
        def apply(data: dict[str, Any]) -> dict[str, Any]:
            data.update({k: (v.value if isinstance(v, Status) else v) for k, v in changes.items()})
            return data

        data = self.store.update(sandbox_id, apply)
        if data is None:
            raise SandboxNotFoundError(sandbox_id)
        return SandboxRecord.from_dict(data)

    def _activate(self, sandbox_id: str, ttl_minutes: float, now: float | None = None,
                  **changes: Any) -> SandboxRecord:
        """Mark the sandbox active from ``now`` (None: the clock's now), its TTL running
        again."""
        now = self.clock() if now is None else now
        return self._save(sandbox_id, status=Status.ACTIVE, last_active_at=now,
                          expires_at=expiry(now, ttl_minutes), **changes)

    # ---------------------------------------------------------------- lifecycle

    def create(
        self,
        name: str,
        ttl_minutes: float | None = None,
        template_id: str | None = None,
        *,
        provider: str | None = None,
        network: Any = None,
        client_id: str | None = None,
        origin: dict[str, Any] | None = None,
    ) -> SandboxRecord:
        """Start a sandbox and return its record (status active). ``network``: the policy,
        False/"none", True/"all", or an allow-list of host names and host:port (a list, or
        one string of them; see :mod:`nexus_kernel.egress`); None: the ``network`` and
        ``network_allow`` settings. ``client_id`` names the long-lived client using it
        (see :meth:`of_client`). ``origin``: a platform fork's source (see :meth:`fork`)."""
        name = check_name(name)
        ttl = check_ttl(self.settings.ttl_minutes if ttl_minutes is None else ttl_minutes)
        if template_id is not None and (not isinstance(template_id, str) or not template_id):
            raise InvalidArgumentError("template_id must be a non-empty string")
        if network is None:
            network = self.settings.network
            allow = () if network else parse_allow(self.settings.network_allow)
        else:
            network, allow = parse_policy(network)
        provider_name = provider or self.settings.provider
        backend = self.provider(provider_name)  # fails here, before anything is stored
        if network and not backend.capabilities.network:
            raise InvalidArgumentError(f"the {provider_name} provider cannot enable network")
        if allow and not backend.capabilities.egress_allow:
            raise UnsupportedOperationError(
                f"the {provider_name} provider cannot enforce a network allow-list; use the "
                "local provider, or network 'all' / 'none' here")
        self.reap_expired()
        if not allow and origin is None and self.pool.serves(provider_name):  # a pre-started sandbox, handed out in ms
            pooled = self.pool.claim(name=name, ttl_minutes=ttl, provider=provider_name,
                                     template_id=template_id, network=network)
            if pooled is not None:
                return self._save(pooled.sandbox_id, client_id=client_id) if client_id else pooled

        import secrets  # (hashlib, random): not for commands that only read

        sandbox_id = "sb_" + secrets.token_hex(8)
        record = SandboxRecord.new(
            sandbox_id=sandbox_id,
            name=name,
            owner=self.user,
            provider=provider_name,
            status=Status.CREATING,
            ttl_minutes=ttl,
            now=self.clock(),
            template_id=template_id,
            network=network,
            network_allow=list(allow),
            creator=process_identity(),
            client_id=client_id,
        )
        self.store.insert(record.to_dict())
        spec = SandboxSpec(
            sandbox_id=sandbox_id,
            owner=self.user,
            template_id=template_id,
            network=network,
            allow=allow,
            limits=self.settings.limits,
            deadline=watchdog_deadline(record.expires_at),
            store_id=self.store.store_id,
            origin=origin,
        )
        try:
            handle = backend.create(spec)
        except BaseException as exc:
            self.store.delete(sandbox_id)  # no resource exists: leave no trace
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                where = exc.filename or self.settings.sandboxes_dir
                raise DiskFullError(where) from exc
            raise
        record = self._activate(sandbox_id, ttl, handle=handle)
        backend.extend(handle, watchdog_deadline(record.expires_at))
        return record

    def run(
        self,
        sandbox_id: str,
        language: str,
        code: str,
        timeout: float | None = None,
        *,
        session: str | None = None,
        on_event: EventCallback | None = None,
        stdin: bool = False,
        stderr_traceback: bool = True,
        reserve_timeout: bool = True,
        trusted_output: bool | None = None,
        input_data: str | None = None,
        execution_count: int | None = None,
        on_run_id: Callable[[str], None] | None = None,
        checkpoint: dict[str, Any] | None = None,
        defer: Callable[[Callable[[], None]], None] | None = None,
    ) -> ExecResult:
        """Run code; stream events to ``on_event``; extend the TTL. Raises
        ExecutionTimeoutError (carrying the partial result) when the timeout passes.

        ``stdin``: ``input()`` in a python session sends an ``input_request`` event; answer
        with :meth:`input_reply`. ``stderr_traceback=False``: errors arrive only as the
        ``error`` event. ``reserve_timeout`` (default): the TTL is extended by the whole
        timeout before the run, so the sandbox cannot expire under it; long-lived callers
        that keep the sandbox alive with :meth:`touch` while it runs pass False.

        Rich output (display and result bundles) is untrusted: it is made inert by
        :mod:`nexus_kernel.untrusted` unless ``trusted_output`` (default: the
        ``trusted_output`` setting, off) says the caller trusts this sandbox.

        ``input_data``: standard input of a stateless run (``session=None`` only).
        ``execution_count``: the number IPython in a python session gives the cell.
        ``on_run_id``: called with the run's id (``result.run_id``) as soon as it started:
        a caller that stops waiting can :meth:`attach` to it later.
        ``checkpoint`` (``{"name", "keep_auto"}``): an automatic snapshot once the run is
        done, taken by the agent after its answer (see :meth:`snapshot`).
        ``defer``: called with the run's record update (TTL from its end, usage totals) for
        the caller to do once it has answered its own client (the kernel: after its reply);
        default: done before ``run`` returns."""
        language, code, timeout = self._check_run(language, code, timeout, session, input_data)
        record, deadline, client = self._prepare_run(sandbox_id, timeout if reserve_timeout
                                                     else 0.0)
        if checkpoint is not None:
            self._check_snapshots(record)  # raises where the provider has no snapshots
        trusted = self.settings.trusted_output if trusted_output is None else trusted_output
        started = time.time()  # the egress proxy's clock: wall time, not the manager's
        try:
            raw = client.run(
                language,
                code,
                timeout=timeout,
                session=session,
                output_limit=self.settings.output_bytes,
                stdin=stdin,
                stderr_traceback=stderr_traceback,
                deadline=deadline,
                input_data=input_data,
                execution_count=execution_count,
                checkpoint=checkpoint,
                on_event=_forwarder(on_event, trusted),
                on_run_id=None if on_run_id is None else (
                    lambda rid: on_run_id(run_id_of(sandbox_id, rid))),
            )
        except AgentError as exc:
            self.forget_client(sandbox_id)
            self._raise_if_gone(sandbox_id, exc)
            raise
        if defer is None:
            self._touch(record, finished=raw)
        else:
            defer(lambda: self._touch(record, finished=raw))
        result = _exec_result(sandbox_id, raw, trusted)
        if record.network_allow:
            ended = time.time()
            result = replace(result, network_denials=tuple(
                {**event, "run": result.run_id} for event in self.provider(record.provider)
                .network_events(record.handle, since=started) if event["time"] <= ended))
        if result.timed_out:
            raise ExecutionTimeoutError(timeout, result)
        return result

    def _check_run(self, language: str, code: str, timeout: float | None,
                   session: str | None, input_data: str | None) -> tuple[str, str, float]:
        language = normalize_language(language)
        code = check_code(code)
        timeout = check_timeout(self.settings.timeout if timeout is None else timeout)
        if session is not None and (not isinstance(session, str) or not session.strip()):
            raise InvalidArgumentError("session must be a non-empty string or None")
        if input_data is not None:
            if session is not None:
                raise InvalidArgumentError(
                    "input_data is the standard input of a stateless run; a session's code "
                    "reads input() interactively instead (run without a session)")
            if not isinstance(input_data, str) or len(input_data) > MAX_CODE_BYTES:
                raise InvalidArgumentError(
                    f"input_data must be text (str) of at most {MAX_CODE_BYTES // 2**20} MB")
        return language, code, timeout

    def _prepare_run(self, sandbox_id: str, reserve: float,
                     hold: bool = False) -> tuple[SandboxRecord, float, AgentClient]:
        """Extend the TTL for a run (``reserve`` seconds more; ``hold``: no touch may bring
        the expiry before them) and move the provider's timeout along: the record, the
        watchdog deadline (which travels in the run request) and the agent client. A run
        soon after the last one leaves the store as it is (``ttl.run_needs_write``)."""
        record = self._require_active(sandbox_id)
        now = self.clock()
        if hold or record.expires_at is None or run_needs_write(
                record.expires_at, now, record.ttl_minutes, reserve):
            record = self._touch(record, extra=reserve, hold=hold)
            expires_at = record.expires_at
        else:  # the store is not written; the watchdog still gets the exact deadline
            expires_at = max(record.expires_at, expiry(now, record.ttl_minutes, reserve))
        deadline = watchdog_deadline(expires_at)
        client = self._client(record)  # checks the provider where its streams need it
        self.provider(record.provider, check=False).extend(record.handle, deadline)
        return record, deadline, client

    def start(self, sandbox_id: str, language: str, code: str, timeout: float | None = None,
              *, session: str | None = None, input_data: str | None = None) -> str:
        """Start a detached run and return its run id (``sb_…:r…``) at once. It outlives
        this process; its sandbox does not expire before the run's timeout has passed
        (plus the TTL). :meth:`attach` replays and follows it, :meth:`runs` lists it."""
        language, code, timeout = self._check_run(language, code, timeout, session, input_data)
        _record, deadline, client = self._prepare_run(sandbox_id, timeout, hold=True)
        try:
            rid = client.start(language, code, timeout=timeout, session=session,
                               output_limit=self.settings.output_bytes, deadline=deadline,
                               input_data=input_data)
        except AgentError as exc:
            self.forget_client(sandbox_id)
            self._raise_if_gone(sandbox_id, exc)
            raise
        return run_id_of(sandbox_id, rid)

    def attach(self, run_id: str, *, follow: bool = True,
               on_event: EventCallback | None = None,
               trusted_output: bool | None = None) -> tuple[ExecResult, dict[str, Any]]:
        """Replay a run's output from the start (the agent keeps its last REPLAY_BYTES)
        and, with ``follow``, the rest live until it ends. Returns the run's result (as
        :meth:`run` gives it, timeouts included, without raising) and ``{"state",
        "dropped_bytes"}``: ``running`` when not following a run that goes on;
        ``dropped_bytes``: output cut from the start of the replay."""
        sandbox_id, rid = split_run_id(run_id)
        record = self._require_active(sandbox_id)
        client = self._client(record)
        try:
            known = {r["run_id"]: r for r in client.runs()}
            if rid not in known:
                raise InvalidArgumentError(
                    f"no run {run_id} (sandbox {sandbox_id} keeps its running runs and its "
                    f"last finished ones: {CLI_COMMAND} runs {sandbox_id} lists them)")
            limit = known[rid]["timeout"]
            wait = None if limit is None else min(limit, MAX_TIMEOUT) + RUN_WAIT_GRACE
            trusted = self.settings.trusted_output if trusted_output is None else trusted_output
            raw = client.attach(rid, follow=follow, wait=wait if follow else 30.0,
                                output_limit=self.settings.output_bytes,
                                on_event=_forwarder(on_event, trusted))
        except AgentError as exc:
            self.forget_client(sandbox_id)
            self._raise_if_gone(sandbox_id, exc)
            raise
        return (_exec_result(sandbox_id, raw, trusted),
                {"state": raw["state"], "dropped_bytes": raw["dropped_bytes"]})

    def runs(self, sandbox_id: str) -> list[dict[str, Any]]:
        """The sandbox's runs, oldest first: ``run_id``, ``state`` (running, finished,
        failed), ``language``, ``session``, ``detached``, ``started_at``, ``ended_at``
        (epoch s), ``exit_code``, ``ended_by``, ``usage`` … (see ``AgentClient.runs``)."""
        record = self._require_active(sandbox_id)
        try:
            found = self._client(record).runs()
        except AgentError as exc:
            self.forget_client(sandbox_id)
            self._raise_if_gone(sandbox_id, exc)
            raise
        for run in found:
            run["run_id"] = run_id_of(sandbox_id, run["run_id"] or "?")
        return found

    def interrupt_run(self, run_id: str) -> int:
        """Interrupt one run by id (1 if it was signalled, 0 if it had ended)."""
        sandbox_id, rid = split_run_id(run_id)
        return self._client(self._require_active(sandbox_id)).interrupt_run(rid)

    def input_reply(self, sandbox_id: str, session: str, value: str | None) -> None:
        """Answer ``input()`` in a run started with ``stdin=True`` (None = end of input)."""
        self._client(self._require_active(sandbox_id)).input_reply(session, value)

    def complete(self, sandbox_id: str, session: str, code: str,
                 cursor_pos: int | None = None) -> dict[str, Any]:
        """Completions at ``cursor_pos`` from python session ``session``'s namespace:
        ``{"matches", "cursor_start", "cursor_end", "busy"}``."""
        return self._client(self._require_active(sandbox_id)).complete(session, code, cursor_pos)

    def inspect(self, sandbox_id: str, session: str, code: str, cursor_pos: int | None = None,
                detail_level: int = 0) -> dict[str, Any]:
        """Help for the name at ``cursor_pos`` in python session ``session``:
        ``{"found", "data", "metadata", "busy"}``."""
        client = self._client(self._require_active(sandbox_id))
        found = client.inspect(session, code, cursor_pos, detail_level)
        if not self.settings.trusted_output and isinstance(found, dict):
            found = {**found, **_safe_bundle(found)}
        return found

    def touch(self, sandbox_id: str, *, ttl_minutes: float | None = None) -> SandboxRecord:
        """Extend an active sandbox's TTL from now, as a run does (and move the agent's
        watchdog along); ``ttl_minutes`` changes the TTL first. A paused or stopped sandbox
        is returned unchanged (a new TTL is stored for a paused one)."""
        if ttl_minutes is not None:
            ttl = check_ttl(ttl_minutes)

            def set_ttl(data: dict[str, Any]) -> dict[str, Any] | None:
                if data["status"] not in (Status.ACTIVE.value, Status.PAUSED.value):
                    return None
                data["ttl_minutes"] = ttl
                return data

            self.store.update(self._load(sandbox_id).sandbox_id, set_ttl)
        record = self.reaper.check(self._load(sandbox_id))
        if record.status is not Status.ACTIVE:
            return record
        record = self._touch(record)
        try:
            self.push_deadline(record)
        except AgentError as exc:
            self._raise_if_gone(sandbox_id, exc)
            raise
        return record

    def push_deadline(self, record: SandboxRecord) -> None:
        """Move the sandbox's provider timeout and its agent's watchdog to the record's
        deadline (expiry plus grace). AgentError when the agent cannot be reached (its
        connection is dropped then)."""
        deadline = watchdog_deadline(record.expires_at)
        self.provider(record.provider).extend(record.handle, deadline)
        try:
            self._client(record).set_deadline(deadline)
        except AgentError:
            self.forget_client(record.sandbox_id)
            raise

    def interrupt(self, sandbox_id: str, session: str | None = None) -> int:
        """Interrupt running code (KeyboardInterrupt in a Python session; state kept)."""
        record = self._require_active(sandbox_id)
        return self._client(record).interrupt(session)

    def pause(self, sandbox_id: str) -> SandboxRecord:
        """Freeze every process of the sandbox; the TTL clock stops while paused. Pausing a
        paused sandbox is a no-op (as resuming an active one is)."""
        with self.store.lock(sandbox_id):
            record = self.reaper.check(self._load(sandbox_id))
            if record.status is Status.PAUSED:
                return record
            record = self._require_active(sandbox_id)
            backend = self.provider(record.provider)
            if not backend.capabilities.pause:  # before the watchdog is switched off:
                backend.pause(record.handle)  # raises the provider's own explanation
            self._client(record).set_deadline(None)
            backend.pause(record.handle)
            if not backend.streams_survive_pause:
                self.forget_client(sandbox_id)
            now = self.clock()
            return self._save(
                sandbox_id,
                status=Status.PAUSED,
                paused_at=now,
                expires_at=expiry(now, self.settings.paused_retention_minutes),
            )

    def resume(self, sandbox_id: str) -> SandboxRecord:
        """Thaw a paused sandbox; its TTL restarts from now."""
        with self.store.lock(sandbox_id):
            record = self.reaper.check(self._load(sandbox_id))
            if record.status is Status.ACTIVE:
                return record
            if record.status is not Status.PAUSED:
                raise SandboxStateError(
                    f"sandbox {sandbox_id} is {record.status.value}; only a paused sandbox "
                    "can be resumed (create a new one)"
                )
            backend = self.provider(record.provider)
            now = self.clock()
            answer = self._deadline_before_thaw(record, backend, now)
            try:
                backend.resume(record.handle)  # may move the handle's hard end (E2B)
            except BaseException:
                # still frozen? it reads the deadline sent at its next thaw (never later than
                # the host's): a resume after that deadline ends the sandbox (fails closed)
                if answer is not None:
                    self.forget_client(sandbox_id)
                raise
            record = self._activate(
                sandbox_id, record.ttl_minutes, now, paused_at=None, handle=record.handle
            )
            if answer is not None:
                try:
                    answer()
                    return record
                except AgentError:
                    self.forget_client(sandbox_id)  # a new stream below, to the thawed agent
            self.push_deadline(record)
            return record

    def _deadline_before_thaw(self, record: SandboxRecord, backend: Provider,
                              now: float) -> Callable[[], None] | None:
        """Where the stream kept over the pause is open, send the agent the deadline of a
        resume at ``now`` on it before the thaw (the first thing the agent reads then: it
        never runs thawed without one) and return the wait for its answer; None otherwise
        (``push_deadline`` after the thaw)."""
        if not backend.streams_survive_pause:
            return None
        with self._lock:
            client = self._clients.get(record.sandbox_id)
        if client is None:
            return None
        deadline = watchdog_deadline(expiry(now, record.ttl_minutes))
        backend.extend(record.handle, deadline)
        return client.deadline_ahead(deadline)

    def stop(self, sandbox_id: str) -> SandboxRecord:
        """Destroy the sandbox (every process, every file). Idempotent."""
        record = self._load(sandbox_id)
        if record.status is Status.STOPPED:
            return record
        with self.store.lock(sandbox_id):
            return self.reaper.end(self._load(sandbox_id), reason=None)

    def network_events(self, sandbox_id: str) -> list[dict[str, Any]]:
        """The sandbox's egress denials, oldest first: ``{time, host, port, reason, run}``
        (``run``: the id of the run it happened in, among the runs the agent still keeps;
        None between runs)."""
        record = self._load(sandbox_id)
        if not record.network_allow or record.status is Status.STOPPED:
            return []
        events = self.provider(record.provider).network_events(record.handle)
        if not events or record.status is not Status.ACTIVE:
            return attribute_runs(events, [])
        now = time.time()
        windows = [(run["started_at"], run.get("ended_at") or now, run["run_id"])
                   for run in self.runs(sandbox_id) if run.get("started_at")]
        return attribute_runs(events, windows)

    def get(self, sandbox_id: str) -> SandboxRecord:
        """The stored record after the expiry check, without asking the provider whether
        the resource still exists (cheap enough for every kernel cell; :meth:`status` asks)."""
        return self.reaper.check(self._load(sandbox_id))

    def status(self, sandbox_id: str) -> SandboxRecord:
        """The record, after checking expiry and that the resource still exists."""
        record = self.reaper.check(self._load(sandbox_id))
        return self.reaper.reconcile(record)

    def list(self, *, all_users: bool = False) -> list[SandboxRecord]:
        """Sandboxes of this user (every user's for an admin asking ``all_users``)."""
        if all_users and not self.is_admin:
            raise PermissionDeniedError(
                f"user {self.user!r} is not an admin: every user's sandboxes are listed only "
                "for an admin (NEXUS_ADMIN=1, or NexusFS(is_admin=True))")
        self.reap_expired()
        records = [SandboxRecord.from_dict(d) for d in self.store.records()]
        if not all_users:
            records = [r for r in records if r.owner == self.user]
        return sorted(self.reaper.sweep(records), key=lambda r: r.created_at)

    def of_client(self, client_id: str) -> list[SandboxRecord]:
        """This user's active or paused sandboxes created for ``client_id``."""
        return [r for r in self.list() if r.client_id == client_id
                and r.status in (Status.ACTIVE, Status.PAUSED)]

    def put_file(self, sandbox_id: str, path: str, data: bytes) -> int:
        """Write ``data`` to ``path`` inside the sandbox (relative to its home)."""
        if not isinstance(data, (bytes, bytearray)):
            raise InvalidArgumentError("file data must be bytes")
        return self._client(self._require_active(sandbox_id)).write_file(path, bytes(data))

    def get_file(self, sandbox_id: str, path: str) -> bytes:
        """Read ``path`` from inside the sandbox."""
        return self._client(self._require_active(sandbox_id)).read_file(path)

    # ---------------------------------------------------------------- snapshots

    def _snapshot_client(self, sandbox_id: str) -> AgentClient:
        record = self._require_active(sandbox_id)
        self._check_snapshots(record)
        return self._client(record)

    def _check_snapshots(self, record: SandboxRecord) -> None:
        capabilities = self.provider(record.provider).capabilities
        if capabilities.platform_snapshots:
            raise UnsupportedOperationError(
                f"{record.provider} sandboxes have snapshots and forks of the platform's, not "
                "automatic checkpoints: use `nexus sandbox snapshot` / `fork`, or a local or "
                "docker sandbox for undo")
        if not capabilities.snapshots:
            raise UnsupportedOperationError(
                f"the {record.provider} provider has no snapshots yet: use a local or docker "
                "sandbox (--provider local|docker)")

    def _quiet(self, record: SandboxRecord) -> None:
        """Refuse a platform snapshot or fork while code runs (the platform pauses the
        sandbox for it, which breaks every stream to it), as the agent refuses its own."""
        if any(run["state"] == "running" for run in self._client(record).runs()):
            raise SandboxStateError(
                f"sandbox {record.sandbox_id} is running code: snapshot or fork it between "
                "runs (nexus sandbox runs lists them)")

    def _platform(self, sandbox_id: str) -> tuple[SandboxRecord, Provider | None]:
        """The active sandbox's record, and its provider when snapshots are the platform's."""
        record = self._require_active(sandbox_id)
        provider = self.provider(record.provider)
        return record, provider if provider.capabilities.platform_snapshots else None

    def snapshot(self, sandbox_id: str, name: str | None = None, *,
                 keep_auto: int | None = None) -> dict[str, Any]:
        """Snapshot every python session's state and the sandbox's home directory (see
        ``sandbox_agent/snapshots.py``); refused while the sandbox runs code. ``keep_auto``:
        an automatic checkpoint; the sandbox keeps the newest ``keep_auto`` of them.
        Where snapshots are the platform's (E2B, Modal): kept by the platform after the
        sandbox ends (``persists``) until deleted or ``expires``; ``keeps`` says whether
        memory is in it (Modal: files only for a sandbox made without memory snapshots)."""
        record, platform = self._platform(sandbox_id)
        if platform is not None and keep_auto is None:
            name = None if name is None else check_name(name)
            snaps = list(record.handle.get("snapshots") or ())
            if name is not None and any(s["name"] == name for s in snaps):
                raise InvalidArgumentError(f"snapshot {name!r} exists: choose another name")
            self._quiet(record)
            snap = {"name": name, "created": self.clock(), "persists": True, "size": None,
                    "memory": None, "lost_threads": {}, **platform.snapshot(record.handle)}
            self._save(sandbox_id, handle={**record.handle, "snapshots": [*snaps, snap]})
            self.forget_client(sandbox_id)  # its client saves the handle it holds
            return _snapshot_out(snap)
        client = self._snapshot_client(sandbox_id)
        return _snapshot_out(client.snapshot(name, keep_auto))

    def restore(self, sandbox_id: str, snapshot: str) -> dict[str, Any]:
        """Put sessions and files back as snapshot ``snapshot`` (id or name) had them."""
        record, platform = self._platform(sandbox_id)
        if platform is not None:  # E2B and Modal restore a snapshot into a new sandbox only
            raise UnsupportedOperationError(
                f"{record.provider} cannot restore a sandbox in place: fork from the snapshot "
                f"instead (nexus sandbox fork {sandbox_id} --snapshot {snapshot})")
        return self._snapshot_client(sandbox_id).restore(snapshot)

    def snapshots(self, sandbox_id: str) -> list[dict[str, Any]]:
        """The sandbox's snapshots, oldest first (they end with the sandbox, unless
        ``persists``)."""
        record, platform = self._platform(sandbox_id)
        if platform is not None:
            return [_snapshot_out(s) for s in record.handle.get("snapshots") or ()]
        return [_snapshot_out(s) for s in self._snapshot_client(sandbox_id).snapshots()]

    def fork(self, sandbox_id: str, snapshot: str | None = None,
             count: int = 1) -> tuple[list[SandboxRecord], dict[str, Any]]:
        """``count`` new sandboxes (this user's, each with its own agent token and TTL) with
        the sandbox's state now, or snapshot ``snapshot``'s: its home directory and its
        python sessions' variables, pickled in the sandbox (cloudpickle, else dill, else
        pickle) and loaded in each fork. What does not carry (open files, threads,
        processes, unpicklable values, bash/javascript state) is reported: ``skipped``
        (per session), ``failed`` (per fork and session)."""
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_FORKS:
            raise InvalidArgumentError(f"count must be 1 .. {MAX_FORKS}")
        import secrets

        source, platform = self._platform(sandbox_id)
        if source.owner != self.user:  # a fork is the caller's: never another user's state
            raise PermissionDeniedError(
                f"sandbox {sandbox_id} belongs to {source.owner!r}: only its owner can fork it")
        if platform is not None:
            return self._platform_fork(source, platform, snapshot, count)
        client = self._snapshot_client(sandbox_id)
        exported = client.request("export", timeout=300.0, snapshot=snapshot)
        try:
            if exported["size"] > MAX_FORK_BYTES:
                raise InvalidArgumentError(
                    f"the sandbox's state is {exported['size'] // 2**20} MB, more than a fork "
                    f"carries ({MAX_FORK_BYTES // 2**20} MB): delete files or variables first")
            archive = client.read_file(exported["archive"])
        finally:
            client.request("drop_export", timeout=60.0, archive=exported["archive"])
        forks: list[SandboxRecord] = []
        failed: dict[str, Any] = {}
        try:
            for _ in range(count):
                record = self.create(f"{source.name}-fork", source.ttl_minutes,
                                     source.template_id, provider=source.provider,
                                     network=source.network)
                forks.append(record)
                fork = self._client(record)
                path = f"/tmp/nexus-fork-{secrets.token_hex(8)}.tar"
                fork.write_file(path, archive)
                loaded = fork.request("import", timeout=300.0, archive=path)
                if loaded.get("failed"):
                    failed[record.sandbox_id] = loaded["failed"]
        except BaseException:
            for record in forks:
                self.stop(record.sandbox_id)
            raise
        return forks, {"sessions": exported["sessions"], "skipped": exported["skipped"],
                       "failed": failed, "size": exported["size"]}

    def _platform_fork(self, source: SandboxRecord, platform: Provider, snapshot: str | None,
                       count: int) -> tuple[list[SandboxRecord], dict[str, Any]]:
        """Forks made by the platform from the source's memory (every session carries over
        exactly; from a files-only snapshot, none does), each given a fresh agent token at
        once: a memory copy has the source's."""
        import secrets

        if snapshot is None:
            self._quiet(source)
            point = platform.fork_point(source.handle)  # None: the platform forks it live
        else:
            point = self._platform_snapshot(source, snapshot)
        origin = {"handle": source.handle, "snapshot": point and point["snapshot_id"]}
        keeps = (point or {}).get("keeps", KEEPS_MEMORY)
        forks: list[SandboxRecord] = []
        try:
            for _ in range(count):
                record = self.create(f"{source.name}-fork", source.ttl_minutes,
                                     source.template_id, provider=source.provider,
                                     network=source.network, origin=origin)
                forks.append(record)
                token = secrets.token_urlsafe(32)
                self._client(record).rekey(token)
                forks[-1] = self._save(record.sandbox_id,
                                       handle={**record.handle, "token": token})
                self.forget_client(record.sandbox_id)  # its client saves the handle it holds
                self.push_deadline(forks[-1])  # its watchdog still has the source's deadline
        except BaseException:
            for record in forks:
                self.stop(record.sandbox_id)
            raise
        return forks, {"sessions": "all" if keeps == KEEPS_MEMORY else [], "keeps": keeps,
                       "skipped": {}, "failed": {}, "size": None}

    def _platform_snapshot(self, record: SandboxRecord, snapshot: str) -> dict[str, Any]:
        """The record's platform snapshot named or numbered ``snapshot``: only the
        sandbox's own (a platform id of another sandbox or user is never taken)."""
        for snap in record.handle.get("snapshots") or ():
            if snapshot in (snap["snapshot_id"], snap["name"]):
                return snap
        raise InvalidArgumentError(f"sandbox {record.sandbox_id} has no snapshot {snapshot!r}: "
                            f"see `nexus sandbox snapshots {record.sandbox_id}`")

    def delete_snapshot(self, sandbox_id: str, snapshot: str) -> str:
        """Delete snapshot ``snapshot`` (id or name) of the sandbox; its id."""
        record, platform = self._platform(sandbox_id)
        if platform is not None:
            snap = self._platform_snapshot(record, snapshot)
            platform.delete_snapshot(snap["snapshot_id"])
            left = [s for s in record.handle["snapshots"] if s is not snap]
            self._save(sandbox_id, handle={**record.handle, "snapshots": left})
            self.forget_client(sandbox_id)
            return str(snap["snapshot_id"])
        return self._snapshot_client(sandbox_id).delete_snapshot(snapshot)

    # ---------------------------------------------------------------- reaping

    def reap_expired(self, *, force: bool = False) -> list[str]:
        """Stop every expired sandbox of this store (throttled unless ``force``)."""
        return self.reaper.reap_expired(force=force)

    def reap(self) -> dict[str, list[str]]:
        """Full reap: expired sandboxes, records whose resource is gone, unknown resources."""
        return self.reaper.reap()

    def doctor(self, *, repair: bool = False) -> dict[str, list[str]]:
        """Check the store against the providers' resources; ``repair`` makes them agree
        (see :meth:`Reaper.doctor <nexus_kernel.reaper.Reaper.doctor>`)."""
        return self.reaper.doctor(repair=repair)

    # ---------------------------------------------------------------- helpers

    def _require_active(self, sandbox_id: str) -> SandboxRecord:
        record = self.reaper.check(self._load(sandbox_id))
        if record.status is Status.ACTIVE:
            return record
        command = f"resume {sandbox_id}" if record.status is Status.PAUSED else None
        hint = {
            Status.PAUSED: f"resume it first: {CLI_COMMAND} {command}",
            Status.STOPPED: "it cannot be used again; create a new one",
            Status.CREATING: "wait until it is active",
            Status.ERROR: "stop it and create a new one",
        }[record.status]
        why = f" ({record.error})" if record.error else ""
        raise SandboxStateError(f"sandbox {sandbox_id} is {record.status.value}{why}; {hint}",
                                command=command)

    def _touch(self, record: SandboxRecord, extra: float = 0.0,
               finished: dict[str, Any] | None = None, hold: bool = False) -> SandboxRecord:
        """Extend the TTL from now (plus ``extra`` seconds of run time); the ``usage`` of
        the ``finished`` run (the agent client's result) is added to the record's totals in
        the same update. ``hold`` (a detached run): the expiry never comes before now +
        ``extra`` + the TTL, whatever later touches compute (the record's ``held_until``)."""
        now = self.clock()

        def apply(data: dict[str, Any]) -> dict[str, Any] | None:
            if data["status"] != Status.ACTIVE.value:
                return None
            if hold:
                data["held_until"] = max(data.get("held_until") or 0.0, now + extra)
            data["last_active_at"] = now
            data["expires_at"] = max(expiry(now, data["ttl_minutes"], extra),
                                     expiry(data.get("held_until") or 0.0, data["ttl_minutes"]))
            if finished is not None:
                data["usage_totals"] = add_usage(data.get("usage_totals"), finished.get("usage"))
            return data

        data = self.store.update(record.sandbox_id, apply)
        return SandboxRecord.from_dict(data) if data else record

    def _raise_if_gone(self, sandbox_id: str, exc: Exception) -> None:
        # The stream broke: when the sandbox died, its provider may take a moment to say so
        # (Docker reports a container whose pid 1 just exited as running for a few ms).
        deadline = time.monotonic() + GONE_GRACE_SECONDS
        while True:
            record = self.status(sandbox_id)
            if record.status is not Status.ACTIVE:
                why = self.provider(record.provider).cap_reached(record.handle)
                raise SandboxStateError(
                    f"sandbox {sandbox_id} is {record.status.value}: "
                    + (why or "it ended during the run")
                ) from exc
            if time.monotonic() >= deadline:
                return
            time.sleep(0.1)

    def close(self) -> None:
        """Close agent connections held by this manager."""
        for sandbox_id in list(self._clients):
            self.forget_client(sandbox_id)


#: Run ids are ``<sandbox id>:<the agent's run id>``: any process can attach with one.
RUN_ID_SEP = ":"


def run_id_of(sandbox_id: str, agent_run_id: str) -> str:
    """The run id callers see: it names its sandbox."""
    return f"{sandbox_id}{RUN_ID_SEP}{agent_run_id}"


def split_run_id(run_id: Any) -> tuple[str, str]:
    """``(sandbox id, the agent's run id)`` of a run id; InvalidArgumentError if malformed."""
    parts = run_id.rpartition(RUN_ID_SEP) if isinstance(run_id, str) else ("", "", "")
    if not (parts[0] and parts[1] and parts[2]):
        raise InvalidArgumentError(
            f"{run_id!r} is not a run id: a run id looks like sb_0123456789abcdef:r0123456789ab "
            f"(printed by '{CLI_COMMAND} run ID --detach', listed by '{CLI_COMMAND} runs ID')")
    return parts[0], parts[2]


def _forwarder(on_event: EventCallback | None,
               trusted: bool) -> Callable[[dict[str, Any]], None] | None:
    """The agent client's event callback for ``on_event`` (rich bundles made inert unless
    ``trusted``)."""
    if on_event is None:
        return None

    def forward(event: dict[str, Any]) -> None:
        payload = _event_payload(event)
        if event["ev"] in ("display", "result") and not trusted:
            payload = _safe_bundle(payload)
        on_event(OutputEvent(event["ev"], payload))

    return forward


def _exec_result(sandbox_id: str, raw: dict[str, Any], trusted: bool) -> ExecResult:
    """The agent client's run result as an ExecResult (rich bundles made inert unless
    ``trusted``)."""
    clean = _keep if trusted else _safe_mime_data
    rid = raw.get("run_id")
    return ExecResult(
        stdout=raw["stdout"],
        stderr=raw["stderr"],
        exit_code=raw["exit_code"],
        execution_time=raw["execution_time"],
        timed_out=raw["timed_out"],
        interrupted=raw["interrupted"],
        truncated=raw["truncated"],
        display=tuple(clean(bundle) for bundle in raw.get("display") or ()),
        error=raw.get("error"),
        result=None if raw.get("result") is None else clean(raw["result"]),
        oom_killed=bool(raw.get("oom_killed")),
        session_restarted=bool(raw.get("session_restarted")),
        usage=raw.get("usage"),
        ended_by=raw.get("ended_by", "exit"),
        run_id=None if rid is None else run_id_of(sandbox_id, rid),
    )


def _snapshot_out(snap: dict[str, Any]) -> dict[str, Any]:
    """A snapshot's description with its ``created`` (and ``expires``) time as ISO-8601 UTC."""
    return {**snap, **{key: iso(snap[key]) if isinstance(snap[key], (int, float)) else None
                       for key in ("created", "expires") if key in snap}}


def _keep(bundle: Any) -> Any:
    return bundle


def _safe_mime_data(data: Any) -> dict[str, Any]:
    from .untrusted import safe_mime_data  # imported by the first rich output only

    return safe_mime_data(data)


def _safe_bundle(payload: Any) -> dict[str, Any]:
    from .untrusted import safe_bundle

    return safe_bundle(payload)


def _event_payload(event: dict[str, Any]) -> Any:
    if event["ev"] in ("stdout", "stderr"):
        return event.get("data", "")
    return {k: v for k, v in event.items() if k not in ("id", "ev")}


def doctor(settings: Settings | None = None, *, repair: bool = False,
           **manager_options: Any) -> dict[str, Any]:
    """``nexus sandbox doctor``: open the store even when its database is damaged or lost
    and check it against the providers. With ``repair`` a damaged database is moved aside
    (kept as ``cache.db.damaged-<time>``), a new one keeps the store's id, and the records
    are rebuilt from what the providers still run."""
    settings = settings or Settings.load()
    report: dict[str, Any] = {"store": str(settings.store_dir / DB_NAME), "damaged": None,
                              "moved_aside": None}
    try:
        store = Store(settings.store_dir)
    except StoreDamagedError as exc:
        report["damaged"] = str(exc)
        if not repair:
            return report
        moved = move_aside(settings.store_dir)
        report["moved_aside"] = str(moved) if moved else None
        store = Store(settings.store_dir, check=False)
    manager = SandboxManager(settings, store=store, is_admin=True, **manager_options)
    try:
        report.update(manager.doctor(repair=repair))
    finally:
        manager.close()
    return report


def describe(record: SandboxRecord, now: float | None = None) -> dict[str, Any]:
    """The seed's dict for one sandbox."""
    return record.public(time.time() if now is None else now)


__all__ = ["SandboxManager", "describe", "iso"]
