"""Text heads (masked LM, sequence classification) against HF's torch Perceiver, weights in and out.

Every comparison uses HF models with all weights re-drawn at O(1) scale (`helpers.redraw_`) and padded
inputs, in float32, at relative error <= 1e-5; deliberately wrong ports must fail the same comparison.
"""

import gc
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from helpers import count_params, max_rel_err, o1_variables, padded_batch, redraw_, save_random_hf
from safetensors.numpy import load_file

import perceiver_jax.attention
from perceiver_jax import (
    PerceiverConfig,
    PerceiverForMaskedLM,
    PerceiverForSequenceClassification,
    from_pretrained,
    save_pretrained,
)
from perceiver_jax.parity import main as parity_main
from perceiver_jax.official import ARCHITECTURES, NUM_PARAMETERS

TOL = 1e-5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = dict(
    d_model=32, d_latents=48, num_latents=8, num_self_attends_per_block=2, num_self_attention_heads=4,
    num_cross_attention_heads=2, vocab_size=40, max_position_embeddings=24, num_labels=5,
)  # fmt: skip
MLM, CLS = "PerceiverForMaskedLM", "PerceiverForSequenceClassification"
# (head, HF config overrides, input length): the encoder features HF exposes through its config.
CASES = {
    "mlm-base": (MLM, {}, 24),
    "mlm-shared-blocks-qk-v-q-widening": (MLM, dict(
        num_blocks=3, qk_channels=16, v_channels=48, cross_attention_shape_for_attention="q",
        self_attention_widening_factor=4, cross_attention_widening_factor=2, num_self_attention_heads=8,
        num_cross_attention_heads=4,
    ), 17),  # shorter than max_position_embeddings: MLM still decodes all 24 positions
    "mlm-no-query-residual-q-1head": (MLM, dict(
        use_query_residual=False, cross_attention_shape_for_attention="q", num_cross_attention_heads=1,
        num_self_attention_heads=3, self_attention_widening_factor=2, cross_attention_widening_factor=4,
    ), 24),
    "cls-base": (CLS, {}, 24),
    "cls-shared-blocks-qk-v-kv": (CLS, dict(
        num_blocks=2, num_self_attends_per_block=3, qk_channels=24, v_channels=48, num_self_attention_heads=6,
        num_cross_attention_heads=2, self_attention_widening_factor=2, cross_attention_widening_factor=4,
        use_query_residual=False,
    ), 20),
    "cls-q-16heads": (CLS, dict(
        cross_attention_shape_for_attention="q", num_self_attention_heads=16, num_cross_attention_heads=16,
        num_labels=3, num_latents=5,
    ), 24),
}  # fmt: skip


