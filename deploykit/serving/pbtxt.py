"""A minimal protobuf text-format writer for Triton's ``config.pbtxt``.

A config is built as plain data: ``dict`` for a message, ``list`` for a repeated field (of messages or
scalars), :class:`Enum` for an enum value (``TYPE_FP32``), ``str``/``int``/``float``/``bool`` for scalars.
Map fields (``parameters``, ``input_map``) are lists of ``{"key": ..., "value": ...}`` messages, which is
how text format spells them. tests/test_triton.py parses every generated file with Triton's own
``ModelConfig`` protobuf (``tritonclient.grpc.model_config_pb2``).
"""

from __future__ import annotations

import json
from typing import Any


class Enum(str):
    """An enum value, written bare (``data_type: TYPE_FP32``)."""


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a C-style quoted string with escapes, as text format expects
    raise TypeError(f"unsupported config value {value!r}")


def to_pbtxt(message: dict[str, Any], indent: int = 0) -> str:
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if value is None:
            continue
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", to_pbtxt(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                lines += [
                    f"{pad}  {{",
                    to_pbtxt(item, indent + 2),
                    f"{pad}  }}{',' if i < len(value) - 1 else ''}",
                ]
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line for line in lines if line)
