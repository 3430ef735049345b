"""dicom-node: a DICOM-native AI node for chest radiographs."""

__version__ = "0.1.0"
