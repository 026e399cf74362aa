"""Generate the Helm chart's README.md from the comments in its values.yaml.

    python -m devstack.chart_readme            # write deploy/helm/speechkit-operator/README.md
    python -m devstack.chart_readme --check    # exit 1, with a diff, when the README is stale

Every key of values.yaml is documented by the comment block directly above it (no blank line in
between). Both comment styles of the file are read: ``# -- text`` (helm-docs) and ``# text``;
section headers such as ``# --- Storage ---`` are dropped. A non-empty map whose keys carry comments
is expanded into one row per key; any other value (a scalar, a list, an empty map, or a map such
as ``resources`` whose keys carry no comments) is one row with its default. A top-level expanded
map with a comment (``settings``, ``recognizer``) gets a section of its own. A key without a
comment is an error, so the README lists every value.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CHART = REPO_ROOT / "deploy" / "helm" / "speechkit-operator"
VALUES = CHART / "values.yaml"
README = CHART / "README.md"

_KEY = re.compile(r"^( *)([A-Za-z_][A-Za-z0-9_]*):(?:\s|$)")
_COMMENT = re.compile(r"^( *)#(.*)$")
_SECTION_HEADER = re.compile(r"^---\s.*\s---$")


class UndocumentedValuesError(ValueError):
    """Keys of values.yaml without a comment above them."""

    def __init__(self, keys: Sequence[str]) -> None:
        super().__init__("values.yaml keys without a comment directly above them: " + ", ".join(keys))
        self.keys = tuple(keys)


@dataclass(frozen=True)
class Row:
    """One line of a values table: a value with its default, or an expanded map (``group``)."""

    key: str
    description: str
    default: Any = None
    group: bool = False


@dataclass(frozen=True)
class Section:
    """A top-level expanded map with a comment: its own heading, intro and table."""

    key: str
    intro: str
    rows: tuple[Row, ...]


def _normalise(lines: Sequence[str]) -> str:
    """One comment block as one line of text: ``-- `` markers and section headers dropped."""
    parts: list[str] = []
    for line in lines:
        text = line[1:] if line.startswith(" ") else line
        text = text.rstrip()
        if _SECTION_HEADER.match(text.strip()):
            continue
        if not parts and text.startswith("-- "):
            text = text[3:]
        parts.append(text.strip())
    return " ".join(part for part in parts if part)


def comments(text: str) -> dict[str, str]:
    """Dotted key -> the normalised comment block directly above it, for every mapping key.

    Only comments at the key's own indentation count. Keys inside lists are not tracked.
    """
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    block: list[tuple[int, str]] = []
    for line in text.splitlines():
        comment = _COMMENT.match(line)
        if comment:
            block.append((len(comment.group(1)), comment.group(2)))
            continue
        key = _KEY.match(line)
        if key:
            indent, name = len(key.group(1)), key.group(2)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, name))
            own: list[str] = []
            for comment_indent, comment_text in reversed(block):
                if comment_indent != indent:
                    break
                own.insert(0, comment_text)
            description = _normalise(own)
            if description:
                found[".".join(part for _, part in stack)] = description
        block = []
    return found


def _expanded(value: Any, path: str, described: Mapping[str, str]) -> bool:
    return isinstance(value, dict) and bool(value) and any(f"{path}.{key}" in described for key in value)


def _rows(values: Mapping[str, Any], described: Mapping[str, str], prefix: str) -> Iterator[Row]:
    for key, value in values.items():
        path = f"{prefix}{key}"
        description = described.get(path, "")
        if _expanded(value, path, described):
            if description:
                yield Row(path, description, group=True)
            yield from _rows(value, described, f"{path}.")
        else:
            yield Row(path, description, value)


def sections(text: str) -> list[Section]:
    """The values of ``text`` (values.yaml) as sections of rows, in file order.

    The first section (key ``""``) holds every top-level value outside the described maps.
    """
    values = yaml.safe_load(text) or {}
    described = comments(text)
    general: list[Row] = []
    found: list[Section] = []
    for key, value in values.items():
        if _expanded(value, key, described) and key in described:
            rows = tuple(_rows(value, described, f"{key}."))
            found.append(Section(key, described[key], rows))
        else:
            general.extend(_rows({key: value}, described, ""))
    result = [Section("", "", tuple(general)), *found]
    missing = [row.key for section in result for row in section.rows if not row.description]
    if missing:
        raise UndocumentedValuesError(missing)
    return result


def _markdown(text: str, *, cell: bool = True) -> str:
    """Markdown of comment text: ``<``, ``>`` and ``&`` escaped outside code spans; in a table
    ``cell``, ``|`` escaped everywhere (GitHub's tables split cells at it even in code spans).
    """
    pieces = text.split("`")
    for index in range(0, len(pieces), 2):  # outside code spans
        pieces[index] = pieces[index].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    joined = "`".join(pieces)
    return joined.replace("|", "\\|") if cell else joined


def _default(row: Row) -> str:
    if row.group:
        return ""
    rendered = json.dumps(row.default, ensure_ascii=False, separators=(", ", ": "))
    return "`" + rendered.replace("|", "\\|") + "`"


def _table(rows: Sequence[Row]) -> list[str]:
    lines = ["| Key | Default | Description |", "|---|---|---|"]
    lines += [f"| `{row.key}` | {_default(row)} | {_markdown(row.description)} |" for row in rows]
    return lines


INTRO = """\
# speechkit-operator Helm chart

<!-- Generated by `python -m devstack.chart_readme` from values.yaml and its comments: edit those
     (or the intro in devstack/chart_readme.py) and run it again. A unit test keeps it in step. -->

The chart installs [speechkit-operator](../../../README.md), a Kubernetes operator that turns
speech in S3-compatible buckets into transcripts with Yandex SpeechKit's asynchronous recognition
API, into the release namespace:

- the `TranscriptionJob` CRD (`transcriptionjobs.speechkit.dev`), from the chart's `crds/` folder;
- the operator's Deployment: one replica with the `Recreate` strategy (kopf runs one operator at a
  time), non-root, read-only root filesystem, no capabilities;
