"""One error base: every distst error derives from DiststError, has an exit code, and the CLI prints it as one
line on stderr and exits with that code."""

from __future__ import annotations

import argparse

import pytest

from distst import cli
from distst.config import ConfigError
from distst.errors import DataError, DiststError, UserError
from distst.export.onnx_export import ExportError
from distst.images import ImageError
from distst.reports import ReportError
from distst.rundir import RunDirBusy
from distst.stylize import OutputError
from distst.train.checkpoint import CheckpointError
from distst.train.divergence import TrainingDiverged
from distst.weights import WeightsError

ERRORS = (UserError, ConfigError, DataError, ImageError, WeightsError, CheckpointError, TrainingDiverged,
          RunDirBusy, ExportError, ReportError, OutputError)


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_error_is_a_distst_error_with_an_exit_code(error: type[Exception]) -> None:
    assert issubclass(error, DiststError)
    assert isinstance(error.exit_code, int) and error.exit_code != 0
    assert cli.is_user_error(error.__new__(error))


def test_cli_user_error_is_the_errors_module_one() -> None:
    assert cli.UserError is UserError


class _Custom(DiststError):
    exit_code = 3


def test_cli_prints_one_line_and_exits_with_the_errors_code(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    def failing(_args: argparse.Namespace) -> int:
        raise _Custom("the input is wrong")

    real_parse = cli.parse

    def parse(parser: argparse.ArgumentParser, argv: object) -> argparse.Namespace:
        args = real_parse(parser, argv)
        args.func = failing
        return args

    monkeypatch.setattr(cli, "parse", parse)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.main(["models"]) == 3
    err = capsys.readouterr().err
    assert err == "distst models: error: the input is wrong\n"
