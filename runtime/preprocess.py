"""Exact preprocessing: turns / texts -> the token ids the seed cards' reference code produces.

Only `tokenizers` is used (no transformers; chat templates are rendered with jinja2). Three preprocessor kinds:

* `DialogueContextPreprocessor` (intent-safety). The card's reference (`format_ctx` + `build_model_text` + a final
  left-truncating encode) tokenizes the whole context, keeps the last `budget` ids, decodes them, and re-encodes
  prefix + decoded text. We produce the same ids while doing less work:

  1. The context text is cut into *pieces* at positions where the Qwen2 pre-tokenizer is guaranteed to split and
     where NFC normalisation cannot reach across (right after a "\\n" followed by non-whitespace; inside very long
     lines, before a space that follows an ASCII letter). Encoding the pieces separately therefore gives exactly
     the ids of encoding the whole text, so piece encodings are cached (a chat that grows one turn per request
     re-encodes only the new turn) and only as many pieces as the budget needs are encoded, from the end.
  2. Only the piece that the left trim cuts through is decoded and re-encoded (that is where the reference's
     decode/re-encode can change ids: a multi-byte character cut in half becomes U+FFFD, a word cut in half is
     re-tokenized); the pieces after it keep their ids, because the cut positions are forced boundaries in the
     re-encoded text too.

  The tokenizer's normaliser, pre-tokenizer and added tokens are checked when the preprocessor is built; if the
  tokenizer is not of the Qwen2 byte-level kind these guarantees were derived for, the preprocessor runs the
  reference algorithm step by step instead (same ids, no speed-up). The oracle tests compare both paths with a
  transformers implementation of the card's code on a generated corpus of hard cases.

* `SingleTextPreprocessor` (rejection): one text, the tokenizer's own special tokens, right truncation at 512, as
  the card's text-classification pipeline does.

* `ChatTemplatePreprocessor` (qwen3guard-gen, and the Qwen3-template guards after it): a list of {"role", "content"}
  messages through the model's own chat template (`runtime.chat_template`, rendered as transformers renders it),
  then encoded as the card's `tokenizer([text])` does. Never truncated: over the spec's max_length is an InputError.
  A spec's `message_builder` option first turns its request object into messages (flexguard: the card's system
  prompt and `[User]:`/`[Assistant]:` message, runtime/flexguard_prompt.py).
"""
from __future__ import annotations

import json
import re
from array import array
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from guardrt.runtime.chat_template import ChatTemplate
from guardrt.runtime.errors import InputError, ModelFilesError
from guardrt.runtime.specs import ModelSpec, get_spec

__all__ = [
    "ChatTemplatePreprocessor",
    "DialogueContextPreprocessor",
    "SingleTextPreprocessor",
    "build_preprocessor",
    "default_task_description",
    "payload_field",
    "load_tokenizer",
    "pad_batch",
]

# The Qwen2 pre-tokenizer split pattern the piece boundaries below were derived for.
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# A "\n" followed by a character that is whitespace by neither Python's nor Unicode's definition.
# str.isspace() is a superset of Unicode White_Space (it adds \x1c-\x1f), so `\S` here is conservative.
_NEWLINE_CUT = re.compile(r"\n(?=\S)")
# Inside a very long line: before a space that follows an ASCII letter (a letter run always ends a pre-token).
_SPACE_CUT = re.compile(r"(?<=[A-Za-z]) ")
_MIN_PIECE_CHARS = 384  # merge lines into pieces of about this size: few encode calls, a small re-encoded head
_LONG_PIECE_CHARS = 1024
_SPACE_CUT_STRIDE = 512

_DEFAULT_TASK_FILE = Path(__file__).with_name("data") / "intent_safety_task_description.txt"


def default_task_description() -> str:
    """The card's task description (`train_prompt`), as shipped in runtime/data; replace it with --task-description."""
    return _DEFAULT_TASK_FILE.read_text(encoding="utf-8")


def load_tokenizer(tokenizer_dir: str | Path):
    """A `tokenizers.Tokenizer` from `tokenizer_dir/tokenizer.json`, with a clear error when it is missing/corrupt."""
    from tokenizers import Tokenizer

    path = Path(tokenizer_dir)
    file = path / "tokenizer.json" if path.is_dir() or not path.suffix else path
    if not file.is_file():
        raise ModelFilesError(f"no tokenizer.json in {path} (pass --tokenizer DIR with a Hugging Face fast tokenizer)")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise ModelFilesError(f"cannot load tokenizer {file}: {exc}") from None
    # The reference encodes without padding/truncation from the file; we apply our own.
    tok.no_padding()
    tok.no_truncation()
    return tok


