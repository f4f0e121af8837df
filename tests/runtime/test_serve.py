"""ssp-serve on a local Ray: it answers what ssp-run writes, byte for byte; bad requests get 4xx and it goes on."""

import base64
import json
import shutil
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image


pytest.importorskip("onnxruntime")

TASKS = ("semantic", "instance", "panoptic")
MAX_BYTES = 1_000_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, data: bytes) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=120) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture(scope="module")
def server(ray_instance, exported_onnx):
    """ssp-serve's application on a free local port (batches of up to 4): its base URL."""
    from ray import serve

    from ssprompt.runtime.serve import ServeConfig, build_app

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(ServeConfig(str(exported_onnx), max_batch=4, batch_wait_ms=50, max_bytes=MAX_BYTES)),
              name="ssprompt", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def test_server_answers_what_ssp_run_writes_for_each_task(server, exported_onnx, val_images, tmp_path, ssp_run):
    written = {task: tmp_path / task for task in TASKS}
    for task, out in written.items():
        ssp_run(exported_onnx, val_images, out, "--task", task)
    requests = [(task, k + 1, path) for task in TASKS for k, path in enumerate(val_images)]
    with ThreadPoolExecutor(len(requests)) as pool:  # all at once: images of several tasks share batches
        answers = list(pool.map(lambda r: _post(f"{server}/segment?task={r[0]}&name={r[2].name}&image_id={r[1]}",
                                                r[2].read_bytes()), requests))
    instances = json.loads((written["instance"] / "instances.json").read_text())
    panoptic = json.loads((written["panoptic"] / "panoptic.json").read_text())
    for (task, image_id, path), (status, body) in zip(requests, answers):
        assert status == 200, body
        if task == "semantic":
            assert body == (written[task] / "labels" / f"{path.stem}.png").read_bytes()
        elif task == "instance":
            assert body == json.dumps([r for r in instances if r["image_id"] == image_id]).encode()
        else:
            answer = json.loads(body)
            assert base64.b64decode(answer.pop("png")) == (written[task] / "panoptic" / f"{path.stem}.png").read_bytes()
            assert answer == {"annotations": [panoptic["annotations"][image_id - 1]], "categories": panoptic["categories"]}
    assert any(r["image_id"] == 1 for r in instances)  # the instance comparison compared something


def test_bad_requests_get_4xx_with_ssp_runs_message_and_the_replica_goes_on(server, exported_onnx, val_images, tmp_path,
                                                                          ssp_run):
    good = val_images[0].read_bytes()
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "notes.png").write_text("not an image")
    (bad / "cut.png").write_bytes(good[: len(good) // 2])
    Image.new("1", (14000, 14000)).save(bad / "bomb.png", optimize=True)  # 196 million pixels, a small file
    shutil.copy(val_images[0], bad / "good.png")
    ssp_run(exported_onnx, [bad], tmp_path / "out")
    printed = {Path(s["file"]).name: s["error"] for s in json.loads((tmp_path / "out" / "summary.json").read_text())["skipped"]}
    assert set(printed) == {"notes.png", "cut.png", "bomb.png"}
    for name, message in printed.items():
        status, body = _post(f"{server}/segment?name={bad / name}", (bad / name).read_bytes())
        assert (status, body.decode()) == (400, message + "\n")
        assert _post(f"{server}/segment?name=good.png", good)[0] == 200
    status, body = _post(f"{server}/segment?task=edges", good)
    assert status == 400 and body.decode() == "task 'edges': choose semantic, instance, panoptic\n"
    status, body = _post(f"{server}/segment?name=big.png", b"\0" * (MAX_BYTES + 1))
    assert status == 413 and "more than the server takes" in body.decode()
    status, body = _post(f"{server}/segment?name=good.png", good)
    assert status == 200 and body == (tmp_path / "out" / "labels" / "good.png").read_bytes()


def test_metadata_and_health(server, exported_onnx):
    from ssprompt.runtime.runner import open_runner

    with open_runner(exported_onnx) as runner:
        meta = runner.metadata
    with urllib.request.urlopen(f"{server}/metadata", timeout=60) as answer:
        served = json.loads(answer.read())
    assert (served["classes"], served["palette"], served["input_size"], served["precision"]) == \
        (meta.class_names, meta.palette, meta.input_size, meta.precision)
    assert served["tasks"] == list(TASKS)
    with urllib.request.urlopen(f"{server}/healthz", timeout=60) as answer:
        assert answer.status == 200
