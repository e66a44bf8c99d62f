"""SyncDreamer's GSO protocol (c123.metrics syncdreamer_*) against an independent re-implementation of its formulas
(liuyuan-pal/SyncDreamer eval_mesh.py, eval_nvs.py, written out again below from their text, with camera-16.pkl's
own numbers) on its chicken example (tests/fixtures/syncdreamer_chicken), and against values computed by hand."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from c123 import metrics as M

FIXTURE = Path(__file__).parent / "fixtures" / "syncdreamer_chicken"
CAMERA16 = json.loads((FIXTURE / "camera-16.json").read_text())
K16, POSES16 = np.array(CAMERA16["K"]), np.array(CAMERA16["poses"])
NVS_VIEWS = (0, 4, 8, 12)


# ---- their formulas, written out again ------------------------------------------------------------------------
def ref_read_depth(path):
    depth = np.asarray(Image.open(path)).astype(np.float32) / 65535 * (2.4 - 0.6) + 0.6
    return depth, (depth > 0.63) & (depth < 2.37)


def ref_depth_to_world(mask, depth, pose):
    hs, ws = np.nonzero(mask)
    d = depth[hs, ws]
    pts = np.asarray([ws, hs, d], np.float32).transpose()
    pts[:, :2] *= pts[:, 2:]
    pts = np.dot(pts, np.linalg.inv(K16).transpose())
    R, t = pose[:, :3].T, -pose[:, :3].T @ pose[:, 3:]  # pose_inverse
    return pts @ R.T + t[:, 0]


def ref_voxel_down(pts, voxel=0.01):
    """Open3D's voxel_down_sample with a dict of voxel keys."""
    pts = pts.astype(np.float64)
    lo = pts.min(0) - voxel * 0.5
    cells = {}
    for p, key in zip(pts, map(tuple, np.floor((pts - lo) / voxel).astype(int))):
        s = cells.setdefault(key, [np.zeros(3), 0])
        s[0] += p
        s[1] += 1
    return np.array([s / n for s, n in cells.values()])


def ref_rasterize_depth(vertices, faces, pose):
    """rasterize_depth_map with c123's rasteriser called as nvdiffrast.rasterize is."""
    from c123.rasterizer import rasterize

    pts = np.matmul(vertices, pose[:, :3].T) + pose[:, 3:].T
    pts = np.matmul(pts, K16.T)
    depth = pts[:, 2]
    pts = pts[:, :2] / depth[:, None]
    pts[:, 0] = (pts[:, 0] * 2 - 256) / 256
    pts[:, 1] = (pts[:, 1] * 2 - 256) / 256
    near, far = 5e-1, 1e2
    z = ((depth - near) / (far - near)) * 2 - 1
    clip = torch.from_numpy(np.concatenate([pts, z[:, None], np.ones_like(z[:, None])], 1).astype(np.float32))[None]
    with torch.no_grad():
        rast = rasterize(clip, torch.from_numpy(faces.astype(np.int32)), (256, 256))
    return ((rast[0, :, :, 2] + 1) / 2 * (far - near) + near).numpy(), (rast[0, :, :, -1] != 0).numpy()


def ref_points_from_mesh(vertices, faces):
    pts = [ref_depth_to_world(*reversed(ref_rasterize_depth(vertices, faces, pose)), pose) for pose in POSES16]
    return ref_voxel_down(np.concatenate(pts).astype(np.float32))


def ref_points_from_depth():
    pts = [ref_depth_to_world(*reversed(ref_read_depth(FIXTURE / "gt" / f"{k:03}-depth.png")), POSES16[k])
           for k in range(16)]
    return ref_voxel_down(np.concatenate(pts).astype(np.float32))


def ref_chamfer(pr, gt):
    def nearest(a, b):
        a, b = torch.from_numpy(a.astype(np.float32)), torch.from_numpy(b.astype(np.float32))
        return torch.cat([torch.norm(a[i:i + 4096, None] - b[None], dim=-1).min(1)[0]
                          for i in range(0, len(a), 4096)]).numpy()
    return (np.mean(nearest(pr, gt)) + np.mean(nearest(gt, pr))) / 2


