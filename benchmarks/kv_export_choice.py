"""How the KV-cache exporter was chosen: optimum's text-generation-with-past (+ guardrt's last-3-positions LM head)
vs onnxruntime-genai 0.11.2's model builder, on the same random Qwen3ForCausalLM checkpoint (real vocabulary,
head_dim >= 16: the builder's GroupQueryAttention needs head_size % 16 == 0 on CPU, so the tiny demo model cannot
run it at all). Measured: max |Δlogit| vs PyTorch over a prefill and 4 teacher-forced decode steps of 4 guard prompts,
prefill and decode-step time (median), size, operators outside standard ONNX, and whether a left-padded batch
gives each row's single-request logits (what batched generation needs).

    pip install --target /tmp/genai-site --no-deps onnxruntime-genai==0.11.2 onnx-ir==1.1.0   # not a guardrt dependency
    GENAI_SITE=/tmp/genai-site python benchmarks/kv_export_choice.py OUT_DIR [hidden head_dim layers]

Writes OUT_DIR/result.json (the committed copy: benchmarks/results/kv_export_choice.json).
"""
import json, os, subprocess, sys, time
from pathlib import Path
import numpy as np, torch, onnxruntime as ort
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config
from guardrt.export.demo_guard_models import write_guard_tokenizer, render_prompt_ids, _write_generation_config
from guardrt.export.guard_synthetic import guard_messages
from guardrt.export.causal_lm_export import _optimum_export, keep_last_positions
from guardrt.export.onnx_export import save_onnx
from guardrt.runtime.preprocess import pad_batch
root = Path(sys.argv[1])
hidden, hd, layers = (int(a) for a in (sys.argv[2:5] if len(sys.argv) >= 5 else (256, 64, 2)))
ck = root / "ckpt"
if not (ck / "config.json").exists():
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=151936, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                      num_attention_heads=hidden // hd * 2 if hidden // hd >= 1 else 2, num_key_value_heads=max(1, hidden // hd),
                      head_dim=hd, tie_word_embeddings=False, rope_theta=1e6, architectures=["Qwen3ForCausalLM"])
    m = AutoModelForCausalLM.from_config(cfg); m.save_pretrained(ck); write_guard_tokenizer(ck); _write_generation_config(ck)
t = time.time(); model = _optimum_export(ck, root / "opt_raw", "text-generation-with-past"); keep_last_positions(model, 3)
save_onnx(model, root / "ours" / "model.onnx"); t_ours = time.time() - t
env = dict(os.environ, PYTHONPATH=os.environ.get("GENAI_SITE", ""))
t = time.time()
if not (root / "genai" / "model.onnx").exists():
    r = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(ck), "-o", str(root / "genai"), "-p", "fp32", "-e", "cpu"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
t_genai = time.time() - t
size = lambda d: sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file()) / 1e6
tok = AutoTokenizer.from_pretrained(ck)
prompts = render_prompt_ids(tok, guard_messages(4, seed=2))
hf = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32).eval()
so = ort.SessionOptions(); so.intra_op_num_threads = 2
S = {"ours": ort.InferenceSession(str(root / "ours" / "model.onnx"), so, providers=["CPUExecutionProvider"]),
     "genai": ort.InferenceSession(str(root / "genai" / "model.onnx"), so, providers=["CPUExecutionProvider"])}
def run(name, ids, mask, past):
    s = S[name]; pn = [i.name for i in s.get_inputs() if i.name.startswith("past")]
    feeds = {"input_ids": ids, "attention_mask": mask, **past}
    if "position_ids" in [i.name for i in s.get_inputs()]:
        feeds["position_ids"] = np.where(mask == 0, 1, np.cumsum(mask, 1) - 1)[:, -ids.shape[1]:]
    out = s.run(None, feeds)
    names = [o.name for o in s.get_outputs()]
    return out[0][:, -1], {n.replace("present", "past_key_values"): v for n, v in zip(names[1:], out[1:])}
def empty(name, b):
    s = S[name]; return {i.name: np.zeros((b, i.shape[1], 0, i.shape[3]), np.float32) for i in s.get_inputs() if i.name.startswith("past")}
res = {"export_seconds": {"ours": t_ours, "genai": t_genai}, "size_mb": {"ours": size(root / "ours"), "genai": size(root / "genai")}}
for name in S:
    diffs, t_pre, t_dec = [], [], []
    for p in prompts:
        with torch.inference_mode():
            ref = hf(input_ids=torch.tensor([p])).logits[0].numpy()  # teacher-forced positions of the prompt itself
        # prefill on p[:-5], then 5 decode steps feeding p's own tokens: compare with HF at those positions
        n0 = len(p) - 5
        ids = np.asarray([p[:n0]]); mask = np.ones_like(ids)
        t = time.perf_counter(); lg, past = run(name, ids, mask, empty(name, 1)); t_pre.append(time.perf_counter() - t)
        diffs.append(float(np.abs(lg[0] - ref[n0 - 1]).max()))
        for k in range(5):
            mask = np.ones((1, n0 + k + 1), np.int64)
            t = time.perf_counter(); lg, past = run(name, np.asarray([[p[n0 + k]]]), mask, past); t_dec.append(time.perf_counter() - t)
            if k < 4:
                diffs.append(float(np.abs(lg[0] - ref[n0 + k]).max()))
    # left-padded batch of 4 (prefill only) vs one at a time
    ids, mask = pad_batch(prompts, 151643, "left")
    lb, _ = run(name, ids, mask, empty(name, 4))
    single = np.stack([run(name, np.asarray([p]), np.ones((1, len(p)), np.int64), empty(name, 1))[0][0] for p in prompts])
    res[name] = {"max_abs_diff_vs_torch": max(diffs), "prefill_ms_median": 1000 * float(np.median(t_pre)),
                 "decode_step_ms_median": 1000 * float(np.median(t_dec)),
                 "left_padded_batch_max_diff_vs_single": float(np.abs(lb - single).max()),
                 "left_padded_batch_argmax_equal": bool((lb.argmax(-1) == single.argmax(-1)).all()),
                 "ops": sorted({f"{n.domain}::{n.op_type}" for n in __import__("onnx").load(str(root / name / "model.onnx"), load_external_data=False).graph.node if n.domain not in ("", "ai.onnx")})}
print(json.dumps(res, indent=1))
(root / "result.json").write_text(json.dumps(res, indent=1))
