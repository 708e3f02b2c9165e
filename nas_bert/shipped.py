"""What the package ships besides its code: the search spaces and the example studies.

Their sources are the top-level search_spaces/ and studies/ folders of a checkout; a wheel carries them as
nas_bert/search_spaces and nas_bert/studies (setup.py maps them), so the same names work from either.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(kind: str) -> Path:
    """The folder of shipped `kind` files ("search_spaces" or "studies"): the wheel's copy inside the package,
    else the checkout's top-level folder (a source checkout or an editable install)."""
    inside = _PACKAGE / kind
    return inside if inside.is_dir() else _PACKAGE.parent / kind


def shipped_names(kind: str) -> list[str]:
    """The names of the shipped `kind` files (their stems)."""
    return sorted(p.stem for p in shipped_dir(kind).glob("*.yaml"))


def shipped_file(kind: str, name: str) -> Path | None:
    """The shipped file `name` of `kind` (a bare name, no folder or suffix), or None."""
    raw = Path(name)
    if raw.suffix in (".yaml", ".yml") or len(raw.parts) != 1:
        return None
    path = shipped_dir(kind) / f"{name}.yaml"
    return path if path.is_file() else None

