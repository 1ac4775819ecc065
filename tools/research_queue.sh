#!/usr/bin/env bash
# The open issues' background runs, as one resumable queue (docs/experiments.md, docs/results.md).
#
#   bash tools/research_queue.sh OUT [WORKERS]     # e.g. nohup bash tools/research_queue.sh /root/smfp-runs 2 &
#
# WORKERS processes (default 2: the two cores) take the lines of QUEUE below in order, one run at a time each,
# at nice 10. A line whose run already has a row in docs/results/mujoco.csv (label, env, seed) is skipped, so the
# queue survives the loss of OUT; a run interrupted with OUT intact resumes (smfp sweep). To stop without losing the
# steps since the last checkpoint: pkill -TERM -f research_queue.sh; pkill -TERM -f 'smfp sweep' (each sweep asks
# its running runs to write a checkpoint and stop, and exits 143; sweeps started before 2026-12-06 20:00 did not,
# for them signal the Ray workers first: pkill -TERM -f 'ray::smfp-train'). After each run, the
# tables docs/results/mujoco.csv and docs/results/mujoco_curves.csv are updated (commit them).
# Each line: LABEL ENV SEED FLAGS... (LABEL sac: SAC's defaults; sac-NAME: SAC with
# FLAGS; sb3-sac: Stable-Baselines3's SAC; cmd-NAME - -: the smfp command FLAGS, with @OUT@ replaced by OUT, done
# when it exited 0 once (a marker in OUT/.done and a line in docs/results/queue_done.txt; the command must resume by
# itself, as smfp bench multigoal does)).
set -u
OUT=${1:?usage: research_queue.sh OUT [WORKERS]}
WORKERS=${2:-2}
REPO=$(cd "$(dirname "$0")/.." && pwd)
SMFP="$REPO/.venv/bin/smfp"
QUEUE="$OUT/queue.txt"
DONE="$REPO/docs/results/queue_done.txt"  # finished cmd- lines, one label a line (commit it: it outlives OUT)
mkdir -p "$OUT"

