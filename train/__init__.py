"""Training for perceiver-jax: `python -m train --config configs/<name>.py --workdir DIR`.

Modules: `trainer` (the loop), `tasks` (pluggable problems: data + head + loss), `data` (deterministic,
resumable, multi-host pipelines), `partitioning` (mesh and shardings), `optim` (AdamW / LAMB and
schedules), `checkpoint` (Orbax), `report` (TensorBoard, metrics.jsonl, loss curve).
"""
