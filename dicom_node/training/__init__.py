"""Training and evaluation: labelled data sets, samples and augmentation, the training loop,
evaluation, classification metrics (AUROC), experiment tracking and ROC plots. Imports `model`;
never the service (`store`, `dimse`, `pipeline`) or `synthetic`."""
