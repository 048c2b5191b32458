"""The plugin API: loading from plugins/ files, entry points and modules; hook calls; failure containment.

Plugins are real Python files written to tmp_path and loaded through the same code the pipeline uses.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rtsmlm.acquisition.simulated import LASER_DEVICE, LASER_PROPERTY, SimulatedCamera
from rtsmlm.core.config import from_dict
from rtsmlm.core.locs import LOC_DTYPE, LocalizationStream
from rtsmlm.engine.plugins import PluginError, PluginHost, RunInfo, load_plugin_class

RECORDER = '''
from rtsmlm.engine.plugins import RunInfo

class Recorder:
    """Records every hook call in a shared list so the test sees the order."""
    events = []

    def __init__(self, config):
        self.config = dict(config)

    def on_start(self, run: RunInfo):
        Recorder.events.append(("start", self.config.get("tag"), run.run_id))
        run.control.set_property("ActivationLaser", "Power", self.config.get("power", 1.0))

    def on_localizations(self, batch):
        Recorder.events.append(("locs", self.config.get("tag"), batch.seq, len(batch.locs)))

    def on_stats(self, stats):
        Recorder.events.append(("stats", self.config.get("tag"), stats["n"]))

    def on_stop(self, summary):
        Recorder.events.append(("stop", self.config.get("tag"), summary["frames"]))
'''

FAILING = '''
class Failing:
    def __init__(self, config):
        self.fail_at = config["fail_at"]
        self.seen = 0

    def on_localizations(self, batch):
        self.seen += 1
        if self.seen == self.fail_at:
            raise ZeroDivisionError("controller blew up")

    def on_stop(self, summary):
        raise AssertionError("a disabled plugin must not be called again")
'''


def write_plugin(folder: Path, name: str, source: str) -> Path:
    plugins = folder / "plugins"
    plugins.mkdir(exist_ok=True)
    path = plugins / f"{name}.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def small_run(tmp_path: Path) -> tuple[RunInfo, SimulatedCamera]:
    cfg = from_dict({"sim": {"size": 16, "frames": 8}})
    cam = SimulatedCamera(cfg)
    return RunInfo("run-1", control=cam.control, output_dir=tmp_path / "out", exposure_ms=10.0), cam


def batches(n: int) -> list:
    stream = LocalizationStream()
    for i in range(n):
        stream.append(i, i, np.zeros(i + 1, LOC_DTYPE))
    return stream.batches_since(0)


def test_config_tables_load_plugin_files_and_hooks_run_in_order(tmp_path):
    write_plugin(tmp_path, "recorder", RECORDER)
    cfg = from_dict({"plugins": {
        "recorder": {"tag": "a", "power": 2.5},
        "second": {"module": "recorder", "tag": "b"},
        "off": {"module": "recorder", "enabled": False},
    }})
    host = PluginHost.from_config(cfg, config_dir=tmp_path)
    assert host.names == ["recorder", "second"]
    rec = host.instance("recorder")
    assert rec.config == {"tag": "a", "power": 2.5}  # reserved keys are the loader's, not the plugin's
    rec.events.clear()
    run, cam = small_run(tmp_path)
    host.start(run)
    for b in batches(2):
        host.localizations(b)
    host.stats({"n": 7})
    report = host.stop({"frames": 2})
    assert rec.events == [
        ("start", "a", "run-1"), ("start", "b", "run-1"),
        ("locs", "a", 0, 1), ("locs", "b", 0, 1), ("locs", "a", 1, 2), ("locs", "b", 1, 2),
        ("stats", "a", 7), ("stats", "b", 7), ("stop", "a", 2), ("stop", "b", 2),
    ]
    # Plugins act on the microscope through the run's control handle (the last start wins: b's default).
    assert cam.control.get_property(LASER_DEVICE, LASER_PROPERTY) == 1.0
    assert report["recorder"]["active"] and report["recorder"]["calls"] == 5
    assert report["recorder"]["origin"].endswith("recorder.py")


def test_a_raising_plugin_is_disabled_with_a_traceback_and_the_others_continue(tmp_path, caplog):
    write_plugin(tmp_path, "recorder", RECORDER)
    write_plugin(tmp_path, "failing", FAILING)
    host = PluginHost.from_config({"failing": {"fail_at": 2}, "recorder": {"tag": "r"}}, config_dir=tmp_path)
    rec = host.instance("recorder")
    rec.events.clear()
    run, _ = small_run(tmp_path)
    with caplog.at_level(logging.ERROR, logger="rtsmlm.engine.plugins"):
        host.start(run)
        for b in batches(4):
            host.localizations(b)
        report = host.stop({"frames": 4})
    assert host.active == ["recorder"]
    assert [e[2] for e in rec.events if e[0] == "locs"] == [0, 1, 2, 3]  # the healthy one saw every batch
    assert host.instance("failing").seen == 2  # not called after it raised
    assert report["failing"]["active"] is False
    assert "ZeroDivisionError: controller blew up" in report["failing"]["error"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "plugin failing raised in on_localizations" in logged and "Traceback" in logged


def test_class_selection_by_key_by_PLUGIN_and_ambiguity(tmp_path):
    write_plugin(tmp_path, "two", '''
        class A:
            def on_stop(self, summary): pass
        class B:
            def on_stop(self, summary): pass
    ''')
    write_plugin(tmp_path, "declared", '''
        class Helper:
            def on_stop(self, summary): pass
        class Main:
            def on_stop(self, summary): pass
        PLUGIN = Main
    ''')
    dirs = [tmp_path / "plugins"]
    cls, _ = load_plugin_class("x", {"module": "two", "class": "B"}, search_dirs=dirs)
    assert cls.__name__ == "B"
    cls, _ = load_plugin_class("declared", {}, search_dirs=dirs)
    assert cls.__name__ == "Main"
    with pytest.raises(PluginError, match=r"\[plugins.two\].*2 plugin classes \(A, B\)"):
        load_plugin_class("two", {}, search_dirs=dirs)
    with pytest.raises(PluginError, match="class 'C' is not defined"):
        load_plugin_class("two", {"class": "C"}, search_dirs=dirs)


def test_module_may_be_a_file_path_relative_to_the_config(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "mine.py").write_text(RECORDER, encoding="utf-8")
    host = PluginHost.from_config({"custom": {"module": "elsewhere/mine.py", "tag": "p"}}, config_dir=tmp_path)
    assert type(host.instance("custom")).__name__ == "Recorder"


def test_entry_points_of_the_rtsmlm_plugins_group_are_loaded_when_named(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "epdemo_pkg").mkdir(parents=True)
    (site / "epdemo_pkg" / "__init__.py").write_text(
        "class Counter:\n"
        "    def __init__(self, config): self.n = 0; self.config = config\n"
        "    def on_localizations(self, batch): self.n += len(batch.locs)\n", encoding="utf-8")
    dist = site / "epdemo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: epdemo\nVersion: 0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text("[rtsmlm.plugins]\ncounter = epdemo_pkg:Counter\n",
                                           encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    host = PluginHost.from_config({"counter": {"limit": 3}}, search_dirs=[tmp_path / "none"])
    counter = host.instance("counter")
    for b in batches(3):
        host.localizations(b)
    assert counter.n == 1 + 2 + 3 and counter.config == {"limit": 3}
    assert host.report()["counter"]["origin"] == "entry point epdemo_pkg:Counter"


def test_configuration_errors_name_the_table(tmp_path):
    write_plugin(tmp_path, "broken_import", "import no_such_module_for_rtsmlm\n")
    write_plugin(tmp_path, "bad_init", '''
        class P:
            def __init__(self, config):
                raise ValueError(f"'gain' must be positive, got {config['gain']}")
            def on_stop(self, summary): pass
    ''')
    write_plugin(tmp_path, "no_args", '''
        class P:
            def on_stop(self, summary): pass
    ''')
    write_plugin(tmp_path, "no_hooks", '''
        class P:
            def __init__(self, config): pass
        PLUGIN = P
    ''')
    dirs = [tmp_path / "plugins"]
    with pytest.raises(PluginError, match=r"\[plugins.missing\]: no plugin 'missing' found"):
        PluginHost.from_config({"missing": {}}, search_dirs=dirs)
    with pytest.raises(PluginError, match="broken_import.py failed to import: ModuleNotFoundError"):
        PluginHost.from_config({"broken_import": {}}, search_dirs=dirs)
    with pytest.raises(PluginError, match=r"\[plugins.bad_init\] P could not be built: .*'gain' must be positive"):
        PluginHost.from_config({"bad_init": {"gain": -1}}, search_dirs=dirs)
    with pytest.raises(PluginError, match=r"\[plugins.no_args\] P takes no settings but the table sets gain"):
        PluginHost.from_config({"no_args": {"gain": 1}}, search_dirs=dirs)
    with pytest.raises(PluginError, match="defines none of the hooks"):
        PluginHost.from_config({"no_hooks": {}}, search_dirs=dirs)
    with pytest.raises(PluginError, match=r"\[plugins.x\] enabled must be true or false"):
        PluginHost.from_config({"x": {"enabled": "yes"}}, search_dirs=dirs)
    assert len(PluginHost.from_config({"no_args": {}}, search_dirs=dirs)) == 1


def test_the_shipped_plugin_is_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    host = PluginHost.from_config({"activation_feedback": {"target_locs_per_frame": 5}})
    assert type(host.instance("activation_feedback")).__name__ == "ActivationFeedback"


BLOCKING = '''
import threading

class Blocking:
    """Blocks in its second on_localizations call (a device that never answers)."""
    release = threading.Event()

    def __init__(self, config):
        self.seen = 0

    def on_localizations(self, batch):
        self.seen += 1
        if self.seen == 2:
            Blocking.release.wait(120)

    def on_stop(self, summary):
        raise AssertionError("a disabled plugin must not be called again")
'''

EXITING = '''
import sys

class Exiting:
    def on_stats(self, stats):
        sys.exit(3)
'''


def test_a_blocking_or_exiting_hook_disables_its_plugin_and_the_others_continue(tmp_path, caplog):
    write_plugin(tmp_path, "recorder", RECORDER)
    write_plugin(tmp_path, "blocking", BLOCKING)
    write_plugin(tmp_path, "exiting", EXITING)
    host = PluginHost.from_config({"blocking": {}, "exiting": {}, "recorder": {"tag": "r"}},
                                  config_dir=tmp_path)
    host.hook_timeout_s = 0.3
    rec = host.instance("recorder")
    rec.events.clear()
    run, _ = small_run(tmp_path)
    try:
        with caplog.at_level(logging.ERROR, logger="rtsmlm.engine.plugins"):
            host.start(run)
            for b in batches(4):
                host.localizations(b)
            host.stats({"n": 1})
            report = host.stop({"frames": 4})
    finally:
        host.instance("blocking").release.set()
    assert host.active == ["recorder"]
    assert [e[2] for e in rec.events if e[0] == "locs"] == [0, 1, 2, 3]
    assert report["blocking"]["active"] is False
    assert report["blocking"]["error"] == "on_localizations: did not return within 0.3 s"
    assert report["exiting"]["active"] is False and "SystemExit: 3" in report["exiting"]["error"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "plugin blocking: on_localizations did not return within 0.3 s; plugin disabled" in logged


@pytest.mark.slow  # a real run with the model: ~10 s
def test_a_run_with_a_blocking_plugin_next_to_its_config_finishes_with_a_complete_summary(tmp_path, monkeypatch):
    import json
    import sys

    from rtsmlm.cli import main

    write_plugin(tmp_path, "blocking", BLOCKING)
    (tmp_path / "rig.toml").write_text("[pipeline]\nhook_timeout_s = 0.5\n[plugins.blocking]\n", encoding="utf-8")
    out = tmp_path / "run"
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # the plugin is found beside the config, not in the working directory
    try:
        rc = main(["run", "--quiet", "--no-stream", "--config", str(tmp_path / "rig.toml"), "--set",
                   "backend.threads=1", "--max-frames", "40", "--out", str(out)])
    finally:
        module = next((m for name, m in sys.modules.items() if name.endswith(".blocking") and hasattr(m, "Blocking")),
                      None)
        if module is not None:
            module.Blocking.release.set()
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["frames_acquired"] == 40
    assert summary["plugins"]["blocking"]["active"] is False
    assert "did not return within 0.5 s" in summary["plugins"]["blocking"]["error"]
    assert (out / "render.tif").exists() and (out / "localizations.csv").exists()


ONLY_ON_BATCH = '''
class CountLocs:
    """A plugin of the listener protocol with one hook."""

    def __init__(self, config):
        self.n = 0
        self.frames = set()

    def on_batch(self, batch):
        self.n += len(batch.locs)
        self.frames.update(range(batch.first_frame, batch.last_frame + 1))
'''

WITH_SECTION = '''
from rtsmlm.engine.listener import Listener, RunEnd


class Section(Listener):
    """Subclasses the protocol (inherited hooks are not called) and returns a summary section."""

    def __init__(self, config):
        self.batches = 0

    def on_batch(self, batch):
        self.batches += 1

    def on_run_end(self, end: RunEnd):
        return {"section_plugin": {"batches": self.batches, "frames_acquired": end.summary["frames_acquired"]}}
'''


@pytest.mark.slow  # a real run with the model: ~10 s
def test_plugins_of_the_listener_protocol_with_one_hook_or_a_section_run_in_a_real_run(tmp_path, monkeypatch):
    import json

    from rtsmlm.cli import main

    write_plugin(tmp_path, "count_locs", ONLY_ON_BATCH)
    write_plugin(tmp_path, "section", WITH_SECTION)
    (tmp_path / "rig.toml").write_text("[plugins.count_locs]\n[plugins.section]\n", encoding="utf-8")
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    rc = main(["run", "--quiet", "--no-stream", "--config", str(tmp_path / "rig.toml"), "--set", "backend.threads=1",
               "--max-frames", "40", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete"
    count = summary["plugins"]["count_locs"]
    assert count["active"] and count["error"] is None and count["calls"] >= 1
    assert summary["section_plugin"]["frames_acquired"] == 40
    assert summary["section_plugin"]["batches"] == summary["listeners"]["section"]["batches"] >= 1
    # Every relay took every batch (nothing lost to a slow listener) and reports itself.
    for name in ("files", "render", "ground_truth", "count_locs", "section"):
        assert summary["listeners"][name]["batches_lost"] == 0, name
    assert summary["listeners"]["files"]["critical"] is True
