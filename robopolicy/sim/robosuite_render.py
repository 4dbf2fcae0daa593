"""Cheaper offscreen renders of robosuite's table scenes, pixel for pixel the ones robosuite makes.

On a machine without a GPU MuJoCo renders through Mesa's llvmpipe, which transforms and rasterizes
every triangle of every geom in the scene on the CPU, and MuJoCo's reflection pass draws the whole
scene a second time, mirrored in the floor. robosuite's floor is its only reflective surface, and a
camera whose whole view lands on the table top (the wrist camera, almost always) sees none of it: such
a camera renders without the reflection pass, and without every geom whose bounding box lies wholly
outside its view frustum or wholly below the table top (which hides all that is below it from a view
that ends on it). Without reflections or shadows (robosuite's scenes have none) such a geom adds no
pixel, so the frames are exactly robosuite's (`bench/bench_camera_step.py` compares every frame of
whole expert episodes with and without the shortcuts). Scenes without a plain table over a reflective
floor are rendered as robosuite renders them.
"""

from __future__ import annotations

import numpy as np

_GEOM_FIELDS = ("type", "dataid", "objtype", "objid", "category", "matid", "texcoord", "segid", "size", "pos",
                "mat", "rgba", "emission", "specular", "shininess", "reflectance", "label", "camdist",
                "modelrbound", "transparent")
_MARGIN = 1e-3  # metres: a geom must be this far out to be dropped (the scene's poses are float32)


def install_render_shortcuts(sim, cull: bool = True) -> None:
    """Wrap the offscreen context's render with the shortcuts above: a camera that sees no floor skips the
    reflection pass and, with `cull`, the geoms it cannot show. Envs without a plain table over a
    reflective floor keep robosuite's render."""
    import mujoco

    ctx = getattr(sim, "_render_context_offscreen", None)
    if ctx is None or getattr(ctx, "_robopolicy_wrapped", False):
        return
    table = _table_top(sim)
    if table is None:
        return
    flag = mujoco.mjtRndFlag.mjRND_REFLECTION
    render = ctx.render

    def render_with_shortcuts(width, height, camera_id=None, segmentation=False):
        hidden = camera_id is not None and camera_id >= 0 and _view_inside_table(sim, camera_id, table)
        ctx.scn.flags[flag] = 0 if hidden else 1
        if not (hidden and cull) or segmentation or width > ctx.con.offWidth or height > ctx.con.offHeight:
            return render(width, height, camera_id=camera_id, segmentation=segmentation)
        # robosuite's render for a fixed camera, with the geoms it cannot show dropped in between
        ctx.cam.type, ctx.cam.fixedcamid = mujoco.mjtCamera.mjCAMERA_FIXED, camera_id
        mujoco.mjv_updateScene(sim.model._model, sim.data._data, ctx.vopt, ctx.pert, ctx.cam,
                               mujoco.mjtCatBit.mjCAT_ALL, ctx.scn)
        _drop_hidden_geoms(ctx.scn, sim.model._model, width / height, table[4])
        mujoco.mjr_render(mujoco.MjrRect(0, 0, width, height), ctx.scn, ctx.con)
        return None

    ctx.render = render_with_shortcuts
    ctx._robopolicy_wrapped = True


# ---------------------------------------------------------------------------------------- the scene
def _table_top(sim) -> tuple[float, float, float, float, float] | None:
    """(centre x, centre y, half x, half y, top z) of an axis-aligned table box above every
    reflective surface, the floor being the only reflective geom; None when the scene is not that."""
    import mujoco

    m, d = sim.model._model, sim.data._data
    table = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "table_visual")
    if table < 0 or m.geom_type[table] != mujoco.mjtGeom.mjGEOM_BOX:
        return None
    if not np.allclose(d.geom_xmat[table].reshape(3, 3), np.eye(3), atol=1e-9):
        return None
    cx, cy, cz = d.geom_xpos[table]
    hx, hy, hz = m.geom_size[table]
    top = cz + hz
    for g in range(m.ngeom):
        mat = m.geom_matid[g]
        if mat < 0 or m.mat_reflectance[mat] <= 0:
            continue
        if m.geom_type[g] == mujoco.mjtGeom.mjGEOM_BOX or (
                m.geom_type[g] == mujoco.mjtGeom.mjGEOM_PLANE and d.geom_xpos[g][2] >= top):
            return None  # a reflective surface the table does not hide (MuJoCo reflects planes and boxes)
    return float(cx), float(cy), float(hx), float(hy), float(top)


