"""Find a Hugging Face Hub model repository in the local Hub cache, offline.

A user who once ran ``huggingface_hub.snapshot_download("mineself2016/GeneMamba")`` (or loaded the model
with ``transformers``) has its files in the Hub cache; :func:`resolve_hub_snapshot` finds that snapshot
so that ``GeneMambaModel.from_pretrained("mineself2016/GeneMamba", adata)`` works without a network and
without ``huggingface_hub`` installed. Nothing here downloads anything.

The cache layout and its location follow the Hub's published description of the local cache
(https://huggingface.co/docs/hub/local-cache): ``<cache>/models--<org>--<name>/refs/<revision>`` holds
a commit hash, ``<cache>/models--<org>--<name>/snapshots/<commit>/`` the files (links into ``blobs/``).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hub_cache_dir() -> Path:
    """The Hub cache directory that ``huggingface_hub`` uses.

    ``$HF_HUB_CACHE``, else ``$HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``.
    """
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def looks_like_repo_id(path: str | os.PathLike) -> bool:
    """Whether ``path`` reads as a Hub repository id (``owner/name``) rather than a local path."""
    return isinstance(path, str) and _REPO_ID.match(path) is not None


def split_repo_subfolder(path: str | os.PathLike) -> tuple[str, str] | None:
    """``("owner/name", "sub/folder")`` when ``path`` reads as a Hub id and a subfolder, else ``None``.

    E.g. ``"mineself2016/GeneMamba/12l-256d"``; whether it is meant so depends on the cache.
    """
    if not isinstance(path, str):
        return None
    parts = path.rstrip("/").split("/")
    if len(parts) < 3 or any(p in ("", ".", "..") for p in parts[2:]) or not looks_like_repo_id("/".join(parts[:2])):
        return None
    return "/".join(parts[:2]), "/".join(parts[2:])


def hub_repo_dir(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the Hub cache keeps ``repo_id``'s files (``<cache>/models--<owner>--<name>``); may not exist."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else hub_cache_dir()
    return cache / ("models--" + repo_id.replace("/", "--"))


def resolve_hub_snapshot(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local snapshot directory of a Hub model repository, from the Hub cache; never downloads.

    Parameters
    ----------
    repo_id
        ``owner/name``, e.g. ``"mineself2016/GeneMamba"``.
    revision
        A branch or tag name with a ref in the cache (default ``"main"``) or a 40-character commit hash.
    cache_dir
        The Hub cache directory; default :func:`hub_cache_dir`.

    Raises
    ------
    FileNotFoundError
        The repository or the revision is not in the cache; the message says where it looked and how to
        get the files onto this machine.
    """
    repo = hub_repo_dir(repo_id, cache_dir)
    if not repo.is_dir():
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local directory nor in the Hugging Face cache ({repo} does not exist). "
            "genemamba-scvi never downloads: on a machine with internet access run "
            f"`huggingface-cli download {repo_id} --local-dir DIR`, copy DIR here and pass its path "
            "(or copy the Hugging Face cache and set HF_HUB_CACHE, or pass cache_dir=...)"
        )
    revision = revision or "main"
    snapshots = repo / "snapshots"
    if _COMMIT.match(revision):
        commit = revision
    else:
        ref = repo / "refs" / revision
        if not ref.is_file():
            have = sorted(p.name for p in snapshots.iterdir()) if snapshots.is_dir() else []
            raise FileNotFoundError(
                f"{repo_id!r} is in the Hugging Face cache ({repo}) but has no ref {revision!r}; cached commits: "
                f"{', '.join(have) or 'none'} (pass revision=<commit>)"
            )
        commit = ref.read_text().strip()
    snapshot = snapshots / commit
    if not snapshot.is_dir():
        raise FileNotFoundError(f"{repo_id!r} revision {revision!r} (commit {commit}) has no snapshot in {snapshots}")
    return snapshot


def verify_cached_files(*directories: Path) -> None:
    """Refuse a damaged file of a Hub-cache snapshot (a link into ``blobs/``, a blob named by its content's hash).

    Large (Git LFS) files are stored under their sha256, small ones under their git blob sha1; a file whose
    content no longer matches that name (a disk error, an interrupted copy) would otherwise load as other weights.
    Files that are not links into ``blobs/`` (a plain local folder) are not checked.
    """
    for directory in dict.fromkeys(directories):
        for link in sorted(directory.iterdir()):
            blob = link.resolve()
            if not link.is_symlink() or blob.parent.name != "blobs" or not blob.is_file():
                continue
            if re.fullmatch(r"[0-9a-f]{64}", blob.name):
                digest = hashlib.sha256()
            elif re.fullmatch(r"[0-9a-f]{40}", blob.name):
                digest = hashlib.sha1(f"blob {blob.stat().st_size}\0".encode(), usedforsecurity=False)
            else:
                continue
            with blob.open("rb") as f:
                for block in iter(lambda f=f: f.read(1 << 22), b""):
                    digest.update(block)
            if digest.hexdigest() != blob.name:
                raise ValueError(
                    f"{link} in the Hugging Face cache is damaged: its content does not match the hash it is stored "
                    f"under ({blob.name}). Delete {blob} and its link and copy or download the repository again."
                )
