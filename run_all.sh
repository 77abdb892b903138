#!/usr/bin/env bash
# Run the whole reproduction: every numbered notebook with papermill, HTML renders with nbconvert,
# the claims table, and a wall-time table. Sets up .venv on a fresh machine if needed.
#
#   ./run_all.sh                    # default scale: the embedded reproduction (regenerates figures/)
#   ./run_all.sh --scale smoke      # seconds per notebook (CI); writes under outputs/smoke/
#   ./run_all.sh --scale long       # the default notebooks with longer budgets (hours on CPU; outputs/long/)
#   ./run_all.sh --scale paper      # the papers' models and budgets (GPU and a model hub needed)
#   ./run_all.sh --only 04          # one notebook (repeatable: --only 02 --only 03)
#   ./run_all.sh --no-html          # skip the nbconvert renders
#   ./run_all.sh --no-site          # skip the static site (site/ at default scale; needs the `site` extra)
#   ./run_all.sh --lanes 1          # one notebook at a time (default: 2 at a time on a CPU, see below)
#
# Two notebooks at a time, one CPU thread each (--lanes, default 2 with at least 2 CPUs and no GPU): notebooks
# share runs, and a run one of them is training is claimed (saelib.lab.run_claims), so the other trains the runs
# nobody has claimed and waits for the rest; results do not depend on which notebook trains a run. The biggest
# notebooks start first. With --lanes 1 each notebook trains its sweeps in worker processes (saelib.lab.workers).
set -uo pipefail
cd "$(dirname "$0")"

scale=default; only=(); html=1; build_site=1; lanes="${SAELIB_LANES:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="${2:-}"; shift 2 ;;
    --scale=*) scale="${1#*=}"; shift ;;
    --only) only+=("${2:-}"); shift 2 ;;
    --only=*) only+=("${1#*=}"); shift ;;
    --no-html) html=0; shift ;;
    --no-site) build_site=0; shift ;;
    --lanes) lanes="${2:-}"; shift 2 ;;
    --lanes=*) lanes="${1#*=}"; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument '$1' (allowed: --scale smoke|default|long|paper, --only NN, --no-html, --no-site, --lanes N)" >&2; exit 2 ;;
  esac
done
case "$scale" in smoke|default|long|paper) ;; *)
  echo "run_all.sh: --scale '$scale' is not allowed; allowed values: smoke, default, long, paper" >&2; exit 2 ;;
esac

source scripts/ensure_env.sh || exit 1
# batch runs: no progress bars in the saved outputs (saelib.progress), so a rerun leaves no debris or diff
export SAELIB_PROGRESS=0
if [ -z "$lanes" ]; then
  lanes=$("$PY" -c 'import os, torch; print(1 if torch.cuda.is_available() else max(1, min(os.cpu_count() or 1, 2)))')
fi
if ! [[ "$lanes" =~ ^[1-9][0-9]*$ ]]; then
  echo "run_all.sh: --lanes '$lanes' is not allowed; allowed values: an integer >= 1" >&2; exit 2
fi
if [ "$lanes" -gt 1 ]; then
  # each notebook trains in its own process with one thread; the lanes fill the cores
  export SAELIB_WORKERS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
  echo "SAE training: $lanes notebooks at a time, one thread each (--lanes 1: one at a time, with worker processes)"
else
  # SAEs a sweep does not find in the run cache train in parallel worker processes, one thread each
  # (saelib.lab.workers; SAELIB_WORKERS=1 trains them in each notebook's own process)
  echo "SAE training: one notebook at a time, $("$PY" -c 'from saelib.lab.workers import n_workers; print(n_workers())') worker process(es) of one thread (SAELIB_WORKERS to change)"
fi
out="${SAELIB_OUTPUT_DIR:-outputs}/$scale"
mkdir -p "$out/executed" "$out/html" "$out/claims"

