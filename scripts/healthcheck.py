"""The container's HEALTHCHECK: exit 0 when the node's /readyz answers 200, 1 otherwise.

Standard library only (no torch, no database, no audit row): it runs every 30 s. The port is
DICOM_NODE_HTTP_PORT (default 8080), on loopback inside the container.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("DICOM_NODE_HTTP_PORT", "8080")
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 (a fixed http URL)
            return 0 if reply.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
