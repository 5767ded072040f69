"""Issue 29: docs that are tested. The reference pages are generated from the code and current; every config key,
sweep key, CLI flag and metric has a description; every shell command in a fenced block of the README and the docs
is accepted by the real CLI (with --print-config or --dry-run where it would train or submit); every relative link
and anchor resolves; the README stays short. The built site in Chromium: tests/test_docs_site.py."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
import unicodedata
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "docs"))
import gen_ref  # noqa: E402  (docs/ is not a package)
import ref_text  # noqa: E402

README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").rglob("*.md"))
SHELL = ("bash", "sh", "shell", "console")


# --------------------------------------------------------------------------------------------- generated references


def test_reference_pages_are_generated_from_the_current_code():
    stale = [rel for rel, text in gen_ref.render_all().items() if (ROOT / "docs" / rel).read_text() != text]
    assert stale == [], f"out of date: {stale}; run .venv/bin/python docs/gen_ref.py"


def test_every_config_key_sweep_key_cli_flag_and_metric_has_a_description():
    assert gen_ref.problems() == []


def test_the_references_list_every_key_flag_and_metric():
    from overparam_dist.config import Config, flatten, to_dict

    pages = gen_ref.render_all()
    config = pages["reference/config.md"]
    for key, default in flatten(to_dict(Config())).items():
        row = re.search(rf"^\| `{re.escape(key)}` \| [^|]+ \| (`[^`]*`) \|", config, re.M)
        assert row, f"the configuration reference lacks {key}"
        assert row.group(1) == gen_ref.code(default), (key, row.group(1))
    from launcher.sweep.schema import SWEEP_KEYS

    assert all(re.search(rf"^\| `{k}(\.\w+)?` \|", pages["reference/sweep.md"], re.M) for k in SWEEP_KEYS)
    cli = pages["reference/cli.md"]
    for name, parser, _ in gen_ref.cli_commands():
        assert f"## `{name}`" in cli
        for action in parser._actions:
            assert all(flag in cli for flag in action.option_strings), (name, action.option_strings)
    metrics = pages["reference/metrics.md"]
    assert all(f"### `{key}`" in metrics for key in gen_ref.metric_keys())
    assert set(gen_ref.metric_data()) == set(gen_ref.metric_keys())


def test_a_field_without_a_comment_is_found(tmp_path):
    """The comment rules of ref_text.field_comments (gen_ref's), on a schema written here: one on the field's line,
    continued below it; a block above a field without one of its own; and a field with none, which problems()
    reports."""
    src = tmp_path / "schema.py"
    src.write_text(
        "from dataclasses import dataclass\n\n\n@dataclass\nclass S:\n"
        "    a: int = 1  # the a\n    # continued\n"
        "    b: str = 'x'  # the b\n"
        "    # the c, from above\n    c: float = 0.5\n"
        "    d: bool = False\n")
    assert ref_text.field_comments(src, "S") == {"a": "the a continued", "b": "the b", "c": "the c, from above",
                                               "d": ""}


# --------------------------------------------------------------------------------------------- commands in the docs


def _blocks(path: Path):
    """(line number, language, lines) of every fenced code block."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\w*)", lines[i])
        if m:
            start, lang, body = i + 1, m.group(2), []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            yield start, lang, body
        i += 1


def _commands():
    """(where, argv) of every command line in a shell block of the README and the docs; `\\` continues a line."""
    found = []
    for path in [README, *PAGES]:
        for start, lang, body in _blocks(path):
            if lang not in SHELL:
                continue
            joined, first = "", None
            for n, line in enumerate(body):
                line = line.strip()
                if lang == "console":
                    if not line.startswith("$ ") and not joined:
                        continue
                    line = line.removeprefix("$ ")
                first = first if joined else start + n + 1
                if line.endswith("\\"):
                    joined += line[:-1] + " "
                    continue
                argv = shlex.split(joined + line, comments=True)
                joined = ""
                if argv:
                    found.append((f"{path.relative_to(ROOT)}:{first}", argv))
    return found


COMMANDS = _commands()
MAKE_TARGETS = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))


def _cli_args(argv: list[str]) -> list[str] | None:
    """The `overparam` arguments of a command line, or None when it does not run the CLI."""
    if argv[0] in ("overparam", ".venv/bin/overparam"):
        return argv[1:]
    for i in range(len(argv) - 2):
        if argv[i].endswith("python") and argv[i + 1:i + 3] == ["-m", "launcher"]:
            return argv[i + 3:]
        if argv[0] == "torchrun" and argv[i:i + 2] == ["-m", "launcher"]:
            return argv[i + 2:]
    return None


