"""The benchmark scripts run end to end on the tiny config and write well-formed tables."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = ["--sam", "tiny", "--clip", "tiny", "--prompts", "16"]


def _tables(path: Path) -> list[list[list[str]]]:
    """Every markdown table of a file: rows of cells, the separator row left out."""
    tables, current = [], []
    for line in path.read_text().splitlines() + [""]:
        if line.startswith("|"):
            if not line.startswith("|-"):
                current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def _run(script: str, args: list[str], out: Path) -> str:
    """Run a benchmark script writing `out`; its stdout."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    assert text.startswith("# ") and "Command: `python " in text
    return done.stdout


def _by_column(rows: list[list[str]]) -> list[dict[str, str]]:
    return [dict(zip(rows[0], row)) for row in rows[1:]]


def test_export_fullsize_reports_a_passing_fp32_export_within_the_parity_tolerance(tmp_path):
    out = tmp_path / "result.md"
    _run("export_fullsize.py", TINY + ["--classes", "3", "--precisions", "fp32"], out)
    (rows,) = _tables(out)
    (row,) = _by_column(rows)
    assert (row["precision"], row["layout"], row["parity on"], row["gate"]) == ("fp32", "graph", "CPUExecutionProvider", "pass")
    assert float(row["label agreement"].rstrip("%")) >= 99.0  # FP32 agrees with PyTorch on nearly every pixel
    assert float(row["max abs err"]) < 1e-3 and float(row["mask logit mean abs err"]) <= float(row["max abs err"])
    assert float(row["export s (incl. parity)"]) > 0 and float(row["model.onnx MiB"]) > 1  # the tiny encoders' weights


def test_runtime_fullsize_times_each_graph_at_each_batch(tmp_path):
    out = tmp_path / "result.md"
    _run("runtime_fullsize.py", TINY + ["--classes", "3", "--batch", "1,2", "--warmup", "0", "--iters", "1",
                                        "--graphs", "fp32,fp32-ort-fused"], out)
    (rows,) = _tables(out)
    measured = _by_column(rows)
    assert sorted((row["graph"], row["batch"]) for row in measured) == [
        ("fp32", "1"), ("fp32", "2"), ("fp32-ort-fused", "1"), ("fp32-ort-fused", "2")]
    for row in measured:
        p50, p90, p99 = (float(row[key]) for key in ("p50 ms", "p90 ms", "p99 ms"))
        assert 0 < p50 == p90 == p99  # one timed call: every percentile is that call
        # images/s is the batch over the mean call, which one call makes its p50 (both cells rounded to 0.01)
        assert float(row["images/s"]) == pytest.approx(1000 * int(row["batch"]) / p50, rel=1e-3, abs=0.01)
        assert (row["GPU peak MB"], row["timing"]) == ("n/a", "wall") and float(row["host peak RSS MB"]) > 0


def test_train_efficiency_times_every_variant_and_splits_out_the_encoders(tmp_path):
    out = tmp_path / "result.md"
    _run("train_efficiency.py", TINY + ["--classes", "3", "--batch", "1", "--warmup", "0", "--steps", "1"], out)
    (rows,) = _tables(out)
    by_variant = {row["variant"]: row for row in _by_column(rows)}
    variants = _load_script("train_efficiency").VARIANTS
    assert list(by_variant) == [label for label, _, _ in variants.values()]
    for label, _, in_loop in variants.values():
        row = by_variant[label]
        if in_loop:  # the encoders' share of the step is measured, and is a part of it
            assert 0 < float(row["of which encoders"]) <= float(row["ms / training image"])
        else:
            assert row["of which encoders"] == "n/a (cached)"
        assert 0 <= float(row["step memory MB"]) <= float(row["peak RSS MB"])
    coop = by_variant["CoOp (encoders in the loop, as CoOp trains)"]
    assert coop["time vs CoOp"] == coop["peak memory vs CoOp"] == "+0 %"  # the reference row


