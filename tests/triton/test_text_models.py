"""The text-in models (`<spec>-text`) against the real tritonserver: curl over HTTP (KServe v2 JSON, BYTES),
tritonclient.http and tritonclient.grpc give the thin client's results on the hidden-case corpora; bad payloads get
a clear per-row error while the other rows of the same request and of the same batch are unaffected."""
from __future__ import annotations

import asyncio
import json
import subprocess

import numpy as np
import pytest

from guardrt.runtime.specs import get_spec

from .conftest import SPECS, TEXT_MAX_PAYLOAD_BYTES

pytestmark = pytest.mark.triton


def _corpus(spec_name: str, preprocessor) -> list[str]:
    """JSON lines from the hidden-case corpora (export/corpus.py): for intent-safety every generated dialogue whose
    input fits in 2,000 tokens, the three longest (trimmed at token precision: the hardest cases, and the slowest on
    a CPU) and four whose context sweeps across the exact budget; for rejection generated texts (truncated,
    special tokens, empty)."""
    from guardrt.export.corpus import generate_budget_edge_dialogues, generate_dialogues, generate_texts

    if spec_name == "rejection":
        return [json.dumps({"text": t}, ensure_ascii=False) for t in generate_texts(48, seed=11)]
    dialogues = generate_dialogues(48, seed=11)
    lengths = [len(preprocessor.encode(d)) for d in dialogues]
    order = sorted(range(len(dialogues)), key=lambda i: lengths[i])
    keep = [dialogues[i] for i in order if lengths[i] <= 2000] + [dialogues[i] for i in order[-3:]]

    def ctx_tokens(turns):
        return len(preprocessor.tokenizer.encode(preprocessor.format_ctx(turns), add_special_tokens=False).ids)

    # contexts one or two tokens either side of the exact budget
    keep += generate_budget_edge_dialogues(dialogues[:1], ctx_tokens, preprocessor.ctx_budget, seed=11, sweep=4)
    return [json.dumps({"turns": d}, ensure_ascii=False) for d in keep]


def _thin(triton_server, spec_name, export, lines) -> list[str]:
    """What `guardrt classify --url` prints for each line: the thin client, one row per request."""
    from guardrt.runtime.payloads import format_result, parse_payload
    from guardrt.runtime.triton_client import TritonClassifier

    spec = get_spec(spec_name)
    with TritonClassifier(triton_server.grpc_url, spec_name, export) as client:
        client.check_ready()
        return [format_result(client.classify_ids([client.preprocessor.encode(parse_payload(line, spec))])[0])
                for line in lines]


def _curl(triton_server, model, rows) -> dict:
    body = {"inputs": [{"name": "payload", "shape": [len(rows), 1], "datatype": "BYTES", "data": rows}]}
    out = subprocess.run(
        ["curl", "-sS", "-X", "POST", f"http://127.0.0.1:{triton_server.http_port}/v2/models/{model}/infer",
         "-H", "Content-Type: application/json", "--data-binary", "@-"],
        input=json.dumps(body), capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def _same_answer(got: str, want: str, tol: float) -> bool:
    g, w = json.loads(got), json.loads(want)
    if set(g) != set(w) or g["label"] != w["label"] or g["label_text"] != w["label_text"]:
        return False
    return all(abs(g[k] - w[k]) <= tol for k, v in w.items() if isinstance(v, float))


@pytest.mark.parametrize("spec_name", SPECS)
def test_curl_http_and_grpc_give_the_thin_clients_answers(spec_name, triton_server, demo_exports):
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as grpcaio
    import tritonclient.http as httpclient

    from guardrt.runtime.preprocess import build_preprocessor

    spec = get_spec(spec_name)
    lines = _corpus(spec_name, build_preprocessor(spec, demo_exports[spec_name]))
    thin = _thin(triton_server, spec_name, demo_exports[spec_name], lines)
    model = f"{spec_name}-text"

    # curl, one row per request: the same row alone on the server, so the very same bytes.
    curl_single = [_curl(triton_server, model, [line])["outputs"][0]["data"][0] for line in lines[:8]]
    assert curl_single == thin[:8]
    # curl, max_batch_size rows per request: batched by the planner, so equal up to batched-vs-single float noise.
    curl_batch = []
    for start in range(0, len(lines), spec.max_batch_size):
        chunk = lines[start:start + spec.max_batch_size]
        reply = _curl(triton_server, model, chunk)
        assert reply["outputs"][0]["name"] == "result" and reply["outputs"][0]["shape"] == [len(chunk), 1], reply
        curl_batch += reply["outputs"][0]["data"]
    tol = spec.atol["fp32"]
    assert [(g, w) for g, w in zip(curl_batch, thin) if not _same_answer(g, w, tol)] == []

    # tritonclient.http, one row per request
    http = httpclient.InferenceServerClient(f"127.0.0.1:{triton_server.http_port}")
    try:
        http_rows = []
        for line in lines:
            inp = httpclient.InferInput("payload", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[line.encode("utf-8")]], dtype=np.object_))
            http_rows.append(http.infer(model, [inp]).as_numpy("result")[0, 0].decode("utf-8"))
    finally:
        http.close()
    assert http_rows == thin

    # tritonclient.grpc (asyncio), every row its own request, all at once: dynamically batched together
    async def concurrent():
        client = grpcaio.InferenceServerClient(triton_server.grpc_url)
        try:
            async def one(line):
                inp = grpcclient.InferInput("payload", [1, 1], "BYTES")
                inp.set_data_from_numpy(np.array([[line.encode("utf-8")]], dtype=np.object_))
                return (await client.infer(model, [inp])).as_numpy("result")[0, 0].decode("utf-8")
            return await asyncio.gather(*(one(line) for line in lines))
        finally:
            await client.close()

    grpc_rows = asyncio.run(concurrent())
    assert all(_same_answer(g, w, tol) for g, w in zip(grpc_rows, thin))
    identical = sum(g == w for g, w in zip(curl_batch, thin)), sum(g == w for g, w in zip(grpc_rows, thin))
    print(f"\n{spec_name}: {len(lines)} corpus rows; curl single-row and tritonclient.http byte-identical to the thin "
          f"client; curl batched requests {identical[0]}/{len(lines)} and concurrent gRPC {identical[1]}/"
          f"{len(lines)} byte-identical, the rest within {tol:g}")


