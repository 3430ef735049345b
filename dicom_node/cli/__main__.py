"""`python -m dicom_node.cli`: the `dicom-node` command."""

from dicom_node.cli import main

raise SystemExit(main())
