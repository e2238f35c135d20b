"""The installed package must hold every config and module a run can choose (a non-editable
install copies only the packages pyproject.toml lists)."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _listed() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(project["tool"]["setuptools"]["packages"])


def test_every_config_directory_is_packaged() -> None:
    configs = ROOT / "configs"
    dirs = {p.parent for p in configs.rglob("*.yaml")}
    wanted = {".".join(("ebm_cli.configs", *d.relative_to(configs).parts)) for d in dirs}
    missing = sorted(wanted - _listed())
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_every_python_package_is_packaged() -> None:
    pkgs = {".".join(p.parent.relative_to(ROOT).parts)
            for p in (ROOT / "ebm_cli").rglob("__init__.py")}
    missing = sorted(pkgs - _listed())
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
