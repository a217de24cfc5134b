"""Will this model fit this machine? Memory estimates and a verdict with numbers.

Estimate = weights at the chosen precision + KV cache for the longest context
times the highest concurrency + overhead (activations, CUDA context or the
engine's own runtime). Capacity = free memory per GPU from NVML, or available
RAM for CPU backends. The verdict (``FitResult``) carries a sentence a skip
reason can quote, and the smallest common GPU setup that would fit.

Sizes are decimal GB (1e9 bytes), as model cards quote them; GPU capacities
are the totals NVML reports (a "24 GB" L4 reports 23034 MiB = 24.2 GB).
``check`` and ``table`` are what the session calls; the rest is pure
arithmetic on values. This module starts nothing and imports no backend;
reading the machine is ``hardware``'s job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.servers.base import int_option
from pytest_llmperf.servers.hardware import COMMON_GPUS, GB, GIB, Device, Machine, detect_machine, format_gb
from pytest_llmperf.servers.models import ModelSpec, table_header

#: Bytes per parameter, scales included. Quantized GGUF figures are from
#: published file sizes: Ollama's llama3.1:8b (Q4_K_M) is 4.9 GB for 8.03 B
#: parameters and llama3.1:70b 43 GB for 70.6 B, about 0.6 B/param, since
#: Q4_K_M keeps some tensors at 6 bits; Q4_0 is 4.5 bits, AWQ/GPTQ int4 with
#: group size 128 about 4.25.
BYTES_PER_PARAM: Mapping[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "q8_0": 1.0625,
    "int4": 0.53,
    "q4": 0.5625,
    "q4_0": 0.5625,
    "q4_k_m": 0.6,
}
_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "auto": "bf16",
    "awq": "int4",
    "gptq": "int4",
    "awq_marlin": "int4",
    "gptq_marlin": "int4",
}

#: Activation buffers, allocator slack and CUDA graphs grow with the model.
ACTIVATION_FRACTION = 0.05
#: Per device: CUDA context and workspace (~0.5 GB) plus a margin.
GPU_RUNTIME_BYTES = 1 * GB
#: Per process on CPU: what the engine's runtime itself holds. vLLM's was
#: about 3.3 GB resident serving a 1 MB model (torch, compiled graphs).
CPU_RUNTIME_BYTES: Mapping[str, int] = {"vllm": 3_500_000_000, "llamacpp": GB // 2, "ollama": GB // 2}

#: vLLM's tensor parallel size must divide the attention heads, which are
#: powers of two in these models; Ollama and llama.cpp split layers freely.
DEVICE_COUNTS = (1, 2, 4, 8)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs; ``None`` parts are unknown (ad-hoc models)."""

    model: str
    precision: str
    context: int
    concurrency: int
    weights_bytes: int | None
    kv_cache_bytes: int | None
    activation_bytes: int
    runtime_bytes_per_device: int

    def per_device_bytes(self, devices: int) -> int | None:
        """What each of ``devices`` equal shards must hold."""
        if self.weights_bytes is None:
            return None
        shared = self.weights_bytes + (self.kv_cache_bytes or 0) + self.activation_bytes
        return -(-shared // devices) + self.runtime_bytes_per_device

    @property
    def overhead_bytes(self) -> int:
        """Overhead on one device: activations plus the runtime itself."""
        return self.activation_bytes + self.runtime_bytes_per_device

    @property
    def total_bytes(self) -> int | None:
        return self.per_device_bytes(1)


@dataclass(frozen=True)
class FitResult:
    """The verdict for one model on one machine, with the sentence to show.

    ``checked`` is False when the architecture is unknown: then ``fits`` is
    True, since guessing a skip would hide a model that may well run.
    ``suggestion`` is the smallest common GPU setup that fits, like
    ``"2 x H100 80 GB"``.
    """

    model: str
    precision: str
    fits: bool
    checked: bool
    devices_needed: int | None
    estimate: MemoryEstimate
    machine: Machine
    suggestion: str | None
    reason: str


def normalize_precision(precision: str) -> str:
    """``"bfloat16"`` -> ``"bf16"``; ``ConfigError`` for one we cannot size."""
    key = precision.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BYTES_PER_PARAM:
        known = ", ".join([*BYTES_PER_PARAM, *_ALIASES])
        raise ConfigError(f"unknown dtype or quantization {precision!r} for the fit check; known: {known}")
    return key


def default_precision(backend: str, options: Mapping[str, str] | None = None) -> str:
    """What a backend loads by default: vLLM the checkpoint's bf16 (or the
    ``quantization`` / ``dtype`` option), Ollama and llama.cpp Q4_K_M GGUFs."""
    opts = options or {}
    if backend == "vllm":
        return normalize_precision(opts.get("quantization") or opts.get("dtype") or "bf16")
    return "q4_k_m"


def runtime_bytes(backend: str, machine: Machine) -> int:
    """Per-device runtime overhead for ``backend`` on this kind of machine."""
    if machine.kind == "gpu":
        return GPU_RUNTIME_BYTES
    return CPU_RUNTIME_BYTES.get(backend, GB)


@dataclass(frozen=True)
class Layout:
    """How an engine holds a model in memory.

    ``precision`` of the weights; ``kv_bytes_per_value`` of the KV cache,
    which stays 16-bit (2) under weight quantization unless the engine is
    told otherwise (fp8: 1); ``kv_cache_bytes`` replaces the cache formula
    for engines that reserve a fixed pool (vLLM on CPU);
    ``runtime_bytes_per_device`` is the engine's own overhead on each device
    (``None``: a GPU runtime's, or on a CPU machine in ``check_fit``, 1 GB).
    """

    precision: str
    kv_bytes_per_value: int = 2
    kv_cache_bytes: int | None = None
    runtime_bytes_per_device: int | None = None

    @property
    def on_gpus(self) -> Layout:
        """The same weights and KV cache width on GPUs elsewhere: their runtime, the cache formula."""
        return Layout(self.precision, kv_bytes_per_value=self.kv_bytes_per_value)


def estimate(spec: ModelSpec, layout: Layout, *, context: int, concurrency: int) -> MemoryEstimate:
    """Weights + KV cache (K and V, per layer, per KV head) + overhead, for ``concurrency``
    sequences of ``context`` tokens each."""
    key = normalize_precision(layout.precision)
    weights = None if spec.params_b is None else round(spec.params_b * GB * BYTES_PER_PARAM[key])
    kv = layout.kv_cache_bytes
    if kv is None and spec.layers is not None and spec.kv_heads is not None and spec.head_dim is not None:
        per_token = 2 * spec.layers * spec.kv_heads * spec.head_dim * layout.kv_bytes_per_value
        kv = per_token * context * concurrency
    runtime_bytes_per_device = layout.runtime_bytes_per_device
    if runtime_bytes_per_device is None:
        runtime_bytes_per_device = GPU_RUNTIME_BYTES
    return MemoryEstimate(
        model=spec.name,
        precision=key,
        context=context,
        concurrency=concurrency,
        weights_bytes=weights,
        kv_cache_bytes=kv,
        activation_bytes=round(ACTIVATION_FRACTION * weights) if weights is not None else 0,
        runtime_bytes_per_device=runtime_bytes_per_device,
    )


def devices_needed(
    est: MemoryEstimate, device_bytes: int, counts: Sequence[int] = DEVICE_COUNTS
) -> int | None:
    """The fewest devices of ``device_bytes`` each that hold ``est``."""
    for n in counts:
        need = est.per_device_bytes(n)
        if need is not None and need <= device_bytes:
            return n
    return None


def smallest_fit(est: MemoryEstimate, gpus: Sequence[Device] = COMMON_GPUS) -> tuple[int, Device] | None:
    """Fewest GPUs first, then the smallest card: ``(2, H100 80 GB)``."""
    by_size = sorted(gpus, key=lambda d: d.total_bytes)
    for n in DEVICE_COUNTS:
        for gpu in by_size:
            need = est.per_device_bytes(n)
            if need is not None and need <= gpu.total_bytes:
                return n, gpu
    return None


def check_fit(
    spec: ModelSpec,
    machine: Machine,
    layout: Layout,
    *,
    context: int,
    concurrency: int,
    devices: int | None = None,
) -> FitResult:
    """Does ``spec`` fit ``machine`` for the session's longest context and
    highest concurrency? ``devices`` pins the GPU count (a tensor parallel
    size); otherwise the fewest of this machine's GPUs that suffice."""
    if layout.runtime_bytes_per_device is None:
        runtime = GPU_RUNTIME_BYTES if machine.kind == "gpu" else GB
        layout = dataclasses.replace(layout, runtime_bytes_per_device=runtime)
    est = estimate(spec, layout, context=context, concurrency=concurrency)
    label = f"{spec.name} {est.precision}"
    if est.weights_bytes is None:
        reason = (
            f"{label}: fit not checked, parameter count unknown "
            f"(set params_b, layers, kv_heads, head_dim under {table_header(spec.name)})"
        )
        return FitResult(spec.name, est.precision, True, False, None, est, machine, None, reason)
    needs = f"{label} needs ~{format_gb(est.weights_bytes)} weights"
    if est.kv_cache_bytes is None:
        needs += " + KV cache (unknown architecture)"
    else:
        needs += f" + {format_gb(est.kv_cache_bytes)} KV cache"
    needs += f" + {format_gb(est.overhead_bytes)} overhead"
    needed = _devices_needed_here(est, machine, devices)
    # Elsewhere means GPUs: their runtime overhead and the KV cache formula.
    best = smallest_fit(estimate(spec, layout.on_gpus, context=context, concurrency=concurrency))
    suggestion = f"{best[0]} x {best[1].name}" if best else None
    where = f"this machine has {machine.describe()}"
    if needed is not None:
        on = f"{needed} x {machine.devices[0].name}" if machine.kind == "gpu" else "CPU RAM"
        reason = f"{needs}; {where}; fits on {on}"
    else:
        elsewhere = f"fits on {suggestion}" if suggestion else "fits on no common setup of up to 8 GPUs"
        reason = f"{needs}; {where}; {elsewhere}"
    return FitResult(
        spec.name, est.precision, needed is not None, True, needed, est, machine, suggestion, reason
    )


def _devices_needed_here(est: MemoryEstimate, machine: Machine, devices: int | None) -> int | None:
    # Shards are equal, so the device with the least free memory among the
    # ones used decides; use the emptiest devices first.
    pool = sorted((d.free_bytes for d in machine.devices), reverse=True)
    counts = [1] if machine.kind == "cpu" else [devices] if devices else list(DEVICE_COUNTS)
    for n in counts:
        if n > len(pool):
            break
        need = est.per_device_bytes(n)
        if need is not None and need <= pool[n - 1]:
            return n
    return None


def check(
    spec: ModelSpec,
    backend: str,
    options: Mapping[str, str],
    context: int,
    concurrency: int,
    *,
    machine: Machine | None = None,
) -> FitResult:
    """The session's question before it starts ``backend`` for ``spec``.

    The backend decides the precision (vLLM: bf16 or its ``quantization`` /
    ``dtype`` option; Ollama and llama.cpp: Q4_K_M), where the model lives
    (llama.cpp here is CPU-only; the others use GPUs when NVML sees one) and
    how many devices it spreads over (vLLM's tensor x pipeline parallel size).
    """
    if backend == "openai":
        est = estimate(spec, Layout("bf16"), context=context, concurrency=concurrency)
        here = machine or Machine("cpu", ())
        reason = f"{spec.name}: fit not checked, the endpoint runs elsewhere"
        return FitResult(spec.name, est.precision, True, False, None, est, here, None, reason)
    if machine is None:
        machine = detect_machine(cpu=backend == "llamacpp")
    devices = None
    kv_cache = None
    kv_bytes = 1 if options.get("kv_cache_dtype", "").startswith("fp8") else 2
    if backend == "vllm":
        tp = int_option(options, "tensor_parallel_size")
        pp = int_option(options, "pipeline_parallel_size")
        devices = tp * pp if machine.kind == "gpu" and (tp > 1 or pp > 1) else None
        if machine.kind == "cpu":
            # vLLM on CPU reserves exactly VLLM_CPU_KVCACHE_SPACE GiB for the cache.
            kv_cache = int_option(options, "cpu_kvcache_space", default=1) * GIB
    layout = Layout(
        default_precision(backend, options),
        kv_bytes_per_value=kv_bytes,
        kv_cache_bytes=kv_cache,
        runtime_bytes_per_device=runtime_bytes(backend, machine),
    )
    return check_fit(spec, machine, layout, context=context, concurrency=concurrency, devices=devices)


def table(
    registry: Mapping[str, ModelSpec],
    *,
    context: int = 4096,
    concurrency: int = 1,
    machine: Machine | None = None,
) -> str:
    """``pytest --llm-fit``: every registry model against this machine and common GPUs."""
    return render_fit_table(
        list(registry.values()),
        machine or detect_machine(),
        context=context,
        concurrency=concurrency,
    )


def render_fit_table(
    specs: Sequence[ModelSpec],
    machine: Machine,
    *,
    context: int,
    concurrency: int,
    precisions: Sequence[str] = ("bf16", "q4_k_m"),
    gpus: Sequence[Device] = COMMON_GPUS,
) -> str:
    """The ``--llm-fit`` table: each model at each precision, how many of
    each common GPU it needs, and whether this machine holds it."""
    here = "this machine" if machine.kind == "gpu" else "this machine (RAM)"
    header = ["model", "precision", "weights", "KV cache", "total", here, *(g.name for g in gpus)]
    rows: list[list[str]] = []
    for spec in specs:
        for precision in precisions:
            result = check_fit(spec, machine, Layout(precision), context=context, concurrency=concurrency)
            est = result.estimate
            if not result.checked:
                rows.append([spec.name, est.precision, "?", "?", "?", "unknown", *("?" for _ in gpus)])
                continue
            assert est.weights_bytes is not None
            assert est.total_bytes is not None
            kv = "?" if est.kv_cache_bytes is None else format_gb(est.kv_cache_bytes)
            fits_here = (
                "no"
                if not result.fits
                else "yes"
                if machine.kind == "cpu"
                else f"yes ({result.devices_needed} x)"
            )
            # The GPU columns assume a GPU runtime even when this machine is CPU-only.
            gpu_est = estimate(spec, Layout(precision), context=context, concurrency=concurrency)
            cells = []
            for gpu in gpus:
                n = devices_needed(gpu_est, gpu.total_bytes)
                cells.append(f"{n} x" if n else "-")
            rows.append(
                [
                    spec.name,
                    est.precision,
                    format_gb(est.weights_bytes),
                    kv,
                    format_gb(est.total_bytes),
                    fits_here,
                    *cells,
                ]
            )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        f"Memory needed at context {context} x concurrency {concurrency} "
        "(weights + KV cache + overhead); GPU columns: how many cards (up to 8, '-' = more).",
        f"This machine: {machine.describe()}" + (f" ({machine.note})" if machine.note else "") + ".",
        "",
    ]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
