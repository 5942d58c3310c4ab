"""Each overlay is rendered once per session (``kubectl kustomize``) and shared by every test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.k8s.manifests import OVERLAYS, Rendered, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, Rendered]:
    """Overlay name -> its rendering; skips loudly (see ``kubectl()``) where kubectl cannot render."""
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="session")
def rendered_dir(rendered: dict[str, Rendered], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The renderings as files, one per overlay, for the command-line validators."""
    directory = tmp_path_factory.mktemp("rendered")
    for overlay, result in rendered.items():
        (directory / f"{overlay}.yaml").write_text(result.text, encoding="utf-8")
    return directory
