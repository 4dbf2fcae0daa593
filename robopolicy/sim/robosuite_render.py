"""Cheaper offscreen renders of robosuite's table scenes, pixel for pixel the ones robosuite makes.

On a machine without a GPU MuJoCo renders through Mesa's llvmpipe, which transforms and rasterizes
every triangle of every geom in the scene on the CPU, and MuJoCo's reflection pass draws the whole
scene a second time, mirrored in the floor. robosuite's scenes hold ~180k mesh triangles (the robot
and its mount), most of which a given 84x84 camera cannot show. Two shortcuts, both exact:

- A camera whose whole view lands on the table top (the wrist camera, almost always) sees no floor,
  so it renders without the reflection pass, and without every geom whose bounding box lies wholly
  outside its view frustum or wholly below the table top (which hides all that is below it from a view
  that ends on it).
- A camera that sees the floor (the front camera) keeps the reflection pass and leaves out every geom
  that shows neither directly (it lies outside the view, or wholly behind the opaque table box) nor in
  the floor's reflection (its mirror image below the floor lies outside the view, or wholly behind the
  table). Such a geom adds no pixel in either pass, so it is left out of both.

"Behind the table" is decided with convex shapes: the points that the table box hides from the eye (a
segment from the eye to the point enters the box first) form a convex set, so a geom is hidden when
every vertex of a convex shape containing it is (its bounding box, or, for a mesh, the mesh's convex
hull). The mirror image of a geom is clipped at the floor by MuJoCo, so its part below the floor is
tested. Scenes without a plain, opaque table over a single reflective floor are rendered as robosuite
renders them (`bench/bench_camera_step.py` compares every frame of whole expert
episodes with and without the shortcuts).
"""

from __future__ import annotations

import itertools

import numpy as np

_GEOM_FIELDS = ("type", "dataid", "objtype", "objid", "category", "matid", "texcoord", "segid", "size", "pos",
                "mat", "rgba", "emission", "specular", "shininess", "reflectance", "label", "camdist",
                "modelrbound", "transparent")
_MARGIN = 1e-3  # metres: a geom must be this far out to be dropped (the scene's poses are float32)
_OPAQUE = 0.995  # MuJoCo draws a geom with alpha below this as transparent
_BOX_CORNERS = np.array(list(itertools.product((-1.0, 1.0), repeat=3)))  # (8, 3)
_BOX_EDGES = np.array([(i, j) for i, j in itertools.combinations(range(8), 2)
                       if np.abs(_BOX_CORNERS[i] - _BOX_CORNERS[j]).sum() == 2])  # (12, 2)


def install_render_shortcuts(sim, cull: bool = True, cull_floor_view: bool = True) -> None:
    """Wrap the offscreen context's render with the shortcuts above: cameras that see no floor skip the
    reflection pass and, with `cull`, the geoms they cannot show; with `cull_floor_view`, cameras that
    see the floor leave out the geoms that show neither directly nor in the floor. Envs without a plain
    table over a reflective floor keep robosuite's render."""
    import mujoco

    ctx = getattr(sim, "_render_context_offscreen", None)
    if ctx is None or getattr(ctx, "_robopolicy_wrapped", False):
        return
    table = _table_top(sim)
    if table is None:
        return
    floor = _floor_view(sim) if cull_floor_view else None
    flag = mujoco.mjtRndFlag.mjRND_REFLECTION
    render = ctx.render

    def update_scene(camera_id):
        ctx.cam.type, ctx.cam.fixedcamid = mujoco.mjtCamera.mjCAMERA_FIXED, camera_id
        mujoco.mjv_updateScene(sim.model._model, sim.data._data, ctx.vopt, ctx.pert, ctx.cam,
                               mujoco.mjtCatBit.mjCAT_ALL, ctx.scn)

    def render_with_shortcuts(width, height, camera_id=None, segmentation=False):
        fixed = camera_id is not None and camera_id >= 0
        hidden = fixed and _view_inside_table(sim, camera_id, table)
        ctx.scn.flags[flag] = 0 if hidden else 1
        if not fixed or segmentation or width > ctx.con.offWidth or height > ctx.con.offHeight:
            return render(width, height, camera_id=camera_id, segmentation=segmentation)
        if hidden and cull:
            update_scene(camera_id)
            _drop_hidden_geoms(ctx.scn, sim.model._model, width / height, table[4])
            mujoco.mjr_render(mujoco.MjrRect(0, 0, width, height), ctx.scn, ctx.con)
            return None
        if hidden or floor is None:
            return render(width, height, camera_id=camera_id, segmentation=segmentation)
        update_scene(camera_id)
        floor.drop_hidden_geoms(ctx.scn, width / height)
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


