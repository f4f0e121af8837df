"""ssp-serve under load: latency, throughput, the batches Ray Serve formed, and every answer checked against
ssp-run's file for that image; then a replica killed mid-load; then ssp-bench's in-process figure at the
batch size Ray formed, on the same machine in the same run.

    flock /tmp/ssp-bench.lock python benchmarks/serve_load.py --out benchmarks/results/serve_load_cpu.md

The model is the tiny pretrained backbones' graph (untrained default prompts, 5 classes, 4 of them things;
built into --work unless --model names one). Load goes to 127.0.0.1 only, a bounded number of requests,
each with a timeout. Writes the table and a plot (same name, .png).
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import header, random_fullsize_pack, table_lines, write_plot, write_report  # noqa: E402

TIMEOUT_S = 60.0  # a request unanswered this long is lost


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="exported .onnx (default: the tiny pretrained graph, built in --work)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ssp-serve-load"))
    parser.add_argument("--images", type=int, default=64, help="distinct generated images the requests cycle through")
    parser.add_argument("--requests", type=int, default=1000, help="requests at each concurrency")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--kill-replicas", type=int, default=2, help="replicas in the run that kills one")
    parser.add_argument("--bench-iters", type=int, default=30)
    parser.add_argument("--note", default="", help="a line on the run's conditions, printed under the table")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_load_cpu.md"))
    return parser.parse_args()


def tiny_model(work: Path) -> Path:
    """The shipped tiny SAM and CLIP with the default prompts, exported (FP32, parity-gated)."""
    from ssprompt.export.pipeline import export_pack

    onnx = work / "model" / "model.onnx"
    if not onnx.is_file():
        pack = random_fullsize_pack("tiny", "tiny", 64, 5, work / "pack.pt", random_weights=False,
                                    thing_classes=(1, 2, 3, 4))
        export_pack(pack, work / "model", force=True, log=lambda *_: None)
    return onnx


def scenes(folder: Path, count: int, seed: int = 11) -> list[Path]:
    """`count` task scenes of the miniature world (sizes vary around 256 x 192) as PNG files."""
    from PIL import Image

    from ssprompt.train.world import task_scene

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"scene_{i:05d}.png"
        if not path.is_file():
            rng = np.random.default_rng([seed, i])
            size = (int(rng.integers(160, 224)), int(rng.integers(224, 288)))
            Image.fromarray(task_scene(rng, size).image).save(path)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Client:
    """Sends requests from `concurrency` threads, each over its own keep-alive connection to 127.0.0.1."""

    def __init__(self, port: int, bodies: list[bytes], expected: list[bytes]) -> None:
        self.port, self.bodies, self.expected = port, bodies, expected
        self.local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        if getattr(self.local, "connection", None) is None:
            self.local.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT_S)
        return self.local.connection

    def send(self, index: int) -> dict:
        """One request for image index % images: its latency, status, whether the answer was right, batch, replica."""
        image = index % len(self.bodies)
        began = time.perf_counter()
        try:
            connection = self._connection()
            connection.request("POST", f"/segment?name=scene_{image:05d}.png", self.bodies[image])
            answer = connection.getresponse()
            body = answer.read()
            status, batch, replica = answer.status, answer.getheader("X-Ssprompt-Batch"), answer.getheader("X-Ssprompt-Replica")
        except (OSError, http.client.HTTPException) as err:
            self.local.connection = None
            return {"seconds": time.perf_counter() - began, "status": None, "error": type(err).__name__, "right": False,
                    "batch": None, "replica": None, "done": time.perf_counter()}
        return {"seconds": time.perf_counter() - began, "status": status, "error": None, "batch": batch and int(batch),
                "right": status == 200 and body == self.expected[image], "replica": replica, "done": time.perf_counter()}


def load(client: Client, requests: int, concurrency: int, during=None) -> tuple[list[dict], float]:
    """`requests` requests from `concurrency` threads; `during(done_count)` runs beside them. A failed request is
    sent again (up to three times in all), as a client would; each attempt is recorded."""
    counter = iter(range(requests))
    lock = threading.Lock()
    results: list[list[dict]] = []

    def worker() -> None:
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            attempts = []
            for _ in range(3):
                attempts.append(client.send(index))
                if attempts[-1]["status"] == 200:
                    break
            with lock:
                results.append(attempts)

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(worker) for _ in range(concurrency)]
        if during is not None:
            during(results)
        for future in futures:
            future.result()
    return results, time.perf_counter() - began


def summarise(results: list[list[dict]], seconds: float) -> dict:
    first = [attempts[0] for attempts in results]
    final = [attempts[-1] for attempts in results]
    latencies = np.array([a["seconds"] for a in first if a["status"] == 200]) * 1000
    batches = Counter(a["batch"] for attempts in results for a in attempts if a["batch"])
    return {"requests": len(results), "p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99)),
            "images_per_s": sum(a["status"] == 200 for a in final) / seconds, "batches": batches,
            "failed": sum(a["status"] != 200 for attempts in results for a in attempts),
            "lost": sum(a["status"] != 200 for a in final),
            "wrong": sum(a["status"] == 200 and not a["right"] for a in final)}


def batch_text(batches: Counter) -> str:
    total = sum(batches.values())
    mean = sum(size * count for size, count in batches.items()) / max(1, total)
    common = ", ".join(f"{size}: {100 * count / total:.0f} %" for size, count in sorted(batches.items()) if count / total >= 0.05)
    return f"mean {mean:.1f} ({common})"


def replica_names() -> list[str]:
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("SERVE_REPLICA::"))


def kill_run(client: Client, requests: int, concurrency: int) -> dict:
    """Load on two replicas; once a quarter of the requests are answered, one replica is killed (ray.kill)."""
    import ray

    before = replica_names()
    event: dict = {}

    def during(results: list) -> None:
        while len(results) < requests // 4:
            time.sleep(0.01)
        victim = before[0]
        event["killed_at"] = time.perf_counter()
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        while True:  # recovered: the controller runs as many replicas as before, the dead one replaced
            names = replica_names()
            if victim not in names and len(names) == len(before):
                event["replaced_at"] = time.perf_counter()
                break
            if time.perf_counter() - event["killed_at"] > 120:
                break
            time.sleep(0.05)

    results, seconds = load(client, requests, concurrency, during)
    summary = summarise(results, seconds)
    killed = event["killed_at"]
    failures = [a for attempts in results for a in attempts if a["status"] != 200]
    summary["last_failure_s"] = max((a["done"] - killed for a in failures), default=0.0)
    summary["replaced_s"] = event.get("replaced_at", float("nan")) - killed
    old = {name.rsplit("#", 1)[-1] for name in before}
    new_answers = [a["done"] - killed for attempts in results for a in attempts
                   if a["status"] == 200 and a["replica"] not in old and a["done"] > killed]
    summary["new_replica_s"] = min(new_answers, default=float("nan"))
    return summary


def main() -> None:
    args = parse_args()
    import ray
    from ray import serve

    from ssprompt.runtime.runner import open_runner
    from ssprompt.runtime.bench import benchmark
    from ssprompt.runtime.run import segment_files
    from ssprompt.runtime.serve import ServeConfig, build_app

    args.work.mkdir(parents=True, exist_ok=True)
    model = args.model or tiny_model(args.work)
    paths = scenes(args.work / "images", args.images)
    segment_files(model, paths, args.work / "reference", batch=8, progress=False, log=lambda *_: None)
    bodies = [p.read_bytes() for p in paths]
    expected = [(args.work / "reference" / "labels" / f"{p.stem}.png").read_bytes() for p in paths]

    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    client = Client(port, bodies, expected)
    runs = {}
    try:
        config = ServeConfig(str(model), max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, replicas=1,
                             cpus_per_replica=1.0)
        serve.run(build_app(config), name="ssprompt", route_prefix="/")
        load(client, 2 * args.max_batch, args.max_batch)  # warm-up: sessions, connections
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            results, seconds = load(client, args.requests, concurrency)
            runs[concurrency] = summarise(results, seconds)
            print(f"    concurrency {concurrency}: {runs[concurrency]}", file=sys.stderr, flush=True)
        serve.run(build_app(ServeConfig(str(model), max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                                        replicas=args.kill_replicas, cpus_per_replica=cpus / args.kill_replicas / 2)),
                  name="ssprompt", route_prefix="/")
        load(client, 2 * args.max_batch, args.max_batch)
        top = max(runs)
        killed = kill_run(client, args.requests, top)
        print(f"    kill run: {killed}", file=sys.stderr, flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()

    top = max(runs)
    batches = runs[top]["batches"]
    # The batch a request typically rode in: the most common, and the request-weighted mean, rounded.
    sizes = sorted({batches.most_common(1)[0][0], round(sum(b * n for b, n in batches.items()) / sum(batches.values()))})
    rows, _ = benchmark(lambda batch: open_runner(model, batch=batch), sizes, warmup=3, iters=args.bench_iters,
                        progress=False)
    # The comparison takes the faster in-process figure of the two: the harder one for the server.
    best = max(rows, key=lambda row: row.images_per_s)
    formed, in_process = best.batch, best.images_per_s
    bench_text = "; ".join(f"batch {row.batch}: {row.images_per_s:.1f} images/s" for row in rows)

    columns = ["concurrency", "requests", "p50 ms", "p99 ms", "images/s", "batch a request rode in (mean; share of requests)", "failed", "lost", "wrong"]
    table = [[str(c), str(r["requests"]), f"{r['p50']:.0f}", f"{r['p99']:.0f}", f"{r['images_per_s']:.1f}",
              batch_text(r["batches"]), str(r["failed"]), str(r["lost"]), str(r["wrong"])] for c, r in runs.items()]
    table.append([f"{top}, {args.kill_replicas} replicas, one killed", str(killed["requests"]), f"{killed['p50']:.0f}",
                  f"{killed['p99']:.0f}", f"{killed['images_per_s']:.1f}", batch_text(killed["batches"]),
                  str(killed["failed"]), str(killed["lost"]), str(killed["wrong"])])
    ratio = runs[top]["images_per_s"] / in_process
    lines = header("ssp-serve under load (Ray Serve, ONNX Runtime CPU, tiny pretrained graph)") + [
        "",
        f"Ray {ray.__version__}; {cpus} CPUs; one replica (1 CPU reserved) with batches of up to {args.max_batch} "
        f"within {args.batch_wait_ms:g} ms; semantic task; {len(paths)} generated scenes (about 256 x 192) cycled; "
        f"client threads on the same machine, one keep-alive connection each, to 127.0.0.1.",
        "Every answer is compared byte for byte with ssp-run's label PNG for that image (wrong: a 200 with other bytes). "
        "A request that fails is sent again, up to three times in all; failed counts every failed attempt, lost the "
        "requests with no right answer after three.",
        "",
        *table_lines(columns, table),
        "",
        f"Replica kill (`ray.kill` of one of {args.kill_replicas} replicas once a quarter of the requests were answered): "
        f"{killed['failed']} attempts failed, the last {killed['last_failure_s']:.2f} s after the kill; "
        f"the controller had replaced the replica after {killed['replaced_s']:.1f} s"
        + (f", and the new one answered its first request {killed['new_replica_s']:.1f} s after the kill"
           if killed["new_replica_s"] == killed["new_replica_s"] else ", the new one answering none before the load ended")
        + f"; {killed['lost']} lost, {killed['wrong']} wrong.",
        "",
        f"Served against in-process: at concurrency {top} the server answered {runs[top]['images_per_s']:.1f} images/s. "
        f"ssp-bench (`benchmark` of runtime/bench.py, {args.bench_iters} calls) at the batch sizes Ray formed "
        f"(most common, and the mean a request rode in), measured in this run after the server stopped: {bench_text} "
        f"(graph calls only: no decoding, encoding or HTTP). Served / in-process at batch {formed}: {100 * ratio:.0f} %.",
    ]
    write_report(args.out, lines, args.note)

    def draw(latency_ax, throughput_ax) -> None:
        levels = list(runs)
        latency_ax.plot(levels, [runs[c]["p50"] for c in levels], "o-", label="p50")
        latency_ax.plot(levels, [runs[c]["p99"] for c in levels], "s--", label="p99")
        latency_ax.set(xlabel="concurrent requests", ylabel="latency (ms)", xscale="log")
        latency_ax.set_xticks(levels, [str(c) for c in levels])
        latency_ax.legend()
        throughput_ax.plot(levels, [runs[c]["images_per_s"] for c in levels], "o-", label="ssp-serve")
        throughput_ax.axhline(in_process, color="grey", linestyle=":", label=f"ssp-bench, batch {formed}")
        throughput_ax.set(xlabel="concurrent requests", ylabel="images/s", xscale="log", ylim=(0, None))
        throughput_ax.set_xticks(levels, [str(c) for c in levels])
        throughput_ax.legend()

    write_plot(args.out.with_suffix(".png"), draw, "ssp-serve: latency and throughput by concurrency", panels=2)


if __name__ == "__main__":
    main()
