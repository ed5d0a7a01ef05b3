"""Reading config YAML safely: YAML 1.2 scalars, no duplicate keys, bounded aliases (issue [21]).

PyYAML implements YAML 1.1, whose implicit typing surprises in configs: ``steps: 1:30`` is the
base-60 integer 90, ``yes``/``no``/``on``/``off`` are booleans (``on:`` as a key becomes
``True``), ``010`` is octal 8 and ``1e-3`` is text. :class:`Loader` resolves plain scalars by the
YAML 1.2 core schema instead: integers ``[-+]?[0-9]+`` (decimal, ``010`` is 10), ``0o17``,
``0x1F``; floats ``1.5``, ``1e-3``, ``.inf``, ``.nan``; booleans ``true``/``false`` only; null
``null``/``~``/empty. Anything else (``1:30``, ``yes``, ``1_000``) is text, so a field that
wants a number names it (pydantic still accepts the text ``1_000`` for an int or float field).

Aliases (``*a``) are refused when they refer to a node that contains them (a recursive
structure, which every later walk of the config would follow forever) and when the document,
with every alias written out, would exceed :data:`MAX_NODES` nodes ("billion laughs": nine
levels of nine aliases are a 1 KB file and 10^9 nodes). Both are checked while the file is
composed, in time proportional to the file, before anything is built from it.

A key given twice in one mapping is refused (PyYAML would keep the last without a word).
Merge keys (``<<: *base``) keep working.
"""
from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, SequenceNode

MAX_NODES = 100_000  # nodes of the document with every alias written out; configs have hundreds

_CORE = [  # (tag, pattern, first characters): the YAML 1.2 core schema (spec 10.3.2)
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    ("tag:yaml.org,2002:float",
     r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
     list("-+.0123456789")),
]


class DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one mapping."""


class AliasError(yaml.composer.ComposerError):
    """A recursive alias, or aliases that expand the document beyond :data:`MAX_NODES`."""


class _Resolver(yaml.resolver.BaseResolver):
    """The YAML 1.2 core schema (plus ``<<`` merge keys) instead of PyYAML's YAML 1.1 rules."""

    yaml_implicit_resolvers: dict = {}


for _tag, _pattern, _first in _CORE:
    _Resolver.add_implicit_resolver(_tag, re.compile(_pattern), _first)
_Resolver.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])


class _Constructor(yaml.constructor.SafeConstructor):
    """Safe types; YAML 1.2 integers (``0o``/``0x``, no base 60); no duplicate keys."""

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node)
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise DuplicateKey(None, None, f"duplicate key {key!r}", key_node.start_mark)
                    seen.add(key)
                except TypeError:  # an unhashable key: PyYAML itself says so below
                    pass
        return super().construct_mapping(node, deep)


_Constructor.add_constructor("tag:yaml.org,2002:int", _Constructor.construct_yaml_int)


class Loader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer,
             _Constructor, _Resolver):
    """``yaml.SafeLoader`` with YAML 1.2 scalars, duplicate keys refused and aliases bounded."""

    def __init__(self, stream):
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _Constructor.__init__(self)
        _Resolver.__init__(self)
        self._size: dict[int, int] = {}  # id(node) -> its node count with aliases written out, once composed

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None and id(node) not in self._size:  # anchored, not yet complete: it contains us
                raise AliasError(None, None, f"recursive alias *{event.anchor} (it refers to a node that contains "
                                 "it); write the value out instead", event.start_mark)
        node = super().compose_node(parent, index)
        self._size.setdefault(id(node), 1)  # a scalar (a collection was counted when it ended)
        return node

    def compose_sequence_node(self, anchor):
        return self._counted(super().compose_sequence_node(anchor))

    def compose_mapping_node(self, anchor):
        return self._counted(super().compose_mapping_node(anchor))

    def _counted(self, node):
        children = node.value if isinstance(node, SequenceNode) else [n for pair in node.value for n in pair]
        size = 1 + sum(self._size[id(c)] for c in children)
        if size > MAX_NODES:
            raise AliasError(None, None, f"aliases expand this document beyond {MAX_NODES} values (a 'billion "
                             "laughs' file?); write the values out or use fewer aliases", node.start_mark)
        self._size[id(node)] = size
        return node


def load(text: str) -> Any:
    """Parse YAML text; raises ``yaml.YAMLError`` (:class:`DuplicateKey`, :class:`AliasError`,
    or "nested too deeply") with the line in ``problem_mark`` where known."""
    try:
        return yaml.load(text, Loader=Loader)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


__all__ = ["AliasError", "DuplicateKey", "Loader", "MAX_NODES", "load"]
