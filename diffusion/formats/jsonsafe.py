"""JSON from files we did not write (safetensors headers, their metadata strings, diffusers configs): nesting is
bounded before the text is parsed, so a 100,000-deep array is a sentence, not a RecursionError in the parser or in
whatever walks the result later."""

from __future__ import annotations

import json
import re
import sys

import numpy as np

MAX_JSON_DEPTH = 32  # our configs nest 3 deep, diffusers' 2; a header of tensors 3
_BRACKET_STEP = np.zeros(256, dtype=np.int8)
_BRACKET_STEP[[ord("["), ord("{")]], _BRACKET_STEP[[ord("]"), ord("}")]] = 1, -1
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)  # alternatives start with different bytes: no backtracking


def json_depth(text: str | bytes) -> int:
    """The deepest nesting of [ and { outside strings, in time linear in the length."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    steps = _BRACKET_STEP[np.frombuffer(_STRING.sub(b"", data), dtype=np.uint8)]  # +1 opens, -1 closes, 0 else
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))


def load_json(text: str | bytes, what: str, max_depth: int = MAX_JSON_DEPTH):
    """json.loads after the nesting check; ValueError naming `what` for too deep or invalid JSON."""
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError(f"{what}: nested {depth:,} levels deep (at most {max_depth})")
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{what}: not valid JSON ({getattr(error, 'msg', None) or type(error).__name__})") from None
    except ValueError:  # int(): a number longer than Python converts (its message advises a Python setting)
        raise ValueError(f"{what}: holds a number of more than {sys.get_int_max_str_digits():,} digits") from None
