"""Importers of other NeRF tools' files: each turns one native format into a ``LoadedField``
holding that tool's own field (its activations, widths and frame). Chosen by content in
pvdal/io/formats.py; see docs/import_export.md. Today: ``tensorf`` (TensoRF ``.th``), ``svox2``
(svox2 / Plenoxels ``.npz``), ``ingp`` (instant-ngp ``.msgpack`` / ``.ingp``), ``torch_ngp``
(torch-ngp ``.pth``); pvdal/io/native_export.py writes the first three back."""
