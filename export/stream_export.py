"""ONNX export of Qwen3Guard-Stream: backbone + both head paths, with the KV cache in and out.

The graph (`stream/<precision>/model.onnx`), one call per chunk of k >= 1 new tokens of a batch of streams:

    inputs:  input_ids [batch, k] int64, attention_mask [batch, past + k] int64 (1 = a real token),
             position_ids [batch, k] int64, past_key_values.{layer}.{key,value} [batch, kv_heads, past, head_dim]
    outputs: risk_level_logits [batch, k, 3], category_logits [batch, k, 8], query_risk_level_logits [batch, k, 3],
             query_category_logits [batch, k, 9], present.{layer}.{key,value} [batch, kv_heads, past + k, head_dim]

The prompt prefill is the same graph with an empty past. The causal mask is built inside the graph from the 2-D
mask (key j visible to new token i when mask[j] == 1 and j <= past + i), so rows of different lengths share one
batch with right-aligned caches (the runtime's layout, `guardrt.runtime.stream`). Traced with torch.onnx's
TorchScript exporter over transformers' eager attention; the mask goes in as the model's own per-layer-type mask
mapping, so transformers' mask builders (which do not trace) are never called.

`export_stream(model_dir, out_dir, precisions)` validates every precision against PyTorch (logits at every position
of held-out conversations, fed as a prompt prefill then k-token chunks for k = 1 and 16) and writes only those that
pass their gate (`GATES`).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from guardrt.export.onnx_export import ExportGateError, write_manifest_and_gate
from guardrt.runtime.errors import GuardrtError, ModelFilesError

__all__ = ["HEAD_OUTPUTS", "GATES", "STREAM_PRECISIONS", "export_stream", "stream_onnx_model"]

HEAD_OUTPUTS = ("risk_level_logits", "category_logits", "query_risk_level_logits", "query_category_logits")
STREAM_PRECISIONS = ("fp32", "fp16", "int8-dynamic")
ONNX_OPSET = 18
# Max |Δlogit| vs PyTorch fp32 at every position, and the share of positions whose labels (risk and category
# argmax) must agree. fp32 must agree everywhere: the runtime's per-token verdicts are compared with the re-prefill
# reference position by position.
GATES = {
    "fp32": {"atol": 1e-4, "min_agreement": 1.0},
    "fp16": {"atol": 5e-2, "min_agreement": 0.98},
    "int8-dynamic": {"atol": 2.5e-1, "min_agreement": 0.95},
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.jinja")


class _FlatCache:
    """The few `Cache` methods Qwen3 calls, over plain tensors (traceable: no lazily created empty tensors)."""

    is_compileable = False

    def __init__(self, keys, values):
        self.keys, self.values = list(keys), list(values)

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        import torch

        self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key_states], dim=-2)
        self.values[layer_idx] = torch.cat([self.values[layer_idx], value_states], dim=-2)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[-2]


def stream_onnx_model(model):
    """The traced module: (input_ids, attention_mask, position_ids, *past) -> 4 head logits + presents."""
    import torch

    class StreamGraph(torch.nn.Module):
        def __init__(self, guard):
            super().__init__()
            self.guard = guard
            self.n_layers = guard.config.num_hidden_layers

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = _FlatCache(past[0::2], past[1::2])
            k = input_ids.shape[1]
            total = attention_mask.shape[1]
            key_pos = torch.arange(total, device=input_ids.device)
            query_pos = torch.arange(k, device=input_ids.device) + (total - k)
            allowed = (key_pos[None, :] <= query_pos[:, None])[None, None] & (attention_mask[:, None, None, :] > 0)
            zero = torch.zeros((), dtype=torch.float32)
            floor = torch.full((), torch.finfo(torch.float32).min, dtype=torch.float32)
            mask = torch.where(allowed, zero, floor)
            out = self.guard(input_ids=input_ids, attention_mask={"full_attention": mask}, position_ids=position_ids,
                             past_key_values=cache, use_cache=True)
            presents = []
            for i in range(self.n_layers):
                presents += [cache.keys[i], cache.values[i]]
            return (out.risk_level_logits, out.category_logits, out.query_risk_level_logits,
                    out.query_category_logits, *presents)

    return StreamGraph(model).eval()


def _io_names(n_layers: int) -> tuple[list[str], list[str], dict[str, dict[int, str]]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    present = [p.replace("past_key_values.", "present.") for p in past]
    inputs = ["input_ids", "attention_mask", "position_ids"] + past
    outputs = list(HEAD_OUTPUTS) + present
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch_size", 1: "sequence_length"},
                                       "attention_mask": {0: "batch_size", 1: "total_length"},
                                       "position_ids": {0: "batch_size", 1: "sequence_length"}}
    for name in HEAD_OUTPUTS:
        axes[name] = {0: "batch_size", 1: "sequence_length"}
    for name in past:
        axes[name] = {0: "batch_size", 2: "past_length"}
    for name in present:
        axes[name] = {0: "batch_size", 2: "total_length"}
    return inputs, outputs, axes


def _trace(model, path: Path) -> None:
    import torch

    cfg = model.config
    n, kvh = cfg.num_hidden_layers, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    batch, k, past_len = 2, 3, 4
    ids = torch.randint(0, 1000, (batch, k))
    mask = torch.ones(batch, past_len + k, dtype=torch.long)
    mask[1, :2] = 0
    positions = torch.arange(past_len, past_len + k)[None].repeat(batch, 1)
    past = [torch.randn(batch, kvh, past_len, hd) for _ in range(2 * n)]
    inputs, outputs, axes = _io_names(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(stream_onnx_model(model), (ids, mask, positions, *past), str(path), input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False,
                          do_constant_folding=True)


# -- validation ---------------------------------------------------------------------------------------------------
def validation_ids(model_dir: Path, n: int) -> list[list[int]]:
    """Held-out conversations (seed 2) as the card tokenizes them."""
    from transformers import AutoTokenizer

    from guardrt.export.stream_reference import render_stream_ids
    from guardrt.export.stream_synthetic import stream_examples
    from guardrt.export.synthetic import SPLIT_SEEDS

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return [render_stream_ids(tokenizer, e.messages) for e in stream_examples(n, seed=SPLIT_SEEDS["heldout"])]


def _torch_logits(model, ids: list[int]):
    """PyTorch fp32 head logits at every position of one sequence (one forward, no cache): 4 arrays [len, C]."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), use_cache=False)
    return [getattr(out, name)[0].float().numpy() for name in HEAD_OUTPUTS]


