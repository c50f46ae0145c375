"""Run the biology benchmarks over several seeds as parallel processes, then summarise them with ``aggregate.py``.

One call runs ``integration.py`` and ``annotation.py`` for every seed (and, optionally, ablation variants),
``--jobs`` processes at a time with ``--threads`` CPU threads each, every process's output in
``<out-dir>/logs/``. Runs are started in priority order: variant by variant (the first variant is the main
one), seed by seed, benchmark by benchmark, so that whatever finishes first is a set of complete seeds of the
main comparison. Runs of later variants are started at a lower CPU priority (``--nice``), so that they use
the cores the main runs leave idle without slowing them much.

With ``--deadline-s`` no run is started after the deadline and the ones still running are stopped there (their
process group is killed); whatever finished is aggregated, so a partial result still comes back. Every
pre-training happens afresh in ``<out-dir>/cache`` (``--cache-dir``) unless that cache already holds it: each
seed (and each benchmark: their pre-training cells differ) has its own models.

Outputs, all under ``--out-dir``:

- ``seeds/<benchmark><suffix>_seed<n>.json`` (written by the benchmarks) and, for seed 0, their tables;
- ``biology_summary<suffix>.{json,csv}`` (``aggregate.py``) for each variant with at least one finished run;
- ``logs/<benchmark><suffix>_seed<n>.log``, ``logs/aggregate<suffix>.log``;
- ``run_seeds_manifest.json``: every run's command, status, return code and wall time, the aggregation runs,
  and the machine (CPU count, torch, CUDA device, library versions); rewritten after every finished run;
- ``--archive PATH`` (optional): a ``.tar.gz`` of the out dir without the model cache.

Usage::

    # the GPU machine: 5 seeds of both benchmarks, then the tie_break="random" variant
    # (the run of benchmarks/results/seeds_h200/: one H200, 16 cores, all 20 runs done in 321 s)
    python benchmarks/run_seeds.py --out-dir /tmp/seeds --accelerator gpu --precision 32 --backend torch \\
        --variants default tierandom --ablations-without-baselines --jobs 20 --threads 1 --deadline-s 400 \\
        --archive $OUT/seeds.tar.gz
    # a smoke test on a CPU
    python benchmarks/run_seeds.py --out-dir /tmp/seeds_quick --seeds 0 1 --jobs 2 --threads 1 --extra-args=--quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BENCHMARKS = ("integration", "annotation")

#: ablation variants: name -> extra flags of the benchmark scripts (the file suffix follows from the flags)
VARIANTS = {
    "default": [],
    "tierandom": ["--tie-break", "random"],
    "gamma0": ["--gamma", "0"],
    "unidirectional": ["--unidirectional"],
}

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


@dataclass(eq=False)  # hashed by identity: a key of the running processes
class Run:
    """One benchmark process."""

    benchmark: str
    variant: str
    seed: int
    suffix: str
    argv: list[str]
    log: str
    result: str
    nice: int = 0
    status: str = "pending"  # pending, running, ok, failed, killed_at_deadline, not_started
    returncode: int | None = None
    start_s: float | None = None  # seconds after the driver started
    wall_seconds: float | None = None
    extra: dict = field(default_factory=dict)


def run_suffix(argv: list[str]) -> str:
    """File suffix a benchmark gives its outputs for these flags (``_common.run_suffix``)."""
    import _common as C

    parser = argparse.ArgumentParser(add_help=False)
    C.add_common_args(parser)
    args, _ = parser.parse_known_args(argv)
    return C.run_suffix(args)


def build_runs(args: argparse.Namespace) -> list[Run]:
    """Every run, in priority order: variant, then seed, then benchmark."""
    extra = shlex.split(args.extra_args) if args.extra_args else []
    cache = args.cache_dir if args.cache_dir is not None else args.out_dir / "cache"
    runs = []
    for i, variant in enumerate(args.variants):
        for seed in args.seeds:
            for bench in args.benchmarks:
                flags = [
                    "--seed",
                    str(seed),
                    "--threads",
                    str(args.threads),
                    "--accelerator",
                    args.accelerator,
                    "--backend",
                    args.backend,
                    "--precision",
                    args.precision,
                    "--out-dir",
                    str(args.out_dir),
                    "--cache-dir",
                    str(cache),
                    *VARIANTS[variant],
                ]
                if bench == "integration":
                    flags += ["--n-jobs", str(args.threads)]
                if i > 0 and args.ablations_without_baselines:  # scVI / scANVI do not depend on the variant
                    flags.append("--no-scvi" if bench == "integration" else "--no-scanvi")
                if not args.figures:
                    flags.append("--no-figures")
                flags += extra
                suffix = run_suffix(flags)
                name = f"{bench}{suffix}_seed{seed}"
                runs.append(
                    Run(
                        benchmark=bench,
                        variant=variant,
                        seed=seed,
                        suffix=suffix,
                        argv=[sys.executable, str(HERE / f"{bench}.py"), *flags],
                        log=str(args.out_dir / "logs" / f"{name}.log"),
                        result=str(args.out_dir / "seeds" / f"{name}.json"),
                        nice=0 if i == 0 else args.nice,
                    )
                )
    return runs


def child_env(threads: int) -> dict[str, str]:
    """Environment of a benchmark process: its thread pools capped, JAX kept on the CPU, no GPU preallocation."""
    env = dict(os.environ)
    for k in _THREAD_ENV:
        env[k] = str(threads)
    env.setdefault("JAX_PLATFORMS", "cpu")  # scib-metrics' JAX: never one GPU memory pool per process
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env["PYTHONUNBUFFERED"] = "1"
    src = HERE.parent / "src"
    if src.is_dir():  # the repository's package wins over an installed one
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    return env


def start(run: Run, env: dict[str, str], t0: float) -> subprocess.Popen:
    Path(run.log).parent.mkdir(parents=True, exist_ok=True)
    log = open(run.log, "w")
    log.write("$ " + shlex.join(run.argv) + "\n")
    log.flush()
    proc = subprocess.Popen(
        run.argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=str(HERE.parent),
        start_new_session=True,  # its own process group: a kill reaches its workers too
    )
    if run.nice:  # set before the interpreter starts its threads, which inherit it
        try:
            os.setpriority(os.PRIO_PROCESS, proc.pid, run.nice)
        except OSError as err:
            print(f"could not renice {proc.pid}: {err}", flush=True)
    proc.log_file = log  # type: ignore[attr-defined]
    run.status = "running"
    run.start_s = round(time.monotonic() - t0, 1)
    print(f"[{run.start_s:7.1f}s] start {Path(run.log).stem} (nice {run.nice})", flush=True)
    return proc


def kill(procs: list[subprocess.Popen], grace_s: float = 5.0) -> None:
    """SIGTERM the process groups of ``procs`` at once, SIGKILL those still alive after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + wait
        while time.monotonic() < end and any(p.poll() is None for p in procs):
            time.sleep(0.1)
        if all(p.poll() is not None for p in procs):
            return