def ref_transform_gt(v, angle_deg):
    v = v * (1 / np.max(v.max(0) - v.min(0)))
    v = v - (v.max(0) + v.min(0))[None] / 2
    a = -np.deg2rad(angle_deg)  # euler2mat(a, 0, 0, 'szyx'): a turn about z
    return v @ np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]).T


def ref_iou(v_pr, f_pr, v_gt, f_gt):
    import mesh2sdf

    a = mesh2sdf.compute(v_pr, f_pr, 64, fix=False, return_mesh=False) < 0
    b = mesh2sdf.compute(v_gt, f_gt, 64, fix=False, return_mesh=False) < 0
    return np.sum(a & b) / np.sum(a | b)


def ref_ssim(pr, gt):
    """torchmetrics' SSIM as of 2023 written out: 11x11 Gaussian (sigma 1.5), reflect padding, the border cropped,
    data range the larger of the two images' max - min, K = (0.01, 0.03), variances clamped at 0."""
    x, y = (torch.from_numpy(i).permute(2, 0, 1)[None].double() for i in (pr, gt))
    L = max(float(x.max() - x.min()), float(y.max() - y.min()))
    g = torch.exp(-(torch.arange(11, dtype=torch.float64) - 5) ** 2 / (2 * 1.5 ** 2))
    g = (g / g.sum())
    w = (g[:, None] * g[None, :]).expand(3, 1, 11, 11)

    def blur(t):
        return torch.nn.functional.conv2d(torch.nn.functional.pad(t, (5, 5, 5, 5), mode="reflect"), w, groups=3)
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = (blur(x * x) - mx ** 2).clamp(min=0), (blur(y * y) - my ** 2).clamp(min=0), blur(x * y) - mx * my
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return float(s[..., 5:-5, 5:-5].mean())


def ref_color_map_forward(rgb):
    rgb = rgb.astype(np.float32) / 255
    return rgb if rgb.shape[-1] == 3 else rgb[:, :, :3] * rgb[:, :, 3:] + (1 - rgb[:, :, 3:])


# ---- cameras, downsampling, Chamfer and IoU by hand -------------------------------------------------------------
def test_syncdreamer_cameras_are_camera16_pkl():
    K, poses = M.syncdreamer_cameras()
    assert np.array_equal(K, K16)
    assert np.allclose(poses, POSES16, atol=1e-6)
    assert np.allclose(CAMERA16["elevation"], np.deg2rad(M.SD_ELEVATION)) and np.allclose(CAMERA16["distance"], 1.5)


def test_voxel_downsample_averages_each_occupied_voxel():
    pts = np.array([[0.0, 0, 0], [0.004, 0, 0], [0.006, 0, 0], [0.02, 0.02, 0.02]])
    # voxels start at -0.005: 0 and 0.004 share [-0.005, 0.005), 0.006 is alone in [0.005, 0.015)
    out = sorted(map(tuple, np.round(M.voxel_downsample(pts, 0.01), 9)))
    assert out == [(0.002, 0, 0), (0.006, 0, 0), (0.02, 0.02, 0.02)]
    rng = np.random.default_rng(0)
    many = rng.random((2000, 3)).astype(np.float32) * 0.2
    assert np.allclose(sorted(map(tuple, M.voxel_downsample(many, 0.01))), sorted(map(tuple, ref_voxel_down(many))))


def test_syncdreamer_chamfer_is_the_halved_sum_of_unsquared_means():
    grid = np.stack(np.meshgrid(*[np.arange(5) * 0.1] * 3, indexing="ij"), -1).reshape(-1, 3)
    assert M.syncdreamer_chamfer(grid, grid) == 0
    assert M.syncdreamer_chamfer(grid, grid + [0.03, 0, 0]) == pytest.approx(0.03)
    # one extra far point in the truth: pred->true stays 0, true->pred averages 0.5 over 126 points; halved
    far = np.vstack([grid, [[0.4, 0.4, 0.9]]])
    assert M.syncdreamer_chamfer(grid, far) == pytest.approx(0.5 / 126 / 2)
    assert M.syncdreamer_chamfer(grid, far) == pytest.approx(ref_chamfer(grid, far))


