"""Seeded mutation fuzzing of everything that reads outside input: packs, images, ONNX models and
engines, labelled folders, ssp-run over a folder of damaged images, every command's options, and
ssp-run over input folders laid out badly (FIFOs, long and repeated names, --out inside the input).

Each input must end in a correct result or in the project's own error (PackError, ImageError,
ModelError, DataError, BackboneError) whose message is one line naming the file; never another
exception, never a half-written file. An option value is refused while the options are parsed (exit 2)
or accepted by everything behind it. 2000+ inputs, about two minutes on two cores. The seed is fixed,
so a failure names a case that reproduces.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from ssprompt.runtime.images import ImageError, read_image
from ssprompt.train.data.folder import DataError
from ssprompt.train.data.layouts import open_folder
from ssprompt.train.data.reading import read_label
from ssprompt.train.pack import PackError, load_pack

SEED = 20261126
# Outcomes of the seeded cases below (a checker that lets damage through, or refuses good input, changes them). The
# pack and model cases mutate the demo's pack and its exported graph: a change to either format moves these counts
# too; the failure prints the new ones, to be checked case by case before they are written here.
PACK_OUTCOMES = (131, 56, 4)  # of 150 byte cases refused; of 60 value cases refused at load, and used by the model
IMAGES_READ = 51  # of 175 damaged images, decoded
LABELS_READ = 2  # of 120 damaged dataset cases, a label read
MODEL_OUTCOMES = (11, 119)  # of 120 damaged models and 10 engines: run, refused
RUN_SEGMENTED = 4  # of 60 damaged images and a good one, segmented by ssp-run (the rest skipped)


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random damage: flipped bytes, a cut, an insertion, a zeroed or repeated block, or noise."""
    data = bytearray(data)
    kind = rng.integers(6)
    if kind == 0 and data:  # flip 1 to 16 bytes
        for at in rng.integers(0, len(data), rng.integers(1, 17)):
            data[at] ^= int(rng.integers(1, 256))
    elif kind == 1:  # cut
        data = data[: int(rng.integers(0, len(data) + 1))]
    elif kind == 2:  # insert noise
        at = int(rng.integers(0, len(data) + 1))
        data[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif kind == 3 and data:  # zero a block
        at = int(rng.integers(0, len(data)))
        data[at:at + int(rng.integers(1, 4096))] = bytes(min(len(data) - at, 4096))[: len(data[at:at + 4096])]
    elif kind == 4 and data:  # repeat a block
        at = int(rng.integers(0, len(data)))
        data[at:at] = data[at:at + int(rng.integers(1, 512))]
    else:  # noise of the same length
        data = bytearray(rng.integers(0, 256, len(data), dtype=np.uint8).tobytes())
    return bytes(data)


def _check(call: Callable[[], object], allowed: tuple[type[Exception], ...], path: Path, case: str) -> object | None:
    """Run one case: its result, or None after an allowed one-line error naming `path`."""
    try:
        return call()
    except allowed as err:
        message = str(err)
        assert "\n" not in message and str(path) in message, f"{case}: {type(err).__name__}: {message!r}"
        return None
    except Exception as err:  # noqa: BLE001 - the finding itself
        pytest.fail(f"{case}: {type(err).__name__} escaped: {err}")


# --------------------------------------------------------------------------- packs


def _pack_values(pack, rng: np.random.Generator) -> Iterator[dict]:
    """Structural damage a file-level mutation rarely reaches: wrong types, shapes, values (the file's dict)."""
    from dataclasses import fields

    from ssprompt.train.pack import PACK_FORMAT, PACK_FORMAT_VERSION

    raw = {"format": PACK_FORMAT, "format_version": PACK_FORMAT_VERSION, **{f.name: getattr(pack, f.name) for f in fields(pack)}}
    tensors = [(None, k) for k, v in raw.items() if isinstance(v, torch.Tensor)] + [("learned", k) for k in pack.learned]
    junk = [None, "text", 3, 2.5, [], {}, [1, 2], torch.zeros(0), torch.zeros(3, 3), float("nan")]
    for _ in range(60):
        bad = dict(raw, learned=dict(pack.learned))
        kind = rng.integers(6)
        key = str(rng.choice(list(raw)))
        if kind == 0:
            bad.pop(key)
        elif kind == 1:
            bad[key] = junk[int(rng.integers(len(junk)))]
        elif kind in (2, 3):
            where, name = tensors[int(rng.integers(len(tensors)))]
            holder = bad["learned"] if where else bad
            t = holder[name].clone()
            if kind == 2:
                t.view(-1)[int(rng.integers(t.numel()))] = float(rng.choice([np.nan, np.inf, -np.inf, 1e38]))
            else:
                t = t[..., : max(1, t.shape[-1] // 2)].contiguous()
            holder[name] = t
        elif kind == 4:
            bad["palette"] = [[int(v) for v in rng.integers(-300, 600, 3)] for _ in pack.palette]
        else:
            bad["class_names"] = list(pack.class_names[:-1]) if rng.integers(2) else [""] * len(pack.class_names)
        yield bad


def test_fuzz_pack_loader(demo_run, tmp_path):
    from ssprompt.train.backbones import BackboneError
    from ssprompt.train.pipeline import model_from_pack

    rng = np.random.default_rng(SEED)
    source = demo_run[1].read_bytes()
    pack = load_pack(demo_run[1])
    path = tmp_path / "pack.pt"
    bytes_refused = values_refused = values_used = 0
    for i in range(150):
        path.write_bytes(mutate(source, rng))
        bytes_refused += _check(lambda: load_pack(path), (PackError,), path, f"pack byte case {i}") is None
    for i, bad in enumerate(_pack_values(pack, rng)):
        torch.save(bad, path)
        result = _check(lambda: load_pack(path), (PackError,), path, f"pack value case {i}")
        if result is None:
            values_refused += 1
        else:  # it passed the file checks: it must also fit the backbones or say why
            values_used += _check(lambda: model_from_pack(result, device="cpu", source=path), (PackError, BackboneError),
                                  path, f"pack value case {i} into the backbones") is not None
    # The seed is fixed: these are the outcomes of this very damage, each case ending as one of them.
    assert (bytes_refused, values_refused, values_used) == PACK_OUTCOMES


# --------------------------------------------------------------------------- images


def _image_sources(folder: Path, synthetic_root: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    sources = [sorted((synthetic_root / "val" / "images").iterdir())[0]]
    for name, image in (("a.jpg", Image.fromarray(rgb)), ("b.png", Image.fromarray(rgb).convert("P")),
                        ("c.tiff", Image.fromarray(rgb)), ("d.webp", Image.fromarray(rgb)),
                        ("e.png", Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))),
                        ("f.bmp", Image.fromarray(rgb).convert("L"))):
        image.save(folder / name)
        sources.append(folder / name)
    return sources


def test_fuzz_image_reader(synthetic_root, tmp_path):
    rng = np.random.default_rng(SEED + 1)
    sources = _image_sources(tmp_path, synthetic_root)
    read = 0
    for i in range(175):
        source = sources[i % len(sources)]
        path = tmp_path / f"case{source.suffix}"
        path.write_bytes(mutate(source.read_bytes(), rng))
        image = _check(lambda: read_image(path), (ImageError,), path, f"image case {i} ({source.name})")
        if image is not None:
            read += 1
            assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8 and min(image.shape[:2]) >= 1
    assert read == IMAGES_READ


# --------------------------------------------------------------------------- labelled folders


def test_fuzz_dataset_reader(synthetic_root, tmp_path):
    rng = np.random.default_rng(SEED + 2)
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    folder = open_folder(root, "val")
    sample = folder.samples[0]
    label_bytes, image_bytes = sample.label.read_bytes(), sample.image.read_bytes()
    classes = (root / "classes.txt").read_bytes()
    labels_read = 0
    for i in range(120):
        kind = i % 3
        target = {0: sample.label, 1: sample.image, 2: root / "classes.txt"}[kind]
        original = {0: label_bytes, 1: image_bytes, 2: classes}[kind]
        target.write_bytes(mutate(original, rng))

        def read():
            opened = open_folder(root, "val", int(rng.integers(0, 300)))
            return read_label(opened.samples[0], opened.num_classes, opened.void)

        label = _check(read, (DataError,), root, f"dataset case {i} ({target.name})")  # names a file of the folder
        if label is not None:
            labels_read += 1
            assert label.ndim == 2 and label.dtype == np.uint8
        target.write_bytes(original)
    assert labels_read == LABELS_READ


# --------------------------------------------------------------------------- models and engines

_MODEL_WORKER = r"""
import json, sys
from pathlib import Path
import numpy as np
from ssprompt.runtime.runner import open_runner
from ssprompt.runtime.errors import ModelError
from ssprompt.runtime.contract import INPUT, LABELS
from ssprompt.runtime.segmenter import check_metadata
for line in sys.stdin:
    path = Path(line.strip())
    try:
        with open_runner(path) as runner:
            size = check_metadata(runner).input_size
            labels = runner.infer({INPUT: np.zeros((1, size, size, 3), np.uint8)}, [LABELS])[LABELS]
            result = {"ok": list(labels.shape)}
    except (ModelError, ValueError) as err:
        result = {"error": str(err), "type": type(err).__name__}
    except Exception as err:
        result = {"escaped": f"{type(err).__name__}: {err}"}
    print(json.dumps(result), flush=True)
"""


def _model_cases(model: Path, folder: Path, rng: np.random.Generator) -> list[Path]:
    import onnx

    source = model.read_bytes()
    cases = []
    for i in range(90):  # damaged bytes
        path = folder / f"bytes{i}.onnx"
        path.write_bytes(mutate(source, rng))
        cases.append(path)
    proto = onnx.load(str(model))
    for i in range(30):  # damaged metadata and shapes inside a well-formed file
        damaged = onnx.ModelProto()
        damaged.CopyFrom(proto)
        props = damaged.metadata_props
        entry = props[int(rng.integers(len(props)))]
        entry.value = str(rng.choice(["{", "null", "[]", '"x"', "-1", "[[300,0,0]]", "1e999", ""]))
        if i % 3 == 0:
            damaged.graph.input[0].type.tensor_type.shape.dim[1].dim_value = int(rng.integers(1, 64))
        path = folder / f"meta{i}.onnx"
        onnx.save(damaged, str(path))
        cases.append(path)
    for i in range(10):  # an engine where TensorRT is absent, or a damaged one where it is present
        path = folder / f"engine{i}.plan"
        path.write_bytes(rng.integers(0, 256, 256, dtype=np.uint8).tobytes())
        cases.append(path)
    return cases


def test_fuzz_model_and_engine_loader(exported_onnx, tmp_path):
    """In one subprocess: a crash inside onnxruntime would end the worker, which the test reports."""
    cases = _model_cases(exported_onnx, tmp_path, np.random.default_rng(SEED + 3))
    done = subprocess.run([sys.executable, "-c", _MODEL_WORKER], input="\n".join(map(str, cases)) + "\n",
                          capture_output=True, text=True, timeout=600)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and len(results) == len(cases), f"worker died after {len(results)} cases: {done.stderr[-2000:]}"
    for path, result in zip(cases, results):
        assert "escaped" not in result, f"{path.name}: {result['escaped']}"
        if "error" in result:
            assert result["type"] == "ModelError" or str(path) in result["error"], f"{path.name}: {result}"
            assert "\n" not in result["error"] and str(path) in result["error"], f"{path.name}: {result}"
    assert (sum("ok" in r for r in results), sum("error" in r for r in results)) == MODEL_OUTCOMES


# --------------------------------------------------------------------------- ssp-run end to end


def test_fuzz_ssp_run_over_damaged_images_writes_only_whole_files(exported_onnx, synthetic_root, tmp_path):
    from click.testing import CliRunner

    from ssprompt.runtime.cli import run_command
    from ssprompt.runtime.files import is_temporary

    rng = np.random.default_rng(SEED + 4)
    inputs = tmp_path / "in"
    inputs.mkdir()
    sources = sorted((synthetic_root / "val" / "images").iterdir())[:4]
    for i in range(60):
        source = sources[i % len(sources)]
        (inputs / f"{i:02d}{source.suffix}").write_bytes(mutate(source.read_bytes(), rng))
    shutil.copy(sources[0], inputs / "good.png")
    result = CliRunner().invoke(run_command, [str(exported_onnx), str(inputs), "--out", str(tmp_path / "o"), "--batch", "4",
                                              "--overlay", "--quiet"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert len(summary["images"]) + len(summary["skipped"]) == 61 and len(summary["images"]) == RUN_SEGMENTED
    assert "good.png" in {Path(r["file"]).name for r in summary["images"]}
    for record in summary["images"]:
        with Image.open(tmp_path / "o" / record["label"]) as label:
            assert label.size == (record["width"], record["height"])
    assert not [p for p in (tmp_path / "o").rglob("*") if is_temporary(p)]


# --------------------------------------------------------------------------- command options

_OPTION_VALUES = ["0", "1", "2", "4", "7", "9", "16", "-1", "-0.0", "0.5", "1.5", "1e-3", "1e309", "-1e309", "nan", "inf",
                  "-inf", "NaN", "abc", "", " 3", "1,2", "1,,2", ",", "8:4:1", "1:1:8", "1:x:2", "0:1:1", "65535", "65536",
                  "99999999999999999999999", "0x10", "1_000", "Softmax", "NotAnOp", "ReduceL2,add"]


def _commands() -> dict:
    from ssprompt.export.cli import export_command
    from ssprompt.runtime.cli import bench_command, run_command
    from ssprompt.train.cli import eval_command, synth_command, train_command
    from ssprompt.train.pretrain import pretrain_command

    return {"ssp-run": (run_command, ["m.onnx", "in", "--out", "o"]), "ssp-bench": (bench_command, ["m.onnx"]),
            "ssp-train": (train_command, ["--data", "d", "--out", "p.pt"]),
            "ssp-eval": (eval_command, ["--prompts", "p.pt", "--data", "d"]), "ssp-synth": (synth_command, ["s"]),
            "ssp-pretrain": (pretrain_command, []), "ssp-export": (export_command, ["--prompts", "p.pt", "--out", "o"])}


def _accept_everywhere(name: str, params: dict) -> None:
    """What runs behind a command's options, fed the parsed values: it must accept what parsing accepted
    (a refusal there would be exit 1 after work began, not exit 2)."""
    from ssprompt.runtime.cli import options_from
    from ssprompt.train.config import ModelConfig, TrainConfig
    from ssprompt.train.methods.coop import COOP
    from ssprompt.train.pretrain import PretrainConfig

    for value in params.values():
        if isinstance(value, float):
            assert np.isfinite(value), f"{name}: a non-finite {value} was accepted"
    for key, value in params.items():
        if isinstance(value, int) and key not in ("mask_threshold",):
            assert value >= 0, f"{name}: a negative {key} {value} was accepted"
    if name in ("ssp-run", "ssp-eval"):
        options_from(dict(params))
    if name == "ssp-run":
        assert params["batch"] >= 1
    if name == "ssp-train":
        ModelConfig(num_prompts=params["num_prompts"])
        COOP.parse_options({"init": "", "context": params["coop_context"]})  # the context's length, where it applies
        TrainConfig(void=params["void"], shots=params["shots"], seed=params["seed"], epochs=params["epochs"],
                    batch_size=params["batch_size"], lr=params["lr"], weight_decay=params["weight_decay"],
                    short_side=params["short_side"])
        np.random.default_rng(params["seed"])
    if name == "ssp-pretrain":
        PretrainConfig(seed=params["seed"], threads=params["threads"], sam_steps=params["sam_steps"],
                       clip_steps=params["clip_steps"])
        np.random.default_rng(params["seed"])
    if name == "ssp-synth":
        np.random.default_rng([params["seed"], 0])
    if name == "ssp-bench":
        assert params["batches"] and min(params["batches"]) >= 1 and params["iters"] >= 1 and params["warmup"] >= 0


def test_fuzz_command_options():
    """Every option that takes a value, of every command, over every awkward value of the list: refused as
    click refuses (exit 2) or accepted by the configs behind it; never another exception."""
    import click

    accepted: dict[str, set[str]] = {value: set() for value in _OPTION_VALUES}  # value -> "command --option"
    for name, (command, required) in _commands().items():
        options = [p for p in command.params if isinstance(p, click.Option) and not p.is_flag
                   and not isinstance(p.type, (click.Choice, click.Path)) and p.type is not click.STRING]
        assert options, name
        for option in options:
            for value in _OPTION_VALUES:
                args = [*required, option.opts[0], str(value)]
                try:
                    context = command.make_context(name, list(args))
                except click.UsageError:  # BadParameter included: click prints it and exits 2
                    continue
                except Exception as err:  # noqa: BLE001 - the finding itself
                    pytest.fail(f"{name} {option.opts[0]} {value!r}: {type(err).__name__} escaped: {err}")
                accepted[value].add(f"{name} {option.opts[0]}")
                try:
                    _accept_everywhere(name, context.params)
                except Exception as err:  # noqa: BLE001
                    pytest.fail(f"{name} {option.opts[0]} {value!r} passed parsing but {type(err).__name__}: {err}")
    never = ["1e309", "-1e309", "nan", "inf", "-inf", "NaN", "abc", "1,,2", "8:4:1", "1:x:2", "0:1:1", "0x10", "NotAnOp",
             "ReduceL2,add"]  # no option takes these: not finite, not numbers, empty list items, unknown op types
    assert {value: accepted[value] for value in never} == {value: set() for value in never}
    assert accepted["-1"] == {"ssp-run --mask-threshold", "ssp-eval --mask-threshold"}  # the one signed option
    op_lists = {"ssp-export --keep-fp32", "ssp-export --keep-float"}  # op types; empty: keep none
    assert accepted[""] == accepted[","] == accepted["Softmax"] == op_lists
    assert accepted["1,2"] == {"ssp-bench --batch"} and accepted["1:1:8"] == {"ssp-export --batch"}  # min:opt:max
    assert len(accepted["1"]) > len(accepted["0"]) > 0  # counts take 1; some take 0 (a seed, a warm-up), not all


# --------------------------------------------------------------------------- ssp-run over bad layouts


def _layout(root: Path, sources: list[Path], rng: np.random.Generator) -> tuple[Path, list[Path], int]:
    """A folder of images with FIFOs, long (up to 251 bytes, some non-ASCII) and clashing names, and an --out
    inside it or equal to it; returns (--out, the inputs to pass, the images ssp-run must segment)."""
    import os

    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    count = 0
    for i in range(int(rng.integers(2, 5))):
        stem = str(rng.choice(["a", "b", "A", "a_1", "\u00e9t\u00e9", "x" * int(rng.integers(200, 248)),
                               "\u00e9" * int(rng.integers(100, 124))]))
        where = photos / ("sub" if rng.integers(2) else "")
        if (where / f"{stem}.png").exists():
            continue
        shutil.copy(sources[i % len(sources)], where / f"{stem}.png")
        count += 1
    for i in range(int(rng.integers(1, 3))):
        os.mkfifo(photos / f"fifo{i}.png")
    out = [photos, photos / "out", photos / "sub" / "out", root / "elsewhere"][int(rng.integers(4))]
    inputs = [photos]
    if rng.integers(2):  # one image named again, directly: a second id and a second label
        inputs.append(next(p for p in sorted(photos.rglob("*.png")) if p.is_file()))
        count += 1
    return out, inputs, count


def test_fuzz_ssp_run_over_fifos_long_names_and_outputs_inside_inputs(exported_onnx, synthetic_root, tmp_path):
    from click.testing import CliRunner

    from ssprompt.runtime.cli import run_command
    from ssprompt.runtime.files import is_temporary

    rng = np.random.default_rng(SEED + 6)
    sources = sorted((synthetic_root / "val" / "images").iterdir())[:3]
    for case in range(8):
        out, inputs, count = _layout(tmp_path / str(case), sources, rng)
        for attempt in range(2):  # the second run must not read the first one's outputs
            result = CliRunner().invoke(run_command, [str(exported_onnx), *map(str, inputs), "--out", str(out),
                                                      "--quiet", "--overlay", "--batch", str(int(rng.integers(1, 4)))])
            assert result.exit_code == 0 and "Traceback" not in result.output, f"case {case}.{attempt}: {result.output}"
            summary = json.loads((out / "summary.json").read_text())
            assert summary["complete"] and len(summary["images"]) == count, f"case {case}.{attempt}"
            assert [r["image_id"] for r in summary["images"]] == list(range(1, count + 1))
            for record in summary["images"]:
                assert len(Path(record["label"]).name.encode()) <= 255 and (out / record["label"]).is_file()
            assert len({r["label"] for r in summary["images"]}) == count
        assert not [p for p in out.rglob("*") if is_temporary(p)]
