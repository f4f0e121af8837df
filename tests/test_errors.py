"""One error base: every error class of the project derives from SSPromptError, and every command line reports
one (and an OSError) as one line with exit status 1, while any other exception keeps its traceback."""

from __future__ import annotations

import sys
import types

import pytest
from click.testing import CliRunner

from ssprompt.export.pipeline import ExportError
from ssprompt.runtime.contract import ContractError, MetadataError
from ssprompt.runtime.errors import ModelError, OptionError, SSPromptError
from ssprompt.runtime.files import LockedError, WriteError
from ssprompt.runtime.images import ImageError
from ssprompt.runtime.serve import RequestError
from ssprompt.train.backbones import BackboneError
from ssprompt.train.data.folder import DataError
from ssprompt.train.pack import PackError

# Each error class, with the builtin base its callers catch (None: the project base alone).
ERROR_CLASSES = [
    (OptionError, ValueError), (ModelError, RuntimeError), (MetadataError, ValueError), (ContractError, ValueError),
    (ImageError, ValueError), (WriteError, OSError), (LockedError, OSError), (RequestError, None),
    (ExportError, RuntimeError), (PackError, ValueError), (DataError, ValueError), (BackboneError, RuntimeError),
]


@pytest.mark.parametrize("error, builtin", ERROR_CLASSES, ids=[e.__name__ for e, _ in ERROR_CLASSES])
def test_every_error_class_derives_from_the_one_base_and_keeps_its_builtin_one(error, builtin):
    assert issubclass(error, SSPromptError)
    if builtin is not None:
        assert issubclass(error, builtin)


def _make(error: type[Exception], message: str) -> Exception:
    """An error of class `error` whose message is `message` (a request error carries its HTTP status, a write error
    its errno)."""
    if error is RequestError:
        return error(400, message)
    return error(28, message) if issubclass(error, WriteError) else error(message)


# Each command: its click command, arguments that pass parsing, and the function behind it that is made to raise.
COMMANDS = {
    "ssp-train": ("ssprompt.train.cli:train_command", ["--data", "{tmp}", "--out", "{tmp}/p.pt"],
                  "ssprompt.train.pipeline:train_pack"),
    "ssp-eval": ("ssprompt.train.cli:eval_command", ["--prompts", "{tmp}/p.pt", "--data", "{tmp}"],
                 "ssprompt.train.pipeline:evaluate_pack"),
    "ssp-synth": ("ssprompt.train.cli:synth_command", ["{tmp}/data"], "ssprompt.train.synthetic:make_synthetic"),
    "ssp-demo": ("ssprompt.train.demo:demo_command", ["--out", "{tmp}/demo"], "ssprompt.train.world:make_world"),
    "ssp-pretrain": ("ssprompt.train.pretrain:pretrain_command", ["--out", "{tmp}/w"], "ssprompt.train.pretrain:pretrain"),
    "ssp-export": ("ssprompt.export.cli:export_command", ["--prompts", "{tmp}/p.pt", "--out", "{tmp}/e"],
                   "ssprompt.export.pipeline:export_pack"),
    "ssp-run": ("ssprompt.runtime.cli:run_command", ["{tmp}/m.onnx", "{tmp}", "--out", "{tmp}/o"],
                "ssprompt.runtime.run:segment_files"),
    "ssp-bench": ("ssprompt.runtime.cli:bench_command", ["{tmp}/m.onnx"], "ssprompt.runtime.bench:benchmark"),
    "ssp-serve": ("ssprompt.runtime.cli:serve_command", ["{tmp}/m.onnx"], "ssprompt.runtime.runner:open_runner"),
}


def _load(name: str):
    module, attribute = name.split(":")
    __import__(module)
    return sys.modules[module], attribute


def _invoke(command: str, raised: BaseException, monkeypatch, tmp_path):
    target, arguments, behind = COMMANDS[command]
    module, attribute = _load(behind)

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(module, attribute, fail)
    cli, name = _load(target)
    return CliRunner().invoke(getattr(cli, name), [a.format(tmp=tmp_path) for a in arguments])


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("error", [ImageError, ExportError, LockedError])
def test_every_command_reports_a_project_error_as_one_line_and_exit_1(command, error, monkeypatch, tmp_path):
    result = _invoke(command, _make(error, "a.pt: not a pack\n(the second line)"), monkeypatch, tmp_path)
    assert (result.exit_code, result.output.splitlines()[-1]) == (1, "Error: a.pt: not a pack (the second line)")
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("command", ["ssp-train", "ssp-export", "ssp-run"])
def test_an_os_error_is_one_line_too(command, monkeypatch, tmp_path):
    result = _invoke(command, FileNotFoundError(2, "No such file or directory", "a.pt"), monkeypatch, tmp_path)
    assert (result.exit_code, result.output.splitlines()[-1]) == (1, "Error: [Errno 2] No such file or directory: 'a.pt'")


@pytest.mark.parametrize("command", ["ssp-train", "ssp-export", "ssp-run", "ssp-bench"])
@pytest.mark.parametrize("error", [ValueError, RuntimeError, KeyError])
def test_an_error_that_is_not_the_projects_keeps_its_traceback(command, error, monkeypatch, tmp_path):
    raised = error("a bug")
    result = _invoke(command, raised, monkeypatch, tmp_path)
    assert result.exception is raised and "Error:" not in result.output


def test_the_sidecar_completer_reports_a_project_error_as_one_line_and_exit_1(monkeypatch, tmp_path, capsys):
    from ssprompt.runtime import sidecar

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.0"))

    def fail(*args, **kwargs):
        raise ModelError("model.plan: no engine here;\nrun trtexec first")

    monkeypatch.setattr(sidecar, "complete_sidecar", fail)
    assert sidecar.main([str(tmp_path / "model.plan"), str(tmp_path / "model.onnx")]) == 1
    assert capsys.readouterr().err == "model.plan: no engine here; run trtexec first\n"
