"""preload.py: the --portrait-* flags on a real argparse parser, loaded the way the WebUI loads it."""

from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

import pytest
from webui_double import REPO_ROOT


def load_preload_module():
    # As modules/script_loading.load_module: named after the file, not put in sys.modules.
    spec = importlib.util.spec_from_file_location("preload.py", REPO_ROOT / "preload.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def parser():
    webui_parser = argparse.ArgumentParser(prog="webui.py")
    webui_parser.add_argument("--skip-install", action="store_true")  # one of the WebUI's own flags
    load_preload_module().preload(webui_parser)
    return webui_parser


def test_defaults_when_no_flag_is_given(parser):
    options = parser.parse_args([])
    assert options.portrait_models_dir is None
    assert options.portrait_offline is False
    assert options.portrait_loglevel == "INFO"


def test_flags_parse_beside_the_webuis_own(parser, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = parser.parse_args(["--skip-install", "--portrait-models-dir", "models/portrait",
                                 "--portrait-offline", "--portrait-loglevel", "WARNING"])
    assert options.skip_install is True
    assert options.portrait_models_dir == str(tmp_path / "models" / "portrait")
    assert options.portrait_offline is True
    assert options.portrait_loglevel == "WARNING"


def test_models_dir_expands_the_home_folder(parser):
    options = parser.parse_args(["--portrait-models-dir", "~/portrait-models"])
    assert options.portrait_models_dir == str(Path.home() / "portrait-models")


def test_log_level_is_case_insensitive(parser):
    assert parser.parse_args(["--portrait-loglevel", "debug"]).portrait_loglevel == "DEBUG"


def test_unknown_log_level_stops_the_webui_with_the_choices_named(parser, capsys):
    with pytest.raises(SystemExit):
        parser.parse_args(["--portrait-loglevel", "LOUD"])
    error = capsys.readouterr().err
    assert "--portrait-loglevel" in error
    assert "DEBUG" in error


def test_help_lists_every_flag(parser):
    help_text = parser.format_help()
    for flag in ("--portrait-models-dir", "--portrait-offline", "--portrait-loglevel"):
        assert flag in help_text


def test_every_accepted_level_is_one_the_portrait_logger_takes(parser):
    from portrait_core import log

    logger = logging.getLogger(log.LOGGER_NAME)
    saved = (logger.level, list(logger.handlers), logger.propagate)
    try:
        for level in load_preload_module().LOG_LEVELS:
            chosen = parser.parse_args(["--portrait-loglevel", level.lower()]).portrait_loglevel
            assert log.configure_logging(chosen).level == logging.getLevelName(level)
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]
