"""Chat templates: loaded and rendered as transformers does (precedence, environment, variables), bad input against
the oracle, and the `guardrt preprocess --spec qwen3guard-gen` contract."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from guardrt.export.reference import ChatTemplateReference
from guardrt.export.tokenizers import QWEN3GUARD_GEN_TEMPLATE, copy_qwen3guard_gen_tokenizer
from guardrt.runtime.chat_template import ChatTemplate, load_chat_templates, special_tokens_map
from guardrt.runtime.errors import InputError, ModelFilesError
from guardrt.runtime.preprocess import build_preprocessor

USER = {"role": "user", "content": "How can I make a bomb?"}


@pytest.fixture(scope="module")
def guard_dir(tmp_path_factory):
    return copy_qwen3guard_gen_tokenizer(tmp_path_factory.mktemp("guard"))


@pytest.fixture(scope="module")
def pre(guard_dir):
    return build_preprocessor("qwen3guard-gen", guard_dir)


@pytest.fixture(scope="module")
def reference(guard_dir):
    return ChatTemplateReference(guard_dir)


def _tokenizer_dir(tmp_path, qwen_tokenizer_dir, config_template=None, jinja=None, extra=None):
    """A copy of the Qwen3 tokenizer with the given template sources."""
    shutil.copyfile(qwen_tokenizer_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    config = json.loads((qwen_tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    if config_template is not None:
        config["chat_template"] = config_template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    if jinja is not None:
        (tmp_path / "chat_template.jinja").write_bytes(jinja.encode("utf-8"))
    for name, text in (extra or {}).items():
        (tmp_path / "additional_chat_templates").mkdir(exist_ok=True)
        (tmp_path / "additional_chat_templates" / f"{name}.jinja").write_text(text, encoding="utf-8")
    return tmp_path


# -- where the template comes from: transformers 4.57's precedence ------------------------------------------------
@pytest.mark.parametrize(
    "sources",
    [
        {"config_template": "config {{ messages[0].content }}"},
        {"jinja": "jinja {{ messages[0].content }}"},
        {"config_template": "config {{ messages[0].content }}", "jinja": "jinja wins {{ messages[0].content }}"},
        {"jinja": "crlf\r\nline {{ messages[0].content }}\r\n"},  # read with universal newlines, as open() does
        {"config_template": [{"name": "default", "template": "named default"}, {"name": "rag", "template": "rag"}]},
        {"jinja": "file default", "extra": {"tool_use": "tool template"}},
        {"config_template": "ignored", "extra": {"default": "extra default", "other": "x"}},
    ],
    ids=["config", "jinja-file", "file-over-config", "crlf-file", "named-list", "file+extra", "extra-only"],
)
def test_template_source_precedence_matches_transformers(tmp_path, qwen_tokenizer_dir, sources):
    from transformers import AutoTokenizer

    model_dir = _tokenizer_dir(tmp_path, qwen_tokenizer_dir, **sources)
    expected = AutoTokenizer.from_pretrained(str(model_dir)).chat_template
    assert load_chat_templates(model_dir) == expected
    ours = ChatTemplate.from_model_dir(model_dir)
    reference = ChatTemplateReference(model_dir)
    assert ours.render([USER]) == reference.text([USER])


def test_named_template_and_tool_use(tmp_path, qwen_tokenizer_dir):
    model_dir = _tokenizer_dir(tmp_path, qwen_tokenizer_dir, jinja="plain", extra={"tool_use": "tools: {{ tools|length }}"})
    reference = ChatTemplateReference(model_dir)
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert ChatTemplate.from_model_dir(model_dir, tools=True).render([USER], tools=tools) == \
        reference.text([USER], tools=tools) == "tools: 1"
    assert ChatTemplate.from_model_dir(model_dir, name="tool_use").source == "tools: {{ tools|length }}"
    with pytest.raises(ModelFilesError, match="no-such"):
        ChatTemplate.from_model_dir(model_dir, name="no-such")


def test_no_template_is_a_model_files_error(tmp_path, qwen_tokenizer_dir):
    model_dir = _tokenizer_dir(tmp_path, qwen_tokenizer_dir)
    with pytest.raises(ModelFilesError, match="defines no chat template"):
        build_preprocessor("qwen3guard-gen", model_dir)


def test_template_syntax_error_is_one_line(tmp_path, qwen_tokenizer_dir):
    model_dir = _tokenizer_dir(tmp_path, qwen_tokenizer_dir, jinja="{% if %}")
    with pytest.raises(ModelFilesError, match="does not compile"):
        ChatTemplate.from_model_dir(model_dir)


# -- the environment and variables transformers gives a template --------------------------------------------------
ENVIRONMENT_TEMPLATE = (
    "{%- for m in messages -%}\n"
    "    {%- if m.role == 'stop' %}{% break %}{% endif -%}\n"  # loopcontrols
    "    {% generation %}[{{ m.role }}] {{ m.content | tojson }}{% endgeneration %}\n"
    "{%- endfor %}\n"
    "    {% if add_generation_prompt %}\n"  # lstrip_blocks removes the indent, trim_blocks the newline
    "gen\n"
    "    {% endif %}\n"
    "  {{ eos_token }}|{{ pad_token }}|{{ bos_token }}|{{ unk_token }}|{{ additional_special_tokens | length }}\n"
    "{{ (strftime_now('%Y') | int) > 2000 }} {{ add_generation_prompt }} {{ custom | default('none') }}\n"
    "{% if messages | length > 3 %}{{ raise_exception('too many: ' ~ messages | length) }}{% endif %}"
)


def test_environment_matches_transformers(tmp_path, qwen_tokenizer_dir):
    """trim/lstrip blocks, loopcontrols, {% generation %}, tojson without HTML escaping, the special-token variables,
    strftime_now, raise_exception, and caller kwargs."""
    model_dir = _tokenizer_dir(tmp_path, qwen_tokenizer_dir, jinja=ENVIRONMENT_TEMPLATE)
    ours, reference = ChatTemplate.from_model_dir(model_dir), ChatTemplateReference(model_dir)
    messages = [{"role": "user", "content": "<b>&'\"ü😀"}, {"role": "assistant", "content": {"k": [1, None]}},
                {"role": "stop"}]
    for kwargs in ({}, {"add_generation_prompt": True, "custom": 7}, {"eos_token": "overridden"}):
        assert ours.render(messages, **kwargs) == reference.text(messages, **kwargs)
    too_many = messages[:2] * 2
    with pytest.raises(Exception, match="too many: 4"):
        reference.text(too_many)
    with pytest.raises(InputError, match="too many: 4"):
        ours.render(too_many)


def test_special_tokens_map_matches_transformers(qwen_tokenizer_dir, roberta_tokenizer_dir):
    from transformers import AutoTokenizer

    for tok_dir in (qwen_tokenizer_dir, roberta_tokenizer_dir):
        config = json.loads((tok_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        assert special_tokens_map(config) == AutoTokenizer.from_pretrained(str(tok_dir)).special_tokens_map


def test_repo_copy_of_the_published_template():
    """export/data holds the published template byte for byte (guard-models.md §1.1), used by demo checkpoints."""
    from pathlib import Path

    shared = Path("/work/shared/fixtures/qwen3guard-gen/chat_template.jinja")
    text = QWEN3GUARD_GEN_TEMPLATE.read_text(encoding="utf-8")
    assert text.startswith('{%- if messages|length > 0 -%}') and "<BEGIN CONVERSATION>" in text
    if shared.is_file():
        assert text == shared.read_text(encoding="utf-8")


# -- bad input, each against the oracle ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "messages, error",
    [
        ([], "messages is empty"),  # transformers: IndexError in apply_chat_template
        ([{"role": "user"}], r"message 0 \('user'\).*content"),  # UndefinedError
        ([USER, {"role": "assistant", "content": None}], r"message 1 \('assistant'\).*NoneType"),  # TypeError
        ([USER, {"role": "assistant", "content": 3}], r"message 1 \('assistant'\).*int"),
        ([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], r"message 0 \('user'\).*list"),
        ([["a list first"]], "message 0 must be an object"),  # transformers: a batch, then a tokenizer TypeError
    ],
    ids=["empty", "no-content", "none-content", "int-content", "list-content", "list-first"],
)
def test_bad_input_where_the_reference_fails(pre, reference, messages, error):
    with pytest.raises(Exception):
        reference.input_ids(messages)
    with pytest.raises(InputError, match=error):
        pre.encode(messages)


@pytest.mark.parametrize(
    "messages",
    [
        [USER, "a bare string"],  # skipped by the template
        [USER, 5, None],
        ["a bare string first"],  # the template sees no role: response moderation of an empty conversation
        [{"content": "no role"}],  # no role: skipped; the last role is not "user" -> response moderation
        [USER, {"role": "tool", "content": 42}],  # a role the template ignores: its content is never printed
        [USER, {"role": "User", "content": "wrong case"}],  # roles are compared exactly
        [{"role": "system", "content": "only a system message"}],
        [USER, {"role": "assistant", "content": ""}],  # empty content is kept as is
    ],
    ids=["string-message", "number-and-null", "string-first", "no-role", "ignored-role", "role-case", "system-only",
         "empty-content"],
)
def test_odd_input_where_the_reference_answers(pre, reference, messages):
    assert pre.encode(messages) == reference.input_ids(messages)


@pytest.mark.parametrize("bad", ["a string", {"role": "user", "content": "x"}, 5, None],
                         ids=["string", "object", "number", "null"])
def test_messages_not_a_list(pre, bad):
    with pytest.raises(InputError, match="messages must be a list"):
        pre.encode(bad)


def test_over_max_length_is_refused(pre, reference):
    messages = [{"role": "user", "content": "word " * 40000}]
    assert len(reference.input_ids(messages)) > 32768
    with pytest.raises(InputError, match=r"the conversation is \d+ tokens, over qwen3guard-gen's maximum of 32768"):
        pre.encode(messages)


def test_task_description_refused(guard_dir):
    with pytest.raises(InputError, match="takes no task description"):
        build_preprocessor("qwen3guard-gen", guard_dir, task_description="x")


# -- the CLI contract: `guardrt preprocess --spec qwen3guard-gen --tokenizer DIR < in.jsonl` -------------------------
@pytest.mark.parametrize("layout", ["tokenizer_config", "file"])
def test_cli_contract(tmp_path, reference, layout):
    tok_dir = copy_qwen3guard_gen_tokenizer(tmp_path / layout, layout)
    conversations = [[USER], [USER, {"role": "assistant", "content": "I can't help with that. 😀 <|im_end|>"}],
                     [{"role": "system", "content": "系统"}, {"role": "user", "content": "<think>x</think>"}]]
    stdin = "".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in conversations)
    proc = subprocess.run([sys.executable, "-m", "guardrt", "preprocess", "--spec", "qwen3guard-gen", "--tokenizer",
                           str(tok_dir)], input=stdin, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert out == [{"input_ids": reference.input_ids(m)} for m in conversations]


@pytest.mark.parametrize(
    "line, error",
    [
        ('{"messages": []}', "line 2: messages is empty"),
        ('{"messages": [{"role": "user"}]}', r"line 2: message 0 \('user'\)"),
        ('{"turns": [{"role": "user", "content": "x"}]}', 'line 2: expected an object with a "messages" field'),
        ('{"messages": "text"}', "line 2: messages must be a list"),
    ],
    ids=["empty", "no-content", "wrong-field", "not-a-list"],
)
def test_cli_bad_line_is_one_line_naming_it(guard_dir, line, error):
    stdin = json.dumps({"messages": [USER]}) + "\n" + line + "\n"
    proc = subprocess.run([sys.executable, "-m", "guardrt", "preprocess", "--spec", "qwen3guard-gen", "--tokenizer",
                           str(guard_dir)], input=stdin, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stdout.splitlines()) == 1  # the good line before it was written
    import re

    assert re.search(error, proc.stderr) and "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
