"""LiteLLM proxy in its own virtual environment, `bench/.venv-litellm`, installed on first use.

LiteLLM pins versions of packages that meterway also uses (pydantic, httpx, openai), so it
never goes into the project's `.venv`.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
VENV = Path(__file__).resolve().parent / ".venv-litellm"
REQUIREMENT = "litellm[proxy]"


class LiteLLMUnavailable(RuntimeError):
    """LiteLLM could not be installed or found; the report lists it as missing."""


def _run(command: list[str], timeout: float) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise LiteLLMUnavailable(f"{' '.join(command)} failed with exit {done.returncode}: {done.stderr[-800:]}")


def ensure_litellm(timeout: float = 900.0) -> Path:
    """Return the `litellm` executable, creating the venv and installing it when missing."""
    executable = VENV / "bin" / "litellm"
    if executable.exists():
        return executable
    try:
        if not (VENV / "bin" / "python").exists():
            python = subprocess.run([str(REPO / "scripts" / "find-python")], capture_output=True, text=True,
                                    check=True).stdout.strip()
            logger.info("creating %s with %s", VENV, python)
            _run([python, "-m", "venv", str(VENV)], timeout=120)
        logger.info("installing %s into %s (first use; this takes a few minutes)", REQUIREMENT, VENV)
        _run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", REQUIREMENT], timeout=timeout)
    except (subprocess.SubprocessError, OSError) as error:
        raise LiteLLMUnavailable(f"cannot install {REQUIREMENT} into {VENV}: {error}") from None
    if not executable.exists():
        raise LiteLLMUnavailable(f"{REQUIREMENT} installed but {executable} is missing")
    return executable


def litellm_command() -> list[str]:
    """Return the command that starts the LiteLLM proxy, installing it first if needed."""
    return [str(ensure_litellm())]
