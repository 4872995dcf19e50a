"""Config stage: YAML -> typed, validated objects; errors name the key and the file."""
import textwrap
from pathlib import Path

import pytest

from hpc_profiler import config as C

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.mark.parametrize("name", ["cpjump1.yaml", "demo.yaml"])
def test_shipped_configs_validate(name):
    cfg = C.load_config(REPO / "configs" / name)
    assert cfg.channels[:5] == ["DNA", "ER", "RNA", "AGP", "Mito"]
    assert len(cfg.hash()) == 16


def test_cpjump1_config_matches_pipeline_settings():
    cfg = C.load_config(REPO / "configs" / "cpjump1.yaml")
    n, c = cfg.segmentation.nuclei, cfg.segmentation.cells
    assert (n.threshold_method, n.smoothing_scale, n.correction_factor) == ("li", 3.0, 1.25)
    assert (n.lower_bound, n.upper_bound, n.min_diameter, n.max_diameter) == (0.014, 1.0, 10.0, 75.0)
    assert (c.lower_bound, c.upper_bound, c.correction_factor) == (0.005, 0.014, 1.0)
    f = cfg.features
    assert f.texture.scales == [3, 5, 10] and f.texture.gray_levels == 256
    g = f.granularity
    assert (g.spectrum_length, g.subsample_size, g.image_sample_size, g.element_size) == (16, 0.5, 0.5, 10)
    assert f.radial.bins == 4 and f.radial.max_radius == 100 and f.zernike_degree == 9
    assert f.correlation.threshold_percent == 15.0
    assert cfg.input.phenix_channels == {1: "Mito", 2: "AGP", 3: "RNA", 4: "ER", 5: "DNA"}


def test_unknown_key_named_with_file_and_suggestion(tmp_path):
    p = write(tmp_path, """
        segmentation:
          nuclei:
            lower_bund: 0.01
        """)
    with pytest.raises(C.ConfigError) as e:
        C.load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "segmentation.nuclei.lower_bund" in msg and "lower_bound" in msg


@pytest.mark.parametrize(
    "text, key",
    [
        ("device: tpu", "device"),
        ("features:\n  texture:\n    scales: [3, five]", "features.texture.scales[1]"),
        ("executor:\n  cpus_per_task: 2.5", "executor.cpus_per_task"),
        ("illumination:\n  enabled: yes-please", "illumination.enabled"),
        ("channels: DNA", "channels"),
        ("segmentation: [1, 2]", "segmentation"),
        ("features:\n  radial:\n    bins: true", "features.radial.bins"),
    ],
)
def test_wrong_type_names_key(tmp_path, text, key):
    p = write(tmp_path, text + "\n")
    with pytest.raises(C.ConfigError) as e:
        C.load_config(p)
    assert f"{p}: {key}:" in str(e.value)


def test_missing_channel_is_an_error(tmp_path):
    p = write(tmp_path, "channels: [ER, RNA, AGP, Mito]\n")
    with pytest.raises(C.ConfigError, match=r"segmentation\.nuclei\.channel: channel 'DNA'"):
        C.load_config(p)
    p = write(tmp_path, "channels: [DNA, ER, AGP, Mito]\n")
    with pytest.raises(C.ConfigError, match=r"segmentation\.cells\.channel: channel 'RNA'"):
        C.load_config(p)


def test_phenix_map_must_cover_channels(tmp_path):
    p = write(tmp_path, """
        channels: [DNA, ER, RNA, AGP, Mito, Brightfield]
        input:
          phenix_dir: imgs
        """)
    with pytest.raises(C.ConfigError, match=r"input\.phenix_channels: .*Brightfield"):
        C.load_config(p)


def test_bounds_and_enums_checked(tmp_path):
    p = write(tmp_path, "segmentation:\n  cells:\n    lower_bound: 0.02\n    upper_bound: 0.01\n")
    with pytest.raises(C.ConfigError, match="segmentation.cells"):
        C.load_config(p)
    p = write(tmp_path, "features:\n  families: [AreaShape, Haralick]\n")
    with pytest.raises(C.ConfigError, match="Haralick"):
        C.load_config(p)


def test_not_yaml_and_missing_file(tmp_path):
    p = write(tmp_path, "a: [1, 2\n")
    with pytest.raises(C.ConfigError, match="not valid YAML"):
        C.load_config(p)
    with pytest.raises(C.ConfigError, match="cannot read"):
        C.load_config(tmp_path / "nope.yaml")


def test_yaml_is_data_only(tmp_path):
    # a python object tag must not be constructed (safe_load)
    p = write(tmp_path, "name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(C.ConfigError, match="not valid YAML"):
        C.load_config(p)


def test_hash_stable_over_key_order_and_ignores_resources(tmp_path):
    a = write(tmp_path, "channels: [DNA, ER, RNA, AGP, Mito]\nfeatures:\n  zernike_degree: 5\n  texture: {scales: [3], gray_levels: 256}\n", "a.yaml")
    b = write(tmp_path, "features:\n  texture: {gray_levels: 256, scales: [3]}\n  zernike_degree: 5\nchannels: [DNA, ER, RNA, AGP, Mito]\nexecutor: {partition: gpu}\noutput_dir: elsewhere\n", "b.yaml")
    c = write(tmp_path, "features:\n  zernike_degree: 6\n", "c.yaml")
    ha, hb, hc = (C.load_config(p).hash() for p in (a, b, c))
    assert ha == hb
    assert ha != hc


def test_relative_paths_resolve_against_config_folder(tmp_path):
    sub = tmp_path / "cfgs"
    sub.mkdir()
    p = write(sub, "output_dir: ../out\ninput:\n  loaddata_csv: data/ld.csv\n")
    cfg = C.load_config(p)
    assert cfg.out == (tmp_path / "out").resolve()
    assert cfg.path(cfg.input.loaddata_csv) == (sub / "data" / "ld.csv").resolve()
    assert cfg.path("s3://bucket/x") == "s3://bucket/x"


def test_schema_rows_cover_every_key():
    rows = C.schema_rows()
    keys = {r[0] for r in rows}
    for k in ("segmentation.nuclei.lower_bound", "features.granularity.subsample_size", "executor.gres", "input.gallery.root"):
        assert k in keys
    assert all(r[3] for r in rows), [r[0] for r in rows if not r[3]]
