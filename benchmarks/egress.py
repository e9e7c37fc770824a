"""``python3 -m benchmarks.egress [--provider local|docker] [--reps N]``: an HTTPS request
through a sandbox's egress proxy against the same request made directly on loopback.

Inside one sandbox with an allow-list, one Python process times, interleaved (direct,
proxied, direct, ...): a GET over a new TLS connection to a server on the sandbox's own
loopback (direct), and the same GET to the same server code on the host's loopback reached
through the proxy (CONNECT, the proxy's test hosts override maps the allowed name there).
Same client, same TLS, same certificate: the difference is the proxy hop. Prints the
medians and their ratio. Only loopback traffic."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from nexus_kernel.config import Settings
from nexus_kernel.manager import SandboxManager

SERVER = r'''
import http.server, ssl, threading
class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "3"); self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *a): pass
def serve(cert, key, port=0):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd.server_address[1]
'''

CLIENT = r'''
import http.client, json, ssl, statistics, time
local = serve("/tmp/cert.pem", "/tmp/key.pem")
context = ssl.create_default_context(cafile="/tmp/cert.pem")
context.check_hostname = False
def get(host, port, tunnel):
    if tunnel:
        conn = http.client.HTTPSConnection("127.0.0.1", 3128, context=context, timeout=10)
        conn.set_tunnel(host, port)
    else:
        conn = http.client.HTTPSConnection(host, port, context=context, timeout=10)
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"ok\n"
    conn.close()
times = {"direct": [], "proxied": []}
for i in range(REPS * 2):
    kind = "direct" if (i % 2 == 0) == (i // 2 % 2 == 0) else "proxied"
    start = time.perf_counter()
    get("127.0.0.1", local, False) if kind == "direct" else get("allowed.test", HOST_PORT, True)
    times[kind].append(time.perf_counter() - start)
print(json.dumps({k: statistics.median(v[5:]) * 1000 for k, v in times.items()}))
'''


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.egress",
                                description=__doc__.split("\n")[0])
    p.add_argument("--provider", default="local", choices=["local", "docker"])
    p.add_argument("--reps", type=int, default=200, help="requests of each kind (default 200)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nexus-egress-bench-") as tmp:
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                        "1", "-subj", "/CN=allowed.test", "-keyout", str(key), "-out",
                        str(cert)], check=True, capture_output=True)
        scope: dict = {}
        exec(SERVER, scope)  # the same server code on the host
        port = scope["serve"](str(cert), str(key))
        settings = Settings.load(home=Path(tmp, "home"), provider=args.provider,
                                 default_template="minimal",
                                 egress_test_hosts="allowed.test=127.0.0.1")
        manager = SandboxManager(settings)
        record = manager.create("egress-bench", network=[f"allowed.test:{port}"])
        try:
            manager.put_file(record.sandbox_id, "/tmp/cert.pem", cert.read_bytes())
            manager.put_file(record.sandbox_id, "/tmp/key.pem", key.read_bytes())
            code = SERVER + CLIENT.replace("REPS", str(args.reps)).replace("HOST_PORT", str(port))
            result = manager.run(record.sandbox_id, "python", code, timeout=600)
            if result.exit_code != 0:
                print(result.stderr, file=sys.stderr)
                return 1
            medians = json.loads(result.stdout)
        finally:
            manager.stop(record.sandbox_id)
            manager.close()
    ratio = medians["proxied"] / medians["direct"]
    print(f"egress ({args.provider}, {args.reps} HTTPS GETs each, new TLS connection each, "
          f"interleaved): direct on loopback {medians['direct']:.2f} ms, through the proxy "
          f"{medians['proxied']:.2f} ms, ratio {ratio:.2f}, added "
          f"{medians['proxied'] - medians['direct']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
