"""Multivariate tests: factors expanded into variants, and main effects read back.

A multivariate test varies several things at once (the model, a parameter, the
prompt template), each a *factor* with a few *levels*:

    {"model": ["flux-dev", "flux-pro"], "parameters.steps": [20, 40],
     "prompt_template": ["{prompt}", "{prompt}, studio light"]}

A factor is ``model``, ``prompt_template`` or ``parameters.<name>`` (that
parameter, merged over the client's like every variant's parameters). ``expand``
makes one variant per combination of levels (the full factorial), each with its
``factors`` (factor -> the level's text) set, the first (every factor at its first
level) being the control. The full factorial grows as the product of the level
counts, so ``fractional=True`` keeps a regular fraction instead:

- it needs at least three factors, all with the same number of levels m;
- it keeps the combinations whose level indices (0-based) sum to 0 modulo m, a
  1/m fraction: for two-level factors the half fraction defined by the
  highest-order interaction (I = ±ABC...), for three levels a third (a Latin
  square for three factors);
- every level of every factor appears equally often, and every combination of any
  k - 1 of the k factors exactly once, so main effects stay estimable and mutually
  unconfounded: each is aliased only with the interaction of all the other factors
  (resolution k). Read main effects from a fraction as "assuming that interaction
  is negligible".

``main_effects`` reads the results back per factor: for each level, the mean over
the variants at that level minus the grand mean (over variants' arm means, each
variant counted once, which is what a balanced design needs). A variant without a
value leaves the design unbalanced; it is left out, and the effects then mix in
part of the other factors.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from actors.errors import EaselError, ErrorCode
from actors.experiments.model import ArmMetric, MetricName, Variant

#: A factor names one of these; ``parameters.<name>`` one parameter.
MODEL = "model"
PROMPT_TEMPLATE = "prompt_template"
PARAMETER_PREFIX = "parameters."
#: More variants than this would spread traffic too thin to read anything.
MAX_VARIANTS = 64


def _invalid(message: str) -> EaselError:
    return EaselError(ErrorCode.INVALID_REQUEST, message, {"field": "factors"})


def _check(factors: Mapping[str, Sequence[Any]], model: str | None) -> None:
    if not factors:
        raise _invalid("a multivariate test needs at least one factor")
    for name, levels in factors.items():
        if name not in (MODEL, PROMPT_TEMPLATE) and not (
            name.startswith(PARAMETER_PREFIX) and len(name) > len(PARAMETER_PREFIX)
        ):
            raise _invalid(
                f"factor {name!r} is none of 'model', 'prompt_template', 'parameters.<name>'"
            )
        labels = [str(level) for level in levels]
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise _invalid(f"factor {name!r} needs two or more distinct levels")
    if model is None and MODEL not in factors:
        raise _invalid("without a 'model' factor the variants need a model")


def _runs(level_counts: list[int], fractional: bool) -> list[tuple[int, ...]]:
    runs = list(itertools.product(*(range(count) for count in level_counts)))
    if not fractional:
        return runs
    if len(level_counts) < 3 or len(set(level_counts)) != 1:
        raise _invalid("a fraction needs three or more factors with the same number of levels")
    return [run for run in runs if sum(run) % level_counts[0] == 0]


def variant_letter(index: int) -> str:
    """A, B, ... Z, AA, AB...: the index as a spreadsheet column."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def _short(text: str, limit: int = 32) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def expand(
    factors: Mapping[str, Sequence[Any]],
    *,
    model: str | None = None,
    prompt_template: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    fractional: bool = False,
) -> list[Variant]:
    """The variants of a multivariate test (see the module docstring).

    ``model``, ``prompt_template`` and ``parameters`` are what every variant has
    unless a factor sets it. Raises EaselError (INVALID_REQUEST) for a factor that
    is not one of the known kinds, fewer than two distinct levels, no model, a
    fraction of a design that has no regular one, or more than MAX_VARIANTS.
    """
    _check(factors, model)
    names = list(factors)
    levels = [list(factors[name]) for name in names]
    runs = _runs([len(found) for found in levels], fractional)
    if len(runs) > MAX_VARIANTS:
        raise _invalid(f"{len(runs)} variants; at most {MAX_VARIANTS}")
    variants = []
    for index, run in enumerate(runs):
        chosen = {name: levels[i][level] for i, (name, level) in enumerate(zip(names, run))}
        params = dict(parameters or {})
        params.update(
            {
                name.removeprefix(PARAMETER_PREFIX): value
                for name, value in chosen.items()
                if name.startswith(PARAMETER_PREFIX)
            }
        )
        labels = {name: str(value) for name, value in chosen.items()}
        variants.append(
            Variant(
                id=variant_letter(index),
                model=str(chosen.get(MODEL, model)),
                name=", ".join(
                    f"{name.removeprefix(PARAMETER_PREFIX)}={_short(label)}"
                    for name, label in labels.items()
                ),
                prompt_template=chosen.get(PROMPT_TEMPLATE, prompt_template),
                parameters=params,
                factors=labels,
            )
        )
    return variants


def main_effects(
    variants: Sequence[Variant],
    arms: Mapping[str, Mapping[MetricName, ArmMetric]],
    metrics: Iterable[MetricName] | None = None,
) -> dict[str, dict[str, dict[MetricName, float]]]:
    """factor -> level -> metric -> (mean at that level - grand mean).

    ``arms`` is the results' variant id -> metric -> value; ``metrics`` defaults to
    every metric any arm has. Only variants with ``factors`` count.
    """
    designed = [variant for variant in variants if variant.factors and variant.id in arms]
    if metrics is None:
        metrics = list(dict.fromkeys(m for v in designed for m in arms[v.id]))
    levels: dict[str, dict[str, None]] = {}
    for variant in designed:
        for factor, level in variant.factors.items():
            levels.setdefault(factor, {})[level] = None
    effects: dict[str, dict[str, dict[MetricName, float]]] = {
        factor: {level: {} for level in found} for factor, found in levels.items()
    }
    for metric in metrics:
        means = {
            variant.id: found.mean
            for variant in designed
            if (found := arms[variant.id].get(metric)) is not None and found.mean is not None
        }
        if len(means) < 2:
            continue
        grand = sum(means.values()) / len(means)
        for factor, found in levels.items():
            for level in found:
                at_level = [
                    means[variant.id]
                    for variant in designed
                    if variant.id in means and variant.factors.get(factor) == level
                ]
                if at_level:
                    effects[factor][level][metric] = sum(at_level) / len(at_level) - grand
    return effects
