"""ssp-serve: the runner behind HTTP, as a Ray Serve application (pip install 'ssprompt[serve]'; no torch).

    POST /segment?task=semantic|instance|panoptic   body: an image file (whatever ssp-run reads)
    GET  /metadata                                  classes, palette, input size, precision, ...
    GET  /healthz                                   "ok" once the replica has loaded the model

The answer to /segment is what ssp-run writes for that image, from the same encoder (outputs.py):
semantic, labels/<stem>.png (image/png); instance, instances.json for that one image (COCO results,
RLE masks); panoptic, panoptic.json for that one image with the PNG's bytes in base64 under "png".
`name` (the file name ssp-run would have read, default "image.png") and `image_id` (default 1, as
ssp-run numbers a single image) set what the COCO records and error messages call the image.

Requests are batched by Ray Serve (`serve.batch`: up to `max_batch` images, waiting at most
`batch_wait_ms` for a batch to fill); images of different tasks share a batch. Decoding, letterboxing
and post-processing run per request beside the batched graph call. A bad request gets a 4xx with the
one-line message ssp-run prints for that file (the name in place of the path); the replica goes on.
Each answer says in `X-Ssprompt-Batch` how many images its graph call held.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import OptionError, SSPromptError
from .instances import InstanceOptions, PanopticOptions

__all__ = ["ServeConfig", "SegmentServer", "build_app", "run_server"]

DEFAULT_MAX_BYTES = 64 * 2**20


@dataclass(frozen=True)
class ServeConfig:
    model: str  # .onnx or TensorRT engine; the same path on every node of a cluster
    backend: str = "auto"
    provider: str = "auto"
    max_batch: int = 8  # images a graph call at most
    batch_wait_ms: float = 10.0  # how long a batch waits to fill
    replicas: int = 1
    cpus_per_replica: float = 1.0
    gpus_per_replica: float | None = None  # None: 1 where the cluster has GPUs, else 0
    max_bytes: int = DEFAULT_MAX_BYTES  # larger uploads get 413
    instance_options: InstanceOptions = field(default_factory=InstanceOptions)
    panoptic_options: PanopticOptions = field(default_factory=PanopticOptions)

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.batch_wait_ms < 0 or self.replicas < 1 or self.max_bytes < 1:
            raise OptionError(f"--max-batch {self.max_batch} and --replicas {self.replicas} must be at least 1, "
                              f"--batch-wait-ms {self.batch_wait_ms} at least 0, --max-bytes {self.max_bytes} positive")
        if self.cpus_per_replica < 0 or (self.gpus_per_replica or 0) < 0:
            raise OptionError("--cpus-per-replica and --gpus-per-replica cannot be negative")


class RequestError(SSPromptError):
    """A request the server refuses: an HTTP status and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SegmentServer:
    """One replica: a runner and its Segmenter, loaded once; requests in, ssp-run's bytes out."""

    def __init__(self, config: ServeConfig) -> None:
        from .coco import categories
        from .runner import open_runner
        from .segmenter import Segmenter
        from .tasks import TASKS

        self.config = config
        self.runner = open_runner(config.model, config.backend, config.provider)
        self.runner.activate()
        self.segmenter = Segmenter(self.runner)
        self.meta = self.runner.metadata
        self.categories = categories(self.meta.class_names, self.meta.thing_classes, self.meta.palette)
        self.tasks = []
        for task in TASKS:
            try:
                self.segmenter.check_task(task)
                self.tasks.append(task)
            except Exception:  # noqa: BLE001 - a task this graph cannot give is left out of /metadata
                pass
        self.infer_batch.set_max_batch_size(config.max_batch)
        self.infer_batch.set_batch_wait_timeout_s(config.batch_wait_ms / 1000)
        try:
            from ray import serve

            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside a Serve replica (tests of the class itself)
            self.replica = "local"

    async def __call__(self, request):
        from starlette.responses import PlainTextResponse

        routes = {"/segment": ("POST", self.segment), "/metadata": ("GET", self.metadata),
                  "/healthz": ("GET", self.healthz)}
        path = request.url.path.rstrip("/") or "/"
        try:
            if path not in routes:
                raise RequestError(404, f"{path}: no such endpoint; POST /segment, GET /metadata, GET /healthz")
            method, handler = routes[path]
            if request.method != method:
                raise RequestError(405, f"{path} takes {method}, not {request.method}")
            return await handler(request)
        except RequestError as err:
            return PlainTextResponse(f"{err}\n", status_code=err.status)
        except Exception as err:  # noqa: BLE001 - the runner failed: one line, and the replica goes on
            from .images import error_reason

            return PlainTextResponse(f"{self.config.model}: {error_reason(err)}\n", status_code=500)

    async def healthz(self, request):
        from starlette.responses import PlainTextResponse

        return PlainTextResponse("ok\n")

    async def metadata(self, request):
        from starlette.responses import JSONResponse

        meta = self.meta
        return JSONResponse({"model": Path(self.config.model).name, "backend": self.runner.backend,
                             "device": self.runner.device, "precision": meta.precision, "input_size": meta.input_size,
                             "classes": meta.class_names, "palette": meta.palette, "thing_classes": meta.thing_classes,
                             "categories": self.categories, "tasks": self.tasks, "contract_version": meta.contract_version,
                             "max_batch": self.config.max_batch, "batch_wait_ms": self.config.batch_wait_ms,
                             "max_bytes": self.config.max_bytes})

    async def _body(self, request, name: str) -> bytes:
        limit = self.config.max_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"{name}: {int(declared)} bytes, more than the server takes (--max-bytes {limit})")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestError(413, f"{name}: more than {limit} bytes, more than the server takes (--max-bytes {limit})")
        return bytes(body)

    def _query(self, request) -> tuple[str, str, int]:
        from .images import brief
        from .tasks import TASKS

        query = request.query_params
        task, name = query.get("task", "semantic"), query.get("name", "image.png")
        if task not in TASKS:
            raise RequestError(400, f"task {brief(task)}: choose {', '.join(TASKS)}")
        if task not in self.tasks:
            try:
                self.segmenter.check_task(task)
            except Exception as err:  # noqa: BLE001 - ModelError: what ssp-run says for this graph and task
                raise RequestError(422, " ".join(str(err).split())) from None
        text = query.get("image_id", "1")
        if not (text.isascii() and text.isdigit() and int(text) >= 1):
            raise RequestError(400, f"image_id {brief(text)}: expected a positive integer")
        if not name or "\n" in name or "\r" in name:
            raise RequestError(400, "name: expected a file name on one line")
        return task, name, int(text)

    def _prepare(self, data: bytes, name: str):
        from .images import ImageError, decode_image

        try:
            image = decode_image(data, name)
        except ImageError as err:
            raise RequestError(400, " ".join(str(err).split())) from None
        return image, *self.segmenter.prepare(image)

    def _answer(self, task: str, name: str, image_id: int, image: np.ndarray, outputs: dict, placement) -> tuple[bytes, str]:
        """What ssp-run writes for the image: the task's PNG (semantic), its JSON (instance), or its JSON with the
        PNG in it, base64 (panoptic)."""
        from .outputs import TaskSettings, encode_image
        from .tasks import TASKS

        config, spec = self.config, TASKS[task]
        result = spec.result(outputs, placement, self.meta.thing_classes, config.instance_options,
                             config.panoptic_options)
        encoded = encode_image(self.meta, TaskSettings(task, False, config.instance_options, config.panoptic_options),
                               result, name, Path(name).stem, image_id, image.shape[:2])
        picture = encoded.files[encoded.record[spec.file_key]] if spec.file_key else None
        if spec.collect is None:
            return picture, "image/png"
        answer = spec.collect(encoded.coco, self.categories)
        if picture is not None:
            answer["png"] = base64.b64encode(picture).decode("ascii")
        return json.dumps(answer).encode(), "application/json"

    async def segment(self, request):
        from starlette.responses import Response

        task, name, image_id = self._query(request)
        data = await self._body(request, name)
        image, square, placement = await asyncio.to_thread(self._prepare, data, name)
        outputs, batch = await self.infer_batch((task, square))
        body, media_type = await asyncio.to_thread(self._answer, task, name, image_id, image, outputs, placement)
        return Response(body, media_type=media_type,
                        headers={"X-Ssprompt-Batch": str(batch), "X-Ssprompt-Replica": self.replica})

    async def infer_batch(self, items: list[tuple[str, np.ndarray]]) -> list[tuple[dict, int]]:
        """One graph call for the requests Serve gathered: (task, (S, S, 3) uint8 square) each; returns each
        its rows of the outputs its task reads, and the batch's size. Wrapped by `serve.batch` in build_app."""
        from .segmenter import image_outputs

        squares = np.stack([square for _, square in items])  # (B, S, S, 3)
        outputs = await asyncio.to_thread(self.segmenter.infer, squares, {task for task, _ in items})
        return [(image_outputs(outputs, i), len(items)) for i in range(len(items))]