def finish(run: Run, proc: subprocess.Popen, t0: float, status: str | None = None) -> None:
    proc.log_file.close()  # type: ignore[attr-defined]
    run.returncode = proc.returncode
    run.wall_seconds = round(time.monotonic() - t0 - run.start_s, 1)
    if status is None:
        status = "ok" if proc.returncode == 0 and Path(run.result).is_file() else "failed"
    run.status = status
    print(
        f"[{time.monotonic() - t0:7.1f}s] {status:>18} {Path(run.log).stem} "
        f"(rc {proc.returncode}, {run.wall_seconds} s)",
        flush=True,
    )


def machine_info() -> dict[str, Any]:
    """CPU count, torch and CUDA device, versions of the libraries the benchmarks use (no heavy imports)."""
    from importlib import metadata

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_available"] = torch.cuda.is_available()
        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():  # the driver itself opens no CUDA context: nvidia-smi names the GPU
            info["cuda_device_count"] = torch.cuda.device_count()
            try:
                query = "--query-gpu=name,memory.total,driver_version"
                out = subprocess.run(
                    ["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True, timeout=20
                )
                info["cuda_device"] = out.stdout.strip() or out.stderr.strip()
            except (OSError, subprocess.TimeoutExpired) as err:
                info["cuda_device"] = f"nvidia-smi failed: {err}"
    except Exception as err:
        info["torch"] = f"unavailable: {err}"
    versions = {}
    for pkg in ("genemamba-scvi", "scvi-tools", "scanpy", "scib-metrics", "anndata", "jax", "mamba-ssm", "triton"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    info["versions"] = versions
    try:
        import _common as C

        info["genemamba_code_version"] = C.code_version()
    except Exception as err:
        info["genemamba_code_version"] = f"unavailable: {err}"
    return info


def write_manifest(path: Path, manifest: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    tmp.replace(path)


def aggregate(out_dir: Path, suffixes: list[str], timeout_s: float) -> list[dict]:
    """``aggregate.py --out-dir out_dir --suffix s`` for each suffix; a record of each."""
    records = []
    for suffix in suffixes:
        log = out_dir / "logs" / f"aggregate{suffix}.log"
        argv = [sys.executable, str(HERE / "aggregate.py"), "--out-dir", str(out_dir), "--suffix", suffix]
        t = time.monotonic()
        with open(log, "w") as f:
            try:
                rc = subprocess.run(
                    argv, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s, cwd=str(HERE.parent)
                ).returncode
            except subprocess.TimeoutExpired:
                rc = None
        summary = out_dir / f"biology_summary{suffix}.json"
        records.append(
            {
                "suffix": suffix,
                "argv": argv,
                "returncode": rc,
                "wall_seconds": round(time.monotonic() - t, 1),
                "summary": str(summary) if summary.is_file() else None,
                "log": str(log),
            }
        )
        print(f"aggregate{suffix or ' (default)'}: rc {rc}, {records[-1]['wall_seconds']} s", flush=True)
    return records


def archive(out_dir: Path, path: Path, exclude: Path) -> None:
    """A ``.tar.gz`` of ``out_dir`` without ``exclude`` (the model cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exclude = exclude.resolve()

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        p = (out_dir.parent / info.name).resolve()
        if p == exclude or exclude in p.parents or p == path.resolve():
            return None
        return info

    with tarfile.open(path, "w:gz") as tar:
        tar.add(out_dir, arcname=out_dir.name, filter=keep)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, required=True, help="where everything is written")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=BENCHMARKS)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["default"],
        choices=list(VARIANTS),
        help="in priority order; the first is the main one (flags: "
        + ", ".join(f"{k}: {' '.join(v) or 'none'}" for k, v in VARIANTS.items())
        + ")",
    )
    parser.add_argument("--jobs", type=int, default=None, help="processes at a time (default: CPU count // threads)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process (torch, BLAS, numba)")
    parser.add_argument("--accelerator", default="cpu", help="cpu or gpu: GeneMamba, scVI and scANVI")
    parser.add_argument("--backend", default="torch", choices=["torch", "auto", "mamba_ssm"], help="GeneMamba backend")
    parser.add_argument("--precision", default="auto", help="GeneMamba precision: auto, 32, bf16")
    parser.add_argument("--cache-dir", type=Path, default=None, help="pre-trained models (default <out-dir>/cache)")
    parser.add_argument("--figures", action="store_true", help="seed 0 also writes its figures and UMAPs")
    parser.add_argument(
        "--extra-args", default="", help="more flags for every benchmark process, e.g. --extra-args=--quick"
    )
    parser.add_argument(
        "--ablations-without-baselines",
        action="store_true",
        help="runs of the later variants leave out scVI (integration) and scANVI (annotation): they do not depend "
        "on the GeneMamba variant and are in the main variant's runs of the same seeds",
    )
    parser.add_argument("--nice", type=int, default=10, help="CPU niceness of the runs of the later variants")
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help="seconds after which no run starts and running ones are killed (then aggregation)",
    )
    parser.add_argument("--aggregate-timeout-s", type=float, default=60.0)
    parser.add_argument("--no-aggregate", action="store_true")
    parser.add_argument("--archive", type=Path, default=None, help="also write a .tar.gz of the out dir (no cache)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    args.out_dir = args.out_dir.resolve()
    if args.jobs is None:
        args.jobs = max(1, (os.cpu_count() or 1) // max(1, args.threads))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    t0 = time.monotonic()
    runs = build_runs(args)
    if args.dry_run:
        for r in runs:
            print(f"nice {r.nice}: " + shlex.join(r.argv))
        return {"runs": [asdict(r) for r in runs]}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "logs").mkdir(exist_ok=True)
    manifest_path = args.out_dir / "run_seeds_manifest.json"
    manifest: dict[str, Any] = {
        "what": "run_seeds.py: biology benchmarks over seeds as parallel processes, then aggregate.py",
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_info(),
        "runs": [asdict(r) for r in runs],
    }
    write_manifest(manifest_path, manifest)
    env = child_env(args.threads)
    pending, running = deque(runs), {}
    deadline = args.deadline_s
    try:
        while pending or running:
            now = time.monotonic() - t0
            if deadline is not None and now >= deadline:
                print(f"[{now:7.1f}s] deadline: stopping {len(running)} runs, {len(pending)} not started", flush=True)
                kill(list(running.values()))
                for run, proc in running.items():
                    finish(run, proc, t0, status="killed_at_deadline")
                running.clear()
                for run in pending:
                    run.status = "not_started"
                pending.clear()
                break
            while pending and len(running) < args.jobs:
                run = pending.popleft()
                running[run] = start(run, env, t0)
            done = [r for r, p in running.items() if p.poll() is not None]
            for run in done:
                finish(run, running.pop(run), t0)
            if done:
                manifest["runs"] = [asdict(r) for r in runs]
                write_manifest(manifest_path, manifest)
            time.sleep(0.5)
    finally:  # an interrupted driver leaves no process behind
        kill(list(running.values()))
        for run, proc in running.items():
            finish(run, proc, t0, status="killed")
    manifest["runs"] = [asdict(r) for r in runs]
    manifest["runs_wall_seconds"] = round(time.monotonic() - t0, 1)
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    manifest["status_counts"] = counts
    print("runs:", counts, flush=True)
    if not args.no_aggregate:
        suffixes = list(dict.fromkeys(r.suffix for r in runs if r.status == "ok"))
        manifest["aggregate"] = aggregate(args.out_dir, suffixes, args.aggregate_timeout_s)
    manifest["total_wall_seconds"] = round(time.monotonic() - t0, 1)
    write_manifest(manifest_path, manifest)
    print(f"wrote {manifest_path}", flush=True)
    if args.archive is not None:
        cache = args.cache_dir if args.cache_dir is not None else args.out_dir / "cache"
        archive(args.out_dir, args.archive.resolve(), cache)
    return manifest


if __name__ == "__main__":
    main()
