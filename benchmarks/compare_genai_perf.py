"""Our client and GenAI-Perf side by side, against the same deterministic server.

For each concurrency and round (rounds interleave the two tools), a fresh
deterministic server (TTFT 63.5 ms, ITL 10 ms, its own receive and write
stamps logged per request) serves first one tool, then the other, the same
number of streamed 64-token answers to 128-word prompts. Per tool it prints:

* TTFT error p50 / p99: the tool's TTFT minus the server's receive-to-first-
  write, per request, so the send leg counts (GenAI-Perf's requests carry no
  id of ours: they are joined to the server's log by the response ``id``);
* the send leg p50 (the server's receive stamp minus the tool's send stamp)
  and the delivery leg p50 / p99 (first token read minus the server's write).
  perf_analyzer stamps with the wall clock; its stamps are moved onto
  CLOCK_MONOTONIC with the offset between the two clocks read around its run
  (the drift between the two readings is printed);
* client CPU ms per 1,000 tokens: ours is every client process and thread
  over the measured phase, telemetry included as a test runs it
  (``--telemetry-interval``); GenAI-Perf's is ``perf_analyzer``'s whole run
  (every thread, read from ``RUSAGE_CHILDREN`` of a wrapper around it),
  which leaves out GenAI-Perf's Python front end (prompt generation,
  tokenizing, metrics): a figure in its favour;
* delivered output tok/s.

Run: ``.venv/bin/python benchmarks/compare_genai_perf.py`` (about 3 minutes).
GenAI-Perf is found as ``--genai-perf PATH``, ``genai-perf`` on PATH or
``/work/genai-venv/bin/genai-perf``; install it in a venv outside the repo
(``pip install genai-perf==0.0.16``, ``pip install --no-deps
tritonclient==2.47.0``, ``apt-get install libb64-0d``, ``pip install
nvidia-cuda-runtime-cu12``). Without it, only our rows are printed, with a
sentence saying why.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import measure_accuracy as ours

from pytest_llmperf.measure import workers
from pytest_llmperf.testing.harness import running_detserver

ITL_MS = 10.0
WORDS = ("the", "model", "said", "that", "a", "fast", "server", "streams", "each", "token", "on", "time")
TOKENIZER = textwrap.dedent(
    """
    import sys
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
    for word in sys.argv[2].split():
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(sys.argv[1])
    """
)
WRAPPER = textwrap.dedent(
    """\
    #!{python}
    import resource, subprocess, sys
    code = subprocess.run([{real!r}, *sys.argv[1:]]).returncode
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    open({out!r}, "w").write(str(usage.ru_utime + usage.ru_stime))
    sys.exit(code)
    """
)


def find_genai_perf(given: str | None) -> Path | None:
    for candidate in (given, shutil.which("genai-perf"), "/work/genai-venv/bin/genai-perf"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


class GenAiPerf:
    """One GenAI-Perf installation, with a word-level tokenizer (one token per word) and a
    ``perf_analyzer`` wrapper that records its CPU."""

    def __init__(self, executable: Path, workdir: Path) -> None:
        self.bin = executable.parent
        self.workdir = workdir
        self.tokenizer = workdir / "tokenizer"
        python = self.bin / "python"
        subprocess.run(
            [str(python), "-c", TOKENIZER, str(self.tokenizer), " ".join(WORDS)],
            check=True,
            capture_output=True,
        )
        real = shutil.which("perf_analyzer", path=str(self.bin))
        if real is None:
            raise RuntimeError(
                f"no perf_analyzer next to {executable} (pip install --no-deps tritonclient==2.47.0)"
            )
        self.cpu_file = workdir / "perf_analyzer.cpu"
        wrapped = workdir / "wrap"
        wrapped.mkdir(exist_ok=True)
        wrapper = wrapped / "perf_analyzer"
        wrapper.write_text(WRAPPER.format(python=sys.executable, real=real, out=str(self.cpu_file)))
        wrapper.chmod(0o755)
        self.env = dict(os.environ)
        self.env["PATH"] = f"{wrapped}:{self.bin}:{self.env.get('PATH', '')}"
        cuda = self.bin.parent / "lib"
        libs = sorted(cuda.glob("python3*/site-packages/nvidia/cuda_runtime/lib"))
        if libs:
            self.env["LD_LIBRARY_PATH"] = f"{libs[0]}:{self.env.get('LD_LIBRARY_PATH', '')}"
        prompts = workdir / "prompts.jsonl"
        words = (WORDS * 20)[: ours.INPUT_TOKENS]
        prompts.write_text("".join(json.dumps({"text": " ".join(words)}) + "\n" for _ in range(4)))
        self.prompts = prompts

    def run(self, url: str, concurrency: int, requests: int, artifacts: Path) -> tuple[dict[str, Any], float]:
        """Run one profile; its ``profile_export.json`` and perf_analyzer's CPU seconds."""
        argv = [
            str(self.bin / "genai-perf"), "profile", "-m", "detserver", "--endpoint-type", "chat",
            "--streaming", "-u", url, "--input-file", str(self.prompts),
            "--output-tokens-mean", str(ours.OUTPUT_TOKENS), "--output-tokens-stddev", "0",
            "--extra-inputs", "ignore_eos:true", "--concurrency", str(concurrency),
            "--request-count", str(requests), "--tokenizer", str(self.tokenizer),
            "--artifact-dir", str(artifacts),
        ]  # fmt: skip
        self.cpu_file.unlink(missing_ok=True)
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"genai-perf failed ({done.returncode}): {done.stdout[-600:]}{done.stderr[-600:]}"
            )
        export = next(artifacts.rglob("profile_export.json"))
        return json.loads(export.read_text()), float(self.cpu_file.read_text())


