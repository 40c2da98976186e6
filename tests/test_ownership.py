"""The default cache refuses a location another user could change, as ssh refuses its
keys: run as two real OS users, an attacker who plants an answer in a world-writable
XDG_CACHE_HOME and a victim (`nobody`) who asks there. A path the user named is their
choice: it is warned about, not refused."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO
from fake_ollama import FakeOllama

ATTACKER = "semcache-attacker"
VICTIM = "nobody"
QUESTION = "What is the deploy password?"
PLANTED = "It is hunter2; paste it into https://evil.example"


def _uid(name: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


@pytest.fixture(scope="module")
def users() -> tuple[int, int]:
    """(attacker uid, victim uid): two real users other than the one running the tests."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv, to run semcache as two other users")
    if _uid(ATTACKER) is None:
        if shutil.which("useradd") is None:
            pytest.skip("no useradd on this machine to make a second user")
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", ATTACKER],
                       check=True, capture_output=True)
    attacker, victim = _uid(ATTACKER), _uid(VICTIM)
    if attacker is None or victim is None:
        pytest.skip(f"no {VICTIM!r} user on this machine")
    return attacker, victim


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory both users can reach (pytest's own is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="semcache-owners-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def as_user(uid: int) -> list[str]:
    """The command prefix that runs a program as the user `uid`, with that user's group
    and no other (setpriv, from util-linux)."""
    import pwd

    return ["setpriv", f"--reuid={uid}", f"--regid={pwd.getpwuid(uid).pw_gid}", "--clear-groups"]


def run_as(uid: int, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """semcache as the user `uid`, with exactly `env` (no SEMCACHE_DB unless given)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SEMCACHE_", "XDG_"))}
    return subprocess.run([*as_user(uid), sys.executable, "-m", "semcache_cli", *args], capture_output=True,
                          text=True, cwd=REPO, stdin=subprocess.DEVNULL, timeout=60,
                          env={**clean, "HOME": "/nonexistent", "PYTHONDONTWRITEBYTECODE": "1", **env})


def plant(attacker: int, xdg: Path, ollama: FakeOllama) -> Path:
    """The attacker's cache where the victim's default one would be, holding a planted
    answer, open to everyone's writes (to collect the victim's questions too)."""
    ollama.replies[QUESTION] = PLANTED
    subprocess.run([*as_user(attacker), sys.executable, "-c", f"import os; os.mkdir({str(xdg / 'semcache')!r})"],
                   check=True)
    db = xdg / "semcache" / "cache.db"
    planted = run_as(attacker, "ask", QUESTION, env={"SEMCACHE_DB": str(db), "OLLAMA_HOST": ollama.url})
    assert planted.returncode == 0, planted.stderr
    (xdg / "semcache").chmod(0o777)
    db.chmod(0o666)
    return db


def log_rows(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM requests").fetchone()[0]


def test_a_planted_default_cache_is_refused_and_left_alone(users: tuple[int, int], shared: Path,
                                                           ollama: FakeOllama) -> None:
    attacker, victim = users
    xdg = shared / "xdg"
    xdg.mkdir(mode=0o777)
    xdg.chmod(0o777)  # a world-writable XDG_CACHE_HOME, as a shared CI box may have
    db = plant(attacker, xdg, ollama)
    before = log_rows(db)
    for args in (["ask", QUESTION], ["ask", "--cache-only", QUESTION], ["inspect"], ["stats"]):
        asked = run_as(victim, *args, env={"XDG_CACHE_HOME": str(xdg), "OLLAMA_HOST": ollama.url})
        assert asked.returncode == 2, (args, asked.stderr)
        assert PLANTED not in asked.stdout and "hunter2" not in asked.stdout
        assert asked.stderr.count("\n") == 1 and asked.stderr.startswith(
            f"semcache: error: refusing the cache at {db}: ")
    assert log_rows(db) == before  # not one of the victim's questions went into it


@pytest.mark.parametrize(("xdg_mode", "dir_mode", "owner", "reason"), [
    (0o1777, 0o700, "attacker", "belongs to another user"),  # sticky parent, but the attacker's directory
    (0o1777, 0o777, "victim", "other users can write to"),  # the victim's own, but open to all
    (0o777, 0o700, "victim", "not sticky"),  # the victim's own, in a parent anyone may rename it in
    (0o755, 0o700, "attacker-parent", "above it, belongs to another user"),
])
def test_what_is_unsafe_is_named(users: tuple[int, int], shared: Path, ollama: FakeOllama, xdg_mode: int,
                                 dir_mode: int, owner: str, reason: str) -> None:
    attacker, victim = users
    xdg = shared / "xdg"
    xdg.mkdir()
    xdg.chmod(xdg_mode)
    own = xdg / "semcache"
    own.mkdir()
    own.chmod(dir_mode)
    os.chown(own, attacker if owner == "attacker" else victim, -1)
    os.chown(xdg, attacker if owner == "attacker-parent" else 0, -1)
    asked = run_as(victim, "ask", QUESTION, env={"XDG_CACHE_HOME": str(xdg), "OLLAMA_HOST": ollama.url})
    assert asked.returncode == 2
    assert reason in asked.stderr and asked.stderr.startswith("semcache: error: refusing the cache at ")


def test_a_sticky_shared_parent_with_our_own_private_directory_is_fine(users: tuple[int, int], shared: Path,
                                                                        ollama: FakeOllama) -> None:
    _, victim = users
    xdg = shared / "tmp-like"
    xdg.mkdir()
    xdg.chmod(0o1777)  # like /tmp
    env = {"XDG_CACHE_HOME": str(xdg), "OLLAMA_HOST": ollama.url}
    first = run_as(victim, "ask", QUESTION, env=env)
    assert first.returncode == 0, first.stderr
    again = run_as(victim, "ask", "--cache-only", QUESTION, env=env)
    assert again.returncode == 0 and again.stdout == first.stdout and "exact" in again.stderr
    made = os.stat(xdg / "semcache")
    assert made.st_uid == victim and made.st_mode & 0o777 == 0o700


def test_a_named_file_of_another_user_is_used_with_a_warning(users: tuple[int, int], shared: Path,
                                                             ollama: FakeOllama) -> None:
    """--db names it: a team may share one file on purpose; the user is told, once."""
    attacker, victim = users
    xdg = shared / "theirs"
    xdg.mkdir()
    os.chown(xdg, attacker, -1)
    db = plant(attacker, xdg, ollama)
    asked = run_as(victim, "ask", "--cache-only", QUESTION, "--db", str(db), env={"OLLAMA_HOST": ollama.url})
    assert asked.returncode == 0 and asked.stdout == PLANTED + "\n"
    warnings = [line for line in asked.stderr.splitlines() if "warning" in line]
    assert warnings[0] == (f"semcache: warning: {db} belongs to another user (uid {attacker}): another user can "
                           "change the answers in this cache, and read your questions")


def test_a_planted_default_config_file_is_refused(users: tuple[int, int], shared: Path, ollama: FakeOllama) -> None:
    """The config file chooses the cache: one another user wrote in a world-writable
    XDG_CONFIG_HOME would send the victim's questions to the attacker's file."""
    attacker, victim = users
    loot = shared / "loot"
    loot.mkdir()
    os.chown(loot, attacker, -1)
    db = plant(attacker, loot, ollama)
    config_home = shared / "config"
    config_home.mkdir()
    config_home.chmod(0o777)
    content = f'db = "{db}"\n'
    subprocess.run([*as_user(attacker), sys.executable, "-c",
                    f"import os; os.mkdir({str(config_home / 'semcache')!r}); "
                    f"open({str(config_home / 'semcache' / 'config.toml')!r}, 'w').write({content!r})"], check=True)
    own_cache = shared / "cache"
    own_cache.mkdir()
    os.chown(own_cache, victim, -1)
    before = log_rows(db)
    asked = run_as(victim, "ask", QUESTION, env={"XDG_CONFIG_HOME": str(config_home), "XDG_CACHE_HOME": str(own_cache),
                                                 "OLLAMA_HOST": ollama.url})
    assert asked.returncode == 2, asked.stderr
    assert asked.stderr.startswith(f"semcache: error: refusing the config file {config_home}/semcache/config.toml: ")
    assert PLANTED not in asked.stdout and log_rows(db) == before
