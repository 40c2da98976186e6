"""Settings precedence, durations, options typing and OLLAMA_HOST parsing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from semcache_cli import config
from semcache_cli.errors import UsageError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("2h", 7200), ("7d", 604800), ("1w", 604800), ("1h30m", 5400),
     ("1.5h", 5400), ("250ms", 0.25), (" 2H ", 7200), ("5 m", 300)],
)
def test_durations(text: str, seconds: float) -> None:
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "-5m", "5 m m", "1e400", "h"])
def test_bad_durations_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="not a duration"):
        config.parse_duration(text)


SECONDS_PER = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
HUNDRED_YEARS_S = 3_155_760_000  # 100 Julian years: the documented maximum


@given(st.integers(0, 10**6), st.sampled_from(sorted(SECONDS_PER)))
def test_duration_units_multiply_up_to_the_documented_maximum(count: int, unit: str) -> None:
    seconds = count * SECONDS_PER[unit]
    if seconds <= HUNDRED_YEARS_S:
        assert config.parse_duration(f"{count}{unit}") == seconds
    else:
        with pytest.raises(UsageError, match=r"is longer than semcache allows \(100 years"):
            config.parse_duration(f"{count}{unit}")


@pytest.mark.parametrize(("text", "message"), [
    ("45", "'45' has no unit: write 45s, 45m, 45h or 45d (units ms, s, m, h, d, w"),
    (" 0.5 ", "'0.5' has no unit: write 0.5s, 0.5m, 0.5h or 0.5d"),
    ("1h30", "'1h30': 30 has no unit (units ms, s, m, h, d, w"),
])
def test_a_duration_needs_its_unit(text: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        config.parse_duration(text, "--ttl")
    assert str(caught.value).startswith(f"--ttl: {message}")


def test_a_size_needs_its_unit() -> None:
    with pytest.raises(UsageError) as caught:
        config.parse_size("500", "--max-size")
    assert str(caught.value) == ("--max-size: '500' has no unit: write 500MB, 500GB, or 500B for bytes (units B, KB, "
                                 "MB, GB, TB, KiB, MiB, GiB, TiB: e.g. 500MB, 2GB, 64MiB, 4096B)")


@pytest.mark.parametrize(
    ("text", "size"),
    [("500MB", 500_000_000), ("1.5GB", 1_500_000_000), ("64MiB", 64 * 1024**2), ("10k", 10_000),
     ("4096B", 4096), (" 2 gb ", 2_000_000_000), ("1TiB", 1024**4)],
)
def test_sizes(text: str, size: int) -> None:
    assert config.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "-5MB", "5 XB", "1e3MB", "5MB5"])
def test_bad_sizes_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="not a size"):
        config.parse_size(text)


BYTES_PER = {"b": 1, "kb": 1_000, "MB": 1_000_000, "GiB": 1_073_741_824, "tib": 1_099_511_627_776}


@given(st.integers(0, 10**9), st.sampled_from(sorted(BYTES_PER)))
def test_size_units_multiply(count: int, unit: str) -> None:
    assert config.parse_size(f"{count}{unit}") == count * BYTES_PER[unit]


def test_ttl_never_and_positive() -> None:
    assert config.parse_ttl("never") is None
    assert config.parse_ttl("7d") == 604800
    with pytest.raises(UsageError, match="positive"):
        config.parse_ttl("0s")


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        (None, "http://127.0.0.1:11434"),
        ("", "http://127.0.0.1:11434"),
        ("1.2.3.4", "http://1.2.3.4:11434"),
        (":56789", "http://127.0.0.1:56789"),
        ("https://example.com", "https://example.com:443"),
        ("http://example.com", "http://example.com:80"),
        ("example.com:56789/path/", "http://example.com:56789/path"),
        ("Example.COM", "http://example.com:11434"),
        ("[::1]", "http://[::1]:11434"),
        ("[::1]:8080", "http://[::1]:8080"),
        (" 1.2.3.4 ", "http://1.2.3.4:11434"),  # trimmed, as the Go side does
        ("0.0.0.0", "http://127.0.0.1:11434"),  # a bind address means this machine
        ("0.0.0.0:9999", "http://127.0.0.1:9999"),
        ("user:secret@example.com:1234", "http://example.com:1234"),  # credentials dropped
    ],
)
def test_ollama_host(raw: str | None, url: str) -> None:
    assert config.parse_ollama_host(raw) == url


@pytest.mark.parametrize("raw", ["::1", "ftp://example.com"])
def test_bad_ollama_host(raw: str) -> None:
    with pytest.raises(UsageError, match="OLLAMA_HOST"):
        config.parse_ollama_host(raw)


@pytest.mark.parametrize(("raw", "message"), [
    ("127.0.0.1:0", "port '0'"),  # ollama-python silently uses 11434
    ("127.0.0.1:65536", "not a number from 1 to 65535"),
    ("127.0.0.1:99999", "not a number from 1 to 65535"),
    ("127.0.0.1:http", "port 'http'"),
    ("127.0.0.1:+80", r"port '\+80'"),
    ("127.0.0.1:\u00b2", "port"),  # str.isdigit() says yes
    ("http://", "no host after http://"),  # ollama-python makes it http://http:11434
    ("https://", "no host after https://"),
    ("http:///path", "no host"),
    ("my host:11434", "space or control character"),
    ("127.0.0.1:11434/a b", "space or control character"),
    ("127.0.0.1\r\nX-Injected: 1", "space or control character"),
    ("[::1", "IPv6"),
    ("[not-ip]:80", "IPv6"),
    ("1.2.3.4:8O", "port '8O'"),
])
def test_ollama_host_values_that_would_mean_a_wrong_url_are_refused(raw: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        config.parse_ollama_host(raw)
    assert str(caught.value).startswith("OLLAMA_HOST: ") and "\n" not in str(caught.value)


def test_credentials_in_ollama_host_never_reach_a_message() -> None:
    with pytest.raises(UsageError) as caught:
        config.parse_ollama_host("http://alice:hunter2@example.com:99999")
    assert "hunter2" not in str(caught.value) and "alice" not in str(caught.value)


def test_an_international_host_name_is_spelled_as_dns_does() -> None:
    assert config.parse_ollama_host("bücher.example:8080") == "http://xn--bcher-kva.example:8080"


def test_options_are_typed_like_ollama() -> None:
    options = config.parse_options(
        [("temperature", "0"), ("seed", "42"), ("stop", "\n\n"), ("stop", "END"), ("penalize_newline", "false")]
    )
    assert options == {"temperature": 0.0, "seed": 42, "stop": ["\n\n", "END"], "penalize_newline": False}
    assert isinstance(options["temperature"], float)


def test_every_ollama_option_is_accepted_and_typed() -> None:
    # The Options and Runner fields of ollama/api/types.go since v0.1.35, with Ollama's types.
    given = {
        "num_keep": "5", "seed": "42", "num_predict": "100", "top_k": "20", "top_p": "0.9", "min_p": "0.05",
        "typical_p": "0.7", "tfs_z": "1", "repeat_last_n": "33", "temperature": "0.8", "repeat_penalty": "1.2",
        "presence_penalty": "1.5", "frequency_penalty": "1.0", "penalize_newline": "true", "mirostat": "1",
        "mirostat_tau": "0.8", "mirostat_eta": "0.6", "stop": "user:", "numa": "false", "num_ctx": "1024",
        "num_batch": "2", "num_gpu": "1", "main_gpu": "0", "low_vram": "false", "f16_kv": "true",
        "logits_all": "false", "vocab_only": "false", "use_mmap": "true", "use_mlock": "false", "num_thread": "8",
        "draft_num_predict": "4",
    }
    options = config.parse_options(list(given.items()))
    assert set(options) == set(config.OPTION_TYPES) == set(given)
    assert options["num_thread"] == 8 and options["main_gpu"] == 0 and options["use_mmap"] is True
    assert options["low_vram"] is False and options["top_p"] == 0.9 and options["stop"] == ["user:"]
    for key, value in options.items():
        assert type(value) is config.OPTION_TYPES[key], key


def test_runtime_options_are_no_part_of_the_scope(tmp_path: Path) -> None:
    settings = config.load_settings(
        env={"SEMCACHE_DB": "x.db"},
        option_pairs=[("temperature", "0"), ("num_thread", "4"), ("num_gpu", "99"), ("use_mmap", "false"),
                      ("num_ctx", "8192"), ("seed", "1")],
    )
    assert settings.options == {"temperature": 0.0, "num_thread": 4, "num_gpu": 99, "use_mmap": False,
                                "num_ctx": 8192, "seed": 1}  # all of them go to Ollama
    assert settings.scope_options == {"temperature": 0.0, "num_ctx": 8192, "seed": 1}
    assert settings.runtime_options == {"num_thread": 4, "num_gpu": 99, "use_mmap": False}
    scope_keys = set(config.OPTION_TYPES) - config.RUNTIME_OPTIONS
    assert {"temperature", "seed", "num_predict", "top_k", "top_p", "stop", "num_ctx", "mirostat"} <= scope_keys
    assert config.RUNTIME_OPTIONS <= set(config.OPTION_TYPES)


def test_a_misspelt_option_gets_a_suggestion() -> None:
    with pytest.raises(UsageError, match="unknown option 'num_threads' \\(did you mean 'num_thread'\\?"):
        config.parse_options([("num_threads", "4")])


@pytest.mark.parametrize(("pair", "message"), [
    (("warp", "9"), "unknown option 'warp'"),
    (("num_thread", "four"), "whole number"),
    (("use_mmap", "sometimes"), "true or false"),
    (("seed", "abc"), "whole number"),
    (("temperature", "hot"), "a number"),
    (("temperature", "nan"), "finite"),
    (("penalize_newline", "maybe"), "true or false"),
])
def test_bad_options(pair: tuple[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        config.parse_options([pair])


def test_defaults(tmp_path: Path) -> None:
    settings = config.load_settings(env={"SEMCACHE_DB": "x.db"})
    assert (settings.model, settings.embed_model) == ("llama3.2", "nomic-embed-text")
    assert (settings.threshold, settings.min_confidence, settings.ttl) == (0.84, 0.7, 7 * 86400)  # calibrated scale
    assert settings.ollama_url == "http://127.0.0.1:11434"


def test_default_db_lives_in_the_platform_cache_dir(tmp_path: Path) -> None:
    settings = config.load_settings(env={"XDG_CACHE_HOME": str(tmp_path)})
    assert Path(settings.db).name == "cache.db" and Path(settings.db).parent.name == "semcache"
    assert settings.db_is_default


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        'model = "from-file"\nthreshold = 0.9\nttl = "1h"\nnamespace = "filens"\ndb = "file.db"\n'
        "[options]\ntemperature = 0.2\nseed = 7\n"
    )
    env = {"SEMCACHE_CONFIG": str(path), "SEMCACHE_THRESHOLD": "0.95", "SEMCACHE_TTL": "2h"}
    settings = config.load_settings({"ttl": "3h", "model": None}, [("seed", "8")], env=env)
    assert settings.model == "from-file"  # file beats default; an absent flag changes nothing
    assert settings.threshold == 0.95  # env beats file
    assert settings.ttl == 3 * 3600  # flag beats env
    assert settings.namespace == "filens"
    assert settings.db == "file.db" and not settings.db_is_default
    assert settings.options == {"temperature": 0.2, "seed": 8}  # flags merge over the file's options


def test_bad_values_name_their_source(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("threshold = 1.5\n")
    with pytest.raises(UsageError, match=r"config.toml: threshold: 1.5 is not a number between 0 and 1"):
        config.load_settings(env={"SEMCACHE_CONFIG": str(path)})
    with pytest.raises(UsageError, match="SEMCACHE_MIN_CONFIDENCE"):
        config.load_settings(env={"SEMCACHE_MIN_CONFIDENCE": "high"})
    path.write_text("thresold = 0.9\n")
    with pytest.raises(UsageError, match="unknown key 'thresold'"):
        config.load_settings(env={"SEMCACHE_CONFIG": str(path)})
    path.write_text("threshold = [\n")
    with pytest.raises(UsageError, match="config file"):
        config.load_settings(env={"SEMCACHE_CONFIG": str(path)})


def test_format_flag() -> None:
    assert config.parse_format("json") == "json"
    assert config.parse_format('{"type": "object"}') == {"type": "object"}
    with pytest.raises(UsageError):
        config.parse_format("yaml")


def test_the_database_setting_is_a_path_or_a_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {}
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config.load_settings({"db": "~/caches/c.db"}, env=env).db == str(tmp_path / "caches" / "c.db")
    url = "postgresql://alice@db.example.com:5432/cache?sslmode=require"
    assert config.load_settings({"db": url}, env=env).db == url  # kept whole: a Path would fold its //
    assert config.load_settings(env={**env, "SEMCACHE_DB": url}).db == url
