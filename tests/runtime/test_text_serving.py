"""Text in without a server: the payload format shared by the CLI and the text-in model, the frontend's per-row
errors, ids identical to the thin client's preprocessing, results identical to what `guardrt classify` prints, and
the backend's `execute` in text mode (a bad row never touches the others)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from guardrt.runtime.errors import InputError
from guardrt.runtime.payloads import example_payload, format_result, parse_payload, payload_field
from guardrt.runtime.specs import get_spec, spec_names


def test_payload_field_comes_from_the_preprocessor():
    assert payload_field(get_spec("intent-safety")) == "turns"
    assert payload_field(get_spec("rejection")) == "text"
    for name in spec_names():
        spec = get_spec(name)
        assert payload_field(spec) in json.loads(example_payload(spec))


def test_parse_payload_errors_are_the_clis():
    spec = get_spec("rejection")
    assert parse_payload('{"text": "hi", "other": 1}', spec) == "hi"
    for line, message in (("nope", "not valid JSON (Expecting value at column 1)"),
                          ("[1]", 'expected an object with a "text" field'),
                          ('{"turns": []}', 'expected an object with a "text" field'),
                          ("[" * 100000, "not valid JSON")):
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_payload(line, spec)


@pytest.fixture(scope="module")
def frontends():
    from guardrt.export.demo_models import cached_demo_export
    from guardrt.runtime.text_serving import TextFrontend

    exports = {name: cached_demo_export(name, "tiny", ("fp32",)) for name in ("rejection", "intent-safety")}
    return {name: TextFrontend(name, export, max_payload_bytes=1000) for name, export in exports.items()}, exports


def test_frontend_ids_equal_the_thin_clients(frontends):
    from guardrt.export.corpus import generate_dialogues, generate_texts
    from guardrt.runtime.preprocess import build_preprocessor
    from guardrt.runtime.text_serving import TextFrontend

    exports = frontends[1]
    for name, payloads in (("rejection", generate_texts(30, seed=4)), ("intent-safety", generate_dialogues(8, seed=4))):
        thin = build_preprocessor(name, exports[name])
        front = TextFrontend(name, exports[name])  # the default limit: the corpus holds dialogues of hundreds of KB
        field = payload_field(get_spec(name))
        for p in payloads:
            assert front.encode(json.dumps({field: p}, ensure_ascii=False).encode("utf-8")) == thin.encode(p)


def test_frontend_refuses_each_bad_payload_in_one_line(frontends):
    front = frontends[0]["rejection"]
    cases = {
        b"not json": "not valid JSON",
        b"[1, 2]": 'expected an object with a "text" field',
        b'{"message": "hi"}': 'expected an object with a "text" field',
        b"   ": "empty payload",
        b"\xff\xfe": "payload is not valid UTF-8 (invalid start byte at byte 0)",
        b'{"text": "' + b"x" * 1000 + b'"}': "payload of 1,012 bytes exceeds the limit of 1,000 bytes",
        b'{"text": "a\\ud800b"}': "cannot tokenize",
        b'{"text": 42}': "text must be a string, got int: 42",
        7: "payload must be bytes",
    }
    for raw, message in cases.items():
        with pytest.raises(InputError) as err:
            front.encode(raw)
        assert message in str(err.value) and "\n" not in str(err.value), (raw, str(err.value))
    dialog = frontends[0]["intent-safety"]
    with pytest.raises(InputError, match="turns must be a list"):
        dialog.encode(b'{"turns": 5}')
    with pytest.raises(InputError, match="turn 0 must be an object"):
        dialog.encode(b'{"turns": ["hello"]}')


def test_results_are_what_classify_prints(frontends):
    from guardrt.runtime.postprocess import postprocess
    from guardrt.runtime.text_serving import error_result

    for name, front in frontends[0].items():
        logits = np.array([0.25, -1.5], dtype=np.float32)
        expected = format_result(postprocess(get_spec(name), logits[None])[0])
        assert front.result(logits).decode("utf-8") == expected
    assert json.loads(error_result("row 2: bad\nthing")) == {"error": "row 2: bad thing"}
    raw = error_result("lone \ud800 surrogate")  # valid UTF-8 bytes whatever the message holds (a JSON escape)
    assert raw.decode("utf-8") == '{"error": "lone \\ud800 surrogate"}'
    assert json.loads(raw)["error"] == "lone \ud800 surrogate"


def test_execute_in_text_mode_keeps_every_bad_row_to_itself(frontends):
    """The backend's `execute` with the text frontend and a stand-in session: rows of one request with bad payloads
    get their own error results, the good rows get what classify prints for them, a request without the input is
    refused alone, and a row that makes the session fail gets its own error."""
    from guardrt.runtime.preprocess import build_preprocessor

    from .fake_triton import Tensor, load_backend

    backend = load_backend("guardrt_text_backend_under_test")
    fronts, exports = frontends
    model = backend.TritonPythonModel()
    model.name, model.pad_id, model.side, model.max_length, model.vocab_size = "rejection-text", 1, "right", 512, 2000
    model.input_names, model.output_name, model.text_input = ["input_ids", "attention_mask"], "logits", True
    model.max_rows, model.max_group_tokens, model.text = 64, 4096, fronts["rejection"]
    model.cost = backend.batch_plan.CostModel(per_call=1.0)
    poison = build_preprocessor("rejection", exports["rejection"]).encode("POISON")

    class Session:  # logits from the ids, so every row's answer is checkable; fails on the poisoned row
        def run(self, _, feeds):
            ids, mask = feeds["input_ids"], feeds["attention_mask"]
            if any(r[m == 1].tolist() == poison for r, m in zip(ids, mask)):
                raise RuntimeError("kernel failed")
            return [np.stack([(ids * mask).sum(axis=1) % 7, mask.sum(axis=1) % 5], axis=1).astype(np.float32)]

    model.session = Session()

    def request(*rows):
        return {"payload": Tensor("payload", np.array([[r] for r in rows], dtype=np.object_))}

    good = [json.dumps({"text": t}).encode() for t in ("Sure, here it is.", "I can't help with that.")]
    responses = model.execute([
        request(good[0], b"not json", good[1], b'{"text": 3}'),
        {"other": Tensor("other", np.array([[b"x"]], dtype=np.object_))},
        request(b"[]", b""),
        request(good[1], json.dumps({"text": "POISON"}).encode()),
    ])
    assert len(responses) == 4

    def results(i):
        assert responses[i].error is None
        tensor = responses[i].output_tensors[0]
        assert tensor.name == "result" and tensor.array.shape[1] == 1
        return [json.loads(v) for v in tensor.array[:, 0]]

    def expected(raw):
        ids = np.array([fronts["rejection"].encode(raw)])
        logits = Session().run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0]
        return json.loads(fronts["rejection"].result(logits))

    first = results(0)
    assert first[0] == expected(good[0]) and first[2] == expected(good[1])
    assert first[1] == {"error": "row 1: not valid JSON (Expecting value at column 1)"}
    assert first[3] == {"error": "row 3: text must be a string, got int: 3"}
    assert responses[1].error.code == "INVALID_ARG" and "payload" in responses[1].error.message
    third = results(2)
    assert third == [{"error": 'row 0: expected an object with a "text" field'},
                     {"error": "row 1: empty payload (expected one JSON object)"}]
    fourth = results(3)
    assert fourth[0] == expected(good[1])
    assert fourth[1] == {"error": "row 1: onnxruntime failed on this request: kernel failed"}
