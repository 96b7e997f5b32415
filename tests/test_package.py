"""The package as users install it: a wheel of the library alone, installed into a fresh virtual
environment without the test extras (no torch), loads a Hugging Face folder and runs a head, from
another directory than the checkout."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from helpers import save_random_hf

from perceiver_jax import from_pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = """
import importlib.util, json, sys
import numpy as np
import perceiver_jax as pj
assert importlib.util.find_spec("torch") is None and importlib.util.find_spec("train") is None
model, variables = pj.from_pretrained(sys.argv[1])
ids = np.arange(24, dtype=np.int32).reshape(2, 12) % 40
logits = model.apply(variables, ids, attention_mask=np.ones_like(ids))
print(json.dumps({"location": pj.__file__, "logits": np.asarray(logits).tolist()}))
"""


def test_the_wheel_installs_and_runs_a_head_without_torch(tmp_path):
    source = tmp_path / "source"  # a copy, so that the build leaves no build/ or egg-info in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "__pycache__", "runs", "build"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation", "-q",
         "-w", tmp_path / "dist"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("perceiver_jax-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top_level = {name.split("/")[0] for name in archive.namelist()}
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith("METADATA"))).decode()
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"perceiver_jax"}  # no train, configs
    assert "License-Expression: Apache-2.0" in metadata and "Requires-Dist: jax<0.11,>=0.10.2" in metadata
    assert (
        "Provides-Extra: hf" in metadata
        and "Provides-Extra: train" in metadata
        and "Provides-Extra: tpu" in metadata
    )

    folder = tmp_path / "model"
    config = transformers.PerceiverConfig(
        d_model=32, d_latents=48, num_latents=8, num_self_attends_per_block=1, num_self_attention_heads=4,
        num_cross_attention_heads=2, vocab_size=40, max_position_embeddings=12, num_labels=3,
    )  # fmt: skip
    save_random_hf(transformers.PerceiverForSequenceClassification, config, folder)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q"]
    subprocess.run([*pip, wheel], check=True, capture_output=True, timeout=1200)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    result = subprocess.run(
        [venv / "bin" / "python", "-c", SCRIPT, folder], cwd=elsewhere, env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output["location"].startswith(str(venv))
    model, variables = from_pretrained(str(folder))
    ids = np.arange(24, dtype=np.int32).reshape(2, 12) % 40
    expected = jax.jit(lambda v, x: model.apply(v, x, attention_mask=jnp.ones_like(x)))(variables, ids)
    np.testing.assert_allclose(np.asarray(output["logits"]), expected, rtol=1e-5, atol=1e-6)