def test_train_efficiency_states_ratios_against_coop(tmp_path):
    out = tmp_path / "efficiency.md"
    _run("train_efficiency.py", TINY + ["--classes", "3", "--batch", "1", "--warmup", "0", "--steps", "1",
                                        "--variants", "ssprompt-cached,coop-encoders"], out)
    (rows,) = _tables(out)
    by_variant = {row[0]: dict(zip(rows[0], row)) for row in rows[1:]}
    coop = by_variant["CoOp (encoders in the loop, as CoOp trains)"]
    assert coop["time vs CoOp"] == "+0 %" and coop["of which encoders"] != "n/a (cached)"
    ssprompt = by_variant["SSPrompt, cached encoders"]
    # The ms cells are rounded to whole ms, so the ratio they imply is only known within an interval.
    ours, theirs = float(ssprompt["ms / training image"]), float(coop["ms / training image"])
    low, high = 100 * ((ours - 0.5) / (theirs + 0.5) - 1), 100 * ((ours + 0.5) / max(theirs - 0.5, 1e-9) - 1)
    assert low - 0.5 <= float(ssprompt["time vs CoOp"].split()[0]) <= high + 0.5
    assert (tmp_path / "efficiency.png").read_bytes()[:4] == b"\x89PNG"


def _quality_runs(stdout: str) -> dict[tuple[frozenset, int], str]:
    """quality.py's progress lines, "{settings} k=K seed=S: mIoU X (...)": (settings, K) -> X as the tables print it."""
    import ast
    import re

    runs = {}
    for line in stdout.splitlines():
        found = re.fullmatch(r"(\{.*\}) k=(\d+) seed=0: mIoU (\d+\.\d) \(.*", line)
        if found:
            key = (frozenset(ast.literal_eval(found[1]).items()), int(found[2]))
            assert key not in runs, f"{line}: a setting ran twice"
            runs[key] = found[3]
    return runs


def test_quality_script_writes_method_ablation_and_class_tables(synthetic_root, tmp_path, monkeypatch):
    quality = _load_script("quality")
    out = tmp_path / "quality.md"
    common = ["--epochs", "1", "--optimizer", "adamw", "--lr", "0.02", "--short-side", "0"]
    stdout = _run("quality.py", TINY + ["--data", str(synthetic_root), "--shots", "2,1", *common], out)
    methods, ablations, per_class = _tables(out)
    runs = _quality_runs(stdout)
    # Zero-shot once; CoOp, VSPL, SSPrompt and the five other ablations at each k; the full ablation is SSPrompt's run.
    assert len(runs) == 1 + 3 * 2 + 5 * 2
    assert methods[0] == ["method", "2-shot", "1-shot"]
    assert [row[0] for row in methods[1:]] == ["zero-shot", "CoOp", "VSPL", "SSPrompt"]
    zero_shot = runs[(frozenset(quality.METHOD_RUNS["zero-shot"].items()), 2)]
    assert methods[1][1:] == [zero_shot, zero_shot]  # learns nothing: one run stands for every k
    for row in methods[2:]:  # each row holds the runs of its own settings
        settings = frozenset(quality.METHOD_RUNS[row[0]].items())
        assert row[1:] == [runs[(settings, 2)], runs[(settings, 1)]], row[0]
    assert float(methods[4][1]) > float(methods[1][1])  # SSPrompt's 2-shot run learned beyond zero-shot
    assert len(ablations) == 1 + 6
    for row, (flags, settings) in zip(ablations[1:], quality.ABLATION_RUNS.items()):
        assert row[:4] == ["✓" if flag else "" for flag in flags]
        assert row[4:] == [runs[(frozenset(settings.items()), 2)], runs[(frozenset(settings.items()), 1)]], flags
    # One ablation run again, here, from its settings alone: the script's row is that run's mIoU.
    monkeypatch.setattr(sys, "argv", ["quality.py", *TINY, "--data", str(synthetic_root), *common])
    spatial_only = quality.ABLATION_RUNS[(True, False, False, False)]
    (tmp_path / "again").mkdir()
    summary = quality.train_and_evaluate(quality.parse_args(), spatial_only, 1, 0, tmp_path / "again", str(tmp_path / "cache"))
    assert float(ablations[1][5]) == pytest.approx(100 * summary["after"]["miou"], abs=0.051)
    assert [row[0] for row in per_class[1:]] == ["background", "red disc", "green square", "blue triangle"]
    assert "Instance and panoptic" not in out.read_text()  # plain shapes have no instance maps
    assert all(0 <= float(v) <= 100 for row in methods[1:] for v in row[1:])
    assert (tmp_path / "quality.png").read_bytes()[:4] == b"\x89PNG"


