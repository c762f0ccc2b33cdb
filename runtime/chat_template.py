"""A model's own chat template, loaded and rendered exactly as transformers 4.57 does it, without transformers.

`ChatTemplate.from_model_dir(dir).render(messages, add_generation_prompt=..., **kwargs)` returns the string of
`AutoTokenizer.from_pretrained(dir).apply_chat_template(messages, tokenize=False, add_generation_prompt=..., **kwargs)`.
What that takes, read from transformers' `tokenization_utils_base.py` and `utils/chat_template_utils.py`:

* **Where the template comes from** (`PreTrainedTokenizerBase.from_pretrained`): `chat_template.jinja` and any
  `additional_chat_templates/*.jinja` in the directory take priority over the `chat_template` entry of
  `tokenizer_config.json` (a string, or a list of `{"name", "template"}`). One template file alone is the template;
  several make a name -> template table, from which `get_chat_template` picks `default` (or `tool_use` when tools are
  passed and no name is given). Files are read as UTF-8 text with universal newlines, as `open(..., encoding="utf-8")`.
* **How it renders** (`_compile_jinja_template`): `jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True,
  lstrip_blocks=True)` with the `loopcontrols` extension and a `{% generation %}` block tag (rendered as its body: the
  tracking it does in transformers only matters for `return_assistant_tokens_mask`), the `tojson` filter replaced by
  `json.dumps(x, ensure_ascii=False, ...)`, and the globals `raise_exception` (raises `TemplateError`) and
  `strftime_now` (`datetime.now().strftime`).
* **What the template sees** (`apply_chat_template` -> `render_jinja_template`): `messages` (the caller's list itself,
  not a copy), `tools`, `documents`, `add_generation_prompt`, then the tokenizer's `special_tokens_map` (bos_token,
  eos_token, ... as strings; only those that are set) overridden by the caller's keyword arguments.

The oracle tests render the same messages with transformers and compare the text (and ids) character for character.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from guardrt.runtime.errors import InputError, ModelFilesError, read_json_file, require

__all__ = ["CHAT_TEMPLATE_DIR", "CHAT_TEMPLATE_FILE", "ChatTemplate", "load_chat_templates", "special_tokens_map"]

CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers.utils.hub.CHAT_TEMPLATE_FILE
CHAT_TEMPLATE_DIR = "additional_chat_templates"  # transformers.utils.hub.CHAT_TEMPLATE_DIR

# PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES: the template variables every tokenizer may define.
SPECIAL_TOKENS_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                             "mask_token", "additional_special_tokens")
# Constructor defaults of tokenizer classes, used when tokenizer_config.json leaves a token out (Qwen2TokenizerFast's
# __init__: unk/eos/pad "<|endoftext|>"). A config entry, even null, overrides them.
_CLASS_DEFAULT_TOKENS = {
    "Qwen2Tokenizer": {"unk_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
}
_CLASS_DEFAULT_TOKENS["Qwen2TokenizerFast"] = _CLASS_DEFAULT_TOKENS["Qwen2Tokenizer"]


def _token_text(value: Any) -> Any:
    """str(AddedToken) for a token entry of tokenizer_config.json (a string or an AddedToken dict)."""
    if isinstance(value, Mapping):
        return value.get("content")
    return value


def special_tokens_map(tokenizer_config: Mapping[str, Any]) -> dict[str, Any]:
    """The tokenizer's `special_tokens_map` (what apply_chat_template passes to the template) from its config.

    Each attribute's value from the config (AddedToken dicts as their content), the tokenizer class's constructor
    default when the config leaves it out, and `extra_special_tokens`; only the truthy ones, as transformers does."""
    values: dict[str, Any] = dict(_CLASS_DEFAULT_TOKENS.get(str(tokenizer_config.get("tokenizer_class")), {}))
    for attr in SPECIAL_TOKENS_ATTRIBUTES:
        if attr in tokenizer_config:
            values[attr] = tokenizer_config[attr]
    extra = tokenizer_config.get("extra_special_tokens") or {}
    if isinstance(extra, Mapping):
        values.update(extra)
    out: dict[str, Any] = {}
    for attr, value in values.items():
        if attr == "additional_special_tokens" and isinstance(value, (list, tuple)):
            value = [_token_text(v) for v in value]
        else:
            value = _token_text(value)
        if value:
            out[attr] = value
    return out


def load_chat_templates(model_dir: str | Path) -> str | dict[str, str] | None:
    """The chat template(s) transformers' from_pretrained would attach to the tokenizer in `model_dir`.

    A string (one template), a name -> template dict (several), or None (the directory defines none)."""
    root = Path(model_dir)
    templates: dict[str, str] = {}
    if (root / CHAT_TEMPLATE_FILE).is_file():
        templates["default"] = (root / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    extra_dir = root / CHAT_TEMPLATE_DIR
    if extra_dir.is_dir():
        for file in sorted(extra_dir.glob("*.jinja")):
            templates[file.name.removesuffix(".jinja")] = file.read_text(encoding="utf-8")
    if len(templates) == 1 and "default" in templates:
        return templates["default"]
    if templates:
        return templates
    config_file = root / "tokenizer_config.json"
    if not config_file.is_file():
        return None
    template = read_json_file(config_file).get("chat_template")
    if isinstance(template, (list, tuple)):
        return {entry["name"]: entry["template"] for entry in template}
    return template


def _select_template(templates: str | dict[str, str] | None, name: str | None, has_tools: bool, where: str) -> str:
    """`PreTrainedTokenizerBase.get_chat_template`: a named template, or `default` (`tool_use` with tools).

    (transformers also takes template text in place of a name; guardrt only reads templates from the model dir.)"""
    if templates is None:
        raise ModelFilesError(f"{where} defines no chat template ({CHAT_TEMPLATE_FILE} or \"chat_template\" in "
                              "tokenizer_config.json)")
    if isinstance(templates, str):
        if name is not None:
            raise ModelFilesError(f"{where} has one unnamed chat template; there is no template {name!r}")
        return templates
    if name is not None and name in templates:
        return templates[name]
    if name is None:
        if has_tools and "tool_use" in templates:
            return templates["tool_use"]
        if "default" in templates:
            return templates["default"]
    raise ModelFilesError(f"{where} has chat templates {sorted(templates)}; choose one by name "
                          f"(asked for {name!r}, and there is no 'default')")


def _compile(source: str):
    """transformers' `_compile_jinja_template`, minus the assistant-mask bookkeeping."""
    require("jinja2", "client")
    import jinja2
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}` renders its body (transformers' AssistantTracker, inactive)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

        def _render_body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # transformers replaces jinja's tojson, which escapes HTML characters
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):  # noqa: A002  (transformers' name)
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ModelFilesError(f"chat template does not compile: {exc.message} (line {exc.lineno})") from None


class ChatTemplate:
    """One compiled chat template plus the special-token variables its tokenizer passes to it.

    `render(messages, ...)` == transformers' `apply_chat_template(messages, tokenize=False, ...)` for one
    conversation. Messages are handed to the template as they are (like transformers); a failure inside the
    template becomes an InputError naming the first message that makes it fail."""

    def __init__(self, source: str, special_tokens: Mapping[str, Any] | None = None, name: str | None = None):
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        self.name = name
        self._template = _compile(source)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, name: str | None = None, tools: bool = False) -> "ChatTemplate":
        """The template transformers would use for `model_dir` (see the module docstring for the precedence)."""
        root = Path(model_dir)
        if not root.is_dir():
            raise ModelFilesError(f"no model directory {root}")
        config_file = root / "tokenizer_config.json"
        config = read_json_file(config_file) if config_file.is_file() else {}
        if not isinstance(config, Mapping):
            raise ModelFilesError(f"{config_file} is not a JSON object")
        source = _select_template(load_chat_templates(root), name, tools, str(root))
        return cls(source, special_tokens_map(config), name=name)

    def variables(self, messages: Any, add_generation_prompt: bool = False, tools: Any = None, documents: Any = None,
                  **kwargs: Any) -> dict[str, Any]:
        """The template variables, in transformers' precedence: special tokens, then the caller's kwargs."""
        return {"messages": messages, "tools": tools, "documents": documents,
                "add_generation_prompt": add_generation_prompt, **self.special_tokens, **kwargs}

    def render(self, messages: Sequence[Any], add_generation_prompt: bool = False, tools: Any = None,
               documents: Any = None, **kwargs: Any) -> str:
        """The rendered text of one conversation; InputError where transformers would raise."""
        if tools is not None and not all(isinstance(tool, Mapping) for tool in tools):
            raise InputError("tools must be JSON schemas (objects)")  # transformers also takes Python functions
        if documents is not None and not all(isinstance(doc, Mapping) for doc in documents):
            raise InputError("documents must be objects with 'title' and 'text'")  # transformers: TypeError
        variables = self.variables(messages, add_generation_prompt, tools, documents, **kwargs)
        try:
            return self._template.render(**variables)
        except Exception as exc:  # TemplateError, UndefinedError, TypeError ... (what transformers would raise)
            raise InputError(self._explain_failure(messages, variables, exc)) from None

    def _explain_failure(self, messages: Any, variables: dict[str, Any], exc: Exception) -> str:
        """One line naming the message whose inclusion makes the template fail (or the template's own message).

        Bisects on prefixes of the conversation (the failing message is the first one a prefix cannot render), so a
        long conversation costs a few renders, only on this error path."""
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"  # one line, whatever the template raised
        if isinstance(messages, (list, tuple)) and self._renders(variables, messages[:0]):
            lo, hi = 0, len(messages)  # invariant: messages[:lo] renders
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self._renders(variables, messages[:mid]):
                    lo = mid
                else:
                    hi = mid
            if hi > lo and not self._renders(variables, messages[:hi]):
                item = messages[hi - 1]
                role = item.get("role") if isinstance(item, Mapping) else None
                role_text = f" ({role!r})" if role is not None else ""
                return f"message {hi - 1}{role_text}: the chat template cannot render it ({reason})"
        return f"the chat template cannot render these messages ({reason})"

    def _renders(self, variables: dict[str, Any], messages: Any) -> bool:
        try:
            self._template.render(**{**variables, "messages": messages})
        except Exception:
            return False
        return True
