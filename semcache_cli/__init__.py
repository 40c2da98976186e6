"""semcache: a semantic cache for LLM calls, as a command-line tool."""

__version__ = "0.1.0"
