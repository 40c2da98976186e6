"""The command reference (docs/reference.md), generated from the CLI itself so that it cannot drift.

Each region of docs/reference.md between `<!-- [[[reference:NAME]]] -->` and `<!-- [[[end]]] -->`
is replaced by the `--help` of that command (NAME `semcache` is the root), rendered by
Click at a fixed width: what a user sees, options, defaults, exit codes and examples.

    python docs/reference.py                  # rewrite docs/reference.md
    python docs/reference.py --check          # exit 1 naming the stale regions; nothing changed
    python docs/reference.py --check OTHER.md # the same for another file

tests/test_docs.py runs the check, so a changed option fails the suite until this is run.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REFERENCE = Path(__file__).resolve().with_name("reference.md")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's CLI, installed or not
WIDTH = 100
REGION = re.compile(r"(<!-- \[\[\[reference:(?P<name>[a-z]+)\]\]\] -->\n)(?P<body>.*?)(<!-- \[\[\[end\]\]\] -->)", re.S)


def help_text(name: str) -> str:
    """`semcache NAME --help` as Click renders it WIDTH columns wide, whatever the
    terminal."""
    from typer.core import TyperGroup
    from typer.main import get_command

    from semcache_cli.cli import app

    root = get_command(app)
    assert isinstance(root, TyperGroup)  # an app of several commands is a group
    # make_context applies the app's context settings (-h as well as --help); resilient
    # parsing, so the empty command line is no error. Subcommands inherit the width.
    with root.make_context("semcache", [], resilient_parsing=True, terminal_width=WIDTH,
                           max_content_width=WIDTH) as ctx:
        if name == "semcache":
            return root.get_help(ctx)
        command = root.get_command(ctx, name)
        if command is None:
            raise SystemExit(f"the reference names an unknown command: {name}")
        with command.make_context(name, [], parent=ctx, resilient_parsing=True) as sub:
            return str(command.get_help(sub))


def render(text: str) -> str:
    return REGION.sub(lambda m: f"{m.group(1)}```text\n{help_text(m.group('name'))}\n```\n{m.group(4)}", text)


def main(argv: list[str]) -> int:
    paths = [arg for arg in argv if not arg.startswith("--")]
    readme = Path(paths[0]) if paths else REFERENCE
    current = readme.read_text()
    wanted = render(current)
    if "--check" in argv:
        stale = [m.group("name") for m, n in zip(REGION.finditer(current), REGION.finditer(wanted), strict=True)
                 if m.group("body") != n.group("body")]
        if stale:
            print(f"{readme.name}: the reference of {', '.join(stale)} is out of date; run python docs/reference.py",
                  file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        readme.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
