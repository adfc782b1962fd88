"""Reading a setup profile: its YAML, bounded in size and depth, and its problems as lines.

Internal to :mod:`dnpu_bluesky.config`, which validates what is read here and reports each
validation error as :func:`describe_error` words it. A profile is a
few kB, nested four levels deep (``electrodes``, an electrode, its keys); the bounds below
leave ample room for comments and anchors, and keep a hostile file from taking minutes or
the interpreter's stack.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml
from pydantic_core import ErrorDetails

#: Largest profile file read, bytes; refused before parsing.
MAX_PROFILE_BYTES = 1 << 20
#: Deepest nesting of mappings and lists in a profile file.
MAX_PROFILE_DEPTH = 20


#: Error type of a model validator's problems, one ``field: message`` line each, reported
#: under the model's own path (``electrodes.2`` + ``max_v: ...``).
FIELD_LINES = "field_lines"


class ProfileReadError(ValueError):
    """The file cannot be read as a profile's YAML; the message is one line."""


class _ProfileLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses duplicate keys and deep nesting."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        """Compose one node, refusing it when it is nested too deep.

        Parameters
        ----------
        parent : yaml.Node or None
            The enclosing node.
        index : Any
            Its key or position in the parent.

        Returns
        -------
        yaml.Node
            The node.
        """
        self._depth += 1
        try:
            if self._depth > MAX_PROFILE_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_PROFILE_DEPTH} levels deep",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader: _ProfileLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            repeated = key in mapping
        except TypeError:  # a list or mapping as a key: no profile key is one
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a name, not a list or mapping", key_node.start_mark
            ) from None
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_ProfileLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_profile_yaml(file: Path) -> Any:
    """Return what the YAML file holds, read with the bounds of this module.

    Parameters
    ----------
    file : pathlib.Path
        The profile.

    Returns
    -------
    Any
        The parsed document (a mapping, for a profile).

    Raises
    ------
    FileNotFoundError
        No such file.
    ProfileReadError
        In one line: the file cannot be read, is larger than :data:`MAX_PROFILE_BYTES`, is
        not UTF-8, or is not YAML (duplicate keys and deep nesting included).
    """
    try:
        with file.open("rb") as stream:
            data = stream.read(MAX_PROFILE_BYTES + 1)  # bounded: also for /dev/zero, a FIFO
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ProfileReadError(f"cannot read the file: {exc.strerror or exc}") from None
    if len(data) > MAX_PROFILE_BYTES:
        raise ProfileReadError(
            f"the file is larger than {MAX_PROFILE_BYTES >> 20} MiB; a setup profile is a few "
            "kB: is this the right file?"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProfileReadError("not UTF-8 text") from None
    try:
        return yaml.load(text, Loader=_ProfileLoader)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).replace(' in "<unicode string>",', " at").split())
        raise ProfileReadError(f"not valid YAML: {detail}") from None
    except RecursionError:  # a construct the depth bound does not see, e.g. deep flow keys
        raise ProfileReadError(
            f"not valid YAML: nested more than {MAX_PROFILE_DEPTH} levels deep"
        ) from None


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 2, 60, 60

# Why a number has its upper bound, said with the bound.
_BOUND_REASONS = {
    "sample_rate": "the fastest DAQmx analog output",
    "readout_oversampling": "AI samples averaged per AO sample",
    "max_slew_v_per_s": "a full-range step in one sample at the fastest rate",
    "gain_v_per_a": "the most sensitive current amplifiers",
    "seed": "seeds are 32-bit",
}


def describe_error(error: ErrorDetails) -> list[str]:
    """Return one line per problem of a pydantic error: ``field.path: message``.

    Parameters
    ----------
    error : pydantic_core.ErrorDetails
        One of ``ValidationError.errors()``.

    Returns
    -------
    list of str
        The lines.
    """
    path = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    message = error["msg"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
        if not path:
            return message.splitlines()
        return [f"{path}: {message}"]
    if kind == FIELD_LINES:
        return [f"{path}.{line}" for line in message.splitlines()]
    if kind == "less_than_equal" and error["loc"] and error["loc"][-1] in _BOUND_REASONS:
        message = f"{message}: {_BOUND_REASONS[error['loc'][-1]]}"
    if kind == "extra_forbidden":
        return [f"{path}: unknown key"]
    if kind == "missing":
        return [f"{path}: missing required key"]
    got = _SHORT.repr(error["input"])  # bounded: YAML aliases can nest a list in itself
    if len(got) > 60:
        got = got[:57] + "..."
    return [f"{path or '<profile>'}: {message} (got {got})"]
