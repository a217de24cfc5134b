"""Memory estimates and fit verdicts, pinned to what the original studies saw.

The studies ran Llama 3.1 8B in bf16 on a 24 GB L4 with vLLM, and Llama 3.1
70B with Ollama's default 4-bit model (Q4_K_M) on one, then two A100s, where
it used about 42 GB of GPU memory. There is no GPU here: NVML is a fake
object with the same calls, fed the figures NVML reports on those cards.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.servers import fit
from pytest_llmperf.servers.hardware import COMMON_GPUS, GIB, MIB, Device, Machine, detect_machine, read_gpus
from pytest_llmperf.servers.models import REGISTRY, lookup

L4_TOTAL = 23034 * MIB  # what NVML reports for an L4
H100_TOTAL = 81559 * MIB


@dataclass
class FakeMemory:
    total: int
    free: int
    used: int = 0


class FakeNvml:
    """pynvml's calls, answering for the given (name, total, free) devices."""

    def __init__(self, devices: list[tuple[str, int, int]], fail_on: str | None = None) -> None:
        self.devices = devices
        self.fail_on = fail_on
        self.shutdown_calls = 0

    def _maybe_fail(self, call: str) -> None:
        if call == self.fail_on:
            raise RuntimeError(f"NVML_ERROR_UNKNOWN in {call}")

    def nvmlInit(self) -> None:
        self._maybe_fail("init")

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object:
        return index

    def nvmlDeviceGetName(self, handle: object) -> str | bytes:
        assert isinstance(handle, int)
        return self.devices[handle][0].encode()  # older pynvml returns bytes

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> FakeMemory:
        self._maybe_fail("memory")
        assert isinstance(handle, int)
        _, total, free = self.devices[handle]
        return FakeMemory(total=total, free=free)


def one_l4(free: int = 23_600_000_000) -> Machine:
    return Machine("gpu", (Device("NVIDIA L4", L4_TOTAL, free),))


def test_llama_8b_bf16_is_16_gb_of_weights_and_fits_an_l4() -> None:
    result = fit.check_fit(REGISTRY["llama3.1-8b"], one_l4(), fit.Layout("bf16"), context=4096, concurrency=4)
    est = result.estimate
    assert est.weights_bytes == 16_060_000_000  # 8.03 B params x 2 bytes
    assert est.kv_cache_bytes == 2_147_483_648  # 2 x 32 layers x 8 KV heads x 128 x 2 B x 4096 x 4
    assert est.activation_bytes == 803_000_000
    assert est.total_bytes == 20_010_483_648
    assert result.fits
    assert result.devices_needed == 1
    assert result.reason == (
        "llama3.1-8b bf16 needs ~16 GB weights + 2.1 GB KV cache + 1.8 GB overhead; "
        "this machine has 1 x 24 GB free; fits on 1 x NVIDIA L4"
    )


def test_llama_70b_at_ollamas_default_4_bit_is_about_42_gb() -> None:
    spec = REGISTRY["llama3.1-70b"]
    est = fit.estimate(spec, fit.Layout(fit.default_precision("ollama")), context=2048, concurrency=1)
    assert est.precision == "q4_k_m"
    assert est.weights_bytes == 42_330_000_000  # Ollama lists llama3.1:70b as 43 GB
    assert est.kv_cache_bytes == 671_088_640
    assert est.total_bytes == 46_117_588_640  # 42.95 GiB, nvidia-smi's "about 42 GB"
    a100_40 = 40960 * MIB
    assert fit.devices_needed(est, a100_40) == 2  # the studies moved to two A100s