def test_quality_script_adds_ap_and_pq_where_the_data_has_instances(world_root, tmp_path):
    out = tmp_path / "quality.md"
    _run("quality.py", TINY + ["--data", str(world_root), "--methods", "zero-shot,SSPrompt", "--no-ablations",
                               "--shots", "1", "--epochs", "1", "--optimizer", "adamw", "--lr", "0.02", "--short-side", "0"],
         out)
    methods, instances, _ = _tables(out)
    assert "## Instance and panoptic segmentation (paper Table 4)" in out.read_text()
    assert instances[0] == ["method", "AP 1-shot", "PQ 1-shot"]
    assert [row[0] for row in instances[1:]] == ["zero-shot", "SSPrompt"]
    assert all(0 < float(v) <= 100 for row in instances[1:] for v in row[1:])


def test_an_ordering_holds_only_beyond_the_larger_std():
    rows = _load_script("quality").ordering_lines([
        ("a", "b", [0.30, 0.32, 0.34], [0.20, 0.21, 0.22]),  # gap 0.11 > std 0.02
        ("c", "d", [0.30, 0.40, 0.50], [0.30, 0.31, 0.32])], 16)  # gap 0.09 < std 0.10
    assert rows == [["a > b", "16", "+11.0", "2.0", "yes"], ["c > d", "16", "+9.0", "10.0", "no"]]


def test_decoder_cost_finds_the_graph_layout_cheaper_and_equal_to_sams(tmp_path):
    out = tmp_path / "decoder.md"
    # Batch 2: a batch axis fixed at the traced 1 failed here, as it did on the GPU at batch 8.
    _run("decoder_cost.py", ["--prompts", "4", "--chunk", "3", "--grid", "16", "--precisions", "fp32", "--iters", "1",
                             "--batch", "2"], out)
    (rows,) = _tables(out)
    by_layout = {row[0]: dict(zip(rows[0], row)) for row in rows[1:]}
    assert set(by_layout) == {"sam", "graph"}
    assert all(row["batch"] == "2" for row in by_layout.values())
    # SAM's decoder computes every later attention's P x I projections per prompt; this layout does not (0.63 of
    # SAM's FLOPs on this grid; the layout before the re-association was at 0.84).
    assert float(by_layout["graph"]["GFLOP per image"]) < 0.7 * float(by_layout["sam"]["GFLOP per image"])
    assert all(float(row["max abs mask logit error"]) < 1e-4 for row in by_layout.values())


OTHER_REGION = "classifier, semantic map, resize, argmax"


def test_gpu_profile_splits_node_time_by_graph_region(exported_onnx, tmp_path):
    out = tmp_path / "profile.md"
    _run("gpu_profile.py", [str(exported_onnx), "--provider", "cpu", "--batch", "1", "--iters", "1"], out)
    regions, ops, pairs = _tables(out)
    assert regions[0] == ["graph region", "ms per call", "%"] and ops[0] == ["op type", "ms per call", "%"]
    assert pairs[0] == ["graph region", "op type", "ms per call", "%"]
    # Every node lands in one region by the exporter's names; the encoders and the decoder each have their own.
    assert {row[0] for row in regions[1:]} == {"SAM image encoder", "dense CLIP features", "mask decoder",
                                               "classifier, semantic map, resize, argmax"}
    assert abs(sum(float(row[2]) for row in regions[1:]) - 100) < 0.5
    assert "MatMul" in {row[0] for row in ops[1:]}
    # The crossing splits the same node time: the encoder's pairs never exceed the encoder's row.
    encoder = next(float(row[1]) for row in regions[1:] if row[0] == "SAM image encoder")
    encoder_pairs = [float(row[2]) for row in pairs[1:] if row[0] == "SAM image encoder"]
    assert encoder_pairs and sum(encoder_pairs) <= encoder + 0.05
    assert {row[0] for row in pairs[1:]} <= {row[0] for row in regions[1:]}
    # ONNX Runtime's fused Gelu nodes (`Gelu_token_N`) belong to the encoders' MLPs, not to the glue after the decoder.
    gelu = {row[0] for row in pairs[1:] if row[1] == "Gelu"}
    assert gelu and OTHER_REGION not in gelu


