"""The DICOM network edge: the C-STORE/C-ECHO SCP and its durable intake, and the C-STORE SCU
that delivers results. Imports `store`, `audit` and the top-level leaves (`settings`, `errors`)."""
