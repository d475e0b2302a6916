"""The service's files: reading config and join token files (bounded, YAML with strict keys) and
writing secrets to disk."""

from __future__ import annotations

import os
import stat
from collections.abc import Hashable
from typing import Any, Final

import yaml

MAX_FILE_BYTES: Final = 4 * 1024 * 1024  # config and join token files; larger ones are refused


class ConfigError(Exception):
    """A config or join token file is invalid; the message names the key path."""


def write_private_file(path: str, data: bytes) -> None:
    """Creates `path` readable by its owner only (0600) and writes `data`. Refuses a path that
    exists (O_EXCL): a private key must never land in a file that someone else created, or one
    whose mode lets others read it."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


class StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping: PyYAML keeps the last,
    so a second `allow:` would silently replace the first (Kubernetes' own strict decoding
    refuses duplicates too). Merge keys (`<<`) are not duplicates."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def yaml_error(exc: yaml.YAMLError, source: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1}" if mark is not None else ""
    return ConfigError(f"{source}:{where} not valid YAML ({getattr(exc, 'problem', exc)})")


def load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (StrictLoader is a SafeLoader)
    except yaml.YAMLError as exc:
        raise yaml_error(exc, source) from None


def read_small_file(path: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes. A FIFO, a device (/dev/zero) or a
    directory is refused without blocking: opened non-blocking, checked with fstat."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise ConfigError(f"{path}: larger than {limit} bytes")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ConfigError(f"{path}: larger than {limit} bytes")
    return data


def read_text_file(path: str) -> str:
    try:
        return read_small_file(path).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8") from None