def _run_cli(args: list[str]) -> tuple[int, str]:
    from launcher import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(args)
        except SystemExit as exc:  # argparse's errors
            rc = exc.code if isinstance(exc.code, int) else 1
    return rc, out.getvalue() + err.getvalue()


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_is_accepted(where, argv, monkeypatch):
    """`overparam train` runs with --print-config, `sweep` and `submit slurm` with --dry-run (every trial's config
    validated, nothing written); the commands that would reach a cluster (submit ray, jobs, report of a run that is
    not here, wandb sync) are parsed by the CLI's own parser. `make TARGET` names a target of the Makefile."""
    monkeypatch.chdir(ROOT)
    if argv[0] == "sudo":
        argv = argv[1:]
    if argv[0] == "make":
        assert set(argv[1:]) <= MAKE_TARGETS, f"{where}: no such make target {argv[1:]}"
        return
    if argv[0] == "slurm/local-cluster.sh":
        assert (ROOT / argv[0]).is_file() and argv[1] in ("start", "stop", "status"), where
        return
    if argv[:3] == [".venv/bin/python", "-m", "launcher.demo"]:
        assert (ROOT / "launcher" / "demo.py").is_file()
        return
    args = _cli_args(argv)
    if args is None:
        return  # not ours: wandb login, pip install, ssh, kill, squeue ...
    from launcher import cli

    parsed = cli.parse(args)  # argparse exits 2 on a bad flag
    command = [parsed.command] + ([parsed.target] if parsed.command == "submit" else [])
    if command == ["train"]:
        rc, out = _run_cli(args + ([] if "--print-config" in args else ["--print-config"]))
    elif command in (["sweep"], ["submit", "slurm"]):
        rc, out = _run_cli(args + ([] if "--dry-run" in args else ["--dry-run"]))
    elif command == ["presets"]:
        rc, out = _run_cli(args)
    else:
        return  # parsed above; running it needs a cluster, a finished run or a W&B login
    assert rc == 0, f"{where}: `{shlex.join(argv)}` was rejected: {out.strip().splitlines()[-1:]}"


def test_the_documented_commands_cover_every_kind():
    kinds = {tuple(_cli_args(a)[:1]) for _, a in COMMANDS if _cli_args(a)}
    assert {("train",), ("sweep",), ("submit",), ("jobs",), ("report",), ("wandb",)} <= kinds
    assert len([a for _, a in COMMANDS if _cli_args(a)]) >= 40


def test_python_blocks_compile():
    for path in [README, *PAGES]:
        for start, lang, body in _blocks(path):
            if lang == "python":
                compile("\n".join(body), f"{path.relative_to(ROOT)}:{start}", "exec")


# --------------------------------------------------------------------------------------------- links


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug (what mkdocs makes the anchor), of the heading's text without markup."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(path: Path) -> set[str]:
    text = path.read_text()
    text = re.sub(r"(?ms)^```.*?^```", "", text)  # no headings inside code blocks
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*$", text, re.M)}


def _links(path: Path):
    text = re.sub(r"(?ms)^\s*```.*?^\s*```", "", path.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    for m in re.finditer(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        yield m.group(1)


def test_every_relative_link_and_anchor_resolves():
    bad = []
    for path in [README, *PAGES]:
        for link in _links(path):
            if re.match(r"^[a-z]+:", link):
                continue  # http(s), mailto: not ours to check here
            target, _, anchor = link.partition("#")
            dest = (path.parent / target).resolve() if target else path
            if not dest.is_file():
                bad.append(f"{path.relative_to(ROOT)}: {link} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{path.relative_to(ROOT)}: {link} (no heading #{anchor})")
            elif path == README and target and not target.startswith("docs/"):
                bad.append(f"README.md: {link} (the site's landing page is the README: link into docs/ only)")
    assert bad == []


# --------------------------------------------------------------------------------------------- the README


def test_the_readme_is_short_and_one_click_from_what_a_newcomer_needs():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    links = set(_links(README))
    assert {"docs/reference/config.md", "docs/reproductions/index.md", "docs/getting-started.md"} <= links
    assert "## What the demo prints, and how to read it" in text
    assert all(f"docs/reproductions/{p.stem}.md" in links for p in (ROOT / "configs" / "repro").glob("*.yaml"))
    assert any(link.startswith("docs/figures/") for link in links)  # one picture


def test_every_reproduction_page_has_its_figure_claim_and_command():
    for sweep in sorted((ROOT / "configs" / "repro").glob("*.yaml")):
        page = (ROOT / "docs" / "reproductions" / f"{sweep.stem}.md").read_text()
        assert f"](../figures/{sweep.stem}.png)" in page and "**Claim.**" in page, sweep.stem
        assert f"overparam sweep --config configs/repro/{sweep.stem}.yaml" in page, sweep.stem