def test_gpu_ablation_measures_the_graphs_it_finds_and_lists_the_rest(tmp_path):
    work = tmp_path / "work"
    _run("export_fullsize.py", TINY + ["--classes", "3", "--precisions", "fp32", "--work", str(work)], tmp_path / "export.md")
    out = tmp_path / "ablation.md"
    _run("gpu_ablation.py", ["--work", str(work), "--provider", "cpu", "--warmup", "0", "--iters", "1"], out)
    (rows,) = _tables(out)
    assert [row[:2] for row in rows[1:]] == [["the default, FP32 graph", "fp32"]]
    parity = json.loads((work / "parity-fp32.json").read_text())["label_agreement"]
    assert rows[1][-1] == f"{100 * parity:.3f}"
    assert out.read_text().count("was not exported)") == 7


def test_fp16_ops_measures_every_kept_list_against_the_shipped_one(tmp_path):
    from ssprompt.export.fp16 import KEEP_FP32

    out = tmp_path / "fp16_ops.md"
    _run("fp16_ops.py", TINY + ["--classes", "3", "--images", "2", "--provider", "cpu"], out)
    (rows,) = _tables(out)
    by_variant = {row[0]: dict(zip(rows[0], row)) for row in rows[1:]}
    assert by_variant["shipped (KEEP_FP32)"]["kept in FP32"] == ", ".join(KEEP_FP32)
    assert by_variant["everything FP16"]["kept in FP32"] == "none"
    # Every op type kept in FP32 needs Casts around it: the longer the list, the more of them.
    casts = {name: int(row["Cast nodes"]) for name, row in by_variant.items()}
    assert casts["everything FP16"] <= casts["shipped (KEEP_FP32)"] < casts["previous list"]
    assert all(row["passes the FP16 gate"] in ("yes", "no") for row in by_variant.values())


def test_a_pipe_inside_a_table_cell_is_escaped():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from common import table_lines
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    header, separator, row = table_lines(["name", "|err| max"], [["a", "x|y"]])
    assert header == r"| name | \|err\| max |" and row == r"| a | x\|y |"
    assert separator.count("|") == 3  # two columns, as the header's unescaped pipes say


def _load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_flops_by_region_takes_each_regions_outermost_module_and_leaves_the_rest_to_the_glue():
    counts = {"Global": {"mm": 100}, "ExportGraph": {"mm": 100},  # a module's count holds its children's
              "ExportGraph.model.sam.image_encoder": {"mm": 50, "conv": 10},
              "ExportGraph.model.sam.image_encoder.blocks.0": {"mm": 5},
              "ExportGraph.model.clip_dense": {"mm": 10}, "ExportGraph.decoder": {"mm": 25},
              "ExportGraph.decoder.hyper": {"mm": 3}}
    by_region = _load_script("flops").flops_by_region(counts)
    assert by_region == {"SAM image encoder": 60, "dense CLIP features": 10, "mask decoder": 25,
                         "classifier, semantic map, resize, argmax": 5}


def test_flops_script_finds_the_layouts_differ_in_the_decoder_only(tmp_path):
    out = tmp_path / "flops.md"
    _run("flops.py", [*TINY, "--classes", "3"], out)
    (rows,) = _tables(out)
    gflop = {(row[0], row[1]): float(row[2]) for row in rows[1:]}
    for layout in ("graph", "sam"):
        regions = [value for (name, region), value in gflop.items() if name == layout and region != "all"]
        assert len(regions) == 4 and sum(regions) == pytest.approx(gflop[(layout, "all")], abs=0.02)
    assert gflop[("graph", "dense CLIP features")] == gflop[("sam", "dense CLIP features")] > 0
    # The graph's decoder skips SAM's per-prompt copies and projections of the image embedding.
    assert gflop[("graph", "mask decoder")] < 0.7 * gflop[("sam", "mask decoder")]



