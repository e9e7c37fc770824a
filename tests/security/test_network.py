"""With network off (the default), every way out fails fast: TCP, UDP, DNS and the cloud
metadata address, in Python, Bash and JavaScript, on the local and docker providers."""

from __future__ import annotations

import json

import pytest

from .conftest import LANGUAGES

pytestmark = pytest.mark.timeout(120)

#: Each probe prints one JSON object: {name: [succeeded, seconds]}.
PROBES = {
    "python": r'''
import json, socket, time
def timed(call):
    start = time.monotonic()
    try:
        call()
        ok = True
    except OSError:
        ok = False
    return [ok, round(time.monotonic() - start, 3)]
def tcp(host, port):
    return lambda: socket.create_connection((host, port), timeout=5).close()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(b'x', ('8.8.8.8', 53))
    s.recvfrom(1)
print(json.dumps({
    'tcp': timed(tcp('1.1.1.1', 443)),
    'udp': timed(udp),
    'dns': timed(lambda: socket.getaddrinfo('example.com', 80)),
    'metadata': timed(tcp('169.254.169.254', 80)),
}))
''',
    "bash": r'''
probe() {  # name, command
  local start=${EPOCHREALTIME/./} ok=false
  if timeout 5 bash -c "$2" >/dev/null 2>&1; then ok=true; fi
  local us=$(( ${EPOCHREALTIME/./} - start ))
  printf '"%s": [%s, %d.%06d]' "$1" "$ok" $((us / 1000000)) $((us % 1000000))
}
printf '{'
probe tcp 'exec 3<>/dev/tcp/1.1.1.1/443'; printf ', '
probe udp 'echo x > /dev/udp/8.8.8.8/53 && exec 3<>/dev/udp/8.8.8.8/53 && read -t 2 -u 3'; printf ', '
probe dns 'getent hosts example.com'; printf ', '
probe metadata 'exec 3<>/dev/tcp/169.254.169.254/80'
echo '}'
''',
    "javascript": r'''
const net = require('net'), dgram = require('dgram'), dns = require('dns');
const results = {};
function timed(name, start) {
  return (ok) => { results[name] = [ok, (Date.now() - start) / 1000]; };
}
function tcp(name, host, port) {
  return new Promise((resolve) => {
    const done = timed(name, Date.now());
    const s = net.connect({ host, port, timeout: 5000 });
    s.on('connect', () => { done(true); s.destroy(); resolve(); });
    s.on('error', () => { done(false); resolve(); });
    s.on('timeout', () => { done(false); s.destroy(); resolve(); });
  });
}
function udp() {
  return new Promise((resolve) => {
    const done = timed('udp', Date.now());
    const s = dgram.createSocket('udp4');
    s.on('error', () => { done(false); s.close(); resolve(); });
    s.send('x', 53, '8.8.8.8', (err) => {
      if (err) { done(false); s.close(); resolve(); return; }
      const t = setTimeout(() => { done(false); s.close(); resolve(); }, 5000);
      s.on('message', () => { clearTimeout(t); done(true); s.close(); resolve(); });
    });
  });
}
function lookup() {
  return new Promise((resolve) => {
    const done = timed('dns', Date.now());
    dns.lookup('example.com', (err) => { done(!err); resolve(); });
  });
}
(async () => {
  await tcp('tcp', '1.1.1.1', 443);
  await udp();
  await lookup();
  await tcp('metadata', '169.254.169.254', 80);
  console.log(JSON.stringify(results));
})();
''',
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_way_out_fails_fast(shared_box, language):
    result = shared_box.run(language, PROBES[language], timeout=60)
    assert result.exit_code == 0, result
    probes = json.loads(result.stdout)
    assert set(probes) == {"tcp", "udp", "dns", "metadata"}
    for name, (succeeded, seconds) in probes.items():
        assert not succeeded, f"{name} reached the network"
        assert float(seconds) < 1.5, f"{name} took {seconds}s to fail: it must not hang"


def test_only_the_loopback_interface_exists(shared_box):
    out = shared_box.ok("bash", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")
    assert out.split() == ["lo"]