def genai_errors(
    export: dict[str, Any], entries: list[dict[str, Any]], offset_ns: int
) -> dict[str, list[float]]:
    """GenAI-Perf's TTFT (first response with content, as it computes it) against the server's stamps."""
    by_seq = {e["seq"]: e for e in entries if e.get("first_ns")}
    ttft: list[float] = []
    delivery: list[float] = []
    send: list[float] = []
    for req in export["experiments"][0]["requests"]:
        first_at, seq = None, None
        for at, out in zip(req["response_timestamps"], req["response_outputs"], strict=False):
            for event in out["response"].split("\n\n"):
                if not event.startswith("data: ") or event.startswith("data: [DONE]"):
                    continue
                data = json.loads(event[6:])
                seq = int(data["id"].split("-")[-1], 16)
                delta = (data.get("choices") or [{}])[0].get("delta") or {}
                if delta.get("content") and first_at is None:
                    first_at = at
            if first_at is not None:
                break
        entry = by_seq.get(seq) if seq is not None else None
        if first_at is None or entry is None:
            continue
        ttft.append((first_at - req["timestamp"] - (entry["first_ns"] - entry["recv_ns"])) / 1e6)
        delivery.append((first_at - offset_ns - entry["first_ns"]) / 1e6)
        send.append((entry["recv_ns"] - (req["timestamp"] - offset_ns)) / 1e6)
    return {"ttft": ttft, "delivery": delivery, "send": send}


def clock_offset_ns() -> int:
    """CLOCK_REALTIME minus CLOCK_MONOTONIC (perf_counter_ns), read between two monotonic reads."""
    before = time.perf_counter_ns()
    wall = time.time_ns()
    after = time.perf_counter_ns()
    return wall - (before + after) // 2


def print_row(name: str, c: int, errs: dict[str, list[float]], cpu_ms_per_1k: float, tok_s: float) -> None:
    p = ours._pct
    print(
        f"{c:>5} {name:>10} | {p(errs['ttft'], 50):>8.2f} {p(errs['ttft'], 99):>8.2f} | "
        f"{p(errs['send'], 50):>8.2f} | {p(errs['delivery'], 50):>8.3f} {p(errs['delivery'], 99):>8.3f} | "
        f"{cpu_ms_per_1k:>9.1f} | {tok_s:>7.0f}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of both tools")
    parser.add_argument("--requests-per-stream", type=int, default=4)
    parser.add_argument("--telemetry-interval", type=float, default=0.1, help="our sampler's period (0: off)")
    parser.add_argument("--genai-perf", default=None, help="the genai-perf executable (in its own venv)")
    args = parser.parse_args()
    executable = find_genai_perf(args.genai_perf)
    print(
        f"our client vs GenAI-Perf: {ours.INPUT_TOKENS}-word prompts, {ours.OUTPUT_TOKENS} output tokens, "
        f"TTFT {ours.TTFT_MS} ms, ITL {ITL_MS:g} ms; {len(os.sched_getaffinity(0))} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}; our telemetry: "
        + (f"{args.telemetry_interval:g} s" if args.telemetry_interval > 0 else "off")
    )
    with tempfile.TemporaryDirectory(prefix="llmperf-genai-") as tmp:
        genai: GenAiPerf | None = None
        if executable is None:
            print(
                "GenAI-Perf is not installed (no genai-perf on PATH, nor --genai-perf): only our rows follow."
            )
        else:
            try:
                genai = GenAiPerf(executable, Path(tmp))
            except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
                print(f"GenAI-Perf cannot run here ({exc}): only our rows follow.")
        print(
            f"{'conc':>5} {'tool':>10} | {'TTFT err p50':>8} {'p99 ms':>8} | {'send p50':>8} | "
            f"{'deliv p50':>8} {'p99 ms':>8} | {'CPU/1k tok':>9} | {'tok/s':>7}"
        )
        for c in args.concurrency:
            requests = max(8, c * args.requests_per_stream)
            for r in range(args.rounds):
                with running_detserver(
                    Path(tmp) / f"ours-{c}-{r}", ttft_ms=ours.TTFT_MS, itl_ms=ITL_MS, args=["--stamp-tokens"]
                ) as server:
                    case = ours.run_case(
                        server, ITL_MS, c, requests, telemetry_interval_s=args.telemetry_interval
                    )
                raw = case["raw"]
                errs = {"ttft": raw.ttft, "delivery": raw.delivery, "send": raw.send}
                print_row("ours", c, errs, case["cpu"], case["tok_s"])
                if genai is None:
                    continue
                with running_detserver(
                    Path(tmp) / f"genai-{c}-{r}", ttft_ms=ours.TTFT_MS, itl_ms=ITL_MS, args=["--stamp-tokens"]
                ) as server:
                    before = clock_offset_ns()
                    export, cpu_s = genai.run(server.base_url, c, requests, Path(tmp) / f"art-{c}-{r}")
                    after = clock_offset_ns()
                    entries = ours.server_entries(server.stamp_log)
                g = genai_errors(export, entries, (before + after) // 2)
                tokens = ours.OUTPUT_TOKENS * len(g["ttft"])
                reqs = export["experiments"][0]["requests"]
                span_s = (
                    max(q["response_timestamps"][-1] for q in reqs) - min(q["timestamp"] for q in reqs)
                ) / 1e9
                print_row(
                    "GenAI-Perf", c, g, cpu_s * 1e6 / tokens if tokens else float("nan"), tokens / span_s
                )
                if abs(after - before) > 100_000:
                    moved = (after - before) / 1e6
                    print(f"      (the wall clock moved {moved:.2f} ms against the monotonic one)")
    workers.close_pool()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
