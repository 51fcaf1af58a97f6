"""JSON Schemas of the package's output formats, shipped as package data.

``prediction.schema.json`` describes :meth:`hybridgl.types.Prediction.to_dict` (see
docs/FORMATS.md). :func:`validate` checks a record against it; it needs ``jsonschema``,
which is a development dependency only (``pip install "hybridgl[dev]"``), so the package
itself never imports it.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

__all__ = ["SCHEMAS", "load_schema", "validate"]

SCHEMAS = ("prediction",)


@functools.cache
def _schema_text(name: str) -> str:
    if name not in SCHEMAS:
        raise ValueError(f"unknown schema {name!r}; known: {', '.join(SCHEMAS)}")
    return resources.files(__name__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8")


def load_schema(name: str = "prediction") -> dict[str, Any]:
    """The JSON Schema ``name`` as a fresh dict.

    Raises:
        ValueError: ``name`` is not one of :data:`SCHEMAS`.
    """
    return json.loads(_schema_text(name))


def validate(instance: Any, name: str = "prediction") -> None:
    """Check ``instance`` against schema ``name``, and that it is strict JSON.

    Strict JSON means ``json.dumps(instance, allow_nan=False)`` succeeds: no NaN, no
    infinities, nothing but dicts, lists, str, int, float, bool and None.

    Raises:
        jsonschema.ValidationError: the instance does not match the schema.
        ValueError: the instance holds NaN or an infinity.
        TypeError: the instance holds a value JSON cannot represent (numpy types, ...).
        ImportError: jsonschema is not installed.
    """
    try:
        import jsonschema
    except ImportError:
        raise ImportError(
            'validating needs jsonschema: pip install "hybridgl[dev]" (or jsonschema)'
        ) from None
    json.dumps(instance, allow_nan=False)
    schema = load_schema(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    cls(schema).validate(instance)
