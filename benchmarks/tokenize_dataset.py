"""Throughput of ``selftok tokenize-dataset`` (:func:`selftok_hf.tokenize_dataset`) with 1 and 2 processes.

    python benchmarks/tokenize_dataset.py                       # 2,000 Fashion-MNIST test images, 1 then 2 processes
    python benchmarks/tokenize_dataset.py --num-images 500 --processes 1 2 4 --threads-per-process 1

The images (Debian's ``dataset-fashion-mnist``, ``offline:fashion-mnist``) are saved once with ``save_to_disk``;
each run tokenizes them with the bundled 32-px default (``--pipeline`` for another) in a fresh folder, under
``accelerate launch --multi_gpu --num_processes P`` (gloo on CPU) for P > 1 and a plain process for P = 1. Printed per
P: the seconds of :func:`tokenize_dataset` itself (from a barrier after every process has loaded the model to the
merged dataset on disk) and its images/s, and the wall time of the whole command (Python start-up, imports, model
load included). Every run is checked to give the same dataset as the first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(data: str, output_dir: str, stats: str, pipeline: str | None, batch_size: int, chunk_size: int) -> None:
    import datasets

    from selftok_hf import tokenize_dataset
    from selftok_hf.training.dataset_tokenization import _load_pipeline, _partial_state

    state = _partial_state()
    pipe = _load_pipeline(pipeline, None)
    dataset = datasets.load_from_disk(data)
    state.wait_for_everyone()
    start = time.perf_counter()
    result = tokenize_dataset(dataset, pipe, output_dir, batch_size=batch_size, chunk_size=chunk_size)
    seconds = time.perf_counter() - start
    if state.is_main_process:
        Path(stats).write_text(json.dumps({"seconds": seconds, "images": result.num_rows, "processes": state.num_processes}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=2000, help="Fashion-MNIST test images to tokenize (default: 2000)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts to run (default: 1 2)")
    parser.add_argument("--threads-per-process", type=int, default=1, help="OMP_NUM_THREADS of each process (default: 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--chunk-size", type=int, default=250, help="rows per chunk (default: 250)")
    parser.add_argument("--pipeline", default=None, help="a pipeline folder (default: the bundled 32-px model)")
    parser.add_argument("--work-dir", default=None, help="folder for the data and outputs (default: a temporary one, deleted)")
    parser.add_argument("--worker", nargs=3, metavar=("DATA", "OUTPUT", "STATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.pipeline, args.batch_size, args.chunk_size)
        return

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work_dir or scratch)
        data = work / "fashion-mnist"
        if not data.exists():
            from selftok_hf.training.data import load_image_dataset

            load_image_dataset("offline:fashion-mnist", split="test", limit=args.num_images).save_to_disk(str(data))
        load = os.getloadavg()
        print(f"{args.num_images} Fashion-MNIST images (28 px, resized to the model's size), batch {args.batch_size}, chunks of "
              f"{args.chunk_size}, {args.threads_per_process} thread(s) per process; {os.cpu_count()} CPU cores, load average "
              f"{load[0]:.1f} at the start (a shared machine: other jobs run too)")  # fmt: skip
        print(f"{'processes':>9} | {'tokenize s':>10} | {'images/s':>8} | {'command s':>9}")
        reference = None
        for processes in args.processes:
            output, stats = work / f"ids-{processes}", work / f"stats-{processes}.json"
            launcher = [sys.executable]
            if processes > 1:
                launcher += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                             "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
            cmd = [*launcher, __file__, "--worker", str(data), str(output), str(stats), "--batch-size", str(args.batch_size),
                   "--chunk-size", str(args.chunk_size), *(["--pipeline", args.pipeline] if args.pipeline else [])]  # fmt: skip
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads_per_process))
            start = time.perf_counter()
            result = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
            wall = time.perf_counter() - start
            if result.returncode != 0:
                sys.exit(f"{processes} processes failed:\n{result.stderr[-3000:]}")
            measured = json.loads(stats.read_text())
            import datasets

            rows = datasets.load_from_disk(str(output)).to_dict()
            reference = reference or rows
            if rows != reference:
                sys.exit(f"{processes} processes gave another dataset than {args.processes[0]}")
            print(f"{processes:>9} | {measured['seconds']:>10.1f} | {measured['images'] / measured['seconds']:>8.1f} | {wall:>9.1f}")


if __name__ == "__main__":
    main()