def _supports_piecewise(tokenizer) -> bool:
    """True when the tokenizer is Qwen2-style byte-level BPE, for which the piece boundaries are provably exact."""
    try:
        spec = json.loads(tokenizer.to_str())
    except Exception:
        return False
    if spec.get("normalizer") not in (None, {"type": "NFC"}):
        return False
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") != "Sequence" or len(pre.get("pretokenizers", [])) != 2:
        return False
    split, byte_level = pre["pretokenizers"]
    if split.get("type") != "Split" or split.get("pattern", {}).get("Regex") != QWEN2_SPLIT_PATTERN:
        return False
    if split.get("behavior") != "Isolated" or split.get("invert"):
        return False
    if byte_level.get("type") != "ByteLevel" or byte_level.get("use_regex") or byte_level.get("add_prefix_space"):
        return False
    if (spec.get("decoder") or {}).get("type") != "ByteLevel":
        return False
    for added in spec.get("added_tokens", []):
        content = added.get("content", "")
        # An added token must not be able to span a cut (contain "\n" or " ") or merge with its neighbours.
        if "\n" in content or " " in content or added.get("lstrip") or added.get("rstrip") or added.get("single_word"):
            return False
        if content[-1:].isascii() and content[-1:].isalpha():
            return False
    return True


class _LRU:
    """LRU map from turn text to its token ids (compact arrays), bounded by the total number of ids held."""

    def __init__(self, max_ids: int):
        self.max_ids = max_ids
        self._held = 0
        self._data: OrderedDict[str, array] = OrderedDict()

    def get(self, key: str):
        ids = self._data.get(key)
        if ids is not None:
            self._data.move_to_end(key)
        return ids

    def put(self, key: str, ids: array) -> None:
        old = self._data.pop(key, None)
        if old is not None:
            self._held -= len(old)
        self._data[key] = ids
        self._held += len(ids)
        while self._held > self.max_ids and len(self._data) > 1:
            _, dropped = self._data.popitem(last=False)
            self._held -= len(dropped)

    def __len__(self) -> int:
        return len(self._data)


