"""A bare pynetdicom C-STORE SCP, the floor of any receiver built on pynetdicom: every storage
SOP class, the data set received into a temporary file (pynetdicom's chunked receive, as the
node does), the handler answers 0x0000 at once (no parse, no spool, no fsync, no database).

    .venv/bin/python bench/bare_scp.py PORT
"""

from __future__ import annotations

import sys

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt


def main() -> None:
    _config.STORE_RECV_CHUNKED_DATASET = True
    ae = AE(ae_title="DICOMNODE")
    ae.maximum_pdu_size = 131072
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.start_server(
        ("127.0.0.1", int(sys.argv[1])),
        evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)],
    )


if __name__ == "__main__":
    main()
