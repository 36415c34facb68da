"""
Scrape a benchmark server's C{/metrics} while it is measured, as Prometheus
would (more often: Prometheus' default is once a minute).

C{python -m benchmarks.scraper PORT PER_SECOND}: GET
C{http://127.0.0.1:PORT/metrics} PER_SECOND times a second, until it is
terminated or the process that started it is gone.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request


def main(argv: list[str]) -> int:
    port, perSecond = int(argv[0]), float(argv[1])
    parent = os.getppid()
    interval = 1 / perSecond
    while os.getppid() == parent:
        started = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                response.read()
        except OSError:
            return 0  # The server has stopped.
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
