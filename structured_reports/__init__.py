"""Pure encoders of AI results as DICOM objects: typed results and source datasets in, pydicom
Datasets out. No network, disk, database or GPU here."""