def _view_inside_table(sim, camera_id: int, table: tuple[float, float, float, float, float]) -> bool:
    """True when every ray of the camera's (square) view meets the table top inside its edges, so
    nothing beyond the table — the floor — is in the picture. The four corner rays decide it: the
    view's footprint on the table plane is the quadrilateral they span, and the table top is convex."""
    m, d = sim.model._model, sim.data._data
    cx, cy, hx, hy, top = table
    pos = d.cam_xpos[camera_id]
    if pos[2] <= top:
        return False
    rot = d.cam_xmat[camera_id].reshape(3, 3)
    t = np.tan(np.radians(m.cam_fovy[camera_id]) / 2.0)
    for sx in (-t, t):
        for sy in (-t, t):
            ray = rot @ np.array([sx, sy, -1.0])  # a MuJoCo camera looks along its -z axis
            if ray[2] >= -1e-9:
                return False
            k = (top - pos[2]) / ray[2]
            x, y = pos[0] + k * ray[0], pos[1] + k * ray[1]
            if abs(x - cx) >= hx or abs(y - cy) >= hy:
                return False
    return True


# ---------------------------------------------------------------------------------------- geometry
def _render_camera(scn):
    """The camera mjr_render draws a mono image with: the average of the scene's two stereo eyes, which
    mjv_updateScene places half an inter-pupillary distance to either side of it."""
    import mujoco

    return mujoco.mjv_averageCamera(scn.camera[0], scn.camera[1])


class _Frustum:
    """A perspective camera's view volume as six inward planes: the one mjr_render draws with, whose
    near-plane half-width follows the viewport's aspect ratio."""

    def __init__(self, cam, aspect: float):
        self.eye, forward, up = np.array(cam.pos), np.array(cam.forward), np.array(cam.up)
        right = np.cross(forward, up)
        near, half = cam.frustum_near, 0.5 * aspect * (cam.frustum_top - cam.frustum_bottom)
        normals = []  # the four side planes pass through the eye
        for ray, edge in ((near * forward + (cam.frustum_center - half) * right, up),
                          (near * forward + (cam.frustum_center + half) * right, up),
                          (near * forward + cam.frustum_bottom * up, right),
                          (near * forward + cam.frustum_top * up, right)):
            n = np.cross(edge, ray)
            n /= np.linalg.norm(n)
            normals.append(n if n @ forward > 0 else -n)
        self.planes = np.array(normals + [forward, -forward])  # then the near and far planes
        self.offsets = np.array([0.0] * 4 + [-near, cam.frustum_far])

    def excludes(self, center: np.ndarray, axes: np.ndarray, size: np.ndarray) -> bool:
        """True when the box (centre, unit axes as columns, half-sizes) lies wholly beyond one plane."""
        reach = np.abs(self.planes @ axes) @ size
        return bool((self.planes @ (center - self.eye) + self.offsets < -reach - _MARGIN).any())

# ---------------------------------------------------------------------------------------- scenes
def _keep_geoms(scn, keep) -> None:
    """Remove from `scn` the geoms for which keep(geom) is false; the others keep their order, which
    decides between coincident surfaces."""
    geoms, kept = scn.geoms, 0
    for i in range(scn.ngeom):
        g = geoms[i]
        if not keep(g):
            continue
        if kept != i:
            target = geoms[kept]
            for field in _GEOM_FIELDS:
                setattr(target, field, getattr(g, field))
        kept += 1
    scn.ngeom = kept


def _drop_hidden_geoms(scn, model, aspect: float, table_top: float) -> None:
    """Remove from `scn` every model geom its camera cannot show, judged by the geom's bounding box
    (MuJoCo's geom_aabb, in the geom's frame). The caller knows every ray of the view ends on the table
    top at `table_top`, so anything below it is behind the opaque table: a geom is dropped when it lies
    wholly outside the view frustum, wholly below the top, or its part above the top lies outside the
    frustum."""
    import mujoco

    cam = _render_camera(scn)
    if cam.orthographic:
        return
    view, plane_type, aabb = _Frustum(cam, aspect), mujoco.mjtGeom.mjGEOM_PLANE, model.geom_aabb

    def shown(g) -> bool:
        if g.objtype != mujoco.mjtObj.mjOBJ_GEOM:
            return True
        rot = np.array(g.mat).reshape(3, 3)
        if model.geom_type[g.objid] == plane_type:  # infinite: hidden only when level and below the table
            return not (g.pos[2] < table_top - _MARGIN and abs(rot[2, 2]) > 1 - 1e-6)
        center, size = np.array(g.pos) + rot @ aabb[g.objid, :3], aabb[g.objid, 3:]
        return not _box_hidden(view, center, rot, size, table_top)

    _keep_geoms(scn, shown)


def _box_hidden(view: _Frustum, center: np.ndarray, rot: np.ndarray, size: np.ndarray, table_top: float) -> bool:
    """The box is outside the view, wholly below the table top that hides what is below it, or its
    world-aligned bounds cut at the top are outside the view."""
    if view.excludes(center, rot, size):
        return True
    extent = np.abs(rot) @ size  # half-sizes of the box's world-aligned bounds
    low, high = center[2] - extent[2], center[2] + extent[2]
    if high < table_top - _MARGIN:
        return True
    low = max(low, table_top)
    return view.excludes(np.array([center[0], center[1], (low + high) / 2]), np.eye(3),
                         np.array([extent[0], extent[1], (high - low) / 2]))
