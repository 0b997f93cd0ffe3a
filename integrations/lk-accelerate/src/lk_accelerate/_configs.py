"""The shipped ``accelerate launch`` config files: ddp, zero2, zero3 and fsdp2."""

from __future__ import annotations

from pathlib import Path

_DIRECTORY = Path(__file__).parent / "configs"


def config_names() -> list[str]:
    """Names accepted by ``config_path``, sorted."""
    return sorted(path.stem for path in _DIRECTORY.glob("*.yaml"))


def config_path(name: str) -> Path:
    """Path of a shipped config, for ``accelerate launch --config_file <path>``."""
    path = _DIRECTORY / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no accelerate config {name!r}; choose one of {config_names()}")
    return path