def validate_stream_graph(path: Path, model, sequences: Sequence[Sequence[int]], gate: dict[str, float],
                          chunks: Sequence[int] = (1, 16), intra_op_threads: int | None = None) -> dict[str, Any]:
    """Feed each sequence through the ONNX graph (prompt prefill, then k-token chunks, for each k in `chunks`) with
    the in-process runtime, and compare every position's head logits with PyTorch's: max |Δ| and label agreement."""
    import numpy as np

    from guardrt.runtime.stream import StreamGraph
    from guardrt.runtime.stream_protocol import prompt_end_index

    graph = StreamGraph(path, intra_op_threads=intra_op_threads)
    max_diff, agree, positions = 0.0, 0, 0
    try:
        refs = [_torch_logits(model, list(s)) for s in sequences]
        for k in chunks:
            for seq, ref in zip(sequences, refs):
                seq = list(seq)
                end = prompt_end_index(seq)
                got = [[] for _ in HEAD_OUTPUTS]
                state = graph.empty_state()
                for lo, hi in [(0, end + 1)] + [(a, min(a + k, len(seq))) for a in range(end + 1, len(seq), k)]:
                    heads, state = graph.step_one(state, seq[lo:hi])
                    for i, h in enumerate(heads):
                        got[i].append(h)
                for i in range(len(HEAD_OUTPUTS)):
                    g = np.concatenate(got[i])
                    max_diff = max(max_diff, float(np.abs(g - ref[i]).max()))
                same = (np.concatenate(got[0]).argmax(-1) == ref[0].argmax(-1)) & \
                       (np.concatenate(got[1]).argmax(-1) == ref[1].argmax(-1))
                agree += int(same[end + 1:].sum()) + int(np.concatenate(got[2])[end].argmax() == ref[2][end].argmax())
                positions += len(seq) - end
    finally:
        graph.close()
    agreement = agree / max(1, positions)
    failed = [c for c, ok in (("atol", max_diff <= gate["atol"]), ("agreement", agreement >= gate["min_agreement"]))
              if not ok]
    return {"max_abs_diff": max_diff, "label_agreement": agreement, "positions": positions, "chunks": list(chunks),
            "conversations": len(sequences), "gate": gate, "passed": not failed, "failed_checks": failed,
            "summary": f"max|Δlogit| {max_diff:.2e}, labels {agree}/{positions} positions (k={list(chunks)})"}


def _derive(precision: str, fp32_path: Path, path: Path) -> None:
    from guardrt.export.onnx_export import _int8_excluded, _load, _quiet_libraries, save_onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_libraries():
        if precision == "fp16":
            from guardrt.export.fp16 import convert_to_fp16

            model = convert_to_fp16(_load(fp32_path))
        elif precision == "int8-dynamic":
            from guardrt.export.quantize import quantize_int8_dynamic

            raw = path.with_name("raw.onnx")
            fp32 = _load(fp32_path)
            # Float: the attention products and rotary angles (as every guardrt int8 graph) and the heads (they run
            # on a few positions; quantizing them moved the tiny demo's logits by 1.12 instead of 0.83).
            heads = [n.name for n in fp32.graph.node if n.op_type == "MatMul" and n.name.startswith("/guard/")
                     and not n.name.startswith("/guard/model/")]
            quantize_int8_dynamic(fp32_path, raw, nodes_to_exclude=_int8_excluded(fp32) + heads)
            del fp32
            model = _load(raw)
            for f in list(path.parent.iterdir()):
                f.unlink()
        else:
            raise GuardrtError(f"unknown precision {precision!r}; choose from {', '.join(STREAM_PRECISIONS)}")
        save_onnx(model, path, 1 << 62)


