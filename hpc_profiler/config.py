"""Typed, validated configuration read from YAML.

A configuration file is parsed with ``yaml.safe_load`` into the dataclasses
below. Every key is checked: an unknown key, a wrong type or a channel that the
pipeline needs but the config does not declare raises :class:`ConfigError`
naming the file and the dotted key (``segmentation.nuclei.lower_bound``).

The defaults are the settings of the CPJUMP1 CellProfiler 4 analysis pipeline
(see ``docs/cellprofiler_mapping.md``); ``configs/cpjump1.yaml`` spells them out
and ``configs/demo.yaml`` is the small embedded default.

Relative paths in a config are resolved against the folder of the config file,
so a Slurm task that reloads the file from another working directory sees the
same paths.

:func:`config_hash` identifies results: it hashes the canonical JSON (sorted
keys) of the sections that change numbers (channels, illumination,
segmentation, features), so key order, comments, resources and paths do not
invalidate finished site files.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

CPJUMP1_CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
#: Opera Phenix channel numbers of CPJUMP1 (``-chN`` in the file names).
CPJUMP1_PHENIX_CHANNELS = {1: "Mito", 2: "AGP", 3: "RNA", 4: "ER", 5: "DNA"}
OBJECTS = ["Nuclei", "Cells", "Cytoplasm"]
FEATURE_FAMILIES = [
    "AreaShape",
    "Intensity",
    "RadialDistribution",
    "Texture",
    "Granularity",
    "Correlation",
    "Neighbors",
]
#: Sections whose content changes the numbers a site file holds.
RESULT_SECTIONS = ("channels", "illumination", "segmentation", "features")


class ConfigError(ValueError):
    """A configuration problem, with the file and the dotted key named.

    The loader collects every problem of a file before raising (two typos are
    reported together); :attr:`problems` holds one ``<file>: <key>: ...`` line
    each and ``str()`` joins them with newlines.
    """

    def __init__(self, *lines: str):
        self.problems = [str(line) for line in lines]
        super().__init__("\n".join(self.problems))

    @classmethod
    def collect(cls, errors) -> "ConfigError":
        """One error holding the problems of several :class:`ConfigError`."""
        lines = []
        for e in errors:
            lines.extend(getattr(e, "problems", [str(e)]))
        return cls(*lines)


def opt(default: Any = dataclasses.MISSING, doc: str = "", *, factory=None):
    """A dataclass field with a documentation string (used by the docs)."""
    md = {"doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


# --------------------------------------------------------------------------- input
@dataclass
class GalleryInput:
    """A screen in the Cell Painting Gallery layout (local path or s3:// URL)."""

    root: str = opt(doc="Root of the layout: a local folder or an s3:// URL")
    batch: str = opt(doc="Batch folder name under images/ and workspace/load_data_csv/")
    plates: list[str] = opt(factory=list, doc="Plates to process (empty: all plates of the batch)")
    anonymous: bool = opt(False, doc="Anonymous access to public buckets (like --no-sign-request)")
    use_illum: bool = opt(True, doc="Use the batch's CellProfiler Illum<Channel>.npy files")
    endpoint_url: Optional[str] = opt(None, doc="S3 endpoint (for S3-compatible servers)")


@dataclass
class InputConfig:
    """Where the images are. Exactly one of loaddata_csv, phenix_dir, gallery."""

    loaddata_csv: Optional[str] = opt(
        None, doc="CellProfiler LoadData CSV (FileName_Orig<Ch>, PathName_Orig<Ch>, Metadata_Plate/Well/Site)"
    )
    phenix_dir: Optional[str] = opt(None, doc="Folder of Opera Phenix TIFFs rXXcXXfXXp01-chXsk1fk1fl1.tiff")
    phenix_plate: Optional[str] = opt(None, doc="Plate name for phenix_dir (default: the folder name)")
    phenix_channels: dict[int, str] = opt(
        factory=lambda: dict(CPJUMP1_PHENIX_CHANNELS), doc="Phenix channel number -> channel name"
    )
    gallery: Optional[GalleryInput] = opt(None, doc="Cell Painting Gallery layout source")
    well_metadata_csv: Optional[str] = opt(
        None, doc="Per-well metadata table (Metadata_Plate, Metadata_Well, more Metadata_* columns)"
    )
    illum_dir: Optional[str] = opt(None, doc="Folder of precomputed illumination functions (default: output_dir/illum)")
    full_scale: float = opt(65535.0, doc="Intensity that maps to 1.0 (CellProfiler divides 16-bit images by 65535)")
    retries: int = opt(4, doc="Read attempts per file on transient storage errors")
    retry_backoff_s: float = opt(0.25, doc="First retry delay, doubled each attempt")
    prefetch: int = opt(1, doc="Sites whose images are read ahead while one computes (0: off)")
    cache_dir: Optional[str] = opt(None, doc="Local cache for remote reads (fsspec filecache); null: off")


# --------------------------------------------------------------------------- synth
@dataclass
class SynthConfig:
    """Synthetic CPJUMP1-like batch for tests and the demo (hpc-profiler synth)."""

    modalities: list[Literal["compound", "crispr", "orf"]] = opt(
        factory=lambda: ["compound"], doc="One plate layout per modality"
    )
    replicate_plates: int = opt(2, doc="Plates per modality (replicates)")
    wells: int = opt(24, doc="Wells per plate (a subset of the 384-well layout, controls included)")
    sites_per_well: int = opt(2, doc="Sites per well")
    size: int = opt(540, doc="Site width and height in pixels (CPJUMP1: 1080)")
    cells_per_site: int = opt(60, doc="Mean number of cells per site")
    effect_size: float = opt(1.0, doc="Scale of perturbation effects (0: no effects)")
    seed: int = opt(0, doc="Random seed; the batch is deterministic for a seed")


# ----------------------------------------------------------------- illumination
@dataclass
class DnaBackgroundConfig:
    """CorrectIlluminationCalculate 'Background' on DNA, per image, subtracted."""

    enabled: bool = opt(True, doc="Subtract the DNA background before nuclei")
    block_size: int = opt(30, doc="Block size of the background (minimum per block)")
    smoothing: float = opt(50.0, doc="Gaussian smoothing of the background, pixels")


@dataclass
class IlluminationConfig:
    """CorrectIlluminationCalculate/Apply (CPJUMP1 illumination pipeline)."""

    enabled: bool = opt(True, doc="Compute and apply per-plate illumination functions")
    downsample: int = opt(4, doc="Downsampling factor before smoothing (the pipeline resizes by 0.25)")
    median_filter_size: int = opt(50, doc="Median filter size on the downsampled average, pixels")
    robust_minimum_percentile: float = opt(2.0, doc="Function divided by this percentile so that it is >= 1")
    max_unreadable_fraction: float = opt(
        0.05, doc="Largest share of a plate's sites whose images may be unreadable (each one a row of the "
        "failure table) for its illumination function to be written from the rest; above it the plate fails"
    )
    dna_background: DnaBackgroundConfig = opt(factory=DnaBackgroundConfig, doc="DNA background subtraction")


# ----------------------------------------------------------------- segmentation
@dataclass
class NucleiConfig:
    """IdentifyPrimaryObjects on the background-subtracted DNA image."""

    channel: str = opt("DNA", doc="Channel the nuclei are found in")
    threshold_method: Literal["li", "otsu"] = opt("li", doc="Global threshold (li = Minimum Cross-Entropy)")
    smoothing_scale: float = opt(3.0, doc="Threshold smoothing scale (CellProfiler's Gaussian scale)")
    correction_factor: float = opt(1.25, doc="Threshold correction factor")
    lower_bound: float = opt(0.014, doc="Lower bound on the threshold (of full scale); microscope specific")
    upper_bound: float = opt(1.0, doc="Upper bound on the threshold")
    declump_filter_size: int = opt(7, doc="Size of the smoothing filter for declumping (shape)")
    min_maxima_distance: int = opt(8, doc="Suppress local maxima closer than this, pixels")
    min_diameter: float = opt(10.0, doc="Discard objects with a smaller equivalent diameter, pixels")
    max_diameter: float = opt(75.0, doc="Discard objects with a larger equivalent diameter, pixels")
    exclude_border: bool = opt(True, doc="Discard objects touching the image border")
    fill_holes: bool = opt(False, doc="Fill holes in nuclei (CPJUMP1: no)")


@dataclass
class CellsConfig:
    """IdentifySecondaryObjects, 'Watershed - Image', seeded by the nuclei."""

    channel: str = opt("RNA", doc="Channel the cells are grown in")
    threshold_method: Literal["li", "otsu"] = opt("li", doc="Global threshold for the cell foreground")
    smoothing_scale: float = opt(0.0, doc="Threshold smoothing scale (0: none)")
    correction_factor: float = opt(1.0, doc="Threshold correction factor")
    lower_bound: float = opt(0.005, doc="Lower bound on the threshold")
    upper_bound: float = opt(0.014, doc="Upper bound on the threshold")
    fill_holes: bool = opt(True, doc="Fill holes in cells")


@dataclass
class SegmentationConfig:
    nuclei: NucleiConfig = opt(factory=NucleiConfig, doc="Nuclei settings")
    cells: CellsConfig = opt(factory=CellsConfig, doc="Cells settings")


# ----------------------------------------------------------------- features
@dataclass
class RadialConfig:
    """MeasureObjectIntensityDistribution."""

    bins: int = opt(4, doc="Number of radial bins")
    scaled: bool = opt(True, doc="Scale bins per object")
    max_radius: int = opt(100, doc="Maximum radius for unscaled bins")


@dataclass
class TextureConfig:
    """MeasureTexture (Haralick)."""

    gray_levels: int = opt(256, doc="Gray levels of the co-occurrence matrices")
    scales: list[int] = opt(factory=lambda: [3, 5, 10], doc="Pixel offsets")
    image_texture: bool = opt(True, doc="Also measure whole-image texture")
    undefined_as_nan: bool = opt(
        False, doc="Objects without pixel pairs at a scale: NaN (True) or 0 as CellProfiler writes (False)"
    )


@dataclass
class GranularityConfig:
    """MeasureGranularity."""

    spectrum_length: int = opt(16, doc="Range of the granular spectrum")
    subsample_size: float = opt(0.5, doc="Subsampling factor for granularity measurements")
    image_sample_size: float = opt(0.5, doc="Subsampling factor for background reduction")
    element_size: int = opt(10, doc="Radius of the structuring element for background reduction")


@dataclass
class CorrelationConfig:
    """MeasureColocalization (Costes off)."""

    threshold_percent: float = opt(15.0, doc="Threshold as % of the maximum intensity in each object")


@dataclass
class NeighborsConfig:
    """MeasureObjectNeighbors."""

    cells_distance: int = opt(5, doc="Cells: neighbors within this many pixels")
    nuclei_distance: int = opt(1, doc="Nuclei: neighbors within this many pixels")
    cells_adjacent: bool = opt(True, doc="Cells: also adjacent neighbors (Neighbors_*_Adjacent)")
    count_discarded: bool = opt(
        True,
        doc="Also count objects the segmentation discarded as neighbors (cells of border nuclei, too-large"
        " nuclei): CellProfiler's 'Consider objects discarded for touching image border? = Yes' (CPJUMP1)",
    )


@dataclass
class FeaturesConfig:
    objects: list[str] = opt(factory=lambda: list(OBJECTS), doc="Objects measured")
    families: list[str] = opt(factory=lambda: list(FEATURE_FAMILIES), doc="Feature families measured")
    zernike_degree: int = opt(9, doc="Highest Zernike degree in AreaShape")
    radial: RadialConfig = opt(factory=RadialConfig, doc="Radial distribution")
    texture: TextureConfig = opt(factory=TextureConfig, doc="Texture")
    granularity: GranularityConfig = opt(factory=GranularityConfig, doc="Granularity")
    correlation: CorrelationConfig = opt(factory=CorrelationConfig, doc="Colocalization")
    neighbors: NeighborsConfig = opt(factory=NeighborsConfig, doc="Neighbors")
    empty_objects: Literal["nan", "cellprofiler"] = opt(
        "nan",
        doc="Objects without pixels (an empty cytoplasm): nan = NaN for every statistic (integrated intensities 0);"
        " cellprofiler = what CellProfiler writes (0 for Intensity, Location_*Intensity and RadialCV, NaN for"
        " AreaShape and the rest)",
    )


# ----------------------------------------------------------------- executor
@dataclass
class StageResourcesConfig:
    """Resources of one stage's jobs; a key left null takes the executor block's value, and an empty
    string (0 for gpus_per_node) clears it (``gres: ""``: this stage asks for no gres)."""

    partition: Optional[str] = opt(None, doc="Slurm partition")
    account: Optional[str] = opt(None, doc="Slurm account")
    qos: Optional[str] = opt(None, doc="Slurm QoS")
    time_min: Optional[int] = opt(None, doc="Time limit per task (MPI stages: per job), minutes")
    cpus_per_task: Optional[int] = opt(None, doc="CPUs per array task (MPI stages: per rank)")
    mem_gb: Optional[float] = opt(None, doc="Memory per task (MPI stages: per job), GB")
    gres: Optional[str] = opt(None, doc="Generic resources, e.g. gpu:1")
    gpus_per_node: Optional[int] = opt(None, doc="GPUs per node (alternative to gres)")
    array_parallelism: Optional[int] = opt(None, doc="Maximum array tasks running at once")
    extra_sbatch: Optional[list[str]] = opt(None, doc="Extra #SBATCH lines; replace the executor block's list")
    mpi_ranks: Optional[int] = opt(None, doc="Ranks of an MPI stage (reduce, evaluate)")


@dataclass
class ExecutorConfig:
    """Where per-site work runs (submitit AutoExecutor) and with which resources.

    The keys are every stage's defaults; ``stages`` overrides them per stage
    (``stages: {extract: {partition: gpu, gres: "gpu:1"}}``), for the array jobs
    (illum, extract) and the MPI jobs (reduce, evaluate) alike.
    """

    kind: Literal["auto", "slurm", "local", "debug"] = opt(
        "auto", doc="auto: Slurm when sbatch is on PATH, else local"
    )
    partition: Optional[str] = opt(None, doc="Slurm partition")
    account: Optional[str] = opt(None, doc="Slurm account")
    qos: Optional[str] = opt(None, doc="Slurm QoS")
    time_min: int = opt(60, doc="Time limit per task, minutes")
    cpus_per_task: int = opt(1, doc="CPUs per task")
    mem_gb: float = opt(8.0, doc="Memory per task, GB")
    gres: Optional[str] = opt(None, doc="Generic resources, e.g. gpu:1")
    gpus_per_node: Optional[int] = opt(None, doc="GPUs per node (alternative to gres)")
    array_parallelism: int = opt(64, doc="Maximum array tasks running at once")
    sites_per_task: int = opt(16, doc="Sites per array task")
    extra_sbatch: list[str] = opt(factory=list, doc="Extra #SBATCH lines (without '#SBATCH')")
    max_retries: int = opt(
        3, doc="Resubmissions of a preempted or timed-out task, and of the sites of a task that left the "
        "Slurm queue without a result (killed, cancelled, out of memory, node failure)"
    )
    mpi_ranks: int = opt(2, doc="Ranks for the MPI stages (reduce, evaluate)")
    poll_interval_s: float = opt(
        5.0, doc="Seconds between the driver's squeue checks of its Slurm jobs: a task that left the queue "
        "without a result is reported failed within one interval"
    )
    progress_interval_s: float = opt(
        30.0, doc="Seconds between the driver's progress lines (sites done / total, sites/s, ETA) when its "
        "output is not a terminal (a log under Slurm or nohup); on a terminal a bar moves site by site"
    )
    mpi_startup_timeout_s: float = opt(
        120.0, doc="Seconds an MPI rank may take to reach the first barrier (MPI_Init included) before it "
        "aborts the job, so a rank lost at start-up cannot leave the others waiting until the time limit"
    )
    stages: dict[str, StageResourcesConfig] = opt(
        factory=dict, doc="Per-stage overrides of the keys above (illum, extract, reduce, evaluate), "
        "e.g. {extract: {partition: gpu, gres: 'gpu:1'}, reduce: {mpi_ranks: 16}}"
    )


# ----------------------------------------------------------------- reduce
@dataclass
class FeatureSelectConfig:
    """pycytominer.feature_select."""

    operations: list[
        Literal["variance_threshold", "frequency_threshold", "correlation_threshold", "drop_na_columns", "blocklist"]
    ] = opt(
        factory=lambda: ["frequency_threshold", "correlation_threshold", "drop_na_columns", "blocklist"],
        doc="Operations in order. frequency_threshold (freq_cut/unique_cut) is what pycytominer < 1.3 and "
        "CPJUMP1 called variance_threshold; variance_threshold is pycytominer >= 1.3's min_variance filter",
    )
    freq_cut: float = opt(0.05, doc="frequency_threshold freq_cut (2nd most common / most common value count)")
    unique_cut: float = opt(0.01, doc="frequency_threshold unique_cut (unique values / wells)")
    min_variance: float = opt(1e-6, doc="variance_threshold: drop features with variance <= this")
    corr_threshold: float = opt(0.9, doc="correlation_threshold")
    corr_method: Literal["pearson", "spearman", "kendall"] = opt("pearson", doc="correlation method")
    na_cutoff: float = opt(0.05, doc="drop_na_columns cutoff")
    blocklist_file: Optional[str] = opt(None, doc="Blocklist file (default: the shipped pycytominer list)")


@dataclass
class ReduceConfig:
    """Site files -> well profiles -> normalized -> feature-selected."""

    aggregate: Literal["median", "mean"] = opt("median", doc="Aggregation of cells per well")
    also_mean: bool = opt(False, doc="Also write a mean-aggregated table")
    normalize_method: Literal["mad_robustize", "standardize"] = opt("mad_robustize", doc="pycytominer normalize method")
    normalize_samples: Literal["negcon", "all"] = opt("negcon", doc="Reference wells for normalization")
    mad_robustize_epsilon: float = opt(1e-18, doc="pycytominer's epsilon")
    feature_select: FeatureSelectConfig = opt(factory=FeatureSelectConfig, doc="Feature selection")
    csv: bool = opt(False, doc="Also write CSV tables")


# ----------------------------------------------------------------- import
@dataclass
class CellProfilerImportConfig:
    """hpc-profiler import cellprofiler: existing CellProfiler CSVs or SQLite -> site files."""

    compartments: list[str] = opt(
        factory=lambda: ["Cells", "Cytoplasm", "Nuclei"],
        doc="Compartment files/tables (<prefix><name>.csv or SQLite tables), joined on their Parent_ columns",
    )
    image_table: str = opt("Image", doc="Image table (<prefix>Image.csv or the SQLite table)")
    plate: Optional[str] = opt(
        None, doc="Plate name when the image table has no Metadata_Plate (default: from the folder or file name)"
    )
    chunk_rows: int = opt(20000, doc="Rows read at a time from a batch CSV (bounds memory per rank)")
    site_dtype: Literal["float32", "float64"] = opt(
        "float32", doc="Precision of the features in the site files (float64 keeps CellProfiler's values exactly)"
    )


# ----------------------------------------------------------------- evaluate
#: A row rule: column -> accepted values. A row matches a list of rules when it
#: matches any rule, and a rule when every column holds one of its values.
RowRules = list[dict[str, list[str]]]


@dataclass
class EvalTaskConfig:
    """One benchmark task as data (copairs' pair rules plus CPJUMP1 steps).

    ``kind: retrieval`` ranks, for every query profile, its positives and
    negatives by similarity (copairs ``average_precision`` semantics: two rows
    are a positive pair when they share every ``pos_sameby`` column and differ
    in every ``pos_diffby`` column; likewise for negatives). Rows matching
    ``controls`` get a unique reference index (copairs
    ``assign_reference_index``), so controls are never positives of each other
    and trt-trt pairs are never negatives. ``kind: directionality`` compares
    cosines of ``pair_a`` x ``pair_b`` rows sharing ``pair_by`` with the null of
    pairs that do not.
    """

    kind: Literal["retrieval", "directionality"] = opt("retrieval", doc="retrieval (AP) or directionality")
    subset: RowRules = opt(factory=list, doc="Rows used (empty: all rows)")
    queries: RowRules = opt(factory=list, doc="Rows reported as queries (empty: every row with a positive)")
    controls: RowRules = opt(
        factory=lambda: [{"Metadata_control_type": ["negcon"]}], doc="Reference control rows (negatives pool)"
    )
    pos_sameby: list[str] = opt(factory=lambda: ["Metadata_broad_sample"], doc="Positives share these columns")
    pos_diffby: list[str] = opt(factory=lambda: ["Metadata_Plate"], doc="Positives differ in these columns")
    neg_sameby: list[str] = opt(factory=list, doc="Negatives share these columns")
    neg_diffby: list[str] = opt(
        factory=lambda: ["Metadata_broad_sample"], doc="Negatives differ in these columns"
    )
    similarity: Literal["cosine", "abs_cosine"] = opt("cosine", doc="Signed or absolute cosine similarity")
    consensus_by: list[str] = opt(factory=list, doc="Average replicates by these columns first (empty: no)")
    group_by: list[str] = opt(
        factory=lambda: ["Metadata_modality", "Metadata_cell_type", "Metadata_timepoint"],
        doc="Run the task separately per group (summary rows)",
    )
    class_by: list[str] = opt(factory=lambda: ["Metadata_broad_sample"], doc="Columns of a class (mAP, q)")
    active_from: Optional[str] = opt(None, doc="Keep only classes retrieved by this task (e.g. replicate)")
    active_by: list[str] = opt(
        factory=lambda: ["Metadata_broad_sample"], doc="Columns matching rows to active_from's classes"
    )
    pair_a: RowRules = opt(factory=list, doc="directionality: first side of the pairs")
    pair_b: RowRules = opt(factory=list, doc="directionality: second side of the pairs")
    pair_by: list[str] = opt(factory=lambda: ["Metadata_gene"], doc="directionality: true pairs share these")
    pair_sameby: list[str] = opt(factory=lambda: ["Metadata_cell_type"], doc="directionality: all pairs share these")
    multilabel_col: Optional[str] = opt(
        None,
        doc="copairs multilabel: this column holds several labels joined by multilabel_sep; it must be in "
        "pos_sameby (positives share one label, one AP per query and label) and in neg_diffby (negatives share none)",
    )
    multilabel_sep: Optional[str] = opt(
        None, doc="Separator of the labels in multilabel_col (null: the vertical bar, as in Broad/LINCS metadata)"
    )


def _trt_or_negcon() -> list:
    return [{"Metadata_pert_type": ["trt"]}, {"Metadata_control_type": ["negcon"]}]


def default_eval_tasks() -> dict:
    """The CPJUMP1 tasks (Chandrasekaran et al. 2024, Figs. 4 and 5) as data.

    1 ``replicate``: perturbation detection, replicates on other plates vs the
    negative controls of the plate type; 2 ``sister_compound`` /
    ``sister_crispr``: consensus profiles sharing a gene within a modality
    (absolute / signed cosine); 3 ``compound_crispr`` / ``compound_orf``:
    compounds vs genetic perturbations of their target (absolute cosine);
    4 ``direction_*``: cosine of same-gene pairs vs different-gene pairs.
    Tasks 2-4 keep only perturbations retrieved by task 1.
    """
    trt = [{"Metadata_pert_type": ["trt"]}]
    active = dict(
        active_from="replicate", active_by=["Metadata_broad_sample", "Metadata_cell_type", "Metadata_timepoint"]
    )
    consensus = ["Metadata_broad_sample", "Metadata_timepoint"]
    tasks = {"replicate": EvalTaskConfig(subset=_trt_or_negcon(), queries=trt)}
    for mod, sim in (("compound", "abs_cosine"), ("crispr", "cosine")):
        tasks[f"sister_{mod}"] = EvalTaskConfig(
            subset=[{"Metadata_pert_type": ["trt"], "Metadata_modality": [mod]}],
            queries=trt,
            controls=[],
            pos_sameby=["Metadata_gene"],
            pos_diffby=["Metadata_broad_sample"],
            neg_diffby=["Metadata_gene"],
            similarity=sim,
            consensus_by=consensus,
            **active,
        )
    for gen in ("crispr", "orf"):
        tasks[f"compound_{gen}"] = EvalTaskConfig(
            subset=[{"Metadata_pert_type": ["trt"], "Metadata_modality": ["compound", gen]}],
            queries=[{"Metadata_modality": ["compound"]}],
            controls=[],
            pos_sameby=["Metadata_gene"],
            pos_diffby=["Metadata_modality"],
            neg_diffby=["Metadata_gene", "Metadata_modality"],
            similarity="abs_cosine",
            consensus_by=consensus,
            group_by=["Metadata_cell_type"],
            **active,
        )
    for a, b in (("orf", "crispr"), ("compound", "crispr"), ("compound", "orf")):
        tasks[f"direction_{a}_{b}"] = EvalTaskConfig(
            kind="directionality",
            subset=[{"Metadata_pert_type": ["trt"], "Metadata_modality": [a, b]}],
            controls=[],
            consensus_by=consensus,
            group_by=["Metadata_cell_type"],
            pair_a=[{"Metadata_modality": [a]}],
            pair_b=[{"Metadata_modality": [b]}],
            **active,
        )
    return tasks


@dataclass
class EvaluateConfig:
    """The CPJUMP1 benchmark (average precision, permutation nulls, q-values)."""

    null_size: int = opt(100000, doc="Permutations per null distribution")
    seed: int = opt(0, doc="Random seed of the nulls")
    q_threshold: float = opt(0.05, doc="A class is retrieved when its q-value is below this")
    tasks: list[str] = opt(
        factory=lambda: list(default_eval_tasks()), doc="Tasks to run (names in definitions), in order"
    )
    profiles: Literal["normalized", "feature_selected"] = opt("feature_selected", doc="Input well table")
    definitions: dict[str, EvalTaskConfig] = opt(
        factory=default_eval_tasks, doc="Task definitions by name (replaces the defaults when given)"
    )
    class_significance: Literal["map_permutation", "geomean_q"] = opt(
        "map_permutation",
        doc="Class q: BH over classes of the class mAP permutation p-value (the paper's and copairs' "
        "mean_average_precision) or the geometric mean of its queries' BH q-values (geomean_q)",
    )
    map_pvalue: bool = opt(False, doc="With geomean_q: also compute the class mAP permutation p-value")
    empty_task: Literal["auto", "error", "warn"] = opt(
        "auto",
        doc="A task left with no queries, positives or negatives: error (stop, exit 2), warn (skip it with a "
        "WARNING, run the others, exit 3), auto: error for tasks named in evaluate.tasks, while evaluate.tasks is "
        "the default CPJUMP1 list skip with a WARNING and exit 0 (a batch without ORF plates skips the ORF tasks); "
        "all tasks empty is an error",
    )
    block_size: int = opt(256, doc="Most queries per similarity block (BLAS) and per work unit of a rank")
    plots: bool = opt(True, doc="Write Fig. 4 / Fig. 5 PNGs")
    csv: bool = opt(True, doc="Also write CSV copies of the tables")
    drop_nonfinite_features: bool = opt(
        True, doc="Drop features that are NaN/inf in any well (else such a well is an error naming it)"
    )


# ----------------------------------------------------------------- top level
@dataclass
class Config:
    name: str = opt("hpc_profiler", doc="Batch name (logs and outputs)")
    device: Literal["auto", "cpu", "gpu"] = opt("auto", doc="auto: GPU when CuPy sees one")
    output_dir: str = opt("output", doc="Where site files, tables, logs and plots go")
    channels: list[str] = opt(factory=lambda: list(CPJUMP1_CHANNELS), doc="Channel names, in order")
    input: InputConfig = opt(factory=InputConfig, doc="Image source")
    synth: Optional[SynthConfig] = opt(None, doc="Generate this synthetic batch as the input when it is missing")
    illumination: IlluminationConfig = opt(factory=IlluminationConfig, doc="Illumination correction")
    segmentation: SegmentationConfig = opt(factory=SegmentationConfig, doc="Segmentation")
    features: FeaturesConfig = opt(factory=FeaturesConfig, doc="Features")
    executor: ExecutorConfig = opt(factory=ExecutorConfig, doc="Executor and resources")
    reduce: ReduceConfig = opt(factory=ReduceConfig, doc="Reduction to well profiles")
    cellprofiler: CellProfilerImportConfig = opt(
        factory=CellProfilerImportConfig, doc="Import of existing CellProfiler outputs (hpc-profiler import)"
    )
    evaluate: EvaluateConfig = opt(factory=EvaluateConfig, doc="Benchmark")

    #: file the config was read from (not a YAML key)
    source: Optional[str] = field(default=None, compare=False, repr=False, metadata={"internal": True})

    # ---------------------------------------------------------------- helpers
    def path(self, p: Optional[str]) -> Optional[Path]:
        """Resolve ``p`` against the config file's folder (URLs pass through)."""
        if p is None:
            return None
        if "://" in str(p):
            return p  # type: ignore[return-value]
        pp = Path(os.path.expanduser(str(p)))
        if not pp.is_absolute() and self.source:
            pp = Path(self.source).resolve().parent / pp
        return Path(os.path.normpath(pp))

    @property
    def out(self) -> Path:
        return self.path(self.output_dir)  # type: ignore[return-value]

    def hash(self) -> str:
        return config_hash(self)

    def to_dict(self) -> dict:
        return to_dict(self)


# =========================================================================== engine
def _is_dataclass_type(t) -> bool:
    return isinstance(t, type) and dataclasses.is_dataclass(t)


def _type_name(t) -> str:
    origin = typing.get_origin(t)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(t))
    if origin is typing.Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(t))}]"
    if _is_dataclass_type(t):
        return "mapping"
    return getattr(t, "__name__", str(t))


