"""The README's Python blocks run as written, in order, in one fresh process: the hub id they load
(`deepmind/language-perceiver`) resolves offline to a tiny random HF masked LM in a huggingface_hub cache
laid out as huggingface_hub lays it out."""

import os
import re
import shutil
import subprocess
import sys

import transformers
from helpers import save_random_hf, tiny_dims

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MLM = tiny_dims(max_position_embeddings=64)


def readme_python_blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as file:
        return re.findall(r"```python\n(.*?)```", file.read(), flags=re.S)


def test_readme_python_blocks_run(tmp_path):
    blocks = readme_python_blocks()
    assert len(blocks) >= 4, "the README's usage blocks were not found"
    snapshot = tmp_path / "hub" / "models--deepmind--language-perceiver" / "snapshots" / ("a" * 40)
    save_random_hf(transformers.PerceiverForMaskedLM, transformers.PerceiverConfig(**TINY_MLM), snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("a" * 40)
    script = tmp_path / "readme.py"
    script.write_text("\n".join(blocks))
    env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # save_pretrained(..., "out/") wrote a folder transformers loads.
    loaded = transformers.PerceiverForMaskedLM.from_pretrained(str(tmp_path / "out"))
    assert loaded.config.max_position_embeddings == TINY_MLM["max_position_embeddings"]
    shutil.rmtree(tmp_path / "hub")
