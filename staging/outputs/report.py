"""``report.html``: a self-contained page for the reader (stage, MIPs, lesion table, QC).

No scripts, no external resources: the MIP is embedded as a data URI, styles are inline, so the
file can be mailed, archived or opened offline.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from staging.outputs.mip import CATEGORY_COLORS, CATEGORY_LABELS

__all__ = ["render_report", "write_report"]

_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px;color:#222;
max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 8px;border-bottom:1px solid #ddd}
.stage{font-size:30px;font-weight:700;letter-spacing:.5px}
.grid{display:flex;gap:28px;flex-wrap:wrap;align-items:flex-start}
.kv td{padding:2px 14px 2px 0;vertical-align:top}.kv td:first-child{color:#666}
table.lesions{border-collapse:collapse;font-size:13px}
table.lesions th,table.lesions td{border-bottom:1px solid #e4e4e4;padding:4px 8px;text-align:right}
table.lesions th{background:#f4f4f4}table.lesions td.t{text-align:left}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
.review{background:#fff4e0;border-left:4px solid #e69f00;padding:8px 12px;margin:12px 0}
.ok{background:#eef7ee;border-left:4px solid #009e73;padding:8px 12px;margin:12px 0}
.small{font-size:12px;color:#666}img.mip{width:520px;max-width:100%;border:1px solid #ddd}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "&ndash;"
    return f"{float(value):.{digits}f}"


def _kv(rows: list[tuple[str, str]]) -> str:
    return "<table class='kv'>" + "".join(
        f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in rows) + "</table>"


def render_report(record: Mapping[str, Any], mip_png: bytes) -> str:
    """The HTML text of the report for a ``staging.json`` record and the MIP PNG bytes."""
    counts = record["counts_by_category"]
    review = record.get("review_reasons") or []
    ref = record.get("reference_suv") or {}
    if record["needs_review"]:
        review_html = ("<div class='review'><b>Needs review.</b><ul>"
                       + "".join(f"<li>{_e(r)}</li>" for r in review) + "</ul></div>")
    else:
        review_html = "<div class='ok'>No finding needs review under the configured rules.</div>"
    stage_rows = [
        ("miTNM", f"<b>{_e(record['mitnm'])}</b> (PROMISE v1; pelvic boundary "
                  f"{_e(record.get('pelvic_boundary'))})"),
        ("Study group", _e(record["group"])),
        ("Fossa / extra-fossa", _e(record["emmett_group"])),
        ("Lesions (staged)", f"{record['lesion_count']} (bin {_e(record['lesion_count_bin'])}); "
                             f"equivocal {counts.get('equivocal', 0)}"),
        ("Pelvic node regions", _e(", ".join(record.get("pelvic_node_regions") or []) or "none")),
        ("Bone pattern", _e(record.get("bone_pattern"))),
        ("PSMA-TV", f"{_num(record['psma_tv_ml'])} mL"),
        ("TL-PSMA", f"{_num(record['tl_psma'])} SUV&middot;mL"),
        ("Highest miPSMA score", _e(record.get("max_mipsma_score")
                                    if record.get("max_mipsma_score") is not None else "none")),
    ]
    count_rows = [(CATEGORY_LABELS[c],
                   f"<span class='swatch' style='background:{CATEGORY_COLORS[c]}'></span>"
                   f"{counts.get(c, 0)}") for c in CATEGORY_COLORS]
    ref_rows = [(name.replace("_", " "), _num(ref.get(name)) if ref.get(name) is not None
                 else "not measured") for name in ("blood_pool", "liver", "parotid", "spleen")
                if name in ref]
    provenance = record.get("suv_provenance") or {}
    qc_rows = [
        ("Patient", _e(record["patient_id"])),
        ("Study", _e(record["study_instance_uid"])),
        ("PET series", _e((record.get("series") or {}).get("pet"))),
        ("CT series", _e((record.get("series") or {}).get("ct"))),
        ("SUV", _e(f"{provenance.get('suv_type', '?')} via {provenance.get('branch', '?')}")),
        ("Anatomy", _e(record.get("anatomy_provider"))
         + (f" (flags: {_e(', '.join(record.get('anatomy_flags') or []))})"
            if record.get("anatomy_flags") else "")),
        ("Lesion method", _e(record.get("lesion_method"))),
        ("Configuration", f"hash <code>{_e(record['config_hash'])}</code>"),
        ("Software", f"psma-stage {_e(record['software_version'])}, schema "
                     f"{_e(record['schema_version'])}"),
    ]
    lesion_rows = []
    for lesion in record["lesions"]:
        colour = CATEGORY_COLORS.get(lesion["category"], "#000")
        x, y, z = lesion["centroid_mm"]
        note = lesion.get("equivocal_reason") or ""
        lesion_rows.append(
            "<tr>"
            f"<td>{lesion['id']}</td>"
            f"<td class='t'><span class='swatch' style='background:{colour}'></span>"
            f"{_e(lesion['category'])}</td>"
            f"<td class='t'>{_e(lesion['region'])}</td>"
            f"<td>{_num(lesion['suv_max'], 1)}</td><td>{_num(lesion['suv_mean'], 1)}</td>"
            f"<td>{_num(lesion['suv_peak'], 1)}</td><td>{_num(lesion['volume_ml'])}</td>"
            f"<td>{_num(lesion['tl_psma'], 1)}</td>"
            f"<td>{_e(lesion['mipsma_score'])}</td>"
            f"<td>{x:.0f}, {y:.0f}, {z:.0f}</td>"
            f"<td class='t'>{_e(note)}</td>"
            "</tr>")
    table = ("<table class='lesions'><tr><th>#</th><th>category</th><th>region</th>"
             "<th>SUVmax</th><th>SUVmean</th><th>SUVpeak</th><th>volume mL</th>"
             "<th>TL-PSMA</th><th>miPSMA</th><th>centroid LPS mm</th><th>note</th></tr>"
             + "".join(lesion_rows) + "</table>") if lesion_rows else "<p>No lesions found.</p>"
    data_uri = "data:image/png;base64," + base64.b64encode(mip_png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>PSMA PET/CT staging &ndash; {_e(record['patient_id'])}</title>
<style>{_CSS}</style></head>
<body>
<h1>PSMA PET/CT staging report</h1>
<div class="small">Patient {_e(record['patient_id'])} &middot; automated research staging by
psma-stage {_e(record['software_version'])}; not a clinical report, to be read with the
images.</div>
<p class="stage">{_e(record['mitnm'])} &nbsp;&middot;&nbsp; {_e(record['group'])}</p>
{review_html}
<div class="grid">
<div><img class="mip" src="{data_uri}" alt="Anterior and lateral PET maximum-intensity
projections with lesions outlined by category"></div>
<div><h2>Stage</h2>{_kv(stage_rows)}
<h2>Lesions by category</h2>{_kv(count_rows)}
<h2>Reference SUVmean</h2>{_kv(ref_rows)}</div>
</div>
<h2>Lesions</h2>
{table}
<h2>Quality and provenance</h2>
{_kv(qc_rows)}
</body></html>
"""


def write_report(record: Mapping[str, Any], mip_png: Path, path: Path) -> Path:
    """Write ``report.html`` with ``mip_png`` embedded; returns ``path``."""
    path.write_text(render_report(record, mip_png.read_bytes()), encoding="utf-8")
    return path
