"""The documents stay true to the repository: the DAG picture shows every component and channel of the pipeline,
and every relative link in README.md and docs/*.md reaches a file (and a heading, when it names one)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _load_dag_script():
    spec = importlib.util.spec_from_file_location("docs_dag", ROOT / "docs" / "dag.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_dag_picture_shows_every_component_and_channel(tmp_path):
    from pipeline.configs import preset
    from pipeline.pipeline import create_components

    components = create_components(preset("demo"))
    out = tmp_path / "dag.png"
    drawing = _load_dag_script().draw(out, components)

    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawing.component_ids == {component.id for component in components}
    channels = {(channel.producer_component_id, component.id)
                for component in components for channel in component.inputs.values()
                if getattr(channel, "producer_component_id", None)}
    channels |= {(upstream.id, component.id) for component in components for upstream in component.upstream_nodes}
    assert channels, "the pipeline's channels were not found"
    assert drawing.edges == channels


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(heading) for heading in HEADING.findall(FENCE.sub("", path.read_text()))}


def _relative_links(path: Path) -> list[str]:
    return [target for target in LINK.findall(FENCE.sub("", path.read_text()))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_heading(document):
    assert document.exists()
    broken = []
    for target in _relative_links(document):
        file_part, _, anchor = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not broken, f"{document.name}: " + "; ".join(broken)


def test_the_readme_shows_the_dag_picture():
    assert "docs/pipeline-dag.png" in _relative_links(ROOT / "README.md")
