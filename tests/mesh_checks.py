"""Checks of exported mesh files as users receive them."""

from __future__ import annotations

import numpy as np
import trimesh


def mesh_defects(path) -> tuple[int, int, int]:
    """(faces with a repeated vertex or zero area, non-manifold edges, faces) of the welded mesh in `path`."""
    loaded = trimesh.load(path, force="mesh", process=False)
    mesh = trimesh.Trimesh(loaded.vertices, loaded.faces, process=True)   # UV seams split vertices: weld them
    f = mesh.faces
    degenerate = ((f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 0] == f[:, 2]) | (mesh.area_faces <= 0))
    _, counts = np.unique(np.sort(mesh.edges, axis=1), axis=0, return_counts=True)
    return int(degenerate.sum()), int((counts > 2).sum()), len(f)
