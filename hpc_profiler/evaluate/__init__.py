"""The CPJUMP1 benchmark: average precision, permutation nulls, q-values, on MPI ranks.

Modules: :mod:`.ap` (pairs, cosine blocks, AP kernel), :mod:`.nulls`
(permutation nulls and p-values), :mod:`.stats` (BH, geometric mean,
directionality), :mod:`.tasks` (task definitions as data), :mod:`.run` (MPI
driver, CLI hooks), :mod:`.plots` (Figs. 4 and 5).
"""
from .run import add_evaluate_arguments, evaluate_batch, evaluate_profiles, main_evaluate

__all__ = ["add_evaluate_arguments", "evaluate_batch", "evaluate_profiles", "main_evaluate"]
