"""The default Qwen3 graph (guardrt.kernels.graph_pass) holds attention in linear memory, for every head_dim.

Tiny Qwen3 classifiers at the real architecture (random weights, perturbed norms) with head_dim 8 (the tiny demo),
128 (Qwen3's, on a 64-wide model) and 12 (not a multiple of the kernel's 8: zero-padded heads) are exported by
optimum and passed through the graph pass, then checked against PyTorch: unpadded lengths at the CPU kernel's block
boundaries, left- and right-padded batches, batched == single. The graph is inspected by running it with every
intermediate exposed: no tensor may have two sequence-length axes (the plain graph has them, so the check can fail).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

from guardrt.runtime.specs import get_spec  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SPEC = get_spec("intent-safety")
PAD = 0
ATOL = SPEC.atol["fp32"]
# ONNX Runtime's flash kernel tiles queries by min(kv_block, 2 x head_size) and keys by L2 / (32 x head_size) floats
# (1 MiB L2: 16 / 4096 rows at head_dim 8, 256 / 256 at 128): lengths on both sides of those edges.
BOUNDARY_LENGTHS = [1, 2, 15, 16, 17, 31, 33, 255, 256, 257, 513]


def _export(tmp_path, head_dim: int, heads: int = 4, kv_heads: int = 2, hidden: int = 64):
    from optimum.exporters.onnx import main_export

    from guardrt.kernels import graph_pass

    torch.manual_seed(head_dim)
    cfg = transformers.Qwen3Config(vocab_size=512, hidden_size=hidden, num_attention_heads=heads,
                                   num_key_value_heads=kv_heads, head_dim=head_dim, intermediate_size=96,
                                   num_hidden_layers=2, num_labels=2, pad_token_id=PAD, max_position_embeddings=4096)
    model = transformers.Qwen3ForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.mul_(1 + 0.3 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "hf")
    main_export(str(tmp_path / "hf"), output=str(tmp_path / "onnx"), task="text-classification", opset=18,
                do_validation=False, library_name="transformers")
    plain = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    fused = graph_pass(onnx.load(str(tmp_path / "onnx" / "model.onnx")), SPEC)
    return model, plain, fused, graph_pass.last_report


@pytest.fixture(scope="module", params=[8, 128, 12], ids=lambda d: f"head_dim{d}")
def qwen3(request, tmp_path_factory):
    model, plain, fused, report = _export(tmp_path_factory.mktemp(f"hd{request.param}"), request.param)
    session = ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
    return model, plain, fused, session, report


def _ids(rng, batch, seq):
    return rng.integers(5, 500, (batch, seq)).astype(np.int64)


def _padded(lengths, side, seed=0):
    rng = np.random.default_rng(seed)
    seq = max(lengths)
    ids, mask = _ids(rng, len(lengths), seq), np.ones((len(lengths), seq), np.int64)
    for b, n in enumerate(lengths):
        cut = slice(0, seq - n) if side == "left" else slice(n, seq)
        ids[b, cut], mask[b, cut] = PAD, 0
    return ids, mask


def _torch(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()


def _ort(session, ids, mask):
    return session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def test_every_attention_is_one_tiled_kernel_call(qwen3):
    """One GroupQueryAttention per layer with its present outputs requested (the CPU kernel's flash path), no
    Softmax left, and a head_dim that is not a multiple of 8 zero-padded rather than left unfused."""
    model, _, fused, _, report = qwen3
    ops = [n.op_type for n in fused.graph.node]
    gqa = [n for n in fused.graph.node if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == model.config.num_hidden_layers == report["attention_layers"]
    assert all(len(n.output) == 3 and all(n.output) for n in gqa)
    assert "Softmax" not in ops
    assert ("Pad" in ops) == (model.config.head_dim % 8 != 0)


def test_default_graph_has_no_tensor_quadratic_in_the_sequence(qwen3):
    from guardrt.kernels.graph_utils import tensors_with_two_sequence_axes

    _, plain, fused, _, _ = qwen3
    quadratic_plain = tensors_with_two_sequence_axes(plain)
    assert any(dtype == "float32" and len(shape) == 4 for _, shape, dtype in quadratic_plain), \
        "the check must see the plain graph's [B, H, S, S] scores"
    assert tensors_with_two_sequence_axes(fused) == []


@pytest.mark.parametrize("seq", BOUNDARY_LENGTHS)
def test_unpadded_lengths_at_block_boundaries_match_pytorch(qwen3, seq):
    model, _, _, session, _ = qwen3
    ids, mask = _ids(np.random.default_rng(seq), 1, seq), np.ones((1, seq), np.int64)
    got, ref = _ort(session, ids, mask), _torch(model, ids, mask)
    assert np.abs(got - ref).max() <= ATOL, np.abs(got - ref).max()


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batches_match_pytorch_and_single_rows(qwen3, side):
    """Rows of different lengths across block edges: every row equals PyTorch on the padded batch and the ONNX
    graph on the row alone (batched == single)."""
    model, _, _, session, _ = qwen3
    lengths = [300, 257, 256, 17, 16, 1]
    ids, mask = _padded(lengths, side, seed=len(side))
    got, ref = _ort(session, ids, mask), _torch(model, ids, mask)
    assert np.isfinite(got).all()
    assert np.abs(got - ref).max() <= ATOL, np.abs(got - ref).max()
    seq = ids.shape[1]
    for b, n in enumerate(lengths):
        cut = slice(seq - n, seq) if side == "left" else slice(0, n)
        single = _ort(session, ids[b:b + 1, cut], mask[b:b + 1, cut])
        assert np.abs(single[0] - got[b]).max() <= ATOL


def test_all_padding_row_is_finite_and_leaves_the_others_alone(qwen3):
    """A row with no real token means nothing, but it must not produce NaN or disturb the batch."""
    _, _, _, session, _ = qwen3
    ids, mask = _padded([40, 7], "left", seed=3)
    blank_ids, blank_mask = np.vstack([ids, np.full((1, 40), PAD)]), np.vstack([mask, np.zeros((1, 40), np.int64)])
    got = _ort(session, blank_ids, blank_mask)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[:2], _ort(session, ids, mask), atol=1e-6)


PEAK_PROBE = r"""
import json, sys, numpy as np, onnxruntime as ort
def hwm():
    return int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) / 1024
options = ort.SessionOptions(); options.intra_op_num_threads = 2
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
seq = int(sys.argv[2])
ids = np.random.default_rng(0).integers(5, 500, (1, seq)).astype(np.int64)
session.run(None, {"input_ids": ids[:, :16], "attention_mask": np.ones((1, 16), np.int64)})
before = hwm()
session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
print(json.dumps({"peak_growth_mib": hwm() - before}))
"""


@pytest.mark.parametrize("qwen3", [8], indirect=True, ids=["head_dim8"])
def test_peak_memory_at_4096_tokens_is_linear(qwen3, tmp_path):
    """Measured, not inferred: at 4,096 tokens the plain graph's working memory holds [1, 4, S, S] fp32 scores
    (256 MiB each), the fused graph's grows by a few MiB (ONNX Runtime's CPU allocator, fresh processes)."""
    _, plain, fused, _, _ = qwen3
    growth = {}
    for name, model in (("plain", plain), ("fused", fused)):
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, str(path))
        out = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(path), "4096"], capture_output=True, text=True,
                             check=True, timeout=300)
        growth[name] = json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_mib"]
    assert growth["plain"] >= 256, growth
    assert growth["fused"] <= 64, growth
