"""Right-align padded rows at the graph inputs, so every attention layer sees right padding.

ONNX Runtime's GroupQueryAttention masks keys by per-row lengths (`seqlens_k`): keys at positions >= length are
ignored. That is right padding. guardrt's intent-safety rows are left-padded (the card's tokenizer pads left), and
an additive [B, 1, S, S] bias to express left padding would be the quadratic tensor the fused graph exists to avoid
(and the CUDA kernel takes no bias at all). Instead, each row of `input_ids` and `attention_mask` is rotated so its
real tokens come first:

    first_b = ArgMax(mask_b)          (index of the first real token; 0 for right padding or no padding)
    index[b, s] = (s + first_b) mod S
    ids'[b, s] = ids[b, index[b, s]],  mask'[b, s] = mask[b, index[b, s]]

Every consumer of the two graph inputs (embedding lookup, HF's last-non-pad-token pooling) reads the rotated
tensors, so the whole network runs on the right-padded row. Why the logits do not change: Qwen3's classification
forward uses positions 0..S-1 whatever the padding and RoPE makes attention depend only on position differences,
so moving a row's real tokens from positions p..S-1 to 0..n-1 changes each score only by float rounding of the
rotary angles (the single unpadded row sees positions 0..n-1 too, so left-padded batched == single gets closer);
pad positions never reach a real token (masked as keys in every layer) and the pooling picks the last non-pad
token, now at n-1.

Contract: each mask row is one contiguous run of ones (left or right padding: what guardrt's runtime and every
tokenizer pad produce). A mask with holes is not reproduced by the fused graph (the plain graph handles it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from .graph_utils import add_initializer

__all__ = ["RightAligned", "right_align_inputs"]

PREFIX = "GuardrtRightAlign"


@dataclass(frozen=True)
class RightAligned:
    """Names of the tensors the attention fusion reads after `right_align_inputs`."""

    seqlens_k: str  # int32 [B]: real tokens per row - 1 (at least 0), GroupQueryAttention's `seqlens_k`
    total_sequence_length: str  # int32 scalar: S, GroupQueryAttention's `total_sequence_length`


def right_align_inputs(model: onnx.ModelProto, ids_input: str = "input_ids",
                       mask_input: str = "attention_mask") -> RightAligned:
    """Insert the rotation in front of every consumer of `ids_input` / `mask_input` (in place); see module docs."""
    graph = model.graph
    p = PREFIX
    c = {name: add_initializer(graph, f"{p}/{name}", value) for name, value in [
        ("zero", np.array(0, np.int64)), ("one", np.array(1, np.int64)), ("one_i32", np.array(1, np.int32)),
        ("zero_i32", np.array(0, np.int32)), ("axis1", np.array([1], np.int64)), ("axis0", np.array([0], np.int64)),
    ]}
    nodes = [
        helper.make_node("Shape", [mask_input], [f"{p}/shape"], name=f"{p}/Shape"),
        helper.make_node("Gather", [f"{p}/shape", c["one"]], [f"{p}/S"], axis=0, name=f"{p}/GatherS"),
        helper.make_node("Range", [c["zero"], f"{p}/S", c["one"]], [f"{p}/positions"], name=f"{p}/Range"),
        helper.make_node("Unsqueeze", [f"{p}/positions", c["axis0"]], [f"{p}/positions_1s"], name=f"{p}/UnsqPos"),
        # ArgMax returns the first maximal index: the first real token (0 for an all-zero row).
        helper.make_node("ArgMax", [mask_input], [f"{p}/first"], axis=1, keepdims=1, name=f"{p}/FirstReal"),
        helper.make_node("Add", [f"{p}/positions_1s", f"{p}/first"], [f"{p}/shifted"], name=f"{p}/Shift"),
        helper.make_node("Mod", [f"{p}/shifted", f"{p}/S"], [f"{p}/index"], name=f"{p}/Wrap"),
        helper.make_node("GatherElements", [ids_input, f"{p}/index"], [f"{p}/input_ids"], axis=1,
                         name=f"{p}/RotateIds"),
        helper.make_node("GatherElements", [mask_input, f"{p}/index"], [f"{p}/attention_mask"], axis=1,
                         name=f"{p}/RotateMask"),
        # seqlens_k = max(real tokens, 1) - 1: an all-padding row (meaningless input) still gets a valid length.
        helper.make_node("Cast", [mask_input], [f"{p}/mask_i32"], to=TensorProto.INT32, name=f"{p}/CastMask"),
        helper.make_node("ReduceSum", [f"{p}/mask_i32", c["axis1"]], [f"{p}/lengths"], keepdims=0,
                         name=f"{p}/Lengths"),
        helper.make_node("Max", [f"{p}/lengths", c["one_i32"]], [f"{p}/lengths_min1"], name=f"{p}/AtLeastOne"),
        helper.make_node("Sub", [f"{p}/lengths_min1", c["one_i32"]], [f"{p}/seqlens_k"], name=f"{p}/SeqlensK"),
        helper.make_node("Cast", [f"{p}/S"], [f"{p}/total_sequence_length"], to=TensorProto.INT32,
                         name=f"{p}/TotalSeqLen"),
    ]
    rename = {ids_input: f"{p}/input_ids", mask_input: f"{p}/attention_mask"}
    _rewire(graph, rename)
    for i, node in enumerate(nodes):  # first: they read only graph inputs and initializers (stays sorted)
        graph.node.insert(i, node)
    return RightAligned(seqlens_k=f"{p}/seqlens_k", total_sequence_length=f"{p}/total_sequence_length")


def _rewire(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Point every existing reader of the names in `rename` (subgraphs included) at their replacements."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rewire(attr.g, rename)