- its ServiceAccount and least-privilege RBAC: a ClusterRole when `watchNamespaces` is empty,
  otherwise a Role and RoleBinding in each listed namespace;
- with `recognizer.enabled=true`, the self-hosted SpeechKit-compatible recognition service
  (`speechkit-operator serve`): a Deployment, a ClusterIP Service and a ServiceAccount without RBAC
  or token, with the operator pointed at it.

The images are built from the repository's `Dockerfile`: the default target is the operator,
`--target recognizer` the recognition service.

## Install, upgrade, uninstall

```sh
helm install speechkit deploy/helm/speechkit-operator \\
  --namespace speechkit-system --create-namespace \\
  --set image.repository=registry.example.com/speechkit-operator --set image.tag=0.1.0

kubectl apply -f deploy/crds/        # with every upgrade: Helm does not upgrade CRDs
helm upgrade speechkit deploy/helm/speechkit-operator --namespace speechkit-system -f my-values.yaml

helm uninstall speechkit --namespace speechkit-system
```

**The CRD.** Helm installs the CRD from `crds/` on the first `helm install` only: it never upgrades
or deletes it. With every upgrade, apply it yourself, before `helm upgrade`:
`kubectl apply -f deploy/crds/` (the chart's `crds/` holds the same file), or
`helm show crds deploy/helm/speechkit-operator | kubectl apply -f -`. `helm uninstall` leaves the
CRD and every TranscriptionJob in place; `kubectl delete crd transcriptionjobs.speechkit.dev`
removes them, every job with it.

**Checked values.** `values.schema.json` rejects unknown keys and wrong types: a typo such as
`--set settings.bakend=self-hosted` or `settings.http_timeout: soon` stops `helm install`,
`helm upgrade` and `helm template` with a message naming the key. `helm --set` passes decimals as
text (`--set settings.http_timeout=12.5`); number settings accept that. A settings value that is
empty or null leaves its environment variable unset, so the program's built-in default applies.

## A private CA, a proxy, JSON logs

Mount a CA bundle (from a ConfigMap or a Secret) and point `settings.ca_bundle` at it; set the
proxy variables with `extraEnv` (or from a ConfigMap with `extraEnvFrom`):

```yaml
settings:
  ca_bundle: /etc/speechkit/ca/ca.crt     # replaces the system's CAs for SpeechKit, IAM and S3
extraVolumes:
  - name: ca-bundle
    configMap:
      name: corporate-ca                  # or: secret: {secretName: corporate-ca}
extraVolumeMounts:
  - name: ca-bundle
    mountPath: /etc/speechkit/ca
    readOnly: true
extraEnv:
  - name: HTTPS_PROXY
    value: http://proxy.example:3128
  - name: NO_PROXY                        # the API server's ClusterIP and in-cluster services
    value: .svc,.cluster.local,10.96.0.0/12
logFormat: json                           # one JSON object per line, for a log collector
```

The recognition service has the same `recognizer.extraVolumes`, `recognizer.extraVolumeMounts`,
`recognizer.extraEnv`, `recognizer.extraEnvFrom` and `recognizer.logFormat`; for a private CA there,
set `SSL_CERT_FILE` (http(s) audio URIs) and `AWS_CA_BUNDLE` (`s3://` URIs) to the mounted file.

## Values
"""


def render(text: str) -> str:
    """The README for ``text``, the content of values.yaml."""
    lines = [INTRO.rstrip("\n"), ""]
    for section in sections(text):
        if section.key:
            lines += [f"### `{section.key}`", "", _markdown(section.intro, cell=False), ""]
        else:
            lines += ["### General", ""]
        lines += [*_table(section.rows), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.chart_readme",
        description="Generate the Helm chart's README.md from the comments in its values.yaml.",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 with a diff when README.md is stale")
    args = parser.parse_args(argv)
    try:
        expected = render(VALUES.read_text(encoding="utf-8"))
    except UndocumentedValuesError as exc:
        print(f"chart_readme: {exc}", file=sys.stderr)
        return 1
    current = README.read_text(encoding="utf-8") if README.exists() else ""
    if not args.check:
        if current != expected:
            README.write_text(expected, encoding="utf-8")
            print(f"wrote {README.relative_to(REPO_ROOT)}")
        return 0
    if current == expected:
        return 0
    diff = difflib.unified_diff(
        current.splitlines(keepends=True),
        expected.splitlines(keepends=True),
        fromfile=f"{README.relative_to(REPO_ROOT)} (committed)",
        tofile=f"{README.relative_to(REPO_ROOT)} (generated)",
    )
    sys.stdout.writelines(diff)
    print(
        f"{README.relative_to(REPO_ROOT)} is stale: run python -m devstack.chart_readme",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