def _floor_view(sim) -> _FloorView | None:
    """What cameras that see the floor can show, when the scene has exactly one reflective geom, a
    level plane under the opaque table; None otherwise."""
    import mujoco

    m, d = sim.model._model, sim.data._data
    reflective = [g for g in range(m.ngeom) if m.geom_matid[g] >= 0 and m.mat_reflectance[m.geom_matid[g]] > 0
                  and m.geom_type[g] in (mujoco.mjtGeom.mjGEOM_PLANE, mujoco.mjtGeom.mjGEOM_BOX)]
    table = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "table_visual")
    if len(reflective) != 1 or m.geom_type[reflective[0]] != mujoco.mjtGeom.mjGEOM_PLANE:
        return None
    material = m.geom_matid[table]
    opaque = m.geom_rgba[table][3] >= _OPAQUE and (material < 0 or m.mat_rgba[material][3] >= _OPAQUE)
    if abs(d.geom_xmat[reflective[0]][8]) < 1 - 1e-9 or not opaque:
        return None
    return _FloorView(sim, table, reflective[0])


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
        self.forward, self.near = forward, cam.frustum_near
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

    def excludes_boxes(self, centers: np.ndarray, axes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """`excludes` for n boxes at once: centres (n, 3), axes (n, 3, 3), half-sizes (n, 3)."""
        reach = (np.abs(self.planes @ axes) @ sizes[:, :, None])[:, :, 0]  # (n, 6)
        dist = (centers - self.eye) @ self.planes.T + self.offsets
        return (dist < -reach - _MARGIN).any(axis=1)


class _TableShadow:
    """The points the opaque table box hides from an eye: the segment from the eye to the point enters
    the box (shrunk by _MARGIN) beyond the near clipping plane, before reaching the point. The set is
    convex, so a convex shape is hidden whole when all its vertices are."""

    def __init__(self, view: _Frustum, lo: np.ndarray, hi: np.ndarray):
        self.view, self.lo, self.hi = view, lo + _MARGIN, hi - _MARGIN

    def hides(self, points: np.ndarray) -> np.ndarray:
        """For points (..., 3): hidden by the table."""
        eye = self.view.eye
        ray = points - eye
        ray = np.where(ray == 0, 1e-30, ray)  # a ray parallel to a slab: its bounds become +-huge
        t1, t2 = (self.lo - eye) / ray, (self.hi - eye) / ray
        enter = np.maximum(np.minimum(t1, t2).max(axis=-1), 0.0)
        leave = np.maximum(t1, t2).min(axis=-1)
        depth = enter * (ray @ self.view.forward)
        return (enter < leave) & (enter < 1.0) & (depth >= self.view.near + _MARGIN)


def _clipped_below(points: np.ndarray, edges: np.ndarray, floor_z: float) -> np.ndarray:
    """The vertices of a convex shape's part at or below z = floor_z: its vertices there and the points
    where its edges cross the plane (the shape given by its vertices and edges)."""
    below = points[:, 2] <= floor_z + _MARGIN
    a, b = points[edges[:, 0]], points[edges[:, 1]]
    crossing = (a[:, 2] - floor_z) * (b[:, 2] - floor_z) < 0
    a, b = a[crossing], b[crossing]
    t = (floor_z - a[:, 2]) / (b[:, 2] - a[:, 2])
    return np.concatenate([points[below], a + t[:, None] * (b - a)])


class _FloorView:
    """What a camera that sees the floor can show, directly and in the floor (module docstring)."""

    def __init__(self, sim, table: int, floor: int):
        self.sim, self.table, self.floor = sim, table, floor
        self.hulls: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.cache: dict[int, tuple[bytes, bool, bool]] = {}

    def drop_hidden_geoms(self, scn, aspect: float) -> None:
        """Remove from `scn` (updated for a perspective camera) every model geom that shows neither
        directly nor in the floor's reflection."""
        import mujoco

        cam = _render_camera(scn)
        if cam.orthographic:
            return
        direct, mirror = self._hidden(_Frustum(cam, aspect))
        hidden = direct & mirror
        _keep_geoms(scn, lambda g: g.objtype != mujoco.mjtObj.mjOBJ_GEOM or not hidden[g.objid])

    def _hidden(self, view: _Frustum) -> tuple[np.ndarray, np.ndarray]:
        """Per model geom: hidden from the camera directly, and hidden in the floor's reflection. Boxes
        first (all geoms at once); a mesh whose box is partly hidden gets its convex hull's verdict."""
        import mujoco

        m, d = self.sim.model._model, self.sim.data._data
        n = m.ngeom
        shadow = _TableShadow(view, d.geom_xpos[self.table] - m.geom_size[self.table],
                              d.geom_xpos[self.table] + m.geom_size[self.table])
        floor_z = float(d.geom_xpos[self.floor][2])
        flip, shift = np.array([1.0, 1.0, -1.0]), np.array([0.0, 0.0, 2 * floor_z])
        rot = d.geom_xmat.reshape(n, 3, 3)
        center = d.geom_xpos + np.einsum("nij,nj->ni", rot, m.geom_aabb[:, :3])
        size = m.geom_aabb[:, 3:]
        corners = center[:, None, :] + np.einsum("nij,ncj->nci", rot, _BOX_CORNERS[None] * size[:, None, :])
        corner_hidden = shadow.hides(corners)  # (n, 8)
        direct = view.excludes_boxes(center, rot, size) | corner_hidden.all(axis=1)
        # mirror images, clipped at the floor: their corners below it and their edges' crossings of it
        mirrored = corners * flip + shift
        below = mirrored[:, :, 2] <= floor_z + _MARGIN
        a, b = mirrored[:, _BOX_EDGES[:, 0]], mirrored[:, _BOX_EDGES[:, 1]]
        crossing = (a[:, :, 2] - floor_z) * (b[:, :, 2] - floor_z) < 0
        t = (floor_z - a[:, :, 2]) / np.where(crossing, b[:, :, 2] - a[:, :, 2], 1.0)
        points = np.concatenate([mirrored, a + t[:, :, None] * (b - a)], axis=1)  # (n, 20, 3)
        counted = np.concatenate([below, crossing], axis=1)
        points_hidden = shadow.hides(points)
        mirror = (points_hidden | ~counted).all(axis=1)  # also when nothing is below the floor
        mirror |= view.excludes_boxes(center * flip + shift, rot * flip[None, :, None], size)
        mirror_partly = (points_hidden & counted).any(axis=1)
        direct[[self.table, self.floor]] = False  # the occluder and the mirror are always drawn
        mirror[self.floor] = False
        meshes = m.geom_type == mujoco.mjtGeom.mjGEOM_MESH
        scene_key = view.eye.tobytes() + view.forward.tobytes() + d.geom_xpos[self.table].tobytes()
        for g in np.flatnonzero(meshes & ((~direct & corner_hidden.any(axis=1)) | mirror_partly)):
            key = d.geom_xpos[g].tobytes() + d.geom_xmat[g].tobytes() + scene_key
            cached = self.cache.get(g)
            if cached is None or cached[0] != key:  # a geom at rest keeps its verdicts
                points, edges = self._hull(g)
                world = d.geom_xpos[g] + points @ rot[g].T
                in_mirror = _clipped_below(world * flip + shift, edges, floor_z)
                cached = self.cache[g] = (key, bool(shadow.hides(world).all()), bool(shadow.hides(in_mirror).all()))
            direct[g] |= cached[1]
            mirror[g] |= cached[2]
        return direct, mirror

    def _hull(self, geom: int) -> tuple[np.ndarray, np.ndarray]:
        """A mesh geom's convex hull in its own frame: vertices and edges (computed once)."""
        if geom not in self.hulls:
            from scipy.spatial import ConvexHull

            m = self.sim.model._model
            mesh = m.geom_dataid[geom]
            first = m.mesh_vertadr[mesh]
            verts = m.mesh_vert[first:first + m.mesh_vertnum[mesh]].astype(np.float64)
            hull = ConvexHull(verts)
            index = {v: i for i, v in enumerate(hull.vertices)}
            edges = {tuple(sorted((index[a], index[b]))) for tri in hull.simplices
                     for a, b in ((tri[0], tri[1]), (tri[1], tri[2]), (tri[0], tri[2]))}
            self.hulls[geom] = verts[hull.vertices], np.array(sorted(edges))
        return self.hulls[geom]


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
