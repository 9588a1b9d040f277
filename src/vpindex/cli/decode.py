"""``vpindex decode``: explain a hypercall as the hypervisor sees it."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from vpindex.abi import (
    XMM_INPUT_BYTES,
    Control,
    Features,
    FlushFlags,
    GvaRange,
    HvError,
    HvStatus,
    VpSet,
)
from vpindex.cli.app import app
from vpindex.cli.parsing import parse_int
from vpindex.engine import FlushRequest, GuestFault, decode_hypercall, header_fields

__all__ = ["decode"]


def _flag_names(flags: int) -> list[str]:
    names = [f.name or "" for f in FlushFlags if flags & f]
    unknown = flags & ~sum(FlushFlags)
    if unknown:
        names.append(f"reserved:{unknown:#x}")
    return names


def _explain(rcx: int, data: bytes) -> dict[str, Any]:
    ctl = Control.decode(rcx)
    out: dict[str, Any] = {
        "control": {
            "value": f"{rcx:#x}",
            "code": f"{ctl.code:#06x}",
            "fast": ctl.fast,
            "var_header_qwords": ctl.var_header_qwords,
            "rep_count": ctl.rep_count,
            "rep_start": ctl.rep_start,
            "reserved_bits_set": Control.reserved_bits_set(rcx),
        },
        "call": ctl.call.name if ctl.call is not None else None,
    }
    if ctl.fast:
        block = data[: 16 + XMM_INPUT_BYTES].ljust(16 + XMM_INPUT_BYTES, b"\0")
        rdx = int.from_bytes(block[0:8], "little")
        r8 = int.from_bytes(block[8:16], "little")
        xmm = block[16:]

        def view(gpa: int, n: int) -> memoryview | None:
            return None
    else:
        rdx, r8, xmm = 0, 0, bytes(XMM_INPUT_BYTES)
        memory = memoryview(data)

        def view(gpa: int, n: int) -> memoryview | None:
            return memory[gpa : gpa + n] if gpa >= 0 and gpa + n <= len(memory) else None

    try:
        request = decode_hypercall(rcx, rdx, r8, xmm, view, Features.all())
    except HvError as err:
        out.update(status=err.status.name, status_code=int(err.status), reason=err.reason)
        out["header"] = header_fields(ctl.code, err.header)
        return out
    except GuestFault as fault:
        out.update(status=None, fault=fault.vector, reason=fault.reason)
        return out
    out.update(status=HvStatus.SUCCESS.name, status_code=0, reason="the call is well formed")
    out["header"] = header_fields(ctl.code, request.header)
    vp_set: VpSet | None = request.vp_set
    decoded: dict[str, Any] = {"vp_indexes": "all" if vp_set is None else list(vp_set)}
    if isinstance(request, FlushRequest):
        decoded["address_space"] = f"{request.address_space:#x}"
        decoded["flags"] = _flag_names(request.flags)
        decoded["full_flush"] = not request.entries
        decoded["gva_ranges"] = [
            {"gva": f"{r.gva:#x}", "pages": r.additional_pages + 1}
            for r in map(GvaRange.decode, request.entries)
        ]
        decoded["reps_completed"] = request.reps
    else:
        decoded["vector"] = f"{request.vector:#x}"
    out["input"] = decoded
    return out


def _render(console: Console, info: dict[str, Any]) -> None:
    table = Table(title=f"control {info['control']['value']}", show_header=False)
    for key, value in info["control"].items():
        if key != "value":
            table.add_row(key, str(value))
    table.add_row("call", str(info["call"] or "unknown"))
    console.print(table)
    if info.get("fault") is not None:
        console.print(f"[bold red]guest fault: vector {info['fault']}[/] ({info['reason']})")
        return
    colour = "green" if info["status_code"] == 0 else "red"
    console.print(
        f"[bold {colour}]HV_STATUS_{info['status']} ({info['status_code']})[/]: {info['reason']}"
    )
    for key, value in info.get("input", {}).items():
        console.print(f"  {key}: {value}")


@app.command()
def decode(
    control: Annotated[str, typer.Option("--control", "-c", help="The control word (RCX).")],
    input_hex: Annotated[
        str,
        typer.Option(
            "--input",
            "-i",
            help="Input block as hex: the bytes at the input GPA (slow call), or RDX, R8, "
            "XMM0-XMM5 in order (fast call).",
        ),
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Decode a hypercall: control word fields, call name, the decoded input (VP set as VP
    indexes), or the HV_STATUS a hypervisor would return and why."""
    rcx = parse_int(control, "--control")
    if not 0 <= rcx < 1 << 64:
        raise typer.BadParameter(f"--control must be a u64, got {control}")
    try:
        data = bytes.fromhex(input_hex.replace(" ", "").replace("_", ""))
    except ValueError:
        raise typer.BadParameter(f"--input must be hex bytes, got {input_hex!r}") from None
    info = _explain(rcx, data)
    if as_json:
        typer.echo(json.dumps(info))
    else:
        _render(Console(), info)
