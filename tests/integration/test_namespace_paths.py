"""--namespace-path as the running exporter takes it: paths that are not UTF-8, under a glob
and literal."""

from __future__ import annotations

import os
import urllib.request

from ipvs_testlib import exporter_log, running_exporter


def test_paths_that_are_not_utf8_are_read_as_bytes_and_shown_escaped(tmp_path):
    """A file named b'\\xff' under a glob and a literal path with that byte: start-up and
    every scrape go on (were a traceback and a 500); labels show the byte as \\xff."""
    (tmp_path / "glob").mkdir()
    open(os.path.join(os.fsencode(tmp_path / "glob"), b"\xff"), "w").close()
    literal = os.fsencode(tmp_path) + b"/gone-\xff"
    pattern = os.fsencode(tmp_path) + b"/glob/*"
    with running_exporter("--namespace-path", literal, "--namespace-path", pattern) as (url, proc):
        for _ in range(2):
            with urllib.request.urlopen(url, timeout=30) as r:
                body = r.read().decode()
        assert proc.poll() is None
    shown = f"{tmp_path}/gone-\\\\xff"  # the label value \xff, its backslash escaped
    assert f'ipvs_up{{namespace="{shown}"}} 0.0' in body, body[:3000]
    log = open(exporter_log(url), errors="replace").read()
    assert "Traceback" not in log and "level=error" not in log, log
