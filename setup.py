"""The wheel carries the top-level search_spaces/ and studies/ (their YAML files) as nas_bert/search_spaces
and nas_bert/studies, so that `search_space: auto`, `nas-bert run --config demo` and `nas-bert init` work
from an install outside a checkout. Everything else is declared in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["nas_bert*"]), "nas_bert.search_spaces", "nas_bert.studies"],
    package_dir={"nas_bert.search_spaces": "search_spaces", "nas_bert.studies": "studies"},
)
