"""The cross-modal study's `align` on the synthetic study of the tests, next to the study's numbers.

Tiny random-weight AST / CLIP / RemoteCLIP (tests/fixtures/study_models.py, given through the
SOUNDMAP_<NAME>_MODEL local-copy switches) on 12 recordings whose sound and images share a
latent "greenness" (tests/ecology/study_data.py): a linked study (design correlation 1) and a
control with permuted images (design correlation printed). Prints ``name: value (target …)``; the
targets are what a working pipeline must show, the study's r is printed beside for reference (real
models, real cities: modest r). Takes about a minute on two CPU cores.

    python bench/study_synthetic.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from soundmap.cli.main import run  # noqa: E402
from soundmap.ecology.study import STUDY_REFERENCE  # noqa: E402
from tests.ecology.study_data import design_correlation, write_study  # noqa: E402
from tests.fixtures.study_models import (REMOTECLIP_FILE, save_open_clip_checkpoint, save_tiny_ast,  # noqa: E402
                                         save_tiny_clip)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="soundmap-study-"))
    os.environ["SOUNDMAP_AST_MODEL"] = str(save_tiny_ast(root / "ast"))
    os.environ["SOUNDMAP_CLIP_MODEL"] = str(save_tiny_clip(root / "clip"))
    os.environ["SOUNDMAP_REMOTECLIP_MODEL"] = str(save_open_clip_checkpoint(root / "rc" / REMOTECLIP_FILE))
    os.environ["SOUNDMAP_QUIET"] = "1"
    for label, linked, seed in (("linked", True, 0), ("control", False, 1)):
        manifest, audio_t, image_t = write_study(root / label, linked=linked, seed=seed)
        out = root / f"{label}.json"
        code = run(["align", str(manifest), "--audio-encoder", "ast", "--image-encoder", "clip", "--combine-views",
                    "--no-bga", "--group-column", "city", "--out", str(out), "-q"])
        if code != 0:
            raise SystemExit(f"align failed with exit code {code}")
        report = json.loads(out.read_text())
        design = design_correlation(audio_t, image_t)
        print(f"{label}_design_r: {design:.3f}")
        for view in ("street", "aerial", "combined", "street_vs_aerial"):
            overall = report["analyses"][view]["overall"]
            target = ("> 0.6, Mantel p <= 0.005" if linked else f"within 0.25 of {design:.2f}, Mantel p > 0.05")
            if view == "street_vs_aerial":
                target = "> 0.6 (the views share their latents)"
            print(f"{label}_{view}_r: {overall['r']:.3f} (target {target}; Mantel p {overall['p']:.3f}, "
                  f"plain p {overall['p_pairs']:.1e}; study r {STUDY_REFERENCE['overall'][view]})")
    print(f"figure: {root / 'linked.png'}")


if __name__ == "__main__":
    main()