def test_volume_iou_of_boxes_on_mesh2sdf_grid_by_hand():
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    inside = M.mesh_inside_grid(box.vertices, box.faces)
    assert inside.sum() == 31 ** 3  # mesh2sdf's samples i / 32 - 1 strictly inside |x| < 0.5: i = 17..47
    assert np.array_equal(inside, (np.abs(M.grid_points()) < 0.5).all(-1))
    shifted = M.mesh_inside_grid(box.vertices + [2 / 32, 0, 0], box.faces)  # two cells along x
    assert M.volume_iou(shifted, inside) == pytest.approx(29 / 33)  # i = 19..49 against 17..47
    assert M.volume_iou(shifted, inside) == pytest.approx(ref_iou(box.vertices + [2 / 32, 0, 0], box.faces,
                                                                  box.vertices, box.faces))
    with pytest.raises(ValueError, match="empty"):
        M.volume_iou(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 2), bool))


def test_syncdreamer_points_of_a_box_equal_the_reimplementation():
    box = trimesh.creation.box(extents=(0.3, 0.2, 0.25))
    ours = M.syncdreamer_points(*M.syncdreamer_depth_maps(box.vertices, box.faces))
    theirs = ref_points_from_mesh(box.vertices, box.faces)
    # our cameras are computed (1e-7 from the pickled ones): a handful of points cross a voxel border, which
    # moves two voxel means by up to half a voxel (0.005) each: far below the 0.01 voxel over ~5000 points
    assert len(ours) > 1000 and abs(len(ours) - len(theirs)) <= 1e-3 * len(theirs)
    assert M.syncdreamer_chamfer(ours, theirs) < 5e-5
    moved = M.syncdreamer_points(*M.syncdreamer_depth_maps(box.vertices + [0.05, 0, 0], box.faces))
    assert M.syncdreamer_chamfer(moved, ours) == pytest.approx(ref_chamfer(moved, theirs), abs=5e-5)
    assert M.syncdreamer_chamfer(moved, ours) > 0.005


def test_ground_truth_normalisation_is_transform_gt():
    v = trimesh.load(FIXTURE / "mesh.ply", process=False).vertices
    ours = M.normalize_ground_truth(v, M.SD_ROTATIONS["chicken"])
    assert np.allclose(ours, ref_transform_gt(v, 270.0))
    assert np.max(ours.max(0) - ours.min(0)) == pytest.approx(1.0)
    assert np.allclose(ours.max(0) + ours.min(0), 0, atol=1e-12)


def test_c123_frame_maps_the_reference_camera_onto_syncdreamers_input_camera():
    from c123.cameras import orbit_cameras

    # c123's camera at elevation 30, azimuth 0 -> SyncDreamer's camera 0 centre, for a matching field of view
    cam = orbit_cameras(60.0, 0.0, 1.5, 2 * np.rad2deg(np.arctan(128 / 280)))
    centre = M.c123_to_syncdreamer(cam.position.double(), float(cam.fovy), 1.5)
    assert np.allclose(centre[0], -POSES16[0][:, :3].T @ POSES16[0][:, 3], atol=1e-6)
    # a narrower c123 camera farther away images the object at the same size: the scale says so
    assert M.c123_to_syncdreamer(np.eye(3), 20.0, 3.2) == pytest.approx(
        np.eye(3)[:, [2, 0, 1]] * 1.5 * (128 / 280) / (3.2 * np.tan(np.deg2rad(10.0))))


