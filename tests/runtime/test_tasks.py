"""The tasks are one table (runtime/tasks.py): ssp-run's --task choices, the files an image writes, the folders a
run keeps out of its input and the task's one file for all images all come from it."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
from PIL import Image

from ssprompt.runtime import tasks
from ssprompt.runtime.cli import run_command
from ssprompt.runtime.contract import LABELS
from ssprompt.runtime.outputs import TaskSettings, encode_image, task_json
from ssprompt.runtime.run import OUTPUT_FOLDERS
from ssprompt.runtime.tasks import TASKS, Task, Written


def test_ssp_run_offers_the_tables_tasks_with_their_help():
    option = next(p for p in run_command.params if p.name == "task")
    assert list(option.type.choices) == list(TASKS) == ["semantic", "instance", "panoptic"]
    assert all(f"{task.name}: {task.help}" in option.help for task in TASKS.values())


def test_the_folders_a_run_keeps_out_of_its_input_are_the_tasks_and_the_overlays():
    assert sorted(OUTPUT_FOLDERS) == ["labels", "overlays", "panoptic"]


def _edges_task() -> Task:
    """A task that is not in the table: the label map's class boundaries, and a count of them a JSON file."""
    def write(meta, edges, stem, image_id):
        return Written({"edge_pixels": int(edges.sum())}, edges.astype(np.uint8) * 255, [{"image_id": image_id}])

    return Task("edges", "boundary PNGs", (LABELS,), needs_things=False, folder="edges", file_key="edge",
                json_file="edges.json", result=lambda outputs, placement, things, i, p: outputs[LABELS] > 0,
                write=write, overlay=lambda image, edges, meta: image, collect=lambda coco, categories: {"n": len(coco)})


def test_a_task_added_to_the_table_is_written_where_its_entry_says(monkeypatch):
    monkeypatch.setitem(tasks.TASKS, "edges", _edges_task())
    edges = np.array([[True, False], [False, False]])
    encoded = encode_image(SimpleNamespace(), TaskSettings("edges", with_overlay=True), edges, "a.png", "a", 7, (2, 2),
                           np.zeros((2, 2, 3), np.uint8))
    assert encoded.record == {"file": "a.png", "image_id": 7, "height": 2, "width": 2, "edge": "edges/a.png",
                              "edge_pixels": 1, "overlay": "overlays/a.png"}
    assert np.asarray(Image.open(io.BytesIO(encoded.files["edges/a.png"]))).tolist() == [[255, 0], [0, 0]]
    assert json.loads(task_json("edges", encoded.coco, [])) == {"n": 1}


def test_semantic_writes_no_json_and_instance_its_records_as_a_list():
    assert task_json("semantic", [], []) is None
    assert json.loads(task_json("instance", [{"image_id": 1}], [{"id": 1}])) == [{"image_id": 1}]
    assert json.loads(task_json("panoptic", [{"image_id": 1}], [{"id": 1}])) == {"annotations": [{"image_id": 1}],
                                                                                  "categories": [{"id": 1}]}