def test_llama_70b_bf16_does_not_fit_one_80_gb_card_and_the_reason_says_what_would() -> None:
    result = fit.check_fit(
        REGISTRY["llama3.1-70b"], one_l4(), fit.Layout("bf16"), context=4096, concurrency=4
    )
    assert not result.fits
    assert result.devices_needed is None
    assert result.estimate.per_device_bytes(1) == 154_523_709_120
    assert result.estimate.per_device_bytes(2) == 77_761_854_560
    assert fit.devices_needed(result.estimate, H100_TOTAL) == 2
    assert result.suggestion == "2 x H100 80 GB"
    assert result.reason == (
        "llama3.1-70b bf16 needs ~141 GB weights + 5.4 GB KV cache + 8.1 GB overhead; "
        "this machine has 1 x 24 GB free; fits on 2 x H100 80 GB"
    )


def test_several_gpus_are_used_only_as_far_as_the_emptiest_ones_allow() -> None:
    machine = Machine(
        "gpu",
        (
            Device("NVIDIA H100 80GB HBM3", H100_TOTAL, 80_000_000_000),
            Device("NVIDIA H100 80GB HBM3", H100_TOTAL, 79_000_000_000),
            Device("NVIDIA H100 80GB HBM3", H100_TOTAL, 5_000_000_000),  # someone else's job
        ),
    )
    spec = REGISTRY["llama3.1-70b"]
    result = fit.check_fit(spec, machine, fit.Layout("bf16"), context=4096, concurrency=4)
    assert result.fits
    assert result.devices_needed == 2
    assert (
        "this machine has 1 x 80 GB + 1 x 79 GB + 1 x 5.0 GB free; fits on 2 x NVIDIA H100" in result.reason
    )
    pinned = fit.check_fit(spec, machine, fit.Layout("bf16"), context=4096, concurrency=4, devices=1)
    assert not pinned.fits


def test_check_uses_the_backends_precision_and_vllms_cpu_kv_pool() -> None:
    cpu = Machine("cpu", (Device("CPU RAM", 25 * 10**9, 24_800_000_000),))
    result = fit.check(REGISTRY["llama3.1-70b"], "vllm", {}, 2048, 4, machine=cpu)
    assert not result.fits
    assert result.estimate.kv_cache_bytes == 1 * GIB  # VLLM_CPU_KVCACHE_SPACE=1
    assert result.estimate.runtime_bytes_per_device == 3_500_000_000
    assert result.reason == (
        "llama3.1-70b bf16 needs ~141 GB weights + 1.1 GB KV cache + 11 GB overhead; "
        "this machine has 25 GB RAM available; fits on 2 x H100 80 GB"
    )
    tiny = fit.check(REGISTRY["tiny-llama"], "vllm", {"cpu_kvcache_space": "2"}, 512, 4, machine=cpu)
    assert tiny.fits
    assert tiny.estimate.kv_cache_bytes == 2 * GIB
    assert tiny.reason.endswith("this machine has 25 GB RAM available; fits on CPU RAM")


def test_check_honours_quantization_tensor_parallel_and_fp8_kv() -> None:
    two = Machine("gpu", (Device("NVIDIA A100-SXM4-40GB", 40960 * MIB, 42_000_000_000),) * 2)
    opts = {"quantization": "awq", "tensor_parallel_size": "2", "kv_cache_dtype": "fp8"}
    result = fit.check(REGISTRY["llama3.1-70b"], "vllm", opts, 4096, 8, machine=two)
    assert result.precision == "int4"
    assert result.estimate.weights_bytes == 37_391_500_000  # 70.55 B x 0.53
    assert result.estimate.kv_cache_bytes == 5_368_709_120  # fp8: 1 byte per value
    assert result.devices_needed == 2


def test_the_openai_backend_is_never_checked_and_unknown_models_are_not_guessed() -> None:
    assert not fit.check(REGISTRY["llama3.1-70b"], "openai", {}, 4096, 4, machine=one_l4()).checked
    result = fit.check(lookup("org/unknown-model"), "vllm", {}, 4096, 4, machine=one_l4())
    assert result.fits
    assert not result.checked
    assert "fit not checked, parameter count unknown" in result.reason


@pytest.mark.parametrize(
    ("given", "key"),
    [("bfloat16", "bf16"), ("float16", "fp16"), ("auto", "bf16"), ("GPTQ", "int4"), ("q4_0", "q4_0")],
)
def test_precision_names(given: str, key: str) -> None:
    assert fit.normalize_precision(given) == key


