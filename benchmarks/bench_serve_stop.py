"""How long ``rsdml serve`` takes to exit after Ctrl+C (SIGINT) while a browser-like client
holds an idle keep-alive connection.

uvicorn used to wait for such connections to close (a new user saw about 7 s; this script saw
17.6 s on a loaded 2-core machine before ``timeout_graceful_shutdown=1``, 2.4 s after). A
timing, so it lives here and not in the tests. Prints one JSON object.

    python benchmarks/bench_serve_stop.py --index INDEX [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def once(index: str) -> float:
    p = subprocess.Popen([sys.executable, "-m", "rsdml", "serve", index, "--port", "0"],
                         stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    url = None
    for line in p.stderr:
        if (m := re.search(r"(http://\S+/)", line)):
            url = m.group(1)
            break
    if url is None:
        raise SystemExit(f"rsdml serve did not start: {p.stderr.read()}")
    urllib.request.urlopen(url + "healthz").read()
    host, port = url[len("http://"):-1].rsplit(":", 1)
    with socket.create_connection((host, int(port))) as s:  # an idle keep-alive connection
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        s.recv(1000)
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        p.wait(120)
        return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    times = [once(args.index) for _ in range(args.repeat)]
    print(json.dumps({"seconds": [round(t, 2) for t in times],
                      "load_1min": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