def _optimized_costs(nodes, inputs, tmp_path, batch: int, initializers=()):
    """roofline.node_costs of a small graph with one output, `y`, optimised by ONNX Runtime at `batch`."""
    import onnx
    from onnx import TensorProto, helper

    roofline = _load_script("roofline")
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", inputs, [output], initializer=list(initializers))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "g.onnx")
    return roofline.node_costs(roofline.optimized_graph(tmp_path / "g.onnx", batch, tmp_path / "opt.onnx"))


@pytest.mark.parametrize("perm", [(0, 1, 2, 3), (0, 1, 3, 2), (1, 2, 0, 3), (1, 2, 3, 0)])
def test_roofline_counts_a_fused_transposed_matmul_by_its_true_inner_size(perm, tmp_path):
    from onnx import TensorProto, helper

    product = (2, 3, 5, 7)  # the transposed A: batch (2, 3), M = 5, K = 7
    a = tuple(product[perm.index(axis)] for axis in range(4))  # stored so that Transpose(perm) gives `product`
    nodes = [helper.make_node("Transpose", ["a"], ["at"], perm=list(perm), name="/decoder/t"),
             helper.make_node("MatMul", ["at", "b"], ["y"], name="/decoder/mm")]
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, a),
              helper.make_tensor_value_info("b", TensorProto.FLOAT, (2, 3, 7, 4))]
    (cost,) = _optimized_costs(nodes, inputs, tmp_path, 1)
    # ONNX Runtime folds each of these transposes into one FusedMatMul (transA, transBatchA or both).
    assert cost.op == "FusedMatMul" and cost.region == "mask decoder"
    assert cost.flops == 2 * (2 * 3 * 5 * 4) * 7
    assert cost.bytes == 4 * (2 * 3 * 5 * 7 + 2 * 3 * 7 * 4 + 2 * 3 * 5 * 4)


def test_roofline_counts_bytes_at_the_batch_asked_for_and_reshapes_free(tmp_path):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from ssprompt.runtime.contract import BATCH_AXIS

    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="/image_encoder/mm"),
             helper.make_node("Reshape", ["m", "shape"], ["r"], name="/image_encoder/reshape"),
             helper.make_node("Softmax", ["r"], ["y"], axis=-1, name="/clip_dense/softmax")]
    constants = [numpy_helper.from_array(np.ones((32, 16), np.float32), "w"),
                 numpy_helper.from_array(np.array([0, 16, 64], np.int64), "shape")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, (BATCH_AXIS, 64, 32))
    by_op = {cost.op: cost for cost in _optimized_costs(nodes, [x], tmp_path, 4, constants)}
    assert by_op["MatMul"].flops == 2 * 4 * 64 * 16 * 32 and by_op["MatMul"].region == "SAM image encoder"
    assert by_op["MatMul"].bytes == 4 * (4 * 64 * 32 + 32 * 16 + 4 * 64 * 16)
    assert by_op["Reshape"].bytes == 0
    assert by_op["Softmax"].bytes == 4 * 2 * (4 * 16 * 64) and by_op["Softmax"].region == "dense CLIP features"


def test_roofline_script_splits_the_floor_by_region_and_never_below_the_flop_floor(exported_onnx, tmp_path):
    out = tmp_path / "roofline.md"
    _run("roofline.py", [str(exported_onnx), "--batch", "1,2", "--gpu", "h100", "--float-bytes", "2"], out)
    headline, regions, ops, heaviest = _tables(out)
    assert [row[1] for row in headline[1:]] == ["1", "2"]
    for row in headline[1:]:
        assert float(row[headline[0].index("node floor ms")]) >= float(row[headline[0].index("FLOP floor ms")]) > 0
    total = dict(zip(headline[0], headline[2]))  # the batch broken down below
    assert {row[0] for row in regions[1:]} == {"SAM image encoder", "dense CLIP features", "mask decoder",
                                               OTHER_REGION}
    gflop = [float(row[regions[0].index("GFLOP per image")]) for row in regions[1:]]
    assert sum(gflop) == pytest.approx(float(total["GFLOP per image"]), abs=0.2) and min(gflop) >= 0
    assert abs(sum(float(row[regions[0].index("% of floor")]) for row in regions[1:]) - 100) < 0.5
    assert len(heaviest) == 1 + 15 and (tmp_path / "roofline.png").read_bytes()[:4] == b"\x89PNG"


