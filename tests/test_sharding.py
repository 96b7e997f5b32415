"""Sharding layout of the trainer's compiled step on 8 fake CPU devices (the program, not only its loss):
activations split with the batch under data, fsdp, tensor and mixed meshes, and per-device memory.

Shapes in compiled HLO are per device, so an activation whose leading dimension is the global batch sits
whole on every device. The global batch (56) equals no model dimension, so such shapes are unambiguous.
"""

import re

import pytest

from helpers import tiny_dims

from configs import default, mlm_tiny
from train import aot

BATCH = 56
MLM = tiny_dims(
    num_latents=24, d_latents=128, d_model=64, num_self_attention_heads=4, num_cross_attention_heads=4,
    max_position_embeddings=128, mlm_decoder=dict(num_heads=4, qk_channels=64),
    attention_probs_dropout_prob=0.0,
)  # fmt: skip
CONV = tiny_dims(
    num_latents=24, d_latents=128, d_model=322, num_self_attention_heads=4, image_size=32, num_labels=10,
    attention_probs_dropout_prob=0.0,
)  # fmt: skip
# mesh name -> (data, fsdp, tensor). Tensor parallelism runs beside a batch axis, as it always does:
# alone (tensor=8) it keeps the whole batch on every device by definition and all-reduces it per layer.
MESHES = {"data": (8, 1, 1), "fsdp": (1, 8, 1), "tensor": (1, 2, 4), "mixed": (2, 2, 2)}


def config_for(task, model, mesh):
    config = mlm_tiny.get_config()
    config.task = task
    config.model = default.model(**model)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
    config.global_batch_size = BATCH
    config.data.seq_len = 128
    config.data.mixup_alpha = config.data.cutmix_alpha = 0.0
    return config


CASES = {"mlm": ("mlm", MLM), "image_conv": ("image_conv", CONV)}


def whole_batch_collectives(hlo: str) -> list[str]:
    """Collectives whose result has a dimension equal to the global batch."""
    kinds = "|".join(aot.COLLECTIVES)
    found = []
    for line in hlo.splitlines():
        match = re.search(rf" = (.*?) ({kinds})(-start)?\(", line)
        if match and any(str(BATCH) in dims.split(",") for dims in re.findall(r"\[([\d,]*)\]", match[1])):
            found.append(line.strip()[:200])
    return found


@pytest.fixture(scope="module")
def compiled():
    """(case, mesh) -> (report, hlo), compiled once."""
    cache = {}

    def get(case, mesh):
        if (case, mesh) not in cache:
            task, model = CASES[case]
            cache[case, mesh] = aot.compile_step(
                config_for(task, model, mesh), f"cpu:{mesh[0] * mesh[1] * mesh[2]}"
            )
        return cache[case, mesh]

    return get


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_no_collective_moves_a_whole_batch_activation(compiled, case, mesh):
    report, hlo = compiled(case, MESHES[mesh])
    assert report.collectives, "a sharded step communicates"
    assert whole_batch_collectives(hlo) == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_fsdp_splits_the_activation_memory(compiled, case):
    single, _ = compiled(case, (1, 1, 1))
    sharded, _ = compiled(case, MESHES["fsdp"])
    assert single.temp_bytes > 20 * 2**20  # activations dominate: the check is about them
    assert sharded.temp_bytes <= 1.5 * single.temp_bytes / 8, (single.temp_bytes, sharded.temp_bytes)


def test_without_the_rules_the_batch_is_not_split(compiled):
    """The constraints are what does it: with rules that map nothing, GSPMD follows the parameters."""
    task, model = CASES["mlm"]
    config = config_for(task, model, MESHES["fsdp"])
    config.sharding_rules = tuple(
        (name, None) if name.startswith(("batch", "activation")) else (name, axes)
        for name, axes in config.sharding_rules
    )
    _, hlo = aot.compile_step(config, "cpu:8")
    assert whole_batch_collectives(hlo)