def torch_logits(torch_model, ids, mask):
    """HF logits (numpy) for int `ids` and `mask` `(B, T)`."""
    with torch.no_grad():
        return torch_model(inputs=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def jax_logits(model, variables, ids, mask):
    """perceiver-jax logits (numpy, jitted) for int `ids` and `mask` `(B, T)`."""
    apply = jax.jit(lambda v, x, m: model.apply(v, x, attention_mask=m))
    return np.asarray(apply(variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))


def hf_config(overrides=None, **extra):
    """A small `transformers.PerceiverConfig`: `BASE` updated with `overrides` and `extra`."""
    return transformers.PerceiverConfig(**{**BASE, **(overrides or {}), **extra})


@pytest.fixture(scope="module")
def mlm(tmp_path_factory):
    """(folder, torch model, ids, mask, HF logits) of the base masked-LM case."""
    folder = tmp_path_factory.mktemp("mlm")
    torch_model = save_random_hf(transformers.PerceiverForMaskedLM, hf_config(), folder)
    ids, mask = padded_batch(BASE["vocab_size"], BASE["max_position_embeddings"])
    return str(folder), torch_model, ids, mask, torch_logits(torch_model, ids, mask)


@pytest.fixture(scope="module")
def cls_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cls")
    save_random_hf(transformers.PerceiverForSequenceClassification, hf_config(), folder, seed=1)
    return str(folder)


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_small_configs(case, tmp_path, mlm):
    head, overrides, length = CASES[case]
    if case == "mlm-base":
        folder, _, ids, mask, reference = mlm
    else:
        torch_model = save_random_hf(getattr(transformers, head), hf_config(overrides), tmp_path, seed=2)
        ids, mask = padded_batch(BASE["vocab_size"], length, seed=3)
        reference, folder = torch_logits(torch_model, ids, mask), str(tmp_path)
    model, variables = from_pretrained(folder)
    assert type(model).__name__ == head
    ours = jax_logits(model, variables, ids, mask)
    expected_shape = (4, 24, 40) if head == "PerceiverForMaskedLM" else (4, model.config.num_labels)
    assert ours.shape == reference.shape == expected_shape
    assert np.abs(reference).max() > 0.3  # O(1) weights give O(1) logits: the tolerance means something
    err = max_rel_err(ours, reference)
    print(f"{case}: max rel err {err:.2e}")
    assert err <= TOL


def test_parity_has_teeth_tanh_gelu(mlm, monkeypatch):
    folder, _, ids, mask, reference = mlm
    model, variables = from_pretrained(folder)
    assert max_rel_err(jax_logits(model, variables, ids, mask), reference) <= TOL
    exact_gelu = nn.gelu
    monkeypatch.setattr(perceiver_jax.attention.nn, "gelu", lambda x, approximate=True: exact_gelu(x, True))
    err = max_rel_err(jax_logits(model, variables, ids, mask), reference)
    print(f"tanh GELU: max rel err {err:.2e}")
    assert err > 10 * TOL


def test_parity_has_teeth_layer_norm_eps(tmp_path):
    """LayerNorm eps 1e-6 instead of torch's 1e-5 must fail. Its effect scales with eps / variance of the
    normalised features, so the token/position tables and latents are drawn at a trained model's scale
    (std 0.1) instead of 1; the correct port still passes on the same weights."""
    torch_model = transformers.PerceiverForMaskedLM(hf_config()).eval()
    redraw_(torch_model, seed=5)
    with torch.no_grad():
        for name, param in torch_model.named_parameters():
            if "embeddings" in name or "latents" in name:
                param.mul_(0.1)
    torch_model.save_pretrained(tmp_path)
    ids, mask = padded_batch(BASE["vocab_size"], BASE["max_position_embeddings"])
    reference = torch_logits(torch_model, ids, mask)
    model, variables = from_pretrained(str(tmp_path))
    assert max_rel_err(jax_logits(model, variables, ids, mask), reference) <= TOL
    wrong = PerceiverForMaskedLM(model.config.replace(norm_eps=1e-6))
    err = max_rel_err(jax_logits(wrong, variables, ids, mask), reference)
    print(f"LayerNorm eps 1e-6: max rel err {err:.2e}")
    assert err > 10 * TOL


def test_padding_matters(mlm):
    """Dropping the mask changes HF's outputs, so the padded rows exercise the masking path."""
    _, torch_model, ids, mask, reference = mlm
    unmasked = torch_logits(torch_model, ids, np.ones_like(mask))
    for row in (1, 2, 3):
        assert max_rel_err(unmasked[row], reference[row]) > 1e-2


LANGUAGE = "deepmind/language-perceiver"


def test_language_perceiver_dimensions(tmp_path):
    """deepmind/language-perceiver's shape: parameter counts, and parity on one padded 2048-token input."""
    config = transformers.PerceiverConfig(**ARCHITECTURES[LANGUAGE])
    assert config.vocab_size == 262
    torch_model = save_random_hf(transformers.PerceiverForMaskedLM, config, tmp_path)
    assert sum(p.numel() for p in torch_model.parameters()) == NUM_PARAMETERS[LANGUAGE]
    rng = np.random.default_rng(0)
    ids = np.zeros((1, 2048), np.int64)
    mask = np.zeros((1, 2048), np.int64)
    ids[0, :1500] = rng.integers(6, 262, 1500)
    ids[0, 700:710] = 3  # [MASK]
    mask[0, :1500] = 1
    reference = torch_logits(torch_model, ids, mask)
    del torch_model
    gc.collect()

    model, variables = from_pretrained(str(tmp_path))
    assert count_params(variables["params"]) == NUM_PARAMETERS[LANGUAGE]
    ours_from_config = PerceiverForMaskedLM(PerceiverConfig(**ARCHITECTURES[LANGUAGE]))
    shapes = jax.eval_shape(
        lambda key: ours_from_config.init(key, **ours_from_config.example_inputs()), jax.random.key(0)
    )
    assert count_params(shapes["params"]) == NUM_PARAMETERS[LANGUAGE]
    ours = jax_logits(model, variables, ids, mask)
    assert ours.shape == reference.shape == (1, 2048, 262)
    err = max_rel_err(ours, reference)
    print(f"language-perceiver dims, 2048 tokens: max rel err {err:.2e}")
    assert err <= TOL


# ---------------------------------------------------------------- weights in and out


def test_flax_to_hf_gives_same_outputs(tmp_path):
    config = PerceiverConfig(
        **BASE, num_blocks=2, qk_channels=16, v_channels=48, id2label={0: "a", 1: "b", 2: "c"}
    )
    for head in (PerceiverForSequenceClassification, PerceiverForMaskedLM):
        model = head(config)
        ids, mask = padded_batch(config.vocab_size, config.max_position_embeddings, seed=4)
        variables = o1_variables(model, inputs=jnp.asarray(ids, jnp.int32), attention_mask=jnp.asarray(mask))
        folder = tmp_path / head.__name__
        save_pretrained(model, variables, str(folder))
        torch_model, info = getattr(transformers, head.__name__).from_pretrained(
            folder, output_loading_info=True
        )
        assert not any(info.values()), info  # no missing, unexpected or mis-shaped keys
        assert torch_model.config.id2label == {0: "a", 1: "b", 2: "c"}
        err = max_rel_err(
            jax_logits(model, variables, ids, mask), torch_logits(torch_model.eval(), ids, mask)
        )
        print(f"Flax -> HF {head.__name__}: max rel err {err:.2e}")
        assert err <= TOL
        assert PerceiverConfig.from_hf(folder).replace(architectures=None) == config


@pytest.mark.parametrize("which", ["mlm", "cls"])
def test_hf_to_flax_to_hf_is_identical(which, mlm, cls_folder, tmp_path):
    folder = mlm[0] if which == "mlm" else cls_folder
    model, variables = from_pretrained(folder)
    save_pretrained(model, variables, str(tmp_path))
    original = load_file(os.path.join(folder, "model.safetensors"))
    written = load_file(str(tmp_path / "model.safetensors"))
    assert set(written) == set(original)
    for key, value in original.items():
        assert written[key].dtype == value.dtype and np.array_equal(written[key], value), key
    assert json.load(open(tmp_path / "config.json"))["architectures"] == [type(model).__name__]
    assert PerceiverConfig.from_hf(tmp_path) == PerceiverConfig.from_hf(folder)


def test_pytorch_model_bin_equals_safetensors(mlm, tmp_path):
    folder, torch_model, *_ = mlm
    torch_model.config.save_pretrained(tmp_path)
    torch.save(torch_model.state_dict(), tmp_path / "pytorch_model.bin")
    _, from_bin = from_pretrained(str(tmp_path))
    _, from_safetensors = from_pretrained(folder)
    for a, b in zip(jax.tree_util.tree_leaves(from_bin), jax.tree_util.tree_leaves(from_safetensors)):
        assert a.dtype == b.dtype == jnp.float32 and np.array_equal(a, b)
    assert jax.tree_util.tree_structure(from_bin) == jax.tree_util.tree_structure(from_safetensors)


def test_bfloat16_compute(mlm):
    folder, _, ids, mask, reference = mlm
    model, variables = from_pretrained(folder, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))
    ours = jax_logits(model, variables, ids, mask)
    assert ours.dtype == np.float32
    err = max_rel_err(ours, reference)
    print(f"bfloat16 compute: max rel err {err:.2e}")
    assert 1e-4 < err < 3e-2  # really computed in bfloat16, and still close


