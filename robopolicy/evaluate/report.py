"""`report.html`: an evaluation to open in a browser — summary, per-episode table, plot, videos.

The page is one static file next to `eval.json`; it links the evaluation's own `summary.png` and
`videos/*.mp4` by relative path (H.264 in MP4, which every browser plays), so the folder can be
copied or served as it is. It carries no script: nothing to load from a network, nothing to fail.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Sequence

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.summary { display: flex; gap: 2em; align-items: baseline; flex-wrap: wrap; }
.big { font-size: 2.4em; font-weight: 600; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: right; }
th { background: #f4f4f4; } td.task { text-align: left; }
tr.failure td.result { color: #b00020; } tr.success td.result { color: #1b7f3b; }
.videos { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figcaption { font-size: 0.85em; text-align: center; }
video { width: 320px; background: #000; }
"""


def _pct(x: float) -> str:
    return f"{100.0 * x:.0f}%"


def render_report(summary: dict, episodes: Sequence[dict], out_dir: Path) -> str:
    """The page for an evaluation: `summary` is eval.json's content, `episodes` its per-episode rows."""
    lo, hi = summary["ci95"]
    policy = summary["policy"]
    timing = summary.get("timing") or {}
    rate = timing.get("episodes_per_min")
    facts = [
        ("environment", summary["env"]),
        ("checkpoint", summary["checkpoint"]["path"]),
        ("policy", f"{policy['head']}, {policy['inference_steps']} inference steps, executes {policy['n_action_steps']}"
                   f" of {policy['horizon']} actions per chunk ({policy['execution']})"),
        ("seeds", f"{summary['seeds'][0]}-{summary['seeds'][-1]}" if summary["seeds"] else "none"),
        ("mean episode length", f"{summary['mean_episode_length']:.0f} steps" if summary["mean_episode_length"] else "-"),
        ("throughput", f"{rate:.1f} episodes/min with {timing.get('workers')} workers" if rate else "-"),
        ("command", summary.get("command", "")),
    ]
    composed = summary.get("composed_with")
    if composed:
        facts.insert(2, ("composed with", f"{', '.join(composed['checkpoints'])} (weights {composed['weights']})"))
    rows = []
    for e in episodes:
        result = "crashed" if e.get("error") else ("success" if e["success"] else "failure")
        css = "failure" if result != "success" else "success"
        video = f'<a href="{escape(_relative(e["video"], out_dir))}">video</a>' if e.get("video") else ""
        rows.append(f'<tr class="{css}"><td>{e["seed"]}</td><td class="result">{result}</td><td>{e["length"]}</td>'
                    f'<td class="task">{escape(e.get("task") or "")}</td><td>{video}</td></tr>')
    videos = []
    for e in episodes:
        if e.get("video"):
            label = f"seed {e['seed']}: {'success' if e['success'] else 'failure'}, {e['length']} steps"
            videos.append(f'<figure><video controls muted preload="auto" src="{escape(_relative(e["video"], out_dir))}">'
                          f'</video><figcaption>{escape(label)}</figcaption></figure>')
    per_task = summary.get("per_task") or {}
    task_rows = "".join(f'<tr><td class="task">{escape(t)}</td><td>{r["successes"]}/{r["episodes"]}</td>'
                        f'<td>{_pct(r["success_rate"])} ({_pct(r["ci95"][0])}-{_pct(r["ci95"][1])})</td></tr>'
                        for t, r in per_task.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Evaluation: {escape(summary['env'])}</title>
<style>{_STYLE}</style></head>
<body>
<h1>Evaluation of {escape(policy['head'])} policy on {escape(summary['env'])}</h1>
<section id="summary" class="summary">
<div class="big">{_pct(summary['success_rate'])}</div>
<div>{summary['successes']} of {summary['episodes']} episodes succeeded (95% interval {_pct(lo)}-{_pct(hi)})</div>
</section>
<table>{''.join(f'<tr><th>{escape(k)}</th><td class="task">{escape(str(v))}</td></tr>' for k, v in facts)}</table>
<h2>Success</h2>
<img src="summary.png" alt="success rate and episode lengths" width="900">
{f'<h2>Per instruction</h2><table><tr><th>task</th><th>successes</th><th>rate (95% interval)</th></tr>{task_rows}</table>' if len(per_task) > 1 else ''}
<h2>Rollouts</h2>
<div class="videos">{''.join(videos) or '<p>No videos were recorded (--videos 0).</p>'}</div>
<h2>Episodes</h2>
<table id="episodes"><tr><th>seed</th><th>result</th><th>length</th><th>task</th><th></th></tr>
{''.join(rows)}
</table>
</body></html>
"""


def _relative(path: str, out_dir: Path) -> str:
    p = Path(path)
    try:
        return p.resolve().relative_to(out_dir.resolve()).as_posix()
    except ValueError:
        return p.as_uri() if p.is_absolute() else p.as_posix()


def write_report(out_dir: Path, summary: dict, episodes: Sequence[dict]) -> Path:
    path = Path(out_dir) / "report.html"
    path.write_text(render_report(summary, episodes, Path(out_dir)), encoding="utf-8")
    return path
