"""Synthetic data: chest phantoms with known findings, their DICOM encoding, phantom training
sets, localisation scoring and the demo. Imports `model` and `training` (the demo also the node);
nothing on the serving path imports it."""