# ---------------------------------------------------------------- the parity CLI


def test_parity_cli(mlm, cls_folder, monkeypatch, capsys):
    assert parity_main([cls_folder]) == 0
    out = capsys.readouterr().out
    assert "logits" in out and "parity OK" in out
    monkeypatch.setattr(perceiver_jax.attention.nn, "gelu", lambda x, approximate=True: jax.nn.gelu(x, True))
    assert parity_main([mlm[0]]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_parity_cli_subprocess(mlm):
    result = subprocess.run(
        [sys.executable, "-m", "perceiver_jax.parity", mlm[0], "--batch-size", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["output", "max", "abs", "err", "max", "rel", "err"]
    name, abs_err, rel_err = lines[1].split()
    assert name == "logits" and float(abs_err) > 0 and float(rel_err) <= TOL
    assert lines[-1] == "parity OK"


# ---------------------------------------------------------------- clear errors


def test_bad_token_ids(mlm):
    folder, *_ = mlm
    model, variables = from_pretrained(folder)
    ids = jnp.ones((2, 10), jnp.int32)
    with pytest.raises(ValueError, match=r"shape \(batch, length\)"):
        model.apply(variables, ids[0])
    with pytest.raises(ValueError, match=r"shape \(batch, length\)"):
        model.apply(variables, ids[:, :, None])
    with pytest.raises(TypeError, match="integers"):
        model.apply(variables, ids.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"\[0, 40\).*\[1, 40\]"):
        model.apply(variables, ids.at[1, 3].set(40))
    with pytest.raises(ValueError, match=r"\[0, 40\).*\[-1, 1\]"):
        model.apply(variables, ids.at[0, 0].set(-1))
    with pytest.raises(ValueError, match="max_position_embeddings=24"):
        model.apply(variables, jnp.ones((2, 25), jnp.int32))
    with pytest.raises(ValueError, match="attention_mask"):
        model.apply(variables, ids, attention_mask=jnp.ones((2, 9), jnp.int32))
    with pytest.raises(ValueError, match="attention_mask"):
        model.apply(variables, ids, attention_mask=jnp.ones((1, 10), jnp.int32))


def test_checkpoint_of_another_head(mlm, cls_folder):
    with pytest.raises(ValueError) as excinfo:
        from_pretrained(mlm[0], head="PerceiverForSequenceClassification")
    message = str(excinfo.value)
    assert "missing keys" in message and "perceiver.decoder.decoder.final_layer.weight" in message
    assert "unexpected keys" in message and "embedding_decoder.bias" in message
    with pytest.raises(ValueError, match="unexpected keys"):
        from_pretrained(cls_folder, head="PerceiverForMaskedLM")
    with pytest.raises(ValueError, match="unsupported Perceiver head 'PerceiverForSomething'"):
        from_pretrained(cls_folder, head="PerceiverForSomething")


def test_checkpoint_of_another_size(mlm, tmp_path):
    folder, torch_model, *_ = mlm
    torch_model.save_pretrained(tmp_path)
    config = json.load(open(tmp_path / "config.json"))
    config["d_latents"] = 64
    json.dump(config, open(tmp_path / "config.json", "w"))
    with pytest.raises(ValueError) as excinfo:
        from_pretrained(str(tmp_path))
    message = str(excinfo.value)
    assert "mis-shaped keys" in message
    assert "perceiver.embeddings.latents: checkpoint (8, 48), model expects (8, 64)" in message
    assert (
        "perceiver.encoder.self_attends.1.attention.self.key.weight: "
        "checkpoint (48, 48), model expects (64, 64)" in message
    )
    assert "missing keys (0)" in message and "unexpected keys (0)" in message


def test_bad_folders(mlm, tmp_path):
    folder, torch_model, *_ = mlm
    corrupt, empty, anonymous = tmp_path / "corrupt", tmp_path / "empty", tmp_path / "anonymous"
    torch_model.save_pretrained(corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        from_pretrained(str(corrupt))

    torch_model.config.save_pretrained(empty)
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        from_pretrained(str(empty))

    torch_model.save_pretrained(anonymous)
    config = json.load(open(anonymous / "config.json"))
    del config["architectures"]
    json.dump(config, open(anonymous / "config.json", "w"))
    with pytest.raises(ValueError, match="architectures.*head="):
        from_pretrained(str(anonymous))
    model, _ = from_pretrained(str(anonymous), head="PerceiverForMaskedLM")
    assert isinstance(model, PerceiverForMaskedLM)

    with pytest.raises(FileNotFoundError, match="not a folder"):
        from_pretrained(str(tmp_path / "missing"))
