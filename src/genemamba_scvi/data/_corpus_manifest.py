"""Token corpus: the manifest and the checks of a resumed build (see :mod:`genemamba_scvi.data.corpus`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ._corpus_io import (
    CORPUS_FORMAT,
    CORPUS_VERSION,
    MANIFEST_FILE,
    SHARD_DIR,
    _atomic_write_bytes,
    _now,
)


# ---------------------------------------------------------------------------------------------- manifest
@dataclass
class Manifest:
    """Contents of a corpus directory's ``manifest.json``.

    Attributes
    ----------
    config
        What determines the tokens: ``max_genes``, ``add_cls``, ``layer``, ``gene_id_key``, ``shard_size``,
        ``token_dtype``, ``vocab_size``, ``vocab_sha256``, ``medians_sha256``, ``medians_source``.
    files
        One entry per input file: ``path``, ``name``, ``size``, ``fingerprint`` (SHA-256 of the size and of
        the first and last MiB), ``n_obs``, ``n_vars``.
    shards
        Completed shards in order: ``name``, ``file`` (index into ``files``), ``row_start``, ``row_stop``,
        ``n`` (rows), ``n_empty`` (rows of length 0), ``sha256`` (of the token then length bytes).
    status
        ``"building"`` or ``"complete"``.
    root
        Directory of the corpus (not stored in the JSON).
    """

    config: dict[str, Any]
    files: list[dict[str, Any]]
    shards: list[dict[str, Any]] = field(default_factory=list)
    status: Literal["building", "complete"] = "building"
    created: str = ""
    updated: str = ""
    package_version: str = ""
    root: Path | None = None

    # ------------------------------------------------------------------ derived quantities
    @property
    def n_rows(self) -> int:
        """Rows written (cells, empty ones included)."""
        return int(sum(s["n"] for s in self.shards))

    @property
    def n_empty(self) -> int:
        """Rows with an empty tokenization (skipped by the loader)."""
        return int(sum(s["n_empty"] for s in self.shards))

    @property
    def n_cells(self) -> int:
        """Trainable cells (rows with at least one token)."""
        return self.n_rows - self.n_empty

    @property
    def n_input_cells(self) -> int:
        """Cells over all input files."""
        return int(sum(f["n_obs"] for f in self.files))

    @property
    def max_genes(self) -> int:
        """Sequence length of the shards."""
        return int(self.config["max_genes"])

    @property
    def is_complete(self) -> bool:
        """Whether every input row has been written."""
        return self.status == "complete"

    def shard_path(self, shard: dict[str, Any] | int) -> Path:
        """Directory of a shard (entry or index)."""
        if self.root is None:
            raise ValueError("manifest has no root directory")
        entry = self.shards[shard] if isinstance(shard, int) else shard
        return self.root / SHARD_DIR / entry["name"]

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "format": CORPUS_FORMAT,
            "version": CORPUS_VERSION,
            "status": self.status,
            "created": self.created,
            "updated": self.updated,
            "genemamba_scvi_version": self.package_version,
            "n_input_cells": self.n_input_cells,
            "n_rows": self.n_rows,
            "n_cells": self.n_cells,
            "n_empty": self.n_empty,
            "config": self.config,
            "files": self.files,
            "shards": self.shards,
        }

    def write(self, root: str | os.PathLike | None = None) -> None:
        """Atomically (re)write ``manifest.json`` in ``root`` (default: :attr:`root`)."""
        root = Path(root) if root is not None else self.root
        if root is None:
            raise ValueError("no directory to write the manifest to")
        self.updated = _now()
        _atomic_write_bytes(root / MANIFEST_FILE, (json.dumps(self.to_dict(), indent=1) + "\n").encode())

    @classmethod
    def read(cls, root: str | os.PathLike) -> Manifest:
        """Read ``root/manifest.json``.

        Raises
        ------
        FileNotFoundError
            If there is no manifest.
        ValueError
            If it is not a GeneMamba corpus manifest or has a newer version.
        """
        root = Path(root)
        path = root / MANIFEST_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{str(path)!r} not found: not a GeneMamba token corpus (run build_corpus first)")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from e
        if d.get("format") != CORPUS_FORMAT:
            raise ValueError(f"{str(path)!r} is not a GeneMamba corpus manifest (format {d.get('format')!r})")
        if int(d.get("version", 0)) > CORPUS_VERSION:
            raise ValueError(
                f"corpus version {d['version']} is newer than this genemamba-scvi understands ({CORPUS_VERSION})"
            )
        return cls(
            config=d["config"],
            files=d["files"],
            shards=d.get("shards", []),
            status=d.get("status", "building"),
            created=d.get("created", ""),
            updated=d.get("updated", ""),
            package_version=d.get("genemamba_scvi_version", ""),
            root=root,
        )


_COMPARED_CONFIG = ("max_genes", "add_cls", "layer", "gene_id_key", "shard_size", "token_dtype", "vocab_sha256")


def _config_differences(old: Manifest, config: dict[str, Any], files: list[dict[str, Any]]) -> list[str]:
    diffs = []
    for key in _COMPARED_CONFIG:
        if old.config.get(key) != config.get(key):
            diffs.append(f"{key}: corpus has {old.config.get(key)!r}, this call gives {config.get(key)!r}")
    if len(old.files) != len(files):
        diffs.append(f"number of input files: corpus has {len(old.files)}, this call gives {len(files)}")
    for i, (a, b) in enumerate(zip(old.files, files)):
        for key in ("name", "size", "fingerprint", "n_obs", "n_vars"):
            if a.get(key) != b.get(key):
                diffs.append(
                    f"input file {i} {key}: corpus has {a.get(key)!r} ({a['path']}), this call gives "
                    f"{b.get(key)!r} ({b['path']})"
                )
                break
    return diffs


def _mismatch_error(root: Path, diffs: list[str]) -> ValueError:
    return ValueError(
        f"the corpus in {str(root)!r} was built with a different configuration, so it cannot be resumed:\n  - "
        + "\n  - ".join(diffs)
        + "\nRe-run with the original arguments to resume it, or choose a new (or empty) out_dir."
    )


def _plan_shards(files: list[dict[str, Any]], shard_size: int) -> list[dict[str, Any]]:
    plan = []
    for fi, f in enumerate(files):
        for a in range(0, f["n_obs"], shard_size):
            plan.append(
                {
                    "name": f"shard_{len(plan):06d}",
                    "file": fi,
                    "row_start": a,
                    "row_stop": min(a + shard_size, f["n_obs"]),
                }
            )
    return plan
