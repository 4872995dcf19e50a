"""A real S3-compatible server on loopback and a small screen in the Cell Painting Gallery layout.

Used by ``tests/test_s3.py`` and ``scripts/bench_s3.py``.

* :class:`LocalS3` runs moto's ``ThreadedMotoServer`` (PyPI ``moto[server]``)
  on ``127.0.0.1:<free port>``: a werkzeug HTTP server speaking the S3 REST
  API, reached by s3fs/botocore over real TCP, with no patched client. It can
  be stopped and started again on the same port (:meth:`LocalS3.outage`) to
  simulate a storage outage. moto keeps its buckets in process-global backends
  (``moto.backends``), not in the server object, so the objects survive such a
  restart; :meth:`LocalS3.outage` checks that and re-uploads nothing.
* :func:`write_gallery_layout` turns a batch written by
  :func:`hpc_profiler.synth.generate_batch` into the Gallery layout of
  ``s3://cellpainting-gallery/cpg0000-jump-pilot/source_4``: plate folders
  ``<plate>__<acquisition>/Images``, CellProfiler illumination functions
  ``illum/<plate>/<plate>_Illum<Ch>.npy`` and per-plate LoadData CSVs whose
  ``PathName_Orig<Ch>`` name the machine that once processed them
  (``/home/ubuntu/bucket/projects/<project>/<batch>/images/<plate dir>/Images``).
* :func:`upload_tree` copies such a folder into a bucket with boto3.
"""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

BATCH = "2020_11_04_CPJUMP1"
PROJECT = "2019_07_11_JUMP-CP-pilots"
ACQUISITION = "2020-11-05T19_51_35-Measurement1"
CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")

#: Credentials moto accepts (any value works); set in the environment by :func:`aws_env`.
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aws_env(monkeypatch) -> None:
    """Put :data:`DUMMY_AWS_ENV` in the environment (undone by ``monkeypatch``)."""
    for k, v in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


class LocalS3:
    """moto's S3 server on ``127.0.0.1:port`` that can go down and come back.

    Parameters
    ----------
    port : int, optional
        Default: a free port.
    """

    def __init__(self, port: Optional[int] = None):
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._server = None
        self.restarts = 0

    def start(self) -> "LocalS3":
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket (new connections are refused)."""
        if self._server is None:
            return
        self._server.stop()
        # ThreadedMotoServer.stop() only ends serve_forever(); close the socket too,
        # so clients get "connection refused" and the port can be bound again.
        inner = getattr(self._server, "_server", None)
        if inner is not None:
            inner.server_close()
        self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def client(self):
        """A boto3 S3 client for this server (dummy credentials)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=DUMMY_AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=DUMMY_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=DUMMY_AWS_ENV["AWS_DEFAULT_REGION"],
        )

    def outage(self, down_s: float) -> threading.Thread:
        """Stop the server now and start it again on the same port after ``down_s`` seconds.

        Returns the (started) thread that restarts it; ``join()`` it to wait
        for the server to be back.
        """
        self.stop()

        def _restart():
            time.sleep(down_s)
            self.start()
            self.restarts += 1

        t = threading.Thread(target=_restart, name="s3-restart", daemon=True)
        t.start()
        return t

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def upload_tree(local_root, s3: LocalS3, bucket: str, prefix: str = "") -> list[str]:
    """Upload every file under ``local_root`` to ``s3://bucket/prefix/<relative path>``.

    Creates the bucket when needed; returns the keys written.
    """
    client = s3.client()
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)
    local_root = Path(local_root)
    keys = []
    for p in sorted(local_root.rglob("*")):
        if p.is_file():
            key = "/".join([x for x in (prefix.strip("/"), p.relative_to(local_root).as_posix()) if x])
            client.put_object(Bucket=bucket, Key=key, Body=p.read_bytes())
            keys.append(key)
    return keys


def illum_function_from_vignette(vignette: np.ndarray, percentile: float = 2.0) -> np.ndarray:
    """A CellProfiler-like illumination function (float64, >= 1) of a flat field.

    CorrectIlluminationCalculate with "Robust minimum" rescaling divides the
    smoothed average by its ``percentile``-th percentile and clips at 1; the
    average of many images is proportional to the flat field, so this is what
    the pipeline would have saved for a plate imaged through ``vignette``.
    """
    v = np.asarray(vignette, dtype=np.float64)
    lo = np.percentile(v, percentile)
    return np.maximum(v, lo) / lo


