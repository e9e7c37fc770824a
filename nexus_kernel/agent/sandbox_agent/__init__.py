"""The nexus sandbox agent: the long-lived process inside every sandbox (stdlib only,
python3 >= 3.8).

It is deployed as this directory (mounted, then started with ``python3 -c`` importing
:mod:`sandbox_agent.__main__`) or as a zipapp (``python3 sandbox_agent.pyz ARGS``); see
``nexus_kernel/agent/deploy.py``. One module per part:

- :mod:`.wire`: framing, protocol constants and limits (the only module the host imports)
- :mod:`.procs`: process table, reaper, subreaper
- :mod:`.usage`: what a run cost and why it ended (rusage, /proc, cgroup counters)
- :mod:`.output`: per-run byte cap, end-marker and in-band event scanners
- :mod:`.runs`, :mod:`.sessions`, :mod:`.drivers`: stateless runs, persistent sessions
- :mod:`.files`: the file transfer ops
- :mod:`.boot`: the start up to READY (only what READY needs) and the deadline watchdog
- :mod:`.server`: the server (imported after READY); :mod:`.relay`: the stdio bridge
- :mod:`.gate`, :mod:`.snapshots`: runs vs snapshots, the snapshots (imported on first use)
- :mod:`.worker`, :mod:`.rich`, :mod:`.introspect`: the python session worker

Importing the package does nothing; ``__main__`` imports only the part a command needs.
"""
