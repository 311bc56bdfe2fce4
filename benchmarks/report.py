"""The benchmark report: one `NAME value=X target=Y PASS|FAIL` line per target, then the
raw figures behind them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Report:
    lines: list[str] = field(default_factory=list[str])
    raw_lines: list[str] = field(default_factory=list[str])
    failed: bool = False

    def target(
        self,
        name: str,
        value: float,
        target: float,
        *,
        higher_is_better: bool,
        errors: int | None = None,
    ) -> None:
        ok = value >= target if higher_is_better else value <= target
        if errors is not None:
            ok = ok and errors == 0
        self.failed = self.failed or not ok
        bound = ">=" if higher_is_better else "<="
        extra = f" errors={errors}" if errors is not None else ""
        line = (
            f"{name} value={value:.3g} target={bound}{target:g}{extra} {'PASS' if ok else 'FAIL'}"
        )
        self.lines.append(line)
        print(line, flush=True)

    def raw(self, line: str) -> None:
        self.raw_lines.append(line)
        print(f"  {line}", flush=True)

    def summary(self) -> str:
        return "\n".join([*self.lines, "", "raw figures:", *(f"  {r}" for r in self.raw_lines)])
