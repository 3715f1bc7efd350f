"""RunSpec and ScoreSpec: parsing and validation of the JSON the TypeScript side writes.

Validation is by hand so that every error names the exact field path (``site.layer``, ``prompts.eval[3]``)
and the caller can show it without retrying. The parsed spec is frozen; its hash (sha256 over the
canonical JSON of the *normalised* spec) keys the checkpoints of a run directory.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

Dtype = Literal["float32", "bfloat16", "float16"]
DeviceName = Literal["cpu", "cuda", "auto"]
AttnImpl = Literal["eager", "sdpa"]
MethodName = Literal["nnsight", "hooks", "pyvene"]
NormalRule = Literal["exact_match"]
DecoderName = Literal["fast", "hf"]
TinyArch = Literal["qwen2", "gemma2", "llama", "qwen3"]
"""Architectures of the ``tiny:<arch>`` random-weight models (:mod:`.tiny`)."""
TINY_ARCHS: tuple[str, ...] = get_args(TinyArch)
FusedSetting = Literal["auto", "on", "off", "exact"]

SPEC_VERSION = 2
METHODS: tuple[str, ...] = get_args(MethodName)


class SpecError(ValueError):
    """An invalid spec: never worth retrying. ``path`` is the dotted field path."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class ModelSpec:
    id: str
    revision: str | None
    dtype: Dtype
    device: DeviceName
    attn_implementation: AttnImpl | None
    tiny_seed: int


@dataclass(frozen=True)
class SiteSpec:
    layer: int
    position: int


@dataclass(frozen=True)
class SteeringSpec:
    alpha: float
    # Below this fraction of eval prompts with changed token ids, the report says steering had no visible
    # effect (a statement, not a parity failure).
    min_changed_fraction: float


@dataclass(frozen=True)
class NumericsSpec:
    """Every switch that changes what the decoder computes: part of the spec hash and of result.json.

    ``decoder``: ``fast`` (the static-cache greedy decoder, :mod:`.decode`) or ``hf`` (transformers'
    ``generate``); ``fused_kernels``: ``off``, ``exact`` (bit-exact pieces, CUDA only), ``auto`` (every piece,
    CUDA only) or ``on`` (:mod:`.fused`);
    ``cuda_graphs``: capture decode steps as CUDA graphs; ``grouped_eager``: eager attention without
    ``repeat_kv``. The ``PHASEGATE_*`` environment variables of the same names may only refuse a run whose
    spec disagrees.
    """

    decoder: DecoderName
    fused_kernels: FusedSetting
    cuda_graphs: bool
    grouped_eager: bool


# The protocol schema's defaults (protocols/schema.ts): only the bit-exact fused kernels, see there.
DEFAULT_NUMERICS = NumericsSpec(decoder="fast", fused_kernels="exact", cuda_graphs=True, grouped_eager=True)


@dataclass(frozen=True)
class GenerationSpec:
    max_new_tokens: int
    batch_size: int


@dataclass(frozen=True)
class PromptsSpec:
    harmful: tuple[str, ...]
    harmless: tuple[str, ...]
    eval: tuple[str, ...]


@dataclass(frozen=True)
class ClassificationSpec:
    normal_rule: NormalRule
    garbled_max_repeated_ngram_fraction: float
    garbled_ngram: int
    garbled_min_unique_token_fraction: float
    garbled_max_nonprintable_fraction: float


@dataclass(frozen=True)
class RunSpec:
    spec_version: int
    phase_id: str
    model_key: str
    model: ModelSpec
    site: SiteSpec
    steering: SteeringSpec
    numerics: NumericsSpec
    generation: GenerationSpec
    methods: tuple[MethodName, ...]
    repeats: int
    seed: int
    deterministic: bool
    prompts: PromptsSpec
    classification: ClassificationSpec
    cache_dir: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def hash(self) -> str:
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ParitySpec:
    min_cosine: float
    max_l2: float


@dataclass(frozen=True)
class ScoreSpec:
    results: dict[str, str]
    parity: ParitySpec


