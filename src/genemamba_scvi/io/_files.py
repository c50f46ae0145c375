"""File helpers of the checkpoint formats: tensors, JSON, hashing, fsync and atomic directory swaps."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import socket
import stat
import sys
import uuid
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from genemamba_scvi._processes import process_alive


def _prepare_tensors(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Detach, move to CPU, make contiguous; tensors that are the same view are stored once."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    storages: set[tuple[str, int]] = set()
    for name, tensor in state_dict.items():
        if not isinstance(name, str):
            raise ValueError(f"state dict keys must be strings, got {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"state dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach()
        if tensor.numel() > 0:
            storage = (str(tensor.device), tensor.untyped_storage().data_ptr())
            view = (*storage, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
            if view in views:
                aliases[name] = views[view]
                continue
            views[view] = name
            if storage in storages:
                tensor = tensor.clone()  # overlapping but different view: store a copy
            storages.add(storage)
        tensors[name] = tensor.to("cpu").contiguous()
    return tensors, aliases


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except FileNotFoundError:
        raise
    except Exception as err:  # safetensors raises SafetensorError / OSError / ValueError on corrupt input
        raise ValueError(f"corrupt safetensors file {path}: {err}") from err
    return tensors, metadata


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # pandas Index / Categorical
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _dumps(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, indent=2, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} is not JSON serialisable: {err}") from err


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"corrupt JSON file {path}: {err}") from err


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_path(path: Path) -> None:
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. directories on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_target(path: Path, overwrite: bool, looks_like: Callable[[Path], bool], what: str) -> None:
    if not path.exists() and not path.is_symlink():
        if not path.parent.is_dir():
            raise FileNotFoundError(f"parent directory {path.parent} does not exist")
        return
    if path.is_file() and not path.is_symlink():  # overwrite=True would not help: a directory is written, not a file
        raise FileExistsError(f"{path} is a file; a {what} is a directory: name a directory that does not exist")
    if not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    if path.is_symlink() and path.is_dir():  # the swap would replace the link, not the folder it points at
        raise ValueError(
            f"refusing to overwrite {path}: it is a symbolic link (to {path.resolve()}); pass the real folder's path"
        )
    if path.is_symlink() or not path.is_dir():
        raise ValueError(f"refusing to overwrite {path}: it is not a directory")
    cwd, target = Path.cwd().resolve(), path.resolve()
    if cwd == target or target in cwd.parents:  # the directory is replaced by a new one: the process would be left in
        raise ValueError(  # a deleted directory
            f"refusing to overwrite {path}: it holds the current working directory ({cwd}); save to another "
            "directory (e.g. a subdirectory such as 'my_model/')"
        )
    if any(path.iterdir()) and not looks_like(path):
        raise ValueError(f"refusing to overwrite {path}: it does not look like a {what} directory")
    if not os.access(path, os.W_OK):  # the swap needs only the parent writable: a protected model would be replaced
        raise PermissionError(  # (and its old copy, read-only, could not be removed after)
            13, f"refusing to overwrite {path}: it is write-protected (make it writable first to replace it)", str(path)
        )


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2; False where unavailable (other OS, old kernel/libc, unsupported fs)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _exchange_dirs(a: Path, b: Path) -> bool:
    """Atomically swap two directories. False if the platform cannot."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


def _move_into_place(src: Path, dst: Path) -> None:
    """Rename ``src`` to a not-yet-existing ``dst`` without ever replacing a directory."""
    if not _renameat2(src, dst, _RENAME_NOREPLACE):
        if dst.exists():
            raise FileExistsError(f"{dst} already exists")
        os.rename(src, dst)


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    """A hidden sibling to write into: ``.<name>.tmp-<host>-<pid>-<random>``, so a later save can tell whose it is."""
    return path.parent / f".{path.name}.tmp-{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:12]}{suffix}"