class DialogueContextPreprocessor:
    """intent-safety input: task description + last `max_turns` dialogue turns, ctx trimmed from the left.

    `encode(turns)` returns exactly the ids of the card's
    `tokenizer(build_model_text(format_ctx(turns)), truncation=True, max_length=4096)` with padding and truncation
    on the left. `turns` must be a list (or tuple) of mappings; anything else raises InputError.
    """

    def __init__(
        self,
        tokenizer,
        spec: ModelSpec,
        task_description: str | None = None,
        cache_max_ids: int = 2_000_000,
        piecewise: bool | None = None,
    ):
        opts = spec.preprocessor_options
        self.spec = spec
        self.tokenizer = tokenizer
        self.max_length = spec.max_length
        self.max_turns = int(opts["max_turns"])
        self.drop_trailing_assistant = bool(opts["drop_trailing_assistant"])
        self.reserve = int(opts["ctx_reserve_tokens"])
        self.role_map = dict(opts["role_map"])
        self.unknown_role = str(opts["unknown_role"])
        # The card reads the task file and strips it.
        task = default_task_description() if task_description is None else task_description
        self.task_description = task.strip()
        self.prefix = str(opts["prefix_template"]).format(task_description=self.task_description)
        self.prefix_ids = self._encode(self.prefix)
        self.ctx_budget = max(0, self.max_length - len(self.prefix_ids) - self.reserve)
        self._empty_ctx_ids = tuple(self._truncate(self._encode(self.prefix.strip())))
        self.piecewise = _supports_piecewise(tokenizer) if piecewise is None else piecewise
        # Recent turns and their pieces (~16 MB of ids each at most); a growing chat re-encodes only its new turn.
        self._segment_cache = _LRU(cache_max_ids)
        self._piece_cache = _LRU(cache_max_ids)

    # -- the card's format_ctx, with input validation ------------------------------------------------------------
    def format_turns(self, turns: Any) -> list[str]:
        """The card's `format_ctx` as a list of "[role] text" entries (joined by blank lines it is the ctx text)."""
        if isinstance(turns, (str, bytes, Mapping)) or not isinstance(turns, Sequence):
            raise InputError(f"turns must be a list of {{role, content}} objects, got {type(turns).__name__}")
        normalized: list[tuple[str, str]] = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, Mapping):
                raise InputError(f"turn {i} must be an object with role and content, got {type(turn).__name__}: {turn!r:.60}")
            role = self.role_map.get(str(turn.get("role", "")).lower(), self.unknown_role)
            text = str(turn.get("content", "")).strip()
            if text:
                normalized.append((role, text))
        if self.drop_trailing_assistant and normalized and normalized[-1][0] == "assistant":
            normalized.pop()
        return [f"[{role}] {text}" for role, text in normalized[-self.max_turns:]]

    def format_ctx(self, turns: Any) -> str:
        return "\n\n".join(self.format_turns(turns)).strip()

    # -- encoding ------------------------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _decode(self, ids: list[int]) -> str:
        # transformers' decode with skip_special_tokens=False and clean_up_tokenization_spaces=False (Qwen3's config).
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _truncate(self, ids: list[int]) -> list[int]:
        return ids[-self.max_length:] if len(ids) > self.max_length else ids

    def encode(self, turns: Any) -> list[int]:
        """Token ids for one dialogue (see class docstring)."""
        if self.piecewise:
            return self._encode_piecewise(self.format_turns(turns))
        return self.encode_reference_steps(self.format_ctx(turns))

    def encode_batch(self, dialogues: Sequence[Any]) -> list[list[int]]:
        return [self.encode(turns) for turns in dialogues]

    def encode_reference_steps(self, ctx_text: str) -> list[int]:
        """The card's build_model_text + final encode, step by step (used when piecewise encoding is not proven)."""
        ctx_ids = self._encode(ctx_text.strip())
        if len(ctx_ids) > self.ctx_budget:
            ctx_ids = ctx_ids[-self.ctx_budget:] if self.ctx_budget > 0 else []
        text = self._decode(ctx_ids).strip()
        return self._truncate(self._encode(f"{self.prefix}{text}".strip()))

    @staticmethod
    def split_pieces(text: str, min_chars: int = _MIN_PIECE_CHARS) -> list[str]:
        """Cut `text` at forced pre-token boundaries into pieces of at least ~`min_chars` characters (the last may
        be shorter); "".join(pieces) == text. Depends only on `text`, so the same turn always gives the same pieces
        (and cache keys), wherever it sits in the context."""
        pieces: list[str] = []
        start = 0
        for m in _NEWLINE_CUT.finditer(text):
            cut = m.end()
            if cut - start >= min_chars:
                pieces.extend(DialogueContextPreprocessor._split_long(text[start:cut]))
                start = cut
        pieces.extend(DialogueContextPreprocessor._split_long(text[start:]))
        return [p for p in pieces if p]

    @staticmethod
    def _split_long(line: str) -> list[str]:
        if len(line) <= _LONG_PIECE_CHARS:
            return [line]
        out, start = [], 0
        while len(line) - start > _LONG_PIECE_CHARS:
            m = _SPACE_CUT.search(line, start + _SPACE_CUT_STRIDE)
            if m is None:
                break
            out.append(line[start:m.start()])
            start = m.start()
        out.append(line[start:])
        return out

    def _piece_units(self, pieces: list[str], needed: int) -> list[tuple[str, array]]:
        """(piece, ids) from the last piece backwards until more than `needed` ids (all pieces if needed < 0 is
        never reached: pass a large number). Cached pieces are reused; the rest are encoded in few calls, roughly
        as many characters as ids are still needed (usually >= 1 char per token, so pieces the trim will drop are
        seldom encoded)."""
        units: list[tuple[str, array]] = []
        total = 0
        i = len(pieces) - 1
        while i >= 0 and total <= needed:
            ids = self._piece_cache.get(pieces[i])
            if ids is not None:
                units.append((pieces[i], ids))
                total += len(ids)
                i -= 1
                continue
            batch, chars = [], 0
            while i >= 0 and (not batch or chars <= needed - total) and self._piece_cache.get(pieces[i]) is None:
                batch.append(pieces[i])
                chars += len(pieces[i])
                i -= 1
            for text, enc in zip(batch, self.tokenizer.encode_batch_fast(batch, add_special_tokens=False)):
                ids = array("l", enc.ids)
                self._piece_cache.put(text, ids)
                units.append((text, ids))
                total += len(ids)
        units.reverse()
        return units

    def _encode_short_segments(self, segments: list[str], needed: int) -> None:
        """Encode the trailing uncached short turns in one tokenizer call (per-call overhead dominates short chats).

        Stops at the first long turn (those go piece by piece) or once the characters reach `needed`."""
        batch, chars = [], 0
        for seg in reversed(segments):
            if chars > needed or len(seg) > _MIN_PIECE_CHARS:
                break
            if self._segment_cache.get(seg) is None:
                batch.append(seg)
            chars += len(seg)
        if len(batch) > 1:
            for seg, enc in zip(batch, self.tokenizer.encode_batch_fast(batch, add_special_tokens=False)):
                self._segment_cache.put(seg, array("l", enc.ids))

    def _tail_units(self, segments: list[str], needed: int) -> list[tuple[str, array]]:
        """(text, ids) units covering the end of the context, in order, until more than `needed` ids are gathered.

        A unit is a whole turn segment when its ids are cached (the common case for a growing chat), otherwise a
        piece of one; only the pieces the budget needs are encoded."""
        self._encode_short_segments(segments, needed)
        units: list[tuple[str, array]] = []
        total = 0
        for seg in reversed(segments):
            if total > needed:
                break
            ids = self._segment_cache.get(seg)
            if ids is None:
                pieces = self.split_pieces(seg)
                seg_units = self._piece_units(pieces, needed - total)
                if len(seg_units) < len(pieces):  # only the tail of this turn is needed
                    units.extend(reversed(seg_units))
                    total += sum(len(u[1]) for u in seg_units)
                    continue
                ids = array("l")
                for _, piece_ids in seg_units:
                    ids.extend(piece_ids)
                self._segment_cache.put(seg, ids)
            units.append((seg, ids))
            total += len(ids)
        units.reverse()
        return units

    def _encode_piecewise(self, turns: list[str]) -> list[int]:
        if not turns:
            return list(self._empty_ctx_ids)
        # Turn segments: a forced boundary sits before every "[role]" that follows the blank-line separator.
        segments = [t + "\n\n" for t in turns[:-1]] + [turns[-1]]
        budget = self.ctx_budget
        units = self._tail_units(segments, budget)
        total = sum(len(ids) for _, ids in units)
        out = list(self.prefix_ids)
        if total <= budget:  # nothing trimmed: decode/re-encode is the identity on ids (NFC is idempotent)
            for _, ids in units:
                out.extend(ids)
            return self._truncate(out)
        if budget == 0:  # the card keeps no ctx at all: `ctx_ids[-0:] if ctx_budget > 0 else []`
            return list(self._empty_ctx_ids)
        # Left trim: drop `excess` ids from the front of the gathered units.
        excess = total - budget
        first = 0
        while excess >= len(units[first][1]):
            excess -= len(units[first][1])
            first += 1
        pieces = self.split_pieces(units[first][0])
        if len(pieces) > 1:  # a whole cached turn: cut it at piece level so only one piece is re-encoded
            units[first:first + 1] = self._piece_units(pieces, len(units[first][1]) + 1)
            while excess >= len(units[first][1]):
                excess -= len(units[first][1])
                first += 1
        # The unit the trim cuts through is decoded and re-encoded, exactly as the reference does to it; it
        # absorbs following units while its stripped text is empty (the reference strips across them).
        head = self._decode(units[first][1][excess:].tolist())
        k = first + 1
        while not head.strip() and k < len(units):
            head += units[k][0]
            k += 1
        head = head.strip() if k == len(units) else head.lstrip()
        if not head and k == len(units):
            return list(self._empty_ctx_ids)
        if head:
            out.extend(self._encode(head))
        for _, ids in units[k:]:
            out.extend(ids)
        return self._truncate(out)

    @property
    def cache_entries(self) -> int:
        return len(self._segment_cache) + len(self._piece_cache)