# --- field readers: each raises SpecError naming the full path --------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _obj(
    value: Any, path: str, keys: set[str], optional: frozenset[str] | set[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(path, "must be an object")
    for key in value:
        if key not in keys:
            raise SpecError(_join(path, key), "unknown field")
    for key in sorted(keys - optional):
        if key not in value:
            raise SpecError(_join(path, key), "is required")
    return value


def _int(value: Any, path: str, minimum: int | None = None) -> int:
    # bool is an int subclass in Python; true must not pass as 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, "must be an integer")
    if minimum is not None and value < minimum:
        raise SpecError(path, f"must be >= {minimum}")
    return value


def _num(value: Any, path: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(path, "must be a finite number")
    if lo is not None and value < lo:
        raise SpecError(path, f"must be >= {lo}")
    if hi is not None and value > hi:
        raise SpecError(path, f"must be <= {hi}")
    return float(value)


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(path, "must be a non-empty string")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(path, "must be a boolean")
    return value


def _choice(value: Any, path: str, options: tuple[Any, ...]) -> Any:
    if value not in options or isinstance(value, bool):
        shown = ", ".join("null" if o is None else str(o) for o in options)
        raise SpecError(path, f"must be one of {shown}")
    return value


def _prompt_list(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise SpecError(path, "must be a non-empty array of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise SpecError(f"{path}[{i}]", "must be a non-empty string")
    return tuple(value)


def parse_run_spec(raw: Any) -> RunSpec:
    top = _obj(
        raw,
        "",
        {
            "spec_version", "phase_id", "model_key", "model", "site", "steering", "numerics", "generation",
            "methods", "repeats", "seed", "deterministic", "prompts", "classification", "cache_dir",
        },
    )  # fmt: skip
    if top["spec_version"] != SPEC_VERSION:
        raise SpecError("spec_version", f"must be {SPEC_VERSION}")

    m = _obj(
        top["model"],
        "model",
        {"id", "revision", "dtype", "device", "attn_implementation", "tiny_seed"},
        optional={"revision", "attn_implementation", "tiny_seed", "device"},
    )
    revision = m.get("revision")
    if revision is not None:
        _str(revision, "model.revision")
    model = ModelSpec(
        id=_str(m["id"], "model.id"),
        revision=revision,
        dtype=_choice(m["dtype"], "model.dtype", get_args(Dtype)),
        device=_choice(m.get("device", "auto"), "model.device", get_args(DeviceName)),
        attn_implementation=_choice(
            m.get("attn_implementation"), "model.attn_implementation", (None, *get_args(AttnImpl))
        ),
        tiny_seed=_int(m.get("tiny_seed", 0), "model.tiny_seed", 0),
    )

    s = _obj(top["site"], "site", {"layer", "position"}, optional={"position"})
    position = _int(s.get("position", -1), "site.position")
    if position >= 0:
        # Prompts are left-padded, so only offsets from the end name the same token in every row.
        raise SpecError("site.position", "must be negative (counted back from the last prompt token)")
    site = SiteSpec(layer=_int(s["layer"], "site.layer", 0), position=position)

    st = _obj(top["steering"], "steering", {"alpha", "min_changed_fraction"})
    alpha = _num(st["alpha"], "steering.alpha")
    if alpha == 0.0:
        raise SpecError("steering.alpha", "must not be 0 (nothing would be steered)")
    nm = _obj(top["numerics"], "numerics", {"decoder", "fused_kernels", "cuda_graphs", "grouped_eager"})
    numerics = NumericsSpec(
        decoder=_choice(nm["decoder"], "numerics.decoder", get_args(DecoderName)),
        fused_kernels=_choice(nm["fused_kernels"], "numerics.fused_kernels", get_args(FusedSetting)),
        cuda_graphs=_bool(nm["cuda_graphs"], "numerics.cuda_graphs"),
        grouped_eager=_bool(nm["grouped_eager"], "numerics.grouped_eager"),
    )
    g = _obj(top["generation"], "generation", {"max_new_tokens", "batch_size"})

    methods = top["methods"]
    if not isinstance(methods, list) or not methods:
        raise SpecError("methods", "must be a non-empty array")
    for i, name in enumerate(methods):
        _choice(name, f"methods[{i}]", METHODS)
    if len(set(methods)) != len(methods):
        raise SpecError("methods", "must not repeat a method")

    p = _obj(top["prompts"], "prompts", {"harmful", "harmless", "eval"})
    c = _obj(
        top["classification"],
        "classification",
        {
            "normal_rule", "garbled_max_repeated_ngram_fraction", "garbled_ngram",
            "garbled_min_unique_token_fraction", "garbled_max_nonprintable_fraction",
        },
    )  # fmt: skip
    cache_dir = _str(top["cache_dir"], "cache_dir")
    if not Path(cache_dir).is_absolute():
        raise SpecError("cache_dir", "must be an absolute path")

    return RunSpec(
        spec_version=SPEC_VERSION,
        phase_id=_str(top["phase_id"], "phase_id"),
        model_key=_str(top["model_key"], "model_key"),
        model=model,
        site=site,
        steering=SteeringSpec(
            alpha=alpha,
            min_changed_fraction=_num(st["min_changed_fraction"], "steering.min_changed_fraction", 0.0, 1.0),
        ),
        numerics=numerics,
        generation=GenerationSpec(
            max_new_tokens=_int(g["max_new_tokens"], "generation.max_new_tokens", 1),
            batch_size=_int(g["batch_size"], "generation.batch_size", 1),
        ),
        methods=tuple(methods),
        repeats=_int(top["repeats"], "repeats", 1),
        seed=_int(top["seed"], "seed", 0),
        deterministic=_bool(top["deterministic"], "deterministic"),
        prompts=PromptsSpec(
            harmful=_prompt_list(p["harmful"], "prompts.harmful"),
            harmless=_prompt_list(p["harmless"], "prompts.harmless"),
            eval=_prompt_list(p["eval"], "prompts.eval"),
        ),
        classification=ClassificationSpec(
            normal_rule=_choice(c["normal_rule"], "classification.normal_rule", get_args(NormalRule)),
            garbled_max_repeated_ngram_fraction=_num(
                c["garbled_max_repeated_ngram_fraction"],
                "classification.garbled_max_repeated_ngram_fraction",
                0.0,
                1.0,
            ),
            garbled_ngram=_int(c["garbled_ngram"], "classification.garbled_ngram", 1),
            garbled_min_unique_token_fraction=_num(
                c["garbled_min_unique_token_fraction"],
                "classification.garbled_min_unique_token_fraction",
                0.0,
                1.0,
            ),
            garbled_max_nonprintable_fraction=_num(
                c["garbled_max_nonprintable_fraction"],
                "classification.garbled_max_nonprintable_fraction",
                0.0,
                1.0,
            ),
        ),
        cache_dir=cache_dir,
    )


def parse_score_spec(raw: Any) -> ScoreSpec:
    top = _obj(raw, "", {"results", "parity"})
    results = top["results"]
    if not isinstance(results, dict) or not results:
        raise SpecError("results", "must be a non-empty object of model_key -> result.json path")
    for key, path in results.items():
        _str(path, f"results.{key}")
    par = _obj(top["parity"], "parity", {"min_cosine", "max_l2"})
    return ScoreSpec(
        results=dict(results),
        parity=ParitySpec(
            min_cosine=_num(par["min_cosine"], "parity.min_cosine", -1.0, 1.0),
            max_l2=_num(par["max_l2"], "parity.max_l2", 0.0),
        ),
    )


_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def _env_setting(field: str, raw: str) -> str | bool | None:
    """The spec value an environment variable's text stands for; None if it names no value of the field."""
    value = raw.strip().lower()
    if field == "decoder":
        return value if value in get_args(DecoderName) else None
    if field == "fused_kernels":
        if value in ("auto", "exact"):
            return value
        return "on" if value in _ON else "off" if value in _OFF else None
    return True if value in _ON else False if value in _OFF else None


NUMERICS_ENV = {
    "PHASEGATE_DECODE": "decoder",
    "PHASEGATE_FUSED": "fused_kernels",
    "PHASEGATE_CUDA_GRAPHS": "cuda_graphs",
    "PHASEGATE_GROUPED_EAGER": "grouped_eager",
}


def check_numerics_environment(numerics: NumericsSpec, environ: Mapping[str, str]) -> None:
    """Numerics come from the spec alone: a ``PHASEGATE_*`` variable that asks for something else refuses the
    run (it used to change the decoder silently, outside the spec hash that keys the checkpoints)."""
    for name, field in NUMERICS_ENV.items():
        if not environ.get(name, "").strip():
            continue  # unset, or set to nothing: asks for nothing
        wanted = getattr(numerics, field)
        if _env_setting(field, environ[name]) != wanted:
            shown = str(wanted).lower() if isinstance(wanted, bool) else wanted
            raise SpecError(
                f"numerics.{field}",
                f"the environment sets {name}, which disagrees with the spec ({shown}); numerics come from "
                "the protocol: unset the variable or change the protocol's numerics",
            )


def load_json(path: str | Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise SpecError("", f"{what} file not found: {path}") from err
    except json.JSONDecodeError as err:
        raise SpecError("", f"{what} is not valid JSON: {err}") from err
