"""Training configs: each module's `get_config()` returns an `ml_collections.ConfigDict` for
`python -m train --config configs/<module>.py --workdir DIR`; `default.py` lists every field."""
