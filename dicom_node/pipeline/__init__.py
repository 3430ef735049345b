"""The study pipeline: study assembly, image selection, `run.run_study` (the whole pipeline of one
study in one place), delivery, the worker and reprocessing. Imports `dimse`, `store`, `model`,
`audit` and `structured_reports`; never `training` or `synthetic`."""
