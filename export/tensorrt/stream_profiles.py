"""TensorRT for Qwen3Guard-Stream: the optimization profiles of the token-heads KV graph and the engine build.

The graph (`guardrt.export.stream_export`) is called in two regimes, so the engine gets two profiles:

* `prefill`: a batch of prompts with an empty past (past_length 0; input_ids [batch, 1..max_prompt]);
* `step`: a batch of streams advancing by k in 1..max_step tokens over a past of 1..max_positions - 1 tokens.

Every input gets its full shape range: input_ids / position_ids [batch, k], attention_mask [batch, past + k],
past_key_values.* [batch, kv_heads, past, head_dim]. `StreamProfile` has the `index` / `shapes()` / `bucket` /
`batch` / `seq` interface the shared builder (`build.build_engine`) and `check_engine_profiles` use, and the ranges
do not overlap on the past length (0 vs >= 1), so `runtime.tensorrt.select_profile` picks exactly one for any call
`runtime.stream.StreamGraph` makes.

Built blind on this project's machines (no GPU): the pure parts are unit-tested; `build_stream_engine` and the
engine-vs-ONNX Runtime check are `gpu` tests, unverified here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["StreamProfile", "stream_profiles", "build_stream_engine"]


@dataclass(frozen=True)
class StreamProfile:
    index: int
    name: str  # "prefill" | "step"
    batch: tuple[int, int, int]
    seq: tuple[int, int, int]  # new tokens per row (k)
    past: tuple[int, int, int]
    num_layers: int
    kv_heads: int
    head_dim: int

    @property
    def bucket(self) -> int:
        return self.seq[2]

    def shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """{input: (min shape, opt shape, max shape)}."""
        rng = range(3)
        ids = tuple((self.batch[i], self.seq[i]) for i in rng)
        out = {"input_ids": ids, "position_ids": ids,
               "attention_mask": tuple((self.batch[i], self.past[i] + self.seq[i]) for i in rng)}
        kv = tuple((self.batch[i], self.kv_heads, self.past[i], self.head_dim) for i in rng)
        for layer in range(self.num_layers):
            for part in ("key", "value"):
                out[f"past_key_values.{layer}.{part}"] = kv
        return out


def stream_profiles(config: dict[str, Any], *, max_batch: int = 32, opt_batch: int = 8, max_prompt: int = 2048,
                    opt_prompt: int = 256, max_step: int = 16, opt_step: int = 1, opt_past: int = 512,
                    max_positions: int | None = None) -> list[StreamProfile]:
    """The prefill and step profiles for a Qwen3Guard-Stream config (config.json as a dict)."""
    positions = int(max_positions or config["max_position_embeddings"])
    if not 1 <= opt_step <= max_step < positions or not 1 <= opt_prompt <= max_prompt <= positions:
        raise ValueError(f"inconsistent stream profile limits (step {opt_step}/{max_step}, prompt "
                         f"{opt_prompt}/{max_prompt}, positions {positions})")
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"opt_batch {opt_batch} must be in 1..max_batch {max_batch}")
    common = dict(num_layers=int(config["num_hidden_layers"]), kv_heads=int(config["num_key_value_heads"]),
                  head_dim=int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]))
    max_past = positions - 1
    return [
        StreamProfile(0, "prefill", (1, opt_batch, max_batch), (1, opt_prompt, max_prompt), (0, 0, 0), **common),
        # A step's total length is at most max_positions; its past is at least 1 (a prefill came first).
        StreamProfile(1, "step", (1, opt_batch, max_batch), (1, opt_step, max_step),
                      (1, min(opt_past, max_past), max_past), **common),
    ]


def build_stream_engine(export_dir: str | Path, plan_path: str | Path, precision: str = "fp16", *,
                        log: Callable[[str], None] | None = None, **profile_options: Any) -> dict[str, Any]:
    """Build the engine of an export's token-heads graph with both profiles (GPU host; TensorRT and Polygraphy from
    the `gpu` extra). Returns the build record (build.build_engine's)."""
    from guardrt.export.tensorrt.build import build_engine
    from guardrt.export.tensorrt.precision import engine_settings
    from guardrt.runtime.errors import read_json_file
    from guardrt.runtime.export_dir import load_export_dir

    manifest = load_export_dir(export_dir, spec="qwen3guard-stream")
    settings = engine_settings(precision, manifest.precisions)
    profiles = stream_profiles(read_json_file(manifest.path / "config.json"), **profile_options)
    return build_engine(manifest.precisions[settings.source], plan_path, settings, profiles, log=log)
