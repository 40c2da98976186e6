"""Shell completion, as Typer and Click users expect it: `--show-completion` and
`--install-completion` on the root command, `_SEMCACHE_COMPLETE` in either order, the
completion requests of bash, zsh and fish, and the scripts loaded by the real shells
(each skipped where that shell is not installed). A command's own process never builds
the completion options."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

BIN = Path(sys.executable).parent  # where the venv installed the `semcache` script


def shell_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("_SEMCACHE_COMPLETE", "COMP_WORDS", "COMP_CWORD")}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", **extra}


def semcache(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semcache_cli", *args], capture_output=True, text=True,
                          env=shell_env(**env), cwd=REPO, stdin=subprocess.DEVNULL, timeout=60)


def in_shell(shell: str, script: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`script` run by a real `shell`, which is then semcache's parent: the shell that
    --show-completion and --install-completion detect."""
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    env = shell_env(**({"HOME": str(home)} if home else {}))
    return subprocess.run([shell, "-c", script], capture_output=True, text=True, env=env, cwd=REPO,
                          stdin=subprocess.DEVNULL, timeout=60)


@pytest.mark.parametrize(("shell", "marker"), [
    ("bash", "complete -o default -F _semcache_completion semcache"),
    ("zsh", "compdef _semcache_completion semcache"),
    ("fish", "complete --command semcache"),
])
@pytest.mark.parametrize("order", ["typer", "click"])
def test_the_completion_script_of_each_shell(shell: str, marker: str, order: str) -> None:
    instruction = f"source_{shell}" if order == "typer" else f"{shell}_source"  # Click users write bash_source
    result = semcache(_SEMCACHE_COMPLETE=instruction)
    assert result.returncode == 0 and result.stderr == ""
    assert marker in result.stdout and "_SEMCACHE_COMPLETE=complete_" + shell in result.stdout


def test_a_bash_completion_request_returns_commands_and_options() -> None:
    commands = semcache(_SEMCACHE_COMPLETE="complete_bash", COMP_WORDS="semcache ", COMP_CWORD="1")
    assert commands.stdout.split() == ["ask", "purge", "stats", "replay", "copy", "inspect", "calibrate", "serve"]
    options = semcache(_SEMCACHE_COMPLETE="complete_bash", COMP_WORDS="semcache ask --n", COMP_CWORD="2")
    assert options.stdout.split() == ["--namespace", "--no-cache", "--no-store"]
    purge = semcache(_SEMCACHE_COMPLETE="complete_bash", COMP_WORDS="semcache purge -", COMP_CWORD="2")
    assert {"--expired", "--dry-run", "--yes", "--quiet", "-q"} <= set(purge.stdout.split())


def test_zsh_and_fish_completion_requests() -> None:
    zsh = semcache(_SEMCACHE_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS="semcache rep")
    assert '"replay":"Run many queries through the cache' in zsh.stdout
    fish = semcache(_SEMCACHE_COMPLETE="complete_fish", _TYPER_COMPLETE_ARGS="semcache inspect --sim",
                    _TYPER_COMPLETE_FISH_ACTION="get-args")
    assert fish.stdout.startswith("--similar\tThe nearest entries to TEXT")


def test_bash_loads_the_script_and_completes() -> None:
    result = in_shell("bash", 'eval "$(semcache --show-completion)"\n'
                      "COMP_WORDS=(semcache st); COMP_CWORD=1; _semcache_completion semcache\n"
                      'printf "%s\\n" "${COMPREPLY[@]}"\n'
                      "COMP_WORDS=(semcache copy --f); COMP_CWORD=2; _semcache_completion semcache\n"
                      'printf "%s\\n" "${COMPREPLY[@]}"\n')
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["stats", "--from"]


def test_fish_loads_the_script_and_completes() -> None:
    result = in_shell("fish", 'semcache --show-completion | source\ncomplete -C "semcache pu"\n'
                      'complete -C "semcache purge --dry"\n')
    assert result.returncode == 0, result.stderr
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["purge", "--dry-run"]


def test_zsh_loads_the_script(tmp_path: Path) -> None:
    result = in_shell("zsh", f"autoload -Uz compinit && compinit -u -d {tmp_path}/zcompdump\n"
                      'eval "$(semcache --show-completion)"\nprint -r -- $_comps[semcache]\n')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "_semcache_completion"  # registered for semcache by compdef


def test_install_completion_for_bash(tmp_path: Path) -> None:
    # not the script's only command: bash would exec it, and its parent would not be bash
    result = in_shell("bash", "semcache --install-completion; exit $?", home=tmp_path)
    assert result.returncode == 0, result.stderr
    script = tmp_path / ".bash_completions" / "semcache.sh"
    assert "complete -o default -F _semcache_completion semcache" in script.read_text()
    assert f"source '{script}'" in (tmp_path / ".bashrc").read_text()


def test_only_the_root_command_has_the_completion_options() -> None:
    root = semcache("--help")
    assert "--install-completion" in root.stdout and "--show-completion" in root.stdout
    ask = semcache("ask", "--help")  # a command's process never builds them
    assert ask.returncode == 0 and "completion" not in ask.stdout
    misplaced = semcache("ask", "--show-completion")
    assert misplaced.returncode == 2
    assert misplaced.stderr.startswith("semcache: error: no such option: --show-completion")
