"""GraphMetadata: what encode writes, decode reads back; a damaged field is named in one line. The I/O table:
what a graph declares is checked against it by name."""

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from ssprompt.runtime.contract import (INPUT, LABELS, METADATA_PREFIX, ContractError, EngineFacts, GraphMetadata,
                                       MetadataError, Normalization, check_io_specs)

META = GraphMetadata(
    class_names=["road", "car"], palette=[[128, 64, 128], [0, 0, 142]], input_size=256, mask_size=64, num_prompts=16,
    pad_value=[124, 116, 104], normalization=Normalization([123.7, 116.3, 103.5], [58.4, 57.1, 57.4],
                                                             [0.48, 0.46, 0.41], [0.27, 0.26, 0.28], 224),
    pack_sha256="ab12", backbones={"sam": "tiny", "clip": "tiny"}, precision="fp16", ssprompt_version="0.1.0",
    engine=EngineFacts("10.8.0", "NVIDIA H200", [1, 4, 8], "cd34"), contract_version=2, thing_classes=[1],
)


def test_encode_then_decode_gives_the_same_metadata_under_the_prefix():
    props = META.encode()
    assert all(key.startswith(METADATA_PREFIX) for key in props)
    assert json.loads(props[METADATA_PREFIX + "engine"])["batch"] == [1, 4, 8]
    assert GraphMetadata.decode(props) == META


def test_a_graph_without_engine_facts_writes_no_engine_entry():
    props = replace(META, engine=None).encode()
    assert METADATA_PREFIX + "engine" not in props and GraphMetadata.decode(props).engine is None


def test_props_without_our_prefix_decode_to_none():
    assert GraphMetadata.decode({"producer": "someone else"}) is None


@pytest.mark.parametrize("field, value, message", [
    ("normalization", "x", "metadata normalization is not an object"),
    ("normalization", {**json.loads(META.encode()[METADATA_PREFIX + "normalization"]), "clip_input_size": "224"},
     "metadata normalization.clip_input_size is not a positive integer"),
    ("engine", {"tensorrt_version": "10"}, "metadata engine has other fields than this ssprompt reads"),
    ("engine", {**json.loads(META.encode()[METADATA_PREFIX + "engine"]), "batch": [1, 8]},
     "metadata engine.batch is not three positive integers (min, opt, max)"),
    ("backbones", ["sam"], "metadata backbones is not an object"),
    ("num_prompts", True, "metadata num_prompts is not a positive integer"),
    ("precision", "int4", "metadata precision is not one of fp32, fp16, int8"),
    ("calibration", "abc123", "metadata calibration is not an object"),
    ("thing_classes", [2], "metadata thing_classes is not a list of class indices in 0..1"),
    ("contract_version", 0, "metadata contract_version is not a positive integer"),
])
def test_a_damaged_field_is_refused_by_name(field, value, message):
    props = {**META.encode(), METADATA_PREFIX + field: json.dumps(value)}
    with pytest.raises(MetadataError) as raised:
        GraphMetadata.decode(props)
    assert str(raised.value) == message


def test_a_missing_field_is_named():
    props = META.encode()
    del props[METADATA_PREFIX + "mask_size"]
    with pytest.raises(MetadataError, match=r"\(mask_size\)"):
        GraphMetadata.decode(props)


def test_a_graph_from_before_instances_reads_as_contract_1_without_things():
    props = META.encode()
    del props[METADATA_PREFIX + "contract_version"], props[METADATA_PREFIX + "thing_classes"]
    meta = GraphMetadata.decode(props)
    assert (meta.contract_version, meta.thing_classes, meta.has_instances) == (1, [], False)
    assert GraphMetadata.decode(META.encode()).has_instances


def _declared(name: str, dtype: str, *shape) -> SimpleNamespace:
    """A tensor as a runner describes it: name, dtype, shape with the batch axis named."""
    return SimpleNamespace(name=name, dtype=np.dtype(dtype), shape=("batch", *shape))


@pytest.mark.parametrize("inputs, message", [
    ([_declared(INPUT, "float32", 256, 256, 3)],
     "input images is float32 (B, 256, 256, 3); the contract (and the metadata) say uint8 (B, 256, 256, 3)"),
    ([_declared(INPUT, "uint8", 512, 512, 3)],
     "input images is uint8 (B, 512, 512, 3); the contract (and the metadata) say uint8 (B, 256, 256, 3)"),
    ([_declared(INPUT, "uint8", 256, 256)],
     "input images is uint8 (B, 256, 256); the contract (and the metadata) say uint8 (B, 256, 256, 3)"),
    ([_declared("pixels", "uint8", 256, 256, 3)], "inputs are pixels; the contract says images"),
])
def test_a_graph_declaring_another_input_than_the_table_is_refused_by_name(inputs, message):
    labels = [_declared(LABELS, "int32", 256, 256)]
    check_io_specs([_declared(INPUT, "uint8", 256, 256, 3)], labels, META)  # the table's own input passes
    with pytest.raises(ContractError) as raised:
        check_io_specs(inputs, labels, META)
    assert str(raised.value) == message
