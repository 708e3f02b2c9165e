#!/usr/bin/env bash
# The package as a user installs a release: build the wheel, install it into a fresh virtualenv outside the
# checkout, and from an empty folder: the shipped demo found by name, a study written by `nas-bert init` from the
# shipped tiny one, and that study run end to end.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip wheel -q --no-deps -w "$tmp/dist" "$root"
python3 -m venv "$tmp/venv"
. "$tmp/venv/bin/activate"
pip install -q torch==2.13.0 "$tmp"/dist/nas_bert-*.whl
mkdir "$tmp/work"
cd "$tmp/work"
python - <<'PY'
import nas_bert, pathlib
where = pathlib.Path(nas_bert.__file__).parent
assert "site-packages" in str(where), f"nas_bert imported from {where}, not the installed wheel"
assert (where / "search_spaces" / "auto.yaml").is_file() and (where / "studies" / "demo.yaml").is_file(), where
PY
# the shipped demo, by name; its database would be written here (a status writes none)
status="$(nas-bert status --config demo)"
grep -qF "db sqlite:///$PWD/demo.db" <<< "$status" || { echo "$status"; exit 1; }
test ! -e demo.db
nas-bert init smoke --from tiny --budget-ms 5
cat >> smoke.yaml <<'YAML'
  trials: 24
  finalist_steps: 2
latency: {seq_len: 32, min_run_time: 0.005, calibration_archs: 3, calibration_one_width: 2}
distill: {steps: 4, batch_size: 4, warmup_steps: 1, eval_every: 4, checkpoint_every: 2, val_batches: 2}
YAML
nas-bert run --config smoke.yaml > run.out
grep -q "students in" run.out || { cat run.out; exit 1; }
echo "wheel: installed outside the checkout; the shipped demo found by name, 'nas-bert init' and 'nas-bert run' worked"