def _remove_stale_tmp(path: Path) -> None:
    """Remove what saves of ``path`` killed mid-write left behind (``kill -9``, a lost session).

    Only hidden siblings of this host whose writing process is gone; others' (another host, a live process) stay.
    """
    prefix = f".{path.name}.tmp-{_host_tag()}-"
    if not path.parent.is_dir():
        return
    for entry in path.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        pid = entry.name[len(prefix) :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or process_alive(int(pid)):
            continue  # ours, or alive (or another user's): maybe writing now
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent (where missing folders would be made)."""
    path = Path(path).absolute()
    return next(p for p in (path, *path.parents) if p.exists())


def refuse_file_on_the_way(path: Path, what: str) -> None:
    """Refuse a ``path`` whose nearest existing part is a file: its folders cannot be made (``[Errno 17]`` or 20).

    Bad-input probe (session 33): ``model.save("notes.txt/sub")`` and ``build_corpus(..., "x.h5ad")`` gave only
    ``[Errno 17] File exists``.
    """
    existing = nearest_existing(path)
    if existing.is_file():
        where = "is a file" if existing == Path(path).absolute() else f"is inside {existing}, a file"
        raise NotADirectoryError(f"{what} {str(path)!r} {where}, not a folder: pass a folder path")


def new_folder_error(folder: Path) -> OSError | None:
    """The error of making (and removing) a hidden folder in ``folder``, or None where that works.

    Tried, not judged by mode bits: root passes ``os.access`` on a read-only mount or ``/proc``, which take no entry.
    """
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(dir=folder, prefix=".write-test-"))
    except OSError as err:
        return err
    return None


def check_checkpoint_dir(checkpoint_dir: Any, resuming: bool = True) -> None:
    """Refuse, before training, a checkpoint folder that cannot take a file, or an earlier run's for a new run.

    ``resuming=False`` (a new run): a folder holding ``*.ckpt`` files is refused. A new run into a folder of
    checkpoints wrote beside them (Lightning names its own ``last-v1.ckpt``), so the documented
    ``ckpt_path=".../last.ckpt"`` resumed the earlier run (corpus probe, session 31).

    Lightning (2.6) drops the ``PermissionError`` of a checkpoint it cannot write: a run of 100k steps "with
    checkpoints" would end with none. A folder that does not exist yet is made by Lightning at the first checkpoint,
    so its nearest existing parent must take a new folder: tried now (a shared cluster's read-only folder failed
    after the first epoch; HPC probe).
    """
    import tempfile

    if checkpoint_dir is None:
        return
    path = Path(checkpoint_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"checkpoint_dir={str(checkpoint_dir)!r} is a file, not a folder for checkpoints")
    if path.is_dir() and not resuming and (earlier := sorted(p.name for p in path.glob("*.ckpt"))):
        resume = "last.ckpt" if "last.ckpt" in earlier else earlier[-1]
        raise FileExistsError(
            f"checkpoint_dir={str(checkpoint_dir)!r} holds checkpoints of an earlier run ({', '.join(earlier[:3])}"
            f"{', ...' if len(earlier) > 3 else ''}): a new run would write beside them, and a later "
            f"ckpt_path='{path / resume}' would resume the earlier run. To go on from the weights the model holds "
            "now (or to start afresh), give this run a new checkpoint_dir (or checkpoint_dir=None, or empty this "
            f"one); to resume the earlier run from its checkpoint, pass ckpt_path='{path / resume}' (overwrite= "
            "replaces a saved model, never checkpoints)"
        )
    if path.is_dir():
        try:
            fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise PermissionError(
                f"checkpoint_dir={str(checkpoint_dir)!r} cannot take a file ({err.strerror or err}): no checkpoint "
                "could be written there; pass a writable folder"
            ) from None
    elif (err := new_folder_error(parent := nearest_existing(path))) is not None:
        raise PermissionError(
            f"checkpoint_dir={str(checkpoint_dir)!r} cannot be made: {parent} takes no new folders "
            f"({err.strerror or err}); pass a writable folder"
        )


def check_room_for_anndata(adata: Any, directory: Path, compression: str | None, what: str) -> None:
    """:func:`check_free_space` for writing ``adata`` (:func:`anndata_write_bytes`) into ``directory``."""
    check_free_space(directory, anndata_write_bytes(adata, compression), what)


def anndata_write_bytes(adata: Any, compression: str | None = None) -> int:
    """The bytes ``adata.write_h5ad`` writes, estimated on the high side (a refusal beats a crash on a full disk).

    Its matrices (``raw`` included), embeddings and tables as held in memory; a gzip-compressed file is taken as
    half of that (float32 counts in CSR compress 2.3-2.8x with gzip on the shipped 559-cell sample; an eighth, as
    assumed before, let a disk with room for a third of the file pass the check), an lzf one (~1.3x) as all of it.
    """
    import numpy as np
    import scipy.sparse as sp

    def size(m: Any) -> int:
        if sp.issparse(m):
            return sum(int(getattr(m, a).nbytes) for a in ("data", "indices", "indptr") if hasattr(m, a))
        return int(getattr(m, "nbytes", 0) or 0) if isinstance(m, np.ndarray) else 0

    def table(df: Any) -> int:
        try:
            return int(df.memory_usage(deep=True).sum())
        except (AttributeError, TypeError, ValueError):
            return 0

    total = size(adata.X) + sum(size(v) for v in adata.layers.values())
    total += sum(size(v) for v in (*adata.obsm.values(), *adata.varm.values(), *adata.obsp.values()))
    total += table(adata.obs) + table(adata.var)
    if adata.raw is not None:
        total += size(adata.raw.X) + table(adata.raw.var)
    return total // 2 if compression == "gzip" else total


def check_free_space(directory: Path, need: int, what: str) -> None:
    """Refuse (``OSError`` ENOSPC) to start writing ``what`` (about ``need`` bytes) into a disk without the room.

    h5py (3.16, HDF5 2.0) crashes the Python process on a full disk: a notebook's kernel dies, and the trained
    model in memory with it. Better refused before the first byte.
    """
    directory = nearest_existing(directory)
    usage = shutil.disk_usage(directory)
    free = usage.free
    if free < need and usage.total > 0:  # total 0: no disk (/proc, /sys); the write names its own error
        raise OSError(
            errno.ENOSPC,
            f"not enough free space in {directory} to write {what}: about {need / 2**20:.0f} MB needed, "
            f"{free / 2**20:.0f} MB free (HDF5 crashes the process on a full disk); free some or write elsewhere",
            str(directory),
        )


def _atomic_write_file(path: Path, write: Callable[[Path], None], overwrite: bool) -> None:
    """Write one file with ``write(tmp)`` into a hidden sibling, fsync it, then rename it into place.

    A crash leaves the old file or the new one, never a part. Without ``overwrite`` an existing file is never
    replaced.
    """
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"parent directory {path.parent} does not exist")
    _remove_stale_tmp(path)
    tmp = _tmp_sibling(path, path.suffix)
    try:
        write(tmp)
        _fsync_path(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            _move_into_place(tmp, path)
        _fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _keep_user_entries(old: Path, new: Path, own_files: Collection[str]) -> None:
    """Hard-link (or copy) every entry of ``old`` not named in ``own_files`` into ``new``, recursively."""
    for entry in old.iterdir():
        if entry.name not in own_files and not (new / entry.name).exists():
            try:
                _link_tree(entry, new / entry.name)
            except PermissionError as err:  # e.g. a colleague's private file in a shared model folder (HPC probe)
                raise PermissionError(
                    err.errno,
                    f"cannot keep {err.filename or entry} while replacing the model in {old}: this user cannot read "
                    "it (a save keeps the folder's other files); move it out or make it readable, then save again "
                    "(nothing was changed)",
                    str(entry),
                ) from None


def _link_tree(src: Path, dst: Path) -> None:
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        dst.mkdir()
        for entry in src.iterdir():
            _link_tree(entry, dst / entry.name)
        shutil.copystat(src, dst)
    else:
        try:
            os.link(src, dst)  # same file system (sibling directory): the data is never copied or lost
        except OSError:
            shutil.copy2(src, dst)


def _atomic_write_dir(
    path: Path, fill: Callable[[Path], None], overwrite: bool, own_files: Collection[str] | None = None
) -> None:
    """Write a directory atomically with ``fill``; see the module docstring.

    With ``own_files``, overwriting keeps every entry of the old directory that is not named there.
    """
    path = Path(path).expanduser().absolute()  # the parent of "." is "." itself ("..", symlinks: left to the OS)
    parent = path.parent
    _remove_stale_tmp(path)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        fill(tmp)
        for child in tmp.iterdir():
            _fsync_path(child)
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
            if own_files is not None:
                _keep_user_entries(path, tmp, own_files)
            _carry_folder_access(path, tmp)
        _fsync_path(tmp)
        if path.exists():
            if _exchange_dirs(tmp, path):
                _fsync_path(parent)  # tmp now holds the old model
            else:
                aside = parent / f".{path.name}.old-{uuid.uuid4().hex[:12]}"
                os.rename(path, aside)
                try:
                    os.rename(tmp, path)
                except BaseException:
                    os.rename(aside, path)
                    raise
                _fsync_path(parent)
                shutil.rmtree(aside, ignore_errors=True)
        else:
            try:
                _move_into_place(tmp, path)
            except FileExistsError:  # another process saved there since: overwrite replaces its save too
                if not (overwrite and _exchange_dirs(tmp, path)):
                    raise
            _fsync_path(parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _carry_folder_access(old: Path, new: Path) -> None:
    """Give the folder replacing ``old`` its mode (setgid included) and group, and its entries that group.

    The swapped-in folder is new, made with the saver's umask and primary group: a private model became
    world-readable, and a lab's model (group ``lab``, setgid) lost its group, so colleagues could no longer load it
    (HPC probe). The group is given where the saver may (a member of it); otherwise the folder keeps the saver's.
    """
    info = old.stat()
    os.chmod(new, stat.S_IMODE(info.st_mode))
    if info.st_gid == new.stat().st_gid:
        return
    try:
        for entry in (new, *new.rglob("*")):
            os.chown(entry, -1, info.st_gid, follow_symlinks=False)
    except (PermissionError, NotImplementedError):  # not a member of that group (or no chown on this system)
        pass


def _interrupted_hint(path: Path) -> str:
    if not path.parent.is_dir():
        return ""
    leftovers = sorted(path.parent.glob(f".{path.name}.old-*"))
    if leftovers:
        return f" (an interrupted overwrite left the previous model at {leftovers[-1]})"
    return ""
