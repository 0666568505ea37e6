"""Writers of a staged study's outputs (schema in ``docs/outputs.md``).

* :mod:`staging.outputs.records` -- ``staging.json`` and ``lesions.csv`` (versioned schema);
* :mod:`staging.outputs.seg` -- ``lesions_seg.dcm``, a DICOM Segmentation on the source PET;
* :mod:`staging.outputs.mip` -- ``mip.png``, anterior and lateral MIPs with lesion outlines;
* :mod:`staging.outputs.report` -- ``report.html``, self-contained.

The NIfTI label maps are written with :func:`imaging.nifti.write_nifti`.
"""

from __future__ import annotations

from staging.outputs.mip import CATEGORY_COLORS, CATEGORY_LABELS, render_mip
from staging.outputs.records import (
    LESION_COLUMNS,
    SCHEMA_VERSION,
    build_record,
    lesion_rows,
    write_json,
    write_lesions_csv,
)
from staging.outputs.report import render_report, write_report
from staging.outputs.seg import write_dicom_seg

__all__ = [
    "CATEGORY_COLORS",
    "CATEGORY_LABELS",
    "LESION_COLUMNS",
    "SCHEMA_VERSION",
    "build_record",
    "lesion_rows",
    "render_mip",
    "render_report",
    "write_dicom_seg",
    "write_json",
    "write_lesions_csv",
    "write_report",
]
