"""What the README, the examples and the messages tell a user is true.

Every ``--llm-*`` word a user can read (README, examples, the package's
messages and help) names an option that exists; the Quick start commands are
the ones CI runs, the cold one on an empty cache; the CI example is a valid
GitHub workflow that installs this checkout and saves a baseline only from a
green run; uv's lock file matches pyproject.toml.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_llmperf
from pytest_llmperf.config import OPTIONS

ROOT = Path(pytest_llmperf.__file__).parent.parent
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
WORKFLOW = ROOT / "examples" / "ci" / "github-actions.yml"
AB_WORKFLOW = ROOT / "examples" / "ci" / "ab-github-actions.yml"
# ``--llm-*`` (a wildcard in prose) is not an option name: a name starts with a letter.
OPTION_WORD = re.compile(r"--llm-[a-z][a-z0-9-]*")


def option_words(text: str) -> set[str]:
    return {word.rstrip("-") for word in OPTION_WORD.findall(text)}


def package_strings() -> dict[str, str]:
    """Every string literal of the package (f-string parts too), keyed by ``file:line``."""
    found: dict[str, str] = {}
    package = ROOT / "pytest_llmperf"
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found[f"{path.relative_to(ROOT)}:{node.lineno}"] = node.value
    return found


def quick_start() -> list[str]:
    """The commands of the first fenced block under the README's Quick start heading."""
    text = README.read_text("utf-8")
    section = text.split("## Quick start", 1)[1]
    block = section.split("```", 2)[1]
    return [line.strip() for line in block.splitlines()[1:] if line.strip()]


def test_every_option_a_user_reads_exists() -> None:
    declared = {option.flag for option in OPTIONS}
    sources = {"README.md": README.read_text("utf-8")}
    for path in sorted((ROOT / "examples").rglob("*")):
        if path.is_file():
            sources[str(path.relative_to(ROOT))] = path.read_text("utf-8")
    sources.update(package_strings())
    unknown = {where: sorted(option_words(text) - declared) for where, text in sources.items()}
    assert {where: words for where, words in unknown.items() if words} == {}
    # The scan sees what it must: the README names most options, the package all of them.
    assert len(option_words(sources["README.md"]) & declared) >= 15
    assert declared <= set().union(*(option_words(text) for text in package_strings().values()))


def test_the_option_scan_catches_a_misnamed_option() -> None:
    assert option_words("or pass --llm-server-binary PATH (see --llm-*)") == {"--llm-server-binary"}


def test_ci_runs_both_quick_start_commands_verbatim_the_first_on_an_empty_cache() -> None:
    first, second = quick_start()
    ci = CI_RUN.read_text("utf-8")
    assert first in ci
    assert second in ci
    # The first command runs as on a user's first day: a fresh HOME (so an empty cache) ...
    cold = ci[: ci.index(first)]
    assert 'cold_home="$(mktemp -d)"' in cold
    assert 'export HOME="$cold_home"' in cold
    assert "unset LLMPERF_CACHE_DIR XDG_CACHE_HOME" in cold
    # ... before the test suite, which then reuses what it built.
    assert ci.index(first) < ci.index(second)


def test_the_uv_forms_use_the_extras_that_exist() -> None:
    text = README.read_text("utf-8")
    uv_lines = [line for line in text.splitlines() if line.startswith("uv run ")]
    assert uv_lines == [
        "uv run --extra cpu pytest examples --benchmark-json=results/examples.json",
        "uv run --extra dev pytest",
    ]
    pyproject = (ROOT / "pyproject.toml").read_text("utf-8")
    assert "\ncpu = [" in pyproject
    assert "\ndev = [" in pyproject


def check_workflow(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema against its vendored GitHub workflow schema: no network."""
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("workflow", [WORKFLOW, AB_WORKFLOW], ids=lambda p: p.name)
def test_the_ci_examples_are_valid_github_workflows(workflow: Path) -> None:
    done = check_workflow(workflow)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_ab_example_measures_the_base_branch_against_the_pull_request() -> None:
    from ruamel.yaml import YAML

    workflow = YAML(typ="safe").load(AB_WORKFLOW.read_text("utf-8"))
    steps = {step["name"]: step for step in workflow["jobs"]["ab"]["steps"] if "name" in step}
    measure = steps["Measure the base branch's configuration (baseline) against this one (candidate)"]
    assert 'git show "origin/$BASE_REF:$OPTIONS_FILE"' in measure["run"]
    assert "--llm-candidate-server-option=$option" in measure["run"]
    assert "${{" not in measure["run"]  # untrusted refs reach the shell through env only


def test_the_workflow_check_fails_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    # A step with both `uses` and `run`, and a job without `runs-on`: GitHub rejects both.
    broken.write_text(WORKFLOW.read_text("utf-8").replace("    runs-on: ubuntu-latest\n", "", 1))
    done = check_workflow(broken)
    assert done.returncode == 1
    assert "runs-on" in done.stdout


def workflow_steps() -> dict[str, dict[str, str]]:
    from ruamel.yaml import YAML  # check-jsonschema's YAML reader (the dev extra)

    workflow = YAML(typ="safe").load(WORKFLOW.read_text("utf-8"))
    return {step["name"]: step for step in workflow["jobs"]["perf"]["steps"] if "name" in step}


def test_the_ci_example_installs_this_checkout_and_saves_only_green_baselines() -> None:
    steps = workflow_steps()
    assert steps["Install"]["run"] == 'python -m pip install -e ".[cpu,plots]"'  # the checkout, no index
    runs = "\n".join(step.get("run", "") for step in steps.values())
    assert "pip install" not in runs.replace(steps["Install"]["run"], "")
    measure = steps["Measure, check budgets, compare with the baseline"]["run"]
    assert 'python -m pytest "$PERF_TESTS"' in measure
    assert "--benchmark-autosave" in measure
    for name in (
        "Keep the five newest runs for the next baseline",
        "Save the baseline (main only, and only when the gate passed)",
    ):
        assert steps[name]["if"].startswith("success() && "), name


@pytest.mark.skipif(shutil.which("uv") is None and not (Path(sys.executable).parent / "uv").exists(),
                    reason="uv is installed by the dev extra")  # fmt: skip
def test_the_uv_lock_matches_pyproject() -> None:
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    done = subprocess.run(
        [uv, "lock", "--check", "--offline"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