# A cmd- line is done by a marker in OUT/.done or its label in docs/results/queue_done.txt (commit it with the rows; the
# checkout of 2026-12-06, eighth session, started without OUT, and the finished cmd- lines before it left LIST).
# In order of need (2026-12-07, third session: SB3's HalfCheetah seeds 0-2 and Hopper seed 0 again, for the
# yardstick's learning-curve figure, after SMFP's rows (the issue's item 4; SB3's finals exist); 2026-12-07: the yardstick's SAC curve reruns before sac-sb3like Hopper seed 2, a diagnostic its issue does not need; 2026-12-06, eighth session: OUT was lost with the machine; MultiGoal seed 9 of the three-layer heads first, then SAC with the same three-layer networks on seeds 5-9 (a control:
# is the heads' gain depth alone?), then both algorithms' defaults on those seeds (the issue's item 3 asks for them); seventh session: the heads setting with a three-layer actor on the confirmation's seeds
# (the fixed-critic test: TV 0.245 -> 0.199-0.208 on seed 6, 0.264 -> 0.224 on seed 5; docs/experiments.md); sixth session: the heads setting with --em-fit-weight mass on the confirmation's seeds (each
# head's fit weighted by its target mass; the lr screen showed nothing and was stopped after 4 seeds); fifth session: the heads setting with --actor-lr 1e-3 on the confirmation's seeds (its
# TV to the critic's target at the origin, ~0.21, is the shared network following slowly: docs/experiments.md); fourth session: issue 23's pre-registered confirmation first, MultiGoal seeds 5-9 at
# obstacle radius 4 (docs/demo.md), then the yardstick, SMFP's defaults (its item 4) before the ended issue 21's runs; third session: SAC in bf16 on Hopper seed 1 after the MultiGoal seeds; SAC's curve reruns (the yardstick needs them) before stage 2's remaining seeds (its issue ended); SMFP's default on the three tasks last (the yardstick's item 4); second session, end: SB3's bound did not explain the gap (590, 1111); our SAC with SB3's
# squash log-det, then with both, on Hopper seeds 1 and 0; later: SB3's SAC made 517 / 318 on Hopper seeds 0-1, ours 1321 / 886:
# our SAC with SB3's log-std bound (clip to [-20, 2], log-std 0 at the start) on those seeds; earlier: is Hopper seed 0 SAC's luck? "networks as SAC" on Hopper seeds 1-2 and
# SB3's Hopper seeds 1-2 (SB3's seed 0 made 516, ours 1321), then SAC in bf16 (issue 24's parity), MultiGoal at alpha 3 on seeds 1-4 (issue 23's
# five-seed table: SAC multimodal vs SMFP heads), the yardstick's four other tasks, then stage 2's remaining seeds and SAC's curve reruns; 2026-12-06, end: the state base did not fix Hopper seed 0 (526); first the Gaussian control on
# SAC's batch, the ReLU generator and the 256-wide sigma network on Hopper, then stage 2's remaining seeds, SAC in bf16
# paired with its fp32 runs, the state base on the other two tasks; 2026-12-05: the method issue's Hopper diagnostics (mf0.1 + md0 reached 0.41 of SAC on Hopper
# seed 0, and so did its Gaussian control: what in SMFP's shared machinery is slow there?), the rest of stage 2
# (seeds 1-2 of mf0.1 + md0), SAC's Walker2d seed 0 again for its curve, stage 2's second setting (mf0.1), the SB3
# check's Hopper seeds, SAC in bf16 paired with its fp32 runs (issue 24's parity check) after the diagnostics, the yardstick's four other tasks, then SAC's other reruns for the curves.
cat > "$QUEUE.new" <<'LIST'
cmd-mg4l3-heads-s9 - - bench multigoal --out @OUT@/multigoal_alpha3_r4_l3/heads-s9 --seeds 9 --settings heads --algos smfp --alpha 3 --block-radius 4 --precision fp32 --hidden 256 256 256
cmd-mg4l3-sac-s5 - - bench multigoal --out @OUT@/multigoal_alpha3_r4_l3/sac-s5 --seeds 5 --settings multimodal --algos sac --alpha 3 --block-radius 4 --precision fp32 --hidden 256 256 256
cmd-mg4l3-sac-s6 - - bench multigoal --out @OUT@/multigoal_alpha3_r4_l3/sac-s6 --seeds 6 --settings multimodal --algos sac --alpha 3 --block-radius 4 --precision fp32 --hidden 256 256 256
cmd-mg4l3-sac-s7 - - bench multigoal --out @OUT@/multigoal_alpha3_r4_l3/sac-s7 --seeds 7 --settings multimodal --algos sac --alpha 3 --block-radius 4 --precision fp32 --hidden 256 256 256
cmd-mg4l3-sac-s8 - - bench multigoal --out @OUT@/multigoal_alpha3_r4_l3/sac-s8 --seeds 8 --settings multimodal --algos sac --alpha 3 --block-radius 4 --precision fp32 --hidden 256 256 256
cmd-mg4l3-sac-s9 - - bench multigoal --out @OUT@/multigoal_alpha3_r4_l3/sac-s9 --seeds 9 --settings multimodal --algos sac --alpha 3 --block-radius 4 --precision fp32 --hidden 256 256 256
cmd-mg4def-sac-s5 - - bench multigoal --out @OUT@/multigoal_default_r4/sac-s5 --seeds 5 --settings default --algos sac --block-radius 4 --precision fp32
cmd-mg4def-smfp-s5 - - bench multigoal --out @OUT@/multigoal_default_r4/smfp-s5 --seeds 5 --settings default --algos smfp --block-radius 4 --precision fp32
cmd-mg4def-sac-s6 - - bench multigoal --out @OUT@/multigoal_default_r4/sac-s6 --seeds 6 --settings default --algos sac --block-radius 4 --precision fp32
cmd-mg4def-smfp-s6 - - bench multigoal --out @OUT@/multigoal_default_r4/smfp-s6 --seeds 6 --settings default --algos smfp --block-radius 4 --precision fp32
cmd-mg4def-sac-s7 - - bench multigoal --out @OUT@/multigoal_default_r4/sac-s7 --seeds 7 --settings default --algos sac --block-radius 4 --precision fp32
cmd-mg4def-smfp-s7 - - bench multigoal --out @OUT@/multigoal_default_r4/smfp-s7 --seeds 7 --settings default --algos smfp --block-radius 4 --precision fp32
cmd-mg4def-sac-s8 - - bench multigoal --out @OUT@/multigoal_default_r4/sac-s8 --seeds 8 --settings default --algos sac --block-radius 4 --precision fp32
cmd-mg4def-smfp-s8 - - bench multigoal --out @OUT@/multigoal_default_r4/smfp-s8 --seeds 8 --settings default --algos smfp --block-radius 4 --precision fp32
cmd-mg4def-sac-s9 - - bench multigoal --out @OUT@/multigoal_default_r4/sac-s9 --seeds 9 --settings default --algos sac --block-radius 4 --precision fp32
cmd-mg4def-smfp-s9 - - bench multigoal --out @OUT@/multigoal_default_r4/smfp-s9 --seeds 9 --settings default --algos smfp --block-radius 4 --precision fp32
smfp-gauss-256x1 Hopper-v5 1 --noise-scale 0 --components 1 --actor-states 256 --meanflow-coef 0 --md-lambda 0
smfp-gauss-256x1 Hopper-v5 2 --noise-scale 0 --components 1 --actor-states 256 --meanflow-coef 0 --md-lambda 0
sac-logdet-sb3 Hopper-v5 1 --squash-log-det-eps 1e-6
sac-logdet-sb3 Hopper-v5 0 --squash-log-det-eps 1e-6
sac-sb3like Hopper-v5 1 --squash-log-det-eps 1e-6 --log-std-squash clip --log-std-min -20
sac-sb3like Hopper-v5 0 --squash-log-det-eps 1e-6 --log-std-squash clip --log-std-min -20
sac-logstd-clip Hopper-v5 0 --log-std-squash clip --log-std-min -20
sac-logstd-clip Hopper-v5 1 --log-std-squash clip --log-std-min -20
sb3-sac Hopper-v5 1
sb3-sac Hopper-v5 2
sac-bf16 HalfCheetah-v5 0 --precision bf16
sac-bf16 Hopper-v5 0 --precision bf16
sac-bf16 HalfCheetah-v5 1 --precision bf16
sac-bf16 Hopper-v5 1 --precision bf16
sac Swimmer-v5 0
sac InvertedDoublePendulum-v5 0
sac Ant-v5 0
sac Humanoid-v5 0
sac Swimmer-v5 1
sac InvertedDoublePendulum-v5 1
sac Ant-v5 1
sac Humanoid-v5 1
sac Swimmer-v5 2
sac InvertedDoublePendulum-v5 2
sac Ant-v5 2
sac Humanoid-v5 2
sac Walker2d-v5 0
sac Hopper-v5 0
sac HalfCheetah-v5 0
sac HalfCheetah-v5 1
sac Hopper-v5 1
sac Walker2d-v5 1
sac HalfCheetah-v5 2
sac Hopper-v5 2
sac Walker2d-v5 2
sac-sb3like Hopper-v5 2 --squash-log-det-eps 1e-6 --log-std-squash clip --log-std-min -20
smfp HalfCheetah-v5 0
smfp Hopper-v5 0
smfp Walker2d-v5 0
smfp HalfCheetah-v5 1
smfp Hopper-v5 1
smfp Walker2d-v5 1
smfp HalfCheetah-v5 2
smfp Hopper-v5 2
smfp Walker2d-v5 2
sb3-sac HalfCheetah-v5 0
sb3-sac HalfCheetah-v5 1
sb3-sac HalfCheetah-v5 2
sb3-sac Hopper-v5 0
smfp-mf0.1-md0 Hopper-v5 2 --meanflow-coef 0.1 --md-lambda 0
smfp-mf0.1-md0 Walker2d-v5 1 --meanflow-coef 0.1 --md-lambda 0
smfp-mf0.1-md0 HalfCheetah-v5 2 --meanflow-coef 0.1 --md-lambda 0
smfp-mf0.1-md0 Walker2d-v5 2 --meanflow-coef 0.1 --md-lambda 0
smfp-mf0.1-md0 HalfCheetah-v5 0 --meanflow-coef 0.1 --md-lambda 0
smfp-mf0.1-md0 Hopper-v5 1 --meanflow-coef 0.1 --md-lambda 0
smfp-mf0.1-md0 HalfCheetah-v5 1 --meanflow-coef 0.1 --md-lambda 0
smfp-gauss-256x1 Hopper-v5 0 --noise-scale 0 --components 1 --actor-states 256 --meanflow-coef 0 --md-lambda 0
smfp-mf0.1-md0-relu Hopper-v5 0 --meanflow-coef 0.1 --md-lambda 0 --generator-activation relu
smfp-gauss-256x1-base Hopper-v5 0 --noise-scale 0 --components 1 --actor-states 256 --meanflow-coef 0 --md-lambda 0 --state-base --sigma-hidden 256 256
smfp-gauss-256x1-relu-sig256 Hopper-v5 0 --noise-scale 0 --components 1 --actor-states 256 --meanflow-coef 0 --md-lambda 0 --generator-activation relu --sigma-hidden 256 256
smfp-mf0.1-md0-sigma256 Hopper-v5 0 --meanflow-coef 0.1 --md-lambda 0 --sigma-hidden 256 256
smfp-mf0.1-md0-base-q256 HalfCheetah-v5 0 --meanflow-coef 0.1 --md-lambda 0 --state-base --sigma-hidden 256 256 --q-states 256
smfp-mf0.1-md0-base-q256 Walker2d-v5 0 --meanflow-coef 0.1 --md-lambda 0 --state-base --sigma-hidden 256 256 --q-states 256
smfp-mf0.1-md0-q256 Hopper-v5 0 --meanflow-coef 0.1 --md-lambda 0 --q-states 256
smfp-mf0-md0 Hopper-v5 0 --meanflow-coef 0 --md-lambda 0
smfp-mf0.1-md0-256x8 Hopper-v5 0 --meanflow-coef 0.1 --md-lambda 0 --actor-states 256
smfp-mf0.1-md0-base-q256 Hopper-v5 0 --meanflow-coef 0.1 --md-lambda 0 --state-base --sigma-hidden 256 256 --q-states 256
smfp-mf0.1-md0-kappa0 Hopper-v5 0 --meanflow-coef 0.1 --md-lambda 0 --noise-scale 0
smfp-mf0.1 HalfCheetah-v5 0 --meanflow-coef 0.1
smfp-mf0.1 Hopper-v5 0 --meanflow-coef 0.1
smfp-mf0.1 Walker2d-v5 0 --meanflow-coef 0.1
smfp-mf0.1 HalfCheetah-v5 1 --meanflow-coef 0.1
smfp-mf0.1 Hopper-v5 1 --meanflow-coef 0.1
smfp-mf0.1 Walker2d-v5 1 --meanflow-coef 0.1
smfp-mf0.1 HalfCheetah-v5 2 --meanflow-coef 0.1
smfp-mf0.1 Hopper-v5 2 --meanflow-coef 0.1
smfp-mf0.1 Walker2d-v5 2 --meanflow-coef 0.1
LIST
mv "$QUEUE.new" "$QUEUE"

