"""The model at serving time: MONAI bundle loading, preprocessing, the decode pool, inference,
Grad-CAM and cross-study batching. Imports the top-level leaves (`domain`, `errors`) and
`structured_reports` codes; no database, network, training or synthetic code."""