def build_app(config: ServeConfig):
    """The Serve application of `config`: SegmentServer as a deployment, its graph calls batched."""
    import ray
    from ray import serve

    gpus = config.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    batched = type("SegmentServer", (SegmentServer,), {
        "__doc__": SegmentServer.__doc__,
        # Serve's batcher; __init__ sets the configured size and wait on it.
        "infer_batch": serve.batch(max_batch_size=config.max_batch,
                                   batch_wait_timeout_s=config.batch_wait_ms / 1000)(SegmentServer.infer_batch),
    })
    deployment = serve.deployment(
        batched,
        name="SegmentServer",
        num_replicas=config.replicas,
        # one batch in the graph while the next gathers and the last is post-processed
        max_ongoing_requests=max(4, 3 * config.max_batch),
        ray_actor_options={"num_cpus": config.cpus_per_replica, "num_gpus": gpus},
        health_check_period_s=10,
    )
    return deployment.bind(config)


def run_server(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
               log=print) -> None:
    """Start Ray (local, or join `address`), serve `config` on http://host:port until Ctrl-C or SIGTERM,
    then let the replicas finish what they hold and stop."""
    import time

    import ray
    from ray import serve

    from .files import terminate_like_interrupt

    ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    terminate_like_interrupt(replace=True)  # ray.init set its own, which exits without shutting Serve down
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(config), name="ssprompt", route_prefix="/")
        log(f"serving {config.model} on http://{host}:{port} ({config.replicas} replica(s), batches of up to "
            f"{config.max_batch} within {config.batch_wait_ms:g} ms): POST /segment, GET /metadata, GET /healthz; "
            "Ctrl-C stops")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log("stopping: replicas finish the requests they hold")
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
