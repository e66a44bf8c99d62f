"""Write tests/fixtures/syncdreamer_chicken/ from a fetched snapshot of liuyuan-pal/SyncDreamer (MIT; the chicken
is Google Scanned Objects' CHICKEN_NESTING, CC BY 4.0): the mesh's geometry as binary PLY (no texture, no UVs),
all 16 ground-truth depth maps, 4 of the 16 ground-truth and predicted views, and camera-16.pkl as JSON.

    python scripts/make_syncdreamer_fixture.py /work/.mirror/liuyuan-pal+SyncDreamer/repo
"""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import trimesh

NVS_VIEWS = (0, 4, 8, 12)
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "syncdreamer_chicken"


def show(git_dir: str, path: str) -> bytes:
    return subprocess.run(["git", f"--git-dir={git_dir}", "show", f"HEAD:{path}"], check=True,
                          capture_output=True).stdout


def main(git_dir: str) -> None:
    for sub in ("gt", "pr"):
        (OUT / sub).mkdir(parents=True, exist_ok=True)
    obj = show(git_dir, "eval_examples/chicken-mesh/meshes/model.obj").decode()
    v = np.array([line.split()[1:4] for line in obj.splitlines() if line.startswith("v ")], dtype=np.float64)
    f = np.array([[int(t.split("/")[0]) - 1 for t in line.split()[1:4]] for line in obj.splitlines()
                  if line.startswith("f ")])
    trimesh.Trimesh(v, f, process=False).export(OUT / "mesh.ply", encoding="binary")
    for k in range(16):
        (OUT / "gt" / f"{k:03}-depth.png").write_bytes(show(git_dir, f"eval_examples/chicken-gt/{k:03}-depth.png"))
    for k in NVS_VIEWS:
        for sub, src in (("gt", "chicken-gt"), ("pr", "chicken-pr")):
            (OUT / sub / f"{k:03}.png").write_bytes(show(git_dir, f"eval_examples/{src}/{k:03}.png"))
    K, azimuth, elevation, distance, poses = pickle.loads(show(git_dir, "meta_info/camera-16.pkl"))
    (OUT / "camera-16.json").write_text(json.dumps({"K": np.asarray(K).tolist(), "poses": np.asarray(poses).tolist(),
                                                    "azimuth": np.asarray(azimuth).tolist(),
                                                    "elevation": np.asarray(elevation).tolist(),
                                                    "distance": np.asarray(distance).tolist()}))


if __name__ == "__main__":
    main(sys.argv[1])
