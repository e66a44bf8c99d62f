"""The mesh a user receives is clean: the tiny preset on the synthetic `toy` scene, the whole method (both
stages, the tiny priors), the exported GLB and OBJ reloaded."""

from __future__ import annotations

import numpy as np
import pytest

from c123 import config as C
from c123.cameras import reference_camera
from c123.preprocess import ReconstructionInput
from c123.reconstruct import reconstruct
from c123.synthetic import get_scene
from mesh_checks import mesh_defects


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    scene = get_scene("toy")
    cfg = C.tiny(str(root / "models"))
    out = scene.render(reference_camera(cfg.camera), 128, 128)
    rgba = (out["rgba"][0].numpy() * 255 + 0.5).astype(np.uint8)
    inp = ReconstructionInput("toy", rgba, depth=out["depth"][0].numpy().astype(np.float32), prompt="a toy")
    reconstruct(inp, cfg, root / "out")
    return root / "out"


@pytest.mark.parametrize("name", ["mesh.glb", "mesh.obj"])
def test_the_exported_toy_mesh_has_no_degenerate_faces_and_no_non_manifold_edges(toy_run, name):
    degenerate, non_manifold, faces = mesh_defects(toy_run / "mesh" / name)
    assert faces > 0 and degenerate == 0 and non_manifold == 0, (degenerate, non_manifold, faces)