def test_unknown_precision_and_bad_parallel_sizes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown dtype or quantization 'q3_k_s'"):
        fit.normalize_precision("q3_k_s")
    with pytest.raises(ConfigError, match="tensor_parallel_size='two'"):
        fit.check(REGISTRY["gemma-2b"], "vllm", {"tensor_parallel_size": "two"}, 512, 1, machine=one_l4())


def test_nvml_devices_are_read_with_free_memory_and_nvml_is_shut_down() -> None:
    nvml = FakeNvml([("NVIDIA L4", L4_TOTAL, 20_000_000_000), ("NVIDIA L4", L4_TOTAL, 24_000_000_000)])
    devices, note = read_gpus(nvml)
    assert devices == (
        Device("NVIDIA L4", L4_TOTAL, 20_000_000_000),
        Device("NVIDIA L4", L4_TOTAL, 24_000_000_000),
    )
    assert note is None
    assert nvml.shutdown_calls == 1


@pytest.mark.parametrize("fail_on", ["init", "memory"])
def test_nvml_errors_mean_no_gpu_never_a_crash(fail_on: str) -> None:
    nvml = FakeNvml([("NVIDIA L4", L4_TOTAL, L4_TOTAL)], fail_on=fail_on)
    devices, note = read_gpus(nvml)
    assert devices == ()
    assert note is not None
    assert "RuntimeError: NVML_ERROR_UNKNOWN" in note
    machine = detect_machine(nvml=nvml, ram=lambda: (32 * 10**9, 30 * 10**9))
    assert machine == Machine("cpu", (Device("CPU RAM", 32 * 10**9, 30 * 10**9),), note)


def test_cuda_visible_devices_limits_what_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    nvml = FakeNvml([("GPU0", L4_TOTAL, 1), ("GPU1", L4_TOTAL, 2)])
    assert read_gpus(nvml)[0] == (Device("GPU1", L4_TOTAL, 2),)


def test_a_cpu_backend_uses_ram_even_when_there_are_gpus() -> None:
    nvml = FakeNvml([("NVIDIA L4", L4_TOTAL, L4_TOTAL)])
    assert detect_machine(nvml=nvml).kind == "gpu"
    machine = detect_machine(cpu=True, nvml=nvml, ram=lambda: (8 * 10**9, 6 * 10**9))
    assert machine == Machine("cpu", (Device("CPU RAM", 8 * 10**9, 6 * 10**9),))


def test_the_fit_table_lists_models_precisions_and_card_counts() -> None:
    registry = {name: REGISTRY[name] for name in ("llama3.1-8b", "llama3.1-70b")}
    text = fit.table(registry, context=4096, concurrency=4, machine=one_l4())
    rows = [line.split() for line in text.splitlines()]
    assert rows[0][:4] == ["Memory", "needed", "at", "context"]
    assert text.splitlines()[1] == "This machine: 1 x 24 GB free."
    assert [c.name for c in COMMON_GPUS] == [
        "T4 16 GB",
        "L4 24 GB",
        "A100 40 GB",
        "A100 80 GB",
        "H100 80 GB",
        "H200 141 GB",
    ]
    body = [" ".join(r) for r in rows[4:]]
    assert body == [
        "llama3.1-8b bf16 16 GB 2.1 GB 20 GB yes (1 x) 2 x 1 x 1 x 1 x 1 x 1 x",
        "llama3.1-8b q4_k_m 4.8 GB 2.1 GB 8.2 GB yes (1 x) 1 x 1 x 1 x 1 x 1 x 1 x",
        "llama3.1-70b bf16 141 GB 5.4 GB 155 GB no - 8 x 4 x 2 x 2 x 2 x",
        "llama3.1-70b q4_k_m 42 GB 5.4 GB 51 GB no 4 x 4 x 2 x 1 x 1 x 1 x",
    ]
