"""ssp-run --ray (a Ray Data pipeline) against ssp-run on the same generated images: images/s, outputs equal;
then a --ray run whose runner actor is killed (kill -9) part-way, checked for every output written once.

    flock /tmp/ssp-bench.lock python benchmarks/batch_scale.py --out benchmarks/results/batch_scale_cpu.md

The model is serve_load.py's (the tiny pretrained graph). Both plain runs are the commands themselves
(`ssp-run`, `ssp-run --ray`), timed from start to exit (the --ray one includes starting Ray); the pipeline's
own time is given beside. The kill run calls the same pipeline in this process to learn the actor's pid.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import header, table_lines, write_plot, write_report  # noqa: E402
from serve_load import scenes, tiny_model  # noqa: E402

BIN = Path(sys.executable).parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="exported .onnx (default: the tiny pretrained graph, built in --work)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ssp-batch-scale"))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--task", default="semantic", choices=["semantic", "instance", "panoptic"])
    parser.add_argument("--note", default="", help="a line on the run's conditions, printed under the table")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/batch_scale_cpu.md"))
    return parser.parse_args()


def timed_command(args: list[str]) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def kill_run(model: Path, images: Path, out: Path, batch: int, task: str, count: int) -> dict:
    """The pipeline in this process; once a quarter of the images are written, the runner actor's process is
    killed with SIGKILL (its pid from the rows it returns)."""
    import ray

    from ssprompt.runtime.cluster import ClusterConfig
    from ssprompt.runtime.run import segment_files

    rows: list[dict] = []
    killed: dict = {}

    def on_row(row: dict) -> None:
        rows.append(row)
        if not killed and len(rows) >= count // 4:
            killed["pid"] = int(row["pid"])
            killed["at"] = time.perf_counter()
            os.kill(killed["pid"], signal.SIGKILL)

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        began = time.perf_counter()
        summary = segment_files(model, [images], out, batch, progress=False, log=lambda *_: None, task=task,
                                cluster=ClusterConfig(), on_row=on_row)
        seconds = time.perf_counter() - began
    finally:
        ray.shutdown()
    ids = [int(row["image_id"]) for row in rows]
    pids = {int(row["pid"]) for row in rows}
    return {"seconds": seconds, "summary": summary, "rows": len(rows), "distinct": len(set(ids)),
            "killed_pid": killed.get("pid"), "actor_pids": pids, "after_kill": sum(int(r["pid"]) != killed.get("pid") for r in rows[count // 4:])}


def main() -> None:
    from ssprompt.runtime.run import comparable_outputs

    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model = args.model or tiny_model(args.work)
    paths = scenes(args.work / "images", args.images, seed=12)
    images = args.work / "images"
    common = [str(model), str(images), "--batch", str(args.batch), "--task", args.task, "--quiet"]

    plain_s, _ = timed_command([str(BIN / "ssp-run"), *common, "--out", str(args.work / "plain")])
    print(f"    ssp-run: {plain_s:.1f} s", file=sys.stderr, flush=True)
    ray_s, ray_log = timed_command([str(BIN / "ssp-run"), *common, "--out", str(args.work / "ray"), "--ray"])
    print(f"    ssp-run --ray: {ray_s:.1f} s", file=sys.stderr, flush=True)
    pipeline_s = next((float(line.split(" images in ")[1].split()[0]) for line in ray_log.splitlines()
                       if line.startswith("Ray Data pipeline: ")), float("nan"))
    plain = comparable_outputs(args.work / "plain")
    equal = comparable_outputs(args.work / "ray") == plain

    kill_out = args.work / "killed"
    if kill_out.exists():
        import shutil

        shutil.rmtree(kill_out)
    killed = kill_run(model, images, kill_out, args.batch, args.task, len(paths))
    print(f"    kill run: {killed['seconds']:.1f} s", file=sys.stderr, flush=True)
    killed_files = comparable_outputs(kill_out)
    temporaries = [p for p in kill_out.rglob("*") if p.name.startswith(".ssprompt-tmp-")]
    killed_equal = killed_files == plain
    once = killed["rows"] == killed["distinct"] == len(paths)

    n = len(paths)
    columns = ["run", "images", "seconds", "images/s", "vs ssp-run", "outputs equal to ssp-run's"]
    rows = [["ssp-run", str(n), f"{plain_s:.1f}", f"{n / plain_s:.1f}", "100 %", "-"],
            ["ssp-run --ray (command, Ray's start included)", str(n), f"{ray_s:.1f}", f"{n / ray_s:.1f}",
             f"{100 * plain_s / ray_s:.0f} %", "yes" if equal else "NO"],
            ["ssp-run --ray (the pipeline's own time)", str(n), f"{pipeline_s:.1f}", f"{n / pipeline_s:.1f}",
             f"{100 * plain_s / pipeline_s:.0f} %", "yes" if equal else "NO"],
            ["ssp-run --ray, runner actor killed (kill -9) at a quarter", str(n), f"{killed['seconds']:.1f}",
             f"{n / killed['seconds']:.1f}", f"{100 * plain_s / killed['seconds']:.0f} %", "yes" if killed_equal else "NO"]]
    import ray

    lines = header(f"ssp-run --ray (Ray Data) against ssp-run, {n} generated images") + [
        "",
        f"Ray {ray.__version__}; {os.cpu_count()} CPUs; `--batch {args.batch} --task {args.task}`; the tiny pretrained "
        "graph (ONNX Runtime CPU); task scenes of the miniature world, about 256 x 192. Outputs are compared file by "
        "file, byte for byte (summary.json without its per-image seconds).",
        "",
        *table_lines(columns, rows),
        "",
        f"Kill run: the runner actor (pid {killed['killed_pid']}) was killed after {n // 4} images came back; "
        f"Ray restarted it ({len(killed['actor_pids'])} actor processes served rows in all) and retried what it held. "
        f"The run returned {killed['rows']} rows for {killed['distinct']} distinct images of {n} "
        f"({'each exactly once' if once else 'NOT each once'}); {len(temporaries)} temporaries left; every file "
        f"{'equal to' if killed_equal else 'NOT equal to'} ssp-run's.",
    ]
    write_report(args.out, lines, args.note)

    def draw(ax) -> None:
        labels = ["ssp-run", "--ray\n(command)", "--ray\n(pipeline)", "--ray\nactor killed"]
        ax.bar(labels, [n / plain_s, n / ray_s, n / pipeline_s, n / killed["seconds"]], color=["grey", "C0", "C0", "C3"])
        ax.set(ylabel="images/s")

    write_plot(args.out.with_suffix(".png"), draw, f"ssp-run against ssp-run --ray, {n} images")


if __name__ == "__main__":
    main()
