"""The feature-family registry (issue 17): one entry per family, in the family's own module."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from hpc_profiler.config import CPJUMP1_CHANNELS, FEATURE_FAMILIES, OBJECTS, load_config
from hpc_profiler.features import FAMILIES, family_feature_names, feature_names
from hpc_profiler.features.registry import Family
from test_features_site import CELLPROFILER5_COLUMNS, _is_feature, _reference, _restrict

PKG = Path(importlib.import_module("hpc_profiler.features").__file__).parent
ROOT = PKG.parents[1]
#: the module of each family (the CellProfiler module table of features/__init__.py)
MODULES = {"AreaShape": "shape", "Intensity": "intensity", "RadialDistribution": "radial", "Texture": "texture",
           "Granularity": "granularity", "Correlation": "correlation", "Neighbors": "neighbors"}


def _entries(module) -> list[Family]:
    return [v for v in vars(module).values() if isinstance(v, Family) and v.names.__module__ == module.__name__]


def test_every_allowed_family_has_one_entry_in_its_own_module():
    assert list(FAMILIES) == list(FEATURE_FAMILIES) and set(MODULES) == set(FEATURE_FAMILIES)
    for p in sorted(PKG.glob("*.py")):
        name = "hpc_profiler.features" + ("" if p.stem == "__init__" else f".{p.stem}")
        mod = importlib.import_module(name)
        own = _entries(mod)
        if p.stem in MODULES.values():
            fam = next(f for f, m in MODULES.items() if m == p.stem)
            assert [e.name for e in own] == [fam], f"{p.name}: entries {[e.name for e in own]}"
            assert FAMILIES[fam] is mod.FAMILY
            for fn in (own[0].names, own[0].measure, own[0].image_names):
                assert fn is None or fn.__module__ == mod.__name__, f"{fam}: {fn} lives outside {p.name}"
        else:
            assert own == [], f"{p.name} defines family entries {[e.name for e in own]}"


def test_registry_imports_no_family_module():
    tree = ast.parse((PKG / "registry.py").read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m.split(".")[-1] in MODULES.values() for m in imported), imported


def test_per_channel_and_min_channels():
    params = load_config(ROOT / "configs" / "cpjump1.yaml").features
    chans = list(CPJUMP1_CHANNELS)
    for name, fam in FAMILIES.items():
        assert fam.name == name
        for obj in ("Cells", "Nuclei"):
            names = family_feature_names(name, obj, chans, params)
            assert names, f"{name} {obj}: no columns"
            with_channel = [n for n in names if any(c in n.split("_") for c in chans)]
            assert with_channel == (names if fam.per_channel else []), name
            one = family_feature_names(name, obj, chans[:1], params)
            assert (one == []) == (fam.min_channels > 1), name
    assert FAMILIES["Granularity"].measure is None  # measured for the whole site at once
    with pytest.raises(ValueError, match="unknown feature family 'Shape'"):
        family_feature_names("Shape", "Cells", chans, params)


@pytest.mark.parametrize("obj", OBJECTS)
def test_cpjump1_names_equal_cellprofiler_reference(obj):
    cfg = load_config(ROOT / "configs" / "cpjump1.yaml")
    assert sorted(cfg.features.families) == sorted(FEATURE_FAMILIES)
    channels = list(cfg.channels)
    ref = [n for n in _restrict(_reference(obj), channels) if _is_feature(n)] + list(CELLPROFILER5_COLUMNS)
    ours = [n[len(obj) + 1:] for n in feature_names(channels, cfg.features)[obj]]
    assert len(ours) == len(set(ours))
    assert sorted(ours) == sorted(ref), (
        f"{obj}: extra {sorted(set(ours) - set(ref))[:8]}, missing {sorted(set(ref) - set(ours))[:8]}"
    )
