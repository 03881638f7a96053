#!/usr/bin/env bash
# The main job on a fresh machine: install, then train, evaluate and run inference with the
# ResNet-18 brain CT bundle on the built-in synthetic data (a few CPU minutes), and say where
# every output went. Extra arguments are passed to the training run (e.g. --max_epochs 10).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh

BUNDLE=bundles/resnet18_brain_ct
CONFIGS=$BUNDLE/configs
EPOCHS="${CIT_DEMO_EPOCHS:-12}"
SIZE="${CIT_DEMO_IMAGE_SIZE:-96}"

python -m monai.bundle run training --config_file $CONFIGS/train.json \
  --max_epochs "$EPOCHS" --image_size "$SIZE" --learning_rate 0.001 "$@"
# evaluation and inference read the network, input size and split that training recorded
python -m monai.bundle run evaluating --config_file $CONFIGS/evaluate.json \
  --eval_split validation --eval_dir $BUNDLE/output/eval_validation
python -m monai.bundle run evaluating --config_file $CONFIGS/evaluate.json
python -m monai.bundle run inference --config_file $CONFIGS/inference.json
cit report --eval-dir $BUNDLE/output/eval --bundle $BUNDLE --n-resamples 200

cat <<MSG

Done. Outputs of the demo (synthetic data, ${EPOCHS} epochs at ${SIZE} px on $(python -c 'import toolkit.engines as e; print(e.default_device())')):
  synthetic data + split    $BUNDLE/output/synthetic_data/, $BUNDLE/output/datalist.json
  model weights             $BUNDLE/models/model.pt (best validation accuracy), checkpoint_*.pt (full state),
                            model_info.json (network, classes, input size, split fingerprint)
  training history          $BUNDLE/output/train/training_history.csv, TensorBoard events in $BUNDLE/output/train/
  test-set evaluation       $BUNDLE/output/eval/ (metrics.json, per_class.csv, confusion_matrix.csv, predictions.csv)
  evaluation report         $BUNDLE/output/eval/report/report.html (validation predictions in output/eval_validation/)
  inference                 $BUNDLE/output/inference/predictions.csv
MSG
python - <<'PY'
import json
m = json.load(open("bundles/resnet18_brain_ct/output/eval/metrics.json"))
print(f"  test accuracy            {m['accuracy']:.3f} on {m['num_samples']} synthetic images (chance is 1/3)")
PY
