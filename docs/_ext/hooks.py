"""mkdocs hooks: the version in the site header and footer, read from pyproject.toml (the one place
it is set). No public repository URL exists yet, so the footer says so instead of linking one."""

from __future__ import annotations

import re
from pathlib import Path


def on_config(config, **kwargs):
    pyproject = (Path(config["config_file_path"]).parent / "pyproject.toml").read_text(encoding="utf-8")
    version = re.search(r'^version\s*=\s*"([^"]+)"', pyproject, re.M).group(1)  # tomllib needs Python 3.11
    config["site_name"] = f"{config['site_name']} {version}"
    if not config.get("repo_url"):
        config["copyright"] = f"attnkit {version} · MIT License · no public repository URL has been published yet"
    return config