class SingleTextPreprocessor:
    """rejection input: one text -> ids with the tokenizer's special tokens, truncated on the right at max_length.

    Same ids as the card's `pipeline("text-classification", truncation=True, max_length=512)`. The text must be a
    string (the pipeline rejects anything else); otherwise InputError.
    """

    def __init__(self, tokenizer, spec: ModelSpec):
        self.spec = spec
        self.tokenizer = tokenizer
        self.max_length = spec.max_length
        tokenizer.enable_truncation(
            max_length=spec.max_length, strategy="longest_first", direction=spec.truncation_side
        )

    def encode(self, text: Any) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"text must be a string, got {type(text).__name__}: {text!r:.60}")
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def encode_batch(self, texts: Sequence[Any]) -> list[list[int]]:
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"text {i} must be a string, got {type(text).__name__}: {text!r:.60}")
        return [enc.ids for enc in self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=True)]




class ChatTemplatePreprocessor:
    """chat_template input: messages -> the model's chat template -> ids.

    `encode(messages)` returns exactly the card's
    `tokenizer([tokenizer.apply_chat_template(messages, tokenize=False, **options)])["input_ids"][0]`: the template
    is rendered by `runtime.chat_template.ChatTemplate` (transformers' environment, variables and precedence) and
    the text is encoded with the tokenizer's default special-token handling (`add_special_tokens=True`; Qwen3's
    post-processor adds nothing). The spec's options give `add_generation_prompt` and extra template variables.

    Faster with the same ids: for a Qwen2-style tokenizer whose post-processor adds no tokens, the rendered text is
    cut at the forced pre-token boundaries `DialogueContextPreprocessor` uses (after a newline followed by
    non-whitespace; inside very long lines, before a space after an ASCII letter); the ids of the pieces
    concatenate to the ids of the whole, so each piece's ids are cached: the template's fixed instructions (~300
    tokens for Qwen3Guard-Gen) and a conversation's earlier turns are encoded once.

    Bad input: `messages` must be a non-empty list (transformers crashes on an empty one with IndexError, and takes
    a list whose first item is a list as a batch of conversations); a message the template cannot render (missing
    or non-string content, ...) raises InputError naming it; messages that the template skips (an object without a
    role or with a role it ignores, a string / number / null message) are skipped exactly as the reference skips
    them. An input over the spec's
    max_length raises InputError: the reference would not truncate it, and the model is not served past it.
    """

    def __init__(self, tokenizer, spec: ModelSpec, template: ChatTemplate, cache_max_ids: int = 2_000_000,
                 piecewise: bool | None = None):
        opts = spec.input.options
        self.spec = spec
        self.message_builder = message_builder(opts.get("message_builder"))
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = spec.input.max_length
        self.add_generation_prompt = bool(opts.get("add_generation_prompt", False))
        self.template_kwargs = dict(opts.get("template_kwargs") or {})
        if piecewise is None:
            piecewise = _supports_piecewise(tokenizer) and tokenizer.num_special_tokens_to_add(False) == 0
        self.piecewise = piecewise
        self._piece_cache = _LRU(cache_max_ids)

    @staticmethod
    def check_messages(messages: Any) -> None:
        """InputError for what the reference cannot take as one conversation (see the class docstring)."""
        if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
            raise InputError(f"messages must be a list of {{role, content}} objects, got {type(messages).__name__}")
        if not messages:
            raise InputError("messages is empty: at least one {role, content} message is needed")
        if isinstance(messages[0], (list, tuple)):
            raise InputError(f"message 0 must be an object with role and content, got {type(messages[0]).__name__}")

    def render(self, messages: Any, **template_kwargs: Any) -> str:
        """The chat-template text of one conversation (the spec's template variables, then `template_kwargs`)."""
        self.check_messages(messages)
        kwargs = {**self.template_kwargs, **template_kwargs}
        add_generation_prompt = kwargs.pop("add_generation_prompt", self.add_generation_prompt)
        return self.template.render(messages, add_generation_prompt=add_generation_prompt, **kwargs)

    @staticmethod
    def split_lines(text: str) -> list[str]:
        """`text` cut at every forced pre-token boundary (long lines further cut); "".join(...) == text."""
        pieces: list[str] = []
        start = 0
        for m in _NEWLINE_CUT.finditer(text):
            pieces.extend(DialogueContextPreprocessor._split_long(text[start:m.end()]))
            start = m.end()
        pieces.extend(DialogueContextPreprocessor._split_long(text[start:]))
        return [p for p in pieces if p]

    def _encode_piecewise(self, text: str) -> list[int]:
        pieces = self.split_lines(text)
        known: dict[str, array] = {}
        missing: list[str] = []
        for piece in pieces:
            if piece not in known:
                ids = self._piece_cache.get(piece)
                if ids is None:
                    missing.append(piece)
                    ids = array("l")  # placeholder, filled below
                known[piece] = ids
        if missing:
            for piece, enc in zip(missing, self.tokenizer.encode_batch_fast(missing, add_special_tokens=False)):
                ids = array("l", enc.ids)
                known[piece] = ids
                self._piece_cache.put(piece, ids)
        out = array("l")
        for piece in pieces:
            out.extend(known[piece])
        return out.tolist()

    def encode_text(self, text: str) -> list[int]:
        """Ids of rendered text (the card's `tokenizer([text])`), InputError over max_length."""
        try:
            if self.piecewise:
                ids = self._encode_piecewise(text)
            else:
                ids = self.tokenizer.encode(text, add_special_tokens=True).ids
        except Exception as exc:  # e.g. lone surrogates the Rust tokenizer cannot take
            raise InputError(f"cannot tokenize the rendered conversation ({exc})") from None
        if len(ids) > self.max_length:
            raise InputError(f"the conversation is {len(ids)} tokens, over {self.spec.name}'s maximum of "
                             f"{self.max_length}; shorten it (the reference does not truncate)")
        return ids

    def build_messages(self, payload: Any) -> Any:
        """The messages of one payload: the payload itself, or what the spec's message builder makes of it."""
        return payload if self.message_builder is None else self.message_builder(payload)

    def encode(self, payload: Any) -> list[int]:
        """Ids of one payload (messages, or the builder's request object, e.g. FlexGuard's {"user", "assistant"?})."""
        return self.encode_text(self.render(self.build_messages(payload)))

    def encode_batch(self, conversations: Sequence[Any]) -> list[list[int]]:
        return [self.encode(messages) for messages in conversations]

    @property
    def cache_entries(self) -> int:
        return len(self._piece_cache)


