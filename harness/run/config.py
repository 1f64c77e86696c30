"""Resolving settings: dataclass defaults, then benchmark defaults, then ``--set`` overrides.

Every key lives in one section: ``train.*`` (the unlearning loop), ``finetune.*`` (the loop
when ``prepare`` builds target and retain models), ``benchmark.*``, ``eval.*`` and one
section per method (``graddiff.alpha``). A bare key (``lr=1e-4``) means ``train.<key>``.
Values are cast to the field's declared type; an unknown key or a value of the wrong type
is an error that lists what is valid. The order of precedence is fixed and documented, and
the resolved values are recorded with every result.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from harness.engines.factory import VLLM_DTYPES
from harness.errors import HarnessError, closest


@dataclass
class EvalConfig:
    batch_size: int = 0         # sequences per forward pass; 0 = from free GPU memory (32 on CPU)
    max_length: int = 2048      # tokens per scored text
    memory_budget_gb: float = 0.0   # memory an evaluation batch may use beyond the weights; 0 = 1.5 GiB on CPU,
                                    # 60% of free memory on GPU (changes speed and memory, not scores)
    per_epoch: bool = False     # also evaluate after every unlearning epoch (training curves)
    select: str = "last"        # checkpoint-selection rule applied to every method alike (see selection.py)
    select_fraction: float = 0.9    # utility_preserving: share of the target's utility a candidate must keep (MUSE-style)
    select_forget: str = ""         # utility_preserving / first_below_retain: the forget column ranked ('' = the benchmark's)
    attacks: str = ""           # comma list of relearn-heldout, relearn-same-entity, relearn-openunlearning, int8, int4, bnb-int8, bnb-fp4, bnb-nf4 (docs/attacks.md)
    # lm-evaluation-harness tasks scored on every evaluated model as extra columns lm_eval/<task>/<metric>
    # (harness/engines/lm_eval_route.py): a comma list of registered task names (mmlu; hub data) and
    # .yaml task files (local data); off by default
    lm_eval_tasks: str = ""
    # vLLM engine (--engine vllm; docs/engines.md). auto dtype = the HF model's own (fp32 CPU, bf16 GPU).
    vllm_dtype: str = "auto"        # auto, float32, bfloat16 or float16 (bf16 on CPU: faster, changes scores)
    vllm_tensor_parallel: int = 1   # GPUs per model
    vllm_gpu_memory: float = 0.5    # share of GPU memory vLLM may take (the HF model and training need the rest)
    vllm_kv_cache_gib: float = 0.0  # KV cache size; 0 = 2 GiB on CPU, from vllm_gpu_memory on GPU
    vllm_logprobs: str = "auto"     # engine for log-prob requests under --engine vllm: auto (hf on CPU, where it
                                    # measured faster; vllm on GPU), vllm or hf (changes speed, not scores)

    def __post_init__(self):
        if self.vllm_dtype not in VLLM_DTYPES:
            raise HarnessError(f"eval.vllm_dtype must be one of {', '.join(VLLM_DTYPES)}, got '{self.vllm_dtype}'.")
        if self.vllm_logprobs not in VLLM_LOGPROB_ENGINES:
            raise HarnessError(f"eval.vllm_logprobs must be one of {', '.join(VLLM_LOGPROB_ENGINES)}, "
                               f"got '{self.vllm_logprobs}'.")


VLLM_LOGPROB_ENGINES = ("auto", "vllm", "hf")


def parse_set(pairs: list[str] | None) -> dict[str, str]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": "1", "c": "x"}``."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise HarnessError(f"--set expects key=value (e.g. --set train.lr=1e-5), got '{pair}'.")
        out[key.strip()] = value.strip()
    return out


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def cast(key: str, value: Any, kind: Any) -> Any:
    """Cast a --set string to the declared type of the field."""
    if not isinstance(value, str):
        return value
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if args and type(None) in typing.get_args(kind):
        if value.lower() in ("none", "null", ""):
            return None
        kind = args[0]
    try:
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            as_float = float(value)
            if not as_float.is_integer():
                raise ValueError
            return int(as_float)
        if kind is float:
            return float(value)
        return kind(value) if kind is not Any else value
    except (ValueError, TypeError):
        name = getattr(kind, "__name__", str(kind))
        raise HarnessError(f"--set {key}={value}: expected {name}, got '{value}'.") from None


#: training settings that no longer exist: (sections, why, what to set instead)
RETIRED = {
    "max_abs_loss": (("train", "finetune"), "an absolute bound on the loss cannot serve losses whose scales differ by "
                     "orders of magnitude (RMU's is squared activations times 1200)",
                     "divergence is now a NaN/inf loss or one beyond {section}.divergence_growth times the run's first "
                     "loss (default 1000, 0 = NaN/inf only): set --set {section}.divergence_growth=N instead"),
}


def retired_problem(key: str) -> str | None:
    """The migration message for a retired ``section.name`` key, or None for any other key."""
    section, _, name = key.rpartition(".")
    if name in RETIRED and section in RETIRED[name][0]:
        _, why, instead = RETIRED[name]
        return f"'{key}' was retired: {why}; {instead.format(section=section)}."
    return None


def build(cls: type, section: str, layers: list[dict[str, Any]], sources: list[str] | None = None,
          chosen: dict[str, str] | None = None) -> Any:
    """Instantiate ``cls`` from ``section.*`` keys of each layer, later layers winning.

    ``sources`` names each layer (e.g. "benchmark", "--set"); with it, ``chosen`` is filled with
    the name of the layer each set field came from (fields no layer set are "default").
    """
    types = field_types(cls)
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for at, layer in enumerate(layers):
        for key, value in layer.items():
            sec, _, name = key.rpartition(".")
            if sec == section and retired_problem(key):
                raise HarnessError(retired_problem(key))
            if sec == section and name in types:
                values[name] = cast(key, value, types[name])
                origin[name] = sources[at] if sources else "set"
    if chosen is not None:
        chosen.update({f.name: origin.get(f.name, "default") for f in dataclasses.fields(cls)})
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values and f.init
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise HarnessError(f"{section}: the setting(s) {', '.join(missing)} have no default value; set them with "
                           + ", ".join(f"--set {section}.{m}=VALUE" for m in missing)
                           + ", or give every field of the Config dataclass a default.")
    try:
        return cls(**values)
    except HarnessError as exc:   # TrainConfig serves two sections: name the one that was set
        if section == "finetune":
            raise HarnessError(str(exc).replace("train.", "finetune.")) from None
        raise


def valid_keys(sections: dict[str, type]) -> list[str]:
    return sorted(f"{sec}.{f.name}" for sec, cls in sections.items() for f in dataclasses.fields(cls))


def normalise_overrides(overrides: dict[str, str], sections: dict[str, type]) -> dict[str, str]:
    """Map bare keys to ``train.*`` and reject unknown keys with the list of valid ones."""
    known = set(valid_keys(sections))
    out = {}
    for key, value in overrides.items():
        full = key if "." in key else f"train.{key}"
        if retired_problem(full):
            raise HarnessError(f"--set {key}: {retired_problem(full)}")
        if full not in known:
            elsewhere = _method_not_in_run(full, sections)
            if elsewhere:
                raise HarnessError(f"--set {key}: '{elsewhere}' is a setting of method {elsewhere.split('.')[0]}, which is "
                                   f"not in this run (methods: {', '.join(s for s in sections if s not in FIXED_SECTIONS)}). "
                                   f"Add it to --methods, or leave this --set out.")
            near = closest(full, known)
            hint = f" Did you mean: {', '.join(near)}?" if near else ""
            raise HarnessError(f"unknown --set key '{key}'.{hint} Valid keys: {', '.join(sorted(known))}.")
        out[full] = value
    return out


FIXED_SECTIONS = ("train", "train.lora", "finetune", "eval", "benchmark", "attack", "attack.lora")


def _method_not_in_run(full: str, sections: dict[str, type]) -> str | None:
    """``full`` when it names a valid setting of a registered method that this run does not include."""
    from harness.registry import METHODS

    section, _, name = full.partition(".")
    if section in sections or section not in METHODS.names():
        return None
    fields = {f.name for f in dataclasses.fields(METHODS.get(section).Config)}
    return full if name in fields else None


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
