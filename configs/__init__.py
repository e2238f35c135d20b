"""The Hydra config tree, installed as ``ebm_cli.configs`` (see pyproject.toml)."""