def message_builder(name: str | None):
    """The request object -> messages function a chat_template spec names in its `message_builder` option."""
    if name is None:
        return None
    if name == "flexguard":
        from guardrt.runtime.flexguard_prompt import build_flexguard_messages

        return build_flexguard_messages
    raise ValueError(f"unknown message_builder {name!r} (known: flexguard)")


def build_preprocessor(spec: ModelSpec | str, tokenizer_dir: str | Path, task_description: str | None = None):
    """The preprocessor for `spec`, with the tokenizer (and, for chat templates, the template) from `tokenizer_dir`."""
    spec = get_spec(spec, input_only=True) if isinstance(spec, str) else spec
    kind = spec.input.kind
    if task_description is not None and kind != "dialogue_ctx":
        raise InputError(f"spec {spec.name} takes no task description")
    tokenizer = load_tokenizer(tokenizer_dir)
    if kind == "dialogue_ctx":
        return DialogueContextPreprocessor(tokenizer, spec, task_description=task_description)
    if kind == "single_text":
        return SingleTextPreprocessor(tokenizer, spec)
    if kind == "chat_template":
        model_dir = Path(tokenizer_dir)
        model_dir = model_dir.parent if model_dir.is_file() else model_dir
        template = ChatTemplate.from_model_dir(model_dir, name=spec.input.options.get("template_name"))
        return ChatTemplatePreprocessor(tokenizer, spec, template)
    raise ValueError(f"spec {spec.name}: unknown input kind {kind!r}")


def pad_batch(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    side: str,
    length: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64 arrays [B, L], padded on `side` ("left" for Qwen3, "right" for RoBERTa).

    `length` pads to a fixed length (a Triton length bucket); it must be >= the longest sequence.
    """
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    if not sequences:
        raise InputError("empty batch: at least one sequence is needed")
    longest = max(len(s) for s in sequences)
    if longest == 0:
        raise InputError("empty sequence in batch")
    width = longest if length is None else length
    if width < longest:
        raise ValueError(f"pad length {width} is shorter than the longest sequence ({longest})")
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        n = len(seq)
        if side == "left":
            ids[row, width - n:] = seq
            mask[row, width - n:] = 1
        else:
            ids[row, :n] = seq
            mask[row, :n] = 1
    return ids, mask
