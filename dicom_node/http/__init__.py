"""The node's HTTP side: `/healthz`, `/readyz` and `/metrics` (docs/operations.md), served by
every `serve` and `work` process on `http_host`:`http_port`."""
