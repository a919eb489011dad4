"""Parameter groups as path patterns, turned into boolean mask trees once.

Every leaf of a parameter tree has a path string: the keys from the root joined with
``'/'``. For Haiku trees that is ``'<module path>/<param name>'``, e.g.
``'NFNet/~/nf_block_3/~/squeeze_excite/~/linear_1/b'`` or ``'NFNet/~/linear/w'``.

Patterns are Python regular expressions (:mod:`re` syntax) that must match the **whole**
path (``re.fullmatch``), so ``'.*/b'`` selects every parameter named ``b`` and nothing
named ``bias``. Regular expressions rather than globs because the original fc rule needs a
negation ("module path contains ``linear`` and not ``squeeze_excite``"), which a glob
cannot say but a lookahead can.

A pattern that matches no leaf raises ``ValueError`` unless ``allow_unmatched=True``: a
typo in a config (``'.*/bais'``) must not silently switch off a weight-decay exclusion.

References:
    Brock et al., High-Performance Large-Scale Image Recognition Without Normalization,
    arXiv:2102.06171 (section 4.1 of ``../shared/spec/nfnets.md`` gives the grouping).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax

__all__ = [
    "NFNET_NO_CLIP_PATTERNS",
    "NFNET_NO_DECAY_PATTERNS",
    "compile_patterns",
    "labels_from_patterns",
    "mask_from_patterns",
    "path_to_str",
    "tree_paths",
]

# The original's gains/biases group (experiment_nfnets._make_opt): a parameter *name* in
# {scale, offset, b} or containing 'gain' or 'bias'. That covers WS-conv gains and biases,
# every skip_gain, the squeeze-excite and classifier biases, and norm-layer scale/offset.
NFNET_NO_DECAY_PATTERNS: tuple[str, ...] = (
    r".*/(b|scale|offset)",
    r".*/[^/]*(gain|bias)[^/]*",
)

# The original's fc_weights group: module path contains 'linear' and not 'squeeze_excite'
# (NFNet/~/linear, NF_ResNet/~/linear, NF_RegNet/~/linear). Only its weight `w` is
# unclipped: the classifier bias is a 'b', so it sits in the gains/biases group, which the
# original clips.
NFNET_NO_CLIP_PATTERNS: tuple[str, ...] = (r"(?!.*squeeze_excite).*linear.*/w",)


def path_to_str(key_path: Sequence[Any]) -> str:
    """Turns a JAX key path into the ``'a/b/c'`` string the patterns are matched against.

    Args:
        key_path: a key path from ``jax.tree_util.tree_flatten_with_path``.

    Returns:
        The keys joined with ``'/'``: dict keys as ``str(key)``, attribute names, and
        sequence indices as decimal numbers.

    Example:
        >>> import jax
        >>> tree = {'NFNet/~/linear': {'w': 0.0}}
        >>> [path_to_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
        ['NFNet/~/linear/w']
    """
    parts = []
    for key in key_path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:  # Custom key types: their str() is the best name available.
            parts.append(str(key))
    return "/".join(parts)


def tree_paths(tree: Any) -> Any:
    """Returns a tree of the same structure whose leaves are their path strings.

    Args:
        tree: any pytree (Haiku params, Haiku state, nested dicts...).

    Returns:
        The same structure with each leaf replaced by :func:`path_to_str` of its path.

    Example:
        >>> tree_paths({'mod': {'w': 1.0, 'b': 2.0}})
        {'mod': {'b': 'mod/b', 'w': 'mod/w'}}
    """
    return jax.tree_util.tree_map_with_path(lambda p, _: path_to_str(p), tree)


def compile_patterns(patterns: Iterable[str], what: str = "patterns") -> list[re.Pattern[str]]:
    """Compiles path patterns, with errors that name the offending pattern.

    Args:
        patterns: Python regular expressions (a list, not a single string).
        what: how to name the list in error messages.

    Returns:
        The compiled patterns, in order.

    Raises:
        TypeError: a single string or a non-string entry was given.
        ValueError: a pattern is not a valid regular expression.

    Example:
        >>> [p.pattern for p in compile_patterns([r'.*/b'])]
        ['.*/b']
    """
    if isinstance(patterns, str):
        raise TypeError(
            f"{what} must be a list of pattern strings, got the single string {patterns!r}; "
            f"wrap it in a list: [{patterns!r}]."
        )
    compiled = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"{what} must hold strings, got {pattern!r} ({type(pattern)}).")
        try:
            compiled.append(re.compile(pattern))
        except re.error as e:
            raise ValueError(
                f"{what}: {pattern!r} is not a valid regular expression ({e}). Patterns are "
                "Python regexes matched against whole paths like 'NFNet/~/linear/w'."
            ) from e
    return compiled


def _check_all_matched(
    compiled: Sequence[re.Pattern[str]], hits: Sequence[int], paths: Sequence[str], what: str
) -> None:
    unmatched = [c.pattern for c, n in zip(compiled, hits, strict=True) if n == 0]
    if unmatched:
        examples = ", ".join(repr(p) for p in paths[:5])
        raise ValueError(
            f"{what}: pattern(s) {unmatched} match no parameter path. Paths look like "
            f"{examples} ({len(paths)} in all) and a pattern must match a whole path "
            "(re.fullmatch). Fix or remove the pattern, or pass allow_unmatched=True if it "
            "is meant for another model."
        )


def mask_from_patterns(
    tree: Any,
    patterns: Iterable[str],
    *,
    invert: bool = False,
    allow_unmatched: bool = False,
    what: str = "patterns",
) -> Any:
    """Builds a boolean mask tree: ``True`` where a leaf's path fully matches a pattern.

    Use ``invert=True`` for "everything except": the NFNet weight-decay mask is
    ``mask_from_patterns(params, NFNET_NO_DECAY_PATTERNS, invert=True)``.

    Args:
        tree: parameter tree (any pytree; only the paths are read, so leaves may be
            arrays, ``jax.ShapeDtypeStruct`` or anything else).
        patterns: regular expressions matched with ``re.fullmatch`` against the paths.
        invert: return ``False`` where a pattern matches and ``True`` elsewhere.
        allow_unmatched: do not raise for patterns that match no leaf.
        what: how to name the pattern list in error messages (e.g. the config field).

    Returns:
        A tree of Python ``bool`` with the structure of ``tree``, usable as an
        ``optax.masked`` / ``optax.add_decayed_weights`` mask.

    Raises:
        ValueError: a pattern is not a valid regex, or matches nothing (unless
            ``allow_unmatched``).

    Example:
        >>> params = {'NFNet/~/linear': {'w': 0.0, 'b': 0.0}}
        >>> mask_from_patterns(params, NFNET_NO_DECAY_PATTERNS, invert=True,
        ...                    allow_unmatched=True)
        {'NFNet/~/linear': {'b': False, 'w': True}}
    """
    compiled = compile_patterns(patterns, what)
    paths_tree = tree_paths(tree)
    paths = jax.tree.leaves(paths_tree)
    hits = [0] * len(compiled)

    def matches(path: str) -> bool:
        found = False
        for i, c in enumerate(compiled):
            if c.fullmatch(path):
                hits[i] += 1
                found = True
        return found

    mask = jax.tree.map(lambda path: matches(path) != invert, paths_tree)
    if not allow_unmatched:
        _check_all_matched(compiled, hits, paths, what)
    return mask


def labels_from_patterns(
    tree: Any,
    rules: Mapping[str, Iterable[str]] | Sequence[tuple[str, Iterable[str]]],
    default: str,
    *,
    allow_unmatched: bool = False,
) -> Any:
    """Labels every leaf with the first rule whose patterns match it (for ``optax.partition``).

    Args:
        tree: parameter tree.
        rules: ``{label: patterns}`` (or a sequence of ``(label, patterns)`` pairs), tried
            in order; a leaf gets the label of the first rule with a fully matching
            pattern.
        default: label of leaves that no rule matches.
        allow_unmatched: do not raise for patterns that match no leaf.

    Returns:
        A tree of label strings with the structure of ``tree``.

    Raises:
        ValueError: a pattern is invalid or matches nothing (unless ``allow_unmatched``).

    Example:
        >>> params = {'NFNet/~/linear': {'w': 0.0, 'b': 0.0}, 'NFNet/~/conv': {'w': 0.0}}
        >>> labels_from_patterns(params, {'fc': [r'NFNet/~/linear/.*']}, default='body')
        {'NFNet/~/conv': {'w': 'body'}, 'NFNet/~/linear': {'b': 'fc', 'w': 'fc'}}
    """
    items = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
    compiled = [
        (label, compile_patterns(pats, f"patterns of label {label!r}")) for label, pats in items
    ]
    paths_tree = tree_paths(tree)
    paths = jax.tree.leaves(paths_tree)
    hits = [[0] * len(c) for _, c in compiled]

    def label_of(path: str) -> str:
        chosen = None
        for r, (label, pats) in enumerate(compiled):
            for i, c in enumerate(pats):
                if c.fullmatch(path):
                    hits[r][i] += 1
                    if chosen is None:
                        chosen = label
        return default if chosen is None else chosen

    labels = jax.tree.map(label_of, paths_tree)
    if not allow_unmatched:
        for (label, pats), h in zip(compiled, hits, strict=True):
            _check_all_matched(pats, h, paths, f"patterns of label {label!r}")
    return labels
