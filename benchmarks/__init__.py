"""Benchmarks of perceiver-jax against Hugging Face's torch Perceiver.

  python -m benchmarks.run [--tiny]   CPU: speed vs HF torch, FLOP/s vs the measured matmul peak, compile
                                      time vs depth, training memory with/without remat, chunked decoding
  python -m benchmarks.gpu [--tiny]   accelerator: bf16 training-step MFU and vision images/s
  python -m benchmarks.profile        where the time goes: per-op XLA profile and torch.profiler table

Results and how they were obtained: `benchmarks/RESULTS.md`.
"""