@dataclass
class GalleryLayout:
    """Where :func:`write_gallery_layout` put things."""

    root: Path
    batch: str
    plates: list
    plate_dirs: dict  # plate -> "<plate>__<acquisition>"
    n_sites: int
    illum: dict  # (plate, channel) -> float64 array saved as .npy


def write_gallery_layout(
    synth_dir,
    root,
    synth_cfg,
    channels: Sequence[str] = CHANNELS,
    batch: str = BATCH,
    project: str = PROJECT,
    acquisition: str = ACQUISITION,
) -> GalleryLayout:
    """Lay out a synthetic batch as the Cell Painting Gallery does.

    Parameters
    ----------
    synth_dir : path
        Output of :func:`hpc_profiler.synth.generate_batch` (its ``load_data.csv``).
    root : path
        Gallery root to write (``images/`` and ``workspace/`` under it).
    synth_cfg : SynthConfig
        The configuration the batch was generated with (for the flat fields).

    Returns
    -------
    GalleryLayout
    """
    from hpc_profiler.synth import make_vignette, stable_seed

    synth_dir, root = Path(synth_dir), Path(root)
    ld = pd.read_csv(synth_dir / "load_data.csv", dtype=str, keep_default_na=False)
    plates = sorted(ld["Metadata_Plate"].unique())
    plate_dirs, illum = {}, {}
    for plate in plates:
        pdir = f"{plate}__{acquisition}"
        plate_dirs[plate] = pdir
        img_dir = root / "images" / batch / "images" / pdir / "Images"
        img_dir.mkdir(parents=True, exist_ok=True)
        rows = ld[ld["Metadata_Plate"] == plate].copy()
        old_images = f"/home/ubuntu/bucket/projects/{project}/{batch}/images/{pdir}/Images"
        old_illum = f"/home/ubuntu/bucket/projects/{project}/{batch}/illum/{plate}"
        for ch in channels:
            for src_folder, name in zip(rows[f"PathName_Orig{ch}"], rows[f"FileName_Orig{ch}"]):
                shutil.copyfile(synth_dir / src_folder / name, img_dir / name)
            rows[f"PathName_Orig{ch}"] = old_images
        csv_dir = root / "workspace" / "load_data_csv" / batch / plate
        csv_dir.mkdir(parents=True, exist_ok=True)
        rows.to_csv(csv_dir / "load_data.csv", index=False, lineterminator="\n")
        for ch in channels:
            rows[f"FileName_Illum{ch}"] = f"{plate}_Illum{ch}.npy"
            rows[f"PathName_Illum{ch}"] = old_illum
        rows.to_csv(csv_dir / "load_data_with_illum.csv", index=False, lineterminator="\n")
        ill_dir = root / "images" / batch / "illum" / plate
        ill_dir.mkdir(parents=True, exist_ok=True)
        vig = make_vignette(stable_seed(synth_cfg.seed, plate, "vignette"), synth_cfg.size, list(channels))
        for ch in channels:
            fn = illum_function_from_vignette(vig[ch])
            np.save(ill_dir / f"{plate}_Illum{ch}.npy", fn)
            illum[(plate, ch)] = fn
    return GalleryLayout(root, batch, plates, plate_dirs, len(ld), illum)


def gallery_config(root, out_dir, *, endpoint_url=None, retries=4, backoff_s=0.25, plates=(), source=None, **extra):
    """A :class:`hpc_profiler.config.Config` reading the Gallery layout under ``root``."""
    from hpc_profiler.config import from_dict

    data = {
        "output_dir": str(out_dir),
        "input": {
            "gallery": {
                "root": str(root),
                "batch": BATCH,
                "plates": list(plates),
                "anonymous": False,
                "use_illum": True,
                "endpoint_url": endpoint_url,
            },
            "retries": retries,
            "retry_backoff_s": backoff_s,
        },
    }
    for k, v in extra.items():
        data[k] = v
    return from_dict(data, source=source or os.path.join(str(out_dir), "config.yaml"))
