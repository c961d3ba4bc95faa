"""report.html opens in a real headless browser (Debian's `chromium`) and renders: the
screenshot is a page of plausible size with tables and plots on it, not a blank one."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from bestofl.config import load_config
from bestofl.pool import to_table, write_pool
from pipelines.evaluate import run
from tests.test_evaluation import make_rows

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless browser: the Debian package "
                                             "`chromium` (apt-get install -y chromium)")
def test_report_html_renders_in_chromium(tmp_path):
    from PIL import Image

    write_pool(to_table(make_rows(n_questions=10)), str(tmp_path / "pool"))
    run(load_config("evaluate", None, [f"input={tmp_path / 'pool'}",
                                       f"output={tmp_path / 'report'}", "bootstrap=100",
                                       "monte_carlo=20", "score_provenance=cross_fit"]))
    page = tmp_path / "report" / "report.html"
    shot = tmp_path / "shot.png"
    # A fresh profile per run; --no-sandbox: CI containers run as root.
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                    "--hide-scrollbars", "--window-size=1400,3000", f"--screenshot={shot}",
                    page.as_uri()], check=True, timeout=120, capture_output=True)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 3000)
    pixels = np.asarray(image, dtype=np.float64)
    ink = (pixels.min(axis=2) < 200).mean()  # share of non-background pixels
    colour = (pixels.max(axis=2) - pixels.min(axis=2) > 60).mean()  # plot lines, green/red marks
    assert pixels.std() > 20 and 0.01 < ink < 0.9, (pixels.std(), ink)
    assert colour > 0.001, colour  # the embedded PNG plots were decoded and drawn
    # Blank control: the same browser on an empty page gives a flat image.
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                    "--window-size=1400,3000", f"--screenshot={tmp_path / 'blank.png'}",
                    blank.as_uri()], check=True, timeout=120, capture_output=True)
    assert np.asarray(Image.open(tmp_path / "blank.png").convert("L")).std() < 1
