"""Export: NeRF -> mesh by marching cubes, textured mesh files (OBJ+MTL+PNG, GLB), turntable videos."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import mcubes
import numpy as np
import torch
import torch.nn.functional as F
import trimesh
import xatlas
from PIL import Image

from c123.errors import GeometryError
from c123.rasterizer import get_rasterizer


@torch.no_grad()
def mesh_from_nerf(field, resolution: int, threshold: float, chunk: int = 1 << 18) -> tuple[torch.Tensor, torch.Tensor]:
    """Marching cubes of field.density on a resolution^3 grid over [-bound, bound]^3: (verts[V,3], faces[F,3] long).

    Faces wind outward (density is high inside). Tensors are on the field's device.
    """
    bound = field.cfg.bound
    device = next(field.parameters()).device
    axis = torch.linspace(-bound, bound, resolution)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    density = torch.cat([field.density(p.to(device)).float().cpu() for p in grid.split(chunk)])
    if not torch.isfinite(density).all():
        raise GeometryError("the NeRF density has non-finite values: the checkpoint is corrupt or training diverged")
    verts, faces = mcubes.marching_cubes(density.reshape(resolution, resolution, resolution).numpy(), threshold)
    if len(faces) == 0:
        raise GeometryError(f"no surface at density threshold {threshold} (max density {density.max():.3g}): "
                            "lower the threshold")
    verts = verts * (2.0 * bound / (resolution - 1)) - bound
    return (torch.from_numpy(verts.astype(np.float32)).to(device),
            torch.from_numpy(faces.astype(np.int64)).to(device))


def clean_mesh(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices at the same position, then drop the faces left degenerate (a repeated index or a zero
    normal) and the vertices no face uses. A safety net for any mesh source: marching tets already avoids
    coincident vertices, marching cubes can make them where a density equals the threshold."""
    mesh = trimesh.Trimesh(verts, faces, process=False)
    mesh.merge_vertices()
    mesh.update_faces(mesh.nondegenerate_faces(height=None))
    mesh.remove_unreferenced_vertices()
    return np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces, dtype=np.uint32)


def export_textured_mesh(verts, faces, albedo_fn, out_dir, texture_size: int, name: str = "mesh") -> dict[str, str]:
    """Clean the mesh, UV-unwrap it with xatlas, bake albedo_fn into a texture, write <name>.obj/.mtl/.png and
    <name>.glb."""
    device = verts.device if torch.is_tensor(verts) else torch.device("cpu")
    verts_np = _numpy(verts).astype(np.float32)
    faces_np = _numpy(faces).astype(np.uint32)
    if len(faces_np) == 0 or len(verts_np) == 0:
        raise GeometryError("cannot export an empty mesh: the reconstruction produced no surface")
    verts_np, faces_np = clean_mesh(verts_np, faces_np)
    if len(faces_np) == 0:
        raise GeometryError("cannot export the mesh: every face is degenerate (zero area)")
    vmap, faces_uv, uv = xatlas.parametrize(verts_np, faces_np)
    verts_uv = verts_np[vmap]
    texture = bake_texture(torch.from_numpy(verts_uv).to(device), torch.from_numpy(faces_uv.astype(np.int64)).to(device),
                           torch.from_numpy(uv).to(device), albedo_fn, texture_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"{name}.{k}" for k in ("obj", "mtl", "png", "glb")}
    imageio.imwrite(paths["png"], texture)
    _write_obj(paths, verts_uv, faces_uv, uv)
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(texture), metallicFactor=0.0,
                                                   roughnessFactor=1.0)
    mesh = trimesh.Trimesh(verts_uv, faces_uv, visual=trimesh.visual.TextureVisuals(uv=uv, material=material),
                           process=False)
    mesh.export(paths["glb"])
    return {k: str(p) for k, p in paths.items()}


@torch.no_grad()
def bake_texture(verts, faces, uv, albedo_fn, size: int, dilate: int = 4, chunk: int = 1 << 16) -> np.ndarray:
    """Texture uint8[size,size,3] (row 0 = v 1) by rasterising the mesh in UV space and querying albedo_fn."""
    clip = torch.cat([uv * 2.0 - 1.0, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], -1)[None]
    raster = get_rasterizer("auto", verts.device)
    rast = raster.rasterize(clip.float(), faces.int(), (size, size))
    points = raster.interpolate(verts[None].float(), rast, faces.int())[0]
    mask = rast[0, ..., 3] > 0
    image = torch.zeros(size, size, 3, device=verts.device)
    surface = points[mask]
    if surface.shape[0]:
        image[mask] = torch.cat([albedo_fn(p).float() for p in surface.split(chunk)]).clamp(0, 1)
    image = _dilate(image, mask, dilate)
    # rasteriser row 0 is v = 0 (image bottom); PNG row 0 is the top
    return (image.flip(0) * 255).round().byte().cpu().numpy()


def _dilate(image: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Grow the baked texels into the gutter so bilinear/mipmapped lookups at chart borders stay on-colour."""
    img, m = image.permute(2, 0, 1)[None], mask[None, None].float()
    for _ in range(steps):
        total = F.avg_pool2d(img * m, 3, 1, 1)
        count = F.avg_pool2d(m, 3, 1, 1)
        grow = (m == 0) & (count > 0)
        img = torch.where(grow, total / count.clamp(min=1e-8), img)
        m = torch.maximum(m, grow.float())
    # texels still empty are never sampled; the mean colour keeps mip levels from darkening
    filled = m[0, 0] > 0
    mean = img[0].permute(1, 2, 0)[filled].mean(0) if filled.any() else img.new_ones(3)
    return torch.where(filled[..., None], img[0].permute(1, 2, 0), mean)


def _write_obj(paths: dict[str, Path], verts: np.ndarray, faces: np.ndarray, uv: np.ndarray) -> None:
    """OBJ with one vt per v (xatlas already split seams) and an MTL whose map_Kd is the PNG."""
    idx = faces.astype(np.int64) + 1
    lines = [f"mtllib {paths['mtl'].name}", "usemtl material_0"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in uv]
    lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in idx]
    paths["obj"].write_text("\n".join(lines) + "\n")
    paths["mtl"].write_text("newmtl material_0\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\n"
                            f"map_Kd {paths['png'].name}\n")


def write_video(frames, mp4_path, gif_path=None, fps: int = 20) -> None:
    """Write uint8 HxWx3 frames as an H.264 mp4 (imageio-ffmpeg) and optionally a looping gif preview."""
    frames = [np.asarray(f, dtype=np.uint8) for f in frames]
    if not frames:
        raise GeometryError(f"no frames to write to {mp4_path}: render at least one view")
    h, w = frames[0].shape[:2]
    # yuv420p needs even sides: pad by repeating the last row/column
    padded = [np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") for f in frames]
    Path(mp4_path).parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(mp4_path, padded, fps=fps, codec="libx264", quality=8, macro_block_size=1)
    if gif_path is not None:
        Path(gif_path).parent.mkdir(parents=True, exist_ok=True)
        imageio.mimsave(gif_path, frames, duration=1000.0 / fps, loop=0)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
