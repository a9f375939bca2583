"""Turning requests into pictures: the request dataclasses and their checks, the model cache (EMA weights in
`eval()`, `inference_mode`, compiled), the work budget, studies, edits, X/Y grids, the likelihood lens, settings
read back from PNGs, sharding over processes and the app's HTTP client. Imports `core`, `models` and `formats`;
never `app`, `training` or `evaluation`.
"""
