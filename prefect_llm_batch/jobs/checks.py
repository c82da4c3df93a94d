"""Checks on where a job writes, made before anything is sent (so before anything is paid for).

The output is written once every batch has been paid for, so whatever could stop it is checked
first, by every entry point (the flows, ``enrich`` in a notebook, the command line):

* the output is not the source, nor inside a source directory, nor inside the state directory
  (writing it there would destroy the input or the job's state), with ``overwrite`` or without;
* it does not exist yet, unless ``overwrite`` is set;
* its location is writable: a uniquely named probe file is created beside it (its parent made
  first, as the writer would) and removed.

Paths may be fsspec URLs: they are compared after fsspec resolves them (``file://`` and plain
paths alike, symbolic links followed on the local filesystem).

Examples:
    >>> check_output("memory://data/reviews.csv", "memory://data/reviews.csv", "memory://state")
    Traceback (most recent call last):
    ...
    prefect_llm_batch.errors.TableError: the output 'memory://data/reviews.csv' is the source ...
    >>> check_output("memory://data/reviews.csv", "memory://out/reviews.parquet", "memory://state")
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from typing import Any, Literal

import fsspec.core
from fsspec.implementations.local import LocalFileSystem

from ..costs import estimate_cost
from ..errors import ConfigError, CostLimitExceeded, TableError
from ..files import exists
from ..object_stores import object_store, shown_path
from ..spec import API_KEY_ENV, key_env_names

__all__ = ["check_before_start", "check_output", "check_output_writable", "same_or_inside"]


def _location(path: str, storage_options: Mapping[str, Any] | None) -> tuple[str, str]:
    """The filesystem's name and the normalised path that fsspec resolves ``path`` to."""
    fs, fs_path = fsspec.core.url_to_fs(path, **(storage_options or {}))
    if isinstance(fs, LocalFileSystem):
        return "file", os.path.realpath(fs_path)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol, str(fs._strip_protocol(fs_path)).rstrip("/") or "/"


