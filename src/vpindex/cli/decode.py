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
from vpindex.cli.errors import bad_option, printable
from vpindex.cli.limits import MAX_DECODE_INPUT_BYTES
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
    short: list[int] = []  # bytes a slow call needed beyond the input given
    if ctl.fast:
        block = data.ljust(16 + XMM_INPUT_BYTES, b"\0")
        rdx = int.from_bytes(block[0:8], "little")
        r8 = int.from_bytes(block[8:16], "little")
        xmm = block[16:]

        def view(gpa: int, n: int) -> memoryview | None:
            return None
    else:
        rdx, r8, xmm = 0, 0, bytes(XMM_INPUT_BYTES)
        memory = memoryview(data)

        def view(gpa: int, n: int) -> memoryview | None:
            if gpa >= 0 and gpa + n <= len(memory):
                return memory[gpa : gpa + n]
            short.append(gpa + n)
            return None

    try:
        request = decode_hypercall(rcx, rdx, r8, xmm, view, Features.all())
    except HvError as err:
        if short:
            name = ctl.call.name if ctl.call is not None else f"call {ctl.code:#x}"
            bad_option(
                "--input",
                f"{len(data)} byte(s) given; {name} reads {max(short)} bytes of input "
                "(the input block is the bytes at the input GPA)",
            )
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


def decode(
    control: Annotated[
        str, typer.Option("--control", "-c", metavar="RCX", help="The control word (RCX).")
    ],
    input_hex: Annotated[
        str,
        typer.Option(
            "--input",
            "-i",
            metavar="HEX",
            help="Input block as hex: the bytes at the input GPA (slow call), or RDX, R8, "
            "XMM0-XMM5 in order, little-endian (fast call; registers not given are 0).",
        ),
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Decode a hypercall: control word fields, call name, the decoded input (VP set as VP
    indexes), or the HV_STATUS a hypervisor would return and why."""
    rcx = parse_int(control, "--control")
    if not 0 <= rcx < 1 << 64:
        bad_option("--control", f"{printable(control)!r} is not a u64 (0 .. 0xffffffffffffffff)")
    digits = input_hex.replace(" ", "").replace("_", "")
    if len(digits) > 2 * MAX_DECODE_INPUT_BYTES:
        bad_option("--input", f"{len(digits) // 2} bytes; at most {MAX_DECODE_INPUT_BYTES}")
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        bad_option("--input", f"{printable(input_hex, 60)!r} is not hex bytes")
    if Control.decode(rcx).fast:
        regs = 16 + XMM_INPUT_BYTES
        if data and (len(data) % 8 or not 16 <= len(data) <= regs):
            bad_option(
                "--input",
                f"{len(data)} byte(s) for a fast call; give whole 8-byte registers in order, RDX "
                f"and R8 at least (16 bytes) and XMM0-XMM5 at most ({regs} bytes)",
            )
    info = _explain(rcx, data)
    if as_json:
        typer.echo(json.dumps(info))
    else:
        _render(Console(), info)