finished() {  # label env seed
  case "$1" in cmd-*) [ -e "$OUT/.done/$1" ] || grep -qx "$1" "$DONE" 2>/dev/null; return;; esac
  # label env seed: a row in the results table (the curves of "sac" HalfCheetah/Hopper/Walker2d and "sb3-sac"
  # HalfCheetah/Hopper runs were lost: those are rerun once for their curves, so they count only from the curves table)
  local table="$REPO/docs/results/mujoco.csv"
  case "$1:$2" in sac:HalfCheetah-v5|sac:Hopper-v5|sac:Walker2d-v5|sb3-sac:HalfCheetah-v5|sb3-sac:Hopper-v5)
    table="$REPO/docs/results/mujoco_curves.csv";; esac
  grep -q "^$1,[^,]*,$2,$3," "$table" 2>/dev/null
}

worker() {
  local n=$1 line label env seed flags
  while true; do
    line=$(flock "$QUEUE.lock" bash -c 'l=$(head -n 1 "$0"); [ -n "$l" ] && sed -i 1d "$0"; echo "$l"' "$QUEUE")
    [ -z "$line" ] && { echo "$(date -u +%F\ %H:%M) [w$n] queue empty"; return; }
    read -r label env seed flags <<< "$line"
    if finished "$label" "$env" "$seed"; then echo "[w$n] done before: $line"; continue; fi
    echo "$(date -u +%F\ %H:%M) [w$n] start: $line"
    local dir="$OUT/$label/${env}_s$seed"
    case "$label" in
      cmd-*) mkdir -p "$OUT/.done"
             nice -n 10 "$SMFP" ${flags//@OUT@/$OUT} && touch "$OUT/.done/$label" \
               && flock "$QUEUE.lock" bash -c 'echo "$0" >> "$1"' "$label" "$DONE"
             echo "$(date -u +%F\ %H:%M) [w$n] end: $line"; continue ;;
      sb3-sac) nice -n 10 "$SMFP" bench sb3-sac --env "$env" --seed "$seed" --total-steps 100000 --eval-every 10000 \
                 --eval-episodes 10 --out "$dir/sb3-sac-$env-s$seed" ;;
      # --precision fp32: every run of the yardstick and the method screens so far ran in fp32 (the default until
      # 2026-12-06, now auto = bf16 on this CPU); a line's own --precision (sac-bf16) comes after and wins.
      sac) nice -n 10 "$SMFP" sweep --algos sac --envs "$env" --seeds "$seed" --total-steps 100000 --eval-every 10000 \
             --eval-episodes 10 --eval-mode mean --checkpoint-every 10000 --num-cpus 1 --precision fp32 --out "$dir" ;;
      sac-*) nice -n 10 "$SMFP" sweep --algos sac --envs "$env" --seeds "$seed" --total-steps 100000 --eval-every 10000 \
               --eval-episodes 10 --eval-mode mean --checkpoint-every 10000 --num-cpus 1 --label "$label" \
               --precision fp32 $flags --out "$dir" ;;
      *) nice -n 10 "$SMFP" sweep --algos smfp --envs "$env" --seeds "$seed" --total-steps 100000 --eval-every 10000 \
           --eval-episodes 10 --checkpoint-every 10000 --num-cpus 1 --label "$label" --precision fp32 $flags \
           --out "$dir" ;;
    esac
    local rc=$?  # before the echo: its $(date) would reset $?
    echo "$(date -u +%F\ %H:%M) [w$n] end rc=$rc: $line"
    flock "$QUEUE.lock" "$SMFP" aggregate "$dir" --csv "$REPO/docs/results/mujoco.csv" \
      --curves-csv "$REPO/docs/results/mujoco_curves.csv" --no-report
  done
}

for n in $(seq 1 "$WORKERS"); do worker "$n" & sleep 5; done
wait