def _convert(value, t, key: str, where: str):
    def fail(msg=None):
        raise ConfigError(
            f"{where}: {key}: " + (msg or f"expected {_type_name(t)}, got {type(value).__name__} {value!r}")
        )

    origin = typing.get_origin(t)
    if origin is typing.Union:
        args = typing.get_args(t)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key, where)
    if origin is Literal:
        if value not in typing.get_args(t):
            fail()
        return value
    if origin is list:
        if not isinstance(value, list):
            fail()
        (it,) = typing.get_args(t)
        return [_convert(v, it, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            fail()
        kt, vt = typing.get_args(t)
        return {
            _convert(k, kt, f"{key}.{k}", where): _convert(v, vt, f"{key}.{k}", where) for k, v in value.items()
        }
    if _is_dataclass_type(t):
        if not isinstance(value, dict):
            fail()
        return _build(t, value, key, where)
    if t is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if t is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("-").isdigit() and key.count(".") and "." in key:
                return int(value)  # dict keys such as phenix channel numbers
            fail()
        return value
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail()
        return float(value)
    if t is str:
        if not isinstance(value, str):
            fail()
        return value
    if t is Any:
        return value
    fail(f"unsupported type {t}")  # pragma: no cover


def _build(cls, data: dict, prefix: str, where: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    errors: list[ConfigError] = []  # every problem of the mapping, reported together
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(fields)})"
            errors.append(ConfigError(f"{where}: {key}: unknown key{hint}"))
            continue
        try:
            kwargs[k] = _convert(v, hints[k], key, where)
        except ConfigError as exc:
            errors.append(exc)
    for name, f in fields.items():
        if name in data:
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            key = f"{prefix}.{name}" if prefix else name
            errors.append(ConfigError(f"{where}: {key}: missing required key"))
    if errors:
        raise ConfigError.collect(errors)
    return cls(**kwargs)


def validate(cfg: Config, where: str = "<config>") -> Config:
    """Cross-field checks: channels, inputs, ranges. Raises one :class:`ConfigError`
    listing every failed check."""
    problems: list[str] = []

    def err(key, msg):
        problems.append(f"{where}: {key}: {msg}")

    if not cfg.channels:
        err("channels", "at least one channel is needed")
    if len(set(cfg.channels)) != len(cfg.channels):
        err("channels", f"duplicate channel names in {cfg.channels}")
    for key, ch in (
        ("segmentation.nuclei.channel", cfg.segmentation.nuclei.channel),
        ("segmentation.cells.channel", cfg.segmentation.cells.channel),
    ):
        if ch not in cfg.channels:
            err(key, f"channel {ch!r} is not among channels {cfg.channels}")
    missing = [c for c in cfg.channels if c not in cfg.input.phenix_channels.values()]
    if cfg.input.phenix_dir is not None and missing:
        err("input.phenix_channels", f"no Phenix channel number for channel(s) {missing}")
    sources = [s for s in ("loaddata_csv", "phenix_dir", "gallery") if getattr(cfg.input, s) is not None]
    if len(sources) > 1:
        err("input", f"give one image source, not {sources}")
    for key, lo, hi in (
        ("segmentation.nuclei", cfg.segmentation.nuclei.lower_bound, cfg.segmentation.nuclei.upper_bound),
        ("segmentation.cells", cfg.segmentation.cells.lower_bound, cfg.segmentation.cells.upper_bound),
    ):
        if not 0.0 <= lo <= hi <= 1.0:
            err(key, f"need 0 <= lower_bound <= upper_bound <= 1, got [{lo}, {hi}]")
    for o in cfg.features.objects:
        if o not in OBJECTS:
            err("features.objects", f"unknown object {o!r}; known: {OBJECTS}")
    for fam in cfg.features.families:
        if fam not in FEATURE_FAMILIES:
            err("features.families", f"unknown family {fam!r}; known: {FEATURE_FAMILIES}")
    if cfg.features.zernike_degree < 0:
        err("features.zernike_degree", "must be >= 0")
    if cfg.executor.sites_per_task < 1:
        err("executor.sites_per_task", "must be >= 1")
    if cfg.executor.max_retries < 0:
        err("executor.max_retries", "must be >= 0")
    if cfg.executor.poll_interval_s <= 0:
        err("executor.poll_interval_s", "must be > 0")
    if cfg.executor.progress_interval_s <= 0:
        err("executor.progress_interval_s", "must be > 0")
    if cfg.executor.mpi_startup_timeout_s <= 0:
        err("executor.mpi_startup_timeout_s", "must be > 0")
    for stage, over in cfg.executor.stages.items():
        if stage not in ("illum", "extract", "reduce", "evaluate"):
            err(f"executor.stages.{stage}", "unknown stage; known: illum, extract, reduce, evaluate")
        for key in ("cpus_per_task", "mpi_ranks", "array_parallelism", "time_min"):
            if getattr(over, key) is not None and getattr(over, key) < 1:
                err(f"executor.stages.{stage}.{key}", "must be >= 1")
    if not 0.0 <= cfg.illumination.max_unreadable_fraction <= 1.0:
        err("illumination.max_unreadable_fraction", "must be in [0, 1]")
    if cfg.illumination.downsample < 1:
        err("illumination.downsample", "must be >= 1")
    if cfg.evaluate.null_size < 1:
        err("evaluate.null_size", "must be >= 1")
    if cfg.cellprofiler.chunk_rows < 1:
        err("cellprofiler.chunk_rows", "must be >= 1")
    if len(cfg.cellprofiler.compartments) < 1 or len(set(cfg.cellprofiler.compartments)) != len(
        cfg.cellprofiler.compartments
    ):
        err("cellprofiler.compartments", f"need distinct compartment names, got {cfg.cellprofiler.compartments}")
    if problems:
        raise ConfigError(*problems)
    return cfg


def from_dict(data: dict, where: str = "<config>", source: Optional[str] = None) -> Config:
    """Build and validate a :class:`Config` from a plain mapping."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping, got {type(data).__name__}")
    cfg = _build(Config, data, "", where)
    cfg.source = source
    return validate(cfg, where)


def load_config(path) -> Config:
    """Read a YAML config file (``yaml.safe_load``) into a validated :class:`Config`."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read config: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from exc
    return from_dict(data, where=where, source=str(path.resolve()))


def load_config_or_report(path, report: bool = True) -> Optional[Config]:
    """:func:`load_config` for command-line entry points: on a :class:`ConfigError`
    print ``error: <file>: <key>: ...`` to stderr (when ``report``) and return None;
    the caller exits with status 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        if report:
            for line in exc.problems:
                print(f"error: {line}", file=sys.stderr)
        return None


def to_dict(obj) -> Any:
    """Plain mapping of a config (no internal fields), for hashing and dumping."""
    if dataclasses.is_dataclass(obj):
        return {
            f.name: to_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not f.metadata.get("internal")
        }
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def config_hash(cfg: Config, sections=RESULT_SECTIONS) -> str:
    """Hex SHA-256 (first 16 digits) of the canonical JSON of result sections."""
    d = to_dict(cfg)
    payload = {k: d[k] for k in sections}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dump_config(cfg: Config) -> str:
    """YAML text of a config (defaults filled in)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def schema_rows(cls=Config, prefix: str = ""):
    """(key, type, default, doc) rows for the generated config reference."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        t = hints[f.name]
        inner = [a for a in typing.get_args(t) if a is not type(None)] if typing.get_origin(t) is typing.Union else [t]
        if len(inner) == 1 and _is_dataclass_type(inner[0]):
            rows.append((key, "mapping" + (" or null" if inner[0] is not t else ""), "", f.metadata.get("doc", "")))
            rows.extend(schema_rows(inner[0], key))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        text = json.dumps(to_dict(default), default=str)
        if isinstance(default, dict) and len(text) > 120:
            text = "{" + ", ".join(map(str, default)) + "}"  # long mappings: their keys; entries below
        rows.append((key, _type_name(t), text, f.metadata.get("doc", "")))
        if typing.get_origin(t) is dict and _is_dataclass_type(typing.get_args(t)[1]):
            rows.extend(schema_rows(typing.get_args(t)[1], f"{key}.<name>"))
    return rows
