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
set -uo pipefail
cd "$(dirname "$0")"

scale=default; only=(); html=1; build_site=1
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="${2:-}"; shift 2 ;;
    --scale=*) scale="${1#*=}"; shift ;;
    --only) only+=("${2:-}"); shift 2 ;;
    --only=*) only+=("${1#*=}"); shift ;;
    --no-html) html=0; shift ;;
    --no-site) build_site=0; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument '$1' (allowed: --scale smoke|default|long|paper, --only NN, --no-html)" >&2; exit 2 ;;
  esac
done
case "$scale" in smoke|default|long|paper) ;; *)
  echo "run_all.sh: --scale '$scale' is not allowed; allowed values: smoke, default, long, paper" >&2; exit 2 ;;
esac

source scripts/ensure_env.sh || exit 1
# batch runs: no progress bars in the saved outputs (saelib.progress), so a rerun leaves no debris or diff
export SAELIB_PROGRESS=0
# SAEs a sweep does not find in the run cache train in parallel worker processes, one thread each
# (saelib.lab.workers; SAELIB_WORKERS=1 trains them in each notebook's own process)
echo "SAE training: $("$PY" -c 'from saelib.lab.workers import n_workers; print(n_workers())') worker process(es) of one thread (SAELIB_WORKERS to change)"
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
failed=(); timings=(); walls=()
start_all=$(date +%s)
i=0
for nb in "${notebooks[@]}"; do
  i=$((i + 1)); name="$(basename "$nb")"
  echo "[$i/${#notebooks[@]}] $name ($scale scale)"
  t0=$(date +%s)
  rm -f "$out/timing/${name%.ipynb}.json"      # saelib.lab.timing records this run's categories afresh
  if SAELIB_NOTEBOOK="${name%.ipynb}" "$PY" -m papermill "$nb" "$out/executed/$name" "${params[@]}" -k python3 --log-level WARNING --progress-bar; then
    status=ok
    # drop timestamps, durations and papermill paths, so that unchanged results give an unchanged file
    "$PY" scripts/clean_notebook.py "$out/executed/$name"
    # at default scale the committed notebooks carry the outputs, so a reader sees them on a code host
    [ "$scale" = default ] && cp "$out/executed/$name" "$nb"
  else
    status=FAILED; failed+=("$name")
  fi
  t1=$(date +%s)
  timings+=("$(printf '%-34s %6ss  %s' "$name" "$((t1 - t0))" "$status")")
  walls+=("${name%.ipynb}=$((t1 - t0))")
  if [ "$html" = 1 ] && [ -f "$out/executed/$name" ]; then
    "$PY" -m nbconvert --to html --log-level WARN "$out/executed/$name" --output-dir "$out/html" >/dev/null 2>&1 \
      || echo "  (nbconvert could not render $name)"
  fi
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
echo "  total: $(( $(date +%s) - start_all ))s"
echo
echo "Where the time went ($scale scale; % of each notebook's wall time; SAE tok/s = SAE tokens trained / wall s):"
"$PY" -m saelib.lab.timing --scale "$scale" --wall "${walls[@]}" | sed 's/^/  /'
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED notebooks: ${failed[*]} (executed copies with the error are in $out/executed/)" >&2
  exit 1
fi
