"""Static checks of the Dockerfile (no Docker engine is needed, or available, to run them)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from webapp.launch import streamlit_command

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper-case, e.g. "RUN"
    args: str  # arguments with line continuations joined
    line: int  # 1-based line where the instruction starts


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions, joining ``\\`` continuations and dropping comments.

    Comment lines inside a continued instruction are skipped, as Docker does.
    """
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not parts and (not stripped or stripped.startswith("#")):
            continue
        if parts and stripped.startswith("#"):
            continue
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        keyword, _, args = " ".join(p for p in parts if p).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        parts = []
    if parts:
        raise ValueError(f"instruction starting on line {start} ends with a dangling '\\'")
    return instructions


def exec_form(args: str) -> list[str]:
    """The JSON (exec) form of CMD/ENTRYPOINT/HEALTHCHECK CMD as a list; fails on the shell form."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile((REPO / "Dockerfile").read_text(encoding="utf-8"))


def _all(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in instructions if i.keyword == keyword]


def _index(instructions: list[Instruction], keyword: str, contains: str) -> int:
    hits = [n for n, i in enumerate(instructions) if i.keyword == keyword and contains in i.args]
    assert hits, f"no {keyword} instruction containing {contains!r}"
    return hits[0]


# --- the parser itself, on a hand-made Dockerfile -------------------------------------------------


def test_parser_joins_continuations_and_skips_comments():
    text = (
        "# syntax=docker/dockerfile:1\n"
        "FROM ubuntu:24.04 AS base\n"
        "\n"
        "RUN apt-get update \\\n"
        "    # a comment inside the continuation\n"
        "    && apt-get install -y curl\n"
        'CMD ["python", "-m", "http.server"]\n'
    )
    parsed = parse_dockerfile(text)
    assert parsed == [
        Instruction("FROM", "ubuntu:24.04 AS base", 2),
        Instruction("RUN", "apt-get update && apt-get install -y curl", 4),
        Instruction("CMD", '["python", "-m", "http.server"]', 7),
    ]
    assert exec_form(parsed[2].args) == ["python", "-m", "http.server"]


def test_parser_rejects_a_dangling_continuation():
    with pytest.raises(ValueError, match="line 1 ends with a dangling"):
        parse_dockerfile("RUN echo hi \\\n")


# --- the project's Dockerfile ------------------------------------------------------------------


def test_base_image_is_a_cuda_cudnn_runtime_ubuntu_image(instructions):
    froms = _all(instructions, "FROM")
    assert len(froms) == 1
    image = froms[0].args.split()[0]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu(22|24)\.04", image), image


def test_python_311_in_a_virtual_environment(instructions):
    args = {i.args.split("=")[0]: i.args for i in _all(instructions, "ARG")}
    assert args["PYTHON_VERSION"] == "PYTHON_VERSION=3.11"
    setup = instructions[_index(instructions, "RUN", "-m venv")].args
    assert "python${PYTHON_VERSION}-venv" in setup
    assert '"python${PYTHON_VERSION}" -m venv "$VIRTUAL_ENV"' in setup
    env = " ".join(i.args for i in _all(instructions, "ENV"))
    assert "VIRTUAL_ENV=/opt/venv" in env and "PATH=/opt/venv/bin:$PATH" in env


def test_torch_then_requirements_then_the_package(instructions):
    torch = _index(instructions, "RUN", 'pip install "torch==${TORCH_VERSION}"')
    copy_req = _index(instructions, "COPY", "requirements.txt")
    requirements = _index(instructions, "RUN", "pip install -r requirements.txt")
    package = _index(instructions, "RUN", "pip install --no-deps .")
    assert torch < requirements < package
    assert copy_req < requirements
    # The package is installed from the full source tree, which is copied after the dependencies.
    copy_all = [n for n, i in enumerate(instructions) if i.keyword == "COPY" and i.args == ". ."]
    assert copy_all and requirements < copy_all[0] < package


def test_runs_as_a_non_root_user(instructions):
    users = [(n, i.args) for n, i in enumerate(instructions) if i.keyword == "USER"]
    assert users, "no USER instruction: the app would run as root"
    last_user_at, last_user = users[-1]
    assert last_user not in {"root", "0", "0:0"}
    assert _index(instructions, "RUN", "useradd --create-home --uid 10001") < last_user_at
    assert _all(instructions, "RUN")[-1].args.endswith(f"--shell /usr/sbin/nologin {last_user}")
    start = [n for n, i in enumerate(instructions) if i.keyword in {"CMD", "ENTRYPOINT"}]
    assert start and all(last_user_at < n for n in start)
    # Nothing is installed after switching user (it would fail or leave root-owned files).
    assert not [i for i in instructions[last_user_at:] if i.keyword == "RUN"]


def test_exposes_8501_and_checks_streamlit_health(instructions):
    exposed = [port for i in _all(instructions, "EXPOSE") for port in i.args.split()]
    assert exposed == ["8501"]
    (health,) = _all(instructions, "HEALTHCHECK")
    options, _, command = health.args.partition(" CMD ")
    assert "--interval=" in options and "--timeout=" in options
    probe = exec_form(command)
    assert probe[0] == "python"
    assert "http://127.0.0.1:8501/_stcore/health" in probe[-1]


def test_serves_the_streamlit_app_on_all_container_interfaces_port_8501(instructions):
    assert not _all(instructions, "ENTRYPOINT")
    (cmd,) = _all(instructions, "CMD")
    argv = exec_form(cmd.args)
    assert argv[:5] == ["python", "-m", "streamlit", "run", "webapp/app.py"]
    flags = argv[5:]
    assert "--server.address=0.0.0.0" in flags
    assert "--server.port=8501" in flags
    assert "--server.enableXsrfProtection=true" in flags
    assert "--server.headless=true" in flags
    assert "--browser.gatherUsageStats=false" in flags
    # Same server settings as `c2s app`, apart from the address.
    assert flags == streamlit_command(host="0.0.0.0", port=8501, max_upload_mb=2048)[5:]
    workdir = _all(instructions, "WORKDIR")[-1].args
    assert (REPO / "webapp" / "app.py").is_file() and workdir == "/app"


def test_no_secrets_and_no_remote_add(instructions):
    for instruction in _all(instructions, "ADD"):
        assert not re.search(r"(https?|git)://|git@", instruction.args), instruction
    secretish = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|ACCESS_KEY)", re.IGNORECASE)
    for instruction in instructions:
        if instruction.keyword in {"ENV", "ARG", "LABEL"}:
            assert not secretish.search(instruction.args), instruction
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert "trust_remote_code" not in text


def test_dockerignore_keeps_local_state_and_data_out_of_the_image():
    patterns = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv/", "**/*.h5ad", ".env", ".streamlit/secrets.toml"} <= patterns
    # The files the build copies must not be ignored.
    assert not patterns & {"requirements.txt", "pyproject.toml", "README.md", "webapp", "pages"}
