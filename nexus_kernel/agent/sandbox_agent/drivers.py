"""The programs a session runs: the bash driver, the JavaScript driver, and the boot line of
the python worker (:mod:`.worker`).

A session is one persistent interpreter (a worker) per (session, language) with three
pipes: stdout, stderr and a control pipe. After each run the worker writes a per-run end
marker (``\\0nexus-end:<id>:``) to stdout and stderr and an ``end`` report (exit code) on the
control pipe; the agent sends ``done`` once it has seen all three, so every byte the run
printed is forwarded first. Markers are never forwarded.
"""

from __future__ import annotations

import os

#: Where the ``sandbox_agent`` package can be imported from: the directory holding it, or
#: the zipapp it was loaded from.
_IMPORT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Starts a python session worker by importing only :mod:`.worker` (and what it needs) from
#: this package, so its bytecode (precompiled where the package is mounted) is used and the
#: server's modules are never loaded. ``sys.path[0]`` (cwd for ``-c``) is the import root
#: while importing; the worker then sets it to "" (the session's cwd). No ``-I``:
#: PYTHONPATH carries templates.
_WORKER_BOOT = (
    f"import sys; sys.path[0] = {_IMPORT_ROOT!r}; "
    "from sandbox_agent.worker import main; sys.exit(main())"
)


def session_argv(language: str, exe: str) -> list:
    """The command line of a session's worker for ``language``, run by interpreter ``exe``."""
    if language == "python":
        return [exe, "-u", "-c", _WORKER_BOOT, "worker-python"]
    if language == "javascript":
        return [exe, "-e", _JS_DRIVER]
    return [exe, "--noprofile", "--norc", "-c", _BASH_DRIVER]


_BASH_DRIVER = r"""
exec 5>&1 6>&2
__nx_unwind() { [[ " ${FUNCNAME[*]} " != *" source "* ]] || return 2; }
__nx_traps() {
  builtin set -T
  builtin trap '__nx_intr=1; builtin shopt -s extdebug; builtin trap __nx_unwind DEBUG' INT
}
__nx_traps
while :; do
  IFS= builtin read -r -u 3 __nx_line || { (( $? > 128 )) && continue; builtin exit 0; }
  __nx_id=${__nx_line%% *}
  builtin trap - DEBUG; builtin shopt -u extdebug; __nx_intr=
  builtin source "${__nx_line#* }" </dev/null 3<&- 4>&- 5>&- 6>&-
  __nx_status=$?
  builtin trap - DEBUG; builtin shopt -u extdebug; __nx_traps
  [[ -n $__nx_intr ]] && __nx_status=130
  __nx_intr=
  builtin printf '\0nexus-end:%s:' "$__nx_id" >&5
  builtin printf '\0nexus-end:%s:' "$__nx_id" >&6
  builtin printf '{"ev":"end","id":"%s","exit_code":%d}\n' "$__nx_id" "$__nx_status" >&4
done
"""

_JS_DRIVER = r"""
(function () {
  'use strict';
  const vm = require('vm');
  const fs = require('fs');
  const net = require('net');
  const util = require('util');
  const CTL_FD = 4;
  const outWrite = process.stdout.write.bind(process.stdout);
  const errWrite = process.stderr.write.bind(process.stderr);
  const INTERRUPTED = {};
  const queue = [];
  let running = false;
  let cellNo = 0;
  let onSigint = null;
  let tracebackToStderr = true;

  function emit(msg) {
    const buf = Buffer.from(JSON.stringify(msg) + '\n');
    let off = 0;
    while (off < buf.length) off += fs.writeSync(CTL_FD, buf, off);
  }
  function emitInline(msg) {
    // result / error go in-band on stdout: they stay in order with console.log output.
    outWrite('\u0000nexus-ev:' + JSON.stringify(msg) + '\n');
  }
  function cleanStack(stack) {
    // Drop the driver's frames: everything below the last frame of a cell.
    const lines = stack.split('\n');
    let last = -1;
    lines.forEach((l, i) => { if (/^\s+at .*cell-\d+:\d+/.test(l)) last = i; });
    if (last >= 0) return lines.slice(0, last + 1).join('\n');
    return lines.filter((l) => !/^\s+at /.test(l)).join('\n');  // e.g. a SyntaxError
  }
  function describe(e) {
    return e && e.stack ? cleanStack(String(e.stack)) : 'Uncaught ' + util.inspect(e);
  }
  function isInterrupt(e) {
    return e === INTERRUPTED ||
      (e instanceof Error && /Script execution was interrupted/.test(e.message));
  }
  function report(e) {
    if (isInterrupt(e)) {
      if (tracebackToStderr) errWrite('Interrupted: execution was interrupted\n');
      emitInline({ ev: 'error', ename: 'Interrupted', evalue: 'execution was interrupted', traceback: [] });
      return 130;
    }
    const text = describe(e);
    if (tracebackToStderr) errWrite(text + '\n');
    const isErr = e !== null && typeof e === 'object' && 'message' in e;
    emitInline({
      ev: 'error',
      ename: isErr && e.name ? String(e.name) : 'Error',
      evalue: isErr ? String(e.message) : util.inspect(e),
      traceback: text.split('\n'),
    });
    return 1;
  }
  function compile(code, filename) {
    try {
      return { script: new vm.Script(code, { filename }), wrapped: false };
    } catch (e) {
      if (e instanceof SyntaxError && /await/.test(e.message) && /\bawait\b/.test(code)) {
        const body = '(async () => {\n' + code + '\n})()';
        return { script: new vm.Script(body, { filename, lineOffset: -1 }), wrapped: true };
      }
      throw e;
    }
  }
  function untilSigint(promise) {
    return new Promise((resolve, reject) => {
      onSigint = () => reject(INTERRUPTED);
      Promise.resolve(promise).then(resolve, reject);
    }).finally(() => { onSigint = null; });
  }
  function finish(id, exitCode) {
    const marker = '\u0000nexus-end:' + id + ':';
    let pending = 2;
    const written = () => {
      if (--pending === 0) {
        emit({ ev: 'end', id, exit_code: exitCode });
        running = false;
        next();
      }
    };
    outWrite(marker, written);
    errWrite(marker, written);
  }
  async function execute(cmd) {
    let exitCode = 0;
    tracebackToStderr = cmd.stderr_traceback !== false;
    try {
      const { script, wrapped } = compile(cmd.code, 'cell-' + (++cellNo));
      let value = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
      if (wrapped) {
        value = await untilSigint(value);
      } else if (value !== undefined) {
        emitInline({ ev: 'result', data: { 'text/plain': util.inspect(value) } });
      }
    } catch (e) {
      exitCode = report(e);
    }
    finish(cmd.id, exitCode);
  }
  function next() {
    if (running || queue.length === 0) return;
    running = true;
    execute(queue.shift());
  }
  process.on('SIGINT', () => { if (onSigint) onSigint(); });
  process.on('uncaughtException', (e) => { errWrite('Uncaught ' + describe(e) + '\n'); });
  process.on('unhandledRejection', (e) => { errWrite('Unhandled rejection: ' + describe(e) + '\n'); });
  const input = new net.Socket({ fd: 3, readable: true, writable: false });
  let pendingText = '';
  input.setEncoding('utf8');
  input.on('data', (chunk) => {
    pendingText += chunk;
    let i;
    while ((i = pendingText.indexOf('\n')) >= 0) {
      queue.push(JSON.parse(pendingText.slice(0, i)));
      pendingText = pendingText.slice(i + 1);
    }
    next();
  });
  input.on('end', () => process.exit(0));
  input.on('error', () => process.exit(0));
})();
"""

