"""Issue 21's targets over many full-scale runs: one row per ``bench/generalize.py`` result, then how many runs
meet each target. The "Where the issue stands" table of docs/generalize.md is this script's output:

    python bench/targets_table.py RUN1/generalize.json RUN2/generalize.json ... [--names A B ...]

Columns: fine-tuned minus original with the run's 95% paired-bootstrap verdict (G: a gain, L: a loss, the interval
excluding 0; no letter: it includes 0); in-scene is fine-tuned / original sun3d RMSE (target <= 0.90x); concat is
concat / original RMSE, RedKitchen -> sun3d and in-scene (target <= 0.95x on both); "-": the run had no such eval.
Then, where a run recorded them, the sun3d evals' trivial predictors (``baselines``) as ratios to the original's RMSE.
The count table reads each run's own ``targets`` (``bench/generalize.py``'s ``targets``), so the two never disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generalize import HEADLINE  # noqa: E402

COLUMNS = ("run", "RK -> sun3d rmse", "aligned", "in-scene", "in-scene aligned", "corr recall@1", "CamVid mIoU",
           "flowers k-NN", "rooms seg", "rooms depth rmse / aligned", "concat", "evals lost")
TAG = {"gain": " G", "loss": " L"}


def _mean(e: dict, src: str, m: str) -> float:
    return e[src][m]["mean"]


def row(result: dict, name: str) -> list[str]:
    """The table row of one ``generalize.json``."""
    E, C = result["evals"], result["claims"]

    def diff(ev: str, m: str) -> str:
        if ev not in E or m not in E[ev]["original"]:
            return "-"
        d = _mean(E[ev], "finetuned", m) - _mean(E[ev], "original", m)
        return f"{d:+.3f}{TAG.get(C[ev]['finetuned-original'].get(m), '')}"

    def ratio(ev: str, src: str = "finetuned", verdict: bool = True) -> str:
        if ev not in E:
            return "-"
        r = _mean(E[ev], src, "rmse") / _mean(E[ev], "original", "rmse")
        return f"{r:.3f}x" + (TAG.get(C[ev][f"{src}-original"].get("rmse"), "") if verdict else "")

    lost = sum(C[ev]["finetuned-original"].get(m) == "loss" for ev in E for m in HEADLINE)
    return [name, diff("sun3d_depth_from_redkitchen", "rmse"), diff("sun3d_depth_from_redkitchen", "rmse_aligned"),
            ratio("sun3d_depth_in_scene"), diff("sun3d_depth_in_scene", "rmse_aligned"), diff("sun3d_corr", "recall1"),
            diff("camvid_seg", "miou"), diff("flowers_cls", "knn_top1"), diff("rooms_seg", "miou"),
            f"{diff('rooms_depth', 'rmse')} / {diff('rooms_depth', 'rmse_aligned')}",
            f"{ratio('sun3d_depth_from_redkitchen', 'concat', False)} / {ratio('sun3d_depth_in_scene', 'concat', False)}",
            str(lost)]


def run_name(result: dict, path: Path) -> str:
    """``recipe --set ...`` and the Stage 2 seed, from the run's recorded settings (else the folder's name)."""
    s = result.get("settings") or {}
    if "recipe" not in s:
        return path.parent.name
    sets = " ".join(x for x in s.get("set") or [] if not x.startswith("seed="))
    seed = (s.get("finetune") or {}).get("seed")
    return f"`{s['recipe']}`" + (f" `{sets}`" if sets else "") + (f", seed {seed}" if seed is not None else "")


def counts(results: list[dict]) -> list[tuple[str, int, int]]:
    """(target, runs meeting it, runs reporting it) in the order the runs first name them."""
    names: dict[str, list[int]] = {}
    for r in results:
        for k, v in r.get("targets", {}).items():
            names.setdefault(k, [0, 0])
            names[k][0] += bool(v)
            names[k][1] += 1
    return [(k, met, n) for k, (met, n) in names.items()]


def trivial_lines(results: list[dict]) -> list[str]:
    """For the sun3d depth evals: the trivial predictors' RMSE as a ratio to the original's (the first run that
    recorded them, ``bench/generalize.py``'s ``baselines``; the original's heads and the data are the same in every
    run), i.e. where the in-scene and concat ratios stand against a head that reads no image."""
    out = []
    for ev, label in (("sun3d_depth_from_redkitchen", "RedKitchen -> sun3d"), ("sun3d_depth_in_scene", "in-scene")):
        r = next((r for r in results if ev in r.get("baselines", {}) and ev in r.get("evals", {})), None)
        if r is None:
            continue
        o = r["evals"][ev]["original"]
        cells = [f"{k} {v['rmse'] / o['rmse']['mean']:.3f}x (aligned {v['rmse_aligned'] / o['rmse_aligned']['mean']:.3f}x)"
                 for k, v in r["baselines"][ev].items()]
        out.append(f"- {label}: trivial predictors' RMSE / the original's: {', '.join(cells)}")
    return ["", *out] if out else []


def table(paths: list[Path], names: list[str] | None = None) -> str:
    results = [json.loads(Path(p).read_text()) for p in paths]
    names = names or [run_name(r, Path(p)) for r, p in zip(results, paths)]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r, n)) + " |" for r, n in zip(results, names)]
    lines += trivial_lines(results)
    lines += ["", "| target | runs meeting it |", "|---|---|"]
    lines += [f"| {k} | {met} of {n} |" for k, met, n in counts(results)]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="generalize.json files of bench/generalize.py runs")
    ap.add_argument("--names", nargs="+", help="a row name per result (default: recipe, --set and seed)")
    a = ap.parse_args(argv)
    if a.names and len(a.names) != len(a.results):
        ap.error(f"--names: {len(a.names)} names for {len(a.results)} results")
    print(table(a.results, a.names))


if __name__ == "__main__":
    main()
