"""The Helm chart's README.md is generated from values.yaml and lists every value."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import chart_readme

VALUES_TEXT = chart_readme.VALUES.read_text(encoding="utf-8")
_ROW = re.compile(r"^\| `(?P<key>[^`]+)` \| (?P<default>.*?) \| (?P<description>.*) \|$")


def _readme_rows() -> dict[str, tuple[str, str]]:
    """Key -> (default cell, description cell) of every table row of the committed README."""
    rows: dict[str, tuple[str, str]] = {}
    for line in chart_readme.README.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line)
        if match:
            assert match["key"] not in rows, f"{match['key']} is listed twice"
            rows[match["key"]] = (match["default"], match["description"])
    return rows


def _leaves(node: Any, path: str = "") -> Iterator[str]:
    """Dotted paths of every leaf of values.yaml: scalars, lists, empty maps, and keys inside maps."""
    if isinstance(node, dict) and node:
        for key, child in node.items():
            yield from _leaves(child, f"{path}.{key}" if path else key)
    else:
        yield path


def test_committed_readme_is_the_generated_one() -> None:
    generated = chart_readme.render(VALUES_TEXT)
    assert chart_readme.README.read_text(encoding="utf-8") == generated, (
        "deploy/helm/speechkit-operator/README.md is stale: run python -m devstack.chart_readme"
    )
    assert chart_readme.main(["--check"]) == 0


def test_readme_lists_every_value_of_values_yaml() -> None:
    """Each leaf has its own row, or sits inside an object documented as a whole (with its default)."""
    rows = _readme_rows()
    missing = []
    for leaf in _leaves(yaml.safe_load(VALUES_TEXT)):
        parts = leaf.split(".")
        owners = [".".join(parts[:end]) for end in range(len(parts), 0, -1)]
        owner = next((key for key in owners if key in rows), None)
        if owner is None:
            missing.append(leaf)
        elif owner != leaf:
            default, _ = rows[owner]
            # Documented whole: every key below it shows in the default.
            if any(f'"{part}"' not in default for part in parts[len(owner.split(".")) :]):
                missing.append(leaf)
    assert missing == []
    for key in ("logFormat", "extraEnvFrom", "extraVolumes", "extraVolumeMounts"):
        assert key in rows and f"recognizer.{key}" in rows, key
    assert "settings.ca_bundle" in rows
    assert all(description.strip() for _, description in rows.values())


def test_readme_intro_covers_install_upgrade_and_the_crd_caveat() -> None:
    text = chart_readme.README.read_text(encoding="utf-8")
    for needle in (
        "helm install speechkit deploy/helm/speechkit-operator",
        "helm upgrade speechkit",
        "helm uninstall speechkit",
        "never upgrades\nor deletes it. With every upgrade, apply it yourself",
        "kubectl apply -f deploy/crds/",
        "ca_bundle: /etc/speechkit/ca/ca.crt",
        "HTTPS_PROXY",
        "NO_PROXY",
    ):
        assert needle in text, needle


def test_both_comment_styles_are_read_and_normalised() -> None:
    text = """\
# A header, detached from the first key by a blank line.

# -- Helm-docs style,
# continued.
first: 1
group:
  # --- A section header ---
  # Plain style.
  plain: ""
  # Other indentation: not this key's.
    # Nor this one.
  undocumented: []
whole:
  a: 1
"""
    found = chart_readme.comments(text)
    assert found == {"first": "Helm-docs style, continued.", "group.plain": "Plain style."}
    with pytest.raises(chart_readme.UndocumentedValuesError) as error:
        chart_readme.sections(text)
    assert error.value.keys == ("group.undocumented", "whole")


def test_maps_expand_when_their_keys_are_documented() -> None:
    text = """\
# -- Documented as a whole: its keys have no comments.
resources:
  requests:
    cpu: 50m
# -- A section of its own.
settings:
  # The value.
  value: 1.5
image:
  # -- Repository.
  repository: x
"""
    general, settings = chart_readme.sections(text)
    assert [(row.key, row.default, row.group) for row in general.rows] == [
        ("resources", {"requests": {"cpu": "50m"}}, False),
        ("image.repository", "x", False),
    ]
    assert (settings.key, settings.intro) == ("settings", "A section of its own.")
    assert [(row.key, row.default) for row in settings.rows] == [("settings.value", 1.5)]
    rendered = chart_readme.render(text)
    assert '| `resources` | `{"requests": {"cpu": "50m"}}` | Documented as a whole' in rendered
    assert "### `settings`\n\nA section of its own.\n" in rendered


def test_markdown_is_escaped_outside_code_spans() -> None:
    text = """\
# -- Rendered as SPEECHKIT_<KEY> or `SPEECHKIT_<KEY>`; plain|json.
key: "a|b"
"""
    rendered = chart_readme.render(text)
    assert (
        '| `key` | `"a\\|b"` | Rendered as SPEECHKIT_&lt;KEY&gt; or `SPEECHKIT_<KEY>`; plain\\|json. |'
        in rendered
    )


def test_check_reports_a_stale_readme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "README.md"
    stale.write_text("# old\n", encoding="utf-8")
    monkeypatch.setattr(chart_readme, "README", stale)
    monkeypatch.setattr(chart_readme, "REPO_ROOT", tmp_path)
    assert chart_readme.main(["--check"]) == 1
    captured = capsys.readouterr()
    assert "-# old" in captured.out
    assert "is stale: run python -m devstack.chart_readme" in captured.err
    assert chart_readme.main([]) == 0
    assert stale.read_text(encoding="utf-8") == chart_readme.render(VALUES_TEXT)
    assert chart_readme.main(["--check"]) == 0
