"""Importers of other NeRF tools' files: each turns one native format into a ``LoadedField``
holding that tool's own field (its activations, widths and frame). Chosen by content in
pvdal/io/formats.py; see docs/import_export.md."""
