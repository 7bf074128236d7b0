"""A DiffReport as the text `refengine diff` prints: per prompt a layer table, the logits line and the greedy
continuations side by side. Colour (via click.style) is stripped by click.echo when stdout is not a tty;
the [[...]] brackets around the first differing token carry the same information without it."""

from __future__ import annotations

import click

from refengine.diff.report import DiffReport, GreedyDiff, LayerDiff, LogitsDiff, PromptReport

MARK = "<- first past tolerance"


def render(report: DiffReport) -> str:
    t = report.tolerance
    lines = [f"refengine diff: {report.model}",
             f"  against {report.against}: {report.reference}",
             f"  dtype {report.dtype}; tolerance ({t.source}): hidden states, per position, "
             f"rms(Δ) ≤ {t.hidden_atol:g} + {t.hidden_rtol:g}·rms(ref); logits |Δ| ≤ {t.logits_atol:g} + "
             f"{t.logits_rtol:g}·|ref|"]
    for i, p in enumerate(report.prompts):
        lines += [""] + render_prompt(p, i, len(report.prompts))
    n = len(report.prompts)
    verdict = (click.style("OK", fg="green", bold=True) + f": {n} prompt{'s' * (n != 1)} within tolerance"
               if report.ok else click.style("FAIL", fg="red", bold=True) +
               f": {sum(not p.ok for p in report.prompts)} of {n} prompts past tolerance")
    return "\n".join(lines + ["", f"result: {verdict}"])


def render_prompt(p: PromptReport, i: int, n: int) -> list[str]:
    text = p.prompt if len(p.prompt) <= 70 else p.prompt[:67] + "..."
    lines = [f"prompt {i + 1}/{n}: {_quote(text)} ({p.num_tokens} tokens)",
             f"  {'layer':<12} {'max |Δ|':>9}  {'rel err':>9}  {'cosine':>12}  {'tol used':>8}"]
    first = p.first_bad
    lines += [_layer_row(l, l is first) for l in p.layers]
    lines += _logits_lines(p.logits)
    lines += _greedy_lines(p.greedy)
    return lines


def _layer_row(l: LayerDiff, first: bool) -> str:
    row = f"  {l.name:<12} {l.max_abs:>9.3g}  {l.rel_err:>9.3g}  {_cosine(l.cosine):>12}  {_pct(l.tol_used):>8}"
    return row + ("  " + click.style(MARK, fg="red", bold=True) if first else "" if l.ok else "  !")


def _logits_lines(g: LogitsDiff) -> list[str]:
    status = "" if g.ok else "  " + click.style("past tolerance", fg="red", bold=True)
    return [f"  logits: max |Δ| {g.max_abs:.3g} ({_pct(g.tol_used)} of tolerance){status}",
            f"          KL(ref‖ours) per position: max {g.kl_max:.3g}, mean {g.kl_mean:.3g}; "
            f"top-1 agreement {g.top1_agree}/{g.positions} ({100 * g.top1_fraction:.0f}%)"]


def _greedy_lines(g: GreedyDiff | None) -> list[str]:
    if g is None:
        return ["  greedy: not compared (the dump has no greedy continuation)"]
    if g.compared == 0:
        return ["  greedy: not compared (0 tokens)"]
    same = g.compared if g.first_diff is None else g.first_diff + 1
    status = "" if g.ok else "  " + click.style("past tolerance", fg="red", bold=True)
    steps = (f"    log p of the {same} step{'s' * (same != 1)} with the same context: max |Δ| {g.steps_max_abs:.3g} "
             f"({_pct(g.steps_tol_used)} of tolerance), KL max {g.steps_kl_max:.3g}{status}")
    if g.first_diff is None:
        return [f"  greedy ({g.compared} tokens): identical", f"    {_quote(g.ours_rest)}", steps]
    verdict = ("a near tie: the distributions agree within tolerance, ok" if g.near_tie else
               click.style("not a near tie: the distributions disagree", fg="red", bold=True))
    o, r = g.ours_choice, g.ref_choice
    hi = lambda c: click.style(f"[[{c.text}]]", fg="yellow", bold=True)
    rest = lambda s, c: _quote(s[len(c.text):]) if s.startswith(c.text) else _quote(s)
    return [f"  greedy ({g.compared} tokens): first difference at token {g.first_diff}, {verdict}",
            f"    common: {_quote(g.prefix_text)}",
            f"    ours:   {hi(o)} {rest(g.ours_rest, o)}",
            f"    ref:    {hi(r)} {rest(g.ref_rest, r)}",
            f"    {'log p of':<14} {'ours':>10} {'ref':>10}",
            f"    {_quote(o.text):<14} {o.logprob_ours:>10.5f} {o.logprob_ref:>10.5f}   (ours' choice)",
            f"    {_quote(r.text):<14} {r.logprob_ours:>10.5f} {r.logprob_ref:>10.5f}   (ref's choice)",
            steps]


def _cosine(c: float) -> str:
    """Near 1 the digits that matter are in 1 − cos: `1 - 5.2e-13` reads better than 1.000000000000."""
    if c == 1:
        return "1"
    return f"1 - {1 - c:.2g}" if 0.999 < c < 1 else f"{c:.6f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x == x and x < 1e6 else "inf" if x == x else "nan"


def _quote(s: str) -> str:
    """A one-line, visibly delimited rendering (newlines and tabs escaped)."""
    return '"' + s.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace('"', '\\"') + '"'
