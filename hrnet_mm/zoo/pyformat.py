"""Python source for config values: ``dict(a=1, b=[2, 3])``, one line where it fits, else one item a line.

Used to write the generated configs (:mod:`hrnet_mm.zoo.generate`) in the project's style (single quotes, lines of
at most :data:`WIDTH` characters) with a comment line above a key where a note explains it.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

WIDTH = 120
INDENT = '    '


def _is_identifier(key: Any) -> bool:
    return isinstance(key, str) and key.isidentifier()


def literal(value: Any) -> str:
    """``value`` on one line."""
    if isinstance(value, Mapping):
        if all(_is_identifier(k) for k in value):
            return 'dict(' + ', '.join(f'{k}={literal(v)}' for k, v in value.items()) + ')'
        return '{' + ', '.join(f'{literal(k)}: {literal(v)}' for k, v in value.items()) + '}'
    if isinstance(value, list):
        return '[' + ', '.join(literal(v) for v in value) + ']'
    if isinstance(value, tuple):
        items = ', '.join(literal(v) for v in value)
        return f'({items},)' if len(value) == 1 else f'({items})'
    if isinstance(value, (bool, int, float, str)) or value is None:
        return repr(value)
    raise TypeError(f'cannot write a {type(value).__name__} into a config: {value!r}')


def _has_note(path: str, notes: Mapping[str, str]) -> bool:
    """Whether a key below ``path`` has a note (its value then takes one line a key)."""
    return any(k.startswith(path + '.') for k in notes) if path else bool(notes)


def _lines(value: Any, path: str, notes: Mapping[str, str], indent: str, prefix: str, suffix: str) -> List[str]:
    """``prefix + value + suffix`` at ``indent``, split over lines where it does not fit or a note needs a line."""
    flat = indent + prefix + literal(value) + suffix
    if len(flat) <= WIDTH and not (isinstance(value, (Mapping, list, tuple)) and _has_note(path, notes)):
        return [flat]
    inner = indent + INDENT
    if isinstance(value, Mapping):
        keyed = all(_is_identifier(k) for k in value)
        opening, closing = ('dict(', ')') if keyed else ('{', '}')
        out = [indent + prefix + opening]
        items = list(value.items())
        for i, (k, v) in enumerate(items):
            sub = f'{path}.{k}' if path else str(k)
            if sub in notes:
                out.append(f'{inner}# {notes[sub]}')
            head = f'{k}=' if keyed else f'{literal(k)}: '
            tail = ',' if i < len(items) - 1 else ''
            out += _lines(v, sub, notes, inner, head, tail)
        out[-1] += closing + suffix
        return out
    if isinstance(value, (list, tuple)):
        opening, closing = ('[', ']') if isinstance(value, list) else ('(', ')')
        out = [indent + prefix + opening]
        for i, v in enumerate(value):
            tail = ',' if i < len(value) - 1 or isinstance(value, tuple) and len(value) == 1 else ''
            out += _lines(v, f'{path}.{i}', notes, inner, '', tail)
        out[-1] += closing + suffix
        return out
    return [flat]  # a scalar longer than the line: left as it is


def assignment(name: str, value: Any, notes: Optional[Dict[str, str]] = None) -> str:
    """``name = <value>`` as source lines; ``notes`` maps dotted keys of ``value`` (``'backbone.norm_eval'``) to
    the comment written on the line above that key."""
    return '\n'.join(_lines(value, '', notes or {}, '', f'{name} = ', '')) + '\n'