def export_stream(model_dir: str | Path, out_dir: str | Path, precisions: Sequence[str] = ("fp32",), *,
                  force: bool = False, validation_conversations: int = 8, log: Callable[[str], None] | None = None,
                  intra_op_threads: int | None = None) -> Path:
    """Export a Qwen3ForGuardModel checkpoint into `out_dir` (`stream/<precision>/model.onnx`, tokenizer, config,
    guardrt.json, validation.json). Raises ExportGateError when a precision misses its gate (the others are
    written), ModelFilesError for a bad checkpoint."""
    from guardrt import __version__
    from guardrt.export.onnx_export import EXTERNAL_DATA_THRESHOLD, _dir_bytes, _load, save_onnx
    from guardrt.export.progress import Progress
    from guardrt.export.stream_reference import load_guard_model
    from guardrt.runtime.export_dir import MANIFEST_NAME

    model_dir, out = Path(model_dir), Path(out_dir)
    cfg_file = model_dir / "config.json"
    if not cfg_file.is_file():
        raise ModelFilesError(f"{model_dir} has no config.json (a Qwen3ForGuardModel checkpoint directory)")
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    if (cfg.get("architectures") or [None])[0] != "Qwen3ForGuardModel":
        raise ModelFilesError(f"{model_dir}: architectures[0] is {(cfg.get('architectures') or [None])[0]!r}, "
                              "expected 'Qwen3ForGuardModel'")
    unknown = [p for p in precisions if p not in STREAM_PRECISIONS]
    if unknown:
        raise GuardrtError(f"unknown precision {', '.join(unknown)}; choose from {', '.join(STREAM_PRECISIONS)}")
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ModelFilesError(f"output directory {out} is not empty and not a guardrt export; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    model = load_guard_model(model_dir, attn_implementation="eager")
    sequences = validation_ids(model_dir, validation_conversations)
    results: dict[str, Any] = {}
    written: dict[str, str] = {}
    failures: list[str] = []
    work = Path(tempfile.mkdtemp(prefix=".guardrt-export-", dir=out))
    try:
        fp32_path = work / "base" / "model.onnx"
        with Progress.step(f"qwen3guard-stream: fp32 ONNX (TorchScript trace, opset {ONNX_OPSET})", log):
            _trace(model, work / "trace" / "model.onnx")
            save_onnx(_load(work / "trace" / "model.onnx"), fp32_path, EXTERNAL_DATA_THRESHOLD)
            shutil.rmtree(work / "trace", ignore_errors=True)
        for precision in precisions:
            path = work / "stream" / precision / "model.onnx"
            t0 = time.perf_counter()
            with Progress.step(f"qwen3guard-stream: {precision} graph", log):
                if precision == "fp32":
                    path.parent.mkdir(parents=True, exist_ok=True)
                    save_onnx(_load(fp32_path), path, EXTERNAL_DATA_THRESHOLD)
                else:
                    _derive(precision, fp32_path, path)
            with Progress.step(f"qwen3guard-stream: validating {precision} against PyTorch", log):
                res = validate_stream_graph(path, model, sequences, GATES[precision],
                                            intra_op_threads=intra_op_threads)
            res.update(precision=precision, size_bytes=_dir_bytes(path.parent),
                       export_seconds=round(time.perf_counter() - t0, 1))
            results[precision] = res
            if log:
                log(f"qwen3guard-stream {precision}: {res['summary']}: "
                    f"{'ok' if res['passed'] else 'FAILED ' + ','.join(res['failed_checks'])}")
            if res["passed"] or force:
                dest = out / "stream" / precision
                shutil.rmtree(dest, ignore_errors=True)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path.parent), str(dest))
                written[precision] = f"stream/{precision}/model.onnx"
            else:
                failures.append(f"{precision}: {res['summary']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out / name)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")
    manifest = {
        "spec": "qwen3guard-stream",
        "architecture": "Qwen3ForGuardModel",
        "model_type": "qwen3",
        "graph": "token-heads-with-past",
        "graphs": {"token-heads-with-past": written},
        "precisions": written,
        "num_labels": 3,
        "labels": ["Safe", "Unsafe", "Controversial"],
        "onnx_opset": ONNX_OPSET,
        "num_layers": cfg["num_hidden_layers"],
        "num_key_value_heads": cfg["num_key_value_heads"],
        "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
        "max_position_embeddings": cfg["max_position_embeddings"],
        "vocab_size": cfg["vocab_size"],
        "source_model_dir": str(model_dir.resolve()),
        "forced": [p for p in written if not results[p]["passed"]],
        "guardrt_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return write_manifest_and_gate(out, manifest, results, failures, force)
