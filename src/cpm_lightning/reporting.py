"""Per-stage results: one dict layout (metrics.json) and one table, shared by train and evaluate."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from cpm_lightning.data.h5format import verify


def stage_metrics(logged: dict, prefix: str, module) -> dict:
    """metrics.json body from the values Lightning logged under `prefix` ("val" or "test")."""
    num_stages = module.model.num_stages
    stages = [
        {
            "stage": t,
            "loss": float(logged[f"{prefix}/loss_stage{t}"]),
            "pck": float(logged[f"{prefix}/pck_stage{t}"]),
            "receptive_field_px": module.receptive_fields[t - 1],
        }
        for t in range(1, num_stages + 1)
    ]
    return {
        "protocol": module.protocol.name,
        "protocol_definition": module.protocol.description,
        "stages": stages,
        "pck_final_stage": stages[-1]["pck"],
        "pck_mean_over_stages": sum(s["pck"] for s in stages) / num_stages,
        "loss_total": float(logged[f"{prefix}/loss"]),
    }


def left_right_convention(data_file: str) -> str | None:
    """The converter's left/right choice recorded in the file's provenance (FLIC's --left-right:
    "release" or "as_annotated"); None for data whose converter has no such choice."""
    return verify(data_file)["provenance"].get("options", {}).get("left_right")


def print_stage_table(metrics: dict) -> None:
    table = Table(title=f"{metrics['experiment']}: {metrics['split']} split, {metrics['protocol_definition']}")
    for column in ("stage", "receptive field (px)", "loss", "PCK"):
        table.add_column(column, justify="right")
    for s in metrics["stages"]:
        table.add_row(str(s["stage"]), str(s["receptive_field_px"]), f"{s['loss']:.4f}", f"{s['pck']:.4f}")
    Console().print(table)