def test_flops_and_roofline_count_the_encoders_alike(exported_onnx, tmp_path):
    """Two counters, torch's on the traced module and roofline.py's on ONNX Runtime's nodes, must agree where
    the prompts do not matter (the demo's graph and this random model share the tiny encoders)."""
    from collections import defaultdict

    model, _ = _load_script("common").random_fullsize_model("tiny", "tiny", 16, 3)
    by_module = _load_script("flops").count_graph(model, "graph")
    roofline = _load_script("roofline")
    by_node = defaultdict(float)
    for cost in roofline.node_costs(roofline.optimized_graph(exported_onnx, 1, tmp_path / "opt.onnx")):
        by_node[cost.region] += cost.flops
    for region in ("SAM image encoder", "dense CLIP features"):
        assert by_node[region] == pytest.approx(by_module[region], rel=0.01), region


def test_gpu_profile_prices_each_region_against_the_graphs_floor(exported_onnx, tmp_path):
    profile, floor = tmp_path / "profile.md", tmp_path / "roofline.md"
    _run("gpu_profile.py", [str(exported_onnx), "--provider", "cpu", "--batch", "1", "--iters", "1", "--ceilings", "h100"],
         profile)
    _run("roofline.py", [str(exported_onnx), "--batch", "1", "--gpu", "h100"], floor)
    regions, ops, _ = _tables(profile)
    assert regions[0][-2:] == ops[0][-2:] == ["floor ms", "time / floor"]
    # The profiled session's graph is the one roofline.py prices: the regions' floors add up to its node floor.
    headline = _tables(floor)[0]
    graph_floor = float(headline[1][headline[0].index("node floor ms")])
    assert sum(float(row[3]) for row in regions[1:]) == pytest.approx(graph_floor, rel=0.02)
    # A 2-core CPU is far slower than an H100's rates: every region takes many times its floor.
    assert all(float(row[4]) > 10 for row in regions[1:])


def test_int8_ops_measures_each_quantized_op_type_alone_and_the_shipped_choice(demo_run, tmp_path):
    import shutil

    (tmp_path / "work").mkdir()
    shutil.copy(demo_run[1], tmp_path / "work" / "pack.pt")
    out = tmp_path / "int8_ops.md"
    _run("int8_ops.py", ["--work", str(tmp_path / "work"), "--calib-images", "2", "--images", "2"], out)
    (rows,) = _tables(out)
    names = [row[0] for row in rows[1:]]
    assert names[0] == "everything quantized" and names[-1] == "shipped (all but KEEP_FLOAT)"
    assert {"only MatMul", "only Conv"} <= set(names)
    alone = [row for row in rows[1:] if row[0].startswith("only ")]
    assert all(row[1] == row[0].removeprefix("only ") and 0 <= float(row[3]) <= 100 for row in alone)
    assert int(rows[1][2]) > max(int(row[2]) for row in alone)  # quantizing everything adds the most Q/DQ nodes


def test_edge_cpu_compares_int8_and_fp16_with_fp32_on_the_world_task(demo_run, tmp_path):
    import shutil

    (tmp_path / "work" / "tiny").mkdir(parents=True)
    shutil.copy(demo_run[1], tmp_path / "work" / "tiny" / "pack.pt")
    out = tmp_path / "edge.md"
    _run("edge_cpu.py", ["--work", str(tmp_path / "work"), "--models", "tiny", "--calib-images", "2", "--warmup", "0",
                         "--iters", "1"], out)
    (rows,) = _tables(out)
    by_graph = {row[1]: dict(zip(rows[0], row)) for row in rows[1:]}
    assert list(by_graph) == ["fp32", "fp16", "int8"]
    assert by_graph["fp32"]["file vs FP32"] == "100 %" and by_graph["fp32"]["mIoU vs FP32 (points)"] == "+0.00"
    assert float(by_graph["int8"]["file MiB"]) < 0.5 * float(by_graph["fp32"]["file MiB"])
    assert 0 < float(by_graph["int8"]["world val mIoU %"]) <= 100