notebooks=()
for nb in notebooks/[0-9][0-9]_*.ipynb; do
  num="$(basename "$nb" | cut -c1-2)"
  if [ ${#only[@]} -gt 0 ] && [[ ! " ${only[*]} " =~ " $num " ]]; then continue; fi
  notebooks+=("$nb")
done
if [ ${#notebooks[@]} -eq 0 ]; then echo "run_all.sh: no notebook matches --only ${only[*]}" >&2; exit 2; fi

params=()
[ "$scale" != default ] && params=(-p scale "$scale")
# the order notebooks start in: the biggest first, so that the last ones to finish are short (a lane that runs out
# of notebooks leaves its core idle); any notebook not listed starts after these
first=(08 01 02 07 03 09 05 10 06 00 04 11)
ordered=()
for num in "${first[@]}"; do
  for nb in "${notebooks[@]}"; do [ "$(basename "$nb" | cut -c1-2)" = "$num" ] && ordered+=("$nb"); done
done
for nb in "${notebooks[@]}"; do [[ " ${ordered[*]} " =~ " $nb " ]] || ordered+=("$nb"); done
status_dir="$out/status"; rm -rf "$status_dir"; mkdir -p "$status_dir" "$out/logs"

run_notebook() {      # $1: notebook path; writes $status_dir/<name> = "<wall seconds> <ok|FAILED>"
  local nb="$1" name status t0 t1 log
  name="$(basename "$nb")"
  t0=$(date +%s)
  rm -f "$out/timing/${name%.ipynb}.json"      # saelib.lab.timing records this run's categories afresh
  local pm=(env SAELIB_NOTEBOOK="${name%.ipynb}" "$PY" -m papermill "$nb" "$out/executed/$name" "${params[@]}" -k python3 --log-level WARNING)
  if [ "$lanes" -gt 1 ]; then
    log="$out/logs/${name%.ipynb}.log"
    "${pm[@]}" >"$log" 2>&1; status=$?
  else
    "${pm[@]}" --progress-bar; status=$?
  fi
  if [ $status -eq 0 ]; then
    status=ok
    # drop timestamps, durations and papermill paths, so that unchanged results give an unchanged file
    "$PY" scripts/clean_notebook.py "$out/executed/$name"
    # at default scale the committed notebooks carry the outputs, so a reader sees them on a code host
    [ "$scale" = default ] && cp "$out/executed/$name" "$nb"
  else
    status=FAILED
    [ -n "${log:-}" ] && tail -n 20 "$log" | sed "s/^/  ${name%.ipynb}: /" >&2
  fi
  t1=$(date +%s)
  echo "$((t1 - t0)) $status" >"$status_dir/${name%.ipynb}"
  echo "  done: $name in $((t1 - t0))s ($status)"
  if [ "$html" = 1 ] && [ -f "$out/executed/$name" ]; then
    "$PY" -m nbconvert --to html --log-level WARN "$out/executed/$name" --output-dir "$out/html" >/dev/null 2>&1 \
      || echo "  (nbconvert could not render $name)"
  fi
}

start_all=$(date +%s)
i=0
for nb in "${ordered[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$lanes" ]; do wait -n; done
  i=$((i + 1))
  echo "[$i/${#ordered[@]}] $(basename "$nb") ($scale scale)"
  if [ "$lanes" -gt 1 ]; then run_notebook "$nb" & else run_notebook "$nb"; fi
done
wait
elapsed=$(( $(date +%s) - start_all ))
failed=(); timings=(); walls=()
for nb in "${notebooks[@]}"; do           # the tables in notebook order
  name="$(basename "$nb")"; read -r wall status < "$status_dir/${name%.ipynb}" || { wall=0; status=FAILED; }
  [ "$status" = ok ] || failed+=("$name")
  timings+=("$(printf '%-34s %6ss  %s' "$name" "$wall" "$status")")
  walls+=("${name%.ipynb}=$wall")
done

readme_arg=(); [ "$scale" = default ] && readme_arg=(--readme README.md)   # README carries the default table
# with --only on a fresh outputs/ folder, the claims of the other notebooks are missing: leave the committed
# table as it is rather than shrink it to the notebooks that ran
all_nbs=(notebooks/[0-9][0-9]_*.ipynb); have=("$out"/claims/*.json)
if [ ${#only[@]} -gt 0 ] && [ ! -e "${have[0]}" -o ${#have[@]} -lt ${#all_nbs[@]} ]; then
  echo "claims table: not refreshed (claims of ${#have[@]} of ${#all_nbs[@]} notebooks in $out/claims; run without --only)"
else
  "$PY" -m saelib.lab.claims --scale "$scale" "${readme_arg[@]}" >/dev/null && echo "claims table: $("$PY" -c "from saelib.lab.paths import figures_dir; print(figures_dir('$scale') / 'CLAIMS.md')")"
fi
# the static site from the executed notebooks (default scale: the committed ones -> site/; else $out/site)
if [ "$build_site" = 1 ]; then
  if "$PY" -c "import mkdocs_jupyter, material, latex2mathml" 2>/dev/null; then
    site_args=(); [ "$scale" != default ] && site_args=(--notebooks "$out/executed" --site "$out/site" \
      --figures "$("$PY" -c "from saelib.lab.paths import figures_dir; print(figures_dir('$scale'))")" \
      --claims "$("$PY" -c "from saelib.lab.paths import figures_dir; print(figures_dir('$scale') / 'CLAIMS.md')")")
    NO_MKDOCS_2_WARNING=1 "$PY" scripts/build_site.py "${site_args[@]}" || echo "  (the site could not be built)"
  else
    echo "site: skipped (needs the site extra: SAELIB_EXTRAS=dev,site, or pip install -e '.[site]')"
  fi
fi
echo
echo "Wall time per notebook ($scale scale):"
printf '  %s\n' "${timings[@]}"
echo "  total: $(( $(date +%s) - start_all ))s (notebooks: ${elapsed}s elapsed, $lanes at a time)"
echo
echo "Where the time went ($scale scale; % of each notebook's wall time; SAE tok/s = SAE tokens trained / wall s):"
"$PY" -m saelib.lab.timing --scale "$scale" --wall "${walls[@]}" --elapsed "$elapsed" --lanes "$lanes" | sed 's/^/  /'
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED notebooks: ${failed[*]} (executed copies with the error are in $out/executed/)" >&2
  exit 1
fi
