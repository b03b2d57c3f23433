"""Text <-> token ids for a Hugging Face checkpoint folder, without transformers or torch.

``Tokenizer.from_dir`` reads the files ``save_pretrained`` writes (``tokenizer.json``,
``tokenizer_config.json``, ``chat_template.jinja``, ``additional_chat_templates/``, legacy
``special_tokens_map.json``) and reproduces what ``transformers.AutoTokenizer.from_pretrained``
(version 5.24) does with them, so that ``encode``/``decode`` give the same ids and text:

* ``add_bos_token``/``add_eos_token`` in tokenizer_config.json are ignored: transformers 5 drops
  them whenever tokenizer.json exists, and the post-processor stored in tokenizer.json alone
  decides whether BOS/EOS are added.
* Named special tokens (bos/eos/unk/pad/...) and extra special tokens that tokenizer.json does
  not list as added tokens are added as special tokens, exactly as transformers does (this can
  grow the vocabulary by appending new ids).
* For ``tokenizer_class: LlamaTokenizer`` with a sentencepiece-style (not byte-level)
  tokenizer.json, transformers 5 rebuilds the normalizer, pre-tokenizer and decoder from
  hard-coded settings instead of using the file; ``transformers_compat=True`` does the same.
* Named special tokens that tokenizer_config.json leaves out entirely take the defaults of the
  model-specific class transformers picks (e.g. GemmaTokenizer adds ``<mask>``).
* Truncation and padding stored in tokenizer.json are switched off, as transformers does.

Only ``tokenizers`` (and the standard library) is needed here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from llmos.errors import (ChatTemplateError, ConfigError, InvalidInputError, LlmosError, TokenizerError,
                          TokenizerFileMissingError)
from llmos.io.config import read_side_file

__all__ = ["Tokenizer"]

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
GENERATION_CONFIG_FILE = "generation_config.json"
MODEL_CONFIG_FILE = "config.json"

# transformers' order; it decides which new ids missing special tokens get.
_NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# transformers stores "no limit" as int(1e30); anything this large means unset.
_UNSET_MAX_LENGTH = 10**29

_MAX_TOKEN_ID = 2**32 - 1

# Model types for which transformers 5.24's AutoTokenizer ignores a `LlamaTokenizer` class
# declared on the Hub and loads tokenizer.json as is (their registered tokenizer class is the
# generic backend, or they are listed as having an incorrect Hub tokenizer class).
_VERBATIM_MODEL_TYPES = frozenset(
    """EvollaModel arctic aria beam bigbird_pegasus camembertv2-base canary chatlm cohere_asr ernie4_5
    ernie4_5_moe flex_olmo fuyu glm glm4 glm4_moe glm4_moe_lite glm4v glm4v_moe glm_image glmasr got_ocr2
    gpt_bigcode gradium_phonon_tts granite granitemoe granitemoehybrid granitemoeshared h2ovl_chat hyperclovax
    hyperclovax_vision_v2 hyperclovax_vlm internlm2 internlm3 iquestcoder jamba kimi_k25 kimi_linear kosmos-2
    llava llava_next mimo_v2_flash minicpm3 minicpm_ocr minicpmv minicpmv4_6 minicpmv4_7 minimax_m2 ministral
    ministral3 mistral mistral3 mistral_large4 mixtral modernbert modernbert-decoder molmo molmo2 nemo_speechlm
    nemotron nvfp4 nystromformer olmo2 olmo3 olmo_hybrid omniasr opencua openvla paddleocr_vl pegasus_x
    persimmon phi3 phi3_v phimoe pix2struct pixtral pocket_tts qwen2 qwen3_5 qwen3_5_moe qwen3_5_moe_text
    qwen4_exp siglip2 smolvlm stablelm step3_vl umt5 vipllava voxtral voxtral_realtime xlm-roberta-xl""".split()
)


# Special tokens that transformers' model-specific tokenizer classes default to when
# tokenizer_config.json does not mention them at all (an explicit null keeps them unset).
_CLASS_DEFAULT_TOKENS: dict[str, dict[str, str]] = {
    "LlamaTokenizer": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
    "GemmaTokenizer": {"unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "mask_token": "<mask>"},
    "GPT2Tokenizer": {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
    "GPTNeoXTokenizer": {
        "unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|padding|>"
    },
    "Qwen2Tokenizer": {"unk_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
    "T5Tokenizer": {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"},
}

# Model types whose registered tokenizer class AutoTokenizer uses instead of the Hub's.
_REGISTERED_CLASS_OVERRIDES = {"qwen2": "Qwen2Tokenizer"}


def _is_interrupt(exc: BaseException) -> bool:
    return isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit))


def _read_json(path: Path, error: type, *, what: str, limit: str = "max_tokenizer_config_bytes") -> Any:
    try:
        raw = read_side_file(str(path), limit=limit, error=error)
    except LlmosError:
        raise
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}", file=str(path)) from e
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text: {e}", file=str(path)) from e
    except json.JSONDecodeError as e:
        raise error(
            f"{what} {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", file=str(path)
        ) from e
    except RecursionError as e:
        raise error(f"{what} {path} is nested too deeply to parse", file=str(path)) from e


def _read_optional_json_object(path: Path, error: type, *, what: str,
                               limit: str = "max_tokenizer_config_bytes") -> dict[str, Any] | None:
    if not path.exists():
        return None
    data = _read_json(path, error, what=what, limit=limit)  # refuses a FIFO, device or folder
    if not isinstance(data, dict):
        raise error(f"{what} {path} must hold a JSON object, got {type(data).__name__}", file=str(path))
    return data


def _read_text(path: Path, error: type, *, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text: {e}", file=str(path)) from e
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}", file=str(path)) from e


def _token_fields(value: Any, *, file: Path, field: str) -> dict[str, Any] | None:
    """A special token from a config file as AddedToken keyword arguments (None when unset).

    Files hold either the token text or a serialized AddedToken ``{"content": ..., ...}``
    (optionally tagged ``"__type": "AddedToken"``).
    """
    if value is None:
        return None
    if isinstance(value, str):
        return {"content": value}
    if isinstance(value, dict):
        content = value.get("content")
        if not isinstance(content, str):
            raise TokenizerError(
                f"{file.name}: {field} must be a string or an object with a string 'content', got {value!r}",
                file=str(file),
                field=field,
            )
        fields: dict[str, Any] = {"content": content}
        for flag in ("single_word", "lstrip", "rstrip", "normalized", "special"):
            if flag in value:
                if not isinstance(value[flag], bool):
                    raise TokenizerError(
                        f"{file.name}: {field}.{flag} must be true or false, got {value[flag]!r}",
                        file=str(file),
                        field=f"{field}.{flag}",
                    )
                fields[flag] = value[flag]
        return fields
    raise TokenizerError(
        f"{file.name}: {field} must be a string or an AddedToken object, got {type(value).__name__}",
        file=str(file),
        field=field,
    )


def _token_id_list(value: Any, *, file: Path, field: str) -> list[int]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise ConfigError(
                f"{file.name}: {field} must be a non-negative integer or a list of them, got {value!r}",
                file=str(file),
                field=field,
            )
        out.append(item)
    return out


def _mentions_type(node: Any, type_name: str) -> bool:
    if isinstance(node, dict):
        return node.get("type") == type_name or any(_mentions_type(v, type_name) for v in node.values())
    if isinstance(node, list):
        return any(_mentions_type(v, type_name) for v in node)
    return False


@dataclass(frozen=True)
class _TokenizerFiles:
    """The files of a tokenizer folder, read and checked for shape; optional ones are {} or None."""

    path: Path
    tok_file: Path
    tok_text: str                    # tokenizer.json as text (what the tokenizers library loads)
    tok_json: dict[str, Any]         # the same, parsed
    cfg_file: Path
    cfg: dict[str, Any]              # tokenizer_config.json
    model_cfg_file: Path
    model_cfg: dict[str, Any]        # config.json
    gen_cfg_file: Path
    gen_cfg: dict[str, Any] | None   # generation_config.json

    @classmethod
    def read(cls, path: Path) -> "_TokenizerFiles":
        if not path.is_dir():
            raise TokenizerFileMissingError(f"tokenizer folder {path} does not exist or is not a directory", file=str(path))

        tok_file = path / TOKENIZER_FILE
        if not tok_file.is_file():
            raise TokenizerFileMissingError(
                f"{tok_file} is missing: llmos needs the fast-tokenizer file tokenizer.json "
                "(re-save the tokenizer with transformers' save_pretrained to create it)",
                file=str(tok_file),
            )
        tok_text = _read_text(tok_file, TokenizerError, what="tokenizer file")
        try:
            tok_json = json.loads(tok_text)
        except json.JSONDecodeError as e:
            raise TokenizerError(
                f"tokenizer file {tok_file} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})",
                file=str(tok_file),
            ) from e
        except RecursionError as e:
            raise TokenizerError(f"tokenizer file {tok_file} is nested too deeply to parse", file=str(tok_file)) from e
        if not isinstance(tok_json, dict) or not isinstance(tok_json.get("model"), dict):
            raise TokenizerError(f"{tok_file} has no 'model' object: not a tokenizers serialization", file=str(tok_file))

        cfg_file = path / TOKENIZER_CONFIG_FILE
        cfg = _read_optional_json_object(cfg_file, TokenizerError, what="tokenizer config") or {}
        model_cfg_file = path / MODEL_CONFIG_FILE
        model_cfg = _read_optional_json_object(model_cfg_file, ConfigError, what="model config",
                                               limit="max_config_bytes") or {}
        gen_cfg_file = path / GENERATION_CONFIG_FILE
        gen_cfg = _read_optional_json_object(gen_cfg_file, ConfigError, what="generation config",
                                             limit="max_config_bytes")
        return cls(path, tok_file, tok_text, tok_json, cfg_file, cfg, model_cfg_file, model_cfg, gen_cfg_file, gen_cfg)


class Tokenizer:
    """A loaded tokenizer. Build it with :meth:`from_dir`."""

    def __init__(self, *, _backend: Any, _path: Path, _info: dict[str, Any]):
        self._backend = _backend
        self._path = _path
        self._special_tokens_map: dict[str, str] = _info["special_tokens_map"]
        self._chat_templates: dict[str, str] = _info["chat_templates"]
        self._chat_template_origins: dict[str, str] = _info["chat_template_origins"]
        self._clean_up_spaces: bool = _info["clean_up_spaces"]
        self._model_max_length: int | None = _info["model_max_length"]
        self._bos_token_id: int | None = _info["bos_token_id"]
        self._eos_token_ids: list[int] = _info["eos_token_ids"]
        self._pad_token_id: int | None = _info["pad_token_id"]
        self._byte_fallback_ids: frozenset[int] = _info["byte_fallback_ids"]
        self._vocab_size = _backend.get_vocab_size(with_added_tokens=True)
        self._special_token_ids = frozenset(
            i for i, tok in _backend.get_added_tokens_decoder().items() if tok.special
        )
        self._rendered_templates: dict[str, Any] = {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_dir(cls, path: str | Path, *, transformers_compat: bool = True) -> "Tokenizer":
        """Load the tokenizer of a Hugging Face model folder.

        ``transformers_compat=False`` uses tokenizer.json exactly as written, skipping the
        LlamaTokenizer rebuild transformers 5 applies (see the module docstring).
        """
        files = _TokenizerFiles.read(Path(path))
        tok_json, tok_text = files.tok_json, files.tok_text
        tokenizer_class = (
            cls._auto_tokenizer_class(tok_text, files.cfg, files.model_cfg) if transformers_compat else "TokenizersBackend"
        )
        if tokenizer_class == "LlamaTokenizer" and tok_json["model"].get("type") == "BPE":
            tok_json = cls._llama_rebuild(tok_json, files.cfg, files.cfg_file)
            tok_text = json.dumps(tok_json)
        backend = cls._load_backend(files.tok_file, tok_text)

        named, extra = cls._special_token_fields(cls._special_token_sources(files, tokenizer_class), files.cfg_file)
        cls._add_special_tokens(backend, files.cfg, files.cfg_file, named, extra)
        special_tokens_map = {key: fields["content"] for key, fields in named.items()}
        backend.encode_special_tokens = cls._split_special_tokens(files.cfg, files.cfg_file)

        clean_up_spaces = cls._clean_up_spaces(files.cfg, tok_json)
        max_len = cls._model_max_length(files.cfg, files.cfg_file)
        templates, origins = cls._load_chat_templates(files.path, files.cfg, files.cfg_file)
        eos_ids = cls._eos_token_ids(backend, special_tokens_map, files)
        byte_ids = cls._byte_fallback_ids(backend, tok_json)
        info = {
            "special_tokens_map": special_tokens_map,
            "chat_templates": templates,
            "chat_template_origins": origins,
            "clean_up_spaces": clean_up_spaces,
            "model_max_length": max_len,
            "bos_token_id": cls._fallback_token_id(backend, special_tokens_map, files, "bos_token_id"),
            "eos_token_ids": eos_ids,
            "pad_token_id": cls._fallback_token_id(backend, special_tokens_map, files, "pad_token_id"),
            "byte_fallback_ids": byte_ids,
        }
        return cls(_backend=backend, _path=files.path, _info=info)

    @staticmethod
    def _load_backend(tok_file: Path, tok_text: str) -> Any:
        """The tokenizers library's tokenizer for tok_text, with truncation and padding off, tried once."""
        from tokenizers import Tokenizer as BackendTokenizer

        try:
            backend = BackendTokenizer.from_str(tok_text)
        except BaseException as e:  # the Rust side raises PanicException (a BaseException) on crafted files
            if _is_interrupt(e):
                raise
            raise TokenizerError(f"{tok_file} cannot be loaded by the tokenizers library: {e}", file=str(tok_file)) from e
        backend.no_truncation()
        backend.no_padding()
        # Some malformed pipelines load fine and only panic when used (e.g. a TemplateProcessing
        # that names a token it has no id for): try them once so a bad folder fails here.
        try:
            backend.decode(backend.encode("a b", add_special_tokens=True).ids, skip_special_tokens=False)
        except BaseException as e:
            if _is_interrupt(e):
                raise
            raise TokenizerError(f"{tok_file} loads but cannot encode text: {e}", file=str(tok_file)) from e
        return backend

    @staticmethod
    def _special_token_sources(files: "_TokenizerFiles", tokenizer_class: str) -> dict[str, tuple[Any, Path]]:
        """Every config key with its value and the file it came from, in transformers' precedence:
        tokenizer_config.json, overridden by the legacy special_tokens_map.json unless the config
        carries its own added_tokens_decoder, then the tokenizer class's defaults for what neither names."""
        cfg, cfg_file = files.cfg, files.cfg_file
        merged: dict[str, tuple[Any, Path]] = {k: (v, cfg_file) for k, v in cfg.items()}
        if "added_tokens_decoder" not in cfg:
            stm_file = files.path / SPECIAL_TOKENS_MAP_FILE
            stm = _read_optional_json_object(stm_file, TokenizerError, what="special tokens map")
            for key, value in (stm or {}).items():
                if key == "extra_special_tokens" and isinstance(value, list):
                    previous = merged.get(key, (None, cfg_file))[0]
                    combined = list(previous) if isinstance(previous, list) else []
                    combined.extend(item for item in value if item not in combined)
                    value = combined
                elif isinstance(value, dict) and key != "extra_special_tokens":
                    value = {**value, "special": True}
                merged[key] = (value, stm_file)

        for key, default in _CLASS_DEFAULT_TOKENS.get(tokenizer_class, {}).items():
            merged.setdefault(key, (default, cfg_file))
        return merged

    @staticmethod
    def _special_token_fields(
        merged: Mapping[str, tuple[Any, Path]], cfg_file: Path
    ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """(named special tokens by key, extra special tokens) as AddedToken keyword arguments."""
        named: dict[str, dict[str, Any]] = {}
        for key in _NAMED_SPECIAL_TOKENS:
            value, src = merged.get(key, (None, cfg_file))
            fields = _token_fields(value, file=src, field=key)
            if fields is not None:
                named[key] = fields
        # Model-specific named tokens (image_token, boi_token, ...) are special tokens too.
        for key, (value, src) in merged.items():
            if key in named or key in _NAMED_SPECIAL_TOKENS or not key.endswith("_token"):
                continue
            if isinstance(value, str) or (isinstance(value, dict) and value.get("__type") == "AddedToken"):
                named[key] = _token_fields(value, file=src, field=key)  # type: ignore[assignment]
        extra_value, extra_src = merged.get("extra_special_tokens", (None, cfg_file))
        if extra_value is None or extra_value == [] or extra_value == {}:
            extra_value, extra_src = merged.get("additional_special_tokens", (None, cfg_file))
        extra: list[dict[str, Any]] = []
        if isinstance(extra_value, dict):
            for key, value in extra_value.items():
                fields = _token_fields(value, file=extra_src, field=f"extra_special_tokens.{key}")
                if fields is not None:
                    named[str(key)] = fields
        elif isinstance(extra_value, list):
            for i, value in enumerate(extra_value):
                fields = _token_fields(value, file=extra_src, field=f"extra_special_tokens[{i}]")
                if fields is not None:
                    extra.append(fields)
        elif extra_value is not None:
            raise TokenizerError(
                f"{extra_src.name}: extra_special_tokens must be a list or an object, got {type(extra_value).__name__}",
                file=str(extra_src),
                field="extra_special_tokens",
            )
        return named, extra

    @staticmethod
    def _add_special_tokens(
        backend: Any,
        cfg: Mapping[str, Any],
        cfg_file: Path,
        named: Mapping[str, dict[str, Any]],
        extra: Sequence[dict[str, Any]],
    ) -> None:
        """Adds the config's added_tokens_decoder, then the named and extra special tokens the
        backend does not have yet (this can append new ids)."""
        from tokenizers import AddedToken

        to_add: list[Any] = []
        added_decoder = cfg.get("added_tokens_decoder")
        if added_decoder is not None:
            if not isinstance(added_decoder, dict):
                raise TokenizerError(
                    f"{cfg_file.name}: added_tokens_decoder must be an object", file=str(cfg_file), field="added_tokens_decoder"
                )
            entries = []
            for key, value in added_decoder.items():
                try:
                    index = int(key)
                except ValueError:
                    raise TokenizerError(
                        f"{cfg_file.name}: added_tokens_decoder key {key!r} is not a token id",
                        file=str(cfg_file),
                        field="added_tokens_decoder",
                    ) from None
                fields = _token_fields(value, file=cfg_file, field=f"added_tokens_decoder.{key}")
                if fields is not None:
                    entries.append((index, fields))
            to_add.extend(AddedToken(**f) for _, f in sorted(entries, key=lambda e: e[0]))
        present = {t.content for t in backend.get_added_tokens_decoder().values()}
        present.update(t.content for t in to_add)
        # A named token is special whatever its flags say; an extra token given as text is special too.
        pending = [(fields, True) for fields in named.values()] + [(fields, False) for fields in extra]
        for fields, force_special in pending:
            if fields["content"] in present:
                continue
            fields = {"special": True, **fields}
            if force_special:
                fields["special"] = True
            to_add.append(AddedToken(**fields))
            present.add(fields["content"])
        if to_add:
            try:
                backend.add_tokens(to_add)
            except BaseException as e:
                if _is_interrupt(e):
                    raise
                raise TokenizerError(f"cannot add the special tokens listed in {cfg_file}: {e}", file=str(cfg_file)) from e

    @staticmethod
    def _split_special_tokens(cfg: Mapping[str, Any], cfg_file: Path) -> bool:
        split = cfg.get("split_special_tokens", False)
        if not isinstance(split, bool):
            raise TokenizerError(
                f"{cfg_file.name}: split_special_tokens must be true or false", file=str(cfg_file), field="split_special_tokens"
            )
        return split

    @staticmethod
    def _clean_up_spaces(cfg: Mapping[str, Any], tok_json: Mapping[str, Any]) -> bool:
        clean = cfg.get("clean_up_tokenization_spaces", False)
        force_bpe = cfg.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)
        # transformers 5 skips the clean-up for BPE models, where it would corrupt text.
        model_type = tok_json["model"].get("type")
        return bool(clean) and (model_type != "BPE" or bool(force_bpe))

    @staticmethod
    def _model_max_length(cfg: Mapping[str, Any], cfg_file: Path) -> int | None:
        max_len = cfg.get("model_max_length")
        if max_len is None:
            return None
        if isinstance(max_len, bool) or not isinstance(max_len, (int, float)) or not math.isfinite(max_len) or max_len < 0:
            raise TokenizerError(
                f"{cfg_file.name}: model_max_length must be a non-negative number, got {max_len!r}",
                file=str(cfg_file),
                field="model_max_length",
            )
        return None if max_len >= _UNSET_MAX_LENGTH else int(max_len)

    @classmethod
    def _eos_token_ids(cls, backend: Any, special_tokens_map: Mapping[str, str], files: "_TokenizerFiles") -> list[int]:
        """The tokenizer's EOS, then generation_config.json's eos_token_id, or config.json's when it has none."""
        gen_eos = _token_id_list((files.gen_cfg or {}).get("eos_token_id"), file=files.gen_cfg_file, field="eos_token_id")
        model_eos = cls._model_config_ids(files.model_cfg, "eos_token_id", files.model_cfg_file)
        eos_ids: list[int] = []
        content = special_tokens_map.get("eos_token")
        primary_eos = backend.token_to_id(content) if content is not None else None
        for i in ([primary_eos] if primary_eos is not None else []) + (gen_eos or model_eos):
            if i not in eos_ids:
                eos_ids.append(i)
        return eos_ids

    @classmethod
    def _fallback_token_id(
        cls, backend: Any, special_tokens_map: Mapping[str, str], files: "_TokenizerFiles", key: str
    ) -> int | None:
        """The id of the tokenizer's own token for key (bos_token_id, pad_token_id), else the
        first from generation_config.json, else from config.json."""
        content = special_tokens_map.get(key.replace("_id", ""))
        own = backend.token_to_id(content) if content is not None else None
        if own is not None:
            return own
        ids = _token_id_list((files.gen_cfg or {}).get(key), file=files.gen_cfg_file, field=key)
        ids = ids or cls._model_config_ids(files.model_cfg, key, files.model_cfg_file)
        return ids[0] if ids else None

    @staticmethod
    def _byte_fallback_ids(backend: Any, tok_json: Mapping[str, Any]) -> frozenset[int]:
        if not _mentions_type(tok_json.get("decoder"), "ByteFallback"):
            return frozenset()
        return frozenset(i for b in range(256) if (i := backend.token_to_id(f"<0x{b:02X}>")) is not None)

    @staticmethod
    def _model_config_ids(model_cfg: Mapping[str, Any], key: str, file: Path) -> list[int]:
        ids = _token_id_list(model_cfg.get(key), file=file, field=key)
        if not ids and isinstance(model_cfg.get("text_config"), dict):
            ids = _token_id_list(model_cfg["text_config"].get(key), file=file, field=f"text_config.{key}")
        return ids

    @staticmethod
    def _auto_tokenizer_class(tok_text: str, cfg: Mapping[str, Any], model_cfg: Mapping[str, Any]) -> str:
        """The tokenizer class AutoTokenizer 5.24 instantiates for this folder (as far as it matters here)."""
        hub_class = cfg.get("tokenizer_class") or model_cfg.get("tokenizer_class")
        if "auto_map" in cfg or not isinstance(hub_class, str):
            return "TokenizersBackend"  # remote code, or a class chosen from the model type alone
        hub_class = hub_class.removesuffix("Fast")
        model_type = model_cfg.get("model_type")
        if model_type in _REGISTERED_CLASS_OVERRIDES:
            return _REGISTERED_CLASS_OVERRIDES[model_type]
        if model_type in _VERBATIM_MODEL_TYPES:
            return "TokenizersBackend"
        # transformers' own test for routing byte-level files to the generic backend.
        if hub_class == "LlamaTokenizer" and '"ByteLevel"' in tok_text:
            return "TokenizersBackend"
        return hub_class

    @staticmethod
    def _llama_rebuild(tok_json: dict[str, Any], cfg: Mapping[str, Any], cfg_file: Path) -> dict[str, Any]:
        """Apply LlamaTokenizer.__init__'s hard-coded pipeline (transformers 5.24) to tokenizer.json."""
        add_prefix_space = cfg.get("add_prefix_space")
        add_prefix_space = True if add_prefix_space is None else bool(add_prefix_space)
        legacy = bool(cfg.get("legacy", False))
        if add_prefix_space:
            prepend_scheme = "always" if legacy else "first"
        else:
            prepend_scheme = "never"
        model = tok_json["model"]
        vocab = model.get("vocab")
        if isinstance(vocab, list):
            vocab = {(tok[0] if isinstance(tok, list) else tok): i for i, tok in enumerate(vocab)}
        new = dict(tok_json)
        new["model"] = {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": model.get("merges", []),
        }
        new["normalizer"] = None
        new["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": prepend_scheme, "split": False}
        steps: list[dict[str, Any]] = [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]
        if add_prefix_space:
            steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        new["decoder"] = {"type": "Sequence", "decoders": steps}
        return new

    @staticmethod
    def _load_chat_templates(path: Path, cfg: Mapping[str, Any], cfg_file: Path) -> tuple[dict[str, str], dict[str, str]]:
        """Templates by name, read the way transformers 5 does: files win over tokenizer_config.json."""
        templates: dict[str, str] = {}
        origins: dict[str, str] = {}
        jinja_file = path / CHAT_TEMPLATE_FILE
        if jinja_file.is_file():
            templates["default"] = _read_text(jinja_file, ChatTemplateError, what="chat template")
            origins["default"] = str(jinja_file)
        extra_dir = path / CHAT_TEMPLATE_DIR
        if extra_dir.is_dir():
            for file in sorted(extra_dir.glob("*.jinja")):
                name = file.name.removesuffix(".jinja")
                templates[name] = _read_text(file, ChatTemplateError, what="chat template")
                origins[name] = str(file)
        if templates:
            return templates, origins

        value = cfg.get("chat_template")
        if value is None:
            return {}, {}
        if isinstance(value, str):
            return {"default": value}, {"default": f"{cfg_file}:chat_template"}
        if isinstance(value, list):
            for i, entry in enumerate(value):
                if not (
                    isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("template"), str)
                ):
                    raise ChatTemplateError(
                        f"{cfg_file.name}: chat_template[{i}] must be an object with string 'name' and 'template'",
                        file=str(cfg_file),
                        field=f"chat_template[{i}]",
                    )
                templates[entry["name"]] = entry["template"]
                origins[entry["name"]] = f"{cfg_file}:chat_template[{entry['name']}]"
            return templates, origins
        raise ChatTemplateError(
            f"{cfg_file.name}: chat_template must be a string or a list of {{name, template}} objects, "
            f"got {type(value).__name__}",
            file=str(cfg_file),
            field="chat_template",
        )

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` applies the post-processor (BOS/EOS)."""
        if not isinstance(text, str):
            raise InvalidInputError(f"text to encode must be a str, got {type(text).__name__}", field="text")
        try:
            return self._backend.encode(text, add_special_tokens=bool(add_special_tokens)).ids
        except BaseException as e:
            if _is_interrupt(e):
                raise
            raise self._backend_failure("encode", e) from e

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InvalidInputError(
                f"texts must be a list of str, got {type(texts).__name__}", field="texts"
            )
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInputError(f"texts[{i}] must be a str, got {type(text).__name__}", field=f"texts[{i}]")
        try:
            encodings = self._backend.encode_batch(list(texts), add_special_tokens=bool(add_special_tokens))
        except BaseException as e:
            if _is_interrupt(e):
                raise
            raise self._backend_failure("encode", e) from e
        return [e.ids for e in encodings]

    def decode(
        self,
        ids: Iterable[int] | int,
        skip_special_tokens: bool = True,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str:
        """Text of ``ids``. Ids the vocabulary does not have produce no text (as in transformers).

        ``clean_up_tokenization_spaces=None`` uses the tokenizer's setting (transformers' rule:
        tokenizer_config.json's flag, never applied to BPE models).
        """
        id_list = _check_ids(ids)
        try:
            text = self._backend.decode(id_list, skip_special_tokens=bool(skip_special_tokens))
        except BaseException as e:
            if _is_interrupt(e):
                raise
            raise self._backend_failure("decode", e) from e
        clean = self._clean_up_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return clean_up_tokenization(text) if clean else text

    def id_to_token(self, token_id: int) -> str | None:
        (checked,) = _check_ids([token_id])
        return self._backend.id_to_token(checked)

    def token_to_id(self, token: str) -> int | None:
        if not isinstance(token, str):
            raise InvalidInputError(f"token must be a str, got {type(token).__name__}", field="token")
        return self._backend.token_to_id(token)

    def _backend_failure(self, action: str, exc: BaseException) -> TokenizerError:
        # The Rust library panics (PanicException, a BaseException) on some crafted files.
        file = self._path / TOKENIZER_FILE
        return TokenizerError(f"the tokenizer from {file} failed to {action}: {exc}", file=str(file))

    # ------------------------------------------------------------------ chat

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        template_name: str | None = None,
        **extra: Any,
    ) -> str:
        """Render ``messages`` with the checkpoint's chat template (see :class:`llmos.text.chat_template.ChatTemplate`).

        Template choice follows transformers: ``template_name`` if given, else ``tool_use`` when
        tools are passed and the checkpoint has such a template, else ``default``.
        """
        name = template_name
        if name is None:
            name = "tool_use" if tools is not None and "tool_use" in self._chat_templates else "default"
        template = self._rendered_templates.get(name)
        if template is None:
            from llmos.text.chat_template import ChatTemplate

            source = self._chat_templates.get(name)
            if source is None:
                if not self._chat_templates:
                    raise ChatTemplateError(
                        f"the tokenizer in {self._path} has no chat template (no {CHAT_TEMPLATE_FILE} and no "
                        f"chat_template in {TOKENIZER_CONFIG_FILE})",
                        file=str(self._path / CHAT_TEMPLATE_FILE),
                    )
                raise ChatTemplateError(
                    f"the tokenizer in {self._path} has no chat template named {name!r} "
                    f"(available: {sorted(self._chat_templates)})",
                    field="template_name",
                )
            template = ChatTemplate(
                source, special_tokens=self._special_tokens_map, origin=self._chat_template_origins.get(name)
            )
            self._rendered_templates[name] = template
        return template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools, **extra)

    # ------------------------------------------------------------------ properties

    @property
    def path(self) -> Path:
        return self._path

    @property
    def backend(self) -> Any:
        """The underlying ``tokenizers.Tokenizer`` (do not modify it)."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (``len(tokenizer)`` in transformers)."""
        return self._vocab_size

    def __len__(self) -> int:
        return self._vocab_size

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """Named special tokens (bos_token, eos_token, ...): what chat templates receive as variables."""
        return dict(self._special_tokens_map)

    @property
    def bos_token(self) -> str | None:
        return self._special_tokens_map.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self._special_tokens_map.get("eos_token")

    @property
    def pad_token(self) -> str | None:
        return self._special_tokens_map.get("pad_token")

    @property
    def unk_token(self) -> str | None:
        return self._special_tokens_map.get("unk_token")

    @property
    def bos_token_id(self) -> int | None:
        """The BOS id (tokenizer config, else generation_config.json / config.json).

        Informational: :meth:`encode` already adds BOS when the tokenizer's post-processor does.
        """
        return self._bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        """The tokenizer's own EOS id (first of :attr:`eos_token_ids`)."""
        return self._eos_token_ids[0] if self._eos_token_ids else None

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends generation: the tokenizer's EOS, then generation_config.json's
        ``eos_token_id`` (int or list), or config.json's when generation_config.json has none."""
        return list(self._eos_token_ids)

    @property
    def pad_token_id(self) -> int | None:
        return self._pad_token_id

    @property
    def unk_token_id(self) -> int | None:
        unk = self.unk_token
        return self._backend.token_to_id(unk) if unk is not None else None

    @property
    def special_token_ids(self) -> frozenset[int]:
        """Ids that ``decode(skip_special_tokens=True)`` leaves out."""
        return self._special_token_ids

    @property
    def byte_fallback_ids(self) -> frozenset[int]:
        """Ids of ``<0xXX>`` byte tokens when the decoder merges them (ByteFallback); else empty."""
        return self._byte_fallback_ids

    @property
    def clean_up_tokenization_spaces(self) -> bool:
        """Whether :meth:`decode` applies transformers' clean-up of spaces before punctuation."""
        return self._clean_up_spaces

    @property
    def model_max_length(self) -> int | None:
        return self._model_max_length

    @property
    def chat_template(self) -> str | None:
        """The default chat template source, or None."""
        return self._chat_templates.get("default")

    @property
    def chat_template_origin(self) -> str | None:
        """Where the default chat template was read from (a file, or ``tokenizer_config.json:chat_template``)."""
        return self._chat_template_origins.get("default")

    @property
    def chat_templates(self) -> dict[str, str]:
        """All chat templates by name (``default``, ``tool_use``, ...)."""
        return dict(self._chat_templates)

    def __repr__(self) -> str:
        return f"Tokenizer(path={str(self._path)!r}, vocab_size={self._vocab_size})"


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization``: drop the space WordPiece-style decoding leaves before punctuation."""
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


def _check_ids(ids: Any) -> list[int]:
    if isinstance(ids, bool):
        raise InvalidInputError("token ids must be integers, got a bool", field="ids")
    if isinstance(ids, int):
        ids = [ids]
    elif hasattr(ids, "tolist") and not isinstance(ids, (list, tuple)):
        ids = ids.tolist()  # numpy arrays and scalars
        if isinstance(ids, int):
            ids = [ids]
    elif isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise InvalidInputError(f"token ids must be a sequence of integers, got {type(ids).__name__}", field="ids")
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int):
            if hasattr(i, "__index__") and not isinstance(i, bool):
                i = i.__index__()
            else:
                raise InvalidInputError(f"token ids must be integers, got {i!r}", field="ids")
        if i < 0 or i > _MAX_TOKEN_ID:
            raise InvalidInputError(f"token id {i} is out of range (0 .. {_MAX_TOKEN_ID})", field="ids")
        out.append(i)
    return out
