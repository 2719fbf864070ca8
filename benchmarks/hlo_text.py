"""The text of a compiled XLA module, read for the benchmarks: its computations, the while loops
that run one time step per iteration, the operations of a loop body (fused computations included)
and the Python function each operation came from. ``benchmarks/physics.py`` counts the kernels per
step with it, ``benchmarks/gradient_ops.py`` the operations."""

from __future__ import annotations

import collections
import re
from pathlib import Path

#: operations that move or name data rather than compute on it (not counted as elementwise work)
NOT_COMPUTE = {"parameter", "constant", "bitcast", "broadcast", "get-tuple-element", "tuple", "copy",
               "fusion", "while", "call", "custom-call", "after-all", "opt-barrier"}
#: what XLA's CPU runtime launches as a kernel (a thunk) of its own
KERNELS = ("fusion", "copy", "custom-call")


class HloText:
    """The computations of an HLO module's text and the source locations of its operations."""

    # "%name = SHAPE opcode(" where SHAPE is one token or a parenthesised tuple of shapes
    _OP = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = (?:\(.*?\)|\S+) ([a-z][\w\-]*)\(")

    def __init__(self, text: str):
        self.computations: dict[str, list[str]] = {}
        current = None
        for line in text.split("\n"):
            head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
            if head and not line.startswith(" "):
                current = head.group(1)
                self.computations[current] = []
            elif current is not None:
                self.computations[current].append(line)
        self.frames = self._frames(text)

    @staticmethod
    def _frames(text: str) -> dict[int, str]:
        """stack_frame_id -> "file:function" of that frame (the tables XLA prints before the module)."""
        tables: dict[str, dict[int, str]] = collections.defaultdict(dict)
        section = None
        for line in text.split("\n"):
            if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
                section = line
            elif section and re.match(r"^\d+ ", line):
                key, value = line.split(" ", 1)
                tables[section][int(key)] = value
            elif line.strip():
                section = None
        files = {k: Path(v.strip('"')).name for k, v in tables["FileNames"].items()}
        functions = {k: v.strip('"') for k, v in tables["FunctionNames"].items()}
        locations = {}
        for k, v in tables["FileLocations"].items():
            m = re.search(r"file_name_id=(\d+) function_name_id=(\d+)", v)
            if m:
                locations[k] = f"{files.get(int(m.group(1)), '?')}:{functions.get(int(m.group(2)), '?')}"
        return {k: locations.get(int(m.group(1)), "?") for k, v in tables["StackFrames"].items()
                if (m := re.search(r"file_location_id=(\d+)", v))}

    def innermost_loops(self) -> list[str]:
        """Bodies of the while loops that contain no loop themselves, in the order of the text."""
        bodies = []
        for lines in self.computations.values():
            for line in lines:
                if " while(" in line:
                    b = re.search(r"body=%?([\w.\-]+)", line)
                    if b and b.group(1) in self.computations and b.group(1) not in bodies:
                        bodies.append(b.group(1))
        return [b for b in bodies if not any(" while(" in line for line in self.computations[b])]

    def opcodes(self, name: str) -> collections.Counter:
        """The opcodes of computation ``name`` itself (a fusion counts once, as one kernel)."""
        return collections.Counter(m.group(1) for line in self.computations[name] if (m := self._OP.match(line)))

    def kernels(self, name: str) -> int:
        """Kernels launched per run of computation ``name`` (a loop body: per step)."""
        ops = self.opcodes(name)
        return sum(ops[k] for k in KERNELS)

    def count(self, name: str, by_function: bool = False) -> collections.Counter:
        """Elementwise operations of computation ``name``, fused computations included (each
        fusion counts the operations it executes): by opcode, or by source function."""
        counts: collections.Counter = collections.Counter()
        for line in self.computations[name]:
            m = self._OP.match(line)
            if not m:
                continue
            op = m.group(1)
            if op == "fusion":
                for callee in re.findall(r"calls=%?([\w.\-]+)", line):
                    counts.update(self.count(callee, by_function))
                continue
            if op in NOT_COMPUTE:
                continue
            if by_function:
                frame = re.search(r"stack_frame_id=(\d+)", line)
                counts[self.frames.get(int(frame.group(1)), "?") if frame else "?"] += 1
            else:
                counts[op] += 1
        return counts
