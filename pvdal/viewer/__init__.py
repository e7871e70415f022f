"""Live web viewer (viser): ``view.py`` for any field, ``view=true`` for a running train/distill.

camera.py: browser camera <-> pvdal camera (OpenGL c2w + pinhole intrinsics) and quaternions;
camera_path.py: camera-path JSON (pvdal's keyframes + nerfstudio's ``camera_path``);
render.py: one camera of a field through pvdal's renderer, progressive and cancellable;
server.py: the viser page; live.py: the training callback (teacher | student | difference);
worker.py: rendering in a child process (no GIL shared with the training loop).
"""