def same_or_inside(path: str, other: str, *, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether ``path`` is ``other`` or lies inside it (as a directory), once both are resolved.

    Examples:
        >>> same_or_inside("memory://a/b/out.parquet", "memory:///a/b")
        True
        >>> same_or_inside("memory://a/bc.parquet", "memory://a/b")
        False
    """
    where, resolved = _location(path, storage_options)
    other_where, other_resolved = _location(other, storage_options)
    if where != other_where:
        return False
    if resolved == other_resolved:
        return True
    return resolved.startswith(other_resolved.rstrip("/") + "/")


def check_output(
    source: str,
    output: str,
    state_dir: str,
    *,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    probe: bool = True,
) -> None:
    """Refuse an output that would destroy the input or the job's state, exists, or cannot be written.

    Args:
        source: The table read (a file or a directory of Parquet parts).
        output: Where the output Parquet goes.
        state_dir: The job's state directory.
        overwrite: An existing output may be replaced (never the source nor the state).
        storage_options: fsspec options for the three paths.
        probe: Also create and remove a probe file beside the output (:func:`check_output_writable`).

    Raises:
        TableError: The output is the source or inside it, is inside the state directory,
            exists without ``overwrite``, or its location is not writable; the message names
            the path.
    """
    shown = shown_path(output)
    if same_or_inside(output, source, storage_options=storage_options):
        what = (
            "is the source"
            if same_or_inside(source, output, storage_options=storage_options)
            else "is inside the source directory"
        )
        raise TableError(
            f"the output {shown} {what} {shown_path(source)}: writing it would destroy the input; "
            "choose another output path (overwrite never allows this)"
        )
    if same_or_inside(output, state_dir, storage_options=storage_options):
        raise TableError(
            f"the output {shown} is inside the state directory {shown_path(state_dir)}, which holds the "
            "job's state and cached answers; choose another output path (overwrite never allows this)"
        )
    if not overwrite and exists(output, storage_options=dict(storage_options or {})):
        raise TableError(
            f"the output {shown} already exists; pass overwrite=True (--overwrite) to replace it"
        )
    if probe:
        check_output_writable(output, storage_options=storage_options)


def check_output_writable(output: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Create (making its parent first, as the writer does) and remove a probe file beside ``output``.

    Args:
        output: Where the output goes.
        storage_options: fsspec options for ``output``.

    Raises:
        TableError: The probe could not be created or removed; the message names the output and
            the operating system's reason.

    Examples:
        >>> check_output_writable("memory://docs/probe/out.parquet")
    """
    fs, fs_path = fsspec.core.url_to_fs(output, **(storage_options or {}))
    parent = fs._parent(fs_path)
    name = str(fs_path).rstrip("/").rsplit("/", 1)[-1]
    probe = f"{parent.rstrip('/')}/.{name}.{secrets.token_hex(6)}.probe"
    try:
        if isinstance(fs, LocalFileSystem):
            os.makedirs(parent, exist_ok=True)
            descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(descriptor)
            os.unlink(probe)
            return
        try:
            fs.pipe_file(probe, b"")
        except FileNotFoundError:  # filesystems with real directories may need the parent first
            if object_store(fs):  # a missing bucket: never created from what may be a typo
                raise
            fs.makedirs(parent, exist_ok=True)
            fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TableError(
            f"the output {shown_path(output)} cannot be written: creating a file in {shown_path(parent)} "
            f"failed ({reason}); "
            "nothing was sent"
        ) from exc


#: Where a user starts a job from, for the wording of :func:`check_before_start`'s messages.
Where = Literal["cli", "flow", "python"]

#: How each entry point names the provider's key: the option or parameter the user can change.
_KEY_HINTS: dict[str, str] = {
    "cli": "set {env} in the environment (or leave out --provider to try the offline simulator)",
    "flow": "pass credentials= (an LLM Batch credentials block) or set {env} in the worker's environment",
    "python": "pass enrich(api_key=...) or set {env}",
}


def _named(where: Where, option: str) -> str:
    """``--max-cost-usd`` on the command line, ``max_cost_usd`` elsewhere.

    Examples:
        >>> _named("cli", "max_cost_usd"), _named("flow", "max_cost_usd")
        ('--max-cost-usd', 'max_cost_usd')
    """
    return "--" + option.replace("_", "-") if where == "cli" else option


def check_before_start(
    source: str,
    output: str | None,
    state_dir: str,
    *,
    where: Where,
    provider: str,
    model: str,
    api_key: str | None = None,
    overwrite: bool = False,
    detached: bool = False,
    mode: str = "batch",
    max_cost_usd: float | None = None,
    prices: Mapping[str, tuple[float, float]] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Every check that needs neither the provider nor the whole table, in one place: the CLI runs
    it before it imports Prefect, the flow before its first task, ``enrich`` before it starts.

    Args:
        source: The table.
        output: Where the output goes (None: no output, e.g. an estimate).
        state_dir: The state directory.
        where: Who starts the job (``cli``, ``flow``, ``python``): the messages name what the user
            can change there (``--provider``, ``credentials=``, ``enrich(api_key=...)``).
        provider: The provider's name.
        model: The model (its price, when ``max_cost_usd`` is set); empty for a model per row.
        api_key: The key given explicitly (a block's or ``api_key=``); never shown.
        overwrite: An existing output may be replaced.
        detached: The job is submitted and collected later.
        mode: ``batch``, ``realtime`` or ``auto``.
        max_cost_usd: The most the job may cost.
        prices: Extra prices (USD per 1M tokens) over the built-in table.
        storage_options: fsspec options for the paths.

    Raises:
        TableError: The output is the source, inside it or inside the state directory, exists
            without ``overwrite``, or cannot be written.
        ConfigError: A real provider without a key, a detached run with the simulator or in
            realtime mode, or a negative cost cap.
        CostLimitExceeded: A cost cap for a model without a price.

    Examples:
        >>> check_before_start("memory://d/t.csv", None, "memory://s", where="cli", provider="simulator",
        ...     model="gpt-4o-mini", detached=True)
        Traceback (most recent call last):
        ...
        prefect_llm_batch.errors.ConfigError: --detached needs a provider that outlives the run; ...
    """
    if output is not None:
        check_output(source, output, state_dir, overwrite=overwrite, storage_options=storage_options)
    if detached and provider in ("simulator", "local"):
        raise ConfigError(
            f"{_named(where, 'detached')} needs a provider that outlives the run; the "
            f"{'simulator' if provider == 'simulator' else 'local model server'} stops "
            "with it (use --provider openai or anthropic, or run without detaching)"
        )
    if detached and mode == "realtime":
        raise ConfigError(f"realtime mode cannot run {_named(where, 'detached')}: it sends as it goes")
    env = API_KEY_ENV.get(provider)
    names = key_env_names(provider)
    if env is not None and not api_key and not any(os.environ.get(name) for name in names):
        env = " or ".join(names)
        option = f"--provider {provider}" if where == "cli" else f"provider={provider!r}"
        raise ConfigError(f"{option} needs an API key: " + _KEY_HINTS[where].format(env=env))
    if max_cost_usd is not None:
        cap = _named(where, "max_cost_usd")
        if max_cost_usd < 0:
            raise ConfigError(f"{cap} must be 0 or more, not {max_cost_usd}")
        # (no model: a model per row, each priced once the table is planned, by the estimate)
        if model and estimate_cost(model, 1, 1, prices) is None:
            raise CostLimitExceeded(
                f"{cap} is set but there is no price for model {model!r}, so the cost cannot be "
                "checked; nothing was sent" + ("" if where == "cli" else "; pass prices= for the model")
            )
