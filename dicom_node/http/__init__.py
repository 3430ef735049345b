"""The node's HTTP side: `/healthz`, `/readyz` and `/metrics` (docs/operations.md), served by
every `serve` and `work` process on `http_host`:`http_port`. Imports `store`, `audit`, `model`
(the bundle's card), `metrics` and `settings`; nothing of the pipeline or the network edge."""
