"""Every configuration field with its type, default and docstring, read from ``infmae/config.py`` itself
(the docstring under each field), for ``infmae config fields`` and ``infmae pretrain --help``."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from functools import cache

from infmae import config as config_module
from infmae.config import Config, DataConfig, ModelConfig, TrainConfig

SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


@cache
def field_docs() -> dict[str, str]:
    """'section.field' -> the field's docstring ('' when it has none)."""
    tree = ast.parse(inspect.getsource(config_module))
    docs: dict[str, str] = {}
    names = {cls.__name__: section for section, cls in SECTIONS.items()}
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name in names):
            continue
        for statement, following in zip(node.body, node.body[1:] + [None]):
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                doc = ""
                if (
                    isinstance(following, ast.Expr)
                    and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)
                ):
                    doc = " ".join(following.value.value.split())
                docs[f"{names[node.name]}.{statement.target.id}"] = doc
    return docs


def describe_fields(config: Config) -> list[tuple[str, str, str, str]]:
    """(key, type, value in ``config``, docstring) for every field, in declaration order."""
    docs = field_docs()
    rows = []
    for section, cls in SECTIONS.items():
        values = getattr(config, section)
        for field in dataclasses.fields(cls):
            key = f"{section}.{field.name}"
            value = getattr(values, field.name)
            shown = ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
            rows.append((key, str(field.type), shown, docs.get(key, "")))
    return rows


def format_fields(config: Config) -> str:
    """A plain-text listing: one field per paragraph, `key (type) = value` then its docstring."""
    lines = [f"Fields of preset {config.preset!r} (set any with --set KEY=VALUE):", ""]
    for key, kind, value, doc in describe_fields(config):
        lines.append(f"  {key} ({kind}) = {value}")
        if doc:
            lines.append(f"      {doc}")
    return "\n".join(lines)