def _bad_rows(spec_name):
    """(payload row, expected error) pairs; each row alone is bad in its own way."""
    field = "turns" if spec_name == "intent-safety" else "text"
    big = json.dumps({field: "x" * (TEXT_MAX_PAYLOAD_BYTES + 10)})
    rows = [
        ("not json at all", "not valid JSON (Expecting value at column 1)"),
        ("[1, 2, 3]", f'expected an object with a "{field}" field'),
        ('{"message": "hello"}', f'expected an object with a "{field}" field'),
        ("", "empty payload"),
        (big, f"payload of {len(big):,} bytes exceeds the limit of {TEXT_MAX_PAYLOAD_BYTES:,} bytes"),
        # a JSON escape that decodes to a lone surrogate, which the tokenizer cannot take (the CLI says the same)
        (json.dumps({field: "a\ud800b"} if field == "text" else {field: [{"role": "user", "content": "a\ud800b"}]}),
         "cannot tokenize"),
    ]
    if field == "text":
        rows.append(('{"text": 42}', "text must be a string, got int: 42"))
    else:
        rows.append(('{"turns": 5}', "turns must be a list"))
    return rows


@pytest.mark.parametrize("spec_name", SPECS)
def test_bad_payloads_get_a_row_error_and_the_other_rows_are_unaffected(spec_name, triton_server, demo_exports):
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as grpcaio
    from tritonclient.utils import InferenceServerException

    field = "turns" if spec_name == "intent-safety" else "text"
    good = [json.dumps({field: v}) for v in (
        ["Sure, here is the recipe you asked for.", "I'm sorry, but I can't help with that."] if field == "text"
        else [[{"role": "user", "content": "Tell me a story."}], [{"role": "user", "content": "Let's stop here."}]])]
    bad = _bad_rows(spec_name)
    thin = _thin(triton_server, spec_name, demo_exports[spec_name], good)
    model = f"{spec_name}-text"

    # one request: good, every bad kind, good
    rows = [good[0]] + [b for b, _ in bad] + [good[1]]
    results = _curl(triton_server, model, rows)["outputs"][0]["data"]
    assert _same_answer(results[0], thin[0], 1e-4) and _same_answer(results[-1], thin[1], 1e-4)
    for r, (_, expected) in enumerate(bad, start=1):
        error = json.loads(results[r])
        assert set(error) == {"error"} and error["error"].startswith(f"row {r}: "), error
        assert expected in error["error"], (expected, error)
        assert "\n" not in error["error"]

    # invalid UTF-8 needs raw bytes (JSON cannot carry them): over gRPC
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        inp = grpcclient.InferInput("payload", [3, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[good[0].encode()], [b"\xff\xfe{"], [good[1].encode()]], dtype=np.object_))
        got = [x.decode("utf-8") for x in client.infer(model, [inp]).as_numpy("result")[:, 0]]
        assert _same_answer(got[0], thin[0], 1e-4) and _same_answer(got[2], thin[1], 1e-4)
        assert json.loads(got[1]) == {"error": "row 1: payload is not valid UTF-8 (invalid start byte at byte 0)"}
        # a request that is wrong as a whole (not BYTES) is refused alone, in one line
        wrong = grpcclient.InferInput("payload", [1, 1], "INT64")
        wrong.set_data_from_numpy(np.array([[7]], dtype=np.int64))
        with pytest.raises(InferenceServerException, match="data-type|datatype|BYTES"):
            client.infer(model, [wrong])
    finally:
        client.close()

    # the same bad rows in concurrent requests, dynamically batched with good ones: only they get errors
    async def concurrent():
        aclient = grpcaio.InferenceServerClient(triton_server.grpc_url)
        try:
            async def one(line):
                inp = grpcclient.InferInput("payload", [1, 1], "BYTES")
                inp.set_data_from_numpy(np.array([[line.encode("utf-8", "surrogatepass")]], dtype=np.object_))
                return (await aclient.infer(model, [inp])).as_numpy("result")[0, 0].decode("utf-8")
            mixed = [good[k % 2] if k % 3 else bad[k // 3 % len(bad)][0] for k in range(24)]
            return mixed, await asyncio.gather(*(one(line) for line in mixed))
        finally:
            await aclient.close()

    mixed, outs = asyncio.run(concurrent())
    for line, out in zip(mixed, outs):
        if line in good:
            assert _same_answer(out, thin[good.index(line)], 1e-4)
        else:
            assert json.loads(out)["error"].startswith("row 0: ")