# ---- the chicken ------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")
def test_novel_view_metrics_of_syncdreamers_prediction_equal_eval_nvs(capsys):
    import lpips

    gt = [np.asarray(Image.open(FIXTURE / "gt" / f"{k:03}.png")) for k in NVS_VIEWS]
    pr = [np.asarray(Image.open(FIXTURE / "pr" / f"{k:03}.png")) for k in NVS_VIEWS]
    ours_lpips = M.LpipsMetric("vgg", random_backbone=not M.lpips_backbone_cached("vgg"))
    ours = M.syncdreamer_nvs(pr, gt, ours_lpips)
    torch.manual_seed(M.LpipsMetric.RANDOM_SEED)
    ref_lpips = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=ours_lpips.name.endswith("random"),
                            verbose=False).eval()
    rows = []
    for i, (g, p) in enumerate(zip(gt, pr)):
        g, p = ref_color_map_forward(g), ref_color_map_forward(p)
        psnr = 10 * np.log10(1 / np.mean(np.mean((g.reshape(-1, 3) - p.reshape(-1, 3)) ** 2, 0)))
        with torch.no_grad():
            ref_lp = float(ref_lpips(torch.from_numpy(g).permute(2, 0, 1)[None] * 2 - 1,
                                     torch.from_numpy(p).permute(2, 0, 1)[None] * 2 - 1))
        rows.append(f"view {NVS_VIEWS[i]:03}  PSNR {ours['psnr'][i]:.6f} ({psnr:.6f})  SSIM {ours['ssim'][i]:.6f} "
                    f"({ref_ssim(p, g):.6f} in float64)  LPIPS-{ours_lpips.name} {ours['lpips'][i]:.6f} ({ref_lp:.6f})")
        assert ours["psnr"][i] == pytest.approx(psnr, rel=1e-6)
        assert M.psnr(p, g) == pytest.approx(psnr, abs=5e-3)  # float64 mean: ~1e-3 dB from their float32 one
        # the formula is the same to float64 rounding; float32 (what eval_nvs.py ran) cancels ~1e-4 away
        assert M.ssim(p, g, dtype=torch.float64) == pytest.approx(ref_ssim(p, g), abs=1e-9)
        assert ours["ssim"][i] == pytest.approx(ref_ssim(p, g), abs=5e-4)
        with torch.no_grad():
            th = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None] * 2 - 1
            assert ours["lpips"][i] == pytest.approx(float(ref_lpips(th(g), th(p))), rel=1e-5)
    assert 15 < np.mean(ours["psnr"]) < 40 and 0.5 < np.mean(ours["ssim"]) <= 1
    with capsys.disabled():
        print("\n" + "\n".join(rows))


@pytest.fixture(scope="module")
def chicken():
    mesh = trimesh.load(FIXTURE / "mesh.ply", process=False)
    depths = [M.read_syncdreamer_depth(FIXTURE / "gt" / f"{k:03}-depth.png") for k in range(16)]
    truth = M.syncdreamer_points(np.stack([d for d, _ in depths]), np.stack([m for _, m in depths]))
    return M.normalize_ground_truth(mesh.vertices, 270.0), np.asarray(mesh.faces), truth


def _altered(v, f):
    top = v[f].mean(1)[:, 2] > np.quantile(v[:, 2], 0.8)  # the top fifth's triangles cut off
    return {"itself": (v, f), "scaled 1.1": (v * 1.1, f), "shifted 0.05": (v + [0.05, 0, 0], f),
            "top cut off": (v, f[~top])}


@pytest.mark.slow
def test_chicken_chamfer_and_volume_iou_equal_eval_mesh(chicken, capsys):
    v, f, truth = chicken
    theirs_truth = ref_points_from_depth()
    assert M.syncdreamer_chamfer(truth, theirs_truth) < 5e-5
    rows = []
    for name, (vp, fp) in _altered(v, f).items():
        ours_pts = M.syncdreamer_points(*M.syncdreamer_depth_maps(vp, fp))
        chamfer, iou = M.syncdreamer_chamfer(ours_pts, truth), M.volume_iou(M.mesh_inside_grid(vp, fp),
                                                                           M.mesh_inside_grid(v, f))
        ref_c, ref_i = ref_chamfer(ref_points_from_mesh(vp, fp), theirs_truth), ref_iou(vp, fp, v, f)
        rows.append(f"{name:<13} chamfer {chamfer:.6f} (re-implementation {ref_c:.6f})  volume IoU {iou:.5f} "
                    f"(re-implementation {ref_i:.5f})")
        assert chamfer == pytest.approx(ref_c, abs=5e-5)  # voxel-border flips, as for the box
        assert iou == pytest.approx(ref_i, rel=1e-12)
        if name == "itself":
            assert chamfer < 5e-4 and iou == 1.0
        if name == "scaled 1.1":
            assert iou == pytest.approx(1 / 1.1 ** 3, abs=0.03)  # the original sits inside its enlarged copy
        if name == "shifted 0.05":
            assert 0.02 < chamfer < 0.05
    with capsys.disabled():
        print("\n" + "\n".join(rows))
